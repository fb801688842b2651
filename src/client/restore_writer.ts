/**
 * The Worker half of restore: creates small files (already verified by the
 * main thread) with their mode and mtime, so that the kernel's file-creation
 * work overlaps with decoding and hashing on the main thread (measured: on
 * 100k small files the create/write/close/utimes calls alone take as long as
 * everything else together).
 *
 * Messages in: `{files: WriteJob[]}` batches and `{flush: true}`; out: `{done:
 * bytes}` per batch, `{flushed: true, errors}` after a flush.
 *
 * @module
 */

import { createFile } from "../platform/fs_native.ts";
import { collectYoung } from "../platform/memory.ts";

/** One file to create. */
export interface WriteJob {
  path: string;
  data: Uint8Array;
  mode: number;
  mtime: bigint;
}

/** A write that failed. */
export interface WriteError {
  path: string;
  message: string;
}

const umask = Deno.umask();
let errors: WriteError[] = [];

// deno-lint-ignore no-explicit-any
const scope = self as any;
scope.onmessage = (ev: MessageEvent) => {
  const msg = ev.data as { files?: WriteJob[]; flush?: boolean };
  if (msg.files) {
    let bytes = 0;
    for (const job of msg.files) {
      bytes += job.data.length;
      try {
        createFile(job.path, job.data, job.mode, job.mtime, umask);
      } catch (err) {
        errors.push({ path: job.path, message: (err as Error).message.split("\n")[0] });
      }
    }
    // The batch's buffers are garbage now, but this thread allocates too
    // little on the V8 heap for a scavenge to free them: one per batch does
    // (docs/DESIGN.md, "Restore's client side").
    collectYoung();
    scope.postMessage({ done: bytes });
  }
  if (msg.flush) {
    scope.postMessage({ flushed: true, errors });
    errors = [];
  }
};
