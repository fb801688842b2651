import { normalisePrefix, underPrefix } from "../format/paths.ts";
import { KeepClient } from "../http/client.ts";
import { checkProjectName } from "../format/api.ts";
import { type Command, out } from "./command.ts";
import {
  CLIENT_FLAGS,
  CLIENT_HELP,
  clientOptions,
  parseFlags,
  positionals,
  required,
} from "./flags.ts";

function modeString(type: string, mode: number): string {
  const t = type === "d" ? "d" : type === "l" ? "l" : "-";
  const rwx = (m: number) => `${m & 4 ? "r" : "-"}${m & 2 ? "w" : "-"}${m & 1 ? "x" : "-"}`;
  return t + rwx(mode >> 6) + rwx(mode >> 3) + rwx(mode);
}

function nsToIso(ns: bigint): string {
  return new Date(Number(ns / 1_000_000n)).toISOString().slice(0, 19).replace("T", " ");
}

export const lsCommand: Command = {
  name: "ls",
  summary: "list the paths of a commit",
  help: `Usage: keep ls --project ID [--commit REF] [--path PREFIX] [-l]

${CLIENT_HELP}

Options:
  -c, --commit REF   commit (default latest)
      --path PREFIX  only this path and below
  -l, --long         mode, size, mtime, hash prefix, flags`,
  async run(args) {
    const p = parseFlags("ls", args, {
      ...CLIENT_FLAGS,
      commit: { type: "string", short: "c" },
      path: { type: "string" },
      long: { type: "boolean", short: "l" },
    });
    positionals(p, "ls", []);
    const project = checkProjectName(required(p, "ls", "project", "KEEP_PROJECT"));
    const prefix = normalisePrefix((p.values.path as string | undefined) ?? "");
    const client = new KeepClient(clientOptions(p));
    try {
      const { entries } = await client.manifest(project, (p.values.commit as string) ?? "latest");
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
