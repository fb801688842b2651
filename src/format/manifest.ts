/**
 * The manifest: what a commit holds, one entry per path, sorted in UTF-8
 * byte order. On the wire it is NDJSON (gzip'd): a first line
 * `{"commit": CommitInfo | null}`, then one entry per line with short keys
 * (`p` path, `t` type f/d/l, `s` size, `m` mode, `mt`/`ct` mtime/ctime in ns
 * as decimal strings, `h` SHA-256 hex, `x` xxHash64 of head+tail+size hex,
 * `l` symlink target, `fl` flags). Everything here validates what it reads.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import { CDC_SIZES } from "./fastcdc.ts";
import { pathProblem } from "./paths.ts";

/** Entry type: regular file, directory, symlink. */
export type EntryType = "f" | "d" | "l";

/** A tar entry's or a file's kind, as an entry type (`file` → `f`, `dir` → `d`, `symlink` → `l`). */
export function entryTypeOf(kind: "file" | "dir" | "symlink"): EntryType {
  return kind === "file" ? "f" : kind === "dir" ? "d" : "l";
}

/** An entry type as the tar entry kind it is written as (the reverse of entryTypeOf). */
export function tarTypeOf(type: EntryType): "file" | "dir" | "symlink" {
  return type === "f" ? "file" : type === "d" ? "dir" : "symlink";
}

/**
 * Why an entry is marked: `unreadable` and `unsettled` (set by a backup) mean
 * its last good version was kept instead of a new one; `damaged` (set by the
 * server) means the stored content failed a check, so the next backup sends
 * the file whole and its upload repairs the blob.
 */
export type EntryFlag = "unreadable" | "unsettled" | "damaged";

/** One path of a commit. */
export interface Entry {
  path: string;
  type: EntryType;
  /** Bytes of content (files), 0 otherwise. */
  size: number;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  /** Modification time, ns since the epoch. */
  mtime: bigint;
  /** Status change time, ns since the epoch (client side; not restorable). */
  ctime: bigint;
  /** SHA-256 of the content, hex (files; computed by the server). */
  hash?: string;
  /** xxHash64 of head 4 KiB + tail 4 KiB + size, hex (files). */
  xxh?: string;
  /** Symlink target. */
  target?: string;
  /** Set when this version was kept because the file could not be read. */
  flag?: EntryFlag;
}

/** Counts and sizes recorded with a commit. */
export interface CommitCounts {
  files: number;
  dirs: number;
  symlinks: number;
  /** Sum of file sizes in the commit. */
  bytes: number;
  added: number;
  changed: number;
  deleted: number;
  /** Entries whose metadata alone changed (content kept). */
  metadata: number;
  unchanged: number;
  /** Entries kept from the parent because they could not be read or settle. */
  flagged: number;
}

/** What the server measured while receiving a commit. */
export interface CommitStats {
  /** File entries that carried content. */
  filesReceived: number;
  /** Uncompressed content bytes received. */
  bytesReceived: number;
  /** Bytes of the request body (compressed archive). */
  wireBytes: number;
  newBlobs: number;
  /** Bytes added to the blob store (as stored, compressed). */
  newBlobBytes: number;
  seconds: number;
}

/** A commit as the server reports it. */
export interface CommitInfo {
  id: string;
  project: string;
  seq: number;
  parent: string | null;
  /** ISO 8601, server clock. */
  time: string;
  message: string;
  tags: Record<string, string>;
  host: string;
  source: string;
  /** When the client's scan started (ns, client clock): the racily-clean boundary. */
  scanTime: string;
  /** Client-detected mtime granularity in ns (1 for ns-exact filesystems). */
  granularity: string;
  counts: CommitCounts;
  stats: CommitStats;
}

/** First entry of an upload: who sends what on top of which parent. */
export interface UploadHeader {
  format: 1;
  parent: string | null;
  message: string;
  tags: Record<string, string>;
  host: string;
  source: string;
  scanTime: string;
  granularity: string;
  /** Raw bytes of the files the upload sends, for the quota check (optional). */
  bytes?: number;
}

/**
 * Records of the last entry of an upload (NDJSON): changes that carry no
 * content. `del` removes a path; `meta` re-records a file's metadata with
 * content the parent already had (hash given); `keep` keeps the parent's
 * version of a path that could not be read, flagged; `drop` withdraws a file
 * entry sent earlier in this upload (it changed while being read); `have`
 * records a file whose content the store holds without sending it, with a
 * proof of possession under the negotiation's key `n` (format/possession.ts);
 * with `c`, a big file assembled from chunks (SHA-256 hex, in order), each
 * one the store holds or this upload sent as a `chunk` control entry; its
 * hash (the server computes it) and its proof are then optional: without a
 * proof every chunk must be the project's own or sent.
 */
export type ChangeRecord =
  | { op: "del"; p: string }
  | { op: "meta"; e: Entry }
  | { op: "have"; e: Entry; n: string; proof: string; c?: string[] }
  | { op: "have"; e: Entry; c: string[]; n?: undefined; proof?: undefined }
  | { op: "keep"; p: string; flag: EntryFlag; reason: string }
  | { op: "drop"; p: string; reason: string };

const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

const DECIMAL = /^-?[0-9]{1,19}$/;

/** True for a decimal ns time that fits the signed 64-bit INTEGER it is stored as. */
function isNs(v: unknown): v is string {
  if (typeof v !== "string" || !DECIMAL.test(v)) return false;
  if (v.length < 19) return true; // |n| < 10^18 < 2^63: no BigInt needed
  const n = BigInt(v);
  return n >= I64_MIN && n <= I64_MAX;
}

/** True for `len` lower-case hex digits (a loop: faster than a regex on hot paths). */
function isHex(v: unknown, len: number): v is string {
  if (typeof v !== "string" || v.length !== len) return false;
  for (let i = 0; i < len; i++) {
    const c = v.charCodeAt(i);
    if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false;
  }
  return true;
}

function bad(what: string): KeepError {
  return new KeepError("invalid", `Cannot read manifest: ${what}`);
}

/** Encodes an entry as one NDJSON line (without newline). Same bytes as JSON.stringify, built by hand (hot path). */
export function entryToJson(e: Entry): string {
  return entryLine(e, true);
}

/** The entry's line in the stat form of a manifest: without `h` and `x`. */
export function entryToStatJson(e: Entry): string {
  return entryLine(e, false);
}

function entryLine(e: Entry, hashes: boolean): string {
  let line = `{"p":${
    JSON.stringify(e.path)
  },"t":"${e.type}","s":${e.size},"m":${e.mode},"mt":"${e.mtime}","ct":"${e.ctime}"`;
  if (hashes && e.hash !== undefined) line += `,"h":"${e.hash}"`;
  if (hashes && e.xxh !== undefined) line += `,"x":"${e.xxh}"`;
  if (e.target !== undefined) line += `,"l":${JSON.stringify(e.target)}`;
  if (e.flag !== undefined) line += `,"fl":"${e.flag}"`;
  return line + "}";
}

/** Validates and converts a parsed NDJSON object into an Entry. */
export function entryFromJson(o: unknown): Entry {
  if (typeof o !== "object" || o === null) throw bad("entry is not an object");
  const r = o as Record<string, unknown>;
  const { p, t, s, m, mt, ct, h, x, l, fl } = r;
  if (typeof p !== "string") throw bad("entry without a path");
  const problem = pathProblem(p);
  if (problem) throw bad(`${JSON.stringify(p)}: ${problem}`);
  if (t !== "f" && t !== "d" && t !== "l") throw bad(`${p}: unknown type ${JSON.stringify(t)}`);
  if (typeof s !== "number" || !Number.isSafeInteger(s) || s < 0) throw bad(`${p}: bad size`);
  if (typeof m !== "number" || !Number.isInteger(m) || m < 0 || m > 0o7777) {
    throw bad(`${p}: bad mode`);
  }
  if (!isNs(mt)) throw bad(`${p}: bad mtime`);
  if (!isNs(ct)) throw bad(`${p}: bad ctime`);
  const e: Entry = { path: p, type: t, size: s, mode: m, mtime: BigInt(mt), ctime: BigInt(ct) };
  if (h !== undefined) {
    if (!isHex(h, 64)) throw bad(`${p}: bad hash`);
    e.hash = h;
  }
  if (x !== undefined) {
    if (!isHex(x, 16)) throw bad(`${p}: bad partial hash`);
    e.xxh = x;
  }
  if (l !== undefined) {
    if (typeof l !== "string" || l.length === 0 || l.includes("\0")) {
      throw bad(`${p}: bad symlink target`);
    }
    e.target = l;
  }
  if (fl !== undefined) {
    if (fl !== "unreadable" && fl !== "unsettled" && fl !== "damaged") {
      throw bad(`${p}: unknown flag`);
    }
    e.flag = fl;
  }
  if (t === "l" && e.target === undefined) throw bad(`${p}: symlink without target`);
  if (t !== "l" && e.target !== undefined) throw bad(`${p}: symlink target on a non-symlink`);
  if (t !== "f" && s !== 0) throw bad(`${p}: size on a non-file`);
  return e;
}

/** Decodes and validates NDJSON manifest lines (one JSON.parse for all: much cheaper). */
export function entriesFromLines(lines: string[]): Entry[] {
  let parsed: unknown[];
  try {
    parsed = JSON.parse(lines.length === 1 ? `[${lines[0]}]` : `[${lines.join(",")}]`);
  } catch {
    throw bad("the server sent a line that is not JSON");
  }
  if (parsed.length !== lines.length) throw bad("the server sent a line that is not one entry");
  const out: Entry[] = new Array(parsed.length);
  for (let i = 0; i < parsed.length; i++) out[i] = entryFromJson(parsed[i]);
  return out;
}

/** Parses the upload's first control entry. */
export function parseUploadHeader(text: string): UploadHeader {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    throw new KeepError("invalid", "Cannot read upload: commit header is not JSON");
  }
  const r = o as Record<string, unknown>;
  const str = (k: string, max = 4096): string => {
    const v = r[k];
    if (typeof v !== "string" || v.length > max) {
      throw new KeepError(
        "invalid",
        `Cannot read upload: commit header field ${k} is missing or too long`,
      );
    }
    return v;
  };
  if (typeof o !== "object" || o === null || r.format !== 1) {
    throw new KeepError("invalid", "Cannot read upload: unknown commit header format");
  }
  const parent = r.parent === null ? null : str("parent", 64);
  const tags = r.tags ?? {};
  if (typeof tags !== "object" || tags === null || Array.isArray(tags)) {
    throw new KeepError("invalid", "Cannot read upload: tags must be an object");
  }
  const tagOut: Record<string, string> = {};
  for (const [k, v] of Object.entries(tags)) {
    if (typeof v !== "string" || k.length > 256 || v.length > 4096) {
      throw new KeepError("invalid", "Cannot read upload: tags must map short strings to strings");
    }
    tagOut[k] = v;
  }
  const scanTime = str("scanTime", 24);
  const granularity = str("granularity", 24);
  if (!isNs(scanTime) || !isNs(granularity)) {
    throw new KeepError(
      "invalid",
      "Cannot read upload: scanTime and granularity must be ns integers",
    );
  }
  if (r.bytes !== undefined && !(Number.isSafeInteger(r.bytes) && (r.bytes as number) >= 0)) {
    throw new KeepError("invalid", "Cannot read upload: bytes must be a whole number of bytes");
  }
  return {
    format: 1,
    parent,
    ...(r.bytes !== undefined ? { bytes: r.bytes as number } : {}),
    message: str("message", 65536),
    tags: tagOut,
    host: str("host", 1024),
    source: str("source"),
    scanTime,
    granularity,
  };
}

/** Parses one NDJSON change record from the upload's last control entry. */
export function parseChangeRecord(line: string): ChangeRecord {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line);
  } catch {
    throw new KeepError("invalid", "Cannot read upload: change record is not JSON");
  }
  const path = (v: unknown): string => {
    if (typeof v !== "string") {
      throw new KeepError("invalid", "Cannot read upload: change record without path");
    }
    const problem = pathProblem(v);
    if (problem) {
      throw new KeepError("invalid", `Cannot read upload: ${JSON.stringify(v)}: ${problem}`);
    }
    return v;
  };
  const reason = (v: unknown): string => (typeof v === "string" ? v.slice(0, 1024) : "");
  switch (o?.op) {
    case "del":
      return { op: "del", p: path(o.p) };
    case "meta": {
      const e = entryFromJson(o.e);
      if (e.type === "f" && e.hash === undefined) {
        throw new KeepError(
          "invalid",
          `Cannot read upload: metadata record for ${e.path} without hash`,
        );
      }
      return { op: "meta", e };
    }
    case "have": {
      const e = entryFromJson(o.e);
      const chunked = o.c !== undefined;
      if (e.type !== "f" || (e.hash === undefined && !chunked) || e.size === 0) {
        throw new KeepError(
          "invalid",
          `Cannot read upload: have record for ${e.path} is not a non-empty file with a hash`,
        );
      }
      // A file named by its chunks may go without a proof: then every chunk
      // is one its project has, or one this upload sent (checked at the end).
      const proven = o.n !== undefined || o.proof !== undefined || !chunked;
      if (
        proven && (typeof o.n !== "string" || o.n.length > 128 ||
          typeof o.proof !== "string" || !/^[0-9a-f]{32}$/.test(o.proof))
      ) {
        throw new KeepError(
          "invalid",
          `Cannot read upload: have record for ${e.path} without a nonce and proof`,
        );
      }
      if (!chunked) return { op: "have", e, n: o.n as string, proof: o.proof as string };
      // Every chunk but the last is at least the chunker's min (fastcdc.ts),
      // and the record fits in a line of the change list.
      const most = Math.min(Math.ceil(e.size / CDC_SIZES.min), HAVE_CHUNKS_MAX);
      if (
        !Array.isArray(o.c) || o.c.length === 0 || o.c.length > most ||
        !o.c.every((h: unknown) => typeof h === "string" && /^[0-9a-f]{64}$/.test(h))
      ) {
        throw new KeepError(
          "invalid",
          `Cannot read upload: have record for ${e.path} names its chunks wrongly (1 to ${most} SHA-256 hex)`,
        );
      }
      return proven
        ? { op: "have", e, n: o.n as string, proof: o.proof as string, c: o.c }
        : { op: "have", e, c: o.c };
    }
    case "keep": {
      if (o.flag !== "unreadable" && o.flag !== "unsettled") {
        throw new KeepError("invalid", "Cannot read upload: keep record with unknown flag");
      }
      return { op: "keep", p: path(o.p), flag: o.flag, reason: reason(o.reason) };
    }
    case "drop":
      return { op: "drop", p: path(o.p), reason: reason(o.reason) };
    default:
      throw new KeepError("invalid", "Cannot read upload: unknown change record");
  }
}

/**
 * Longest line of an upload's change list (bytes): a `have` record lists the
 * chunks of a big file, 67 bytes each (64 hex, quotes, comma).
 */
export const CHANGE_LINE_MAX = 16 << 20;

/**
 * Most chunks one `have` record may list, so that with the longest path
 * (every byte escaped) and a nonce it stays under CHANGE_LINE_MAX: about
 * 250,000, a file of ~125 GB at the chunker's average. A file with more
 * chunks is sent whole (client/backup.ts).
 */
export const HAVE_CHUNKS_MAX = Math.floor((CHANGE_LINE_MAX - (64 << 10)) / 67);

/**
 * Most chunks the `have` records of one upload may list in all (~1,000,000,
 * ~500 GB of big files at the chunker's average): the server holds every
 * list until the upload ends (32 bytes a chunk). Past it the client sends
 * big files whole.
 */
export const UPLOAD_CHUNKS_MAX = 4 * HAVE_CHUNKS_MAX;

/** Serialises a change record as one NDJSON line (without newline). */
export function changeRecordToJson(r: ChangeRecord): string {
  if (r.op === "meta") return `{"op":"meta","e":${entryToJson(r.e)}}`;
  if (r.op === "have") {
    const c = r.c ? `,"c":${JSON.stringify(r.c)}` : "";
    const proof = r.n !== undefined ? `,"n":${JSON.stringify(r.n)},"proof":"${r.proof}"` : "";
    return `{"op":"have","e":${entryToJson(r.e)}${proof}${c}}`;
  }
  return JSON.stringify(r);
}

/**
 * Splits a byte stream into chunks of whole `\n`-terminated lines, copied
 * (input buffers may be reused): what the diff compares without decoding.
 * The tail after the last newline waits for the next push.
 */
export class LineChunker {
  #carry: Uint8Array = new Uint8Array(0);
  constructor(readonly maxLine = 1 << 20) {}

  /** The whole lines completed by `chunk` (null: none yet). */
  push(chunk: Uint8Array): Uint8Array | null {
    const last = chunk.lastIndexOf(10);
    if (last < 0) {
      this.#carry = concatBytes([this.#carry, chunk]);
      this.#check(this.#carry.length);
      return null;
    }
    const whole = this.#carry.length
      ? concatBytes([this.#carry, chunk.subarray(0, last + 1)])
      : chunk.slice(0, last + 1);
    this.#carry = chunk.slice(last + 1);
    this.#check(this.#carry.length);
    return whole;
  }

  /** The last, unterminated line (null: none). */
  end(): Uint8Array | null {
    const rest = this.#carry;
    this.#carry = new Uint8Array(0);
    return rest.length ? rest : null;
  }

  #check(n: number): void {
    if (n > this.maxLine) throw new KeepError("too_large", "Cannot read manifest: line too long");
  }
}

/** Splits a stream of text chunks into lines, with a bound on line length. */
export class LineSplitter {
  #rest = "";
  #decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  /** `what` names the text in errors ("manifest", "upload's change list"). */
  constructor(readonly maxLine = 1 << 20, readonly what = "manifest") {}

  /** Lines completed by this chunk. */
  push(chunk: Uint8Array): string[] {
    const text = this.#decode(chunk, true);
    if (!text.includes("\n")) {
      // Only the last line grew: no need to split what came before.
      this.#rest += text;
      this.#checkLength(this.#rest);
      return [];
    }
    const lines = (this.#rest + text).split("\n");
    this.#rest = lines.pop()!;
    this.#checkLength(this.#rest);
    const out: string[] = [];
    for (const l of lines) {
      this.#checkLength(l);
      if (l !== "") out.push(l);
    }
    return out;
  }

  /** The last unterminated line, if any. Throws if the input ended inside a character. */
  end(): string[] {
    const rest = this.#rest + this.#decode(new Uint8Array(0), false);
    this.#rest = "";
    this.#checkLength(rest);
    return rest === "" ? [] : [rest];
  }

  #decode(chunk: Uint8Array, stream: boolean): string {
    try {
      return this.#decoder.decode(chunk, { stream });
    } catch {
      throw new KeepError("invalid", `Cannot read ${this.what}: not valid UTF-8`);
    }
  }

  #checkLength(line: string): void {
    if (line.length > this.maxLine) {
      throw new KeepError(
        "too_large",
        this.what === "manifest"
          ? "Cannot read manifest: line too long"
          : `Cannot read ${this.what}: a record is longer than ${this.maxLine} bytes`,
      );
    }
  }
}
