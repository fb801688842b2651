/**
 * `deno task bench`: Keep against its floors (find, tar | pigz -1, tar -xzf)
 * and restic, on generated datasets, in one run (issue 5). Prints a table
 * and writes bench/results.md with the machine and the spec's targets.
 *
 *   ./scripts/deno task bench                      # small + large: ~6 min on 2 cores, ~21 GB disk
 *   ./scripts/deno task bench --files 5000 --only small --reps 1   # quick check, ~15 s
 *   ./scripts/deno task bench --only million       # 1M-file project only: ~4 min
 *   ./scripts/deno task bench --only huge          # 4 GiB upload only: ~1 min
 *
 * Run with --help for every flag.
 *
 * @module
 */

import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { DatasetBuilder, type Tree } from "./datasets.ts";
import { KeepServer } from "./keep_server.ts";
import { snapshotKeep } from "./keep_source.ts";
import { loadAverage, machineInfo } from "./machine.ts";
import { hasGnuTime, run, runTimed, type Timed } from "./measure.ts";
import type { RssSample } from "./proc.ts";
import {
  type BenchReport,
  evaluateTargets,
  fmtBytes,
  medianSeconds,
  renderMarkdown,
  type RunRecord,
  type StepResult,
  type StorageRow,
  type StoreSize,
  textTable,
} from "./report.ts";
import { Restic } from "./restic.ts";
import { benchRetention } from "./retention.ts";
import { benchScaleout } from "./scaleout.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DATASETS = ["small", "large", "retention", "million", "huge"] as const;
type DatasetName = (typeof DATASETS)[number];

const HELP = `Usage: deno task bench [options]

Generates seeded datasets under a temp dir, measures the floors (find walk,
tar | pigz -1, tar -xzf), Keep (first, no-change, post-mutation backup,
restore against a real keep serve on 127.0.0.1) and restic, prints a table
and writes it with the machine and the spec's targets to bench/results.md.

Options:
  --only LIST        datasets to run, comma-separated: small, large, retention,
                     million, huge (default small,large,retention; --million/--huge
                     add theirs)
  --files N          files in the small dataset (default 100000; e.g. 5000 for
                     a quick run; dirs scale with it, ~100 files per dir)
  --reps N           repetitions of fast steps, median reported (default 5)
  --slow-reps N      repetitions of slow steps: first backups, mutation,
                     bulk steps on large, the extras (default 1)
  --large-count N    files in the large dataset (default 8)
  --large-mib A-B    size range of large files in MiB (default 64-256)
  --million          also run the manifest benchmark on a 1,000,000-file
                     project (~4 min on 2 cores: generation ~50 s, first
                     backup ~90 s, cleanup ~1 min)
  --million-files N  files in that project (default 1000000)
  --huge             also measure server RSS during a 4 GiB upload (~1 min)
  --huge-gib G       size of that upload in GiB (default 4; fractions allowed)
  --retention-files N    files in the retention step's project (default 100000)
  --retention-commits N  its commits, ~1% of the files changed in each (default 1000);
                     pruned to --keep-last 10 while health is polled and a backup runs
  --retention-from DIR   copy this data dir instead of generating the history (a store
                     made by bench/retention.ts's makeHistory, e.g. kept with --keep-data)
  --backend LIST     embedded (default) and/or scaleout: scaleout also runs first,
                     no-change backup and restore of small and large through one
                     keep serve on Ceph RGW + PostgreSQL (scripts/services up), side
                     by side with the embedded store in the same run
  --restore-dir DIR  where --backend scaleout restores go (default the temp dir), e.g.
                     /dev/shm: this VM's disk took 14-111 s for the same restore
  --no-restic        skip restic (it is skipped with a note when not installed)
  --seed N           dataset seed (default 1)
  --dir DIR          parent of the temp dir (default /tmp)
  --keep-data        leave the temp dir (datasets, stores) in place
  --out FILE         results file (default bench/results.md)
  -h, --help         this help`;

/** Parsed command line. */
interface Options {
  only: Set<DatasetName>;
  /** Also run small and large on Ceph RGW + PostgreSQL (--backend scaleout). */
  scaleout: boolean;
  /** Parent of the scale-out step's restore targets (--restore-dir). */
  restoreDir?: string;
  files: number;
  reps: number;
  slowReps: number;
  largeCount: number;
  largeMib: [number, number];
  millionFiles: number;
  hugeBytes: number;
  retentionFiles: number;
  retentionCommits: number;
  retentionFrom?: string;
  restic: boolean;
  seed: number;
  dir: string;
  keepData: boolean;
  out: string;
}

function usage(message: string): never {
  console.error(`bench: ${message} (see --help)`);
  Deno.exit(2);
}

function positiveInt(v: string | undefined, name: string, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v.replaceAll("_", "").replaceAll(",", ""));
  if (!Number.isInteger(n) || n < 1) usage(`--${name} needs a positive integer, got ${v}`);
  return n;
}

function parseOptions(args: string[]): Options {
  let p;
  try {
    p = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        only: { type: "string" },
        backend: { type: "string" },
        files: { type: "string" },
        reps: { type: "string" },
        "slow-reps": { type: "string" },
        "large-count": { type: "string" },
        "large-mib": { type: "string" },
        million: { type: "boolean" },
        "million-files": { type: "string" },
        huge: { type: "boolean" },
        "huge-gib": { type: "string" },
        "retention-files": { type: "string" },
        "retention-commits": { type: "string" },
        "retention-from": { type: "string" },
        "no-restic": { type: "boolean" },
        "restore-dir": { type: "string" },
        seed: { type: "string" },
        dir: { type: "string" },
        "keep-data": { type: "boolean" },
        out: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    usage((err as Error).message);
  }
  const v = p.values;
  if (v.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const only = new Set<DatasetName>();
  for (
    const name of (v.only ?? "small,large,retention").split(",").map((s) => s.trim()).filter(
      Boolean,
    )
  ) {
    if (!(DATASETS as readonly string[]).includes(name)) {
      usage(`unknown dataset in --only: ${name}`);
    }
    only.add(name as DatasetName);
  }
  if (v.million) only.add("million");
  if (v.huge) only.add("huge");
  const mib = /^(\d+)-(\d+)$/.exec(v["large-mib"] ?? "64-256");
  if (!mib || Number(mib[1]) < 1 || Number(mib[1]) > Number(mib[2])) {
    usage(`--large-mib needs MIN-MAX in MiB, got ${v["large-mib"]}`);
  }
  const gib = Number(v["huge-gib"] ?? "4");
  if (!(gib > 0)) usage(`--huge-gib needs a positive number, got ${v["huge-gib"]}`);
  const backends = (v.backend ?? "embedded").split(",").map((b) => b.trim()).filter(Boolean);
  for (const b of backends) {
    if (b !== "embedded" && b !== "scaleout") usage(`unknown backend in --backend: ${b}`);
  }
  return {
    only,
    scaleout: backends.includes("scaleout"),
    restoreDir: v["restore-dir"] ? resolve(v["restore-dir"]) : undefined,
    files: positiveInt(v.files, "files", 100_000),
    reps: positiveInt(v.reps, "reps", 5),
    slowReps: positiveInt(v["slow-reps"], "slow-reps", 1),
    largeCount: positiveInt(v["large-count"], "large-count", 8),
    largeMib: [Number(mib[1]), Number(mib[2])],
    millionFiles: positiveInt(v["million-files"], "million-files", 1_000_000),
    hugeBytes: Math.round(gib * 2 ** 30),
    retentionFiles: positiveInt(v["retention-files"], "retention-files", 100_000),
    retentionCommits: positiveInt(v["retention-commits"], "retention-commits", 1000),
    retentionFrom: v["retention-from"] ? resolve(v["retention-from"]) : undefined,
    restic: !v["no-restic"],
    seed: positiveInt(v.seed, "seed", 1),
    dir: resolve(v.dir ?? "/tmp"),
    keepData: !!v["keep-data"],
    out: resolve(v.out ?? join(ROOT, "bench/results.md")),
  };
}

const opts = parseOptions(Deno.args);
const benchStart = performance.now();

// The floors of small and large need these; a missing one would fail the dataset after minutes.
if (opts.only.has("small") || opts.only.has("large")) {
  const missing = ["find", "tar", "pigz", "bash"].filter((tool) =>
    !(Deno.env.get("PATH") ?? "").split(":").some((dir) => {
      try {
        return Deno.statSync(join(dir, tool)).isFile;
      } catch {
        return false;
      }
    })
  );
  if (missing.length) {
    console.error(
      `bench: Cannot run the floors: ${missing.join(", ")} not on PATH (Debian: apt-get install ${
        missing.map((t) => t === "find" ? "findutils" : t).join(" ")
      })`,
    );
    Deno.exit(2);
  }
}

/** Progress goes to stderr, stamped with the time since start, so stdout is only the table. */
function progress(line: string): void {
  const t = ((performance.now() - benchStart) / 1000).toFixed(0).padStart(5);
  console.error(`bench ${t}s  ${line}`);
}

const fmt = (s: number) => (s < 10 ? s.toFixed(3) : s.toFixed(2));
/** KiB → decimal MB, as the report's RSS columns. */
const mb = (kib: number) => ((kib * 1024) / 1e6).toFixed(0);

// ---- state shared by the phases -------------------------------------------------------------

const machine = await machineInfo(opts.dir);
const work = await Deno.makeTempDir({ dir: opts.dir, prefix: "keep-bench-" });
// Every Keep process of the run (servers and clients) comes from this copy of the sources.
const keepSource = await snapshotKeep(ROOT, join(work, "keep-src"));
const KEEP = keepSource.bin;
const servers = new Set<KeepServer>();
const builder = new DatasetBuilder(opts.seed);
const resticVersion = opts.restic ? await Restic.version() : null;
const report: BenchReport = {
  command: `deno task bench${Deno.args.length ? " " + Deno.args.join(" ") : ""}`,
  machine,
  settings: [],
  datasets: [],
  steps: [],
  storage: [],
  ran: new Set(),
  notes: [],
  extras: [],
  totalSeconds: 0,
  scaled: opts.files !== 100_000 && opts.only.has("small"),
};
report.settings.push(
  `datasets: ${[...opts.only].join(", ")}; seed ${opts.seed}`,
  `repetitions: ${opts.reps} for fast steps (find walk, no-change backups, small-dataset floors and restores, manifest GET), ${opts.slowReps} for slow ones (first backups, mutation rounds, bulk steps on large, the extras)`,
  "warm cache: datasets are written just before, `sync` runs before every timed run (no dirty pages flushed during a step), nothing is dropped from the page cache",
  "paired floors: this VM's speed drifts by tens of percent within minutes, so each Keep no-change backup runs right after a find walk and each Keep restore right after a tar -xzf, and those ratios compare medians of the paired runs",
  "every repetition writes into a fresh directory (restores, tar -xzf) or store (first backups), and nothing is deleted until the run ends: on this kind of VM, file creation right after deleting many files costs several times more kernel time",
  `keep: ${keepSource.describe}, copied to the temp dir at the start so edits during the run cannot mix versions; its \`scripts/keep\` (Deno ${Deno.version.deno}, from source), \`keep serve --no-auth\` on 127.0.0.1 with a fresh data dir per dataset (and per first-backup repetition), \`keep backup --settle 0 --json\`, \`keep restore\``,
  resticVersion
    ? `restic: ${
      resticVersion.split(" ").slice(0, 2).join(" ")
    }, local repository (format 2, compression auto), its cache in the temp dir; \`restic backup --quiet\`, \`restic restore latest\` (restic does not re-hash restored files without --verify; keep restore checks every file's SHA-256)`
    : `restic: ${opts.restic ? "not installed: skipped" : "skipped (--no-restic)"}`,
  `client peak RSS and CPU: ${
    hasGnuTime()
      ? "GNU time (/usr/bin/time, wait4 rusage)"
      : "/proc VmRSS sampled every 10 ms (GNU time not installed)"
  }; server: /proc/<pid>/status VmHWM after resetting it (clear_refs 5) at the start of each step, so each step's peak is its own`,
);
if (!resticVersion) {
  report.notes.push(
    opts.restic
      ? "restic is not installed: its rows and the targets that compare with it are skipped."
      : "restic skipped (--no-restic).",
  );
}

async function cleanup(): Promise<void> {
  for (const s of servers) {
    try {
      await s.stop();
    } catch { /* best effort */ }
  }
  servers.clear();
  if (!opts.keepData) await Deno.remove(work, { recursive: true }).catch(() => {});
}

Deno.addSignalListener("SIGINT", () => {
  progress("interrupted: stopping servers and removing the temp dir");
  cleanup().finally(() => Deno.exit(130));
});

// ---- helpers --------------------------------------------------------------------------------

async function rmrf(path: string): Promise<void> {
  await run("rm", ["-rf", path]);
}

/**
 * Disposes of a step's output. Deleting many files makes the next file
 * creations far slower on some filesystems for minutes afterwards (measured
 * on ext4 in a VM: a 30k-file tar -xzf went from 3 s to 15 s of mostly
 * kernel time after a few rm -rf of similar trees), which would bill one
 * tool for another's cleanup. So outputs stay until the run ends, unless the
 * disk is too small for that (eager mode, with a note).
 */
async function discard(path: string): Promise<void> {
  if (eager) await rmrf(path);
}

let eager = false;

async function duSize(path: string): Promise<StoreSize> {
  const disk = Number((await run("du", ["-sk", path])).split("\t")[0]) * 1024;
  const apparent = Number((await run("du", ["-sb", path])).split("\t")[0]);
  return { disk, apparent };
}

const idleNoted = new Set<string>();

/**
 * Timed steps run with recompression at rest off, so that it never takes CPU
 * from a step (Keep's or restic's); `compactAtRest` runs it afterwards.
 */
async function startServer(
  name: string,
  dataDir: string,
  extraArgs = ["--compact-idle", "off"],
): Promise<KeepServer> {
  const s = await KeepServer.start(KEEP, dataDir, join(work, `serve-${name}.log`), extraArgs);
  servers.add(s);
  if (!idleNoted.has(name)) {
    // The baseline every server RSS figure includes: runtime, binary pages, empty index.
    idleNoted.add(name);
    const snap = await s.watch.snapshot();
    if (snap) {
      report.notes.push(
        `${name}: keep serve just after start (empty data dir): RSS ${mb(snap.rssKib)} MB.`,
      );
    }
  }
  return s;
}

/**
 * Lets an idle server recompress the store at rest (what a deployed server
 * does between builds) and returns how long it took.
 */
async function compactAtRest(name: string, dataDir: string): Promise<number> {
  const t0 = performance.now();
  const s = await startServer(`${name}-compact`, dataDir, ["--compact-idle", "1s"]);
  try {
    const { DatabaseSync } = await import("node:sqlite");
    for (;;) {
      await new Promise((r) => setTimeout(r, 1000));
      const db = new DatabaseSync(join(dataDir, "index.db"), { readOnly: true });
      const n = Number(
        (db.prepare("SELECT count(*) AS n FROM blobs WHERE pack IS NOT NULL AND level IS NULL")
          .get() as {
            n: number;
          }).n,
      );
      db.close();
      if (n === 0) break;
    }
    await new Promise((r) => setTimeout(r, 3000)); // the last step empties old packs
  } finally {
    await stopServer(s);
  }
  // The old encodings' space is freed by GC (after its grace on a running
  // server): a round on the data dir now, keeping every commit.
  await runTimed(KEEP, ["prune", "--data", dataDir, "-p", `bench-${name}`, "-k", "1000000"], {
    capture: true,
  });
  return (performance.now() - t0) / 1000;
}

async function stopServer(s: KeepServer): Promise<void> {
  servers.delete(s);
  await s.stop();
}

/** Adds a step row and returns it, so runs can be appended as they happen. */
function newStep(step: Omit<StepResult, "runs">): StepResult {
  const s: StepResult = { ...step, runs: [] };
  report.steps.push(s);
  return s;
}

/**
 * Runs `once` `reps` times as step `step`, each after `sync` (so writeback
 * of the previous step is not timed) and around optional untimed setup.
 */
async function measureStep(
  step: Omit<StepResult, "runs">,
  reps: number,
  once: (rep: number) => Promise<RunRecord>,
  setup?: (rep: number) => Promise<void>,
  teardown?: (rep: number) => Promise<void>,
): Promise<StepResult> {
  const s = newStep(step);
  for (let rep = 1; rep <= reps; rep++) {
    await setup?.(rep);
    await run("sync", []);
    const r = await once(rep);
    s.runs.push(r);
    progress(`[${s.dataset}] ${s.label} ${rep}/${reps}: ${fmt(r.seconds)} s`);
    await teardown?.(rep);
  }
  return s;
}

/** A tool run (floor or restic): client numbers only. */
async function plain(cmd: string, args: string[]): Promise<RunRecord> {
  const t = await runTimed(cmd, args);
  return { seconds: t.seconds, clientCpu: t.cpuSeconds, clientRssKib: t.maxRssKib };
}

/** A Keep CLI run with the server's per-step peak RSS and CPU. */
async function keepRun(
  server: KeepServer,
  args: string[],
  keepSamples = false,
): Promise<RunRecord & { samples: RssSample[] }> {
  await server.watch.begin(keepSamples);
  let t: Timed;
  try {
    t = await runTimed(KEEP, args, { capture: true });
  } catch (err) {
    await server.watch.end();
    throw err;
  }
  const usage = await server.watch.end();
  let self: { seconds?: number; wireBytes?: number; commit?: { id?: string } } = {};
  try {
    self = JSON.parse(t.stdout);
  } catch { /* not --json output */ }
  return {
    seconds: t.seconds,
    clientCpu: t.cpuSeconds,
    clientRssKib: t.maxRssKib,
    serverCpu: usage.cpuSeconds,
    serverRssKib: usage.peakKib,
    selfSeconds: self.seconds,
    wireBytes: self.wireBytes,
    commitId: self.commit?.id,
    samples: usage.samples,
  };
}

function backupArgs(server: KeepServer, project: string, dir: string): string[] {
  return ["backup", "-s", server.url, "-p", project, "--settle", "0", "--json", dir];
}

/** Files and bytes under `dir`, to check a restore brought everything back. */
async function census(dir: string): Promise<{ files: number; bytes: number }> {
  const out = await run("find", [dir, "-type", "f", "-printf", "%s\n"]);
  let files = 0, bytes = 0;
  for (const line of out.split("\n")) {
    if (line) {
      files++;
      bytes += Number(line);
    }
  }
  return { files, bytes };
}

async function writeResults(): Promise<void> {
  report.totalSeconds = (performance.now() - benchStart) / 1000;
  Deno.mkdirSync(dirname(opts.out), { recursive: true });
  Deno.writeTextFileSync(opts.out, renderMarkdown(report));
  // Aligned tables read better as plain text, and the file then passes `deno fmt --check`
  // wherever it is written (--no-config: the repository may exclude it; same line width).
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", "--no-config", "--line-width", "100", opts.out],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output();
}

// ---- small and large: floors, Keep, restic side by side -------------------------------------

async function benchTree(name: "small" | "large", tree: Tree): Promise<void> {
  const dir = tree.root;
  const files = tree.files.length;
  const bytes = tree.bytes;
  const fast = opts.reps;
  const slow = opts.slowReps;
  const bulk = name === "small" ? fast : slow; // bulk-data steps repeat only on small
  const base = join(work, `${name}-stores`);
  Deno.mkdirSync(base, { recursive: true });
  const row = (
    id: string,
    label: string,
    tool: StepResult["tool"],
    extra: Partial<StepResult> = {},
  ) => ({
    id: `${name}/${tool}/${id}`,
    dataset: name,
    tool,
    label,
    ...extra,
  });
  const ref = (tool: string, id: string, shown: string) => ({
    id: `${name}/${tool}/${id}`,
    name: shown,
  });

  // Floors.
  progress(`[${name}] floors`);
  await measureStep(
    row("find", "find walk (floor: no-change)", "floor", { files }),
    fast,
    () => plain("find", [dir, "-printf", "%s %T@ %p\\n"]),
  );
  const archive = join(base, "floor.tar.gz");
  await measureStep(
    row("tarpigz", "tar | pigz -1 (floor: first backup)", "floor", { files, bytes }),
    bulk,
    () =>
      plain("bash", [
        "-c",
        'set -o pipefail; tar -cf - -C "$1" "$2" | pigz -1 > "$3"',
        "bash",
        dirname(dir),
        basename(dir),
        archive,
      ]),
  );
  const tarBytes = Number(
    (await run("bash", [
      "-c",
      'tar -cf - -C "$1" "$2" | wc -c',
      "bash",
      dirname(dir),
      basename(dir),
    ]))
      .trim(),
  );
  const info = report.datasets.find((d) => d.name === name);
  if (info) info.gzipRatio = Deno.statSync(archive).size / tarBytes;
  // tar -xzf, the restore floor, is timed later, each run next to a Keep restore.

  // First backups: each repetition needs an empty store.
  const project = `bench-${name}`;
  let keepData = "";
  let server: KeepServer | undefined;
  const storage: StorageRow = { dataset: name };
  report.storage.push(storage);
  await measureStep(
    row("first", "keep first backup", "keep", {
      files,
      bytes,
      ref: ref("floor", "tarpigz", "tar|pigz"),
    }),
    slow,
    () => keepRun(server!, backupArgs(server!, project, dir)),
    async (rep) => {
      // Each repetition starts from an empty store, in a fresh directory (see discard()).
      if (server) {
        await stopServer(server);
        await discard(keepData);
      }
      keepData = join(base, `keep-data-${rep}`);
      server = await startServer(name, keepData);
    },
  );
  storage.keepFirst = await duSize(keepData);
  const srv = server!;

  let restic = null as Restic | null; // (the cast keeps TS from narrowing it to null for good)
  if (resticVersion) {
    await measureStep(
      row("first", "restic first backup", "restic", {
        files,
        bytes,
        ref: ref("floor", "tarpigz", "tar|pigz"),
      }),
      slow,
      () => restic!.backup(dir).then(toRecord),
      async (rep) => {
        if (restic) {
          await discard(restic.repo);
          await discard(restic.env.RESTIC_CACHE_DIR);
        }
        restic = new Restic(join(base, `restic-repo-${rep}`), join(base, `restic-cache-${rep}`));
        await restic.init();
      },
    );
    storage.resticFirst = await duSize(restic!.repo);
  }
  const rs: Restic | null = restic; // fixed from here on; closures see it non-null

  // No-change backups, each right after a find walk: this VM's speed drifts by
  // tens of percent over minutes, so the ratio is taken against the walks of the
  // same moments (the floor row above stays for the table).
  const pairedFind = newStep(
    row("find-paired", "find walk (each run just before a no-change backup)", "floor", { files }),
  );
  const nochange = newStep(
    row("nochange", "keep no-change backup", "keep", {
      files,
      ref: ref("floor", "find-paired", "find (paired)"),
    }),
  );
  for (let rep = 1; rep <= fast; rep++) {
    await run("sync", []);
    const f = await plain("find", [dir, "-printf", "%s %T@ %p\\n"]);
    pairedFind.runs.push(f);
    await run("sync", []);
    const k = await keepRun(srv, backupArgs(srv, project, dir));
    nochange.runs.push(k);
    progress(
      `[${name}] keep no-change backup ${rep}/${fast}: ${fmt(k.seconds)} s (find just before: ${
        fmt(f.seconds)
      } s)`,
    );
  }
  if (rs) {
    await measureStep(
      row("nochange", "restic no-change backup", "restic", {
        files,
        ref: ref("floor", "find", "find"),
      }),
      fast,
      () => rs.backup(dir).then(toRecord),
    );
  }

  // The post-mutation rows of both tools (restic's when it runs).
  const mutationSteps = () => ({
    km: newStep(row("mutation", "keep post-mutation backup", "keep", {
      files,
      ref: ref("keep", "nochange", "no-change"),
    })),
    rm: rs
      ? newStep(row("mutation", "restic post-mutation backup", "restic", {
        files,
        ref: ref("restic", "nochange", "no-change"),
      }))
      : null,
  });

  // Mutation rounds (small only): both tools back up the same mutated tree.
  if (name === "small") {
    const { km, rm } = mutationSteps();
    for (let round = 1; round <= slow; round++) {
      const m = builder.mutate(tree, round);
      km.note = `${m.changed} files changed, ${m.added} added, ${m.deleted} deleted per round; ${
        fmtBytes(m.bytesWritten)
      } written (what MB/s counts)`;
      km.bytes = m.bytesWritten;
      if (rm) rm.bytes = m.bytesWritten;
      await run("sync", []);
      const k = await keepRun(srv, backupArgs(srv, project, dir));
      km.runs.push(k);
      progress(
        `[${name}] keep post-mutation backup ${round}/${slow}: ${fmt(k.seconds)} s (${km.note})`,
      );
      if (rs && rm) {
        await run("sync", []);
        const r = toRecord(await rs.backup(dir));
        rm.runs.push(r);
        progress(`[${name}] restic post-mutation backup ${round}/${slow}: ${fmt(r.seconds)} s`);
      }
    }
  }

  // Edits inside big files (large only): both tools back up the same edited
  // tree; the note gives each store's growth from that backup.
  if (name === "large") {
    const { km, rm } = mutationSteps();
    const growth = { keep: 0, restic: 0 };
    for (let round = 1; round <= slow; round++) {
      const m = builder.mutateLarge(tree, round);
      km.bytes = m.bytesWritten;
      if (rm) rm.bytes = m.bytesWritten;
      await run("sync", []);
      const keepBefore = (await duSize(srv.dataDir)).apparent;
      const k = await keepRun(srv, backupArgs(srv, project, dir));
      km.runs.push(k);
      growth.keep += (await duSize(srv.dataDir)).apparent - keepBefore;
      if (rs && rm) {
        await run("sync", []);
        const resticBefore = (await duSize(rs.repo)).apparent;
        const r = toRecord(await rs.backup(dir));
        rm.runs.push(r);
        growth.restic += (await duSize(rs.repo)).apparent - resticBefore;
      }
      km.note =
        `${m.changed} big files edited per round (2 MiB rewritten in place, 8 MiB appended, 64 KiB inserted in the middle, 512 KiB rewritten at the front); ${
          fmtBytes(m.bytesWritten)
        } new bytes (what MB/s counts); store growth over ${round} round(s): keep ${
          fmtBytes(growth.keep)
        }${rm ? `, restic ${fmtBytes(growth.restic)}` : ""}`;
      if (rm) rm.note = km.note;
      storage.keepMutationGrowth = growth.keep;
      if (rm) storage.resticMutationGrowth = growth.restic;
      progress(
        `[${name}] post-mutation backup ${round}/${slow}: keep ${fmt(k.seconds)} s${
          rm ? `, restic ${fmt(rm.runs[rm.runs.length - 1].seconds)} s` : ""
        } (${km.note})`,
      );
    }
  }

  // Restores of the latest state, each into a fresh directory, each right
  // after a tar -xzf of the same files (the floor, timed in the same moments)
  // and right before restic's (this VM's speed drifts within minutes: the
  // pairs compare the same moments).
  const dest = (tool: string, rep: number) => join(base, `${tool}-restore-${rep}`);
  const untar = newStep(row("untar", "tar -xzf (floor: restore)", "floor", { files, bytes }));
  const keepRestore = newStep(
    row("restore", "keep restore", "keep", {
      files: tree.files.length,
      bytes: tree.bytes,
      ref: ref("floor", "untar", "tar -xzf"),
    }),
  );
  const resticRestore = rs
    ? newStep(row("restore", "restic restore", "restic", {
      files: tree.files.length,
      bytes: tree.bytes,
      ref: ref("floor", "untar", "tar -xzf"),
    }))
    : null;
  for (let rep = 1; rep <= bulk; rep++) {
    await Deno.mkdir(dest("untar", rep));
    await run("sync", []);
    const u = await plain("tar", ["-xzf", archive, "-C", dest("untar", rep)]);
    untar.runs.push(u);
    await run("sync", []);
    const k = await keepRun(srv, ["restore", "-s", srv.url, "-p", project, dest("keep", rep)]);
    keepRestore.runs.push(k);
    progress(
      `[${name}] keep restore ${rep}/${bulk}: ${fmt(k.seconds)} s (tar -xzf just before: ${
        fmt(u.seconds)
      } s)`,
    );
    if (rep === 1) {
      // Not timed: the restore must bring back every file and byte, or its time means nothing.
      const c = await census(dest("keep", rep));
      if (c.files !== tree.files.length || c.bytes !== tree.bytes) {
        report.notes.push(
          `${name}: keep restore MISMATCH: ${c.files} files / ${c.bytes} B restored, expected ${tree.files.length} / ${tree.bytes}`,
        );
        progress(`[${name}] keep restore MISMATCH (${c.files} files, ${c.bytes} B)`);
      } else progress(`[${name}] keep restore checked: ${c.files} files, ${fmtBytes(c.bytes)}`);
    }
    // Before restic's: in eager mode (a small disk) one restored copy at a time.
    await discard(dest("untar", rep));
    await discard(dest("keep", rep));
    if (rs && resticRestore) {
      await run("sync", []);
      const r = toRecord(await rs.restore(dest("restic", rep)));
      resticRestore.runs.push(r);
      progress(`[${name}] restic restore ${rep}/${bulk}: ${fmt(r.seconds)} s`);
      await discard(dest("restic", rep));
    }
  }
  await Deno.remove(archive);

  await stopServer(srv);
  storage.keepBeforeCompaction = await duSize(keepData);
  const compactSeconds = await compactAtRest(name, keepData);
  storage.keepFinal = await duSize(keepData);
  report.notes.push(
    `${name}: recompression at rest (idle server, deflate 6) and a GC round (keep prune --data, every commit kept) took ${
      fmt(compactSeconds)
    } s: store ${fmtBytes(storage.keepBeforeCompaction.disk)} before, ${
      fmtBytes(storage.keepFinal.disk)
    } after.`,
  );
  if (rs) storage.resticFinal = await duSize(rs.repo);
  await discard(base);
}

function toRecord(t: { seconds: number; cpuSeconds: number; maxRssKib: number }): RunRecord {
  return { seconds: t.seconds, clientCpu: t.cpuSeconds, clientRssKib: t.maxRssKib };
}

// ---- extras -------------------------------------------------------------------------------

async function benchMillion(tree: Tree): Promise<void> {
  const n = opts.millionFiles;
  const base = join(work, "million-stores");
  const keepData = join(base, "keep-data");
  const project = "bench-million";
  await measureStep(
    { id: "million/floor/find", dataset: "million", tool: "floor", label: "find walk", files: n },
    opts.reps,
    () => plain("find", [tree.root, "-printf", "%s %T@ %p\\n"]),
  );
  const server = await startServer("million", keepData);
  const first = await measureStep(
    {
      id: "million/keep/first",
      dataset: "million",
      tool: "keep",
      label: "keep first backup (builds the project)",
      files: n,
    },
    1,
    () => keepRun(server, backupArgs(server, project, tree.root)),
  );
  // Keep caches the head manifest (built in the background after a commit), so one number
  // would hide either the cold or the warm cost: measure the first GET right after the
  // commit (no sync first, to stay "right after"), cached GETs, and the uncached build
  // from the index (?commit=ID skips the cache).
  const url = `${server.url}/v1/projects/${project}/manifest`;
  let size = 0;
  const get = async (target: string): Promise<RunRecord> => {
    await server.watch.begin();
    let t: Timed;
    try {
      t = await runTimed(
        "curl",
        ["-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", target],
        { capture: true },
      );
    } catch (err) {
      await server.watch.end();
      throw err;
    }
    const usage = await server.watch.end();
    const [code, bytes, total] = t.stdout.trim().split(" ");
    if (code !== "200") throw new Error(`GET ${target} answered ${code}`);
    size = Number(bytes);
    // curl's own total excludes its process start-up: the server's answer time.
    return {
      seconds: Number(total),
      clientCpu: t.cpuSeconds,
      clientRssKib: t.maxRssKib,
      serverCpu: usage.cpuSeconds,
      serverRssKib: usage.peakKib,
    };
  };
  const manifestRow = (id: string, label: string) => ({
    id: `million/keep/${id}`,
    dataset: "million",
    tool: "keep" as const,
    label,
    files: n,
  });
  const cold = newStep(
    manifestRow("manifest-first", "GET latest manifest, right after the commit"),
  );
  cold.runs.push(await get(url));
  progress(`[million] ${cold.label}: ${fmt(cold.runs[0].seconds)} s`);
  await measureStep(
    manifestRow("manifest", "GET latest manifest, cached"),
    opts.reps,
    () => get(url),
  );
  const wholeSize = size;
  let statSize = 0;
  const statStep = await measureStep(
    manifestRow("manifest-stat", "GET latest manifest without hashes (?fields=stat), cached"),
    opts.reps,
    async () => {
      const r = await get(`${url}?fields=stat`);
      statSize = size;
      return r;
    },
  );
  const head = first.runs[0].commitId;
  if (head) {
    await measureStep(
      manifestRow("manifest-index", "GET manifest ?commit=ID (uncached, from the index)"),
      opts.reps,
      () => get(`${url}?commit=${head}`),
    );
  }
  const nochange = await measureStep(
    {
      id: "million/keep/nochange",
      dataset: "million",
      tool: "keep",
      label: "keep no-change backup",
      files: n,
      ref: { id: "million/floor/find", name: "find" },
    },
    opts.slowReps,
    () => keepRun(server, backupArgs(server, project, tree.root)),
  );
  await stopServer(server);
  const du = await duSize(keepData);
  const peak = (s: StepResult, k: "clientRssKib" | "serverRssKib") =>
    Math.max(...s.runs.map((r) => r[k] ?? 0));
  report.extras.push({
    title: `Extra: ${n.toLocaleString("en-US")}-file project (--million)`,
    body: [
      `Tree: ${
        n.toLocaleString("en-US")
      } tiny distinct files in ${tree.dirCount} directories (1,000 per dir), generated in ${
        fmt(genSeconds.million ?? NaN)
      } s.`,
      `First backup (builds the project): ${fmt(medianSeconds(first))} s, client ${
        mb(peak(first, "clientRssKib"))
      } MB / server ${mb(peak(first, "serverRssKib"))} MB peak RSS; store ${fmtBytes(du.disk)}.`,
      `Latest manifest: ${fmtBytes(wholeSize)} gzip'd NDJSON (curl time_total): ${
        fmt(cold.runs[0].seconds)
      } s for the first GET right after the commit, ${
        fmt(medianSeconds(report.steps.find((s) => s.id === "million/keep/manifest")!))
      } s once cached (median)${
        head
          ? `, ${
            fmt(medianSeconds(report.steps.find((s) => s.id === "million/keep/manifest-index")!))
          } s built from the index without the cache (?commit=ID, median)`
          : ""
      }. Without hashes (?fields=stat, what a backup diffs against): ${fmtBytes(statSize)}, ${
        fmt(medianSeconds(statStep))
      } s once cached (median).`,
      `No-change backup against it: ${fmt(medianSeconds(nochange))} s, client peak RSS ${
        mb(peak(nochange, "clientRssKib"))
      } MB, server ${mb(peak(nochange, "serverRssKib"))} MB.`,
    ].join("\n\n"),
  });
  await discard(base);
}

async function benchHuge(tree: Tree): Promise<void> {
  const base = join(work, "huge-stores");
  let keepData = join(base, "keep-data-1");
  let server = await startServer("huge", keepData);
  let samples: RssSample[] = [];
  const step = await measureStep(
    {
      id: "huge/keep/backup",
      dataset: "huge",
      tool: "keep",
      label: `keep backup of one ${(tree.bytes / 2 ** 30).toFixed(1)} GiB file`,
      files: 1,
      bytes: tree.bytes,
    },
    opts.slowReps,
    async () => {
      const r = await keepRun(server, backupArgs(server, "bench-huge", tree.root), true);
      samples = r.samples;
      return r;
    },
    // Each repetition is a first upload: a second one of the same content would be deduplicated.
    async (rep) => {
      if (rep > 1) {
        await stopServer(server);
        await discard(keepData);
        keepData = join(base, `keep-data-${rep}`);
        server = await startServer("huge", keepData);
      }
    },
  );
  await stopServer(server);
  const du = await duSize(keepData);
  // RSS over the upload, in tenths of its duration: flat means the last tenths match the first.
  const total = samples.length ? samples[samples.length - 1].ms : 0;
  const cells: string[] = [];
  for (let i = 1; i <= 10; i++) {
    const win = samples.filter((s) => s.ms > ((i - 1) * total) / 10 && s.ms <= (i * total) / 10);
    cells.push(win.length ? mb(Math.max(...win.map((s) => s.rssKib))) : "–");
  }
  const r = step.runs[step.runs.length - 1];
  report.extras.push({
    title: `Extra: server memory during a ${fmtBytes(tree.bytes)} upload (--huge)`,
    body: [
      `One random (incompressible) file of ${fmtBytes(tree.bytes)}, generated in ${
        fmt(genSeconds.huge ?? NaN)
      } s; backed up in ${fmt(r.seconds)} s (${
        (tree.bytes / 1e6 / r.seconds).toFixed(1)
      } MB/s); store ${fmtBytes(du.disk)}.`,
      `Peak RSS: client ${mb(r.clientRssKib ?? NaN)} MB, server ${
        mb(r.serverRssKib ?? NaN)
      } MB (server CPU ${r.serverCpu?.toFixed(1)} s, client CPU ${r.clientCpu?.toFixed(1)} s).`,
      `Server VmRSS (MB), highest sample in each tenth of the upload (${samples.length} samples, every 50 ms):`,
      `| ${[...Array(10).keys()].map((i) => `${(i + 1) * 10}%`).join(" | ")} |\n| ${
        cells.map(() => "---:").join(" | ")
      } |\n| ${cells.join(" | ")} |`,
    ].join("\n\n"),
  });
  await discard(base);
}

/** --backend scaleout: one dataset through the embedded store and Ceph RGW + PostgreSQL. */
async function benchScaleoutStep(name: string, tree: Tree): Promise<void> {
  progress(`[scaleout ${name}] embedded store and Ceph RGW + PostgreSQL, interleaved`);
  const f = await benchScaleout({
    dataset: name,
    dir: tree.root,
    files: tree.files.length,
    bytes: tree.bytes,
    keepBin: KEEP,
    work: join(work, `${name}-scaleout`),
    restoreDir: opts.restoreDir,
    root: ROOT,
    reps: opts.reps,
    slowReps: opts.slowReps,
    progress,
  });
  (report.scaleout ??= []).push(f);
  report.extras.push({
    title: `Scale-out backend: ${name} (${f.files.toLocaleString("en-US")} files, ${
      fmtBytes(f.bytes)
    })`,
    body: [
      "One `keep serve` each, on this machine: the embedded store (data dir, SQLite, packs) and `--blobs s3://…` on Ceph RGW 16 + `--index postgres://…` on PostgreSQL 15 (scripts/services), run in pairs (one of each back to back, the order swapped every repetition); a fresh store (data dir; bucket prefix and database) for each first backup. Median seconds, the ratio of the medians, and the median of the pairs' ratios (each pair's in run order):",
      "| step | embedded | scale-out | ratio | pairs' ratio (each) |\n| --- | ---: | ---: | ---: | ---: |\n" +
      f.steps.map((st) =>
        `| ${st.step} (${st.runs}×) | ${fmt(st.embedded)} | ${fmt(st.scaleout)} | ${
          (st.scaleout / st.embedded).toFixed(2)
        }× | ${st.pairRatio.toFixed(2)}× (${st.pairRatios.map((x) => x.toFixed(2)).join(", ")}) |`
      ).join("\n"),
    ].join("\n\n"),
  });
}

async function benchRetentionStep(): Promise<void> {
  const dir = join(work, "retention");
  Deno.mkdirSync(dir, { recursive: true });
  const r = await benchRetention({
    work: dir,
    keepBin: KEEP,
    builder,
    files: opts.retentionFiles,
    commits: opts.retentionCommits,
    probeFiles: 20_000,
    progress,
    from: opts.retentionFrom,
  });
  report.retention = r;
  const g = r.gc;
  const rows: [string, string][] = [
    ["prune + GC wall time", `${fmt(r.gcSeconds)} s`],
    ["server peak RSS", `${r.serverPeakMb.toFixed(0)} MB`],
    [
      `GET /v1/health every 50 ms (${r.healthSamples} samples): p50 / p99 / max`,
      `${r.healthP50Ms.toFixed(1)} / ${r.healthP99Ms.toFixed(1)} / ${r.healthMaxMs.toFixed(1)} ms`,
    ],
    [
      "backup of a 20,000-file tree (1% changed), alone / during GC",
      `${fmt(r.backupAloneSeconds)} / ${fmt(r.backupDuringSeconds)} s`,
    ],
    ["store before / after", `${fmtBytes(r.storeBefore)} / ${fmtBytes(r.storeAfter)}`],
    ["versions removed / blobs swept", `${g.versionsRemoved} / ${g.blobsSwept}`],
    ["packs emptied / deleted", `${g.packsEvacuated} / ${g.packsDeleted}`],
    [
      "bytes copied out of packs / deleted",
      `${fmtBytes(g.bytesCopied ?? 0)} / ${fmtBytes(g.bytesDeleted ?? 0)}`,
    ],
  ];
  const b = r.browse;
  report.extras.push({
    title: "Browsing: find, history, diff and listings of a long history",
    body: [
      `The same project (${r.files.toLocaleString("en-US")} files, ${
        r.commits.toLocaleString("en-US")
      } commits), before the prune. HTTP on loopback, median of 5 (3 for the whole diff); the CLI once, start-up included:`,
      "| figure | value |\n| --- | ---: |\n" + ([
        ["find one name (`f4242.o`) across all commits", `${b.findOneMs.toFixed(1)} ms`],
        ["find a directory's paths (`d0042/*`)", `${b.findDirMs.toFixed(1)} ms`],
        [`history of one path (${b.historyVersions} versions)`, `${b.historyMs.toFixed(1)} ms`],
        [
          `diff of #1 and #${r.commits}, every page (${b.diffItems.toLocaleString("en-US")} paths)`,
          `${b.diffWholeMs.toFixed(0)} ms`,
        ],
        [
          `diff of two older commits, every page (${b.diffOldItems.toLocaleString("en-US")} paths)`,
          `${b.diffOldMs.toFixed(0)} ms`,
        ],
        ["diff of the two newest commits", `${b.diffAdjacentMs.toFixed(1)} ms`],
        ["diff of two neighbours in the middle", `${b.diffOldAdjacentMs.toFixed(1)} ms`],
        [
          "root listing, newest commit (page of 200, folder sizes)",
          `${b.rootHeadMs.toFixed(1)} ms`,
        ],
        ["root listing, commit #1", `${b.rootFirstMs.toFixed(1)} ms`],
        ["a directory of 100 files", `${b.dirMs.toFixed(1)} ms`],
        [
          "CLI: keep find / history / diff (wall, start-up included)",
          `${fmt(b.cli.find)} / ${fmt(b.cli.history)} / ${fmt(b.cli.diff)} s`,
        ],
      ] as [string, string][]).map(([a, v]) => `| ${a} | ${v} |`).join("\n"),
    ].join("\n\n"),
  });
  report.extras.push({
    title: "Retention: prune a long history while the server works",
    body: [
      `A project of ${r.files.toLocaleString("en-US")} files with ${
        r.commits.toLocaleString("en-US")
      } commits of ${
        r.changedPerCommit.toLocaleString("en-US")
      } changed files each, made through the ingest engine in ${
        fmt(r.genSeconds)
      } s. \`keep prune --keep-last 10 --wait\` against a real server (\`--gc-grace 0s\`: the whole round at once):`,
      "| figure | value |\n| --- | ---: |\n" + rows.map(([a, b]) => `| ${a} | ${b} |`).join("\n"),
    ].join("\n\n"),
  });
  progress(
    `[retention] prune + GC ${fmt(r.gcSeconds)} s, server peak ${
      r.serverPeakMb.toFixed(0)
    } MB, health p99 ${r.healthP99Ms.toFixed(1)} ms, backup ${
      fmt(r.backupAloneSeconds)
    } s alone / ${fmt(r.backupDuringSeconds)} s during`,
  );
  await discard(dir);
}

// ---- main -----------------------------------------------------------------------------------

const genSeconds: Partial<Record<DatasetName, number>> = {};

async function generate(name: DatasetName): Promise<Tree> {
  const root = join(work, name, name);
  const t0 = performance.now();
  progress(`[${name}] generating`);
  let tree: Tree;
  let description: string;
  if (name === "small") {
    tree = builder.small(root, opts.files);
    description = `${
      opts.files.toLocaleString("en-US")
    } files of 1–16 KiB, ~half text (C-like/prose), half random`;
  } else if (name === "large") {
    const [lo, hi] = opts.largeMib;
    tree = builder.large(root, opts.largeCount, lo, hi);
    description = `${opts.largeCount} files of ${lo}–${hi} MiB, half text, half random`;
  } else if (name === "million") {
    tree = builder.million(root, opts.millionFiles);
    description = `${opts.millionFiles.toLocaleString("en-US")} tiny distinct files, 1,000 per dir`;
  } else {
    tree = builder.huge(root, opts.hugeBytes);
    description = "one random file";
  }
  await run("sync", []);
  genSeconds[name] = (performance.now() - t0) / 1000;
  report.datasets.push({
    name,
    description,
    files: name === "million" ? opts.millionFiles : tree.files.length,
    dirs: tree.dirCount,
    bytes: tree.bytes,
    genSeconds: genSeconds[name]!,
  });
  progress(
    `[${name}] generated ${
      (name === "million" ? opts.millionFiles : tree.files.length).toLocaleString("en-US")
    } files, ${fmtBytes(tree.bytes)} in ${fmt(genSeconds[name]!)} s`,
  );
  return tree;
}

progress(`temp dir ${work}; datasets ${[...opts.only].join(", ")}`);
{
  // Keeping every output to the end (see discard()) needs room: estimate it, generously.
  const r = resticVersion ? 1 : 0;
  const smallBytes = opts.files * (8.5 * 1024 + 2048); // mean size + block slack
  const largeBytes = opts.largeCount * ((opts.largeMib[0] + opts.largeMib[1]) / 2) * 2 ** 20;
  const need =
    (opts.only.has("small")
      ? smallBytes * (1 + opts.reps * (2 + r) + opts.slowReps * (1 + r))
      : 0) +
    (opts.only.has("large")
      ? largeBytes * (1 + opts.slowReps * (2 + r) + opts.slowReps * (1 + r))
      : 0) +
    (opts.only.has("million") ? opts.millionFiles * 4096 * 1.5 : 0) +
    (opts.only.has("huge") ? opts.hugeBytes * (1 + opts.slowReps) : 0);
  const free = Number((await run("df", ["-B1", "--output=avail", work])).trim().split("\n").pop());
  if (need > 0.9 * free) {
    eager = true;
    progress(
      `warning: ~${fmtBytes(need)} needed to keep outputs to the end, ${
        fmtBytes(free)
      } free: deleting as it goes`,
    );
    report.notes.push(
      `Not enough disk to keep every output to the end (~${fmtBytes(need)} needed, ${
        fmtBytes(free)
      } free): outputs were deleted between steps, which slows later file creation on some filesystems.`,
    );
  } else progress(`keeping outputs to the end: ~${fmtBytes(need)} of ${fmtBytes(free)} free`);
}
{
  // Other work on the box skews every number; say so in the results rather than hide it.
  const load = Number(machine.loadStart.split(" ")[0]);
  if (load > 0.5 * machine.nproc) {
    progress(`warning: load average ${machine.loadStart} on ${machine.nproc} cores at start`);
    report.notes.push(
      `The load average was ${machine.loadStart} at the start: other processes were running, so timings may be pessimistic.`,
    );
  }
}
let failed = false;
try {
  // CLI start-up, the fixed cost in every Keep step.
  await measureStep(
    { id: "cli/keep/startup", dataset: "cli", tool: "info", label: "keep --version (start-up)" },
    opts.reps,
    () => plain(KEEP, ["--version"]),
  );
  for (const name of DATASETS) {
    if (!opts.only.has(name)) continue;
    try {
      if (name === "retention") {
        report.ran.add(name);
        await benchRetentionStep();
        continue;
      }
      const tree = await generate(name);
      report.ran.add(name);
      if (name === "small" || name === "large") {
        await benchTree(name, tree);
        if (opts.scaleout) await benchScaleoutStep(name, tree);
      } else if (name === "million") await benchMillion(tree);
      else await benchHuge(tree);
    } catch (err) {
      failed = true;
      report.notes.push(`${name}: FAILED: ${(err as Error).message.split("\n").join(" ")}`);
      progress(`[${name}] FAILED: ${(err as Error).message}`);
      for (const s of [...servers]) await stopServer(s).catch(() => {});
    } finally {
      await discard(join(work, name));
    }
    await writeResults();
  }
} finally {
  await cleanup();
}
machine.loadEnd = await loadAverage();
await writeResults();

console.log(textTable(report));
console.log("");
for (const t of evaluateTargets(report)) {
  console.log(`${t.result.padEnd(7)}  ${t.target}: ${t.measured}`);
}
console.log(`\nresults: ${opts.out}${opts.keepData ? `; data kept in ${work}` : ""}`);
progress(`done in ${fmt((performance.now() - benchStart) / 1000)} s`);
Deno.exit(failed ? 1 : 0);
