/**
 * The embedded blob store: files in a data directory, behind BlobStore.
 *
 * - Packs: `packs/<n>.pack`, small blobs appended back to back by one
 *   writer each. As SQLite BLOBs they cost ~25% in page slack and were
 *   written twice (WAL, then checkpoint); as one file each, per-file creates
 *   dominate (1.4–2.4k/s): see docs/DESIGN.md.
 * - Large blobs: `blobs/<2 hex>/<2 hex>/<sha256>.<generation>` (stores from
 *   before generations: `<sha256>` alone), written to `tmp/`, fsync'd,
 *   renamed into place, their directories fsync'd.
 *
 * Writes are synchronous (docs/DESIGN.md, "The HTTP server": an upload handler that awaits real I/O
 * between body reads makes Deno's HTTP server crawl), so a sink's `pending`
 * is always 0 and `drain` resolves at once.
 *
 * @module
 */

import { statfsSync } from "node:fs";
import { join } from "node:path";
import { KeepError } from "../../errors.ts";
import {
  type BlobPlace,
  type BlobStore,
  type LargeObject,
  type LargeSink,
  newGeneration,
  type PackSink,
} from "./blob_store.ts";

const WRITE_BUFFER = 1 << 20;

/** Writes all of `b` (a write may take part of it). */
export function writeAll(f: Deno.FsFile, b: Uint8Array): void {
  let o = 0;
  while (o < b.length) o += f.writeSync(b.subarray(o));
}

/** fsyncs directories so renames into them survive a crash (best effort). */
function syncDirs(dirs: Iterable<string>): void {
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

function sizeOf(path: string): number | null {
  try {
    return Deno.statSync(path).size;
  } catch {
    return null;
  }
}

/** One pack file being written: buffered appends, fsync'd on flush. */
class LocalPackSink implements PackSink {
  readonly pack: number;
  #file: Deno.FsFile;
  #dir: string;
  #buf = new Uint8Array(WRITE_BUFFER);
  #fill = 0;
  #size = 0;
  #newName = true;

  constructor(store: LocalBlobStore, pack: number) {
    this.pack = pack;
    this.#dir = store.packDir;
    this.#file = Deno.openSync(store.packPath(pack), { write: true, createNew: true });
  }

  get size(): number {
    return this.#size;
  }

  add(data: Uint8Array): number {
    const at = this.#size;
    if (this.#fill + data.length > this.#buf.length) this.#drain();
    if (data.length > this.#buf.length) writeAll(this.#file, data);
    else {
      this.#buf.set(data, this.#fill);
      this.#fill += data.length;
    }
    this.#size += data.length;
    return at;
  }

  #drain(): void {
    if (this.#fill) writeAll(this.#file, this.#buf.subarray(0, this.#fill));
    this.#fill = 0;
  }

  /** Everything added so far on disk, including a new pack's name in packs/. */
  async flush(): Promise<void> {
    this.#drain();
    const named = this.#newName;
    this.#newName = false;
    try {
      // On a blocking thread: the event loop goes on reading the upload.
      await this.#file.sync();
      if (named) syncDirs([this.#dir]);
    } catch (err) {
      this.#newName ||= named;
      throw err;
    }
  }

  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      this.#file.close();
    }
  }

  abort(): Promise<void> {
    // Bytes already written stay as dead space (repack reclaims it once sealed).
    try {
      this.#file.close();
    } catch { /* closed */ }
    return Promise.resolve();
  }
}

/** One large blob being written: a temp file renamed into place. */
class LocalLargeSink implements LargeSink {
  readonly pending = 0;
  #store: LocalBlobStore;
  #path: string;
  #file: Deno.FsFile | null;

  constructor(store: LocalBlobStore) {
    this.#store = store;
    this.#path = store.tempPath();
    this.#file = Deno.openSync(this.#path, { write: true, createNew: true });
  }

  write(data: Uint8Array): void {
    writeAll(this.#file!, data);
  }

  drain(): Promise<void> {
    return Promise.resolve();
  }

  finish(hashHex: string): Promise<number> {
    const f = this.#file!;
    this.#file = null;
    f.syncSync();
    f.close();
    const { gen, dirs } = this.#store.adopt(this.#path, hashHex);
    syncDirs(dirs);
    return Promise.resolve(gen);
  }

  abort(): Promise<void> {
    try {
      this.#file?.close();
    } catch { /* closed */ }
    this.#file = null;
    try {
      Deno.removeSync(this.#path);
    } catch { /* gone already */ }
    return Promise.resolve();
  }
}

/**
 * The blob files of one data directory.
 *
 * @example
 * ```ts
 * const blobs = LocalBlobStore.open("/srv/keep");
 * for await (const piece of await blobs.pieces(hash, place)) sink(piece);
 * ```
 */
export class LocalBlobStore implements BlobStore {
  readonly where: string;
  readonly flushEndsPack = false;
  readonly dir: string;
  readonly packDir: string;
  readonly tmpDir: string;
  #madeDirs = new Set<string>();
  #tmpSeq = 0;
  /** Open pack files for reading, most recently used last. */
  #readers = new Map<number, Deno.FsFile>();

  private constructor(dataDir: string) {
    this.where = dataDir;
    this.dir = join(dataDir, "blobs");
    this.packDir = join(dataDir, "packs");
    this.tmpDir = join(dataDir, "tmp");
  }

  /** Opens the blob files of `dataDir`, creating its folders. */
  static open(dataDir: string): LocalBlobStore {
    const s = new LocalBlobStore(dataDir);
    Deno.mkdirSync(s.dir, { recursive: true });
    Deno.mkdirSync(s.packDir, { recursive: true });
    Deno.mkdirSync(s.tmpDir, { recursive: true });
    return s;
  }

  /** Removes temp files a crash left (only the process that holds the data-dir lock). */
  cleanTemp(): Promise<void> {
    for (const e of Deno.readDirSync(this.tmpDir)) {
      try {
        Deno.removeSync(join(this.tmpDir, e.name), { recursive: true });
      } catch { /* another process may race us; harmless */ }
    }
    return Promise.resolve();
  }

  /** Where a large blob lives. */
  pathOf(hashHex: string, gen: number | null): string {
    return join(this.dir, hashHex.slice(0, 2), hashHex.slice(2, 4), largeName(hashHex, gen));
  }

  packPath(pack: number): string {
    return join(this.packDir, `${pack}.pack`);
  }

  /** A temp file path in tmp/. */
  tempPath(): string {
    return join(this.tmpDir, `${Deno.pid}-${Date.now()}-${++this.#tmpSeq}.part`);
  }

  openPack(pack: number): PackSink {
    return new LocalPackSink(this, pack);
  }

  openLarge(): LargeSink {
    return new LocalLargeSink(this);
  }

  /**
   * Moves a finished, fsync'd temp file into place as blob `hashHex` under a
   * new generation. Returns it and the directories to fsync: its own, and the
   * parents of any directory this call created.
   */
  adopt(tempPath: string, hashHex: string): { gen: number; dirs: string[] } {
    const top = join(this.dir, hashHex.slice(0, 2));
    const dir = join(top, hashHex.slice(2, 4));
    const dirs = [dir];
    if (!this.#madeDirs.has(dir)) {
      const topExisted = sizeOf(top) !== null;
      const dirExisted = topExisted && sizeOf(dir) !== null;
      Deno.mkdirSync(dir, { recursive: true });
      if (!dirExisted) dirs.push(top);
      if (!topExisted) dirs.push(this.dir);
      this.#madeDirs.add(dir);
    }
    let gen = newGeneration();
    while (sizeOf(this.pathOf(hashHex, gen)) !== null) gen = newGeneration();
    Deno.renameSync(tempPath, this.pathOf(hashHex, gen));
    return { gen, dirs };
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

  #readPack(hashHex: string, place: BlobPlace, buf: Uint8Array): void {
    let f: Deno.FsFile;
    try {
      f = this.#packReader(place.pack!);
    } catch {
      throw new KeepError(
        "integrity",
        `Cannot read blob ${hashHex}: pack ${place.pack} is missing`,
      );
    }
    f.seekSync(place.offset!, Deno.SeekMode.Start);
    let got = 0;
    while (got < buf.length) {
      const n = f.readSync(buf.subarray(got));
      if (n === null || n === 0) {
        throw new KeepError(
          "integrity",
          `Cannot read blob ${hashHex}: pack ${place.pack} is short`,
        );
      }
      got += n;
    }
  }

  readPacked(hashHex: string, place: BlobPlace, buf: Uint8Array): Uint8Array {
    const into = buf.length >= place.stored
      ? buf.subarray(0, place.stored)
      : new Uint8Array(Math.max(place.stored, 2 * buf.length, 1 << 20)).subarray(0, place.stored);
    this.#readPack(hashHex, place, into);
    return into;
  }

  pieces(hashHex: string, place: BlobPlace): Promise<AsyncIterable<Uint8Array>> {
    return new Promise((resolve) => resolve(this.piecesSync(hashHex, place)));
  }

  /**
   * pieces() without the promises. Checked at once: a pack range is read
   * whole, a large blob's file must have `stored` bytes. Each call reads
   * into buffers of its own: readers of different blobs may interleave (two
   * requests), and a shared buffer would hand one the other's bytes.
   */
  piecesSync(hashHex: string, place: BlobPlace): Iterable<Uint8Array> & AsyncIterable<Uint8Array> {
    if (place.pack !== null) {
      const buf = new Uint8Array(place.stored);
      this.#readPack(hashHex, place, buf);
      return both([buf]);
    }
    let f: Deno.FsFile;
    try {
      f = Deno.openSync(this.pathOf(hashHex, place.offset), { read: true });
    } catch {
      throw new KeepError("integrity", `Cannot read blob ${hashHex}: its file is missing`);
    }
    const size = f.statSync().size;
    if (size !== place.stored) {
      f.close();
      throw new KeepError(
        "integrity",
        `Cannot read blob ${hashHex}: its file has ${size} bytes, the index says ${place.stored}`,
      );
    }
    return both(this.#filePieces(f));
  }

  *#filePieces(f: Deno.FsFile): Generator<Uint8Array> {
    try {
      const buf = new Uint8Array(1 << 20);
      for (;;) {
        const n = f.readSync(buf);
        if (n === null || n === 0) return;
        yield buf.subarray(0, n);
      }
    } finally {
      f.close();
    }
  }

  packSize(pack: number): Promise<number | null> {
    return Promise.resolve(sizeOf(this.packPath(pack)));
  }

  largeSize(hashHex: string, gen: number | null): Promise<number | null> {
    return Promise.resolve(sizeOf(this.pathOf(hashHex, gen)));
  }

  async *listPacks(): AsyncGenerator<{ pack: number; size: number } | { name: string }> {
    for (const name of safeDir(this.packDir)) {
      const m = /^(\d+)\.pack$/.exec(name);
      if (!m) {
        yield { name };
        continue;
      }
      yield { pack: Number(m[1]), size: sizeOf(join(this.packDir, name)) ?? 0 };
    }
  }

  async *listLarge(): AsyncGenerator<LargeObject> {
    for (const a of safeDir(this.dir)) {
      for (const b of safeDir(join(this.dir, a))) {
        for (const f of safeDir(join(this.dir, a, b))) {
          const m = /^([0-9a-f]{64})(?:\.(\d+))?$/.exec(f);
          let modified: number;
          try {
            modified = Deno.statSync(join(this.dir, a, b, f)).mtime?.getTime() ?? 0;
          } catch {
            continue; // deleted meanwhile
          }
          yield {
            hash: m ? m[1] : "",
            gen: m?.[2] ? Number(m[2]) : null,
            name: `${a}/${b}/${f}`,
            modified,
          };
        }
      }
    }
  }

  freeBytes(): Promise<number | null> {
    try {
      const s = statfsSync(this.packDir);
      return Promise.resolve(Number(s.bavail) * Number(s.bsize));
    } catch {
      return Promise.resolve(null);
    }
  }

  dropCached(): void {
    // Handles are used only synchronously (#readPack): none is in use now.
    for (const f of this.#readers.values()) f.close();
    this.#readers.clear();
  }

  deletePack(pack: number): Promise<void> {
    const f = this.#readers.get(pack);
    if (f) {
      f.close();
      this.#readers.delete(pack);
    }
    try {
      Deno.removeSync(this.packPath(pack));
    } catch { /* already gone */ }
    return Promise.resolve();
  }

  deleteLarge(hashHex: string, gen: number | null): Promise<void> {
    try {
      Deno.removeSync(this.pathOf(hashHex, gen));
    } catch { /* already gone: verify would have reported it */ }
    return Promise.resolve();
  }

  close(): Promise<void> {
    for (const f of this.#readers.values()) f.close();
    this.#readers.clear();
    return Promise.resolve();
  }
}

/** A large blob's file name. */
function largeName(hashHex: string, gen: number | null): string {
  return gen === null ? hashHex : `${hashHex}.${gen}`;
}

/** A sync iterable that can also be iterated with `for await`. */
function both<T>(items: Iterable<T>): Iterable<T> & AsyncIterable<T> {
  return {
    [Symbol.iterator]: () => items[Symbol.iterator](),
    async *[Symbol.asyncIterator]() {
      yield* items;
    },
  };
}

function safeDir(path: string): string[] {
  try {
    return [...Deno.readDirSync(path)].map((e) => e.name);
  } catch {
    return [];
  }
}
