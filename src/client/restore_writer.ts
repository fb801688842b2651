/**
 * The Worker half of restore: creates small files (already verified by the
 * main thread) with their mode and mtime, and writes the bytes of large files
 * into their temp files, so that the kernel's file-creation and page-cache
 * work overlaps with receiving, decoding and hashing on the main thread
 * (measured: on 100k small files the create/write/close/utimes calls alone
 * take as long as everything else together; on this VM, writing 1.29 GB of
 * large files costs ~4 s of kernel time against ~2 s for the rest).
 *
 * Messages in, each answered with `{done: bytes}` in order: `{files:
 * WriteJob[]}` batches; `{large: LargeOp}` steps of one large file (open its
 * temp file, write a chunk at its end, end it: renamed into place once the
 * main thread verified its hash, or removed); `{flush: true}` answered with
 * `{flushed: true, errors}`. A chunk's buffer is sent back with its answer
 * (`buffer`), for the main thread to reuse.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createFile, setTimesNs } from "../platform/fs_native.ts";
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

/** One step of a large file, written through a temp file beside its target. */
export type LargeOp =
  | { op: "open"; tmp: string }
  | { op: "write"; data: Uint8Array }
  /** `target` null: the content failed its check (or the restore stopped); the temp file goes. */
  | { op: "end"; size: number; target: string | null; mode: number; mtime: bigint };

const umask = Deno.umask();
let errors: WriteError[] = [];
/** The large file being written, if any; after a failed write, only its end is awaited. */
let large: { tmp: string; file: Deno.FsFile | null } | null = null;

const ZEROS = Buffer.alloc(1 << 20);

function isZero(chunk: Uint8Array): boolean {
  if (chunk.length < 4096 || chunk.length > ZEROS.length) return false;
  if (chunk[0] !== 0 || chunk[chunk.length - 1] !== 0) return false;
  return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length).equals(
    ZEROS.subarray(0, chunk.length),
  );
}

function largeStep(step: LargeOp): void {
  if (step.op === "open") {
    large = { tmp: step.tmp, file: null };
    try {
      large.file = Deno.openSync(step.tmp, { write: true, createNew: true, mode: 0o600 });
    } catch (err) {
      errors.push({ path: step.tmp, message: (err as Error).message.split("\n")[0] });
    }
    return;
  }
  const cur = large;
  if (!cur) return;
  if (step.op === "write") {
    if (!cur.file) return;
    try {
      if (isZero(step.data)) {
        // Leave a hole: sparse files come back sparse (truncate sets the size at the end).
        cur.file.seekSync(step.data.length, Deno.SeekMode.Current);
      } else {
        for (let o = 0; o < step.data.length;) o += cur.file.writeSync(step.data.subarray(o));
      }
    } catch (err) {
      errors.push({ path: cur.tmp, message: (err as Error).message.split("\n")[0] });
      cur.file.close();
      cur.file = null;
    }
    return;
  }
  large = null;
  let placed = false;
  try {
    if (cur.file) {
      cur.file.truncateSync(step.size);
      cur.file.close();
      cur.file = null;
      if (step.target !== null) {
        Deno.renameSync(cur.tmp, step.target);
        placed = true;
        Deno.chmodSync(step.target, step.mode);
        setTimesNs(step.target, step.mtime);
      }
    }
  } catch (err) {
    errors.push({ path: step.target ?? cur.tmp, message: (err as Error).message.split("\n")[0] });
  } finally {
    cur.file?.close();
    if (!placed) {
      try {
        Deno.removeSync(cur.tmp);
      } catch { /* never created, or gone */ }
    }
  }
}

// deno-lint-ignore no-explicit-any
const scope = self as any;
scope.onmessage = (ev: MessageEvent) => {
  const msg = ev.data as { files?: WriteJob[]; large?: LargeOp; flush?: boolean };
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
  if (msg.large) {
    largeStep(msg.large);
    if (msg.large.op === "write") {
      const buf = msg.large.data.buffer as ArrayBuffer;
      scope.postMessage({ done: msg.large.data.length, buffer: buf }, [buf]);
    } else scope.postMessage({ done: 0 });
  }
  if (msg.flush) {
    scope.postMessage({ flushed: true, errors });
    errors = [];
  }
};
