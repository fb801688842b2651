/**
 * Where blob bytes live: the interface the server uses, and nothing else of
 * a backend. A blob is one file content, kept as the Keep-framed gzip members
 * it arrived in (see format/gzip_member.ts). Two shapes:
 *
 * - small blobs (up to PACK_MAX raw bytes) are appended back to back to a
 *   **pack**, named by a number the index hands out (IndexStore.newPack),
 *   and read back by (pack, offset, length);
 * - large blobs are an object of their own, named by their SHA-256 and a
 *   generation the store picks when it writes one.
 *
 * Nothing is rewritten in place, and no name is written twice: a pack is
 * written once by one writer, then sealed (the index records that) and only
 * ever deleted whole by garbage collection, after its live blobs were copied
 * elsewhere; a large blob sent again (a repair, content collected meanwhile)
 * gets a new generation. So deleting an old object can never race a new
 * write of the same name, on one server or many (see server/gc.ts). The bytes a row names are made
 * durable before the row is written (`PackSink.flush`, `LargeSink.finish`).
 *
 * Writes are synchronous where they can be (a sink buffers and says through
 * `pending` how much it holds), so an upload handler can go on reading its
 * body; everything that waits on the backend is a Promise.
 *
 * @module
 */

/** Largest raw blob kept in a pack. */
export const PACK_MAX = 1 << 20;

/** Where a blob's bytes are, as the index records it. */
export interface BlobPlace {
  /** Raw size of the content. */
  size: number;
  /** Bytes stored (the members). */
  stored: number;
  /** Pack number; null for a large blob. */
  pack: number | null;
  /**
   * Offset in the pack; for a large blob, its generation (null: a blob
   * written before generations, named by its hash alone).
   */
  offset: number | null;
  /**
   * The content is the concatenation of chunk blobs (listed by
   * IndexStore.chunksOf), not bytes of its own: read it with contentPieces.
   */
  chunked?: boolean;
}

/** A large blob's object, as listed. */
export interface LargeObject {
  hash: string;
  gen: number | null;
  name: string;
  modified: number;
}

/** Appends small blobs to one pack. */
export interface PackSink {
  /** The pack's number. */
  readonly pack: number;
  /** Bytes appended so far (the offset of the next blob). */
  readonly size: number;
  /** Appends a blob's stored bytes (copied); returns its offset. */
  add(data: Uint8Array): number;
  /** Makes everything added so far durable: rows may then point at it. */
  flush(): Promise<void>;
  /** Flushes and ends the pack (it is sealed by the caller through the index). */
  close(): Promise<void>;
  /** Drops what was not flushed (an upload that failed). */
  abort(): Promise<void>;
}

/** Writes one large blob as its bytes arrive. */
export interface LargeSink {
  /** Appends bytes (copied, or written at once). */
  write(data: Uint8Array): void;
  /** Bytes buffered and not yet written: callers wait for `drain` above a bound. */
  readonly pending: number;
  /** Waits until what was buffered is written. */
  drain(): Promise<void>;
  /**
   * Optional: every byte is written and the content's hash is known, so a
   * store may begin making the blob durable now, while the upload goes on
   * (an object store sends it); `finish` or `abort` still follows.
   */
  complete?(hashHex: string): void;
  /** Makes the blob durable under `hashHex` and a new generation, which it returns. */
  finish(hashHex: string): Promise<number>;
  /** Drops it (the content turned out to be known, or the upload failed). */
  abort(): Promise<void>;
}

/** The byte half of a data directory (or bucket). */
export interface BlobStore {
  /** A description for logs and errors ("DIR", "s3://bucket/prefix"). */
  readonly where: string;
  /**
   * True when a pack becomes an immutable object at its first flush (an
   * object store cannot append): its writer then closes and seals it, and
   * takes a new pack for what follows. False for files, which take appends.
   */
  readonly flushEndsPack: boolean;
  openPack(pack: number): PackSink;
  openLarge(): LargeSink;
  /**
   * The stored bytes of a blob in pieces (views valid until the next piece).
   * What can be checked before the first byte goes out is checked when this
   * is called (the object exists and has `place.stored` bytes; a pack range
   * is read whole): it throws integrity then, so an archive can name the file.
   */
  pieces(hashHex: string, place: BlobPlace): Promise<AsyncIterable<Uint8Array>>;
  /**
   * A pack blob's stored bytes read into `buf` (grown when too small; the
   * returned view may be a new buffer): for readers of many blobs one after
   * another, with no buffer per blob. Throws integrity as `pieces` does.
   * Absent where reads are not local (object stores): use `pieces`.
   */
  readPacked?(hashHex: string, place: BlobPlace, buf: Uint8Array): Uint8Array;
  /** Size in bytes of a pack, or null when it is missing. */
  packSize(pack: number): Promise<number | null>;
  /** Size in bytes of a large blob (of generation `gen`), or null when it is missing. */
  largeSize(hashHex: string, gen: number | null): Promise<number | null>;
  /** Every pack present, with its size (for verify and GC). */
  listPacks(): AsyncIterable<{ pack: number; size: number } | { name: string }>;
  /**
   * Every large blob present (for verify and GC); `name` is what the object
   * is called (`hash` is "" for an object whose name is no blob's),
   * `modified` when it was written (ms since the epoch).
   */
  listLarge(): AsyncIterable<LargeObject>;
  deletePack(pack: number): Promise<void>;
  /**
   * Closes what is kept open for reading (pack handles) and forgets bytes
   * kept from earlier reads: another thread or process may have deleted
   * those objects, whose space is freed only once no handle names them,
   * and verify must read what the store holds now.
   */
  dropCached(): void;
  deleteLarge(hashHex: string, gen: number | null): Promise<void>;
  /** Free space where the bytes go, or null when the backend cannot say (object stores). */
  freeBytes(): Promise<number | null>;
  /** Leftovers of writes cut short (temp files, unfinished uploads): removed at start. */
  cleanTemp(): Promise<void>;
  close(): Promise<void>;
}

/** A random 48-bit generation: unique per content without coordination (many servers). */
export function newGeneration(): number {
  const [hi, lo] = crypto.getRandomValues(new Uint32Array(2));
  return (hi & 0xffff) * 2 ** 32 + lo;
}
