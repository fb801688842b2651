/**
 * Server-side upload ingest. Algorithm: cut the body into Keep gzip members,
 * inflate and verify each (CRC, length), feed the raw bytes to the tar parser;
 * for every file entry compute SHA-256 and the partial hash over the data as
 * it passes (the client's hashes are never trusted) and keep its members as
 * the blob unless the store already has that content. Entries and change
 * records are staged in SQLite in small batches; `finish` checks the archive
 * ended properly and applies the commit in one durable transaction.
 *
 * Everything here is synchronous per chunk: the HTTP handler awaits only the
 * next body read (see TECH.md: awaiting other I/O between body reads makes
 * Deno's HTTP/1.1 server crawl).
 *
 * @module
 */

import { createHash, type Hash } from "node:crypto";
import { KeepError } from "../errors.ts";
import {
  decodeMemberTransient,
  encodeChecked,
  MAX_MEMBER_RAW,
  type MemberEncoder,
  MemberSplitter,
} from "../format/gzip_member.ts";
import { hexToBytes, type IndexDb, type StageRow } from "./storage/sqlite_index.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import { type BlobStore, PACK_MAX, PackWriter, type PendingBlob } from "./storage/local_blobs.ts";
import {
  type CommitInfo,
  type Entry,
  LineSplitter,
  parseChangeRecord,
  parseUploadHeader,
  type UploadHeader,
} from "../format/manifest.ts";
import { comparePaths, pathProblem } from "../format/paths.ts";
import { churned } from "../platform/memory.ts";
import { PartialHasher } from "../format/partial_hash.ts";
import { type TarHeader, TarParser } from "../format/tar.ts";

/** Limits on one upload. */
export interface IngestLimits {
  /** Largest sum of file sizes (raw) and of body bytes accepted. */
  maxUploadBytes: number;
  /** Most entries (files, dirs, links, change records) in one upload. */
  maxEntries: number;
}

export const DEFAULT_LIMITS: IngestLimits = {
  maxUploadBytes: 1024 ** 4,
  maxEntries: 50_000_000,
};

const BATCH_BYTES = 16 << 20;
const BATCH_ROWS = 4096;
const MAX_CONTROL = 1 << 20;

/**
 * Collects one blob's members: in memory for blobs bound for a pack (up to
 * PACK_MAX raw bytes), else in a temp file that becomes the blob file.
 */
class BlobBuilder {
  #store: BlobStore;
  #parts: Uint8Array[] = [];
  #bytes = 0;
  #pendingRaw: Uint8Array[] = [];
  #pendingRawLen = 0;
  #file: Deno.FsFile | null = null;
  #tempPath = "";
  #level: number;
  #encode: MemberEncoder | undefined;

  constructor(store: BlobStore, level: number, size: number, encode?: MemberEncoder) {
    this.#store = store;
    this.#level = level;
    this.#encode = encode;
    if (size > PACK_MAX) {
      this.#tempPath = store.tempPath();
      this.#file = Deno.openSync(this.#tempPath, { write: true, createNew: true });
    }
  }

  /**
   * Adds an already-encoded member carrying the next raw bytes; `transient`:
   * the bytes are only valid during this call.
   */
  addMember(member: Uint8Array, transient = false): void {
    this.#flushRaw();
    this.#emit(transient && !this.#file ? member.slice() : member);
  }

  /**
   * Adds raw bytes that arrived split across members (a member holding the
   * end of one file and a tar header): re-encoded here, each new member
   * decoded back and compared before it is kept (see encodeChecked).
   */
  addRaw(raw: Uint8Array): void {
    this.#pendingRaw.push(raw.slice());
    this.#pendingRawLen += raw.length;
    if (this.#pendingRawLen >= MAX_MEMBER_RAW) this.#flushRaw();
  }

  #flushRaw(): void {
    if (this.#pendingRawLen === 0) return;
    const all = new Uint8Array(this.#pendingRawLen);
    let o = 0;
    for (const p of this.#pendingRaw) {
      all.set(p, o);
      o += p.length;
    }
    this.#pendingRaw = [];
    this.#pendingRawLen = 0;
    for (let i = 0; i < all.length; i += MAX_MEMBER_RAW) {
      const raw = all.subarray(i, i + MAX_MEMBER_RAW);
      this.#emit(encodeChecked(raw, this.#level < 0 ? "auto" : this.#level, this.#encode));
    }
  }

  #emit(member: Uint8Array): void {
    if (this.#file) writeAll(this.#file, member);
    else {
      this.#parts.push(member);
      // Parts live until their file ends and get promoted: a full GC per
      // 64 MB of them frees those (100k small files: server peak ~108 MB,
      // was 131-140 MB with minor GCs alone). Big files go straight to disk
      // and need none (per 64 MB of them: +5 s of CPU on a 4 GiB file).
      churned(member.length / 2, true);
    }
    this.#bytes += member.length;
  }

  /**
   * Completes the blob: a file blob is fsync'd and renamed into place (its
   * directory returned for an fsync); a pack blob's bytes are appended to
   * `pack`. Returns null when the store already has the content.
   */
  finish(
    hash: Uint8Array,
    hex: string,
    size: number,
    xxh: Uint8Array,
    known: boolean,
    pack: PackWriter,
  ): { row: PendingBlob; dirs?: string[] } | null {
    this.#flushRaw();
    if (known) {
      this.abort();
      return null;
    }
    if (this.#file) {
      this.#file.syncSync();
      this.#file.close();
      this.#file = null;
      const dirs = this.#store.adopt(this.#tempPath, hex);
      this.#tempPath = "";
      return { row: { hash, size, stored: this.#bytes, xxh, pack: null, offset: null }, dirs };
    }
    const data = this.#parts.length === 1 ? this.#parts[0] : concatBytes(this.#parts);
    this.#parts = [];
    const at = pack.add(data);
    return { row: { hash, size, stored: this.#bytes, xxh, pack: at.pack, offset: at.offset } };
  }

  abort(): void {
    if (this.#file) {
      try {
        this.#file.close();
      } catch { /* already closed */ }
      this.#file = null;
    }
    if (this.#tempPath) {
      try {
        Deno.removeSync(this.#tempPath);
      } catch { /* gone already */ }
      this.#tempPath = "";
    }
    this.#parts = [];
  }
}

function writeAll(f: Deno.FsFile, b: Uint8Array): void {
  let o = 0;
  while (o < b.length) o += f.writeSync(b.subarray(o));
}

const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

type Phase = "header" | "entries" | "changes" | "end";

/** Options of an ingest session. */
export interface IngestOptions {
  limits?: IngestLimits;
  /** Level for members the server must encode itself: -1 auto. */
  level?: number;
  /** The encoder for those members (tests pass a broken one). */
  encode?: MemberEncoder;
}

/**
 * Receives one upload for `project`. Push body chunks, then `finish` for the
 * new commit. On any error call `abort`: nothing is committed and temp files
 * are removed; blobs already stored stay (content-addressed, reused later,
 * reported as orphans by verify until referenced).
 *
 * @example
 * ```ts
 * const ingest = new Ingest(index, blobs, "app");
 * for await (const chunk of body) ingest.push(chunk);
 * const commit = ingest.finish();
 * ```
 */
export class Ingest {
  readonly project: string;
  #index: IndexDb;
  #store: BlobStore;
  #limits: IngestLimits;
  #level: number;
  #encode: MemberEncoder | undefined;
  #upload: number;
  #splitter = new MemberSplitter();
  #parser: TarParser;
  #phase: Phase = "header";
  #header: UploadHeader | null = null;
  #control: Uint8Array[] = [];
  #controlLen = 0;
  #lines: LineSplitter | null = null;
  #lastPath = "";
  #entry: Entry | null = null;
  #sha: Hash | null = null;
  #xxh = new PartialHasher();
  #blob: BlobBuilder | null = null;
  #member: Uint8Array | null = null;
  /** #member is a view of the splitter's carry buffer (copy it to keep it). */
  #memberCarried = false;
  #pendingRows: StageRow[] = [];
  #pendingBlobs: PendingBlob[] = [];
  #pendingBytes = 0;
  #pendingHashes = new Set<string>();
  #pack: PackWriter;
  #dirs = new Set<string>();
  #entries = 0;
  #declared = 0;
  #started = performance.now();
  #closed = false;
  /** Bytes of body received. */
  wireBytes = 0;
  /** After finish: the paths the commit touched, sorted (null when many). */
  changedPaths: string[] | null = null;
  filesReceived = 0;
  bytesReceived = 0;
  newBlobs = 0;
  newBlobBytes = 0;
  /** Blobs marked damaged that this upload's content replaced. */
  repairedBlobs = 0;

  constructor(index: IndexDb, store: BlobStore, project: string, options: IngestOptions = {}) {
    this.#index = index;
    this.#store = store;
    this.project = project;
    this.#limits = options.limits ?? DEFAULT_LIMITS;
    this.#level = options.level ?? -1;
    this.#encode = options.encode;
    this.#upload = index.newUpload();
    this.#pack = new PackWriter(store);
    this.#parser = new TarParser({
      entry: (h) => this.#onEntry(h),
      data: (c) => this.#onData(c),
      entryEnd: () => this.#onEntryEnd(),
    });
  }

  /** The upload's commit header, once read. */
  get header(): UploadHeader | null {
    return this.#header;
  }

  /** Processes a body chunk. Throws KeepError on bad input. */
  push(chunk: Uint8Array): void {
    this.wireBytes += chunk.length;
    churned(chunk.length * 2);
    if (this.wireBytes > this.#limits.maxUploadBytes + (1 << 20)) {
      throw new KeepError(
        "too_large",
        `Cannot accept upload: body over the limit of ${this.#limits.maxUploadBytes} bytes`,
      );
    }
    this.#splitter.push(chunk);
    // Members, decoded bytes and carried members are views valid until the
    // next member: consumed (hashed, written or copied) before it.
    for (let m = this.#splitter.next(true); m; m = this.#splitter.next(true)) {
      const raw = decodeMemberTransient(m);
      this.#member = this.#blob && raw.length > 0 && this.#parser.dataRemaining >= raw.length
        ? m
        : null;
      this.#memberCarried = this.#splitter.lastWasCarried;
      this.#parser.push(raw);
      this.#member = null;
    }
  }

  /** Ends the upload and records the commit. */
  finish(): CommitInfo {
    this.#splitter.end();
    this.#parser.finish();
    if (this.#phase !== "end") {
      throw new KeepError(
        "invalid",
        "Cannot accept upload: the archive has no change list (.keep-changes.ndjson)",
      );
    }
    this.#flush();
    this.#pack.close();
    this.#store.syncDirs(this.#dirs);
    const commit = this.#index.commitUpload(this.#upload, this.project, this.#header!, {
      filesReceived: this.filesReceived,
      bytesReceived: this.bytesReceived,
      wireBytes: this.wireBytes,
      newBlobs: this.newBlobs,
      newBlobBytes: this.newBlobBytes,
      seconds: Math.round(performance.now() - this.#started) / 1000,
    });
    this.changedPaths = this.#index.lastChanged;
    this.#closed = true;
    return commit;
  }

  /** Drops everything staged and removes temp files. Safe to call twice. */
  abort(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#blob?.abort();
    this.#blob = null;
    try {
      // Blobs already in the pack stay: content-addressed, reused by the next upload.
      this.#flush();
    } catch { /* the disk may be full: the rows are not needed */ }
    try {
      this.#pack.close();
    } catch { /* same */ }
    try {
      this.#index.dropUpload(this.#upload);
    } catch { /* index closing */ }
  }

  #count(): void {
    if (++this.#entries > this.#limits.maxEntries) {
      throw new KeepError(
        "too_large",
        `Cannot accept upload: more than ${this.#limits.maxEntries} entries`,
      );
    }
  }

  #onEntry(h: TarHeader): void {
    const control = h.keep?.control;
    if (this.#phase === "header") {
      if (control !== "commit" || h.type !== "file" || h.size > MAX_CONTROL) {
        throw new KeepError(
          "invalid",
          "Cannot accept upload: it must start with the commit header (.keep-commit.json)",
        );
      }
      this.#control = [];
      this.#controlLen = 0;
      return;
    }
    if (this.#phase === "changes" || this.#phase === "end") {
      throw new KeepError("invalid", "Cannot accept upload: entry after the change list");
    }
    if (control === "changes") {
      if (h.type !== "file") {
        throw new KeepError("invalid", "Cannot accept upload: change list is not a file");
      }
      this.#phase = "changes";
      this.#lines = new LineSplitter();
      return;
    }
    if (control !== undefined) {
      throw new KeepError("invalid", `Cannot accept upload: unexpected control entry ${control}`);
    }
    this.#count();
    const problem = pathProblem(h.path);
    if (problem) {
      throw new KeepError("invalid", `Cannot accept entry ${JSON.stringify(h.path)}: ${problem}`);
    }
    if (comparePaths(this.#lastPath, h.path) >= 0) {
      throw new KeepError(
        "invalid",
        `Cannot accept entry ${JSON.stringify(h.path)}: ${
          h.path === this.#lastPath ? "duplicate path" : "entries out of order"
        }`,
      );
    }
    this.#lastPath = h.path;
    const entry: Entry = {
      path: h.path,
      type: h.type === "file" ? "f" : h.type === "dir" ? "d" : "l",
      size: h.size,
      mode: h.mode & 0o7777,
      mtime: h.mtime,
      ctime: h.ctime ?? 0n,
    };
    if (h.type === "symlink") {
      if (!h.linkname || h.linkname.includes("\0") || h.linkname.length > 4096) {
        throw new KeepError(
          "invalid",
          `Cannot accept symlink ${JSON.stringify(h.path)}: bad target`,
        );
      }
      entry.target = h.linkname;
    }
    this.#entry = entry;
    if (h.type === "file") {
      this.#declared += h.size;
      if (this.#declared > this.#limits.maxUploadBytes) {
        throw new KeepError(
          "too_large",
          `Cannot accept upload: declared file sizes exceed the limit of ${this.#limits.maxUploadBytes} bytes`,
        );
      }
      this.#sha = createHash("sha256");
      this.#xxh.reset();
      this.#blob = new BlobBuilder(this.#store, this.#level, h.size, this.#encode);
    }
  }

  #onData(chunk: Uint8Array): void {
    if (this.#phase === "header" || this.#phase === "changes") {
      if (this.#phase === "changes") {
        for (const line of this.#lines!.push(chunk)) this.#onChange(line);
        return;
      }
      this.#controlLen += chunk.length;
      this.#control.push(chunk.slice());
      return;
    }
    this.#sha!.update(chunk);
    this.#xxh.update(chunk);
    if (this.#member) this.#blob!.addMember(this.#member, this.#memberCarried);
    else this.#blob!.addRaw(chunk);
    this.bytesReceived += chunk.length;
  }

  #onEntryEnd(): void {
    if (this.#phase === "header") {
      this.#header = parseUploadHeader(
        new TextDecoder().decode(concatBytes(this.#control)),
      );
      this.#control = [];
      const head = this.#index.headCommit(this.project);
      if ((head?.id ?? null) !== this.#header.parent) {
        throw new KeepError(
          "conflict",
          `Cannot commit: parent ${
            this.#header.parent ?? "(none)"
          } is not the head of ${this.project} (${head?.id ?? "none"})`,
        );
      }
      this.#phase = "entries";
      return;
    }
    if (this.#phase === "changes") {
      for (const line of this.#lines!.end()) this.#onChange(line);
      this.#phase = "end";
      return;
    }
    const entry = this.#entry!;
    this.#entry = null;
    let hashBytes: Uint8Array | undefined;
    let xxhBytes: Uint8Array | undefined;
    if (entry.type === "f") {
      const digest = this.#sha!.digest();
      const hex = digest.toString("hex");
      entry.hash = hex;
      entry.xxh = this.#xxh.digest();
      xxhBytes = hexToBytes(entry.xxh);
      hashBytes = digest;
      this.#sha = null;
      const blob = this.#blob!;
      this.#blob = null;
      this.filesReceived++;
      if (entry.size > 0) {
        const known = this.#pendingHashes.has(hex) || this.#store.has(digest);
        const done = blob.finish(digest, hex, entry.size, xxhBytes, known, this.#pack);
        if (done) {
          this.#pendingHashes.add(hex);
          this.#pendingBlobs.push(done.row);
          if (done.row.pack !== null) this.#pendingBytes += done.row.stored;
          for (const d of done.dirs ?? []) this.#dirs.add(d);
          this.newBlobs++;
          this.newBlobBytes += done.row.stored;
        }
      } else {
        blob.abort();
        if (hex !== EMPTY_SHA256) throw new KeepError("internal", "Cannot hash empty file");
      }
    }
    this.#stageRow({ op: "put", path: entry.path, entry, hashBytes, xxhBytes });
  }

  #onChange(line: string): void {
    this.#count();
    const r = parseChangeRecord(line);
    switch (r.op) {
      case "del":
        return this.#stageRow({ op: "del", path: r.p });
      case "meta":
        return this.#stageRow({ op: "meta", path: r.e.path, entry: r.e });
      case "keep":
        return this.#stageRow({ op: "keep", path: r.p, flag: r.flag, reason: r.reason });
      case "drop":
        this.#flush();
        this.#index.unstagePut(this.#upload, this.project, r.p, r.reason);
        return;
    }
  }

  #stageRow(row: StageRow): void {
    this.#pendingRows.push(row);
    if (this.#pendingRows.length >= BATCH_ROWS || this.#pendingBytes >= BATCH_BYTES) this.#flush();
  }

  #flush(): void {
    if (this.#pendingRows.length === 0 && this.#pendingBlobs.length === 0) return;
    const rows = this.#pendingRows;
    const blobs = this.#pendingBlobs;
    this.#pendingRows = [];
    this.#pendingBlobs = [];
    this.#pendingBytes = 0;
    // Rows may only point at bytes, and names, that are on disk.
    if (blobs.some((b) => b.pack !== null)) this.#pack.sync();
    if (this.#dirs.size) {
      this.#store.syncDirs(this.#dirs);
      this.#dirs.clear();
    }
    this.#index.transaction(() => {
      this.repairedBlobs += this.#store.insert(blobs);
      this.#index.stage(this.#upload, rows);
    });
    this.#pendingHashes.clear();
  }
}

export { hexToBytes };
