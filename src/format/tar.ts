/**
 * A POSIX (pax) tar codec, just the part Keep needs: regular files,
 * directories and symlinks, with pax records for long or UTF-8 names,
 * sizes of 8 GiB and more, and nanosecond `mtime`/`ctime`. Keep's own fields
 * (content hash, partial hash, flags) ride in the standard `comment` record,
 * which GNU tar and bsdtar ignore silently.
 *
 * `encodeHeader` returns the header blocks of one entry; `TarParser` is an
 * incremental decoder that checks every header (checksum, type, name, size)
 * and hands entries and data to a sink.
 *
 * @module
 */

import { KeepError } from "../errors.ts";

/** One tar entry's metadata; times in ns since the epoch. */
export interface TarHeader {
  path: string;
  type: "file" | "dir" | "symlink";
  size: number;
  mode: number;
  mtime: bigint;
  ctime?: bigint;
  linkname?: string;
  /** Keep's own key=value fields, carried in the pax `comment` record. */
  keep?: Record<string, string>;
}

const BLOCK = 512;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
/** Largest pax/GNU long-name payload accepted. */
export const MAX_EXT_HEADER = 64 * 1024;
const MAX_OCTAL_SIZE = 0o77777777777; // 11 octal digits

/** Rounds n up to a whole number of 512-byte blocks. */
export function padded(n: number): number {
  return Math.ceil(n / BLOCK) * BLOCK;
}

/** Times in ns as pax writes them: decimal seconds, "-" for times before 1970. */
function nsText(t: bigint): string {
  const sign = t < 0n ? "-" : "";
  if (t < 0n) t = -t;
  const s = t / 1_000_000_000n;
  const f = t % 1_000_000_000n;
  return f === 0n ? `${sign}${s}` : `${sign}${s}.${f.toString().padStart(9, "0")}`;
}

/** Largest time the 12-byte ustar field holds, in ns. */
const MAX_OCTAL_TIME_NS = BigInt(MAX_OCTAL_SIZE) * 1_000_000_000n;
/** Times are ns in a signed 64-bit integer (as SQLite stores them). */
const MAX_NS = (1n << 63n) - 1n;

/** Octal digits of `value`, zero-padded to width - 1, then NUL (written into b at off). */
function writeOctal(b: Uint8Array, off: number, width: number, value: number): void {
  let v = value;
  let i = off + width - 2;
  for (; i >= off && v > 0x3fffffff; i--) { // past 30 bits: float arithmetic
    b[i] = 0x30 + (v % 8);
    v = Math.floor(v / 8);
  }
  for (; i >= off; i--) {
    b[i] = 0x30 + (v & 7);
    v >>>= 3;
  }
  b[off + width - 1] = 0;
}

/**
 * A string headed for a header: its UTF-8 length, and whether it is
 * printable ASCII (then written char by char, with no encoder call).
 */
interface Text {
  s: string;
  ascii: boolean;
  bytes: Uint8Array | null;
  length: number;
}

function text(s: string): Text {
  if (isAscii(s)) return { s, ascii: true, bytes: null, length: s.length };
  const bytes = encoder.encode(s);
  return { s, ascii: false, bytes, length: bytes.length };
}

/** Writes `t`'s UTF-8 bytes [from, from + n) at b[off]. */
function writeText(b: Uint8Array, off: number, t: Text, from: number, n: number): void {
  if (t.ascii) { for (let i = 0; i < n; i++) b[off + i] = t.s.charCodeAt(from + i); }
  else b.set(t.bytes!.subarray(from, from + n), off);
}

/** A name or link field: the first 100 bytes, or the last 100 when longer (pax holds it whole). */
function writeNameField(b: Uint8Array, off: number, t: Text): void {
  if (t.length > 100) writeText(b, off, t, t.length - 100, 100);
  else writeText(b, off, t, 0, t.length);
}

/** One pax record "LEN key=value\n" for a value of `valueBytes` UTF-8 bytes. */
function paxRecord(key: string, value: string, valueBytes: number): string {
  const bodyLen = key.length + valueBytes + 3; // " " key "=" value "\n"
  let len = bodyLen + String(bodyLen).length;
  if (String(len).length + bodyLen !== len) len = bodyLen + String(len).length;
  return `${len} ${key}=${value}\n`;
}

const USTAR_MAGIC = [0x75, 0x73, 0x74, 0x61, 0x72, 0, 0x30, 0x30]; // "ustar\0" "00"

/** Writes a ustar header block at b[off] (b is zero-filled there). */
function ustarInto(
  b: Uint8Array,
  off: number,
  name: Text,
  h: TarHeader,
  mode: number,
  linkname: Text | null,
  typeflag: number,
  size: number,
): void {
  writeNameField(b, off, name);
  writeOctal(b, off + 100, 8, mode & 0o7777);
  writeOctal(b, off + 108, 8, 0);
  writeOctal(b, off + 116, 8, 0);
  writeOctal(b, off + 124, 12, size > MAX_OCTAL_SIZE ? 0 : size);
  const sec = h.mtime < 0n ? 0 : Number(h.mtime / 1_000_000_000n);
  writeOctal(b, off + 136, 12, Math.min(sec, 0o77777777777));
  b[off + 156] = typeflag;
  if (linkname) writeNameField(b, off + 157, linkname);
  for (let i = 0; i < 8; i++) b[off + 257 + i] = USTAR_MAGIC[i];
  let sum = 8 * 0x20; // the checksum field counts as spaces
  for (let i = off; i < off + 148; i++) sum += b[i];
  for (let i = off + 156; i < off + BLOCK; i++) sum += b[i];
  writeOctal(b, off + 148, 7, sum);
  b[off + 155] = 0x20;
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) > 0x7e || s.charCodeAt(i) < 0x20) return false;
  }
  return true;
}

/** Formats Keep fields as a pax comment: "keep:1 k=v k=v". */
export function formatKeepComment(fields: Record<string, string>): string {
  let s = "keep:1";
  for (const [k, v] of Object.entries(fields)) s += ` ${k}=${v}`;
  return s;
}

function parseKeepComment(text: string): Record<string, string> | undefined {
  if (!text.startsWith("keep:1")) return undefined;
  const out: Record<string, string> = {};
  for (const part of text.slice(6).split(" ")) {
    if (part === "") continue;
    const i = part.indexOf("=");
    if (i > 0) out[part.slice(0, i)] = part.slice(i + 1);
  }
  return out;
}

/**
 * Encodes the header blocks (a pax header when needed, then ustar) of one
 * entry, after `lead` zero bytes (the previous entry's padding, so that the
 * caller needs no second buffer). File data and its padding follow
 * separately. Printable-ASCII names and values are written without an
 * encoder call: headers are per file, and restores write 100k of them.
 *
 * @example
 * ```ts
 * const blocks = encodeHeader({ path: "a.txt", type: "file", size: 3, mode: 0o644, mtime: 0n });
 * ```
 */
export function encodeHeader(h: TarHeader, lead = 0): Uint8Array {
  const name = text(h.type === "dir" ? h.path + "/" : h.path);
  const link = h.linkname !== undefined ? text(h.linkname) : null;
  let pax = "";
  let paxBytes = 0;
  let paxAscii = true;
  const record = (key: string, t: Text) => {
    const r = paxRecord(key, t.s, t.length);
    pax += r;
    paxBytes += r.length - t.s.length + t.length;
    if (!t.ascii) paxAscii = false;
  };
  if (name.length > 100 || !name.ascii) record("path", name);
  if (link && (link.length > 100 || !link.ascii)) record("linkpath", link);
  if (h.size > MAX_OCTAL_SIZE) record("size", text(String(h.size)));
  if (h.mtime % 1_000_000_000n !== 0n || h.mtime < 0n || h.mtime > MAX_OCTAL_TIME_NS) {
    record("mtime", text(nsText(h.mtime)));
  }
  if (h.ctime !== undefined) record("ctime", text(nsText(h.ctime)));
  if (h.keep) record("comment", text(formatKeepComment(h.keep)));
  const typeflag = h.type === "file" ? 0x30 : h.type === "dir" ? 0x35 : 0x32;
  const size = h.type === "file" ? h.size : 0;
  if (pax === "") {
    const out = new Uint8Array(lead + BLOCK);
    ustarInto(out, lead, name, h, h.mode, link, typeflag, size);
    return out;
  }
  const body = padded(paxBytes);
  const out = new Uint8Array(lead + BLOCK + body + BLOCK);
  const paxName = text("PaxHeaders/" + asciiName(h.path));
  ustarInto(out, lead, paxName, h, 0o644, null, 0x78, paxBytes); // 'x'
  if (paxAscii) {
    const o = lead + BLOCK;
    for (let i = 0; i < pax.length; i++) out[o + i] = pax.charCodeAt(i);
  } else encoder.encodeInto(pax, out.subarray(lead + BLOCK, lead + BLOCK + paxBytes));
  ustarInto(out, lead + BLOCK + body, name, h, h.mode, link, typeflag, size);
  return out;
}

function asciiName(path: string): string {
  const base = path.slice(path.lastIndexOf("/") + 1);
  return base.replace(/[^\x20-\x7e]/g, "_").slice(0, 80) || "entry";
}

/** Two zero blocks: the end of an archive. */
export const END_OF_ARCHIVE = new Uint8Array(2 * BLOCK);

/** Receives what TarParser decodes. */
export interface TarSink {
  entry(h: TarHeader): void;
  data(chunk: Uint8Array): void;
  entryEnd(): void;
}

function bad(msg: string): KeepError {
  return new KeepError("invalid", `Cannot read archive: ${msg}`);
}

function readString(b: Uint8Array, off: number, width: number): string {
  let end = off;
  while (end < off + width && b[end] !== 0) end++;
  try {
    return decoder.decode(b.subarray(off, end));
  } catch {
    throw bad("entry name is not valid UTF-8");
  }
}

function readNumber(b: Uint8Array, off: number, width: number, what: string): number {
  if (b[off] & 0x80) {
    // GNU base-256: big-endian two's complement, first byte's high bit is the marker.
    if (b[off] & 0x40) throw bad(`negative ${what}`);
    let v = b[off] & 0x3f;
    for (let i = 1; i < width; i++) v = v * 256 + b[off + i];
    if (!Number.isSafeInteger(v)) throw bad(`${what} too large`);
    return v;
  }
  let v = 0;
  let seen = false;
  for (let i = off; i < off + width; i++) {
    const c = b[i];
    if (c === 0 || c === 0x20) {
      if (seen) break;
      continue;
    }
    if (c < 0x30 || c > 0x37) throw bad(`${what} field is not octal`);
    v = v * 8 + (c - 0x30);
    seen = true;
  }
  return v;
}

function parseNs(text: string, what: string): bigint {
  const m = /^(-?)(\d{1,12})(?:\.(\d{1,9})\d*)?$/.exec(text);
  if (!m) throw bad(`pax ${what} is not a time: ${JSON.stringify(text.slice(0, 40))}`);
  const v = BigInt(m[2]) * 1_000_000_000n + BigInt((m[3] ?? "").padEnd(9, "0"));
  if (v > (m[1] ? MAX_NS + 1n : MAX_NS)) {
    throw bad(`pax ${what} is out of range: ${JSON.stringify(text.slice(0, 40))}`);
  }
  return m[1] ? -v : v;
}

function parsePax(bytes: Uint8Array): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < bytes.length) {
    if (bytes[i] === 0) break;
    // "LEN key=value\n", LEN in decimal digits counting the whole record.
    let sp = i;
    let len = 0;
    while (sp < bytes.length && bytes[sp] >= 0x30 && bytes[sp] <= 0x39 && sp - i < 16) {
      len = len * 10 + bytes[sp++] - 0x30;
    }
    if (
      sp === i || bytes[sp] !== 0x20 || len <= sp - i + 1 || i + len > bytes.length ||
      bytes[i + len - 1] !== 0x0a
    ) {
      throw bad("malformed pax record");
    }
    let rec: string;
    try {
      rec = decoder.decode(bytes.subarray(sp + 1, i + len - 1));
    } catch {
      throw bad("pax record is not valid UTF-8");
    }
    const eq = rec.indexOf("=");
    if (eq <= 0) throw bad("malformed pax record");
    out.set(rec.slice(0, eq), rec.slice(eq + 1));
    i += len;
  }
  return out;
}

function isPosixUstar(b: Uint8Array): boolean {
  return b[257] === 0x75 && b[258] === 0x73 && b[259] === 0x74 && b[260] === 0x61 &&
    b[261] === 0x72 && b[262] === 0;
}

const enum State {
  Header,
  Ext,
  Data,
  Pad,
  Done,
}

/**
 * Incremental tar decoder. `push` raw archive bytes in any chunking; the sink
 * gets each entry, its data and its end. `finish` throws if the archive was
 * cut short.
 */
export class TarParser {
  #sink: TarSink;
  #state = State.Header;
  #block = new Uint8Array(BLOCK);
  #blockFill = 0;
  #remaining = 0;
  #pad = 0;
  #ext: Uint8Array | null = null;
  #extFill = 0;
  #extKind = "";
  #pax = new Map<string, string>();
  #gnuName: string | null = null;
  #gnuLink: string | null = null;
  /** Bytes of the extended headers (pax 'x', GNU 'L'/'K') kept for the next entry. */
  #extTotal = 0;
  #zeroBlocks = 0;
  /** Entries seen so far. */
  entries = 0;

  constructor(sink: TarSink) {
    this.#sink = sink;
  }

  /** Bytes of the current entry's data still to come (0 outside file data). */
  get dataRemaining(): number {
    return this.#state === State.Data ? this.#remaining : 0;
  }

  /** True once the end-of-archive blocks were read. */
  get done(): boolean {
    return this.#state === State.Done;
  }

  push(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      switch (this.#state) {
        case State.Data: {
          const n = Math.min(this.#remaining, chunk.length - i);
          this.#sink.data(chunk.subarray(i, i + n));
          i += n;
          this.#remaining -= n;
          if (this.#remaining === 0) this.#endData();
          break;
        }
        case State.Pad: {
          const n = Math.min(this.#pad, chunk.length - i);
          for (let k = i; k < i + n; k++) {
            if (chunk[k] !== 0) throw bad("non-zero padding after file data");
          }
          i += n;
          this.#pad -= n;
          if (this.#pad === 0) this.#state = State.Header;
          break;
        }
        case State.Ext: {
          const ext = this.#ext!;
          const n = Math.min(ext.length - this.#extFill, chunk.length - i);
          ext.set(chunk.subarray(i, i + n), this.#extFill);
          this.#extFill += n;
          i += n;
          if (this.#extFill === ext.length) this.#endExt();
          break;
        }
        case State.Header:
        case State.Done: {
          const n = Math.min(BLOCK - this.#blockFill, chunk.length - i);
          this.#block.set(chunk.subarray(i, i + n), this.#blockFill);
          this.#blockFill += n;
          i += n;
          if (this.#blockFill === BLOCK) {
            this.#blockFill = 0;
            this.#header(this.#block);
          }
          break;
        }
      }
    }
  }

  /** Throws unless the archive ended properly. */
  finish(): void {
    if (this.#state === State.Done && this.#blockFill !== 0) {
      throw bad("partial block after the end-of-archive blocks");
    }
    if (this.#state !== State.Done || this.#blockFill !== 0) {
      throw bad(
        this.#state === State.Data
          ? "truncated inside file data"
          : "truncated (no end-of-archive blocks)",
      );
    }
  }

  #endData(): void {
    this.#sink.entryEnd();
    this.#state = this.#pad > 0 ? State.Pad : State.Header;
  }

  #endExt(): void {
    const bytes = this.#ext!;
    this.#ext = null;
    if (this.#extKind === "x") {
      for (const [k, v] of parsePax(bytes)) this.#pax.set(k, v);
    } else if (this.#extKind === "L" || this.#extKind === "K") {
      let end = bytes.indexOf(0);
      if (end < 0) end = bytes.length;
      let s: string;
      try {
        s = decoder.decode(bytes.subarray(0, end));
      } catch {
        throw bad("GNU long name is not valid UTF-8");
      }
      if (this.#extKind === "L") this.#gnuName = s;
      else this.#gnuLink = s;
    } // "g": global pax headers are read and ignored.
    this.#state = this.#pad > 0 ? State.Pad : State.Header;
  }

  #header(b: Uint8Array): void {
    let zero = true;
    for (let k = 0; k < BLOCK; k++) {
      if (b[k] !== 0) {
        zero = false;
        break;
      }
    }
    if (this.#state === State.Done) {
      if (!zero) throw bad("data after the end-of-archive blocks");
      return;
    }
    if (zero) {
      if (this.#pax.size || this.#gnuName !== null || this.#gnuLink !== null) {
        throw bad("extended header without an entry");
      }
      if (++this.#zeroBlocks === 2) this.#state = State.Done;
      return;
    }
    if (this.#zeroBlocks) throw bad("entry after a zero block");
    let sum = 0;
    for (let k = 0; k < BLOCK; k++) sum += k >= 148 && k < 156 ? 0x20 : b[k];
    if (readNumber(b, 148, 8, "checksum") !== sum) throw bad("header checksum mismatch");
    const flag = b[156] === 0 ? "0" : String.fromCharCode(b[156]);
    const size = readNumber(b, 124, 12, "size");
    if (flag === "x" || flag === "g" || flag === "L" || flag === "K") {
      if (size > MAX_EXT_HEADER) {
        throw new KeepError(
          "too_large",
          `Cannot read archive: extended header of ${size} bytes (limit ${MAX_EXT_HEADER})`,
        );
      }
      // A chain of headers, each under the limit, must not add up past it:
      // their records are all kept until the entry comes.
      if (flag !== "g" && (this.#extTotal += size) > MAX_EXT_HEADER) {
        throw new KeepError(
          "too_large",
          `Cannot read archive: extended headers of ${this.#extTotal} bytes for one entry (limit ${MAX_EXT_HEADER})`,
        );
      }
      this.#ext = new Uint8Array(size);
      this.#extFill = 0;
      this.#extKind = flag;
      this.#pad = padded(size) - size;
      this.#state = State.Ext;
      if (size === 0) this.#endExt();
      return;
    }
    let type: TarHeader["type"];
    if (flag === "0" || flag === "7") type = "file";
    else if (flag === "5") type = "dir";
    else if (flag === "2") type = "symlink";
    else if (flag === "1") throw bad("hard link entries are not accepted");
    else throw bad(`unsupported entry type ${JSON.stringify(flag)}`);

    const pax = this.#pax;
    let path = pax.get("path") ?? this.#gnuName;
    if (path === undefined || path === null) {
      const name = readString(b, 0, 100);
      // The prefix field is POSIX ustar only: GNU headers ("ustar  \0") keep
      // atime and ctime at offset 345.
      const prefix = isPosixUstar(b) ? readString(b, 345, 155) : "";
      path = prefix ? `${prefix}/${name}` : name;
    }
    while (path.length > 1 && path.endsWith("/")) path = path.slice(0, -1);
    let linkname: string | undefined = pax.get("linkpath") ?? this.#gnuLink ?? undefined;
    if (type === "symlink" && linkname === undefined) linkname = readString(b, 157, 100);
    let realSize = size;
    if (pax.has("size")) {
      const t = pax.get("size")!;
      if (!/^\d{1,16}$/.test(t) || !Number.isSafeInteger(Number(t))) {
        throw bad("pax size is not a number");
      }
      realSize = Number(t);
    }
    if (type !== "file" && realSize !== 0) throw bad(`${type} entry with data`);
    const secs = readNumber(b, 136, 12, "mtime");
    const header: TarHeader = {
      path,
      type,
      size: type === "file" ? realSize : 0,
      mode: readNumber(b, 100, 8, "mode") & 0o7777,
      mtime: pax.has("mtime") ? parseNs(pax.get("mtime")!, "mtime") : BigInt(secs) * 1_000_000_000n,
    };
    if (pax.has("ctime")) header.ctime = parseNs(pax.get("ctime")!, "ctime");
    if (linkname !== undefined) header.linkname = linkname;
    const keep = parseKeepComment(pax.get("comment") ?? "");
    if (keep) header.keep = keep;
    this.#pax = new Map();
    this.#gnuName = null;
    this.#gnuLink = null;
    this.#extTotal = 0;
    this.entries++;
    this.#sink.entry(header);
    const dataSize = type === "file" ? realSize : 0;
    this.#remaining = dataSize;
    this.#pad = padded(dataSize) - dataSize;
    if (dataSize === 0) {
      this.#sink.entryEnd();
      this.#state = State.Header;
    } else {
      this.#state = State.Data;
    }
  }
}
