import { join, resolve } from "node:path";
import { KeepError } from "../errors.ts";
import { lockForLife } from "../platform/fs_native.ts";
import { openLocalStorage } from "../server/storage/open.ts";
import type { PruneResult } from "../format/api.ts";
import { pruneProject } from "../server/prune.ts";
import { KeepClient } from "../http/client.ts";
import { checkProjectName } from "../format/api.ts";
import { type Command, out } from "./command.ts";
import {
  CLIENT_FLAGS,
  clientOptions,
  flagOrEnv,
  formatBytes,
  parseFlags,
  positionals,
  required,
} from "./flags.ts";

export const pruneCommand: Command = {
  name: "prune",
  summary: "forget old commits of a project and free content no commit needs",
  help:
    `Usage: keep prune --project ID --keep-last N [--dry-run] (--server URL --token ADMIN | --data DIR)

Keeps the newest N commits of the project, removes older ones, then deletes
blobs no remaining commit of any project refers to. Through the server (admin
token) it is refused while uploads are in flight; with --data the server must
not be running on that directory.

Options:
  -p, --project ID    project (env KEEP_PROJECT)
  -k, --keep-last N   commits to keep (at least 1)
  -n, --dry-run       say what would go, change nothing
  -s, --server URL    prune through the server (env KEEP_SERVER); --token, --ca
  -d, --data DIR      prune a data directory directly (env KEEP_DATA)
      --json          JSON output`,
  async run(args) {
    const p = parseFlags("prune", args, {
      ...CLIENT_FLAGS,
      data: { type: "string", short: "d" },
      "keep-last": { type: "string", short: "k" },
      "dry-run": { type: "boolean", short: "n" },
      json: { type: "boolean" },
    });
    positionals(p, "prune", []);
    const project = checkProjectName(required(p, "prune", "project", "KEEP_PROJECT"));
    const keepLast = Number(required(p, "prune", "keep-last"));
    if (!Number.isInteger(keepLast) || keepLast < 1) {
      throw new KeepError(
        "usage",
        `Cannot parse --keep-last ${p.values["keep-last"]}: give a whole number >= 1`,
      );
    }
    const dryRun = !!p.values["dry-run"];
    const data = typeof p.values.data === "string" ? p.values.data : undefined;
    let result: PruneResult;
    if (data) {
      const dir = resolve(data);
      try {
        Deno.statSync(join(dir, "index.db"));
      } catch {
        throw new KeepError("usage", `Cannot prune ${dir}: no index.db there`);
      }
      if (lockForLife(join(dir, "serve.lock")) === false) {
        throw new KeepError(
          "unavailable",
          `Cannot prune ${dir}: keep serve is running on it; use --server`,
        );
      }
      const storage = await openLocalStorage(dir, { owner: true });
      try {
        result = await pruneProject(storage, project, keepLast, { dryRun });
      } finally {
        await storage.close();
      }
    } else {
      if (!flagOrEnv(p, "server", "KEEP_SERVER")) {
        throw new KeepError(
          "usage",
          "Cannot run keep prune: give --server URL (admin token) or --data DIR",
        );
      }
      const client = new KeepClient(clientOptions(p));
      try {
        result = await client.prune(project, keepLast, dryRun);
      } finally {
        client.close();
      }
    }
    if (p.values.json) out(JSON.stringify(result, null, 2));
    else {
      out(
        `keep prune: ${project}: ${
          dryRun ? "would remove" : "removed"
        } ${result.commitsRemoved} commits (kept ${result.commitsKept}), ${result.versionsRemoved} old file versions${
          dryRun ? "" : `, ${result.blobsRemoved} blobs (${formatBytes(result.bytesFreed)})`
        }`,
      );
    }
    return 0;
  },
};
