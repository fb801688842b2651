/**
 * Reading a file as the scan saw it: whole, with its stat (size, mtime,
 * ctime) checked before and after, so bytes read from a file that moved
 * meanwhile are never taken for the scanned version. Used by negotiation
 * (hashes, proofs, chunk cuts) on the main thread and in chunk workers.
 *
 * @module
 */

import { lstatNs, TreeFile } from "../platform/fs_native.ts";

let sharedBuffer: Uint8Array | null = null;

/**
 * Reads `abs` whole into `sink` (views of one reused buffer, valid during
 * the call); false when it is unreadable or not as scanned before or after.
 */
export function readAsScanned(
  abs: string,
  size: number,
  mtime: bigint,
  ctime: bigint,
  sink: (bytes: Uint8Array) => void,
): boolean {
  const same = () => {
    const st = lstatNs(abs);
    return st.kind === "file" && st.size === size && st.mtime === mtime && st.ctime === ctime;
  };
  try {
    if (!same()) return false;
    const f = TreeFile.open(abs);
    try {
      const buf = sharedBuffer ??= new Uint8Array(1 << 20);
      for (;;) {
        const n = f.readSync(buf);
        if (n === null || n === 0) break;
        sink(buf.subarray(0, n));
      }
    } finally {
      f.close();
    }
    return same();
  } catch {
    return false;
  }
}
