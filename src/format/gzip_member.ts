/**
 * Keep's gzip framing. Every archive Keep writes is a concatenation of gzip
 * members (RFC 1952 allows it; gzip, GNU tar and bsdtar read it as one
 * stream). Each member carries an extra field `KP` with the member's total
 * length and its uncompressed length, so a reader can cut the stream into
 * members without inflating it (as BGZF does). That lets the server keep a
 * file's members as its blob at rest, and send them back on restore, without
 * compressing anything twice.
 *
 * Layout: 1f 8b 08 04 | mtime 0 | xfl 0 | os ff | XLEN=12 | 'K' 'P' LEN=8 |
 * u32 member length | u32 raw length | deflate data | crc32 | isize.
 *
 * @module
 */

import zlib from "node:zlib";
import { concatBytes } from "../platform/concat_bytes.ts";
import { KeepError } from "../errors.ts";

/**
 * One zlib stream object, reset and reused for every member. node:zlib's
 * one-shot `deflateRawSync`/`inflateRawSync` build a new stream object and
 * output buffers per call, freed only when V8 collects them: RSS grows and
 * the calls are several times slower (docs/DESIGN.md, "One reused zlib
 * stream per direction").
 * The reused object is driven through the binding that node:zlib's own sync
 * path uses (`_handle.writeSync` and `_writeState`); when a Deno release
 * lacks it, the one-shot functions are used instead (see `fastZlib`).
 */
interface ZHandle {
  reset(): void;
  writeSync(
    flush: number,
    input: Uint8Array,
    inOff: number,
    inLen: number,
    out: Uint8Array,
    outOff: number,
    outLen: number,
  ): void;
  onerror: (message: string, errno: number) => void;
}

interface ZStream {
  handle: ZHandle;
  /** After writeSync: [output bytes left, input bytes left]. */
  state: Uint32Array;
  error: string | null;
}

function openStream(make: () => unknown): ZStream | null {
  // deno-lint-ignore no-explicit-any
  const s = make() as any;
  const handle = s?._handle as ZHandle | undefined;
  const state = s?._writeState;
  if (
    !handle || typeof handle.writeSync !== "function" || typeof handle.reset !== "function" ||
    !(state instanceof Uint32Array) || state.length !== 2
  ) {
    return null;
  }
  const z: ZStream = { handle, state, error: null };
  handle.onerror = (message) => {
    z.error = message;
  };
  return z;
}

const deflaters = new Map<number, ZStream | null>();
let inflater: ZStream | null | undefined;

/**
 * Runs `input` through a reset stream with Z_FINISH into `out`. Returns the
 * output length and the input bytes not consumed; throws the zlib message
 * on bad data. `ended` is true only when the run reached the end of the
 * deflate stream with output room to spare.
 *
 * A stream is reused only after a run that ended: zlib-ng's level-1 deflate
 * (deflate_quick) keeps whether a block is open across deflateReset, so a
 * run given up mid-block makes the next stream after the reset start
 * without its block header (a member no inflater reads: the corrupt uploads
 * of real object files). Callers drop a stream whose run did not end.
 */
function runStream(
  z: ZStream,
  input: Uint8Array,
  out: Uint8Array,
): { produced: number; left: number; ended: boolean } {
  z.error = null;
  z.handle.reset();
  z.handle.writeSync(zlib.constants.Z_FINISH, input, 0, input.length, out, 0, out.length);
  if (z.error !== null) throw new Error(z.error);
  const produced = out.length - z.state[0];
  const left = z.state[1];
  // With Z_FINISH, output room left over means zlib reached the stream's end.
  return { produced, left, ended: produced < out.length };
}

let deflateOut = new Uint8Array(0);

/**
 * Room for any deflate of `n` bytes: zlib-ng's level 1 codes literals with
 * fixed Huffman codes (up to 9 bits for 8), so incompressible input grows
 * by an eighth before its stored-block fallback; a quarter plus block
 * overheads is ample for every level.
 */
function deflateRoom(n: number): number {
  return n + (n >> 2) + 1024;
}

/**
 * Deflates `raw` at `level`; the result is a view of a scratch buffer (valid
 * until the next call), or null when it would not be shorter than `limit`.
 * The stream always runs to its end (the output buffer has room for any
 * deflate of `raw`), and is dropped if it did not.
 */
function deflateTransient(raw: Uint8Array, level: number, limit: number): Uint8Array | null {
  if (!deflaters.has(level)) {
    deflaters.set(level, openStream(() => zlib.createDeflateRaw({ level })));
  }
  const z = deflaters.get(level)!;
  if (!z) {
    const d = zlib.deflateRawSync(raw, { level });
    return d.length < limit ? d : null;
  }
  const room = deflateRoom(raw.length);
  if (deflateOut.length < room) deflateOut = new Uint8Array(Math.max(room, 64 << 10));
  const out = deflateOut.subarray(0, room);
  let r;
  try {
    r = runStream(z, raw, out);
  } catch (err) {
    deflaters.delete(level);
    throw err;
  }
  if (!r.ended || r.left !== 0) {
    // Cannot happen with that room; if it does, never reuse the stream, and
    // let a fresh one-shot stream do this member.
    deflaters.delete(level);
    const d = zlib.deflateRawSync(raw, { level });
    return d.length < limit ? d : null;
  }
  return r.produced < limit ? out.subarray(0, r.produced) : null;
}

/**
 * Inflates one deflate stream that must give exactly `rawLen` bytes into
 * `out` (at least rawLen + 1 long). Returns the bytes of `body` after the
 * stream's end. Throws on bad data, and RangeError past `rawLen`. The reused
 * stream is kept only after a run that ended cleanly with `rawLen` bytes.
 */
function inflateInto(body: Uint8Array, rawLen: number, out: Uint8Array): number {
  if (inflater === undefined) inflater = openStream(() => zlib.createInflateRaw());
  const z = inflater;
  if (!z) {
    const r = zlib.inflateRawSync(body, {
      maxOutputLength: Math.max(rawLen, 1),
      info: true,
    }) as unknown as { buffer: Uint8Array; engine: { bytesWritten: number } };
    if (r.buffer.length > rawLen) throw new RangeError("too long");
    out.set(r.buffer);
    if (r.buffer.length !== rawLen) {
      throw new Error(`length ${r.buffer.length}, header says ${rawLen}`);
    }
    return body.length - r.engine.bytesWritten;
  }
  let r;
  try {
    r = runStream(z, body, out.subarray(0, rawLen + 1));
  } catch (err) {
    inflater = undefined;
    throw err;
  }
  if (!r.ended || r.produced !== rawLen) inflater = undefined;
  if (r.produced > rawLen) throw new RangeError("too long");
  if (r.produced !== rawLen) throw new Error(`length ${r.produced}, header says ${rawLen}`);
  return r.left;
}

/** True when the reused zlib streams are in use (see ZHandle). */
export function fastZlib(): boolean {
  if (inflater === undefined) inflater = openStream(() => zlib.createInflateRaw());
  return inflater !== null;
}

/** Largest uncompressed payload of one member. */
export const MAX_MEMBER_RAW = 1 << 20;
const HEADER = 24;
const TRAILER = 8;
/** Largest member on the wire: stored blocks cost 5 bytes per 65535. */
export const MAX_MEMBER_BYTES = HEADER + TRAILER + MAX_MEMBER_RAW +
  5 * (Math.ceil(MAX_MEMBER_RAW / 65535) + 1);

/** How a member's payload is encoded. 0 = stored, 1..9 = deflate level. */
export type Level = number;

const PREFIX = new Uint8Array([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 12, 0, 0x4b, 0x50, 8, 0]);

function writeHeader(out: Uint8Array, total: number, raw: number): void {
  out.set(PREFIX);
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  v.setUint32(16, total, true);
  v.setUint32(20, raw, true);
}

/**
 * Deflate level `auto` uses for chunks up to AUTO_SAMPLE bytes (whole small
 * files). Measured on the bench's text files of 1–16 KiB, one deflate per
 * file: level 1 keeps 47.5% at 119 MB/s, level 2 keeps 34.7% at 58 MB/s,
 * level 6 31.7% at 40 MB/s (zstd: 34.0% at 71 MB/s). Small files have no
 * context to share, and level 1's short hash chains find little inside one;
 * level 2 is where the store gets as small as restic's. Big chunks (level 1)
 * compress well at level 1 already and are where speed counts.
 */
const SMALL_LEVEL = 1;

/** Bytes `auto` deflates to judge a big chunk. */
const AUTO_SAMPLE = 16384;

/** Size of the stored-block deflate stream for `n` bytes. */
function storedSize(n: number): number {
  return n + 5 * Math.max(1, Math.ceil(n / 65535));
}

/**
 * Encodes `raw` (at most MAX_MEMBER_RAW bytes) as one member.
 *
 * @example
 * ```ts
 * const m = encodeMember(new TextEncoder().encode("hello"), 1);
 * ```
 */
export function encodeMember(raw: Uint8Array, level: Level | "auto"): Uint8Array {
  const parts: Uint8Array[] = [];
  writeMember(raw, level, (b) => parts.push(b.slice()));
  return concatBytes(parts);
}

/** An encoder of one member (encodeMember's shape; tests pass broken ones). */
export type MemberEncoder = (raw: Uint8Array, level: Level | "auto") => Uint8Array;

/**
 * Encodes `raw` as one member and checks the result before anyone keeps it:
 * decoded back, it must give exactly `raw`. A member that does not is
 * replaced by stored blocks (no zlib involved), checked the same way. For
 * the server, which stores what it encodes itself: a wrong member would
 * poison every project that shares the content.
 */
export function encodeChecked(
  raw: Uint8Array,
  level: Level | "auto",
  encode: MemberEncoder = encodeMember,
): Uint8Array {
  const member = encode(raw, level);
  if (decodesTo(member, raw)) return member;
  const stored = encodeMember(raw, 0);
  if (decodesTo(stored, raw)) return stored;
  throw new KeepError("internal", "Cannot encode content: stored blocks do not decode back");
}

function decodesTo(member: Uint8Array, raw: Uint8Array): boolean {
  let back: Uint8Array;
  try {
    // Not the transient decode: its scratch buffer may be what the caller
    // is still reading (ingest re-encodes while its parser walks a member).
    back = decodeMember(member);
  } catch {
    return false;
  }
  if (back.length !== raw.length) return false;
  for (let i = 0; i < raw.length; i++) if (back[i] !== raw[i]) return false;
  return true;
}

const headerScratch = new Uint8Array(HEADER);
const blockScratch = new Uint8Array(5);
const trailerScratch = new Uint8Array(TRAILER);
const trailerView = new DataView(trailerScratch.buffer);

/**
 * Writes `raw` (at most MAX_MEMBER_RAW bytes) as one member through `sink`,
 * in pieces and without assembling it: the sink must copy each piece before
 * it returns (pieces may be reused scratch buffers or views of `raw`).
 * Returns the member's length.
 */
export function writeMember(
  raw: Uint8Array,
  level: Level | "auto",
  sink: (piece: Uint8Array) => void,
): number {
  if (raw.length > MAX_MEMBER_RAW) throw new RangeError("member payload too large");
  // auto: small chunks are deflated once and kept only if they shrink by 10%;
  // big ones are first judged on a sample, so incompressible data costs one
  // 16 KiB deflate rather than a whole one.
  let limit = storedSize(raw.length);
  if (level === "auto") {
    if (raw.length < 64 || looksRandom(raw)) level = 0;
    else {
      if (raw.length > AUTO_SAMPLE) level = autoLevel(raw);
      else level = SMALL_LEVEL;
      limit = Math.floor(raw.length * 0.9);
    }
  }
  const trailer = () => {
    trailerView.setUint32(0, zlib.crc32(raw), true);
    trailerView.setUint32(4, raw.length, true);
    sink(trailerScratch);
  };
  if (level > 0) {
    const deflated = deflateTransient(raw, level, limit);
    if (deflated) {
      const total = HEADER + deflated.length + TRAILER;
      writeHeader(headerScratch, total, raw.length);
      sink(headerScratch);
      sink(deflated);
      trailer();
      return total;
    }
  }
  const total = HEADER + storedSize(raw.length) + TRAILER;
  writeHeader(headerScratch, total, raw.length);
  sink(headerScratch);
  let i = 0;
  do {
    const n = Math.min(65535, raw.length - i);
    blockScratch[0] = i + n >= raw.length ? 1 : 0;
    blockScratch[1] = n & 0xff;
    blockScratch[2] = n >> 8;
    blockScratch[3] = ~n & 0xff;
    blockScratch[4] = (~n >> 8) & 0xff;
    sink(blockScratch);
    if (n) sink(raw.subarray(i, i + n));
    i += n;
  } while (i < raw.length);
  trailer();
  return total;
}

const seen = new Uint8Array(256);
let seenMark = 0;

/**
 * A cheap test for compressed or encrypted data: the number of distinct
 * byte values in the first 512 bytes. Uniformly random bytes show ~86% of
 * what n draws from 256 can give (221 of 256 for 512 bytes); text shows
 * well under 100, object code and most binaries under 180. Costs about a
 * microsecond, against a deflate call that would be thrown away.
 */
export function looksRandom(raw: Uint8Array): boolean {
  const n = Math.min(raw.length, 512);
  if (n < 64) return false;
  if (++seenMark === 256) {
    seen.fill(0);
    seenMark = 1;
  }
  let distinct = 0;
  for (let i = 0; i < n; i++) {
    const b = raw[i];
    if (seen[b] !== seenMark) {
      seen[b] = seenMark;
      distinct++;
    }
  }
  const expected = 256 * (1 - Math.exp(-n / 256));
  return distinct > expected * 0.85;
}

/**
 * Picks a level for `raw` under `auto`: deflate a sample at level 1 and store
 * the chunk when the sample does not shrink by 10% (already compressed data).
 */
export function autoLevel(raw: Uint8Array): Level {
  if (raw.length < 64) return 0;
  const sample = raw.length <= AUTO_SAMPLE ? raw : raw.subarray(0, AUTO_SAMPLE);
  const limit = Math.floor(sample.length * 0.9) + 1;
  return deflateTransient(sample, 1, limit) ? 1 : 0;
}

/** Uncompressed length declared in a member's header. */
export function memberRawLength(member: Uint8Array): number {
  return new DataView(member.buffer, member.byteOffset, member.byteLength).getUint32(20, true);
}

function corrupt(detail: string): KeepError {
  return new KeepError("invalid", `Cannot read archive: corrupt gzip member (${detail})`);
}

/** True when `b` starts with Keep's member header (see the module doc). */
function hasKeepFraming(b: Uint8Array, s: number): boolean {
  return b[s] === 0x1f && b[s + 1] === 0x8b && b[s + 2] === 8 && b[s + 3] === 4 &&
    b[s + 10] === 12 && b[s + 11] === 0 && b[s + 12] === 0x4b && b[s + 13] === 0x50 &&
    b[s + 14] === 8 && b[s + 15] === 0;
}

/** Decodes and verifies one whole member (as cut by MemberSplitter). */
export function decodeMember(member: Uint8Array): Uint8Array {
  return decode(member, false);
}

let inflateScratch = new Uint8Array(64 << 10);

/**
 * decodeMember into a scratch buffer: the result is valid only until the
 * next decode, for callers that consume it at once (hash, copy, text decode).
 */
export function decodeMemberTransient(member: Uint8Array): Uint8Array {
  return decode(member, true);
}

function decode(member: Uint8Array, transient: boolean): Uint8Array {
  if (member.length < HEADER + TRAILER + 1 || !hasKeepFraming(member, 0)) {
    throw corrupt("not a Keep gzip member");
  }
  const v = new DataView(member.buffer, member.byteOffset, member.byteLength);
  if (v.getUint32(16, true) !== member.length) {
    throw corrupt(`${member.length} bytes, header says ${v.getUint32(16, true)}`);
  }
  const rawLen = v.getUint32(20, true);
  if (rawLen > MAX_MEMBER_RAW) throw corrupt(`declares ${rawLen} raw bytes`);
  const body = member.subarray(HEADER, member.length - TRAILER);
  let raw = decodeStored(body, rawLen, transient);
  if (!raw) {
    let out: Uint8Array;
    if (transient) {
      if (inflateScratch.length < rawLen + 1) inflateScratch = new Uint8Array(MAX_MEMBER_RAW + 1);
      out = inflateScratch;
    } else out = new Uint8Array(rawLen + 1);
    let left: number;
    try {
      left = inflateInto(body, rawLen, out);
    } catch (err) {
      throw corrupt(
        err instanceof RangeError ? "inflates past its declared size" : (err as Error).message,
      );
    }
    // zlib stops at the end of the deflate stream; anything after it would
    // be read by gzip as this member's trailer.
    if (left !== 0) throw corrupt(`${left} bytes after the deflate data`);
    raw = out.subarray(0, rawLen);
  }
  if (raw.length !== rawLen) throw corrupt(`length ${raw.length}, header says ${rawLen}`);
  if (v.getUint32(member.length - 4, true) !== (rawLen >>> 0)) throw corrupt("isize mismatch");
  if (v.getUint32(member.length - 8, true) !== zlib.crc32(raw)) throw corrupt("CRC mismatch");
  return raw;
}

/** Decodes a deflate stream made only of stored blocks; null if it has others. */
function decodeStored(body: Uint8Array, rawLen: number, transient: boolean): Uint8Array | null {
  if (body.length !== storedSize(rawLen) || (body[0] & 0x06) !== 0) return null;
  if (rawLen <= 65535 && body[0] === 1) {
    // One final stored block: the payload is a view, no copy.
    const n = body[1] | (body[2] << 8);
    const nn = body[3] | (body[4] << 8);
    return (n ^ 0xffff) === nn && n === rawLen ? body.subarray(5, 5 + n) : null;
  }
  // Into the scratch buffer for a transient decode: no buffer per member.
  if (transient && inflateScratch.length < rawLen + 1) {
    inflateScratch = new Uint8Array(MAX_MEMBER_RAW + 1);
  }
  const out = transient ? inflateScratch.subarray(0, rawLen) : new Uint8Array(rawLen);
  let i = 0;
  let o = 0;
  for (;;) {
    if (i + 5 > body.length) return null;
    const head = body[i];
    if ((head & 0x06) !== 0) return null;
    const n = body[i + 1] | (body[i + 2] << 8);
    const nn = body[i + 3] | (body[i + 4] << 8);
    if ((n ^ 0xffff) !== nn || i + 5 + n > body.length || o + n > rawLen) return null;
    out.set(body.subarray(i + 5, i + 5 + n), o);
    i += 5 + n;
    o += n;
    if (head & 1) break;
  }
  return i === body.length && o === rawLen ? out : null;
}

/**
 * Cuts a byte stream into whole members. Push chunks, then take members with
 * `next()` until it returns null; call `end()` when the input is done.
 */
export class MemberSplitter {
  #buf = new Uint8Array(1 << 16);
  #start = 0;
  #end = 0;
  /** Bytes consumed so far (offset of the next member). */
  offset = 0;
  #direct: Uint8Array | null = null;
  #dpos = 0;

  /**
   * Takes the next chunk. Call `next()` until it returns null before pushing
   * again. A chunk is held as is: members inside it are returned as views,
   * and only a member split across chunks is copied (into the carry buffer).
   */
  push(chunk: Uint8Array): void {
    if (this.#direct !== null) this.#carry();
    let i = 0;
    // First complete the member the carry buffer holds the start of.
    while (this.#end > this.#start && i < chunk.length) {
      const avail = this.#end - this.#start;
      const need = avail < HEADER ? HEADER - avail : this.#total(this.#buf, this.#start) - avail;
      if (need <= 0) break;
      const take = Math.min(need, chunk.length - i);
      this.#append(chunk.subarray(i, i + take));
      i += take;
    }
    if (i < chunk.length) {
      this.#direct = chunk;
      this.#dpos = i;
    }
  }

  #append(chunk: Uint8Array): void {
    const need = this.#end - this.#start + chunk.length;
    if (this.#end + chunk.length > this.#buf.length) {
      if (need > this.#buf.length) {
        const grown = new Uint8Array(Math.max(need, this.#buf.length * 2));
        grown.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = grown;
      } else {
        this.#buf.copyWithin(0, this.#start, this.#end);
      }
      this.#end -= this.#start;
      this.#start = 0;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /** Moves the unread rest of the held chunk into the carry buffer. */
  #carry(): void {
    const d = this.#direct!;
    this.#direct = null;
    if (this.#dpos < d.length) this.#append(d.subarray(this.#dpos));
  }

  /** Checks the member header at b[s..] and returns the member's total length. */
  #total(b: Uint8Array, s: number): number {
    if (b[s] !== 0x1f || b[s + 1] !== 0x8b || b[s + 2] !== 8) {
      throw new KeepError("invalid", `Cannot read archive: not gzip data at offset ${this.offset}`);
    }
    if (!hasKeepFraming(b, s)) {
      throw new KeepError(
        "invalid",
        `Cannot read archive: gzip member at offset ${this.offset} lacks Keep framing (not written by keep)`,
      );
    }
    const total = (b[s + 16] | (b[s + 17] << 8) | (b[s + 18] << 16) | (b[s + 19] << 24)) >>> 0;
    const raw = (b[s + 20] | (b[s + 21] << 8) | (b[s + 22] << 16) | (b[s + 23] << 24)) >>> 0;
    if (raw > MAX_MEMBER_RAW || total < HEADER + TRAILER + 1 || total > MAX_MEMBER_BYTES) {
      throw corrupt(`member at offset ${this.offset} declares ${total} bytes for ${raw}`);
    }
    return total;
  }

  /** True when the last member `next(true)` returned is a view of the carry buffer. */
  lastWasCarried = false;

  /**
   * The next whole member, or null when more input is needed. The bytes may
   * be a view into a pushed chunk: callers that keep them must not expect
   * them to be a fresh copy of their own (chunks are never reused here).
   * With `transient`, a member that was split across chunks is returned as
   * a view of the carry buffer (see `lastWasCarried`), valid only until the
   * next `push` or `next`: no copy for callers that consume it at once.
   */
  next(transient = false): Uint8Array | null {
    this.lastWasCarried = false;
    if (this.#end > this.#start) {
      // A member split across chunks, completed by push() (or not yet whole).
      const avail = this.#end - this.#start;
      if (avail < HEADER) return null;
      const total = this.#total(this.#buf, this.#start);
      if (avail < total) return null;
      this.lastWasCarried = transient;
      const member = transient
        ? this.#buf.subarray(this.#start, this.#start + total)
        : this.#buf.slice(this.#start, this.#start + total);
      this.#start += total;
      this.offset += total;
      if (this.#start === this.#end) this.#start = this.#end = 0;
      return member;
    }
    if (this.#direct !== null) {
      const d = this.#direct;
      const s = this.#dpos;
      if (d.length - s >= HEADER) {
        const total = this.#total(d, s);
        if (d.length - s >= total) {
          this.#dpos += total;
          this.offset += total;
          if (this.#dpos === d.length) this.#direct = null;
          return d.subarray(s, s + total);
        }
      }
      this.#carry(); // the rest is the start of a member: wait for more input
    }
    return null;
  }

  /** Throws if input ended inside a member. */
  end(): void {
    if (this.#direct !== null) this.#carry();
    if (this.#end !== this.#start) {
      throw new KeepError(
        "invalid",
        `Cannot read archive: truncated gzip stream at offset ${this.offset}`,
      );
    }
  }
}
