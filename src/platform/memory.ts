/**
 * Keeps RSS flat while big streams pass through. The buffers Keep allocates
 * per block or member are short-lived, but their bytes live outside the V8
 * heap, and those that wait in a stream queue (for a slower peer) survive
 * scavenges and move to the old generation, where they are freed only by a
 * full GC, which the small heap rarely triggers: the client's external
 * memory was seen climbing by ~100 MB over a 100k-file backup, and the
 * server's by ~70 MB over a restore of big files (V8 collects for external
 * memory only after ~64 MB of it). With `--expose-gc` (set by scripts/keep
 * and the compile task) a GC every 32 MB of such data frees them: a full one
 * for buffers that may have waited in a queue, else a minor one. Without the
 * flag this does nothing.
 *
 * @module
 */

import { trimNativeHeap } from "./fs_native.ts";

const EVERY = 32 << 20;
let pending = 0;
let pendingMinor = 0;
// deno-lint-ignore no-explicit-any
const gc = (globalThis as any).gc as ((o?: { type: "minor" | "major" }) => void) | undefined;

/**
 * Notes that `bytes` of short-lived buffers were handled; collects them now
 * and then: `full` for buffers that may have been queued (and promoted),
 * else a cheap minor GC every 32 MB.
 */
export function churned(bytes: number, full = false): void {
  if (!gc) return;
  if (full) {
    pending += bytes;
    if (pending >= EVERY) {
      pending = 0;
      gc();
    }
    return;
  }
  pendingMinor += bytes;
  if (pendingMinor >= EVERY) {
    pendingMinor = 0;
    gc({ type: "minor" });
  }
}

/**
 * A minor GC now, when exposed: for a thread that frees buffers in batches
 * but allocates too little on the V8 heap for a scavenge to come by itself.
 */
export function collectYoung(): void {
  gc?.({ type: "minor" });
}

/**
 * A full GC now, when exposed: after a big piece of work (an upload's
 * commit, a manifest build) whose garbage would otherwise hold the heap at
 * its high mark until the next allocation burst.
 */
export function collectNow(): void {
  pending = 0;
  pendingMinor = 0;
  gc?.();
  trimNativeHeap();
}
