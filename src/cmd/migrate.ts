import { join, resolve } from "node:path";
import { KeepError } from "../errors.ts";
import { migrate } from "../server/migrate.ts";
import { openLocalStorage, type Storage } from "../server/storage/open.ts";
import { lockForLife } from "../platform/fs_native.ts";
import { type Command, note, out, outJson } from "./command.ts";
import { formatBytes, parseFlags, parseIndexFlag, positionals } from "./flags.ts";
import { s3Flags } from "./store_flags.ts";
import { readAutoTls, type TlsCopy, writeAutoTls } from "../server/tls_auto.ts";

export const migrateCommand: Command = {
  name: "migrate",
  summary: "copy a whole store with its history to another backend (resumable, verified)",
  help: `Usage: keep migrate --from DIR [--from-blobs s3://B/P] [--from-index postgres://…]
                    --to DIR2 [--to-blobs s3://B/P] [--to-index postgres://…] [--json]

Copies a store, every commit of every project with its content, tokens and
policies, to another backend: an embedded data dir (SQLite, packs) into an
object store + PostgreSQL, or back, or any mix. Objects are copied byte for
byte (packs by number, large blobs by hash), then the index rows table by
table; a row goes in only after the objects it names are stored. At the end
every table is compared with the source row by row and every blob of the
target is re-read and re-hashed.

Resumable: run the same command again after an interruption; what is there
already is skipped. The target must be empty (or an interrupted migration's).
Stop the servers of both stores first: a data dir's server holds its lock,
the nodes of a PostgreSQL index a shared lock on it; migrate refuses either.

A side is a data dir (the embedded store, or a node's dir that remembers its
bucket), plus --*-blobs and --*-index when its blobs or index live there (as
keep serve was given them). --to DIR2 may be left out when the target is a
bucket and a database: a scratch dir is used. Keys and endpoint for buckets:
--s3-endpoint, --s3-region, --s3-access-key, --s3-secret-key (or AWS_*),
the same for both sides.

Examples:
  keep migrate --from /srv/keep --to-blobs s3://keep/prod/ --to-index postgres://keep@db/keep
  keep migrate --from-blobs s3://keep/prod/ --from-index postgres://keep@db/keep --to /srv/keep2

A source with damage keep verify has marked (a pack or large blob lost) is
copied with it: the copy's verify reports the same blobs, and exits 4.

The CA of keep serve --tls auto (DIR/tls/, with its key) goes along into
DIR2/tls/ once the copy verified, so clients that trust it (--ca) or pin it
(--fingerprint) keep working against a server on the target; a target with
a CA of its own keeps it, and without --to DIR2 it is left where it is (both
said in the output). Web UI sign-ins do not move: users sign in again.

Exit codes: 0 copied and verified, 4 the copy does not verify (or holds the
source's damage), 2 bad flags.`,
  async run(args) {
    const p = parseFlags("migrate", args, {
      from: { type: "string" },
      to: { type: "string" },
      "from-blobs": { type: "string" },
      "to-blobs": { type: "string" },
      "from-index": { type: "string" },
      "to-index": { type: "string" },
      "s3-endpoint": { type: "string" },
      "s3-region": { type: "string" },
      "s3-access-key": { type: "string" },
      "s3-secret-key": { type: "string" },
      json: { type: "boolean" },
    });
    positionals(p, "migrate", []);
    const json = !!p.values.json;
    const side = (which: "from" | "to") => {
      const dir = p.values[which] as string | undefined;
      const s3 = s3Flags(p, `${which}-blobs`);
      const pg = parseIndexFlag(p.values[`${which}-index`] as string | undefined);
      if (dir === undefined && (s3 === undefined || pg === undefined)) {
        throw new KeepError(
          "usage",
          `Cannot run keep migrate: give --${which} DIR (or both --${which}-blobs and --${which}-index)`,
        );
      }
      return { dir: dir === undefined ? undefined : resolve(dir), s3, pg };
    };
    const from = side("from");
    const to = side("to");
    if (from.dir !== undefined && from.dir === to.dir) {
      throw new KeepError(
        "usage",
        "Cannot migrate a store onto itself: --from and --to are one dir",
      );
    }
    const scratch: string[] = [];
    const open = async (s: typeof from, create: boolean): Promise<Storage> => {
      let dir = s.dir;
      if (dir === undefined) {
        dir = await Deno.makeTempDir({ prefix: "keep-migrate-" });
        scratch.push(dir);
      } else if (!create) {
        try {
          Deno.statSync(dir);
        } catch {
          throw new KeepError("usage", `Cannot migrate from ${dir}: no such directory`);
        }
      }
      Deno.mkdirSync(dir, { recursive: true });
      if (lockForLife(join(dir, "serve.lock")) === false) {
        throw new KeepError(
          "usage",
          `Cannot migrate ${dir}: a keep serve runs on it (stop it first)`,
        );
      }
      return await openLocalStorage(dir, {
        create,
        owner: create,
        s3: s.s3,
        pg: s.pg,
        migrating: create,
        exclusive: true,
      });
    };
    const source = await open(from, false);
    try {
      // The CA of `serve --tls auto` travels with the store: clients that
      // trust or pin it keep working against a server on the target. Read
      // (and checked) first, written once the copy verified and before the
      // target counts as finished: a failure leaves it to the next run.
      const setup = from.dir === undefined ? null : readAutoTls(from.dir);
      let tls: TlsCopy = setup === null
        ? { outcome: "none", fingerprint: null }
        : { outcome: "left", fingerprint: setup.fingerprint };
      const target = await open(to, true);
      try {
        const t0 = performance.now();
        const report = await migrate(
          source,
          target,
          json ? () => {} : (line) => note(line),
          () => {
            if (setup !== null && to.dir !== undefined) tls = writeAutoTls(setup, to.dir);
          },
        );
        const seconds = (performance.now() - t0) / 1000;
        if (json) outJson({ ...report, tls, seconds });
        else {
          // Said only by the run that finished (it copies the TLS set-up).
          const says: Record<TlsCopy["outcome"], string | null> = {
            none: null,
            left:
              `tls: the CA of serve --tls auto (fingerprint sha256:${tls.fingerprint}) is not copied: no --to DIR2; copy ${
                from.dir === undefined ? "" : join(from.dir, "tls")
              } into the data dir of each node that serves with --tls auto`,
            copied:
              `tls: the CA of serve --tls auto copied (fingerprint sha256:${tls.fingerprint}): clients that trust or pin it keep working`,
            kept:
              `tls: the target keeps its own CA (fingerprint sha256:${tls.fingerprint}), not the source's: clients must trust that one`,
          };
          if (report.finished && says[tls.outcome] !== null) out(says[tls.outcome]!);
          out(
            `migrated ${source.where} to ${target.where}: ${report.packs.copied} packs and ${report.large.copied} large blobs copied (${
              formatBytes(report.packs.bytes + report.large.bytes)
            }), ${Object.values(report.rows).reduce((a, b) => a + b, 0)} rows, in ${
              seconds.toFixed(1)
            } s${report.resumed ? " (resumed)" : ""}`,
          );
          out(
            report.verify.ok
              ? `verified: every row equal, ${report.verify.blobs} blobs re-hashed, clean`
              : report.finished
              ? `copied with the source's damage: ${report.inherited} blobs damaged there are damaged here too, ${report.verify.missing.length} missing (see keep verify)`
              : report.unmarked > 0
              ? `NOT verified: ${report.unmarked} blobs are damaged in the source too, unmarked: run keep verify --data ${source.where} (it marks them), then keep migrate again`
              : `NOT verified: ${report.verify.damaged.length} damaged (${report.recopy} objects to copy again), ${report.verify.missing.length} missing; run keep migrate again`,
          );
        }
        return report.verify.ok ? 0 : 4;
      } finally {
        await target.close();
      }
    } finally {
      await source.close();
      for (const d of scratch) await Deno.remove(d, { recursive: true }).catch(() => {});
    }
  },
};
