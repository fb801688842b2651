import { KeepClient } from "../http/client.ts";
import { checkProjectName } from "../format/api.ts";
import { type Command, out, outJson } from "./command.ts";
import {
  CLIENT_FLAGS,
  CLIENT_HELP,
  clientOptions,
  formatBytes,
  parseFlags,
  positionals,
  required,
} from "./flags.ts";
import { KeepError } from "../errors.ts";

export const logCommand: Command = {
  name: "log",
  summary: "list a project's commits, newest first",
  help: `Usage: keep log --project ID [--limit N] [--json]
       keep log --project ID --commit REF     (one commit, with its flagged paths)

Columns: commit id, #sequence, time (UTC), files in the commit, changes
(+added ~changed -deleted), bytes sent, message. "!N" marks N paths kept from
an earlier commit because they could not be read or never settled.

${CLIENT_HELP}

Options:
  -n, --limit N    at most N commits (default 50)
  -c, --commit REF show one commit in full
      --json       JSON output`,
  async run(args) {
    const p = parseFlags("log", args, {
      ...CLIENT_FLAGS,
      limit: { type: "string", short: "n" },
      commit: { type: "string", short: "c" },
      json: { type: "boolean" },
    });
    positionals(p, "log", []);
    const project = checkProjectName(required(p, "log", "project", "KEEP_PROJECT"));
    const limit = Number(p.values.limit ?? 50);
    if (!Number.isInteger(limit) || limit < 1) {
      throw new KeepError("usage", `Cannot parse --limit ${p.values.limit}`);
    }
    const client = new KeepClient(clientOptions(p));
    try {
      if (p.values.commit) {
        const { commit, notes } = await client.commit(project, p.values.commit as string);
        if (p.values.json) outJson({ commit, notes });
        else {
          out(`commit ${commit.id} (#${commit.seq}) of ${commit.project}`);
          out(`  parent    ${commit.parent ?? "(none)"}`);
          out(`  time      ${commit.time}   host ${commit.host}   source ${commit.source}`);
          out(`  message   ${commit.message}`);
          if (Object.keys(commit.tags).length) {
            out(
              `  tags      ${Object.entries(commit.tags).map(([k, v]) => `${k}=${v}`).join(" ")}`,
            );
          }
          const c = commit.counts;
          out(
            `  contents  ${c.files} files, ${c.dirs} dirs, ${c.symlinks} symlinks, ${
              formatBytes(c.bytes)
            }`,
          );
          out(
            `  changes   +${c.added} ~${c.changed} -${c.deleted}, ${c.metadata} metadata-only, ${c.unchanged} unchanged`,
          );
          out(
            `  received  ${commit.stats.filesReceived} files, ${
              formatBytes(commit.stats.wireBytes)
            } on the wire, ${commit.stats.newBlobs} new blobs (${
              formatBytes(commit.stats.newBlobBytes)
            })`,
          );
          for (const n of notes) out(`  flagged   ${n.path}: ${n.flag}: ${n.reason}`);
        }
        return 0;
      }
      const commits = await client.commits(project, limit);
      if (p.values.json) {
        outJson({ project, commits });
        return 0;
      }
      if (commits.length === 0) out(`keep log: project ${project} has no commits`);
      for (const c of commits) {
        const k = c.counts;
        out(
          [
            c.id,
            `#${c.seq}`.padStart(5),
            c.time.slice(0, 19).replace("T", " "),
            `${k.files} files`.padStart(12),
            `+${k.added} ~${k.changed} -${k.deleted}`.padEnd(18),
            formatBytes(c.stats.wireBytes).padStart(10),
            k.flagged ? `!${k.flagged}` : "",
            c.message,
          ].filter((s) => s !== "").join("  "),
        );
      }
      return 0;
    } finally {
      client.close();
    }
  },
};
