/**
 * Builds upload bodies (the tar.gz stream of `POST /v1/projects/:p/commits`)
 * from parts, following the layout src/client/upload.ts writes:
 *
 * - `.keep-commit.json`, a file entry with the pax comment `keep:1 control=commit`;
 * - the entries, in path order;
 * - `.keep-changes.ndjson`, a file entry with `keep:1 control=changes`;
 * - the end-of-archive blocks.
 *
 * Each entry's header blocks (preceded by the previous file's tar padding)
 * travel in their own Keep gzip member, file data in members of at most
 * 1 MiB raw. Every part is kept, labelled, in `Upload.parts`, so a test can
 * replace or damage any of them before `bytes()` joins them; the functions
 * below the builder make raw ustar blocks with hand-made checksums, pax
 * records with arbitrary bytes, hand-made members (wrong lengths, CRCs) and
 * plain gzip.
 *
 * @module
 */

import zlib from "node:zlib";
import { MAX_MEMBER_RAW } from "../src/format/gzip_member.ts";
import { encodeHeader, END_OF_ARCHIVE, padded, type TarHeader } from "../src/format/tar.ts";

export const BLOCK = 512;
/** A fixed time (ns) for crafted entries. */
export const T0 = 1_700_000_000_123_456_789n;

const encoder = new TextEncoder();

/** Bytes of a string (UTF-8) or the bytes themselves. */
export function bytesOf(v: string | Uint8Array): Uint8Array {
  return typeof v === "string" ? encoder.encode(v) : v;
}

/** Concatenates byte arrays. */
import { concatBytes as concat } from "../src/platform/concat_bytes.ts";
export { concat };

/** The commit header fields of an upload (see UploadHeader); `over` replaces or adds any. */
export function commitHeader(
  parent: string | null,
  over: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    format: 1,
    parent,
    message: "crafted",
    tags: {},
    host: "craft",
    source: "/craft",
    scanTime: String(T0),
    granularity: "1",
    ...over,
  };
}

/** One labelled piece of the wire stream. */
export interface Part {
  label: string;
  bytes: Uint8Array;
}

/** Options of a crafted entry: anything of TarHeader, plus the size the header declares. */
export type EntryOptions = Partial<TarHeader>;

/**
 * An upload under construction. Methods append parts and return `this`.
 *
 * @example
 * ```ts
 * const body = new Upload().commit(commitHeader(head)).dir("d").file("d/a", "x")
 *   .changes([{ op: "del", p: "old" }]).end().bytes();
 * ```
 */
export class Upload {
  readonly parts: Part[] = [];
  /** Zero bytes owed after the last file's data (sent in the next header's member). */
  pad = 0;
  /** Deflate level of crafted members (0 = stored). */
  level: number;

  constructor(level = 1) {
    this.level = level;
  }

  /** Appends bytes to the wire as they are (no gzip framing). */
  wire(bytes: Uint8Array, label = "wire"): this {
    this.parts.push({ label, bytes });
    return this;
  }

  /** Appends `raw` archive bytes as one Keep member (the owed padding is not added). */
  member(raw: Uint8Array, label = "member", level = this.level): this {
    return this.wire(frameMember(raw, level), label);
  }

  /**
   * Appends header blocks in their own member, after the padding owed (in
   * several members when they exceed the 1 MiB a member may hold).
   */
  headerBlocks(blocks: Uint8Array, label = "header"): this {
    const raw = concat([new Uint8Array(this.pad), blocks]);
    this.pad = 0;
    if (raw.length <= MAX_MEMBER_RAW) return this.member(raw, label);
    for (let i = 0, k = 0; i < raw.length; i += MAX_MEMBER_RAW, k++) {
      this.member(raw.subarray(i, i + MAX_MEMBER_RAW), `${label}${k}`);
    }
    return this;
  }

  /**
   * Appends file data as members of at most 1 MiB raw. The padding owed
   * afterwards follows `padFor` (default: the bytes sent).
   */
  data(data: Uint8Array, label = "data", padFor = data.length): this {
    for (let i = 0, k = 0; i < data.length; i += MAX_MEMBER_RAW, k++) {
      this.member(data.subarray(i, i + MAX_MEMBER_RAW), `${label}${k}`);
    }
    this.pad = padded(padFor) - padFor;
    return this;
  }

  /** Appends an entry encoded by the real encoder, and its data when given. */
  entry(h: TarHeader, data?: Uint8Array): this {
    this.headerBlocks(encodeHeader(h), `entry:${h.path}:header`);
    if (data !== undefined) this.data(data, `entry:${h.path}:data`);
    return this;
  }

  /** A regular file; `opts.size` may make the header disagree with the data. */
  file(path: string, content: string | Uint8Array, opts: EntryOptions = {}): this {
    const data = bytesOf(content);
    return this.entry(
      { path, type: "file", size: data.length, mode: 0o644, mtime: T0, ctime: T0, ...opts },
      data,
    );
  }

  dir(path: string, opts: EntryOptions = {}): this {
    return this.entry({ path, type: "dir", size: 0, mode: 0o755, mtime: T0, ctime: T0, ...opts });
  }

  symlink(path: string, target: string, opts: EntryOptions = {}): this {
    return this.entry({
      path,
      type: "symlink",
      size: 0,
      mode: 0o777,
      mtime: T0,
      ctime: T0,
      linkname: target,
      ...opts,
    });
  }

  /** Hand-made header blocks (e.g. from ustarBlock/paxEntry), then optional data. */
  raw(blocks: Uint8Array, data?: Uint8Array, label = "raw"): this {
    this.headerBlocks(blocks, `${label}:header`);
    if (data !== undefined) this.data(data, `${label}:data`);
    return this;
  }

  /** A control entry as src/client/upload.ts writes it. */
  control(name: string, kind: string, body: Uint8Array, label = kind): this {
    this.headerBlocks(
      encodeHeader({
        path: name,
        type: "file",
        size: body.length,
        mode: 0o644,
        mtime: T0 / 1_000_000_000n * 1_000_000_000n,
        keep: { control: kind },
      }),
      `${label}:header`,
    );
    if (body.length) this.data(body, `${label}:data`);
    else this.pad = 0;
    return this;
  }

  /** The commit header entry: an object (JSON-encoded), or text/bytes sent as they are. */
  commit(header: Record<string, unknown> | string | Uint8Array): this {
    const body = header instanceof Uint8Array || typeof header === "string"
      ? bytesOf(header)
      : encoder.encode(JSON.stringify(header));
    return this.control(".keep-commit.json", "commit", body);
  }

  /** The change list: objects become JSON lines, strings are sent as given lines. */
  changes(records: (Record<string, unknown> | string)[] = []): this {
    const text = records.map((r) => (typeof r === "string" ? r : JSON.stringify(r)) + "\n").join(
      "",
    );
    return this.control(".keep-changes.ndjson", "changes", encoder.encode(text));
  }

  /** The padding owed and the two zero blocks, in one member. */
  end(): this {
    const tail = new Uint8Array(this.pad + END_OF_ARCHIVE.length);
    this.pad = 0;
    return this.member(tail, "end");
  }

  /** Index of the first part whose label is `label` (throws when there is none). */
  index(label: string): number {
    const i = this.parts.findIndex((p) => p.label === label);
    if (i < 0) throw new Error(`craft: no part ${label} in ${this.parts.map((p) => p.label)}`);
    return i;
  }

  /** Replaces the bytes of the part labelled `label`. */
  replace(label: string, f: (bytes: Uint8Array) => Uint8Array): this {
    const i = this.index(label);
    this.parts[i] = { label, bytes: f(this.parts[i].bytes) };
    return this;
  }

  /** The whole body. */
  bytes(): Uint8Array {
    return concat(this.parts.map((p) => p.bytes));
  }
}

/** A JSON change-record entry for `meta` (manifest short keys). */
export function metaRecord(e: {
  p: string;
  t?: "f" | "d" | "l";
  s?: number;
  m?: number;
  h?: string;
  l?: string;
}): Record<string, unknown> {
  return {
    op: "meta",
    e: { t: "f", s: 0, m: 0o644, mt: String(T0), ct: String(T0), ...e },
  };
}

// ---- raw tar blocks -------------------------------------------------------

/** Fields of a hand-made ustar block; strings are written as their bytes, numbers as octal. */
export interface UstarFields {
  name?: string | Uint8Array;
  mode?: number;
  size?: number | string;
  mtime?: number;
  typeflag?: string;
  linkname?: string | Uint8Array;
  prefix?: string | Uint8Array;
  /** ustar magic "ustar\0" "00" (default true). */
  magic?: boolean;
  /** "auto" (correct), a number (written as octal, possibly wrong), or raw field bytes. */
  checksum?: "auto" | number | Uint8Array;
}

function octal(b: Uint8Array, off: number, width: number, v: number | string): void {
  const s = typeof v === "string" ? v : v.toString(8).padStart(width - 1, "0");
  b.set(encoder.encode(s).subarray(0, width), off);
}

/** Sum of a header block with the checksum field counted as spaces. */
export function tarChecksum(block: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i];
  return sum;
}

/** Writes `value` (default: the correct sum) into the checksum field of a copy of `block`. */
export function withChecksum(block: Uint8Array, value = tarChecksum(block)): Uint8Array {
  const b = block.slice();
  b.fill(0x20, 148, 156);
  octal(b, 148, 7, value);
  b[154] = 0;
  b[155] = 0x20;
  return b;
}

/** One 512-byte ustar header made field by field. */
export function ustarBlock(f: UstarFields): Uint8Array {
  const b = new Uint8Array(BLOCK);
  b.set(bytesOf(f.name ?? "file").subarray(0, 100), 0);
  octal(b, 100, 8, f.mode ?? 0o644);
  octal(b, 108, 8, 0);
  octal(b, 116, 8, 0);
  octal(b, 124, 12, f.size ?? 0);
  octal(b, 136, 12, f.mtime ?? Number(T0 / 1_000_000_000n));
  b[156] = (f.typeflag ?? "0").charCodeAt(0);
  b.set(bytesOf(f.linkname ?? "").subarray(0, 100), 157);
  if (f.magic ?? true) b.set([0x75, 0x73, 0x74, 0x61, 0x72, 0, 0x30, 0x30], 257);
  if (f.prefix !== undefined) b.set(bytesOf(f.prefix).subarray(0, 155), 345);
  const ck = f.checksum ?? "auto";
  if (ck instanceof Uint8Array) {
    b.fill(0, 148, 156);
    b.set(ck.subarray(0, 8), 148);
    return b;
  }
  return withChecksum(b, ck === "auto" ? undefined : ck);
}

/** One pax record `LEN key=value\n`, value taken as raw bytes (NUL allowed). */
export function paxRecord(key: string, value: string | Uint8Array): Uint8Array {
  const body = concat([encoder.encode(` ${key}=`), bytesOf(value), encoder.encode("\n")]);
  let len = body.length + String(body.length).length;
  if (String(len).length + body.length !== len) len = body.length + String(len).length;
  return concat([encoder.encode(String(len)), body]);
}

/**
 * An extended header entry (typeflag `x`, `g`, `L` or `K`): its ustar block
 * and payload padded to blocks. `declared` overrides the size in the block.
 */
export function extHeader(
  payload: Uint8Array,
  typeflag = "x",
  declared = payload.length,
): Uint8Array {
  const head = ustarBlock({ name: "PaxHeaders/crafted", typeflag, size: declared });
  const body = new Uint8Array(padded(payload.length));
  body.set(payload);
  return concat([head, body]);
}

// ---- members and gzip -----------------------------------------------------

/**
 * A hand-made Keep member: the 24-byte header (KP field with `total` and
 * `rawLen`), `body` (a raw deflate stream), CRC32 and ISIZE. Every length and
 * check can be set wrong on purpose.
 */
export function handMember(opts: {
  body: Uint8Array;
  rawLen: number;
  crc?: number;
  isize?: number;
  total?: number;
}): Uint8Array {
  const out = new Uint8Array(24 + opts.body.length + 8);
  out.set([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 12, 0, 0x4b, 0x50, 8, 0]);
  const v = new DataView(out.buffer);
  v.setUint32(16, opts.total ?? out.length, true);
  v.setUint32(20, opts.rawLen, true);
  out.set(opts.body, 24);
  v.setUint32(out.length - 8, opts.crc ?? 0, true);
  v.setUint32(out.length - 4, opts.isize ?? opts.rawLen, true);
  return out;
}

/**
 * `raw` as a Keep member, deflated by a fresh one-shot node:zlib stream (not
 * Keep's own encoder, so crafted uploads do not depend on the code under test).
 */
export function frameMember(raw: Uint8Array, level = 1): Uint8Array {
  const stored = storedBlocks(raw);
  const body = level === 0 ? stored : deflateRaw(raw, level);
  // As Keep's writers do: never longer than stored blocks (the server's bound).
  const best = body.length < stored.length ? body : stored;
  return handMember({ body: best, rawLen: raw.length, crc: crc32(raw) });
}

/** `raw` as deflate stored blocks of up to 65,535 bytes each. */
export function storedBlocks(raw: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  let i = 0;
  do {
    const n = Math.min(65535, raw.length - i);
    const last = i + n >= raw.length ? 1 : 0;
    parts.push(new Uint8Array([last, n & 0xff, n >> 8, ~n & 0xff, (~n >> 8) & 0xff]));
    parts.push(raw.subarray(i, i + n));
    i += n;
  } while (i < raw.length);
  return concat(parts);
}

/** Raw deflate of `raw`. */
export function deflateRaw(raw: Uint8Array, level = 9): Uint8Array {
  return new Uint8Array(zlib.deflateRawSync(raw, { level }));
}

/** Ordinary gzip (one member, no Keep framing). */
export function plainGzip(raw: Uint8Array): Uint8Array {
  return new Uint8Array(zlib.gzipSync(raw));
}

/** CRC32 of `raw`. */
export function crc32(raw: Uint8Array): number {
  return zlib.crc32(raw);
}

/** Decodes a Keep member stream (concatenated members) back to raw tar bytes. */
export function gunzip(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(zlib.gunzipSync(bytes));
}

/** A copy of `bytes` with the byte at `offset` (negative: from the end) XORed with `mask`. */
export function flip(bytes: Uint8Array, offset: number, mask = 0xff): Uint8Array {
  const b = bytes.slice();
  const i = offset < 0 ? b.length + offset : offset;
  b[i] ^= mask;
  return b;
}

/** Bytes that deflate poorly (so members stay about their raw size), deterministic. */
export function noise(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Printable text that deflates poorly (for pax values), deterministic. */
export function noiseText(n: number, seed = 1): string {
  const raw = noise(n, seed);
  let s = "";
  for (let i = 0; i < n; i++) s += String.fromCharCode(0x61 + (raw[i] % 26));
  return s;
}

/**
 * The same archive cut into members at other places: every `size` raw bytes
 * (the last may be shorter), so members straddle tar headers and
 * file data and the server must re-encode the data it keeps.
 */
export function rechunk(body: Uint8Array, size: number, level = 1): Uint8Array {
  const raw = gunzip(body);
  const out: Uint8Array[] = [];
  for (let i = 0; i < raw.length; i += size) {
    out.push(frameMember(raw.subarray(i, Math.min(raw.length, i + size)), level));
  }
  return concat(out);
}
