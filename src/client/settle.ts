/**
 * The settle check: a file a parallel `make` may still be writing is not
 * sent until it holds still. Algorithm, over all candidates at once (so ten
 * thousand fresh files cost one window, not ten thousand): optionally flush
 * the tree's filesystem with one syncfs (pushes a NAS client's dirty pages to
 * the server before the final stat), then stat every candidate. A file is settled when
 * its size and mtime equal the previous observation and its mtime is older
 * than the window (or, for clocks that disagree, when it did not move during
 * a whole window). Others are re-observed after a window, until `maxWait`.
 *
 * @module
 */

import { lstatNs, syncFilesystem, TreeFile } from "../platform/fs_native.ts";
import type { ScanTable } from "./scan.ts";

export interface SettleOptions {
  /** The window, ms; 0 settles everything at once. */
  windowMs: number;
  /** Give up after this long, ms (default 5 windows). */
  maxWaitMs?: number;
  /** Flush the tree's filesystem (syncfs) before observing (default true). */
  sync?: boolean;
  signal?: AbortSignal;
  /** Called before each wait with the number of files still moving. */
  onWait?: (pending: number) => void;
}

export interface SettleResult {
  /**
   * Candidates that held still (their rows updated with their latest stat),
   * and those that vanished or cannot be stat'ed (the upload reports them).
   */
  settled: number[];
  /** Candidates that kept moving. */
  unsettled: { index: number; path: string; reason: string }[];
  /** How long the check took, ms. */
  waitedMs: number;
}

function fsyncQuietly(path: string): void {
  try {
    const f = TreeFile.open(path); // never a FIFO swapped in: it would block
    try {
      f.syncSync();
    } finally {
      f.close();
    }
  } catch { /* not every filesystem allows it: best effort */ }
}

/**
 * Waits for candidate files (rows `which` of `files`) to settle. The
 * observations are kept in typed arrays: a first backup of a million files
 * checks them all without an object per file.
 */
export async function settleFiles(
  root: string,
  files: ScanTable,
  which: number[],
  options: SettleOptions,
): Promise<SettleResult> {
  const started = Date.now();
  if (options.windowMs <= 0 || which.length === 0) {
    return { settled: which, unsettled: [], waitedMs: 0 };
  }
  const windowNs = BigInt(Math.round(options.windowMs * 1e6));
  const maxWait = options.maxWaitMs ?? options.windowMs * 5;
  if (options.sync ?? true) {
    // One syncfs for the whole tree's filesystem; per-file fsync (only of
    // recently written files) where syncfs is not available.
    if (!syncFilesystem(root)) {
      const recent = BigInt(Date.now() - 60_000) * 1_000_000n;
      for (const i of which) if (files.mtime(i) >= recent) fsyncQuietly(`${root}/${files.path(i)}`);
    }
  }
  const settled: number[] = [];
  const unsettled: SettleResult["unsettled"] = [];
  // Each candidate's row with the size and mtime last observed.
  let pending = Int32Array.from(which);
  let sizes = Float64Array.from(which, (i) => files.size(i));
  let mtimes = BigInt64Array.from(which, (i) => files.mtime(i));
  let watched = new Uint8Array(pending.length);
  for (;;) {
    const now = BigInt(Date.now()) * 1_000_000n;
    let n = 0;
    for (let k = 0; k < pending.length; k++) {
      const i = pending[k];
      let st;
      try {
        st = lstatNs(`${root}/${files.path(i)}`);
      } catch {
        settled.push(i); // vanished or unreadable: the pack step reports it
        continue;
      }
      const size = st.kind === "file" ? st.size : 0;
      const still = size === sizes[k] && st.mtime === mtimes[k];
      if (still && (st.mtime < now - windowNs || watched[k])) {
        files.setStat(i, { ...st, size });
        settled.push(i);
      } else {
        // Kept for the next round, in place (n <= k).
        pending[n] = i;
        sizes[n] = size;
        mtimes[n] = st.mtime;
        watched[n] = 0;
        n++;
      }
    }
    pending = pending.subarray(0, n);
    sizes = sizes.subarray(0, n);
    mtimes = mtimes.subarray(0, n);
    watched = watched.subarray(0, n);
    if (n === 0) break;
    if (Date.now() - started >= maxWait) {
      for (const i of pending) {
        unsettled.push({
          index: i,
          path: files.path(i),
          reason: `still being written after ${((Date.now() - started) / 1000).toFixed(1)} s`,
        });
      }
      break;
    }
    options.onWait?.(n);
    // One window of observation: a file unchanged across it is settled.
    await new Promise((r) => setTimeout(r, options.windowMs));
    if (options.signal?.aborted) throw options.signal.reason;
    watched.fill(1);
  }
  return { settled, unsettled, waitedMs: Date.now() - started };
}
