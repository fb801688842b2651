/**
 * `deno task bench --backend scaleout`: the same steps through one
 * `keep serve` on the embedded store (data dir, SQLite, packs) and on
 * Ceph RGW + PostgreSQL (scripts/services, on this machine), side by side
 * and in pairs (one run of each backend, back to back, the order swapped
 * every repetition), so both see the same moments of a machine whose speed
 * drifts: first backup (a fresh store each: a new data dir; a new bucket
 * prefix and database), no-change backup, restore into a fresh directory.
 * Besides each backend's median, a step reports the median of its pairs'
 * ratios: a slow moment of the disk (restores of 100k files ranged 10–82 s
 * within one run here) then moves one pair, not the comparison.
 *
 * @module
 */

import { join } from "node:path";
import postgres from "postgres";
import { KeepServer } from "./keep_server.ts";
import { runTimed } from "./measure.ts";
import { S3Client } from "../src/server/storage/s3_client.ts";

export type Backend = "embedded" | "scaleout";

export interface ScaleoutStep {
  step: "first" | "nochange" | "restore";
  /** Median seconds of each backend. */
  embedded: number;
  scaleout: number;
  /** Median of the pairs' ratios (scale-out / embedded, each pair run back to back). */
  pairRatio: number;
  /** Each pair's ratio, in run order. */
  pairRatios: number[];
  runs: number;
}

export interface ScaleoutFigures {
  dataset: string;
  files: number;
  bytes: number;
  steps: ScaleoutStep[];
}

interface Services {
  env: Record<string, string>;
  bucket: string;
  pgUrl: string;
}

let services: Services | null = null;

/** Starts Ceph RGW and PostgreSQL through scripts/services (once) and reads their env. */
async function startServices(root: string): Promise<Services> {
  if (services) return services;
  const out = await new Deno.Command(join(root, "scripts/services"), {
    args: ["up"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (out.code !== 0) {
    throw new Error(`scripts/services up failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  const env: Record<string, string> = {};
  for (const m of new TextDecoder().decode(out.stdout).matchAll(/^export (\w+)=(.*)$/gm)) {
    env[m[1]] = m[2];
  }
  services = { env, bucket: env.KEEP_S3_BUCKET, pgUrl: env.KEEP_PG_URL };
  return services;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** One store of one backend: its server and how to throw it away. */
interface Store {
  server: KeepServer;
  drop(): Promise<void>;
}

async function openStore(
  backend: Backend,
  o: { keepBin: string; work: string; root: string; tag: string },
): Promise<Store> {
  const dataDir = join(o.work, `${backend}-${o.tag}`);
  const log = join(o.work, `serve-${backend}.log`);
  if (backend === "embedded") {
    const server = await KeepServer.start(o.keepBin, dataDir, log, ["--compact-idle", "off"]);
    return {
      server,
      drop: async () => {
        await server.stop();
        await Deno.remove(dataDir, { recursive: true }).catch(() => {});
      },
    };
  }
  const s = await startServices(o.root);
  const db = `bench_${o.tag.replace(/\W/g, "_")}_${crypto.randomUUID().slice(0, 8)}`;
  const admin = postgres(s.pgUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${db}`);
  const url = new URL(s.pgUrl);
  url.pathname = `/${db}`;
  const prefix = `bench-${o.tag}-${Date.now().toString(36)}/`;
  for (const [k, v] of Object.entries(s.env)) Deno.env.set(k, v);
  const server = await KeepServer.start(o.keepBin, dataDir, log, [
    "--compact-idle",
    "off",
    "--blobs",
    `s3://${s.bucket}/${prefix}`,
    "--index",
    url.toString(),
  ]);
  return {
    server,
    drop: async () => {
      await server.stop();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
      await admin.unsafe(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch(() => {});
      await admin.end();
      // Its objects go too: the test services' OSD is a 20 GiB file, which a
      // few runs' large datasets filled (then every PUT hangs).
      const bucket = new S3Client({
        endpoint: s.env.AWS_ENDPOINT_URL,
        region: s.env.AWS_REGION,
        accessKey: s.env.AWS_ACCESS_KEY_ID,
        secretKey: s.env.AWS_SECRET_ACCESS_KEY,
        bucket: s.bucket,
      });
      for await (const page of bucket.list(prefix)) await bucket.deleteMany(page.map((o) => o.key));
    },
  };
}

/**
 * Runs `keep ARGS` and returns its wall time, failing on a non-zero exit.
 * Dirty pages of the step before are written out first (sync): a restore
 * right after another one otherwise pays for its writeback.
 */
async function timed(keepBin: string, args: string[]): Promise<number> {
  await new Deno.Command("sync").output();
  const t = await runTimed(keepBin, args, { capture: true });
  if (t.code !== 0) {
    throw new Error(`keep ${args.slice(0, 2).join(" ")} exited ${t.code}: ${t.stderr.trim()}`);
  }
  return t.seconds;
}

/**
 * Measures tree `dir` (`files` files of `bytes` bytes) on both backends:
 * `slowReps` first backups, `reps` no-change backups and restores.
 */
export async function benchScaleout(o: {
  dataset: string;
  dir: string;
  files: number;
  bytes: number;
  keepBin: string;
  work: string;
  /** Parent of the restore targets (default `work`), e.g. /dev/shm, away from a noisy disk. */
  restoreDir?: string;
  root: string;
  reps: number;
  slowReps: number;
  progress: (line: string) => void;
}): Promise<ScaleoutFigures> {
  Deno.mkdirSync(o.work, { recursive: true });
  // A pair's order swaps every repetition: neither backend always runs
  // right after the other's writes (its writeback, its dirty pages).
  const order = (rep: number): Backend[] =>
    rep % 2 ? ["embedded", "scaleout"] : ["scaleout", "embedded"];
  const backends: Backend[] = ["embedded", "scaleout"];
  const runs: Record<string, Record<Backend, number[]>> = {
    first: { embedded: [], scaleout: [] },
    nochange: { embedded: [], scaleout: [] },
    restore: { embedded: [], scaleout: [] },
  };
  const project = `bench-${o.dataset}`;
  const backup = (s: Store) => [
    "backup",
    "-s",
    s.server.url,
    "-p",
    project,
    "--settle",
    "0",
    "--json",
    o.dir,
  ];
  const kept: Partial<Record<Backend, Store>> = {};
  try {
    for (let rep = 1; rep <= o.slowReps; rep++) {
      for (const b of order(rep)) {
        await kept[b]?.drop();
        const store = await openStore(b, { ...o, tag: `${o.dataset}-${rep}` });
        kept[b] = store;
        const s = await timed(o.keepBin, backup(store));
        runs.first[b].push(s);
        o.progress(
          `[scaleout ${o.dataset}] ${b} first backup ${rep}/${o.slowReps}: ${s.toFixed(2)} s`,
        );
      }
    }
    for (let rep = 1; rep <= o.reps; rep++) {
      for (const b of order(rep)) {
        const s = await timed(o.keepBin, backup(kept[b]!));
        runs.nochange[b].push(s);
        o.progress(
          `[scaleout ${o.dataset}] ${b} no-change backup ${rep}/${o.reps}: ${s.toFixed(2)} s`,
        );
      }
    }
    for (let rep = 1; rep <= o.reps; rep++) {
      for (const b of order(rep)) {
        const dest = join(o.restoreDir ?? o.work, `keep-restore-${b}-${rep}`);
        const s = await timed(o.keepBin, [
          "restore",
          "-s",
          kept[b]!.server.url,
          "-p",
          project,
          dest,
        ]);
        runs.restore[b].push(s);
        await Deno.remove(dest, { recursive: true });
        o.progress(`[scaleout ${o.dataset}] ${b} restore ${rep}/${o.reps}: ${s.toFixed(2)} s`);
      }
    }
  } finally {
    for (const b of backends) await kept[b]?.drop().catch(() => {});
  }
  return {
    dataset: o.dataset,
    files: o.files,
    bytes: o.bytes,
    steps: (["first", "nochange", "restore"] as const).map((step) => {
      const r = runs[step];
      const pairRatios = r.embedded.map((e, i) => r.scaleout[i] / e);
      return {
        step,
        embedded: median(r.embedded),
        scaleout: median(r.scaleout),
        pairRatio: median(pairRatios),
        pairRatios,
        runs: r.embedded.length,
      };
    }),
  };
}
