import { KeepClient } from "../http/client.ts";
import { checkProjectName, type PathVersion } from "../format/api.ts";
import { formatBytes, modeString } from "../format/units.ts";
import { type Command, out, outJson } from "./command.ts";
import {
  CLIENT_FLAGS,
  CLIENT_HELP,
  clientOptions,
  parseFlags,
  positionals,
  required,
} from "./flags.ts";

/** One version's line: the commits it lives in, size, hash prefix, mode, when it appeared. */
export function versionLine(v: PathVersion): string {
  const range = v.first.seq === v.last.seq ? `#${v.first.seq}` : `#${v.first.seq}–#${v.last.seq}`;
  const what = v.type === "l" ? `-> ${v.target}` : (v.hash ?? "").slice(0, 12).padEnd(12);
  return `  ${range.padEnd(13)} ${
    `${v.commits} commit${v.commits === 1 ? "" : "s"}`.padStart(12)
  } ${formatBytes(v.size).padStart(10)}  ${modeString(v.type, v.mode)}  ${what}  ${
    v.first.time.slice(0, 19).replace("T", " ")
  }${v.flag ? `  [${v.flag}]` : ""}`;
}

export const historyCommand: Command = {
  name: "history",
  summary: "every version of one path across the project's commits",
  help: `Usage: keep history --project ID [--json] PATH

Lists every version of PATH that a commit of the project holds, newest
first: the commits it lives in (#first–#last and how many), size, mode, hash
prefix (symlinks: the target), and the time of the first commit that had it.

${CLIENT_HELP}

Options:
      --json   {"keep":1, "project", "path", "versions": [{type, size, mode, mtime,
               hash, target, flag, first: {id, seq, time}, last: {…}, commits}]}`,
  async run(args) {
    const p = parseFlags("history", args, { ...CLIENT_FLAGS, json: { type: "boolean" } });
    const [path] = positionals(p, "history", ["PATH"]);
    const project = checkProjectName(required(p, "history", "project", "KEEP_PROJECT"));
    const client = new KeepClient(clientOptions(p));
    try {
      const h = await client.history(project, path);
      if (p.values.json) outJson(h);
      else {
        out(
          [
            `${h.path}: ${h.versions.length} version${h.versions.length === 1 ? "" : "s"}`,
            ...h.versions.map(versionLine),
          ].join("\n"),
        );
      }
      return 0;
    } finally {
      client.close();
    }
  },
};
