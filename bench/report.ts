/**
 * Turns measured steps into the results table, checks the spec's targets
 * (issue 5) and renders bench/results.md. Pure functions of a BenchReport,
 * so a partial report (a dataset failed or was skipped) renders too, with
 * the targets it could not check marked "not run".
 *
 * @module
 */

import type { MachineInfo } from "./machine.ts";

/** One timed repetition of a step. */
export interface RunRecord {
  seconds: number;
  /** Client (or tool) CPU seconds, user + system. */
  clientCpu?: number;
  /** Client (or tool) peak RSS, KiB. */
  clientRssKib?: number;
  serverCpu?: number;
  serverRssKib?: number;
  /** Keep's own `seconds` from --json: the run without process start-up. */
  selfSeconds?: number;
  /** Bytes on the wire, from keep backup --json. */
  wireBytes?: number;
  /** The commit a backup made, from --json. */
  commitId?: string;
}

/** A step (one row of the table) with all its repetitions. */
export interface StepResult {
  /** Stable id, `dataset/tool/step`, used for ratios and targets. */
  id: string;
  dataset: string;
  tool: "floor" | "keep" | "restic" | "info";
  label: string;
  runs: RunRecord[];
  /** Bytes the step moves (for MB/s). */
  bytes?: number;
  /** Files the step handles (for files/s). */
  files?: number;
  /** Id of the step this one is compared with, and its short name. */
  ref?: { id: string; name: string };
  note?: string;
}

/** A generated dataset. */
export interface DatasetInfo {
  name: string;
  description: string;
  files: number;
  dirs: number;
  bytes: number;
  /** pigz -1 size / tar size (measured on the floor's archive). */
  gzipRatio?: number;
  genSeconds: number;
}

/** Bytes used by a store: `du -sk` (disk blocks) and `du -sb` (apparent). */
export interface StoreSize {
  disk: number;
  apparent: number;
}

/** Store sizes of one dataset. */
export interface StorageRow {
  dataset: string;
  /** After the first backup. */
  keepFirst?: StoreSize;
  resticFirst?: StoreSize;
  /** After all backups (first, no-change, mutation), before recompression at rest. */
  keepBeforeCompaction?: StoreSize;
  /** After all backups and the idle server's recompression at rest. */
  keepFinal?: StoreSize;
  resticFinal?: StoreSize;
  /** Apparent bytes the stores grew by over the mutation rounds of big files (large). */
  keepMutationGrowth?: number;
  resticMutationGrowth?: number;
}

/** Everything one `deno task bench` measured. */
export interface BenchReport {
  command: string;
  machine: MachineInfo;
  /** Human summary of the options (reps, scale…). */
  settings: string[];
  datasets: DatasetInfo[];
  steps: StepResult[];
  storage: StorageRow[];
  /** Which datasets ran; targets on the others are "not run". */
  ran: Set<string>;
  /** Free-form notes (skips, failures, method). */
  notes: string[];
  /** Extra sections (markdown) for the million and huge runs. */
  extras: { title: string; body: string }[];
  /** The retention step's figures, when it ran. */
  retention?: {
    gcSeconds: number;
    serverPeakMb: number;
    healthP99Ms: number;
    backupAloneSeconds: number;
    backupDuringSeconds: number;
    files: number;
    commits: number;
    browse?: {
      findOneMs: number;
      findDirMs: number;
      historyMs: number;
      diffWholeMs: number;
      diffOldMs?: number;
      rootHeadMs: number;
    };
  };
  /** `--backend scaleout`: the same steps on the embedded store and on Ceph RGW + PostgreSQL. */
  scaleout?: {
    dataset: string;
    steps: { step: string; embedded: number; scaleout: number; runs: number }[];
  }[];
  totalSeconds: number;
  /** The small dataset was scaled down with --files. */
  scaled: boolean;
}

/** One checked target. */
export interface TargetRow {
  target: string;
  measured: string;
  result: "PASS" | "FAIL" | "not run";
}

const MB = 1e6;

/** Median of the runs' wall seconds. */
export function medianSeconds(step: StepResult): number {
  const xs = step.runs.map((r) => r.seconds).sort((a, b) => a - b);
  if (xs.length === 0) return NaN;
  const mid = xs.length >> 1;
  return xs.length % 2 ? xs[mid] : (xs[mid - 1] + xs[mid]) / 2;
}

function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

function maxOf(xs: (number | undefined)[]): number {
  const v = xs.filter((x): x is number => x !== undefined && Number.isFinite(x));
  return v.length ? Math.max(...v) : NaN;
}

function fmtSec(s: number): string {
  if (!Number.isFinite(s)) return "–";
  return s < 1 ? s.toFixed(3) : s < 100 ? s.toFixed(2) : s.toFixed(1);
}

function fmtNum(x: number, digits = 0): string {
  if (!Number.isFinite(x)) return "–";
  return x.toLocaleString("en-US", {
    maximumFractionDigits: digits,
    minimumFractionDigits: digits,
  });
}

function rssMb(kib: number): string {
  return Number.isFinite(kib) ? fmtNum((kib * 1024) / MB) : "–";
}

/** Human size: 1.23 GB (decimal units, like the MB/s column). */
export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return "–";
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

const HEADER = [
  "dataset",
  "step",
  "seconds",
  "runs",
  "MB/s",
  "files/s",
  "client RSS MB",
  "server RSS MB",
  "client CPU s",
  "server CPU s",
  "ratio",
];

function rows(report: BenchReport): string[][] {
  const byId = new Map(report.steps.map((s) => [s.id, s]));
  return report.steps.map((s) => {
    if (s.runs.length === 0) {
      return [s.dataset, s.label, "failed", "0", ...HEADER.slice(4).map(() => "")];
    }
    const sec = medianSeconds(s);
    const ref = s.ref ? byId.get(s.ref.id) : undefined;
    const ratio = ref?.runs.length && s.ref
      ? `${(sec / medianSeconds(ref)).toFixed(2)}× ${s.ref.name}`
      : "";
    return [
      s.dataset,
      s.label,
      fmtSec(sec),
      s.runs.length > 1 ? s.runs.map((r) => fmtSec(r.seconds)).join(" / ") : "1",
      s.bytes !== undefined ? fmtNum(s.bytes / MB / sec, 1) : "",
      s.files !== undefined ? fmtNum(s.files / sec) : "",
      rssMb(maxOf(s.runs.map((r) => r.clientRssKib))),
      s.tool === "keep" ? rssMb(maxOf(s.runs.map((r) => r.serverRssKib))) : "",
      fmtNum(median(s.runs.map((r) => r.clientCpu ?? NaN)), 1),
      s.tool === "keep" ? fmtNum(median(s.runs.map((r) => r.serverCpu ?? NaN)), 1) : "",
      ratio,
    ];
  });
}

/** The results table as aligned plain text (for the terminal). */
export function textTable(report: BenchReport): string {
  const all = [HEADER, ...rows(report)];
  const widths = HEADER.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  return all.map((r) =>
    r.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join("  ").trimEnd()
  ).join("\n");
}

/** A markdown table; the first `left` columns are left-aligned, the rest (numbers) right. */
function mdTable(header: string[], body: string[][], left = 2): string {
  const esc = (c: string) => c.replaceAll("|", "\\|");
  return [
    `| ${header.map(esc).join(" | ")} |`,
    `| ${header.map((_, i) => (i < left ? "---" : "---:")).join(" | ")} |`,
    ...body.map((r) => `| ${r.map(esc).join(" | ")} |`),
  ].join("\n");
}

/**
 * Checks the targets (issues 5 and 18) against the measured medians.
 *
 * @example
 * ```ts
 * for (const t of evaluateTargets(report)) console.log(t.result, t.target, t.measured);
 * ```
 */
export function evaluateTargets(report: BenchReport): TargetRow[] {
  const byId = new Map(report.steps.map((s) => [s.id, s]));
  const sec = (id: string) => {
    const s = byId.get(id);
    return s && s.runs.length ? medianSeconds(s) : NaN;
  };
  const out: TargetRow[] = [];
  const check = (target: string, ok: boolean | null, measured: string) =>
    out.push({ target, measured, result: ok === null ? "not run" : ok ? "PASS" : "FAIL" });
  const ratio = (target: string, a: string, b: string, limit: number, what: string) => {
    const x = sec(a), y = sec(b);
    if (!Number.isFinite(x) || !Number.isFinite(y)) return check(target, null, "–");
    check(
      target,
      x <= limit * y,
      `${fmtSec(x)} s vs ${fmtSec(y)} s ${what} = ${(x / y).toFixed(2)}× (limit ${limit}×)`,
    );
  };

  // Against the find walks run in the same moments as the no-change backups, when there are.
  const paired = byId.get("small/floor/find-paired")?.runs.length;
  ratio(
    "no-change backup of small ≤ 3× find walk",
    "small/keep/nochange",
    paired ? "small/floor/find-paired" : "small/floor/find",
    3,
    paired ? "find (paired runs)" : "find",
  );
  ratio(
    "post-mutation backup ≤ 2× no-change backup (small)",
    "small/keep/mutation",
    "small/keep/nochange",
    2,
    "no-change",
  );
  ratio(
    "first backup of small ≤ 1.25× tar | pigz -1",
    "small/keep/first",
    "small/floor/tarpigz",
    1.25,
    "tar|pigz",
  );
  {
    const k = byId.get("large/keep/first"), r = byId.get("large/restic/first");
    if (k?.runs.length && r?.runs.length && k.bytes) {
      const kt = k.bytes / MB / medianSeconds(k), rt = k.bytes / MB / medianSeconds(r);
      check(
        "first backup of large ≥ restic's throughput",
        kt >= rt,
        `${kt.toFixed(1)} MB/s vs restic ${rt.toFixed(1)} MB/s`,
      );
    } else check("first backup of large ≥ restic's throughput", null, "–");
  }
  // Issue 18's targets on the large dataset.
  ratio(
    "post-mutation backup of large ≤ restic's",
    "large/keep/mutation",
    "large/restic/mutation",
    1,
    "restic",
  );
  {
    const s = report.storage.find((r) => r.dataset === "large");
    const label = "store growth after large's mutation ≤ 1.2× restic's";
    if (s?.keepMutationGrowth !== undefined && s.resticMutationGrowth !== undefined) {
      check(
        label,
        s.keepMutationGrowth <= 1.2 * s.resticMutationGrowth,
        `${fmtBytes(s.keepMutationGrowth)} vs restic ${fmtBytes(s.resticMutationGrowth)} = ${
          (s.keepMutationGrowth / s.resticMutationGrowth).toFixed(2)
        }× (apparent bytes, over all rounds)`,
      );
    } else check(label, null, "–");
  }
  {
    const k = byId.get("large/keep/restore"), r = byId.get("large/restic/restore");
    const label = "restore of large ≥ restic's throughput";
    if (k?.runs.length && r?.runs.length) {
      // Run in pairs (keep, then restic, each after a sync): judged on the pairs' median ratio.
      const pairs = k.runs.slice(0, r.runs.length).map((x, i) => x.seconds / r.runs[i].seconds);
      const pm = median(pairs);
      check(
        label,
        pm <= 1,
        `${fmtSec(medianSeconds(k))} s vs restic ${fmtSec(medianSeconds(r))} s (medians); pairs ${
          pairs.map((p) => p.toFixed(2)).join(", ")
        }× (median ${pm.toFixed(2)}×)`,
      );
    } else check(label, null, "–");
  }
  ratio(
    "restore of small ≤ GNU tar -xzf",
    "small/keep/restore",
    "small/floor/untar",
    1,
    "tar -xzf",
  );
  {
    const s = report.storage.find((r) => r.dataset === "small");
    if (s?.keepFinal && s.resticFinal) {
      check(
        "stored size of small ≤ restic repo size",
        s.keepFinal.disk <= s.resticFinal.disk,
        `${fmtBytes(s.keepFinal.disk)} vs restic ${
          fmtBytes(s.resticFinal.disk)
        } (du, after all backups)`,
      );
    } else check("stored size of small ≤ restic repo size", null, "–");
  }
  for (const side of ["client", "server"] as const) {
    const steps = report.steps.filter((s) =>
      s.tool === "keep" && (s.dataset === "small" || s.dataset === "large")
    );
    const both = report.ran.has("small") && report.ran.has("large");
    const peak = maxOf(
      steps.flatMap((s) => s.runs.map((r) => side === "client" ? r.clientRssKib : r.serverRssKib)),
    );
    const worst = steps.find((s) =>
      s.runs.some((r) => (side === "client" ? r.clientRssKib : r.serverRssKib) === peak)
    );
    const label = `${side} peak RSS < 150 MB on small and large`;
    if (!Number.isFinite(peak)) check(label, null, "–");
    else {
      check(
        label,
        (peak * 1024) / MB < 150,
        `${rssMb(peak)} MB (worst: ${worst?.dataset} ${worst?.label})${
          both ? "" : " — only one dataset ran"
        }`,
      );
    }
  }
  {
    const r = report.retention;
    const what = r
      ? ` (${fmtNum(r.files)} files, ${fmtNum(r.commits)} commits → keep-last 10)`
      : "";
    check(
      "retention: prune + GC < 60 s" + what,
      r ? r.gcSeconds < 60 : null,
      r ? `${fmtSec(r.gcSeconds)} s` : "–",
    );
    check(
      "retention: server peak RSS < 200 MB during GC",
      r ? r.serverPeakMb < 200 : null,
      r ? `${r.serverPeakMb.toFixed(0)} MB` : "–",
    );
    check(
      "retention: GET /v1/health p99 < 100 ms during GC",
      r ? r.healthP99Ms < 100 : null,
      r ? `${r.healthP99Ms.toFixed(1)} ms` : "–",
    );
    const b = r?.browse;
    const ms = (v: number | undefined) => v === undefined ? "–" : `${v.toFixed(1)} ms`;
    check(
      "browse: find < 200 ms over 1,000 commits of 100,000 files" +
        what.replace(" → keep-last 10", ""),
      b ? Math.max(b.findOneMs, b.findDirMs) < 200 : null,
      b ? `${ms(b.findOneMs)} (one name), ${ms(b.findDirMs)} (a directory)` : "–",
    );
    check("browse: history < 200 ms", b ? b.historyMs < 200 : null, ms(b?.historyMs));
    check(
      "browse: diff of the first and last commit < 1 s",
      b ? b.diffWholeMs < 1000 : null,
      ms(b?.diffWholeMs),
    );
    check(
      "browse: diff of two older commits (neither the head) < 1 s",
      b?.diffOldMs === undefined ? null : b.diffOldMs < 1000,
      ms(b?.diffOldMs),
    );
    check(
      "browse: root listing of a 100k-file commit < 300 ms",
      b ? b.rootHeadMs < 300 : null,
      ms(b?.rootHeadMs),
    );
    const slow = r ? r.backupDuringSeconds / r.backupAloneSeconds - 1 : NaN;
    check(
      "retention: a backup during GC slower by < 25%",
      r ? slow < 0.25 : null,
      r
        ? `${fmtSec(r.backupDuringSeconds)} s vs ${fmtSec(r.backupAloneSeconds)} s alone (${
          (slow * 100).toFixed(0)
        }%)`
        : "–",
    );
  }
  if (report.scaleout) {
    for (const d of report.scaleout) {
      for (const st of d.steps) {
        const limit = st.step === "nochange" ? 1.2 : 1.5;
        const ratio = st.scaleout / st.embedded;
        check(
          `scale-out: ${d.dataset} ${st.step} within ${limit}x of the embedded store`,
          Number.isFinite(ratio) ? ratio <= limit : null,
          `${fmtSec(st.scaleout)} s vs ${fmtSec(st.embedded)} s (${ratio.toFixed(2)}x)`,
        );
      }
    }
  }
  {
    // Judged on the steady state (Keep caches the manifest per head), with the cold
    // figures beside it so a PASS cannot hide them.
    const m = byId.get("million/keep/manifest");
    const s = m && m.runs.length ? medianSeconds(m) : NaN;
    check(
      "latest manifest of a 1M-file project < 2 s",
      Number.isFinite(s) ? s < 2 : null,
      Number.isFinite(s)
        ? `${fmtSec(s)} s cached, for ${
          fmtNum(m!.files ?? 0)
        } files (first GET right after the commit: ${
          fmtSec(sec("million/keep/manifest-first"))
        } s; uncached, from the index: ${fmtSec(sec("million/keep/manifest-index"))} s)`
        : "– (run with --million)",
    );
  }
  {
    // Every Keep step on the 1M-file project: its first backup (which builds the
    // manifest), the GETs and the no-change backup against it.
    const steps = report.steps.filter((s) => s.tool === "keep" && s.dataset === "million");
    const label = "client and server peak RSS < 300 MB with a 1M-entry manifest";
    // The GET steps' client is curl: only their server side counts.
    const isGet = (s: StepResult) => s.id.startsWith("million/keep/manifest");
    const peaks = (["client", "server"] as const).map((side) => {
      let top: { s: StepResult; kib: number } | undefined;
      for (const s of steps) {
        if (side === "client" && isGet(s)) continue;
        for (const r of s.runs) {
          const kib = side === "client" ? r.clientRssKib : r.serverRssKib;
          if (kib !== undefined && kib > (top?.kib ?? -1)) top = { s, kib };
        }
      }
      return { side, top };
    });
    if (!peaks[0].top || !peaks[1].top) check(label, null, "– (run with --million)");
    else {
      check(
        label,
        peaks.every((p) => (p.top!.kib * 1024) / MB < 300),
        peaks.map((p) => `${p.side} ${rssMb(p.top!.kib)} MB (${p.top!.s.label})`).join(", "),
      );
    }
  }
  {
    const h = byId.get("huge/keep/backup");
    const peak = h?.runs.length ? maxOf(h.runs.map((r) => r.serverRssKib)) : NaN;
    check(
      "server RSS flat during a 4 GiB upload (peak < 150 MB; derived)",
      Number.isFinite(peak) ? (peak * 1024) / MB < 150 : null,
      Number.isFinite(peak)
        ? `${rssMb(peak)} MB peak for ${fmtBytes(h!.bytes ?? 0)}`
        : "– (run with --huge)",
    );
  }
  return out;
}

/**
 * Renders bench/results.md.
 *
 * @example
 * ```ts
 * Deno.writeTextFileSync("bench/results.md", renderMarkdown(report));
 * ```
 */
export function renderMarkdown(report: BenchReport): string {
  const m = report.machine;
  const targets = evaluateTargets(report);
  const lines: string[] = [];
  lines.push("# Keep benchmark results", "");
  lines.push(
    `Generated by \`${report.command}\` on ${m.date} in ${fmtSec(report.totalSeconds)} s.`,
    "",
  );
  if (report.scaled) {
    lines.push(
      "**Scaled-down run** (`--files`): the small dataset is not the spec's 100,000 files, so the targets below are indicative only.",
      "",
    );
  }
  lines.push("## Machine", "");
  lines.push(
    mdTable(["item", "value"], [
      ["cores (nproc)", String(m.nproc)],
      ["memory", m.memory],
      ["CPU", m.cpu],
      ["kernel", m.kernel],
      ["deno", m.deno],
      ["temp dir filesystem", m.filesystem],
      ["load average at start / end", `${m.loadStart} / ${m.loadEnd || "–"}`],
      ...Object.entries(m.tools),
    ], 2),
    "",
  );
  lines.push("## Settings", "", ...report.settings.map((s) => `- ${s}`), "");
  lines.push("## Datasets", "");
  lines.push(
    mdTable(
      ["dataset", "description", "files", "dirs", "bytes", "gzip -1 ratio", "generated in s"],
      report.datasets.map((d) => [
        d.name,
        d.description,
        fmtNum(d.files),
        fmtNum(d.dirs),
        fmtBytes(d.bytes),
        d.gzipRatio !== undefined ? d.gzipRatio.toFixed(3) : "–",
        fmtSec(d.genSeconds),
      ]),
    ),
    "",
  );
  lines.push("## Targets (issue 5)", "");
  lines.push(
    mdTable(
      ["target", "measured", "result"],
      targets.map((t) => [t.target, t.measured, t.result]),
      3,
    ),
    "",
  );
  lines.push("## Results", "");
  lines.push(
    "Seconds are the median wall time of the runs (listed when more than one). MB/s and files/s divide the step's bytes and files by that median; MB = 10⁶ bytes. Client RSS/CPU are the measured process (Keep CLI, restic, or the floor's tools) from GNU time; server RSS is the `keep serve` process's peak during the step, server CPU its CPU time during the step. The ratio compares medians with the named reference.",
    "",
  );
  lines.push(mdTable(HEADER, rows(report)), "");
  const noted = report.steps.filter((st) => st.note);
  if (noted.length) {
    lines.push(...noted.map((st) => `- ${st.dataset}, ${st.label}: ${st.note}`), "");
  }
  if (report.storage.length) {
    lines.push("## Stored size", "");
    const s = (x?: StoreSize) => (x ? `${fmtBytes(x.disk)} (${fmtBytes(x.apparent)})` : "–");
    lines.push(
      "`du -sk` of Keep's data dir and of the restic repository (apparent size, `du -sb`, in parentheses). Final = after the first, the no-change and the mutation backups. Keep after first is measured with the server running, so it includes SQLite's write-ahead log (index.db-wal); Keep's final figures are after a clean shutdown, which checkpoints it: before, and after the recompression an idle server does at rest (timed steps run with it off).",
      "",
      mdTable(
        [
          "dataset",
          "Keep after first",
          "restic after first",
          "Keep final, before recompression",
          "Keep final",
          "restic final",
        ],
        report.storage.map((r) => [
          r.dataset,
          s(r.keepFirst),
          s(r.resticFirst),
          s(r.keepBeforeCompaction),
          s(r.keepFinal),
          s(r.resticFinal),
        ]),
        1,
      ),
      "",
    );
  }
  const detail = report.steps.filter((st) =>
    st.tool === "keep" && st.runs.some((r) => r.selfSeconds !== undefined)
  );
  if (detail.length) {
    lines.push("## Keep: process time vs. its own timer", "");
    lines.push(
      "`keep backup --json` reports its own `seconds` (scan to commit, without Deno start-up and module loading); the gap to the wall time is the CLI's start-up cost.",
      "",
      mdTable(
        ["dataset", "step", "wall s", "keep's own s", "bytes on the wire"],
        detail.map((st) => [
          st.dataset,
          st.label,
          fmtSec(medianSeconds(st)),
          fmtSec(median(st.runs.map((r) => r.selfSeconds ?? NaN))),
          fmtBytes(median(st.runs.map((r) => r.wireBytes ?? NaN))),
        ]),
      ),
      "",
    );
  }
  for (const e of report.extras) lines.push(`## ${e.title}`, "", e.body.trim(), "");
  if (report.notes.length) lines.push("## Notes", "", ...report.notes.map((n) => `- ${n}`), "");
  return lines.join("\n");
}
