/**
 * The Worker half of cutting big files into chunks before a backup's
 * negotiation (see chunk_pool.ts): reads one file as scanned, cuts it with
 * FastCDC and hashes each chunk, and answers with the chunks (null when the
 * file moved or could not be read). Messages in: `CutJob`; out: `CutAnswer`.
 *
 * @module
 */

import { ChunkHasher, type ChunkRef } from "../format/fastcdc.ts";
import { readAsScanned } from "./read_stable.ts";

/** One file to cut, with the stat the scan saw. */
export interface CutJob {
  id: number;
  abs: string;
  size: number;
  mtime: bigint;
  ctime: bigint;
}

export interface CutAnswer {
  id: number;
  chunks: ChunkRef[] | null;
}

const scope = self as unknown as {
  onmessage: ((ev: MessageEvent<CutJob>) => void) | null;
  postMessage(m: CutAnswer): void;
};

scope.onmessage = (ev) => {
  const job = ev.data;
  const chunks: ChunkRef[] = [];
  const cut = new ChunkHasher((hash, size) => chunks.push({ hash, size }));
  const ok = readAsScanned(job.abs, job.size, job.mtime, job.ctime, (b) => cut.push(b));
  if (ok) cut.end();
  scope.postMessage({ id: job.id, chunks: ok ? chunks : null });
};
