import { resolve } from "node:path";
import { runBackup } from "../client/backup.ts";
import { isIncomplete } from "../client/problem.ts";
import type { CheckMode } from "../client/diff.ts";
import { KeepError } from "../errors.ts";
import type { CompressMode } from "../client/upload.ts";
import { KeepClient } from "../http/client.ts";
import { checkProjectName } from "../format/api.ts";
import { Progress, progressFlag } from "./progress.ts";
import { type Command, note, out, outJson } from "./command.ts";
import {
  CLIENT_FLAGS,
  CLIENT_HELP,
  clientOptions,
  formatBytes,
  parseDuration,
  parseFlags,
  parseTags,
  positionals,
  required,
} from "./flags.ts";

export const backupCommand: Command = {
  name: "backup",
  summary: "send the new state of a directory to the server as a commit",
  help: `Usage: keep backup --project ID [options] DIR

Scans DIR, diffs it against the project's latest commit on the server, waits
for files still being written, and uploads one tar.gz of what changed. If
another backup of the project lands first, it diffs again and retries.

${CLIENT_HELP}

What is backed up:
      --exclude PATTERN     skip paths matching PATTERN (gitignore syntax; repeatable)
      --include-from FILE   only paths matching the patterns in FILE (and their parents)
      --no-exclude-caches   also back up directories tagged with CACHEDIR.TAG
      --jobs N              directory listings and lstats in flight at once (default: 16 on
                            NFS/SMB/CIFS/FUSE, where each call is a round trip; 1 elsewhere)
  .backupignore files (gitignore syntax) in any directory apply below it; the
  deepest one wins. Symlinks are stored as links, empty directories kept,
  FIFOs/sockets/devices skipped with a note, hard links stored as files.

Change detection:
  By default a file is unchanged when size, mtime, ctime and mode all match the
  last commit. ctime catches rewrites whose mtime was put back (touch -d, cp -p,
  tar -x). If only ctime or mode moved, the file is hashed and only its metadata
  is sent when the content is the same. Files modified within the mtime
  granularity (detected: 1 ns ... 2 s) or the settle window of the previous
  backup's scan are hashed too. Where ctime cannot be trusted (FUSE mounts such
  as sshfs, SMB/CIFS, 9p; or every file's ctime equal to its mtime in whole
  seconds; or --ignore-ctime), the default also compares the partial hash of
  files whose size and mtime match, and the summary says so.
      --check MODE          auto (default: none, or partial where ctime cannot be
                            trusted) | none | partial: xxHash64 of first+last 4 KiB
                            and size (cheap; misses edits in the middle of files
                            over 8 KiB) | full: SHA-256 of every file (reads all)
      --ignore-ctime        do not compare ctime (filesystems with meaningless ctime)

Content the server already has (another project's, a renamed directory's):
  files of 64 KiB and more, and small ones when a probe of 64 finds most of
  them on the server, are hashed first; what the server holds is recorded with
  a proof of possession (a keyed hash of the content under a key the server
  chose) instead of being sent.
      --no-negotiate        send every changed file's content without asking

Files still being written:
      --settle DURATION     a changed file must hold still this long (default 2s; 0 = off)
      --settle-timeout DUR  give up waiting after this long (default 5 × settle);
                            such files are reported and their last version kept
      --no-sync             do not flush the tree's filesystem (syncfs) before the final stat

Commit:
  -m, --message TEXT        commit message
  -t, --tag KEY=VALUE       tag (repeatable)
      --host NAME           host name recorded (default: this host)
      --compress MODE       auto (default: store incompressible data) | fast | none
      --json                print the result as JSON
  -v, --verbose             print phases and every problem as it happens
      --progress, --no-progress  the progress line on stderr (phase, files and bytes
                            of the total, rate, ETA): default on when stderr is a terminal

Exit codes: 0 ok, 1 failed (nothing recorded), 2 usage, 3 incomplete (commit
recorded, some files not backed up: listed), 5 server unreachable, 6 denied.`,
  async run(args) {
    const p = parseFlags("backup", args, {
      ...CLIENT_FLAGS,
      message: { type: "string", short: "m" },
      tag: { type: "string", short: "t", multiple: true },
      host: { type: "string" },
      exclude: { type: "string", multiple: true },
      "include-from": { type: "string" },
      "no-exclude-caches": { type: "boolean" },
      jobs: { type: "string" },
      check: { type: "string" },
      "ignore-ctime": { type: "boolean" },
      "no-negotiate": { type: "boolean" },
      settle: { type: "string" },
      "settle-timeout": { type: "string" },
      "no-sync": { type: "boolean" },
      compress: { type: "string" },
      json: { type: "boolean" },
      verbose: { type: "boolean", short: "v" },
      progress: { type: "boolean" },
      "no-progress": { type: "boolean" },
    });
    const [dir] = positionals(p, "backup", ["DIR"]);
    const project = checkProjectName(required(p, "backup", "project", "KEEP_PROJECT"));
    const check = (p.values.check as string | undefined) ?? "auto";
    if (!["auto", "none", "partial", "full"].includes(check)) {
      throw new KeepError(
        "usage",
        `Cannot parse --check ${check}: use auto, none, partial or full`,
      );
    }
    const compress = (p.values.compress as string | undefined) ?? "auto";
    if (!["auto", "fast", "none"].includes(compress)) {
      throw new KeepError("usage", `Cannot parse --compress ${compress}: use auto, fast or none`);
    }
    let include: string[] | undefined;
    if (p.values["include-from"]) {
      try {
        include = Deno.readTextFileSync(p.values["include-from"] as string).split("\n")
          .map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
      } catch (err) {
        throw new KeepError(
          "usage",
          `Cannot read --include-from ${p.values["include-from"]}: ${(err as Error).message}`,
        );
      }
      if (include.length === 0) {
        throw new KeepError("usage", "Cannot use --include-from: the file has no patterns");
      }
    }
    let jobs: number | undefined;
    if (p.values.jobs !== undefined) {
      jobs = Number(p.values.jobs);
      if (!Number.isInteger(jobs) || jobs < 1 || jobs > 256) {
        throw new KeepError(
          "usage",
          `Cannot parse --jobs ${p.values.jobs}: give a whole number from 1 to 256`,
        );
      }
    }
    const settleMs = p.values.settle ? parseDuration(p.values.settle as string, "settle") : 2000;
    // The argument itself is followed (a symlink to the build directory, as
    // restic, borg and tar do); nothing below it ever is.
    let root = resolve(dir);
    try {
      if (!Deno.statSync(root).isDirectory) throw new Error("not a directory");
      root = Deno.realPathSync(root);
    } catch (err) {
      throw new KeepError(
        "usage",
        `Cannot back up ${dir}: ${(err as Error).message.split(",")[0]}`,
      );
    }
    const verbose = !!p.values.verbose;
    const progress = new Progress("keep backup", { force: progressFlag(p.values) });
    const client = new KeepClient(clientOptions(p));
    try {
      const t0 = performance.now();
      const elapsed = () => `[${((performance.now() - t0) / 1000).toFixed(2)} s]`;
      const result = await runBackup(root, client.remote(project), {
        message: p.values.message as string | undefined,
        tags: parseTags(p.values.tag as string[] | undefined),
        host: p.values.host as string | undefined,
        exclude: p.values.exclude as string[] | undefined,
        include,
        excludeCaches: !p.values["no-exclude-caches"],
        jobs,
        check: check as CheckMode | "auto",
        ctime: !p.values["ignore-ctime"],
        negotiate: !p.values["no-negotiate"],
        settleMs,
        settleMaxMs: p.values["settle-timeout"]
          ? parseDuration(p.values["settle-timeout"] as string, "settle-timeout")
          : undefined,
        sync: !p.values["no-sync"],
        compress: compress as CompressMode,
        onPhase: (phase, detail, total) => {
          if (verbose) progress.note(`keep backup: ${elapsed()} ${phase}: ${detail}`);
          progress.phase(phase, total);
        },
        onProgress: (s) => progress.update(s.entriesSent, s.bytesRead),
        onProblem: verbose
          ? (q) => progress.note(`keep backup: ${q.kind}: ${q.path}: ${q.reason}`)
          : undefined,
      }).finally(() => progress.end());
      const c = result.commit;
      if (!verbose) {
        for (const q of result.problems) {
          note(
            `keep backup: ${q.kind}: ${q.path}: ${q.reason}${
              isIncomplete(q) ? " (last good version kept)" : ""
            }`,
          );
        }
      }
      if (p.values.json) {
        outJson(result);
      } else {
        out(`keep backup: ${project} commit ${c.id} (#${c.seq}) from ${root}`);
        out(
          `  scanned   ${result.scanned} entries: ${c.counts.files} files, ${c.counts.dirs} dirs, ${c.counts.symlinks} symlinks in the commit`,
        );
        out(
          `  changes   ${c.counts.added} added, ${c.counts.changed} changed, ${c.counts.deleted} deleted, ${c.counts.metadata} metadata-only, ${c.counts.unchanged} unchanged`,
        );
        out(
          `  data      read ${formatBytes(result.bytesRead)}, sent ${
            formatBytes(result.wireBytes)
          }, new on server ${formatBytes(c.stats.newBlobBytes)} in ${c.stats.newBlobs} blobs`,
        );
        if (result.checkReason) {
          out(
            `  check     ${result.check}: ${result.checkReason}, so files whose size and mtime match are compared by content hash (--check none to skip)`,
          );
        }
        if (result.hashed) out(`  hashed    ${result.hashed} suspect files locally`);
        if (result.proven) {
          out(
            `  had       ${result.proven} files (${
              formatBytes(result.provenBytes)
            }) already on the server: proven, not sent`,
          );
        }
        if (result.settleMs >= 100) {
          out(
            `  settle    waited ${(result.settleMs / 1000).toFixed(1)} s for files being written`,
          );
        }
        if (result.incomplete) {
          out(
            `  INCOMPLETE ${result.incomplete} paths not backed up (listed on stderr); their last good version is kept`,
          );
        }
        out(
          `  time      ${result.seconds.toFixed(2)} s${
            result.attempts > 1 ? ` (${result.attempts} attempts)` : ""
          }`,
        );
      }
      return result.incomplete ? 3 : 0;
    } finally {
      client.close();
    }
  },
};
