/**
 * Cuts big files into chunks (FastCDC, each chunk hashed) for a backup's
 * negotiation: on this thread for one file or a little data, else on up to
 * two Workers (chunk_worker.ts), one file each at a time, so both cores of a
 * small build host work (the chunker and SHA-256 cost ~1.6 ms per MB here).
 *
 * @module
 */

import { ChunkHasher, type ChunkRef } from "../format/fastcdc.ts";
import type { CutAnswer, CutJob } from "./chunk_worker.ts";
import { readAsScanned } from "./read_stable.ts";

/** A file to cut, with the stat the scan saw. */
export interface CutFile {
  abs: string;
  size: number;
  mtime: bigint;
  ctime: bigint;
}

/** Below this much data in all, Workers cost more than they save. */
const POOL_MIN_BYTES = 64 << 20;

/**
 * The chunks of each file, in order (null for a file that moved or could
 * not be read).
 */
export async function cutFiles(files: CutFile[]): Promise<(ChunkRef[] | null)[]> {
  let total = 0;
  for (const f of files) total += f.size;
  const threads = Math.min(2, navigator.hardwareConcurrency || 1, files.length);
  if (threads < 2 || total < POOL_MIN_BYTES) return files.map(cutHere);
  const out: (ChunkRef[] | null)[] = new Array(files.length).fill(null);
  // Biggest first: the two threads end close together.
  const order = files.map((_, i) => i).sort((a, b) => files[b].size - files[a].size);
  let next = 0;
  const run = async () => {
    const worker = new Worker(new URL("./chunk_worker.ts", import.meta.url).href, {
      type: "module",
    });
    try {
      while (next < order.length) {
        const i = order[next++];
        out[i] = await ask(worker, { id: i, ...files[i] });
      }
    } finally {
      worker.terminate();
    }
  };
  await Promise.all(Array.from({ length: threads }, run));
  return out;
}

function cutHere(f: CutFile): ChunkRef[] | null {
  const chunks: ChunkRef[] = [];
  const cut = new ChunkHasher((hash, size) => chunks.push({ hash, size }));
  if (!readAsScanned(f.abs, f.size, f.mtime, f.ctime, (b) => cut.push(b))) return null;
  cut.end();
  return chunks;
}

function ask(worker: Worker, job: CutJob): Promise<ChunkRef[] | null> {
  return new Promise((resolve, reject) => {
    worker.onmessage = (ev: MessageEvent<CutAnswer>) => resolve(ev.data.chunks);
    worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      reject(new Error(`Cannot cut ${job.abs} into chunks: ${ev.message}`));
    };
    worker.postMessage(job);
  });
}
