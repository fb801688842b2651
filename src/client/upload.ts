/**
 * Builds an upload: one tar.gz stream, pulled as the network takes it.
 * Layout: `.keep-commit.json` (control: commit header), then every sent entry
 * in path order, then `.keep-changes.ndjson` (control: deletions, metadata
 * records, kept and withdrawn paths), then the end-of-archive blocks.
 *
 * Each entry is one gzip member holding the previous file's tar padding and
 * this entry's header blocks, followed by its data as members of at most
 * 1 MiB raw each (see gzip_member.ts), so the server can keep the data
 * members as the blob. GNU tar and bsdtar read the result as one archive.
 *
 * A file's bytes never disagree with its header: files up to 8 MiB are read
 * whole between two stats and re-read (bounded) if they moved; larger files
 * are streamed, padded or cut to the size in the header, and withdrawn with a
 * `drop` record if they moved while being read.
 *
 * @module
 */

import { BlockWriter } from "../platform/block_writer.ts";
import { churned } from "../platform/memory.ts";
import { type Level, MAX_MEMBER_RAW, writeMember } from "../format/gzip_member.ts";
import { createHash } from "node:crypto";
import { CDC_SIZES, CHUNKED_FILE_MIN, type ChunkRef, FastCdc } from "../format/fastcdc.ts";
import { lstatNs, type NativeStat, NotRegularFileError, TreeFile } from "../platform/fs_native.ts";
import {
  type ChangeRecord,
  changeRecordToJson,
  tarTypeOf,
  type UploadHeader,
} from "../format/manifest.ts";
import { encodeHeader, END_OF_ARCHIVE, padded, type TarHeader } from "../format/tar.ts";
import { type Problem, reasonOf } from "./problem.ts";
import type { ScanEntry } from "./scan.ts";

/** How file data is compressed on the wire (and so at rest). */
export type CompressMode = "none" | "fast" | "auto";

/** Counters filled while the stream is read. */
export interface PackStats {
  filesSent: number;
  bytesRead: number;
  wireBytes: number;
  entriesSent: number;
}

export interface PackOptions {
  /** Absolute path of the source directory. */
  root: string;
  header: UploadHeader;
  /** Entries to send, in path order. */
  send: Iterable<ScanEntry>;
  /** Change records known before packing (del, meta, keep). */
  changes: ChangeRecord[];
  compress?: CompressMode;
  /** Re-reads of a file that moved while read (default 3). */
  retries?: number;
  /** Files above this are streamed rather than read whole (default 8 MiB). */
  wholeFileMax?: number;
  onProblem?: (p: Problem) => void;
  /**
   * True when the parent commit has `path`: only then may a file that could
   * not be sent keep its last version (a keep record); a new one is left out.
   */
  inParent?: (path: string) => boolean;
  /**
   * Big files whose chunks the store partly holds (by path): sent as their
   * missing chunks (`chunk` control entries) and a `have` record listing all
   * of them, proven under the negotiation's key.
   */
  partial?: Partial;
  /** Called after each file with the bytes read so far. */
  onProgress?: (stats: PackStats) => void;
  signal?: AbortSignal;
}

/** Files sent in part: the chunks the store holds, and the key of the proof. */
export type Partial = Map<string, PartialSend>;

/** What the negotiation found of a file the store holds in part (read as scanned). */
export interface PartialSend {
  /**
   * Its proof of possession under the negotiation's key (nonce), when it
   * names chunks that are not the project's own; null: none needed.
   */
  proof: { nonce: string; proof: string } | null;
  /** Its chunks, in order. */
  chunks: ChunkRef[];
  /** The chunks the store holds. */
  held: Set<string>;
  /** Their raw bytes (for the report). */
  heldBytes: number;
}

const encoder = new TextEncoder();
/** Bytes per piece of the upload stream (one HTTP chunk that fits a 64 KiB read). */
const WIRE_CHUNK = 65000;
/** Blocks handed to the stream together (~260 KB; 1 to 16 measured alike). */
const BATCH_BLOCKS = 4;

function sameStat(
  a: Pick<NativeStat, "kind" | "size" | "mtime" | "ctime">,
  b: NativeStat,
): boolean {
  return a.kind === b.kind && a.size === b.size && a.mtime === b.mtime && a.ctime === b.ctime;
}

/**
 * Returns the upload stream and the stats it fills.
 *
 * @example
 * ```ts
 * const { stream, stats } = packUpload({ root, header, send, changes: [] });
 * await fetch(url, { method: "POST", body: stream, duplex: "half" });
 * ```
 */
export function packUpload(
  options: PackOptions,
): { stream: ReadableStream<Uint8Array>; stats: PackStats } {
  const stats: PackStats = { filesSent: 0, bytesRead: 0, wireBytes: 0, entriesSent: 0 };
  const gen = generate(options, stats);
  // The generator yields blocks of exactly WIRE_CHUNK bytes (the last may be
  // shorter): the size Deno's server reads cheapest (docs/DESIGN.md, "Upload
  // chunks of 65,000 bytes").
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        // A batch of blocks at once: the server reads a burst from its socket
        // buffer cheaply; blocks trickling in one by one cost it far more.
        const { value, done } = await gen.next();
        if (done) controller.close();
        else {
          for (const block of value) {
            stats.wireBytes += block.length;
            controller.enqueue(block);
          }
          churned(value.length * WIRE_CHUNK, true);
        }
      } catch (err) {
        controller.error(err);
      }
    },
    async cancel() {
      await gen.return(undefined);
    },
  }, { highWaterMark: 2 });
  return { stream, stats };
}

function generate(options: PackOptions, stats: PackStats): AsyncGenerator<Uint8Array[]> {
  return new UploadWriter(options, stats).blocks();
}

/** A file that could not be read as it was scanned, after this many tries. */
interface Attempt {
  sent: boolean;
  /** Why the last try failed ("" when it failed for good: reported already). */
  reason: string;
}

/**
 * Writes one upload into wire blocks: members straight into 65,000-byte
 * blocks (one allocation per block, not per member), yielded a few at a time.
 */
class UploadWriter {
  readonly #options: PackOptions;
  readonly #stats: PackStats;
  readonly #level: Level | "auto";
  /** Header blocks (with the previous file's padding) are ~1.8 KB, mostly zeros: ~190 at level 1. */
  readonly #headerLevel: Level;
  readonly #retries: number;
  readonly #wholeMax: number;
  readonly #changes: ChangeRecord[];
  readonly #inParent: (path: string) => boolean;
  readonly #reader: WholeFileReader;
  readonly #out = new BlockWriter(WIRE_CHUNK);
  /** Zero bytes owed after the last file's data (they go in the next header's member). */
  #pad = 0;

  constructor(options: PackOptions, stats: PackStats) {
    const compress = options.compress ?? "auto";
    this.#options = options;
    this.#stats = stats;
    this.#level = compress === "none" ? 0 : compress === "fast" ? 1 : "auto";
    this.#headerLevel = compress === "none" ? 0 : 1;
    this.#retries = options.retries ?? 3;
    this.#wholeMax = options.wholeFileMax ?? 8 << 20;
    this.#changes = [...options.changes];
    this.#inParent = options.inParent ?? (() => true);
    this.#reader = new WholeFileReader(this.#wholeMax);
  }

  async *blocks(): AsyncGenerator<Uint8Array[]> {
    const o = this.#options;
    this.#control(".keep-commit.json", "commit", encoder.encode(JSON.stringify(o.header)));
    for (const e of o.send) {
      if (o.signal?.aborted) throw o.signal.reason;
      const part = e.type === "f" ? o.partial?.get(e.path) : undefined;
      if (e.type !== "f") this.#sendHeaderOnly(e);
      else if (part) yield* this.#sendChunks(e, part);
      else if (e.size <= this.#wholeMax) await this.#sendWhole(e);
      else yield* this.#sendStreamed(e);
      if (this.#out.ready >= BATCH_BLOCKS) yield this.#out.take();
    }
    const lines = this.#changes.map((c) => changeRecordToJson(c) + "\n").join("");
    this.#control(".keep-changes.ndjson", "changes", encoder.encode(lines));
    writeMember(new Uint8Array(this.#pad + END_OF_ARCHIVE.length), 1, this.#out.write);
    this.#out.flush();
    yield this.#out.take();
  }

  #headerMember(h: TarHeader): void {
    writeMember(encodeHeader(h, this.#pad), this.#headerLevel, this.#out.write);
    this.#pad = 0;
  }

  #dataMembers(data: Uint8Array): void {
    for (let i = 0; i < data.length; i += MAX_MEMBER_RAW) {
      writeMember(data.subarray(i, i + MAX_MEMBER_RAW), this.#level, this.#out.write);
    }
  }

  #control(name: string, kind: string, body: Uint8Array): void {
    this.#headerMember({
      path: name,
      type: "file",
      size: body.length,
      mode: 0o644,
      mtime: BigInt(this.#options.header.scanTime),
      keep: { control: kind },
    });
    if (body.length) this.#dataMembers(body);
    this.#pad = padded(body.length) - body.length;
  }

  /** A path not sent as scanned: reported, and its last version kept (a parent path) or withdrawn. */
  #problem(p: Problem): void {
    this.#options.onProblem?.(p);
    if (p.kind === "withdrawn") {
      this.#changes.push({ op: "drop", p: p.path, reason: p.reason });
    } else if (this.#inParent(p.path)) {
      const flag = p.kind === "unreadable" ? "unreadable" : "unsettled";
      this.#changes.push({ op: "keep", p: p.path, flag, reason: p.reason });
    }
  }

  #sendHeaderOnly(e: ScanEntry): void {
    this.#headerMember({
      path: e.path,
      type: tarTypeOf(e.type),
      size: 0,
      mode: e.mode,
      mtime: e.mtime,
      ctime: e.ctime,
      linkname: e.target,
    });
    this.#stats.entriesSent++;
  }

  /**
   * A file read whole between two stats, and read again (bounded) when it
   * moved: its bytes never disagree with its header.
   */
  async #sendWhole(e: ScanEntry): Promise<void> {
    const abs = `${this.#options.root}/${e.path}`;
    const a: Attempt = { sent: false, reason: "" };
    for (let attempt = 0; attempt <= this.#retries && !a.sent; attempt++) {
      if (attempt > 0) await delay(50 * 2 ** attempt);
      // The first read is checked against the scan's (or settle check's)
      // stat; a retry takes a fresh one. One stat per file in the usual case.
      let st0: Pick<NativeStat, "kind" | "size" | "mtime" | "ctime">, st1: NativeStat;
      let data: Uint8Array;
      try {
        st0 = attempt === 0
          ? { kind: "file", size: e.size, mtime: e.mtime, ctime: e.ctime }
          : lstatNs(abs);
        if (st0.kind !== "file") {
          a.reason = "is no longer a regular file";
          continue;
        }
        data = this.#reader.read(abs, st0.size);
        st1 = lstatNs(abs);
      } catch (err) {
        if (err instanceof NotRegularFileError) {
          // Swapped for a FIFO, a symlink or a directory since the scan.
          a.reason = err.message;
          continue;
        }
        this.#problem({ path: e.path, reason: reasonOf(err), kind: "unreadable" });
        a.reason = "";
        break;
      }
      if (!sameStat(st0, st1) || data.length !== st1.size) {
        a.reason = "changed while being read";
        continue;
      }
      this.#headerMember({
        path: e.path,
        type: "file",
        size: data.length,
        mode: st1.mode,
        mtime: st1.mtime,
        ctime: st1.ctime,
      });
      this.#dataMembers(data);
      this.#pad = padded(data.length) - data.length;
      this.#stats.filesSent++;
      this.#stats.entriesSent++;
      this.#stats.bytesRead += data.length;
      a.sent = true;
    }
    if (!a.sent && a.reason) {
      this.#problem({
        path: e.path,
        reason: `${a.reason} (${this.#retries + 1} tries)`,
        kind: "unsettled",
      });
    }
    this.#options.onProgress?.(this.#stats);
  }

  /** Opens a file to stream; null (the problem reported) when it cannot be. */
  #open(path: string, abs: string): TreeFile | null {
    try {
      return TreeFile.open(abs);
    } catch (err) {
      if (err instanceof NotRegularFileError) {
        this.#problem({ path, reason: err.message, kind: "unsettled" });
      } else this.#problem({ path, reason: reasonOf(err), kind: "unreadable" });
      return null;
    }
  }

  /**
   * A large file, streamed at the size of the open file's stat (cut or
   * zero-filled to it), and withdrawn when it moved while it was read.
   */
  async *#sendStreamed(e: ScanEntry): AsyncGenerator<Uint8Array[]> {
    const abs = `${this.#options.root}/${e.path}`;
    const file = this.#open(e.path, abs);
    if (!file) return;
    const st0 = file.stat;
    let moved = false;
    try {
      this.#headerMember({
        path: e.path,
        type: "file",
        size: st0.size,
        mode: st0.mode,
        mtime: st0.mtime,
        ctime: st0.ctime,
      });
      let left = st0.size;
      const buf = new Uint8Array(MAX_MEMBER_RAW);
      // A big file's members end at its content-defined cuts too: the server
      // keeps each chunk's members as they are (format/fastcdc.ts).
      const cdc = st0.size > CHUNKED_FILE_MIN ? new FastCdc() : null;
      const members = new ChunkMembers((raw) => writeMember(raw, this.#level, this.#out.write));
      let pos = 0;
      while (left > 0) {
        const want = Math.min(left, buf.length);
        let got = 0;
        while (got < want) {
          const n = file.readSync(buf.subarray(got, want));
          if (n === null || n === 0) break;
          got += n;
        }
        if (got < want) {
          moved = true; // shrank: zero-fill to the size the header promised
          buf.fill(0, got, want);
        }
        const piece = buf.subarray(0, want);
        if (cdc) {
          let from = 0;
          for (const cut of cdc.push(piece)) {
            members.add(piece.subarray(from, cut - pos));
            members.flush();
            from = cut - pos;
          }
          members.add(piece.subarray(from));
          pos += want;
        } else writeMember(piece, this.#level, this.#out.write);
        left -= want;
        this.#stats.bytesRead += got;
        if (this.#out.ready >= BATCH_BLOCKS) yield this.#out.take();
        if (this.#options.signal?.aborted) throw this.#options.signal.reason;
      }
      members.flush();
      this.#pad = padded(st0.size) - st0.size;
      if (!sameStat(st0, lstatNs(abs))) moved = true;
    } finally {
      file.close();
    }
    this.#stats.entriesSent++;
    if (moved) {
      this.#problem({ path: e.path, reason: "changed while being read", kind: "withdrawn" });
    } else this.#stats.filesSent++;
    this.#options.onProgress?.(this.#stats);
  }
  /**
   * A big file the store holds in part (see PartialSend: hashed, cut and
   * proven by the negotiation): the chunks the store lacks go as `chunk`
   * control entries, named after the file and the chunk's offset so
   * `tar -tzvf` shows what was sent, each read again and checked against its
   * hash; then a `have` record names every chunk. A file that is not as
   * scanned (size, mtime, ctime) before or after keeps its last version.
   */
  async *#sendChunks(e: ScanEntry, part: PartialSend): AsyncGenerator<Uint8Array[]> {
    const abs = `${this.#options.root}/${e.path}`;
    const moved = () =>
      this.#problem({ path: e.path, reason: "changed while being read", kind: "unsettled" });
    const file = this.#open(e.path, abs);
    if (!file) return;
    const scanned = { kind: "file" as const, size: e.size, mtime: e.mtime, ctime: e.ctime };
    try {
      if (!sameStat(scanned, file.stat)) return moved();
      let offset = 0;
      let buf = new Uint8Array(0);
      for (const c of part.chunks) {
        if (!part.held.has(c.hash)) {
          if (buf.length < c.size) buf = new Uint8Array(Math.max(c.size, CDC_SIZES.max));
          const bytes = buf.subarray(0, c.size);
          file.seekSync(offset, Deno.SeekMode.Start);
          let got = 0;
          while (got < c.size) {
            const n = file.readSync(bytes.subarray(got));
            if (n === null || n === 0) break;
            got += n;
          }
          if (got < c.size || createHash("sha256").update(bytes).digest("hex") !== c.hash) {
            return moved();
          }
          this.#control(`.keep-chunk/${e.path}@${offset}`, "chunk", bytes);
          this.#stats.bytesRead += c.size;
          if (this.#out.ready >= BATCH_BLOCKS) yield this.#out.take();
          if (this.#options.signal?.aborted) throw this.#options.signal.reason;
        }
        offset += c.size;
      }
      if (!sameStat(scanned, lstatNs(abs))) return moved();
    } finally {
      file.close();
    }
    const entry = {
      path: e.path,
      type: "f" as const,
      size: e.size,
      mode: e.mode,
      mtime: e.mtime,
      ctime: e.ctime,
    };
    const c = part.chunks.map((c) => c.hash);
    this.#changes.push(
      part.proof
        ? { op: "have", e: entry, n: part.proof.nonce, proof: part.proof.proof, c }
        : { op: "have", e: entry, c },
    );
    this.#stats.entriesSent++;
    this.#stats.filesSent++;
    this.#options.onProgress?.(this.#stats);
  }
}

/**
 * Members of a chunked file: full (MAX_MEMBER_RAW) from each chunk's start,
 * the chunk's last one shorter, so the server sees where chunks end. A
 * chunk of exactly one full member (1 MiB; at the chunker's max the server
 * cuts by size) goes as a member shorter than the chunker's min, which the
 * server never cuts after, and a short one.
 */
export class ChunkMembers {
  #buf = new Uint8Array(MAX_MEMBER_RAW);
  #fill = 0;
  /** Bytes of the current chunk already written. */
  #written = 0;
  constructor(readonly write: (raw: Uint8Array) => void) {}

  add(bytes: Uint8Array): void {
    for (let o = 0; o < bytes.length;) {
      // A full member goes only once more of its chunk comes (see flush).
      if (this.#fill === this.#buf.length) this.#writeFull();
      const n = Math.min(bytes.length - o, this.#buf.length - this.#fill);
      this.#buf.set(bytes.subarray(o, o + n), this.#fill);
      this.#fill += n;
      o += n;
    }
  }

  /** Ends the current chunk. */
  flush(): void {
    if (this.#fill === MAX_MEMBER_RAW && this.#written + this.#fill < CDC_SIZES.max) {
      const head = CDC_SIZES.min >> 1;
      this.write(this.#buf.subarray(0, head));
      this.write(this.#buf.subarray(head));
    } else if (this.#fill) this.write(this.#buf.subarray(0, this.#fill));
    this.#fill = 0;
    this.#written = 0;
  }

  #writeFull(): void {
    this.write(this.#buf);
    this.#written += this.#fill;
    this.#fill = 0;
  }
}

/**
 * Reads whole files into one reused buffer (no allocation per file). The
 * returned view is valid until the next read.
 */
class WholeFileReader {
  #buf = new Uint8Array(1 << 16);
  constructor(readonly max: number) {}

  /** Reads `path` (a regular file, not through a symlink: see TreeFile). */
  read(path: string, expected: number): Uint8Array {
    const f = TreeFile.open(path);
    try {
      if (this.#buf.length < expected + 1) {
        this.#buf = new Uint8Array(
          Math.min(Math.max(expected + 1, this.#buf.length * 2), this.max + 1),
        );
      }
      let got = 0;
      for (;;) {
        if (got === this.#buf.length) {
          // Grew past what we expected: return what fits; the stat check reports the change.
          return this.#buf.subarray(0, got);
        }
        const n = f.readSync(this.#buf.subarray(got));
        if (n === null || n === 0) return this.#buf.subarray(0, got);
        got += n;
      }
    } finally {
      f.close();
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
