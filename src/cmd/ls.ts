import { normalisePrefix, underPrefix } from "../format/paths.ts";
import { KeepClient } from "../http/client.ts";
import { checkProjectName } from "../format/api.ts";
import { modeString, nsToIso } from "../format/units.ts";
import { entryToJson } from "../format/manifest.ts";
import { type Command, out, outJson } from "./command.ts";
import {
  CLIENT_FLAGS,
  CLIENT_HELP,
  clientOptions,
  parseFlags,
  positionals,
  required,
} from "./flags.ts";

export const lsCommand: Command = {
  name: "ls",
  summary: "list the paths of a commit",
  help: `Usage: keep ls --project ID [--commit REF] [--path PREFIX] [-l] [--json]

${CLIENT_HELP}

Options:
  -c, --commit REF   commit (default latest)
      --path PREFIX  only this path and below
  -l, --long         mode, size, mtime, hash prefix, flags
      --json         {"keep":1, "commit", "entries": [manifest entries (p, t, s, m, mt, …)]}`,
  async run(args) {
    const p = parseFlags("ls", args, {
      ...CLIENT_FLAGS,
      commit: { type: "string", short: "c" },
      path: { type: "string" },
      long: { type: "boolean", short: "l" },
      json: { type: "boolean" },
    });
    positionals(p, "ls", []);
    const project = checkProjectName(required(p, "ls", "project", "KEEP_PROJECT"));
    const prefix = normalisePrefix((p.values.path as string | undefined) ?? "");
    const client = new KeepClient(clientOptions(p));
    try {
      const { commit, entries } = await client.manifest(
        project,
        (p.values.commit as string) ?? "latest",
      );
      if (p.values.json) {
        const list: unknown[] = [];
        for await (const e of entries) {
          if (underPrefix(e.path, prefix)) list.push(JSON.parse(entryToJson(e)));
        }
        outJson({ commit, entries: list });
        return 0;
      }
      for await (const e of entries) {
        if (!underPrefix(e.path, prefix)) continue;
        const name = e.type === "d"
          ? e.path + "/"
          : e.type === "l"
          ? `${e.path} -> ${e.target}`
          : e.path;
        if (!p.values.long) out(name);
        else {
          out(
            `${modeString(e.type, e.mode)} ${String(e.size).padStart(12)} ${nsToIso(e.mtime)} ${
              (e.hash ?? "").slice(0, 12).padEnd(12)
            } ${name}${e.flag ? `  [${e.flag}]` : ""}`,
          );
        }
      }
      return 0;
    } finally {
      client.close();
    }
  },
};
