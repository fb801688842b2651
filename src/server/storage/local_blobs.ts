/**
 * Content-addressed blob storage. A blob is one file content, keyed by its
 * SHA-256, kept as the Keep-framed gzip members it arrived in (see
 * gzip_member.ts), so it is never compressed twice and a restore sends it as
 * is. Dedup is global across projects.
 *
 * Where blobs live (measured, see docs/DESIGN.md):
 * - up to PACK_MAX raw bytes: appended to pack files `packs/<id>.pack`, one
 *   writer per upload, located by (pack, offset) in the index. As SQLite
 *   BLOBs they cost ~25% in page slack and were written twice (WAL, then
 *   checkpoint); as one file each, per-file creates dominate (1.4–2.4k/s).
 * - larger: one file each at `blobs/<2 hex>/<2 hex>/<sha256>`, written to
 *   `tmp/`, fsync'd, renamed.
 * Rows are inserted only after their bytes are fsync'd, so a row never
 * points at data a crash could lose; a crash leaves at most unreferenced
 * bytes at the end of a pack (reported by verify).
 *
 * @module
 */

import { join } from "node:path";
import { KeepError } from "../../errors.ts";
import { decodeMemberTransient, MemberSplitter } from "../../format/gzip_member.ts";
import { type BlobPlace, bytesToHex, hexToBytes, type IndexDb } from "./sqlite_index.ts";

/** Largest raw blob kept in a pack file. */
export const PACK_MAX = 1 << 20;
/** A pack is closed once it is this big; the next blob starts a new one. */
const PACK_ROTATE = 1 << 30;
const WRITE_BUFFER = 1 << 20;

/** A blob row waiting to be inserted. */
export interface PendingBlob {
  hash: Uint8Array;
  size: number;
  stored: number;
  /** Partial hash (xxHash64 of head + tail + size) computed by the server. */
  xxh: Uint8Array;
  /** Pack id and offset; null for file blobs. */
  pack: number | null;
  offset: number | null;
}

/** Blob metadata: where its bytes are. */
export type BlobInfo = BlobPlace;

/**
 * Appends blobs to pack files for one upload. `add` buffers; `sync` writes
 * and fsyncs, after which the rows it returned may be inserted.
 */
export class PackWriter {
  #store: BlobStore;
  #file: Deno.FsFile | null = null;
  #pack = 0;
  #size = 0;
  #buf = new Uint8Array(WRITE_BUFFER);
  #fill = 0;
  #newName = false;
  /** Bytes appended to packs by this writer. */
  bytes = 0;

  constructor(store: BlobStore) {
    this.#store = store;
  }

  /** Appends a blob's stored bytes; returns where they will be. */
  add(data: Uint8Array): { pack: number; offset: number } {
    if (!this.#file || this.#size >= PACK_ROTATE) this.#open();
    const at = { pack: this.#pack, offset: this.#size };
    if (this.#fill + data.length > this.#buf.length) this.#drain();
    if (data.length > this.#buf.length) writeAll(this.#file!, data);
    else {
      this.#buf.set(data, this.#fill);
      this.#fill += data.length;
    }
    this.#size += data.length;
    this.bytes += data.length;
    return at;
  }

  /** Makes everything added so far durable, including a new pack's name in packs/. */
  sync(): void {
    if (!this.#file) return;
    this.#drain();
    this.#file.syncSync();
    if (this.#newName) {
      this.#store.syncDirs([this.#store.packDir]);
      this.#newName = false;
    }
  }

  /** Syncs and closes the current pack, and seals it: no writer appends to it again. */
  close(): void {
    if (!this.#file) return;
    try {
      this.sync();
    } finally {
      this.#file.close();
      this.#file = null;
      this.#store.seal(this.#pack);
    }
  }

  #drain(): void {
    if (this.#fill) writeAll(this.#file!, this.#buf.subarray(0, this.#fill));
    this.#fill = 0;
  }

  #open(): void {
    this.close();
    this.#pack = this.#store.newPack();
    this.#file = Deno.openSync(this.#store.packPath(this.#pack), { write: true, createNew: true });
    this.#newName = true;
    this.#size = 0;
  }
}

function writeAll(f: Deno.FsFile, b: Uint8Array): void {
  let o = 0;
  while (o < b.length) o += f.writeSync(b.subarray(o));
}

/**
 * A Bloom filter over blob hashes, so that looking up content the store has
 * never seen (every file of a first backup) costs no SQLite query. The
 * SHA-256 bits are already uniform: the k probes are 32-bit words of the
 * hash. False positives fall through to SQLite; a false negative cannot
 * happen for hashes added here (and would only cost a duplicate write).
 */
class HashFilter {
  #bits: Uint32Array;
  #mask: number;
  #count = 0;
  constructor(expected: number) {
    let m = 1 << 23; // 8 Mbit = 1 MiB
    while (m < expected * 16) m *= 2;
    this.#bits = new Uint32Array(m / 32);
    this.#mask = m - 1;
  }
  /** True when the filter should be rebuilt larger. */
  get full(): boolean {
    return this.#count * 12 > this.#mask;
  }
  add(h: Uint8Array): void {
    for (let i = 0; i < 24; i += 4) {
      const bit = ((h[i] | (h[i + 1] << 8) | (h[i + 2] << 16) | (h[i + 3] << 24)) >>> 0) &
        this.#mask;
      this.#bits[bit >>> 5] |= 1 << (bit & 31);
    }
    this.#count++;
  }
  mayHave(h: Uint8Array): boolean {
    for (let i = 0; i < 24; i += 4) {
      const bit = ((h[i] | (h[i + 1] << 8) | (h[i + 2] << 16) | (h[i + 3] << 24)) >>> 0) &
        this.#mask;
      if ((this.#bits[bit >>> 5] & (1 << (bit & 31))) === 0) return false;
    }
    return true;
  }
}

/**
 * The blob store of one data directory.
 *
 * @example
 * ```ts
 * const store = BlobStore.open("/srv/keep", index);
 * for (const chunk of store.read(hash)) sink(chunk);
 * ```
 */
export class BlobStore {
  readonly dir: string;
  readonly packDir: string;
  readonly tmpDir: string;
  readonly index: IndexDb;
  #madeDirs = new Set<string>();
  #tmpSeq = 0;
  /** Open pack files for reading, most recently used last. */
  #readers = new Map<number, Deno.FsFile>();

  private constructor(dataDir: string, index: IndexDb) {
    this.dir = join(dataDir, "blobs");
    this.packDir = join(dataDir, "packs");
    this.tmpDir = join(dataDir, "tmp");
    this.index = index;
  }

  /**
   * Opens the store, creating its folders. `clean` (only for the process that
   * holds the data-dir lock, i.e. the server) removes temp files left by a
   * crash; other readers (verify, prune) must not touch uploads in progress.
   */
  static open(dataDir: string, index: IndexDb, options: { clean?: boolean } = {}): BlobStore {
    const s = new BlobStore(dataDir, index);
    Deno.mkdirSync(s.dir, { recursive: true });
    Deno.mkdirSync(s.packDir, { recursive: true });
    Deno.mkdirSync(s.tmpDir, { recursive: true });
    if (!options.clean) return s;
    // Packs a crashed process left open have no writer any more.
    index.stmt("UPDATE packs SET sealed = ? WHERE sealed IS NULL").run(Date.now());
    for (const e of Deno.readDirSync(s.tmpDir)) {
      try {
        Deno.removeSync(join(s.tmpDir, e.name), { recursive: true });
      } catch { /* another process may race us; harmless */ }
    }
    return s;
  }

  /** Where a file blob lives. */
  pathOf(hashHex: string): string {
    return join(this.dir, hashHex.slice(0, 2), hashHex.slice(2, 4), hashHex);
  }

  packPath(pack: number): string {
    return join(this.packDir, `${pack}.pack`);
  }

  /**
   * Registers a new pack file id, unsealed: its writer may still append to
   * it, so repack leaves it alone (see `seal` and docs/DESIGN.md).
   */
  newPack(): number {
    const r = this.index.stmt("INSERT INTO packs(created) VALUES (?)").run(Date.now());
    return Number(r.lastInsertRowid);
  }

  /** Marks a pack as closed for good: from now on only repack may rewrite or delete it. */
  seal(pack: number): void {
    this.index.stmt("UPDATE packs SET sealed = ? WHERE id = ? AND sealed IS NULL").run(
      Date.now(),
      pack,
    );
  }

  #filter: HashFilter | null = null;

  #loadFilter(): HashFilter {
    const n = Number((this.index.stmt("SELECT count(*) AS n FROM blobs").get() as { n: number }).n);
    const f = new HashFilter(n * 2);
    for (
      const r of this.index.db.prepare("SELECT hash FROM blobs").iterate() as Iterable<
        { hash: Uint8Array }
      >
    ) {
      f.add(r.hash);
    }
    return f;
  }

  /** True when the store holds sound content `hash` (a blob marked damaged does not count). */
  has(hash: Uint8Array): boolean {
    if (!this.#filter || this.#filter.full) this.#filter = this.#loadFilter();
    if (!this.#filter.mayHave(hash)) return false;
    return !!this.index.stmt("SELECT 1 FROM blobs WHERE hash = ? AND damaged IS NULL").get(hash);
  }

  info(hashHex: string): BlobInfo | null {
    const r = this.index.stmt("SELECT size, stored, pack, offset FROM blobs WHERE hash = ?")
      .get(hexToBytes(hashHex)) as Record<string, number | null> | undefined;
    return r
      ? {
        size: Number(r.size),
        stored: Number(r.stored),
        pack: r.pack === null ? null : Number(r.pack),
        offset: r.offset === null ? null : Number(r.offset),
      }
      : null;
  }

  /**
   * Inserts pending rows; call inside a transaction. Existing sound blobs are
   * kept; a row marked damaged takes the new bytes (a repair), and the head
   * entries its marking flagged are cleared. Returns the number repaired.
   */
  insert(rows: PendingBlob[]): number {
    const ins = this.index.stmt(
      `INSERT INTO blobs(hash, size, stored, xxh, pack, offset) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT(hash) DO UPDATE SET size = excluded.size, stored = excluded.stored,
         xxh = excluded.xxh, pack = excluded.pack, offset = excluded.offset, level = NULL,
         damaged = NULL
       WHERE blobs.damaged IS NOT NULL`,
    );
    const damaged = this.index.stmt("SELECT 1 FROM blobs WHERE hash = ? AND damaged IS NOT NULL");
    let repaired = 0;
    for (const r of rows) {
      // Only a hash the filter may know can be a damaged row.
      const repair = this.#filter?.mayHave(r.hash) !== false && !!damaged.get(r.hash);
      ins.run(r.hash, r.size, r.stored, r.xxh, r.pack, r.offset);
      if (repair) {
        this.index.clearDamaged(r.hash);
        repaired++;
      }
      this.#filter?.add(r.hash);
    }
    if (repaired) this.index.blobEpoch++;
    return repaired;
  }

  /** A temp file path in the store's tmp/ folder. */
  tempPath(): string {
    return join(this.tmpDir, `${Deno.pid}-${Date.now()}-${++this.#tmpSeq}.part`);
  }

  /**
   * Moves a finished, fsync'd temp file into place as blob `hashHex`. Returns
   * the directories to fsync before anything refers to the blob: its own, and
   * the parents of any directory this call created.
   */
  adopt(tempPath: string, hashHex: string): string[] {
    const final = this.pathOf(hashHex);
    const top = join(this.dir, hashHex.slice(0, 2));
    const dir = join(top, hashHex.slice(2, 4));
    const dirs = [dir];
    if (!this.#madeDirs.has(dir)) {
      let topExisted = true;
      try {
        Deno.statSync(top);
      } catch {
        topExisted = false;
      }
      let dirExisted = topExisted;
      if (topExisted) {
        try {
          Deno.statSync(dir);
        } catch {
          dirExisted = false;
        }
      }
      Deno.mkdirSync(dir, { recursive: true });
      if (!dirExisted) dirs.push(top);
      if (!topExisted) dirs.push(this.dir);
      this.#madeDirs.add(dir);
    }
    Deno.renameSync(tempPath, final);
    return dirs;
  }

  /** fsyncs directories so renames into them survive a crash. */
  syncDirs(dirs: Iterable<string>): void {
    for (const d of dirs) {
      try {
        const f = Deno.openSync(d, { read: true });
        try {
          f.syncSync();
        } finally {
          f.close();
        }
      } catch { /* some filesystems refuse fsync on directories */ }
    }
  }

  #packReader(pack: number): Deno.FsFile {
    let f = this.#readers.get(pack);
    if (f) {
      this.#readers.delete(pack);
      this.#readers.set(pack, f);
      return f;
    }
    f = Deno.openSync(this.packPath(pack), { read: true });
    this.#readers.set(pack, f);
    if (this.#readers.size > 32) {
      const [oldest, file] = this.#readers.entries().next().value!;
      file.close();
      this.#readers.delete(oldest);
    }
    return f;
  }

  /** Closes cached pack handles (before a pack file is removed). */
  closeReaders(): void {
    for (const f of this.#readers.values()) f.close();
    this.#readers.clear();
  }

  #scratch = new Uint8Array(1 << 16);

  /**
   * The stored bytes of a blob in pieces that are views of one reused buffer,
   * valid only until the next piece: for callers that copy at once. What can
   * be checked before the first byte goes out is checked at once (this is not
   * a lazy generator): the row exists, a pack blob is read whole, a file
   * blob's file is there with its stored size. Throws integrity otherwise, so
   * a restore archive can say which file is damaged instead of breaking off.
   */
  pieces(
    hashHex: string,
    known?: { blob: BlobInfo | null; epoch: number },
  ): Iterable<Uint8Array> {
    // A place read with the manifest page holds unless blobs moved since.
    const info = known?.blob && known.epoch === this.index.blobEpoch
      ? known.blob
      : this.info(hashHex);
    if (!info) throw new KeepError("integrity", `Cannot read blob ${hashHex}: not in the store`);
    if (info.pack !== null) {
      if (this.#scratch.length < info.stored) this.#scratch = new Uint8Array(info.stored);
      const buf = this.#scratch.subarray(0, info.stored);
      this.#readPack(hashHex, info, buf);
      return [buf];
    }
    const f = this.#openFile(hashHex);
    let size: number;
    try {
      size = f.statSync().size;
    } catch (err) {
      f.close();
      throw err;
    }
    if (size !== info.stored) {
      f.close();
      throw new KeepError(
        "integrity",
        `Cannot read blob ${hashHex}: its file has ${size} bytes, the index says ${info.stored}`,
      );
    }
    return this.#filePieces(f);
  }

  *#filePieces(f: Deno.FsFile): Generator<Uint8Array> {
    try {
      if (this.#scratch.length < 1 << 20) this.#scratch = new Uint8Array(1 << 20);
      for (;;) {
        const n = f.readSync(this.#scratch);
        if (n === null || n === 0) return;
        yield this.#scratch.subarray(0, n);
      }
    } finally {
      f.close();
    }
  }

  #openFile(hashHex: string): Deno.FsFile {
    try {
      return Deno.openSync(this.pathOf(hashHex), { read: true });
    } catch {
      throw new KeepError("integrity", `Cannot read blob ${hashHex}: its file is missing`);
    }
  }

  #readPack(hashHex: string, info: BlobInfo, buf: Uint8Array): void {
    let f: Deno.FsFile;
    try {
      f = this.#packReader(info.pack!);
    } catch {
      throw new KeepError("integrity", `Cannot read blob ${hashHex}: pack ${info.pack} is missing`);
    }
    f.seekSync(info.offset!, Deno.SeekMode.Start);
    let got = 0;
    while (got < buf.length) {
      const n = f.readSync(buf.subarray(got));
      if (n === null || n === 0) {
        throw new KeepError("integrity", `Cannot read blob ${hashHex}: pack ${info.pack} is short`);
      }
      got += n;
    }
  }

  /** The stored bytes of a blob (concatenated members), in chunks. */
  *read(hashHex: string): Generator<Uint8Array> {
    const info = this.info(hashHex);
    if (!info) throw new KeepError("integrity", `Cannot read blob ${hashHex}: not in the store`);
    if (info.pack !== null) {
      let f: Deno.FsFile;
      try {
        f = this.#packReader(info.pack);
      } catch {
        throw new KeepError(
          "integrity",
          `Cannot read blob ${hashHex}: pack ${info.pack} is missing`,
        );
      }
      const buf = new Uint8Array(info.stored);
      f.seekSync(info.offset!, Deno.SeekMode.Start);
      let got = 0;
      while (got < buf.length) {
        const n = f.readSync(buf.subarray(got));
        if (n === null || n === 0) {
          throw new KeepError(
            "integrity",
            `Cannot read blob ${hashHex}: pack ${info.pack} is short`,
          );
        }
        got += n;
      }
      yield buf;
      return;
    }
    const f = this.#openFile(hashHex);
    try {
      for (;;) {
        const buf = new Uint8Array(1 << 20);
        const n = f.readSync(buf);
        if (n === null || n === 0) return;
        yield n === buf.length ? buf : buf.subarray(0, n);
      }
    } finally {
      f.close();
    }
  }

  /**
   * Re-reads a blob: cuts and inflates every member, checks CRCs, size and
   * SHA-256. Returns a problem description or null when it is sound.
   */
  check(
    hashHex: string,
    size: number,
    hasher: () => { update(b: Uint8Array): void; digest(): Uint8Array },
  ): string | null {
    try {
      const h = hasher();
      const split = new MemberSplitter();
      let total = 0;
      for (const chunk of this.read(hashHex)) {
        split.push(chunk);
        for (let m = split.next(); m; m = split.next()) {
          const raw = decodeMemberTransient(m);
          total += raw.length;
          h.update(raw);
        }
      }
      split.end();
      if (total !== size) return `size ${total}, expected ${size}`;
      const got = bytesToHex(h.digest());
      return got === hashHex ? null : `content hash is ${got}`;
    } catch (err) {
      return err instanceof Error ? err.message : String(err);
    }
  }
}
