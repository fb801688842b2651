/**
 * The cheap fingerprint behind `--check partial`: xxHash64 (seed 0) of the
 * first 4 KiB, the last 4 KiB (from byte max(4096, size - 4096)) and the size
 * as a little-endian u64. For files up to 8 KiB that is all of the content.
 * Both the client (two reads per file) and the server (as data streams by)
 * compute it; the server records its own.
 *
 * @module
 */

import xxhash from "xxhash-wasm";
import type { ReadableFile } from "../platform/fs_native.ts";

/** Bytes taken from each end of the file. */
export const PARTIAL_SPAN = 4096;

const hasher = await xxhash();

/** Offset where the tail part starts for a file of `size` bytes. */
export function tailStart(size: number): number {
  return Math.max(PARTIAL_SPAN, size - PARTIAL_SPAN);
}

/** The partial hash from the head and tail slices, hex. */
export function partialHash(head: Uint8Array, tail: Uint8Array, size: number): string {
  const h = hasher.create64(0n);
  h.update(head);
  h.update(tail);
  const sz = new Uint8Array(8);
  new DataView(sz.buffer).setBigUint64(0, BigInt(size), true);
  h.update(sz);
  return h.digest().toString(16).padStart(16, "0");
}

/** The partial hash of a file on disk, reading only its two ends. */
export function partialHashOfFile(file: ReadableFile, size: number): string {
  const head = new Uint8Array(Math.min(PARTIAL_SPAN, size));
  readFullySync(file, head, 0);
  const start = tailStart(size);
  const tail = new Uint8Array(Math.max(0, size - start));
  readFullySync(file, tail, start);
  return partialHash(head, tail, size);
}

/** The partial hash of bytes held in memory. */
export function partialHashOfBytes(data: Uint8Array): string {
  const size = data.length;
  return partialHash(
    data.subarray(0, Math.min(PARTIAL_SPAN, size)),
    data.subarray(tailStart(size)),
    size,
  );
}

/** Reads exactly buf.length bytes at `offset`; throws if the file is shorter. */
export function readFullySync(file: ReadableFile, buf: Uint8Array, offset: number): void {
  file.seekSync(offset, Deno.SeekMode.Start);
  let got = 0;
  while (got < buf.length) {
    const n = file.readSync(buf.subarray(got));
    if (n === null || n === 0) throw new Deno.errors.UnexpectedEof("file shrank while being read");
    got += n;
  }
}

/**
 * Follows a stream of data and computes its partial hash at the end, keeping
 * only the head and a rolling tail window.
 */
export class PartialHasher {
  #head = new Uint8Array(PARTIAL_SPAN);
  #headFill = 0;
  #tail = new Uint8Array(PARTIAL_SPAN * 2);
  #tailFill = 0;
  #size = 0;

  /** Starts over for the next file (reuses the buffers). */
  reset(): void {
    this.#headFill = 0;
    this.#tailFill = 0;
    this.#size = 0;
  }

  update(chunk: Uint8Array): void {
    if (this.#headFill < PARTIAL_SPAN) {
      const n = Math.min(PARTIAL_SPAN - this.#headFill, chunk.length);
      this.#head.set(chunk.subarray(0, n), this.#headFill);
      this.#headFill += n;
    }
    this.#size += chunk.length;
    // Keep the last PARTIAL_SPAN bytes seen (a window of 2 spans, compacted).
    if (chunk.length >= PARTIAL_SPAN) {
      this.#tail.set(chunk.subarray(chunk.length - PARTIAL_SPAN), 0);
      this.#tailFill = PARTIAL_SPAN;
      return;
    }
    if (this.#tailFill + chunk.length > this.#tail.length) {
      this.#tail.copyWithin(0, this.#tailFill - PARTIAL_SPAN, this.#tailFill);
      this.#tailFill = PARTIAL_SPAN;
    }
    this.#tail.set(chunk, this.#tailFill);
    this.#tailFill += chunk.length;
  }

  digest(): string {
    const size = this.#size;
    const tailLen = Math.max(0, size - tailStart(size));
    const tail = this.#tail.subarray(this.#tailFill - tailLen, this.#tailFill);
    return partialHash(this.#head.subarray(0, this.#headFill), tail, size);
  }
}
