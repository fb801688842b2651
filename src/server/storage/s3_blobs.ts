/**
 * Blobs in an S3-compatible bucket, behind BlobStore. Under `PREFIX`:
 *
 * - `packs/<n>.pack`: small blobs back to back. An object cannot be
 *   appended to, so a pack is written once, whole, at its first flush
 *   (`flushEndsPack`): the writer then seals it and takes a new number for
 *   what follows. The PUT carries `If-None-Match: *`, so a pack name is
 *   never written twice even by a misconfigured second index.
 * - `blobs/<sha256>.<generation>`: a large blob. Its name needs the hash,
 *   known only at its end, and a multipart upload is named when it starts:
 *   the bytes are spooled to `DATA/tmp/` as they arrive (bounded memory)
 *   and sent as soon as the hash is known (`complete`, while the upload
 *   goes on), in one PUT up to PART bytes, else as a multipart upload of
 *   PART-sized parts read back from the spool, PARTS_IN_FLIGHT at a time.
 * - `keep-store.json`: which index owns this prefix (open.ts checks it).
 *
 * Reads of pack bytes go through a small cache of aligned CHUNK ranges: a
 * restore, verify or GC reads a pack's blobs mostly in order, and one range
 * GET costs 2–5 ms on RGW here whatever its size up to ~1 MiB. A pack's
 * bytes never change, so a cached range is never stale.
 *
 * @module
 */

import { createHash } from "node:crypto";
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
import { writeAll } from "./local_blobs.ts";
import { S3Client, S3Error, type S3Options } from "./s3_client.ts";

/** Multipart part size, and the largest large blob sent in one PUT (measured: DESIGN.md). */
const PART = 16 << 20;
/** Pack bytes are read in aligned ranges of this size... */
const CHUNK = 4 << 20;
/** ...of which this many stay cached. */
const CHUNKS_CACHED = 8;
/** Large-blob PUTs (whole or parts) in flight at once, across uploads. */
const PARTS_IN_FLIGHT = 4;

/** Where a bucket store is, as `--blobs s3://BUCKET/PREFIX` and the flags give it. */
export interface S3Location {
  bucket: string;
  /** "" or ending in "/". */
  prefix: string;
  endpoint: string;
  region: string;
}

/** Parses `s3://BUCKET[/PREFIX]`; null when `url` is not an s3 URL. */
export function parseS3Url(url: string): { bucket: string; prefix: string } | null {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (!m) return null;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(m[1])) {
    throw new KeepError("usage", `Cannot use ${url}: ${m[1]} is not a valid bucket name`);
  }
  let prefix = (m[2] ?? "").replace(/^\/+/, "");
  if (prefix && !prefix.endsWith("/")) prefix += "/";
  return { bucket: m[1], prefix };
}

/** How a caller failed to reach or use the store, as a KeepError. */
function storeError(err: unknown, what: string): KeepError {
  if (err instanceof KeepError) return err;
  if (err instanceof S3Error) {
    return new KeepError("unavailable", `Cannot ${what}: the object store answered ${err.message}`);
  }
  return new KeepError("unavailable", `Cannot ${what}: ${(err as Error).message}`);
}

/**
 * A pack's buffer starts this big (an upload's batch is 8 MiB, plus what
 * one body chunk ends past it) and doubles when a pack outgrows it.
 */
const PACK_BUFFER = 9 << 20;

/**
 * A pack being filled in memory, in one buffer (the PUT's body: no copies
 * into a list and then into a body); written as one object at its flush.
 */
class S3PackSink implements PackSink {
  readonly pack: number;
  #store: S3BlobStore;
  #buf: Uint8Array | null = null;
  #size = 0;
  /** The PUT, once started: a second flush (close) gets its outcome. */
  #put: Promise<void> | null = null;

  constructor(store: S3BlobStore, pack: number) {
    this.#store = store;
    this.pack = pack;
  }

  get size(): number {
    return this.#size;
  }

  add(data: Uint8Array): number {
    if (this.#put) {
      throw new KeepError("internal", `Cannot add to pack ${this.pack}: it is written already`);
    }
    const at = this.#size;
    const need = at + data.length;
    if (!this.#buf || need > this.#buf.length) {
      const grown = new Uint8Array(Math.max(need, this.#buf ? 2 * this.#buf.length : PACK_BUFFER));
      if (this.#buf) grown.set(this.#buf.subarray(0, at));
      this.#buf = grown;
    }
    this.#buf.set(data, at);
    this.#size = need;
    return at;
  }

  flush(): Promise<void> {
    if (this.#size === 0) return Promise.resolve();
    this.#put ??= this.#send();
    return this.#put;
  }

  async #send(): Promise<void> {
    // The body alone while the PUT is in flight (an upload has up to three):
    // a small pack (an upload's last) is copied out of its mostly empty buffer.
    const buf = this.#buf!;
    const body = this.#size < buf.length / 2
      ? buf.slice(0, this.#size)
      : buf.subarray(0, this.#size);
    this.#buf = null;
    const key = this.#store.packKey(this.pack);
    try {
      await this.#store.client.put(key, body, { ifNoneMatch: true });
    } catch (err) {
      // A retried PUT whose first answer was lost finds its own object: same bytes, done.
      if (!(err instanceof S3Error && err.status === 412 && await this.#isOurs(key, body))) {
        if (err instanceof KeepError && err.code === "unavailable") {
          // Which write failed, for the upload's answer (the client's message).
          throw new KeepError(
            "unavailable",
            `Cannot store pack ${this.pack}: ${err.message.replace(/^Cannot/, "cannot")}`,
          );
        }
        throw storeError(err, `store pack ${this.pack}`);
      }
    }
  }

  async #isOurs(key: string, body: Uint8Array): Promise<boolean> {
    const o = await this.#store.client.head(key).catch(() => null);
    return o?.size === body.length &&
      o.etag === createHash("md5").update(body).digest("hex");
  }

  close(): Promise<void> {
    return this.flush();
  }

  abort(): Promise<void> {
    this.#buf = null;
    return Promise.resolve();
  }
}

/**
 * A large blob: spooled to a local file, sent once its hash is known (from
 * `complete`, while the upload goes on, else at `finish`).
 */
class S3LargeSink implements LargeSink {
  readonly pending = 0;
  #store: S3BlobStore;
  #path: string;
  #file: Deno.FsFile | null;
  #size = 0;
  #sent: { hash: string; gen: Promise<number> } | null = null;

  constructor(store: S3BlobStore) {
    this.#store = store;
    this.#path = store.tempPath();
    this.#file = Deno.openSync(this.#path, { write: true, read: true, createNew: true });
  }

  write(data: Uint8Array): void {
    writeAll(this.#file!, data);
    this.#size += data.length;
  }

  drain(): Promise<void> {
    return Promise.resolve();
  }

  complete(hashHex: string): void {
    if (this.#sent) return;
    const gen = this.#send(hashHex);
    gen.catch(() => {}); // finish or abort sees it
    this.#sent = { hash: hashHex, gen };
  }

  async finish(hashHex: string): Promise<number> {
    if (this.#sent?.hash !== hashHex) this.#sent = { hash: hashHex, gen: this.#send(hashHex) };
    try {
      return await this.#sent.gen;
    } catch (err) {
      throw storeError(err, `store blob ${hashHex}`);
    } finally {
      this.#sent = null;
      this.#drop();
    }
  }

  /** PUT (up to PART bytes) or multipart upload of the spool; the new generation. */
  async #send(hashHex: string): Promise<number> {
    const f = this.#file!;
    const gen = newGeneration();
    const key = this.#store.largeKey(hashHex, gen);
    const { client } = this.#store;
    // A part is read from the spool only once a slot is free: memory stays bounded.
    const read = (at: number, n: number) => {
      f.seekSync(at, Deno.SeekMode.Start);
      return readFull(f, n);
    };
    if (this.#size <= PART) {
      const release = await this.#store.slot();
      try {
        await client.put(key, read(0, this.#size), { ifNoneMatch: true });
      } finally {
        release();
      }
      return gen;
    }
    const id = await client.createMultipart(key);
    try {
      const parts: Promise<string>[] = [];
      for (let o = 0; o < this.#size; o += PART) {
        const release = await this.#store.slot();
        const body = read(o, Math.min(PART, this.#size - o));
        const part = client.uploadPart(key, id, parts.length + 1, body).finally(release);
        part.catch(() => {}); // awaited below
        parts.push(part);
      }
      await client.completeMultipart(key, id, await Promise.all(parts));
    } catch (err) {
      await client.abortMultipart(key, id).catch(() => {});
      throw err;
    }
    return gen;
  }

  async abort(): Promise<void> {
    const sent = this.#sent;
    this.#sent = null;
    if (sent) {
      // Sent already (the content turned out known): remove it; GC's strays
      // phase removes it if this cannot.
      try {
        const gen = await sent.gen;
        await this.#store.deleteLarge(sent.hash, gen);
      } catch { /* not sent, or left to GC */ }
    }
    this.#drop();
  }

  #drop(): void {
    try {
      this.#file?.close();
    } catch { /* closed */ }
    this.#file = null;
    try {
      Deno.removeSync(this.#path);
    } catch { /* gone already */ }
  }
}

function readFull(f: Deno.FsFile, n: number): Uint8Array {
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = f.readSync(buf.subarray(got));
    if (!r) throw new KeepError("io", "Cannot read a spooled blob: it is short");
    got += r;
  }
  return buf;
}

/**
 * The blobs of one store in a bucket, under a prefix.
 *
 * @example
 * ```ts
 * const blobs = new S3BlobStore(options, "keep/", "/srv/keep/tmp");
 * for await (const piece of await blobs.pieces(hash, place)) sink(piece);
 * ```
 */
export class S3BlobStore implements BlobStore {
  readonly where: string;
  readonly flushEndsPack = true;
  readonly client: S3Client;
  readonly prefix: string;
  readonly tmpDir: string;
  #tmpSeq = 0;
  #slots = PARTS_IN_FLIGHT;
  #waiting: (() => void)[] = [];
  /** Cached chunks of packs, by "pack:chunk", least recently used first. */
  #chunks = new Map<string, Promise<Uint8Array>>();

  /** `tmpDir` is a local directory for spooling large blobs. */
  constructor(options: S3Options, prefix: string, tmpDir: string) {
    this.client = new S3Client(options);
    this.prefix = prefix;
    this.tmpDir = tmpDir;
    this.where = `s3://${options.bucket}/${prefix}`;
    Deno.mkdirSync(tmpDir, { recursive: true });
  }

  packKey(pack: number): string {
    return `${this.prefix}packs/${pack}.pack`;
  }

  largeKey(hashHex: string, gen: number | null): string {
    return `${this.prefix}blobs/${gen === null ? hashHex : `${hashHex}.${gen}`}`;
  }

  tempPath(): string {
    return join(this.tmpDir, `${Deno.pid}-${Date.now()}-${++this.#tmpSeq}.s3part`);
  }

  /** Waits for one of the PARTS_IN_FLIGHT slots; call the answer to free it. */
  async slot(): Promise<() => void> {
    if (this.#slots > 0) this.#slots--;
    else await new Promise<void>((r) => this.#waiting.push(r));
    let freed = false;
    return () => {
      if (freed) return;
      freed = true;
      const next = this.#waiting.shift();
      if (next) next();
      else this.#slots++;
    };
  }

  openPack(pack: number): PackSink {
    return new S3PackSink(this, pack);
  }

  openLarge(): LargeSink {
    return new S3LargeSink(this);
  }

  /** One aligned chunk of a pack (shorter at its end), from the cache or one range GET. */
  #chunk(hashHex: string, pack: number, index: number): Promise<Uint8Array> {
    const id = `${pack}:${index}`;
    let p = this.#chunks.get(id);
    if (p) {
      this.#chunks.delete(id);
      this.#chunks.set(id, p);
      return p;
    }
    p = (async () => {
      const start = index * CHUNK;
      let bytes: Uint8Array | null;
      try {
        bytes = await this.client.getRange(this.packKey(pack), { start, end: start + CHUNK });
      } catch (err) {
        throw storeError(err, `read blob ${hashHex}`);
      }
      if (bytes === null) {
        throw new KeepError("integrity", `Cannot read blob ${hashHex}: pack ${pack} is missing`);
      }
      return bytes;
    })();
    this.#chunks.set(id, p);
    p.catch(() => this.#chunks.delete(id));
    if (this.#chunks.size > CHUNKS_CACHED) this.#chunks.delete(this.#chunks.keys().next().value!);
    return p;
  }

  async pieces(hashHex: string, place: BlobPlace): Promise<AsyncIterable<Uint8Array>> {
    if (place.pack !== null) {
      const start = place.offset!;
      const end = start + place.stored;
      const first = Math.floor(start / CHUNK);
      if (Math.floor((end - 1) / CHUNK) === first) {
        // Inside one cached range: a view of it (its bytes never change).
        const chunk = await this.#chunk(hashHex, place.pack, first);
        if (end - first * CHUNK > chunk.length) {
          throw new KeepError(
            "integrity",
            `Cannot read blob ${hashHex}: pack ${place.pack} is short`,
          );
        }
        return both([chunk.subarray(start - first * CHUNK, end - first * CHUNK)]);
      }
      const out = new Uint8Array(place.stored);
      for (let c = first; c * CHUNK < end; c++) {
        const chunk = await this.#chunk(hashHex, place.pack, c);
        const from = Math.max(start, c * CHUNK);
        const to = Math.min(end, c * CHUNK + chunk.length);
        if (to < Math.min(end, (c + 1) * CHUNK)) {
          throw new KeepError(
            "integrity",
            `Cannot read blob ${hashHex}: pack ${place.pack} is short`,
          );
        }
        out.set(chunk.subarray(from - c * CHUNK, to - c * CHUNK), from - start);
      }
      return both([out]);
    }
    let res: Response | null;
    try {
      res = await this.client.get(this.largeKey(hashHex, place.offset));
    } catch (err) {
      throw storeError(err, `read blob ${hashHex}`);
    }
    if (res === null) {
      throw new KeepError("integrity", `Cannot read blob ${hashHex}: its object is missing`);
    }
    const size = Number(res.headers.get("content-length") ?? -1);
    if (size !== place.stored) {
      await res.body?.cancel();
      throw new KeepError(
        "integrity",
        `Cannot read blob ${hashHex}: its object has ${size} bytes, the index says ${place.stored}`,
      );
    }
    return streamPieces(this.client.bodyPieces(res.body!), hashHex, place.stored);
  }

  async packSize(pack: number): Promise<number | null> {
    try {
      return (await this.client.head(this.packKey(pack)))?.size ?? null;
    } catch (err) {
      throw storeError(err, `look up pack ${pack}`);
    }
  }

  async largeSize(hashHex: string, gen: number | null): Promise<number | null> {
    try {
      return (await this.client.head(this.largeKey(hashHex, gen)))?.size ?? null;
    } catch (err) {
      throw storeError(err, `look up blob ${hashHex}`);
    }
  }

  async *listPacks(): AsyncGenerator<{ pack: number; size: number } | { name: string }> {
    const dir = `${this.prefix}packs/`;
    try {
      for await (const page of this.client.list(dir)) {
        for (const o of page) {
          const name = o.key.slice(dir.length);
          const m = /^(\d+)\.pack$/.exec(name);
          yield m ? { pack: Number(m[1]), size: o.size } : { name };
        }
      }
    } catch (err) {
      throw storeError(err, "list packs");
    }
  }

  async *listLarge(): AsyncGenerator<LargeObject> {
    const dir = `${this.prefix}blobs/`;
    try {
      for await (const page of this.client.list(dir)) {
        for (const o of page) {
          const name = o.key.slice(dir.length);
          const m = /^([0-9a-f]{64})(?:\.(\d+))?$/.exec(name);
          yield {
            hash: m ? m[1] : "",
            gen: m?.[2] ? Number(m[2]) : null,
            name,
            modified: o.modified,
          };
        }
      }
    } catch (err) {
      throw storeError(err, "list blobs");
    }
  }

  /**
   * Reads hold no object open; the cached ranges go, so that the next reads
   * see what the bucket holds now (verify: an object deleted behind the
   * server's back).
   */
  dropCached(): void {
    this.#chunks.clear();
  }

  async deletePack(pack: number): Promise<void> {
    for (const id of [...this.#chunks.keys()]) {
      if (id.startsWith(`${pack}:`)) this.#chunks.delete(id);
    }
    try {
      await this.client.deleteMany([this.packKey(pack)]);
    } catch (err) {
      throw storeError(err, `delete pack ${pack}`);
    }
  }

  async deleteLarge(hashHex: string, gen: number | null): Promise<void> {
    try {
      await this.client.deleteMany([this.largeKey(hashHex, gen)]);
    } catch (err) {
      throw storeError(err, `delete blob ${hashHex}`);
    }
  }

  freeBytes(): Promise<number | null> {
    return Promise.resolve(null);
  }

  /**
   * Removes spool files a crash left. Multipart uploads a crash cut short
   * stay in the bucket: a lifecycle rule (AbortIncompleteMultipartUpload)
   * removes them (README, "Scaling out").
   */
  cleanTemp(): Promise<void> {
    for (const e of Deno.readDirSync(this.tmpDir)) {
      if (!e.name.endsWith(".s3part")) continue;
      try {
        Deno.removeSync(join(this.tmpDir, e.name));
      } catch { /* raced */ }
    }
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.#chunks.clear();
    return Promise.resolve();
  }
}

/** A large object's body in pieces; a body cut short is an error, never short content. */
async function* streamPieces(
  body: AsyncGenerator<Uint8Array>,
  hashHex: string,
  stored: number,
): AsyncGenerator<Uint8Array> {
  let got = 0;
  try {
    for (;;) {
      let r: IteratorResult<Uint8Array>;
      try {
        r = await body.next();
      } catch (err) {
        throw storeError(err, `read blob ${hashHex}`);
      }
      if (r.done) break;
      got += r.value.length;
      yield r.value;
    }
  } finally {
    await body.return(undefined).catch(() => {});
  }
  if (got !== stored) {
    throw new KeepError(
      "integrity",
      `Cannot read blob ${hashHex}: its object ended after ${got} of ${stored} bytes`,
    );
  }
}

/** A sync iterable that can also be iterated with `for await`. */
function both<T>(items: T[]): AsyncIterable<T> {
  return {
    async *[Symbol.asyncIterator]() {
      yield* items;
    },
  };
}
