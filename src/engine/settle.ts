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

import { lstatNs, syncFilesystem } from "./fs_native.ts";
import type { ScanEntry } from "./scan.ts";

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
  /** Candidates that held still (the same objects, updated with their latest stat). */
  settled: ScanEntry[];
  /** Candidates that kept moving (or vanished). */
  unsettled: { entry: ScanEntry; reason: string }[];
  /** How long the check took, ms. */
  waitedMs: number;
}

function fsyncQuietly(path: string): void {
  try {
    const f = Deno.openSync(path, { read: true });
    try {
      f.syncSync();
    } finally {
      f.close();
    }
  } catch { /* not every filesystem allows it: best effort */ }
}

/** Waits for candidate files to settle. */
export async function settleFiles(
  root: string,
  files: ScanEntry[],
  options: SettleOptions,
): Promise<SettleResult> {
  const started = Date.now();
  if (options.windowMs <= 0 || files.length === 0) {
    return { settled: files, unsettled: [], waitedMs: 0 };
  }
  const windowNs = BigInt(Math.round(options.windowMs * 1e6));
  const maxWait = options.maxWaitMs ?? options.windowMs * 5;
  if (options.sync ?? true) {
    // One syncfs for the whole tree's filesystem; per-file fsync (only of
    // recently written files) where syncfs is not available.
    if (!syncFilesystem(root)) {
      const recent = BigInt(Date.now() - 60_000) * 1_000_000n;
      for (const f of files) if (f.mtime >= recent) fsyncQuietly(`${root}/${f.path}`);
    }
  }
  const settled: ScanEntry[] = [];
  const unsettled: SettleResult["unsettled"] = [];
  // Each candidate with the size and mtime last observed; entries are updated
  // in place with their latest stat once settled (no copies of big lists).
  let pending = files.map((entry) => ({
    entry,
    size: entry.size,
    mtime: entry.mtime,
    watched: false,
  }));
  for (;;) {
    const now = BigInt(Date.now()) * 1_000_000n;
    const next: typeof pending = [];
    for (const p of pending) {
      let st;
      try {
        st = lstatNs(`${root}/${p.entry.path}`);
      } catch {
        settled.push(p.entry); // vanished or unreadable: the pack step reports it
        continue;
      }
      const size = st.kind === "file" ? st.size : 0;
      const still = size === p.size && st.mtime === p.mtime;
      if (still && (st.mtime < now - windowNs || p.watched)) {
        const e = p.entry;
        e.size = size;
        e.mode = st.mode;
        e.mtime = st.mtime;
        e.ctime = st.ctime;
        settled.push(e);
      } else next.push({ entry: p.entry, size, mtime: st.mtime, watched: false });
    }
    pending = next;
    if (pending.length === 0) break;
    if (Date.now() - started >= maxWait) {
      for (const p of pending) {
        unsettled.push({
          entry: p.entry,
          reason: `still being written after ${((Date.now() - started) / 1000).toFixed(1)} s`,
        });
      }
      break;
    }
    options.onWait?.(pending.length);
    // One window of observation: a file unchanged across it is settled.
    await new Promise((r) => setTimeout(r, options.windowMs));
    if (options.signal?.aborted) throw options.signal.reason;
    for (const p of pending) p.watched = true;
  }
  return { settled, unsettled, waitedMs: Date.now() - started };
}
