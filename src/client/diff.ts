/**
 * Change detection: merges the scan (sorted) with the parent manifest
 * (streamed in batches, sorted) and classifies every path.
 *
 * Rules for files (inode and device are never used: unstable on NAS mounts):
 * - not in the manifest, or another type: added / changed;
 * - size or mtime differ: changed;
 * - ctime or mode differ, or the manifest flags it (last read failed):
 *   suspect: hashed locally, content sent only when the hash differs;
 * - "racily clean": mtime within max(granularity, settle window) of the
 *   parent's scan time: the file may have changed again in the same tick
 *   after that scan; suspect;
 * - otherwise unchanged, unless `check` asks for more: `partial` compares the
 *   xxHash64 of head + tail + size, `full` the whole-content SHA-256.
 * Directories and symlinks are resent (header only) when mode, mtime or
 * target differ. Paths in the manifest that the scan lacks are deleted,
 * except below directories that could not be listed.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import { entriesFromLines, type Entry } from "../format/manifest.ts";
import { comparePaths } from "../format/paths.ts";
import { type ScanEntry, ScanTable } from "./scan.ts";

/** Extra content checks for metadata-unchanged files. */
export type CheckMode = "none" | "partial" | "full";

export interface DiffOptions {
  /** Compare ctime (default true). */
  ctime?: boolean;
  /** mtime granularity, ns: times are compared after flooring to it. */
  granularity?: bigint;
  /** The parent commit's scan time, ns (client clock). */
  parentScanTime?: bigint;
  /** The racily-clean margin, ns (max of granularity and settle window). */
  racyMargin?: bigint;
  check?: CheckMode;
  /**
   * Directories (mount points of filesystems whose ctime cannot be trusted)
   * below which a `none` check is `partial`.
   */
  partialBelow?: string[];
  /** Paths the scan could not read (directories: nor their contents). */
  unreadable?: string[];
  /** Take unchanged lines without decoding them (default true; false for tests). */
  fastPath?: boolean;
}

/** Why a file is suspect. */
export type SuspectReason = "ctime" | "mode" | "flagged" | "racy" | "partial" | "full";

export interface Suspect {
  entry: ScanEntry;
  prev: Entry;
  reason: SuspectReason;
}

/** The outcome of a diff. */
export interface DiffPlan {
  /** Entries whose content or header must be sent, in path order (the scan's own table when all are). */
  send: ScanTable;
  /** Sent paths that the parent has (changed, not added). */
  changedPaths: Set<string>;
  /** Files to hash before deciding. */
  suspects: Suspect[];
  /** Paths to delete. */
  deleted: string[];
  /** Manifest entries below unreadable directories (kept as they were). */
  keptBelowUnreadable: number;
  /** Unreadable paths that exist in the manifest: kept, flagged. */
  unreadableKnown: string[];
  unchanged: number;
  /** Of those, lines taken as unchanged without decoding them. */
  undecoded: number;
  added: number;
  changed: number;
}

/**
 * Manifest lines, in order: decoded, or as UTF-8 bytes of whole lines
 * (`\n`-separated; compared as bytes, and only the lines that differ decoded).
 */
export type ManifestBatch = string[] | Uint8Array;

function decodeLine(bytes: Uint8Array): string {
  try {
    return lineDecoder.decode(bytes);
  } catch {
    throw new KeepError("invalid", "Cannot read manifest: not valid UTF-8");
  }
}

const encoder = new TextEncoder();
const P_OPEN = encoder.encode('{"p":"');
const T_FILE = encoder.encode('","t":"f","s":');
const T_DIR = encoder.encode('","t":"d","s":');
const M_KEY = encoder.encode(',"m":');
const MT_KEY = encoder.encode(',"mt":"');
const CT_KEY = encoder.encode('","ct":"');
const lineDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** The position after `lit` when `buf` has it at `pos` (before `end`), else -1. */
function atBytes(buf: Uint8Array, pos: number, end: number, lit: Uint8Array): number {
  if (pos < 0 || pos + lit.length > end) return -1;
  for (let i = 0; i < lit.length; i++) if (buf[pos + i] !== lit[i]) return -1;
  return pos + lit.length;
}

/**
 * The position after the ASCII string `s` when `buf` has it at `pos`, else
 * -1; also -1 when `s` has a character JSON would escape or that is not
 * ASCII (those lines are decoded).
 */
function asciiAtBytes(buf: Uint8Array, pos: number, end: number, s: string): number {
  if (pos < 0 || pos + s.length > end) return -1;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || c < 32 || c === 34 || c === 92 || buf[pos + i] !== c) return -1;
  }
  return pos + s.length;
}

/** digitsEqual on bytes. */
function digitsEqualBytes(buf: Uint8Array, pos: number, end: number, n: number): number {
  if (pos < 0) return -1;
  const start = pos;
  let v = 0;
  for (let c = buf[pos]; pos < end && c >= 48 && c <= 57; c = buf[++pos]) v = v * 10 + (c - 48);
  const len = pos - start;
  if (len === 0 || len > 15 || (len > 1 && buf[start] === 48)) return -1;
  return v === n ? pos : -1;
}

/** timeEqual on bytes. */
function timeEqualBytes(
  buf: Uint8Array,
  pos: number,
  end: number,
  sec: number,
  ns: number,
): number {
  pos = asciiAtBytes(buf, pos, end, String(sec));
  if (pos < 0 || pos + 9 > end) return -1;
  let v = 0;
  for (const stop = pos + 9; pos < stop; pos++) {
    const d = buf[pos] - 48;
    if (!(d >= 0 && d <= 9)) return -1;
    v = v * 10 + d;
  }
  const next = pos < end ? buf[pos] : -1;
  return v === ns && !(next >= 48 && next <= 57) ? pos : -1;
}

/** True when `buf` has `"fl":` between `pos` and `end`. */
function hasFlagKey(buf: Uint8Array, pos: number, end: number): boolean {
  for (let k = pos; k + 5 <= end; k++) {
    if (
      buf[k] === 34 && buf[k + 1] === 102 && buf[k + 2] === 108 && buf[k + 3] === 34 &&
      buf[k + 4] === 58
    ) return true;
  }
  return false;
}

function floorTo(t: bigint, g: bigint): bigint {
  return g <= 1n ? t : t - (((t % g) + g) % g);
}

/**
 * Classifies a scan against the parent manifest, given as batches of its
 * NDJSON lines (see `entryToJson`).
 *
 * Fast path: an unchanged file's line starts with exactly what the scan entry
 * would be written as (path, type, size, mode, mtime, ctime), so when that
 * prefix matches, the line carries no flag, the file is not racily clean and
 * no `check` is asked for, it is unchanged without decoding the line. Every
 * other line is decoded, validated and compared field by field (see
 * docs/DESIGN.md, "The diff reads the manifest as bytes").
 *
 * @example
 * ```ts
 * const plan = await diffTree(scan.entries, manifestBatches, { granularity: 1n });
 * ```
 */
export function diffTree(
  scanned: ScanTable | ScanEntry[],
  manifest: AsyncIterable<ManifestBatch> | Iterable<ManifestBatch>,
  options: DiffOptions = {},
): Promise<DiffPlan> {
  const scan = Array.isArray(scanned) ? ScanTable.of(scanned) : scanned;
  return new Differ(scan, options).run(manifest);
}

/** One diff: walks the scan (index `#i`) and the manifest together, in path order. */
class Differ {
  readonly #scan: ScanTable;
  readonly #useCtime: boolean;
  readonly #g: bigint;
  readonly #check: CheckMode;
  readonly #partialBelow: string[];
  readonly #fast: boolean;
  /** Files with an mtime at or after this (ns) are racily clean; null: none are. */
  readonly #racyFrom: bigint | null;
  // The same bound as seconds and ns, for the fast path.
  readonly #racySec: number;
  readonly #racyNs: number;
  readonly #unreadable: Set<string>;
  readonly #plan: DiffPlan;
  /**
   * Entries to send, as indices into the scan: no object per entry (a first
   * backup of 1M files would hold ~120 MB of them).
   */
  readonly #sendIdx: number[] = [];
  /** The next scan entry not yet matched with the manifest. */
  #i = 0;

  constructor(scan: ScanTable, options: DiffOptions) {
    this.#scan = scan;
    this.#useCtime = options.ctime ?? true;
    this.#g = options.granularity ?? 1n;
    this.#check = options.check ?? "none";
    this.#partialBelow = this.#check === "none"
      ? (options.partialBelow ?? []).map((d) => d + "/")
      : [];
    this.#fast = this.#check === "none" && this.#partialBelow.length === 0 &&
      options.fastPath !== false;
    this.#racyFrom = options.parentScanTime !== undefined && options.parentScanTime > 0n
      ? options.parentScanTime - (options.racyMargin ?? this.#g)
      : null;
    this.#racySec = this.#racyFrom === null ? 0 : Number(this.#racyFrom / 1_000_000_000n);
    this.#racyNs = this.#racyFrom === null ? 0 : Number(this.#racyFrom % 1_000_000_000n);
    this.#unreadable = new Set(options.unreadable ?? []);
    this.#plan = {
      send: scan,
      changedPaths: new Set(),
      suspects: [],
      deleted: [],
      keptBelowUnreadable: 0,
      unreadableKnown: [],
      unchanged: 0,
      undecoded: 0,
      added: 0,
      changed: 0,
    };
  }

  async run(manifest: AsyncIterable<ManifestBatch> | Iterable<ManifestBatch>): Promise<DiffPlan> {
    const scan = this.#scan;
    const plan = this.#plan;
    for await (const batch of manifest) {
      // Whole lines as bytes: compared without building a string per line.
      const lines = batch instanceof Uint8Array ? batch : encoder.encode(batch.join("\n"));
      for (let start = 0; start < lines.length;) {
        let end = lines.indexOf(10, start);
        if (end < 0) end = lines.length;
        if (end > start) {
          if (this.#fast && this.#i < scan.length && this.#unchangedBytes(lines, start, end)) {
            this.#i++;
            plan.unchanged++;
            plan.undecoded++;
          } else this.#merge(entriesFromLines([decodeLine(lines.subarray(start, end))])[0]);
        }
        start = end + 1;
      }
    }
    this.#takeScanBefore(null);
    plan.send = this.#sendIdx.length === scan.length ? scan : scan.select(this.#sendIdx);
    return plan;
  }

  #racy(k: number): boolean {
    const racyFrom = this.#racyFrom;
    if (racyFrom === null) return false;
    const sec = this.#scan.mtimeSec(k);
    if (racyFrom < 0n || sec <= 0) return this.#scan.mtime(k) >= racyFrom;
    return sec > this.#racySec || (sec === this.#racySec && this.#scan.mtimeNs(k) >= this.#racyNs);
  }

  #belowUnreadable(path: string): boolean {
    for (let i = path.lastIndexOf("/"); i > 0; i = path.lastIndexOf("/", i - 1)) {
      if (this.#unreadable.has(path.slice(0, i))) return true;
    }
    return false;
  }

  /** Scan entry `k` is to be sent, as added or changed (the parent has it). */
  #send(k: number, kind: "added" | "changed"): void {
    this.#sendIdx.push(k);
    if (kind === "added") this.#plan.added++;
    else {
      this.#plan.changed++;
      this.#plan.changedPaths.add(this.#scan.path(k));
    }
  }

  /** Scan entries before `path` (all, for null) are not in the manifest: added. */
  #takeScanBefore(path: string | null): void {
    const scan = this.#scan;
    while (this.#i < scan.length && (path === null || comparePaths(scan.path(this.#i), path) < 0)) {
      this.#send(this.#i++, "added");
    }
  }

  /**
   * True when the line `buf[start, end)` is the unchanged record of the next
   * scanned entry (see diffTree): compared field by field, as entryToJson
   * writes them, for ASCII paths; a key can only follow a comma, and `"fl":`
   * cannot occur inside a hash or a JSON string (quotes are escaped there).
   */
  #unchangedBytes(buf: Uint8Array, start: number, end: number): boolean {
    const scan = this.#scan;
    const k = this.#i;
    const type = scan.type(k);
    if (type === "l" || (type === "f" && this.#racy(k))) return false;
    const mtSec = scan.mtimeSec(k);
    const ctSec = scan.ctimeSec(k);
    if (mtSec <= 0 || ctSec <= 0) return false; // times before 1970 + 1 s: decoded
    let pos = atBytes(buf, start, end, P_OPEN);
    pos = asciiAtBytes(buf, pos, end, scan.path(k));
    pos = atBytes(buf, pos, end, type === "f" ? T_FILE : T_DIR);
    pos = digitsEqualBytes(buf, pos, end, scan.size(k));
    pos = atBytes(buf, pos, end, M_KEY);
    pos = digitsEqualBytes(buf, pos, end, scan.mode(k));
    pos = atBytes(buf, pos, end, MT_KEY);
    pos = timeEqualBytes(buf, pos, end, mtSec, scan.mtimeNs(k));
    pos = atBytes(buf, pos, end, CT_KEY);
    pos = timeEqualBytes(buf, pos, end, ctSec, scan.ctimeNs(k));
    if (pos < 0 || pos >= end || buf[pos] !== 34) return false;
    const next = pos + 1 < end ? buf[pos + 1] : -1;
    return (next === 44 || next === 125) && !hasFlagKey(buf, pos + 1, end);
  }

  /** A decoded manifest entry, matched with the scan. */
  #merge(prev: Entry): void {
    this.#takeScanBefore(prev.path);
    const scan = this.#scan;
    if (this.#i < scan.length && scan.path(this.#i) === prev.path) {
      const k = this.#i++;
      this.#compare(k, scan.get(k), prev);
      return;
    }
    // In the manifest, not in the scan.
    const plan = this.#plan;
    if (this.#unreadable.has(prev.path)) plan.unreadableKnown.push(prev.path);
    else if (this.#belowUnreadable(prev.path)) plan.keptBelowUnreadable++;
    else plan.deleted.push(prev.path);
  }

  /** Scan entry `k` (`e`) against its previous version. */
  #compare(k: number, e: ScanEntry, prev: Entry): void {
    const plan = this.#plan;
    if (e.type !== prev.type) return this.#send(k, "changed");
    if (e.type === "d") {
      if (e.mode !== prev.mode || e.mtime !== prev.mtime || prev.flag) {
        return this.#send(k, "changed");
      }
      plan.unchanged++;
      return;
    }
    if (e.type === "l") {
      if (e.target !== prev.target || e.mode !== prev.mode || e.mtime !== prev.mtime) {
        return this.#send(k, "changed");
      }
      plan.unchanged++;
      return;
    }
    const g = this.#g;
    if (e.size !== prev.size || floorTo(e.mtime, g) !== floorTo(prev.mtime, g)) {
      return this.#send(k, "changed");
    }
    // The server lost this content: sending it again repairs the blob.
    if (prev.flag === "damaged") return this.#send(k, "changed");
    let reason: SuspectReason | null = null;
    if (prev.flag) reason = "flagged";
    else if (e.mode !== prev.mode) reason = "mode";
    // ctime exactly: nobody can set it, and a rebuild that restores the mtime
    // (reproducible builds, cp -p) leaves it as the only sign of new content.
    else if (this.#useCtime && e.ctime !== prev.ctime) reason = "ctime";
    else if (e.mtime !== prev.mtime) reason = "racy"; // equal only after flooring: finer than we trust
    else if (this.#racyFrom !== null && e.mtime >= this.#racyFrom) reason = "racy";
    else if (this.#check === "full") reason = "full";
    else if (this.#check === "partial") reason = "partial";
    else if (this.#partialBelow.some((d) => e.path.startsWith(d))) reason = "partial";
    if (
      reason === null ||
      e.size === 0 && reason !== "mode" && reason !== "ctime" && reason !== "flagged"
    ) {
      plan.unchanged++;
      return;
    }
    plan.suspects.push({ entry: e, prev, reason });
  }
}
