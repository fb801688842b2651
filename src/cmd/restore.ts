import { resolve } from "node:path";
import { KeepError } from "../errors.ts";
import { normalisePrefix } from "../format/paths.ts";
import { prepareDestination, restoreArchive } from "../client/restore.ts";
import { KeepClient } from "../http/client.ts";
import { checkProjectName } from "../format/api.ts";
import { Progress, progressFlag } from "./progress.ts";
import { type Command, note, out, outJson } from "./command.ts";
import {
  CLIENT_FLAGS,
  CLIENT_HELP,
  clientOptions,
  formatBytes,
  parseFlags,
  positionals,
  required,
} from "./flags.ts";

export const restoreCommand: Command = {
  name: "restore",
  summary: "bring a recorded state (or part of it) back into a directory",
  help: `Usage: keep restore --project ID [--commit REF] [--path PREFIX] [--overwrite] DEST

Writes files, directories and symlinks of a commit into DEST with their
modes and mtimes, checking every file's SHA-256 before it gets its name.
Nothing is written outside DEST, nor through a symlink.

${CLIENT_HELP}

Options:
  -c, --commit REF    commit id, unique id prefix, #SEQ, or latest (default)
      --path PREFIX   only this path and what is below it
      --overwrite     allow a non-empty DEST (replaces files in the way)
      --json          print the result as JSON
      --progress, --no-progress  the progress line on stderr (files and bytes of the
                      commit's total, rate, ETA): default on when stderr is a terminal

A whole-commit restore is then checked against the commit's own counts of
files, directories and symlinks.

Exit codes: 0 ok, 1 failed, 2 usage (e.g. DEST not empty), 4 integrity: a
file failed its hash check (not written; others restored), the server could
not read a file's content (named; the files before it restored), or the
restore came back short of the commit, 5 server unreachable or the connection
broke, 6 denied.`,
  async run(args) {
    const p = parseFlags("restore", args, {
      ...CLIENT_FLAGS,
      commit: { type: "string", short: "c" },
      path: { type: "string" },
      overwrite: { type: "boolean" },
      json: { type: "boolean" },
      progress: { type: "boolean" },
      "no-progress": { type: "boolean" },
    });
    const progress = new Progress("keep restore", { force: progressFlag(p.values) });
    const [destArg] = positionals(p, "restore", ["DEST"]);
    const project = checkProjectName(required(p, "restore", "project", "KEEP_PROJECT"));
    const prefix = normalisePrefix((p.values.path as string | undefined) ?? "");
    const dest = resolve(destArg);
    const client = new KeepClient(clientOptions(p));
    try {
      // What is expected comes first, from the commit itself: an archive that
      // names another commit (or none) is refused before anything is written.
      const { commit } = await client.commit(project, (p.values.commit as string) ?? "latest");
      prepareDestination(dest, !!p.values.overwrite);
      const started = performance.now();
      const { commitId, stream } = await client.archive(project, commit.id, prefix);
      if (commitId !== commit.id) {
        await stream.cancel();
        throw new KeepError(
          "integrity",
          `Cannot restore commit ${commit.id}: the server's archive is of ${
            commitId || "no named commit"
          }`,
        );
      }
      // A whole commit's totals are known; a subtree's are not.
      progress.phase(
        "restore",
        prefix ? undefined : { entries: commit.counts.files, bytes: commit.counts.bytes },
      );
      const r = await restoreArchive(stream, dest, {
        overwrite: !!p.values.overwrite,
        onProblem: (q) => progress.note(`keep restore: ${q.path}: ${q.reason}`),
        onProgress: (r) => progress.update(r.files, r.bytes),
      }).finally(() => progress.end());
      const seconds = (performance.now() - started) / 1000;
      // A whole commit must come back whole: compare with what the commit records.
      let short = "";
      if (!prefix) {
        const c = commit.counts;
        if (r.files + r.hashErrors !== c.files || r.dirs !== c.dirs || r.symlinks !== c.symlinks) {
          short =
            `restored ${r.files + r.hashErrors} files, ${r.dirs} dirs, ${r.symlinks} symlinks; ` +
            `the commit has ${c.files}, ${c.dirs}, ${c.symlinks}`;
          note(`keep: Cannot confirm the restore is complete: ${short}`);
        }
      }
      if (p.values.json) outJson({ commit: commitId, dest, ...r, seconds });
      else {
        out(
          `keep restore: ${project} commit ${commitId}${
            prefix ? ` path ${prefix}` : ""
          } into ${dest}: ${r.files} files, ${r.dirs} dirs, ${r.symlinks} symlinks, ${
            formatBytes(r.bytes)
          } in ${seconds.toFixed(2)} s`,
        );
        if (r.hashErrors) {
          out(`  INTEGRITY ${r.hashErrors} files failed their hash check and were not written`);
        }
      }
      return r.hashErrors || short ? 4 : 0;
    } finally {
      client.close();
    }
  },
};
