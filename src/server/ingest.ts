/**
 * Server-side upload ingest. Algorithm: cut the body into Keep gzip members,
 * inflate and verify each (CRC, length), feed the raw bytes to the tar parser;
 * for every file entry compute SHA-256 and the partial hash over the data as
 * it passes (the client's hashes are never trusted) and keep its members as
 * the blob unless the store already has that content. Entries and change
 * records are staged in batches; `finish` checks the archive ended properly
 * and applies the commit in one durable step of the index.
 *
 * `push` is synchronous per body chunk (docs/DESIGN.md, "The HTTP server": awaiting other I/O between
 * body reads makes Deno's HTTP/1.1 server crawl). What waits on the storage
 * happens in `flush`, once per batch (`wantsFlush`): which of the batch's
 * contents the store lacks (one question for the batch), their bytes made
 * durable, then their rows inserted and the paths staged. The HTTP handler
 * keeps a body read pending while it awaits a flush.
 *
 * @module
 */

import { createHash, type Hash } from "node:crypto";
import { KeepError } from "../errors.ts";
import { ArchiveReader } from "../format/archive_reader.ts";
import { encodeChecked, MAX_MEMBER_RAW, type MemberEncoder } from "../format/gzip_member.ts";
import { bytesToHex, hexToBytes } from "../format/hex.ts";
import {
  CHANGE_LINE_MAX,
  type CommitInfo,
  type Entry,
  entryTypeOf,
  LineSplitter,
  parseChangeRecord,
  parseUploadHeader,
  UPLOAD_CHUNKS_MAX,
  type UploadHeader,
} from "../format/manifest.ts";
import { comparePaths, pathProblem } from "../format/paths.ts";
import { PartialHasher } from "../format/partial_hash.ts";
import { formatBytes } from "../format/units.ts";
import type { TarHeader } from "../format/tar.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import { churned } from "../platform/memory.ts";
import { type LargeSink, PACK_MAX, type PackSink } from "./storage/blob_store.ts";
import { CDC_SIZES, CHUNKED_FILE_MIN, memberEndsChunk } from "../format/fastcdc.ts";
import type { NewBlob, StageRow, UploadStage } from "./storage/index_store.ts";
import { closeAndSeal, type Storage } from "./storage/open.ts";
import {
  checkChunkedPossession,
  checkPossession,
  type PossessedChunks,
  possessionKeys,
} from "./possession.ts";

/** Limits on one upload. */
export interface IngestLimits {
  /** Largest sum of file sizes (raw) and of body bytes accepted. */
  maxUploadBytes: number;
  /** Most entries (files, dirs, links, change records) in one upload. */
  maxEntries: number;
  /**
   * Free space the store keeps (bytes): an upload that would leave less is
   * refused before anything is stored (`serve --min-free`); 0: no reserve.
   */
  minFreeBytes?: number;
  /**
   * Files over this size are stored as content-defined chunks (serve
   * --chunk-over; default CHUNKED_FILE_MIN, the size above which clients cut
   * members at chunk boundaries); null: as whole blobs.
   */
  chunkOverBytes?: number | null;
}

export const DEFAULT_LIMITS: IngestLimits = {
  maxUploadBytes: 1024 ** 4,
  maxEntries: 50_000_000,
  minFreeBytes: 0,
};

/** A batch is flushed after this many bytes of small blobs, rows, or large blobs. */
const BATCH_BYTES = 8 << 20;
const BATCH_ROWS = 4096;
const BATCH_LARGE = 8;
/** Proven chunked files are flushed once their lists name this many chunks. */
const REFS_FLUSH = 1 << 16;
/** On an object store, batches whose pack PUT (then rows) may be in flight at once. */
const PUTS_IN_FLIGHT = 3;
/**
 * Small blobs are copied into the batch buffer while it stays under this: a
 * batch, plus what one body chunk can end past it. The buffer also holds
 * the open chunk of a big file (at most CHUNK_STORED_MAX).
 */
const HELD_MAX = BATCH_BYTES + 2 * PACK_MAX;
/** A pack is closed once it is this big; the next blob starts a new one. */
const PACK_ROTATE = 1 << 30;
const MAX_CONTROL = 1 << 20;
/** A stored chunk is at most the chunker's max plus one member (see #onData). */
const CHUNK_ENTRY_MAX = CDC_SIZES.max + MAX_MEMBER_RAW;
/**
 * Most bytes one chunk may store: twice its most raw bytes. Keep's writers
 * never make a member longer than stored blocks (~0.01% over raw); members
 * padded past that (empty stored blocks) would make the server hold, and
 * store, any amount for a few raw bytes.
 */
const CHUNK_STORED_MAX = 2 * CHUNK_ENTRY_MAX;

/**
 * A `have` record waiting for the end of the upload; `c`: its chunks'
 * SHA-256 back to back (32 bytes each: a list of hex strings took ~80).
 */
type Have = { e: Entry; n?: string; proof?: string; c?: Uint8Array };

/** The hashes of a packed chunk list (see Have), as views of it. */
function chunkHashes(c: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = new Array(c.length / 32);
  for (let i = 0; i < out.length; i++) out[i] = c.subarray(i * 32, i * 32 + 32);
  return out;
}

/** A chunk list packed (see Have). */
function packChunks(hexes: string[]): Uint8Array {
  const out = new Uint8Array(hexes.length * 32);
  for (let i = 0; i < hexes.length; i++) out.set(hexToBytes(hexes[i]), i * 32);
  return out;
}

/** The store lost content a record names: the client backs up again and sends it. */
function lost(path: string, hex: string): KeepError {
  return new KeepError(
    "conflict",
    `Cannot record ${JSON.stringify(path)}: the store no longer has its content (${
      hex.slice(0, 12)
    }…); back up again`,
  );
}

/** Tasks run up to `n` at a time, their results taken (next) in the order added. */
class Ahead<T> {
  #queue: (() => Promise<T>)[] = [];
  #started: Promise<T>[] = [];
  #taken = 0;
  constructor(readonly n: number) {}

  add(task: () => Promise<T>): void {
    this.#queue.push(task);
    this.#fill();
  }

  /** The result of the next task added (its error, if it failed). */
  next(): Promise<T> {
    this.#fill();
    const p = this.#started[this.#taken++];
    this.#fill();
    return p;
  }

  /** Starts no more; waits for the started ones to end. */
  async settle(): Promise<void> {
    this.#queue = [];
    await Promise.allSettled(this.#started);
  }

  #fill(): void {
    while (this.#started.length - this.#taken < this.n && this.#queue.length) {
      const p = this.#queue.shift()!();
      p.catch(() => {}); // taken, with its error, by next()
      this.#started.push(p);
    }
  }
}

/**
 * The size over which a store keeps files as chunks, or null when it keeps
 * every file whole (an index without chunks, or `serve --chunk-over off`):
 * then it takes no chunk entries and no file named by its chunks either.
 */
export function chunkThreshold(
  index: { readonly chunking?: boolean },
  limits: IngestLimits,
): number | null {
  if (!index.chunking) return null;
  return limits.chunkOverBytes === undefined ? CHUNKED_FILE_MIN : limits.chunkOverBytes;
}

/**
 * One file's content as it arrives: members in memory (small), a sink
 * (large), or handed to `put` as they come (a chunk: the ingest's batch
 * buffer, see Ingest.#putMember).
 */
class BlobBuilder {
  #parts: Uint8Array[] = [];
  #pendingRaw: Uint8Array[] = [];
  #pendingRawLen = 0;
  #sink: LargeSink | null;
  #put: ((member: Uint8Array) => void) | null;
  #level: number;
  #encode: MemberEncoder | undefined;
  /** Stored bytes so far. */
  bytes = 0;
  /** Raw bytes that came split across members and were encoded here (garbage once done). */
  reencoded = 0;

  constructor(
    sink: LargeSink | null,
    level: number,
    encode?: MemberEncoder,
    put: ((member: Uint8Array) => void) | null = null,
  ) {
    this.#sink = sink;
    this.#put = put;
    this.#level = level;
    this.#encode = encode;
  }

  /**
   * Adds an already-encoded member carrying the next raw bytes; `transient`:
   * the bytes are only valid during this call.
   */
  addMember(member: Uint8Array, transient = false): void {
    this.#flushRaw();
    this.#emit(transient && !this.#sink && !this.#put ? member.slice() : member);
  }

  /**
   * Adds raw bytes that arrived split across members (a member holding the
   * end of one file and a tar header): re-encoded here, each new member
   * decoded back and compared before it is kept (see encodeChecked).
   */
  addRaw(raw: Uint8Array): void {
    this.#pendingRaw.push(raw.slice());
    this.#pendingRawLen += raw.length;
    this.reencoded += raw.length;
    if (this.#pendingRawLen >= MAX_MEMBER_RAW) this.#flushRaw();
  }

  #flushRaw(): void {
    if (this.#pendingRawLen === 0) return;
    const all = concatBytes(this.#pendingRaw);
    this.#pendingRaw = [];
    this.#pendingRawLen = 0;
    for (let i = 0; i < all.length; i += MAX_MEMBER_RAW) {
      const raw = all.subarray(i, i + MAX_MEMBER_RAW);
      this.#emit(encodeChecked(raw, this.#level < 0 ? "auto" : this.#level, this.#encode));
    }
  }

  #emit(member: Uint8Array): void {
    if (this.#sink) this.#sink.write(member);
    else if (this.#put) this.#put(member);
    else {
      this.#parts.push(member);
      // Parts live until their batch is flushed and get promoted: counted for
      // a full GC now and then (see DESIGN.md, "Server memory").
      churned(member.length / 2, true);
    }
    this.bytes += member.length;
  }

  /** Ends the content: the small blob's bytes, or its sink (large). */
  end(): { data: Uint8Array | null; sink: LargeSink | null } {
    this.#flushRaw();
    const data = this.#sink || this.#put ? null : concatBytes(this.#parts);
    this.#parts = [];
    return { data, sink: this.#sink };
  }

  abort(): Promise<void> {
    this.#parts = [];
    return this.#sink?.abort() ?? Promise.resolve();
  }
}

/** A file's content waiting for its batch: stored unless the store has it. */
interface PendingBlob {
  hash: Uint8Array;
  hex: string;
  size: number;
  xxh: Uint8Array;
  stored: number;
  data: Uint8Array | null;
  sink: LargeSink | null;
  /** A chunked file: its chunks' hashes (the chunks are blobs of their own, queued before it). */
  chunks?: Uint8Array[];
}

/** The chunk of a big file being received (see #onData). */
interface ChunkState {
  builder: BlobBuilder;
  sha: Hash;
  xxh: PartialHasher;
  size: number;
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

/** What a finished upload recorded. */
export interface IngestResult {
  commit: CommitInfo;
  /** The paths the commit touched, sorted (null when many). */
  changedPaths: string[] | null;
}

/**
 * Receives one upload for `project`. Push body chunks (and await `flush`
 * whenever `wantsFlush`), then `finish` for the new commit. On any error
 * call `abort`: nothing is committed and temp files are removed; blobs
 * already stored stay (content-addressed, reused later, reported as orphans
 * by verify until referenced).
 *
 * @example
 * ```ts
 * const ingest = await Ingest.start(storage, "app");
 * for await (const chunk of body) {
 *   ingest.push(chunk);
 *   if (ingest.wantsFlush) await ingest.flush();
 * }
 * const { commit } = await ingest.finish();
 * ```
 */
export class Ingest {
  readonly project: string;
  #storage: Storage;
  #stage: UploadStage;
  #limits: IngestLimits;
  /** Files over this size are kept as chunks; null: all whole (see chunkThreshold). */
  readonly #chunkOver: number | null;
  #level: number;
  #encode: MemberEncoder | undefined;
  #reader: ArchiveReader;
  #phase: Phase = "header";
  #header: UploadHeader | null = null;
  #headerChecked = false;
  #control: Uint8Array[] = [];
  #lines: LineSplitter | null = null;
  #lastPath = "";
  #entry: Entry | null = null;
  #sha: Hash | null = null;
  #xxh = new PartialHasher();
  #blob: BlobBuilder | null = null;
  #pendingRows: StageRow[] = [];
  #pendingBlobs: PendingBlob[] = [];
  /** The batch flush() is working on: abort() drops the sinks it has not finished. */
  #flushing: PendingBlob[] = [];
  #pendingBytes = 0;
  #pendingLarge = 0;
  /** The batch's small blob bytes, back to back (see #hold). */
  #held = new Uint8Array(0);
  #heldBytes = 0;
  /** Where the open chunk's stored bytes start in #held (they run to #heldBytes). */
  #chunkAt = 0;
  #withdrawals: { path: string; reason: string }[] = [];
  /** `have` records: content the client proves it holds, checked at finish (`c`: its chunks). */
  #haves: Have[] = [];
  /** Bytes of the files `have` records name by chunks. */
  #named = 0;
  /** Chunks `have` records listed (at most UPLOAD_CHUNKS_MAX). */
  #listed = 0;
  /** Chunks the chunked files waiting for the next flush list. */
  #pendingRefs = 0;
  /** A `chunk` control entry is being received (one chunk of a file sent in part). */
  #chunkEntry = false;
  /** The chunks `chunk` entries of this upload carried (hex). */
  #sentChunks = new Set<string>();
  #pack: PackSink | null = null;
  /** The last batch's pack write and rows, still going (object stores: see flush). */
  #tail: Promise<void> | null = null;
  /** Batches still going (each settles after the one before), and their new contents (hex). */
  #inFlight: { done: Promise<void>; hexes: string[] }[] = [];
  #unstaged = new Set<string>();
  /** Batches whose PUT or rows are still going. */
  #storing = 0;
  /** The sink of the large file being received, if any. */
  #currentSink: LargeSink | null = null;
  /** A chunked file being received: its current chunk and the hashes of those done. */
  #chunk: ChunkState | null = null;
  #chunkList: Uint8Array[] = [];
  #chunkStored = 0;
  #entries = 0;
  #declared = 0;
  /** The quota and free-space room measured when the upload was admitted. */
  #room: {
    quota?: { used: number; quota: number };
    free?: { free: number; reserve: number };
  } = {};
  #started = performance.now();
  #closed = false;
  /** Bytes of body received. */
  wireBytes = 0;
  filesReceived = 0;
  bytesReceived = 0;
  newBlobs = 0;
  newBlobBytes = 0;
  /** Blobs marked damaged that this upload's content replaced. */
  repairedBlobs = 0;
  /** Files recorded from `have` records (content proven, not sent), and their bytes. */
  filesProven = 0;
  bytesProven = 0;

  private constructor(
    storage: Storage,
    stage: UploadStage,
    project: string,
    options: IngestOptions,
  ) {
    this.#storage = storage;
    this.#stage = stage;
    this.project = project;
    this.#limits = options.limits ?? DEFAULT_LIMITS;
    this.#chunkOver = chunkThreshold(storage.index, this.#limits);
    this.#level = options.level ?? -1;
    this.#encode = options.encode;
    this.#reader = new ArchiveReader({
      entry: (h) => this.#onEntry(h),
      data: (c) => this.#onData(c),
      entryEnd: () => this.#onEntryEnd(),
    });
  }

  /** Starts an upload for `project`. */
  static async start(
    storage: Storage,
    project: string,
    options: IngestOptions = {},
  ): Promise<Ingest> {
    return new Ingest(storage, await storage.index.beginUpload(project), project, options);
  }

  /** The upload's commit header, once read. */
  get header(): UploadHeader | null {
    return this.#header;
  }

  /** True when a batch (or the header's check) waits for `flush`. */
  get wantsFlush(): boolean {
    return (this.#header !== null && !this.#headerChecked) ||
      this.#pendingRows.length >= BATCH_ROWS || this.#pendingBytes >= BATCH_BYTES ||
      this.#pendingLarge >= BATCH_LARGE || (this.#currentSink?.pending ?? 0) >= BATCH_BYTES;
  }

  /**
   * True while batches are being stored behind the body (object stores:
   * pack PUTs, then rows): their I/O advances only when the event loop
   * turns, which the body's reads alone need not let it do.
   */
  get storing(): boolean {
    return this.#storing > 0;
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
    this.#reader.push(chunk);
  }

  /** Writes the waiting batch: durable bytes first, then their rows. */
  async flush(): Promise<void> {
    if (this.#header && !this.#headerChecked) {
      // The parent need not be the head (hosts committing at once land in a
      // chain: see IndexStore's UploadStage.commit), but it must be a commit.
      const parent = this.#header.parent;
      await this.#stage.pin(parent);
      const head = await this.#storage.index.headCommit(this.project);
      if (parent !== null && parent !== head?.id) {
        const found = await this.#storage.index.resolveCommit(this.project, parent).catch(
          (err) => {
            if (err instanceof KeepError && err.code === "not_found") return null;
            throw err;
          },
        );
        if (found?.id !== parent) {
          throw new KeepError(
            "conflict",
            `Cannot commit: parent ${parent} is not a commit of ${this.project}; the head is ${
              head?.id ?? "none"
            }`,
          );
        }
      }
      await this.#admit(this.#header);
      this.#headerChecked = true;
    } else if (this.#limits.minFreeBytes) {
      // Other uploads may be eating the reserve: stop before the disk is full.
      const free = await this.#storage.blobs.freeBytes();
      if (free !== null && free < this.#limits.minFreeBytes / 2) {
        throw new KeepError(
          "unavailable",
          `Cannot accept upload: the store is down to ${
            formatBytes(free)
          } free, under half its reserve of ${
            formatBytes(this.#limits.minFreeBytes)
          } (serve --min-free); nothing was committed`,
        );
      }
    }
    await this.#putRoom();
    // The current large file's sink may hold too much unwritten: let it catch up.
    if (this.#currentSink?.pending) await this.#currentSink.drain();
    const rows = this.#pendingRows;
    const blobs = this.#pendingBlobs;
    if (rows.length === 0 && blobs.length === 0) return;
    this.#pendingRows = [];
    this.#pendingBlobs = [];
    this.#pendingRefs = 0;
    this.#flushing = blobs;
    this.#pendingBytes = 0;
    this.#pendingLarge = 0;
    const drop = async (b: PendingBlob) => {
      const sink = b.sink;
      b.sink = null;
      await sink?.abort();
    };
    // The same content twice in this batch is stored once; in an earlier
    // batch, its row is in the index by now and knownBlobs finds it, or that
    // batch is still in flight (its rows go in before this one's).
    const seen = new Set<string>();
    const fresh: PendingBlob[] = [];
    for (const b of blobs) {
      if (seen.has(b.hex) || this.#unstaged.has(b.hex)) await drop(b);
      else {
        seen.add(b.hex);
        fresh.push(b);
      }
    }
    const known = fresh.length
      ? await this.#storage.index.knownBlobs(fresh.map((b) => b.hash))
      : new Set<string>();
    const added: NewBlob[] = [];
    let packed = false;
    for (const b of fresh) {
      if (known.has(b.hex)) {
        await drop(b);
        continue;
      }
      let pack: number | null = null;
      let offset: number | null = null;
      if (b.chunks) {
        // Its bytes are its chunks' (queued before it): a row and a list.
        added.push({
          hash: b.hash,
          size: b.size,
          stored: b.stored,
          xxh: b.xxh,
          pack,
          offset,
          chunks: b.chunks,
        });
        this.newBlobs++;
        continue;
      }
      if (b.data) {
        if (!this.#pack) {
          this.#pack = this.#storage.blobs.openPack(await this.#storage.index.newPack());
        }
        pack = this.#pack.pack;
        offset = this.#pack.add(b.data);
        packed = true;
      } else {
        const sink = b.sink!;
        b.sink = null;
        offset = await sink.finish(b.hex); // a large blob's generation
      }
      added.push({ hash: b.hash, size: b.size, stored: b.stored, xxh: b.xxh, pack, offset });
      this.newBlobs++;
      this.newBlobBytes += b.stored;
    }
    // The pack sink copied or wrote every held blob; the open chunk's bytes
    // (the tail of #held: nothing else is held while a chunk is open) move
    // to the front.
    const from = this.#chunk ? this.#chunkAt : this.#heldBytes;
    this.#held.copyWithin(0, from, this.#heldBytes);
    this.#heldBytes -= from;
    this.#chunkAt = 0;
    this.#flushing = [];
    if (this.#storage.blobs.flushEndsPack) {
      // An object store: this batch's pack is one object, its PUT started
      // now, while the next batches arrive (up to PUTS_IN_FLIGHT at once).
      // Its rows go in once its PUT is done and the batch before it has its
      // rows in (a chain): rows name only durable bytes, batches stay in
      // order, and a failed PUT fails every batch after it (finish and abort
      // wait for the chain).
      const pack = this.#pack;
      this.#pack = null;
      this.#chain(pack ? closeAndSeal(this.#storage, pack) : Promise.resolve(), rows, added);
      return;
    }
    // A local pack: this batch's bytes are written now; its fsync runs off
    // the event loop while the next batches arrive, and its rows go in once
    // it is done, after the batch before's (the chain above): rows name
    // only durable bytes, and names (a new pack's directory entry).
    this.#chain(packed ? this.#pack!.flush() : Promise.resolve(), rows, added);
    if (this.#pack && this.#pack.size >= PACK_ROTATE) {
      await this.#settle();
      await this.#closePack();
    }
  }

  /**
   * Chains a batch's rows behind `durable` (its bytes stored: a PUT, an
   * fsync) and behind the batch before's rows; finish, abort and a later
   * flush await the chain.
   */
  #chain(durable: Promise<void>, rows: StageRow[], added: NewBlob[]): void {
    durable.catch(() => {}); // awaited in the chain
    const before = this.#tail;
    const hexes = added.map((a) => bytesToHex(a.hash));
    for (const h of hexes) this.#unstaged.add(h);
    const done = (async () => {
      await before;
      await durable;
      this.repairedBlobs += await this.#stage.stage(rows, added);
    })();
    this.#storing++;
    done.catch(() => {}).finally(() => this.#storing--);
    this.#tail = done;
    this.#inFlight.push({ done, hexes });
  }

  /**
   * Copies a small blob's bytes into the batch buffer, so the file's own
   * buffers die young: kept in a list until the flush, they outlived
   * scavenges and piled up as old garbage (server peak +80 MB on 100k small
   * files). The buffer grows to a batch and is reused for every batch.
   */
  #hold(data: Uint8Array): Uint8Array {
    const need = this.#heldBytes + data.length;
    if (need > HELD_MAX) return data; // past a batch (one push ended many files): rare
    this.#heldRoom(need);
    const at = this.#heldBytes;
    this.#held.set(data, at);
    this.#heldBytes = need;
    return this.#held.subarray(at, need);
  }

  /**
   * Appends a member of the open chunk to #held: a chunk's members go
   * straight into the batch buffer (no list of copies, no concatenation,
   * nothing for the GC: 1.3 GB of big files made ~80 full GCs that way).
   * #held then holds the batch (flushed past BATCH_BYTES), one body chunk's
   * worth past it, and the open chunk (at most CHUNK_STORED_MAX).
   */
  #putMember = (member: Uint8Array): void => {
    const need = this.#heldBytes + member.length;
    if (need - this.#chunkAt > CHUNK_STORED_MAX) {
      throw new KeepError(
        "invalid",
        `Cannot accept upload: a chunk of ${
          JSON.stringify(this.#entry?.path ?? "a chunk entry")
        } stores more than ${CHUNK_STORED_MAX} bytes (its members are padded past stored blocks)`,
      );
    }
    this.#heldRoom(need);
    this.#held.set(member, this.#heldBytes);
    this.#heldBytes = need;
  };

  /** Grows #held to at least `need` bytes, moving the views of the blobs held so far. */
  #heldRoom(need: number): void {
    if (need <= this.#held.length) return;
    // Doubling: bounded by a batch, a body chunk and an open chunk (~16 MiB).
    let size = Math.max(this.#held.length, 1 << 20);
    while (size < need) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.#held.subarray(0, this.#heldBytes));
    for (const b of this.#pendingBlobs) {
      if (b.data && b.data.buffer === this.#held.buffer) {
        b.data = grown.subarray(b.data.byteOffset, b.data.byteOffset + b.data.length);
      }
    }
    this.#held = grown;
  }

  /** Waits for the batches an object store is still writing (see flush); throws a failure. */
  async #settle(): Promise<void> {
    const tail = this.#tail;
    this.#tail = null;
    this.#inFlight = [];
    this.#unstaged.clear();
    await tail;
  }

  /** Waits until fewer than PUTS_IN_FLIGHT batches are in flight; throws a failure. */
  async #putRoom(): Promise<void> {
    while (this.#inFlight.length >= PUTS_IN_FLIGHT) {
      const { done, hexes } = this.#inFlight.shift()!;
      await done;
      for (const h of hexes) this.#unstaged.delete(h);
    }
  }

  async #closePack(): Promise<void> {
    const pack = this.#pack;
    this.#pack = null;
    if (pack) await closeAndSeal(this.#storage, pack);
  }

  /**
   * Refuses, before anything is stored, an upload that would take the
   * project past its quota (raw bytes sent count in full: dedup and
   * compression are not known yet) or the store under its free-space reserve.
   */
  async #admit(header: UploadHeader): Promise<void> {
    const quota = (await this.#storage.index.getPolicy(this.project))?.quotaBytes;
    if (quota !== undefined) {
      const used = (await this.#storage.index.projectUsage(this.project)).storedBytes;
      this.#room.quota = { used, quota };
    }
    const reserve = this.#limits.minFreeBytes ?? 0;
    if (reserve > 0) {
      const free = await this.#storage.blobs.freeBytes();
      if (free !== null) this.#room.free = { free, reserve };
    }
    // What the client says it sends refuses early; what its entries declare
    // (so far, and as more arrive) is held to the same room: the header's
    // figure is optional. Nothing is stored before this first flush.
    this.#checkRoom(Math.max(header.bytes ?? 0, this.#declared));
  }

  /**
   * Throws when `bytes` more raw bytes would take the project past its quota
   * or the store under its reserve. Sending nothing is always allowed (a
   * backup that only deletes, or changes metadata, of a project over its quota).
   */
  #checkRoom(bytes: number): void {
    if (bytes <= 0) return;
    const q = this.#room.quota;
    if (q && q.used + bytes > q.quota) {
      throw new KeepError(
        "quota",
        `Cannot back up ${this.project}: it holds ${
          formatBytes(q.used)
        } and this backup sends at least ${formatBytes(bytes)}, past its quota of ${
          formatBytes(q.quota)
        }; prune it or raise the quota (keep policy set --quota)`,
      );
    }
    const f = this.#room.free;
    if (f && f.free - bytes < f.reserve) {
      throw new KeepError(
        "unavailable",
        `Cannot accept upload: the store has ${
          formatBytes(f.free)
        } free and this backup sends at least ${formatBytes(bytes)}; the server keeps ${
          formatBytes(f.reserve)
        } in reserve (serve --min-free)`,
      );
    }
  }

  /** Ends the upload and records the commit. */
  async finish(): Promise<IngestResult> {
    this.#reader.end();
    if (this.#phase !== "end") {
      throw new KeepError(
        "invalid",
        "Cannot accept upload: the archive has no change list (.keep-changes.ndjson)",
      );
    }
    await this.flush();
    // Chunks sent for files sent in part must be in the index before their check.
    await this.#settle();
    await this.#checkHaves();
    await this.flush();
    await this.#settle();
    await this.#closePack();
    for (const w of this.#withdrawals) await this.#stage.withdraw(w.path, w.reason);
    const { commit, changed } = await this.#stage.commit(this.#header!, {
      filesReceived: this.filesReceived,
      bytesReceived: this.bytesReceived,
      wireBytes: this.wireBytes,
      newBlobs: this.newBlobs,
      newBlobBytes: this.newBlobBytes,
      seconds: Math.round(performance.now() - this.#started) / 1000,
    });
    this.#closed = true;
    return { commit, changedPaths: changed };
  }

  /**
   * Checks every `have` record's proof against the stored content and stages
   * the file as sent (a `put` with the stored content). knownBlobs first:
   * it unmarks content GC marked, the way every upload counts on stored
   * content (docs/DESIGN.md, "The invariant"). Any failure refuses the upload.
   */
  async #checkHaves(): Promise<void> {
    const keys = new Map<string, Uint8Array>();
    const keyOf = (nonce: string) => {
      let key = keys.get(nonce);
      if (!key) keys.set(nonce, key = possessionKeys.keyFor(this.project, nonce));
      return key;
    };
    for (let i = 0; i < this.#haves.length; i += BATCH_ROWS) {
      const batch = this.#haves.slice(i, i + BATCH_ROWS);
      const whole = batch.filter((h) => !h.c);
      const known = whole.length
        ? await this.#storage.index.knownBlobs(whole.map((h) => hexToBytes(h.e.hash!)))
        : new Set<string>();
      // The chunked files' checks run two at a time (an object store's reads
      // overlap), ahead of the loop below.
      const checks = new Ahead<PossessedChunks>(2);
      try {
        for (const h of batch) {
          if (!h.c) continue;
          await this.#mayNameChunks(h as Have & { c: Uint8Array });
          checks.add(() =>
            checkChunkedPossession(
              this.#storage,
              h.e.path,
              h.e.hash ?? null,
              h.e.size,
              h.proof === undefined ? null : { key: keyOf(h.n!), proof: h.proof },
              h.c!,
            )
          );
        }
        for (const h of batch) {
          let hex = h.e.hash!;
          let xxh: string;
          if (h.c) {
            const checked = await checks.next();
            hex = checked.hash;
            xxh = checked.xxh;
            // Its row follows its chunks' (durable) rows, in the next flush.
            this.#pendingBlobs.push({
              hash: hexToBytes(hex),
              hex,
              size: h.e.size,
              xxh: hexToBytes(xxh),
              stored: checked.stored,
              data: null,
              sink: null,
              chunks: chunkHashes(h.c),
            });
            this.#pendingRefs += h.c.length / 32;
          } else {
            if (!known.has(hex)) throw lost(h.e.path, hex);
            xxh = (await checkPossession(
              this.#storage,
              h.e.path,
              hex,
              h.e.size,
              keyOf(h.n!),
              h.proof!,
            )).xxh;
          }
          const entry: Entry = { ...h.e, hash: hex, xxh };
          delete entry.flag;
          this.#pendingRows.push({
            op: "put",
            path: entry.path,
            entry,
            hashBytes: hexToBytes(hex),
            xxhBytes: hexToBytes(xxh),
          });
          this.filesProven++;
          this.bytesProven += entry.size;
          // Chunk lists waiting for their rows cost ~110 bytes a chunk.
          if (this.#pendingRefs >= REFS_FLUSH) await this.flush();
        }
      } catch (err) {
        await checks.settle(); // nothing of this upload runs on after it failed
        throw err;
      }
      if (this.wantsFlush) await this.flush();
    }
    this.#haves = [];
  }

  /**
   * Refuses a file named by chunks the store lacks, or, without a proof, by
   * chunks that are neither the project's own nor sent in this upload.
   */
  async #mayNameChunks(h: Have & { c: Uint8Array }): Promise<void> {
    // A file sent in part: its chunks are stored (sent in this upload or
    // held before). Without a proof each is the project's own or was
    // sent; the server hashes the file itself from them.
    if (this.#chunkOver === null) {
      throw new KeepError(
        "conflict",
        `Cannot record ${
          JSON.stringify(h.e.path)
        }: this store keeps big files whole, not as chunks; back up again`,
      );
    }
    const unique = [...new Set(chunkHashes(h.c).map(bytesToHex))];
    const held = await this.#storage.index.knownBlobs(unique.map(hexToBytes));
    const gone = unique.find((c) => !held.has(c));
    if (gone) throw lost(h.e.path, gone);
    if (h.proof !== undefined) return;
    const others = unique.filter((c) => !this.#sentChunks.has(c));
    const own = others.length
      ? await this.#storage.index.projectChunks?.(this.project, others.map(hexToBytes))
      : new Set<string>();
    const foreign = others.find((c) => !own?.has(c));
    if (foreign) {
      // A conflict, not a refusal: the chunk may have been the project's
      // when the client asked (a prune since swept that file), and a new
      // attempt negotiates again and proves it.
      throw new KeepError(
        "conflict",
        `Cannot record ${JSON.stringify(h.e.path)}: its chunk ${
          foreign.slice(0, 12)
        }… is not one of ${this.project}'s (any more) and comes without a proof of possession; nothing was recorded; back up again`,
      );
    }
  }

  /** Drops everything staged and removes temp files. Safe to call twice. */
  async abort(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const quietly = async (f: () => Promise<void> | undefined) => {
      try {
        await f();
      } catch { /* the disk may be full, the index closing: nothing more to save */ }
    };
    await quietly(() => this.#blob?.abort());
    this.#blob = null;
    for (const b of [...this.#pendingBlobs, ...this.#flushing]) {
      await quietly(() => b.sink?.abort());
    }
    this.#pendingBlobs = [];
    this.#flushing = [];
    this.#held = new Uint8Array(0);
    this.#heldBytes = 0;
    await quietly(() => this.#settle());
    // Bytes of earlier batches stay in the pack: their rows were inserted.
    await quietly(() => this.#closePack());
    await quietly(() => this.#stage.abort());
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
      this.#lines = new LineSplitter(CHANGE_LINE_MAX, "upload's change list");
      return;
    }
    if (control === "chunk") {
      // One chunk of a big file sent in part: a blob of its own, no path of
      // the tree (its file comes as a `have` record listing its chunks).
      this.#count();
      if (this.#chunkOver === null) {
        // A conflict: the client negotiated before the server was restarted
        // with --chunk-over off; it asks again and sends whole files.
        throw new KeepError(
          "conflict",
          "Cannot accept upload: this store keeps big files whole; back up again to send them without chunk entries",
        );
      }
      if (h.type !== "file" || h.size === 0 || h.size > CHUNK_ENTRY_MAX) {
        throw new KeepError(
          "invalid",
          `Cannot accept chunk entry ${
            JSON.stringify(h.path)
          }: a chunk is a file of 1 to ${CHUNK_ENTRY_MAX} bytes`,
        );
      }
      this.#declared += h.size;
      this.#checkRoom(this.#declared);
      this.#chunkEntry = true;
      this.#chunkList = [];
      this.#chunkStored = 0;
      this.#chunk = this.#newChunk();
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
      type: entryTypeOf(h.type),
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
      if (h.size > 0) this.#checkRoom(this.#declared);
      if (this.#declared > this.#limits.maxUploadBytes) {
        throw new KeepError(
          "too_large",
          `Cannot accept upload: declared file sizes exceed the limit of ${this.#limits.maxUploadBytes} bytes`,
        );
      }
      this.#sha = createHash("sha256");
      this.#xxh.reset();
      const chunkOver = this.#chunkOver;
      if (chunkOver !== null && h.size > chunkOver) {
        // Stored as chunks (each a blob, in the batch's pack), no blob of its own.
        this.#currentSink = null;
        this.#blob = null;
        this.#chunkList = [];
        this.#chunkStored = 0;
        this.#chunk = this.#newChunk();
      } else {
        this.#currentSink = h.size > PACK_MAX ? this.#storage.blobs.openLarge() : null;
        this.#blob = new BlobBuilder(this.#currentSink, this.#level, this.#encode);
      }
    }
  }

  #onData(chunk: Uint8Array): void {
    if (this.#phase === "header" || this.#phase === "changes") {
      if (this.#phase === "changes") {
        for (const line of this.#lines!.push(chunk)) this.#onChange(line);
        return;
      }
      this.#control.push(chunk.slice());
      return;
    }
    // A member holding only this file's bytes is kept as it came.
    const whole = this.#reader.wholeMember(chunk);
    const c = this.#chunk;
    if (this.#chunkEntry) {
      // The entry is the chunk, whatever its members.
      if (whole) c!.builder.addMember(whole.member, whole.carried);
      else c!.builder.addRaw(chunk);
      c!.sha.update(chunk);
      c!.xxh.update(chunk);
      c!.size += chunk.length;
      this.bytesReceived += chunk.length;
      return;
    }
    this.#sha!.update(chunk);
    this.#xxh.update(chunk);
    if (c) {
      if (whole) c.builder.addMember(whole.member, whole.carried);
      else c.builder.addRaw(chunk);
      c.sha.update(chunk);
      c.xxh.update(chunk);
      c.size += chunk.length;
      // Where the client's members say (a piece not a whole member is cut
      // only by size).
      if (memberEndsChunk(whole ? chunk.length : MAX_MEMBER_RAW, c.size)) this.#endChunk();
    } else if (whole) this.#blob!.addMember(whole.member, whole.carried);
    else this.#blob!.addRaw(chunk);
    this.bytesReceived += chunk.length;
  }

  #newChunk(): ChunkState {
    this.#chunkAt = this.#heldBytes;
    return {
      builder: new BlobBuilder(null, this.#level, this.#encode, this.#putMember),
      sha: createHash("sha256"),
      xxh: new PartialHasher(),
      size: 0,
    };
  }

  /** Queues the current chunk as a blob of the batch and starts the next. */
  #endChunk(): void {
    const c = this.#chunk!;
    if (c.size === 0) return;
    c.builder.end();
    const data = this.#held.subarray(this.#chunkAt, this.#heldBytes);
    const digest = c.sha.digest();
    this.#pendingBlobs.push({
      hash: digest,
      hex: digest.toString("hex"),
      size: c.size,
      xxh: hexToBytes(c.xxh.digest()),
      stored: data.length,
      data,
      sink: null,
    });
    this.#pendingBytes += data.length;
    this.#chunkList.push(digest);
    this.#chunkStored += data.length;
    // Raw pieces encoded here are garbage now: counted for a full GC, or
    // the server's peak climbs (members that came whole left none).
    if (c.builder.reencoded) churned(c.builder.reencoded * 2, true);
    this.#chunk = this.#newChunk();
  }

  #onEntryEnd(): void {
    if (this.#phase === "header") {
      this.#header = parseUploadHeader(new TextDecoder().decode(concatBytes(this.#control)));
      this.#control = [];
      this.#phase = "entries";
      return;
    }
    if (this.#phase === "changes") {
      for (const line of this.#lines!.end()) this.#onChange(line);
      this.#phase = "end";
      return;
    }
    if (this.#chunkEntry) {
      this.#endChunk();
      this.#sentChunks.add(bytesToHex(this.#chunkList[0]));
      this.#chunk = null;
      this.#chunkList = [];
      this.#chunkEntry = false;
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
      this.filesReceived++;
      if (this.#chunk) {
        this.#endChunk();
        this.#chunk = null;
        this.#pendingBlobs.push({
          hash: digest,
          hex,
          size: entry.size,
          xxh: xxhBytes,
          stored: this.#chunkStored,
          data: null,
          sink: null,
          chunks: this.#chunkList,
        });
        this.#chunkList = [];
        this.#pendingRows.push({ op: "put", path: entry.path, entry, hashBytes, xxhBytes });
        return;
      }
      const blob = this.#blob!;
      this.#blob = null;
      this.#currentSink = null;
      if (entry.size > 0) {
        const { data, sink } = blob.end(); // encodes what is left first
        sink?.complete?.(hex);
        const stored = blob.bytes;
        this.#pendingBlobs.push({
          hash: digest,
          hex,
          size: entry.size,
          xxh: xxhBytes,
          stored,
          data: data && this.#hold(data),
          sink,
        });
        if (data) this.#pendingBytes += data.length;
        else this.#pendingLarge++;
      } else {
        blob.abort();
        if (hex !== EMPTY_SHA256) throw new KeepError("internal", "Cannot hash empty file");
      }
    }
    this.#pendingRows.push({ op: "put", path: entry.path, entry, hashBytes, xxhBytes });
  }

  #onChange(line: string): void {
    this.#count();
    const r = parseChangeRecord(line);
    switch (r.op) {
      case "del":
        this.#pendingRows.push({ op: "del", path: r.p });
        return;
      case "meta":
        this.#pendingRows.push({ op: "meta", path: r.e.path, entry: r.e });
        return;
      case "have":
        if (r.c) {
          // The server reads and hashes what a chunk list names, however
          // little came over the wire: bounded like bytes sent.
          this.#named += r.e.size;
          if (this.#named > this.#limits.maxUploadBytes) {
            throw new KeepError(
              "too_large",
              `Cannot accept upload: files named by their chunks exceed the limit of ${this.#limits.maxUploadBytes} bytes`,
            );
          }
        }
        if (r.c && (this.#listed += r.c.length) > UPLOAD_CHUNKS_MAX) {
          throw new KeepError(
            "too_large",
            `Cannot accept upload: its have records list more than ${UPLOAD_CHUNKS_MAX} chunks in all (a client of this version sends the rest whole; an older one can back up with --no-negotiate)`,
          );
        }
        this.#haves.push({ e: r.e, n: r.n, proof: r.proof, c: r.c && packChunks(r.c) });
        return;
      case "keep":
        this.#pendingRows.push({ op: "keep", path: r.p, flag: r.flag, reason: r.reason });
        return;
      case "drop":
        // Applied once every sent file is staged (at finish).
        this.#withdrawals.push({ path: r.p, reason: r.reason });
        return;
    }
  }
}
