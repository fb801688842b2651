/**
 * Content-defined chunking (FastCDC, Xia et al. 2016, with normalized
 * chunking): a stream of bytes is cut where a rolling "gear" hash of the last
 * 32 bytes has its top bits zero, so a cut depends only on the bytes just
 * before it and on the distance from the previous cut. An insertion or edit
 * moves the cuts of the chunk it falls in (and at most the next ones, until a
 * cut falls at the same bytes again); every cut after that stays on the same
 * bytes, shifted by the size of the edit.
 *
 * Algorithm per chunk: the first `min` bytes are never a cut (and not hashed);
 * up to `avg` a cut needs the hash's top `bits + 2` bits zero (harder), after
 * `avg` its top `bits - 2` bits (easier), and at `max` the chunk is cut
 * whatever the hash: sizes gather around `avg` (normalized chunking, level 2).
 * The hash is 32 bits, `h = (h << 1) + GEAR[byte]`, so it forgets a byte after
 * 32 steps. GEAR is fixed for all time (it decides where stored chunks start):
 * xorshift32 from a constant seed.
 *
 * @module
 */

import { createHash, type Hash } from "node:crypto";
import { MAX_MEMBER_RAW } from "./gzip_member.ts";

/** Sizes of the chunks (bytes). */
export interface CdcSizes {
  min: number;
  avg: number;
  max: number;
}

/**
 * Keep's sizes for big files: 128 KiB ≤ chunk ≤ 2 MiB, around 512 KiB.
 * Measured with bench/chunking.ts on the bench's large dataset (1.29 GB) and
 * its edits (11.1 MB of new bytes in 4 files): new raw bytes after the edits
 * 12.6 / 13.1 / 17.5 / 29.8 MB for averages of 256 KiB / 512 KiB / 1 MiB /
 * 2 MiB (min avg/4, max 4·avg), with 3991 / 1949 / 921 / 452 chunks: 512 KiB
 * stores nearly as little as 256 KiB with half the chunks.
 */
export const CDC_SIZES: CdcSizes = { min: 128 << 10, avg: 512 << 10, max: 2 << 20 };

/**
 * Files bigger than this are stored as chunks: the client ends a gzip member
 * at each cut (members of a chunk are full, MAX_MEMBER_RAW, but its last),
 * and the server ends a chunk after a short member (see server/ingest.ts).
 */
export const CHUNKED_FILE_MIN = 8 << 20;

/**
 * Whether a big file sent whole has a chunk end after a data member of
 * `memberRaw` bytes that brought the chunk to `chunkSize`: after a short
 * member (the client's cut: ChunkMembers in client/upload.ts), never before
 * the chunker's min, and at the latest at its max (server/ingest.ts).
 */
export function memberEndsChunk(memberRaw: number, chunkSize: number): boolean {
  return (memberRaw < MAX_MEMBER_RAW && chunkSize >= CDC_SIZES.min) ||
    chunkSize >= CDC_SIZES.max;
}

// Int32 throughout the hot loop (`| 0`, not `>>> 0`): V8 keeps the hash in
// a register instead of boxing values past 2^31, ~1.3x faster, same bits.
const GEAR = (() => {
  const t = new Int32Array(256);
  let x = 0x9e3779b9;
  for (let i = 0; i < 256; i++) {
    for (let k = 0; k < 3; k++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
    }
    t[i] = x;
  }
  return t;
})();

/** A mask of the top `n` bits of 32 (as an int32). */
function topBits(n: number): number {
  return n >= 32 ? -1 : ~(0xffffffff >>> n) | 0;
}

/**
 * Finds cut points in a stream. Push the bytes in any pieces; each call
 * returns the cuts it found (as offsets from the start of the stream, each
 * the end of a chunk); `end()` returns the final cut (the stream's length)
 * unless the stream is empty or already ends on a cut.
 *
 * @example
 * ```ts
 * const cdc = new FastCdc();
 * const cuts = [...cdc.push(a), ...cdc.push(b), ...cdc.end()];
 * ```
 */
export class FastCdc {
  readonly sizes: CdcSizes;
  readonly #maskS: number;
  readonly #maskL: number;
  /** Bytes seen so far. */
  #pos = 0;
  /** Where the current chunk started. */
  #start = 0;
  #hash = 0;

  constructor(sizes: CdcSizes = CDC_SIZES) {
    if (!(sizes.min >= 64 && sizes.min <= sizes.avg && sizes.avg <= sizes.max)) {
      throw new RangeError("Cannot chunk: sizes must satisfy 64 <= min <= avg <= max");
    }
    this.sizes = sizes;
    const bits = Math.round(Math.log2(sizes.avg));
    this.#maskS = topBits(bits + 2);
    this.#maskL = topBits(Math.max(1, bits - 2));
  }

  /** Bytes pushed so far. */
  get position(): number {
    return this.#pos;
  }

  /** Takes the next piece; returns the cuts that fell in it. */
  push(piece: Uint8Array): number[] {
    const cuts: number[] = [];
    const { min, avg, max } = this.sizes;
    const maskS = this.#maskS;
    const maskL = this.#maskL;
    const base = this.#pos;
    let h = this.#hash;
    let i = 0;
    const n = piece.length;
    while (i < n) {
      const len = base + i - this.#start; // bytes of this chunk before piece[i]
      if (len < min) {
        // Skipped without hashing: a cut never falls in the first min bytes.
        const skip = Math.min(min - len, n - i);
        i += skip;
        h = 0;
        continue;
      }
      // Hash until a cut or the end of the piece, in the two regimes.
      let cut = -1;
      const toAvg = avg - len;
      const toMax = max - len;
      let j = i;
      const endS = Math.min(n, i + Math.max(0, toAvg));
      for (; j < endS; j++) {
        h = ((h << 1) + GEAR[piece[j]]) | 0;
        if ((h & maskS) === 0) {
          cut = j + 1;
          break;
        }
      }
      if (cut < 0) {
        const endL = Math.min(n, i + toMax);
        for (; j < endL; j++) {
          h = ((h << 1) + GEAR[piece[j]]) | 0;
          if ((h & maskL) === 0) {
            cut = j + 1;
            break;
          }
        }
        if (cut < 0 && j === i + toMax) cut = j; // max reached
      }
      if (cut < 0) {
        i = n;
        break;
      }
      cuts.push(base + cut);
      this.#start = base + cut;
      h = 0;
      i = cut;
    }
    this.#pos = base + n;
    this.#hash = h;
    return cuts;
  }

  /** The last cut (the end of the stream), if the stream does not end on one. */
  end(): number[] {
    return this.#pos > this.#start ? [this.#pos] : [];
  }
}

/**
 * The chunker's rolling hash after `bytes` (only the last 32 count): a cut
 * past the average size falls where its top `log2(avg) - 2` bits are zero.
 * For tests that need a cut at a chosen place.
 */
export function gearHash(bytes: Uint8Array): number {
  let h = 0;
  for (const b of bytes) h = ((h << 1) + GEAR[b]) | 0;
  return h >>> 0;
}

/** The cut points of `data` (the end of every chunk, the last one `data.length`). */
export function chunkCuts(data: Uint8Array, sizes: CdcSizes = CDC_SIZES): number[] {
  const cdc = new FastCdc(sizes);
  return [...cdc.push(data), ...cdc.end()];
}

/** A chunk of a file: its SHA-256 (hex) and size. */
export interface ChunkRef {
  hash: string;
  size: number;
}

/**
 * Cuts a stream as the upload of a big file does (FastCdc) and
 * hashes each chunk (SHA-256): `onChunk` gets each chunk's hash and size,
 * and, when `keep` is set, its bytes (valid during the call).
 */
export class ChunkHasher {
  readonly #cdc = new FastCdc();
  #sha: Hash = createHash("sha256");
  #size = 0;
  readonly #buf: Uint8Array | null;
  #fill = 0;

  constructor(
    readonly onChunk: (hash: string, size: number, bytes: Uint8Array | null) => void,
    keep = false,
  ) {
    // A chunk is at most the chunker's max: one buffer holds any.
    this.#buf = keep ? new Uint8Array(CDC_SIZES.max) : null;
  }

  push(piece: Uint8Array): void {
    const base = this.#cdc.position;
    let from = 0;
    for (const cut of this.#cdc.push(piece)) {
      this.#add(piece.subarray(from, cut - base));
      this.#emit();
      from = cut - base;
    }
    this.#add(piece.subarray(from));
  }

  end(): void {
    if (this.#size > 0) this.#emit();
  }

  #add(bytes: Uint8Array): void {
    if (!bytes.length) return;
    this.#sha.update(bytes);
    this.#buf?.set(bytes, this.#fill);
    this.#fill += bytes.length;
    this.#size += bytes.length;
  }

  #emit(): void {
    const hash = this.#sha.digest("hex");
    this.onChunk(hash, this.#size, this.#buf ? this.#buf.subarray(0, this.#fill) : null);
    this.#sha = createHash("sha256");
    this.#size = 0;
    this.#fill = 0;
  }
}
