import { join, resolve } from "node:path";
import { KeepError } from "../errors.ts";
import { checkProjectName, type Policy, type PruneResult } from "../format/api.ts";
import { KeepClient } from "../http/client.ts";
import { lockForLife } from "../platform/fs_native.ts";
import { Collector, pruneProject } from "../server/gc.ts";
import { hasRules } from "../server/retention.ts";
import { openLocalStorage } from "../server/storage/open.ts";
import { type Command, out, outJson } from "./command.ts";
import {
  CLIENT_FLAGS,
  clientOptions,
  flagOrEnv,
  formatBytes,
  parseFlags,
  positionals,
  required,
} from "./flags.ts";
import { planLines, policyFromFlags, RULE_FLAGS, RULE_HELP } from "./retention_flags.ts";

export const pruneCommand: Command = {
  name: "prune",
  summary: "forget old commits of a project by retention rules; GC frees their space",
  help:
    `Usage: keep prune --project ID [RULES] [--dry-run] [--wait] (--server URL --token ADMIN | --data DIR)

Applies retention rules to the project now: the commits no rule keeps are
forgotten, and garbage collection then frees the content no remaining commit
of any project needs. Without rules, the project's stored policy (keep policy
set) is applied. Runs while backups upload and restores stream; nothing is
refused. Through the server, GC runs in the background (its next round
starts at once); --wait waits for it. With --data (the server must not be
running on DIR) everything is done before the command ends.

${RULE_HELP}

Options:
  -p, --project ID    project (env KEEP_PROJECT)
  -n, --dry-run       print every commit with the rule that keeps it, or "remove"
      --wait          wait for the GC round and print what it freed
  -s, --server URL    prune through the server (env KEEP_SERVER); --token, --ca, --fingerprint
  -d, --data DIR      prune a data directory directly (env KEEP_DATA)
      --json          the result as JSON (every commit's verdict, the GC figures)`,
  async run(args) {
    const p = parseFlags("prune", args, {
      ...CLIENT_FLAGS,
      ...RULE_FLAGS,
      data: { type: "string", short: "d" },
      "dry-run": { type: "boolean", short: "n" },
      wait: { type: "boolean" },
      json: { type: "boolean" },
    });
    positionals(p, "prune", []);
    const project = checkProjectName(required(p, "prune", "project", "KEEP_PROJECT"));
    const given = policyFromFlags(p);
    const dryRun = !!p.values["dry-run"];
    const wait = !!p.values.wait;
    const data = typeof p.values.data === "string" ? p.values.data : undefined;
    let result: PruneResult;
    if (data) {
      const dir = resolve(data);
      try {
        Deno.statSync(join(dir, "index.db"));
      } catch {
        let pg = false;
        try {
          pg = Deno.statSync(join(dir, "index.json")).isFile;
        } catch { /* neither */ }
        throw new KeepError(
          "usage",
          pg
            ? `Cannot prune ${dir} directly: its index is in PostgreSQL; prune through a server (--server)`
            : `Cannot prune ${dir}: no index.db there`,
        );
      }
      if (lockForLife(join(dir, "serve.lock")) === false) {
        throw new KeepError(
          "unavailable",
          `Cannot prune ${dir}: keep serve is running on it; use --server`,
        );
      }
      const storage = await openLocalStorage(dir, { owner: true });
      // Nothing else uses the store: no grace is needed.
      const collector = new Collector(storage, { graceMs: 0 });
      try {
        const policy: Policy = hasRules(given)
          ? given
          : await storage.index.getPolicy(project) ?? {};
        result = await pruneProject(storage, collector, project, policy, { dryRun, wait: true });
      } finally {
        await collector.close();
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
        result = await client.prune(project, hasRules(given) ? given : null, { dryRun, wait });
      } finally {
        client.close();
      }
    }
    if (p.values.json) {
      outJson(result);
      return 0;
    }
    if (dryRun) { for (const line of planLines(result)) out(line); }
    out(
      `keep prune: ${project}: ${
        dryRun ? "would remove" : "removed"
      } ${result.commitsRemoved} commits, kept ${result.commitsKept}`,
    );
    const gc = result.gc;
    if (gc) {
      out(
        `  GC: ${gc.versionsRemoved} old file versions, ${gc.blobsSwept} blobs, ${gc.packsDeleted} packs; freed ${
          formatBytes(Math.max(0, gc.bytesDeleted - gc.bytesCopied))
        }${gc.damaged ? `; ${gc.damaged} damaged blobs found (keep verify)` : ""}`,
      );
      const waiting = gc.blobsMarked - gc.blobsSwept;
      if (waiting > 0 || gc.packsEvacuated > gc.packsDeleted) {
        out("  some space waits out the server's grace period (serve --gc-grace) before it goes");
      }
    } else if (!dryRun && result.commitsRemoved > 0) {
      out("  the server's GC frees their space in the background (--wait to wait for it)");
    }
    return 0;
  },
};
