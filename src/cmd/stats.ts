import { resolve } from "node:path";
import { checkProjectName, type Stats } from "../format/api.ts";
import { KeepClient } from "../http/client.ts";
import { readStats } from "../server/stats.ts";
import { openLocalStorage } from "../server/storage/open.ts";
import { type Command, out, outJson } from "./command.ts";
import {
  CLIENT_FLAGS,
  clientOptions,
  flagOrEnv,
  formatBytes,
  parseFlags,
  positionals,
} from "./flags.ts";
import { describePolicy } from "./retention_flags.ts";

export const statsCommand: Command = {
  name: "stats",
  summary: "what the store and its projects hold: commits, bytes, dedup, last GC",
  help: `Usage: keep stats [--project ID] [--json] (--server URL --token T | --data DIR)

Per project: commits, files and bytes of the latest commit, the stored bytes
its commits refer to, and of those the bytes only it holds (what deleting it
would free), and its policy. For the whole store (no --project; a token for
project '*'): blobs, stored bytes, logical bytes (the files of every kept
commit at full size, summed) and the dedup ratio, free space, blobs waiting out the GC
grace, and when the last retention and GC round ended and what it freed.

Options:
  -p, --project ID    only this project (env KEEP_PROJECT is not used here)
  -s, --server URL    ask the server (env KEEP_SERVER); --token, --ca, --fingerprint
  -d, --data DIR      read a data directory (env KEEP_DATA; safe while the server runs)
      --json          JSON output`,
  async run(args) {
    const p = parseFlags("stats", args, {
      ...CLIENT_FLAGS,
      data: { type: "string", short: "d" },
      json: { type: "boolean" },
    });
    positionals(p, "stats", []);
    const project = typeof p.values.project === "string"
      ? checkProjectName(p.values.project)
      : undefined;
    const data = flagOrEnv(p, "data", "KEEP_DATA");
    let stats: Stats;
    if (data && !p.values.server) {
      const storage = await openLocalStorage(resolve(data));
      try {
        stats = await readStats(storage, null, project);
      } finally {
        await storage.close();
      }
    } else {
      const client = new KeepClient(clientOptions(p));
      try {
        stats = await client.stats(project);
      } finally {
        client.close();
      }
    }
    if (p.values.json) {
      outJson(stats);
      return 0;
    }
    const s = stats.store;
    if (s) {
      out(`store: ${s.projects} projects, ${s.blobs} blobs, ${formatBytes(s.storedBytes)} stored`);
      out(
        `  logical ${formatBytes(s.logicalBytes)} (dedup and compression ${
          s.dedupRatio === null ? "-" : `${s.dedupRatio}x`
        }), free ${s.freeBytes === null ? "unknown" : formatBytes(s.freeBytes)}`,
      );
      out(
        `  last GC ${s.lastRun ?? "never"}${
          s.lastFreedBytes !== null ? `, freed ${formatBytes(Math.max(0, s.lastFreedBytes))}` : ""
        }; ${s.pendingOrphans} blobs wait out the grace${
          s.running ? `; running: ${s.running.phase}` : ""
        }`,
      );
    }
    for (const pr of stats.projects) {
      out(
        `${pr.name}: ${pr.commits} commits; latest ${
          pr.latest
            ? `${pr.latest.id} ${pr.latest.files} files ${formatBytes(pr.latest.bytes)}`
            : "none"
        }; stored ${formatBytes(pr.storedBytes)}, only here ${formatBytes(pr.exclusiveBytes)}`,
      );
      out(`  policy: ${describePolicy(pr.policy)}`);
    }
    return 0;
  },
};
