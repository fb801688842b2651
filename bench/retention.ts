/**
 * The retention step of `deno task bench`: a project of 100,000 files with
 * 1,000 commits of about 1% change each, made through the server's ingest
 * engine in-process (no CLI, no walk: seconds per hundred commits), then a
 * real `keep serve` on that store prunes it to `--keep-last 10` and collects
 * the garbage, while
 *
 * - `GET /v1/health` is polled every 50 ms (its latency is the server's
 *   responsiveness during GC),
 * - a backup of another project (a generated tree, 1% mutated) runs, timed
 *   against the same backup run alone,
 * - the server's peak RSS is read from /proc.
 *
 * The server runs with `--gc-grace 0s`, so one round does everything a
 * deployed server spreads over a grace period (history, mark, sweep, moving
 * the live blobs out of mostly dead packs, deleting those).
 *
 * @module
 */

import { join } from "node:path";
import { commitHeader, Upload } from "../tests/craft.ts";
import { comparePaths } from "../src/format/paths.ts";
import { Ingest } from "../src/server/ingest.ts";
import { openLocalStorage, type Storage } from "../src/server/storage/open.ts";
import type { DatasetBuilder } from "./datasets.ts";
import { KeepServer } from "./keep_server.ts";
import { runTimed } from "./measure.ts";
import { benchBrowse, type BrowseFigures } from "./browse.ts";

export interface RetentionFigures {
  files: number;
  commits: number;
  changedPerCommit: number;
  genSeconds: number;
  /** Store size before and after (bytes on disk: index + packs + blobs). */
  storeBefore: number;
  storeAfter: number;
  /** `keep prune --keep-last 10 --wait`: forget, then the whole GC round. */
  gcSeconds: number;
  serverPeakMb: number;
  healthSamples: number;
  healthP50Ms: number;
  healthP99Ms: number;
  healthMaxMs: number;
  backupAloneSeconds: number;
  backupDuringSeconds: number;
  /** What the round reported. */
  gc: Record<string, number | null>;
  /** find, history, diff and listings on the store before the prune. */
  browse: BrowseFigures;
}

async function ingest(storage: Storage, body: Uint8Array): Promise<string> {
  const ing = await Ingest.start(storage, "big");
  try {
    for (let i = 0; i < body.length; i += 1 << 20) {
      ing.push(body.subarray(i, i + (1 << 20)));
      if (ing.wantsFlush) await ing.flush();
    }
    return (await ing.finish()).commit.id;
  } catch (err) {
    await ing.abort();
    throw err;
  }
}

const enc = new TextEncoder();
function content(file: number, version: number): Uint8Array {
  // ~200 bytes, distinct per version: a blob per change, as a rebuilt object would be.
  return enc.encode(`// file ${file} version ${version}\n`.padEnd(200, "x") + "\n");
}

/** Builds the 1,000-commit store in `dataDir`. */
export async function makeHistory(
  dataDir: string,
  files: number,
  commits: number,
  progress: (line: string) => void,
): Promise<void> {
  const storage = await openLocalStorage(dataDir, { create: true, owner: true });
  try {
    const dirs = Math.ceil(files / 100);
    const path = (i: number) => `d${String(i % dirs).padStart(4, "0")}/f${i}.o`;
    let u = new Upload().commit(commitHeader(null, { message: "c1" }));
    // Directories and files in path order, as a client sends them.
    const all: { path: string; file: number }[] = [];
    for (let d = 0; d < dirs; d++) all.push({ path: `d${String(d).padStart(4, "0")}`, file: -1 });
    for (let i = 0; i < files; i++) all.push({ path: path(i), file: i });
    all.sort((a, b) => comparePaths(a.path, b.path));
    for (const e of all) {
      if (e.file < 0) u.dir(e.path);
      else u.file(e.path, content(e.file, 0));
    }
    let parent = await ingest(storage, u.changes().end().bytes());
    const perCommit = Math.max(1, Math.round(files / 100));
    for (let c = 2; c <= commits; c++) {
      const picked = new Set<number>();
      for (let k = 0; picked.size < perCommit; k++) picked.add((c * 7919 + k * 104729) % files);
      const sorted = [...picked].sort((a, b) => comparePaths(path(a), path(b)));
      u = new Upload().commit(commitHeader(parent, { message: `c${c}` }));
      for (const i of sorted) u.file(path(i), content(i, c));
      parent = await ingest(storage, u.changes().end().bytes());
      if (c % 100 === 0) progress(`[retention] ${c} commits`);
    }
  } finally {
    await storage.close();
  }
}

async function du(dir: string): Promise<number> {
  const out = await new Deno.Command("du", { args: ["-sb", dir], stdout: "piped" }).output();
  return Number(new TextDecoder().decode(out.stdout).split("\t")[0]);
}

function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

/** Runs the whole step; `work` is a scratch directory it may fill (~1 GB). */
export async function benchRetention(o: {
  work: string;
  keepBin: string;
  builder: DatasetBuilder;
  files: number;
  commits: number;
  probeFiles: number;
  progress: (line: string) => void;
  /** A store made by an earlier run (copied, so it can be used again). */
  from?: string;
}): Promise<RetentionFigures> {
  const dataDir = join(o.work, "retention-store");
  const t0 = performance.now();
  if (o.from) {
    const cp = await new Deno.Command("cp", { args: ["-r", o.from, dataDir] }).output();
    if (!cp.success) throw new Error(`cannot copy ${o.from}`);
  } else await makeHistory(dataDir, o.files, o.commits, o.progress);
  const genSeconds = (performance.now() - t0) / 1000;
  o.progress(
    `[retention] ${o.commits} commits of ${o.files} files made in ${genSeconds.toFixed(1)} s`,
  );
  const probe = o.builder.small(join(o.work, "retention-probe"), o.probeFiles);
  const server = await KeepServer.start(o.keepBin, dataDir, join(o.work, "serve-retention.log"), [
    "--compact-idle",
    "off",
    "--retention-every",
    "off",
    "--gc-grace",
    "0s",
  ]);
  try {
    const backup = async () => {
      const t = await runTimed(o.keepBin, [
        "backup",
        "-s",
        server.url,
        "-p",
        "probe",
        "--settle",
        "0",
        "--json",
        probe.root,
      ], { capture: true });
      return t.seconds;
    };
    o.progress(`[retention] find, history, diff and listings of ${o.commits} commits`);
    const browse = await benchBrowse(server.url, o.keepBin, "big", o.commits, o.files);
    await backup(); // the probe's first backup
    o.builder.mutate(probe, 1);
    const backupAloneSeconds = await backup();
    o.builder.mutate(probe, 2);
    const storeBefore = await du(dataDir);

    // Health, every 50 ms, for the whole GC.
    const latencies: number[] = [];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const s = performance.now();
        const res = await fetch(`${server.url}/v1/health`);
        await res.body?.cancel();
        latencies.push(performance.now() - s);
        const wait = 50 - (performance.now() - s);
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
    })();
    await server.watch.begin();
    const g0 = performance.now();
    const prune = runTimed(o.keepBin, [
      "prune",
      "-s",
      server.url,
      "-p",
      "big",
      "--keep-last",
      "10",
      "--wait",
      "--json",
    ], { capture: true });
    // The backup starts once the round is under way.
    await new Promise((r) => setTimeout(r, 1000));
    const backupDuringSeconds = await backup();
    const pruned = await prune;
    const gcSeconds = (performance.now() - g0) / 1000;
    const usage = await server.watch.end();
    polling = false;
    await poller;
    const result = JSON.parse(pruned.stdout) as { gc: Record<string, number | null> };
    const sorted = [...latencies].sort((a, b) => a - b);
    return {
      files: o.files,
      commits: o.commits,
      changedPerCommit: Math.round(o.files / 100),
      genSeconds,
      storeBefore,
      storeAfter: await du(dataDir),
      gcSeconds,
      serverPeakMb: usage.peakKib / 1024,
      healthSamples: sorted.length,
      healthP50Ms: percentile(sorted, 0.5),
      healthP99Ms: percentile(sorted, 0.99),
      healthMaxMs: sorted[sorted.length - 1] ?? NaN,
      backupAloneSeconds,
      backupDuringSeconds,
      gc: result.gc,
      browse,
    };
  } finally {
    await server.stop();
  }
}
