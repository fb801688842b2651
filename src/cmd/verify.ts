import { resolve } from "node:path";
import { KeepError } from "../errors.ts";
import { openLocalStorage, type Storage } from "../server/storage/open.ts";
import type { VerifyReport } from "../format/api.ts";
import { verifyStore } from "../server/verify.ts";
import { KeepClient } from "../http/client.ts";
import { type Command, out, outJson } from "./command.ts";
import {
  clientOptions,
  flagOrEnv,
  formatBytes,
  parseFlags,
  parseIndexFlag,
  positionals,
} from "./flags.ts";

export const verifyCommand: Command = {
  name: "verify",
  summary: "check a data directory: every blob re-hashed, every commit complete",
  help: `Usage: keep verify --data DIR [--index URL] [--quick] [--json]
       keep verify --server URL --token ADMIN_TOKEN [--json]

Checks the index (SQLite's quick_check; in PostgreSQL, what its rows must
hold), re-reads every blob (inflate, CRC,
size, SHA-256), checks that every content hash a commit refers to is stored,
and reports orphans (blobs no commit uses, blob files the index does not
know: leftovers of interrupted uploads, harmless). Run it on the server's data
dir (safe while the server runs) or over HTTP with an admin token. A data dir
whose blobs are in a bucket (serve --blobs s3://…) reads them there, with the
keys from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.

A damaged blob is marked: uploads stop counting on it, so the next upload of
that content replaces it, and the files of head commits that use it are
flagged so their next backup sends them again (repair = run keep verify, then
the usual backups). --read-only only reports.

Options:
  -d, --data DIR   data directory (env KEEP_DATA)
      --index URL  the server's PostgreSQL index (as keep serve --index)
  -s, --server URL verify through the server (admin token: --token or KEEP_TOKEN)
      --token T, --ca FILE, --fingerprint FP
      --quick      skip re-hashing inline blobs (structure only)
      --read-only  report damage without marking it (no repair by the next backup)
      --json       JSON output

Exit codes: 0 clean, 4 damage found, 1/5/6 could not check.`,
  async run(args) {
    const p = parseFlags("verify", args, {
      data: { type: "string", short: "d" },
      index: { type: "string" },
      server: { type: "string", short: "s" },
      token: { type: "string" },
      ca: { type: "string" },
      fingerprint: { type: "string" },
      quick: { type: "boolean" },
      "read-only": { type: "boolean" },
      json: { type: "boolean" },
    });
    positionals(p, "verify", []);
    let report: VerifyReport;
    const data = flagOrEnv(p, "data", "KEEP_DATA");
    if (p.values.server) {
      const client = new KeepClient(clientOptions(p));
      try {
        report = await client.verify();
      } finally {
        client.close();
      }
    } else if (data) {
      const dir = resolve(data);
      let storage: Storage;
      try {
        storage = await openLocalStorage(dir, {
          pg: parseIndexFlag(p.values.index as string | undefined),
        });
      } catch (err) {
        if (err instanceof KeepError && err.code === "usage" && /no index\.db/.test(err.message)) {
          throw new KeepError("usage", `Cannot verify ${dir}: no index.db there`);
        }
        throw err;
      }
      try {
        report = await verifyStore(storage, {
          quick: !!p.values.quick,
          readOnly: !!p.values["read-only"],
        });
      } finally {
        await storage.close();
      }
    } else {
      throw new KeepError("usage", "Cannot run keep verify: give --data DIR or --server URL");
    }
    if (p.values.json) outJson(report);
    else {
      out(`keep verify: ${report.ok ? "OK" : "DAMAGED"}  (${report.seconds.toFixed(2)} s)`);
      out(
        `  index     ${report.integrity}; ${report.projects} projects, ${report.commits} commits`,
      );
      out(
        `  blobs     ${report.blobs} (${
          formatBytes(report.storedBytes)
        } stored), ${report.damaged.length} damaged`,
      );
      out(`  missing   ${report.missing.length} content hashes referenced but not stored`);
      out(
        `  orphans   ${report.orphanBlobs} unreferenced blobs, ${report.orphanFiles.length} unknown blob files`,
      );
      for (const d of report.damaged) out(`  damaged   ${d.hash}: ${d.problem}`);
      for (const m of report.missing) out(`  missing   ${m.project}:${m.path} (${m.hash})`);
      if (report.damaged.length) {
        out(
          "  repair    damaged blobs are marked: the next upload of their content replaces them, and the next backup of these files sends them again:",
        );
        for (const a of report.affected) out(`  resend    ${a.project}:${a.path}`);
      }
    }
    return report.ok ? 0 : 4;
  },
};
