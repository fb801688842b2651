/**
 * A blob's stored bytes (its gzip members, back to back), whole or chunked:
 * a chunked file's content is its chunk blobs in order, each whole members,
 * so their concatenation is the file's members as a whole blob's would be.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import { churned } from "../platform/memory.ts";
import { decodeMemberTransient, MemberSplitter } from "../format/gzip_member.ts";
import type { BlobPlace } from "./storage/blob_store.ts";
import type { Storage } from "./storage/open.ts";

/**
 * The stored pieces of `hashHex` at `place`. Checked up front like
 * BlobStore.pieces (integrity when the bytes, or a chunk, are not there).
 *
 * @example
 * ```ts
 * for await (const piece of await contentPieces(storage, hash, place)) out.write(piece);
 * ```
 */
export async function contentPieces(
  storage: Storage,
  hashHex: string,
  place: BlobPlace,
): Promise<AsyncIterable<Uint8Array>> {
  if (!place.chunked) return await storage.blobs.pieces(hashHex, place);
  const list = await storage.index.chunksOf?.(hashHex) ?? [];
  if (!list.length) {
    throw new KeepError("integrity", `Cannot read blob ${hashHex}: its chunk list is missing`);
  }
  const chunks = await chunkPieces(storage, `blob ${hashHex}`, list);
  if (chunks.size !== place.size) {
    throw new KeepError(
      "integrity",
      `Cannot read blob ${hashHex}: its chunks hold ${chunks.size} bytes, the index says ${place.size}`,
    );
  }
  return chunks.pieces;
}

/** Chunk places looked up together (as possession.ts checks them). */
export const PLACES_WINDOW = 4096;

/**
 * The stored pieces of the chunks `list` (SHA-256 hex) in order, with their
 * raw and stored sizes. Every chunk's place is looked up first: a missing
 * one (integrity, naming `what`) is found before any byte goes out.
 */
export async function chunkPieces(
  storage: Storage,
  what: string,
  list: string[],
): Promise<{ pieces: AsyncIterable<Uint8Array>; size: number; stored: number }> {
  const places: BlobPlace[] = [];
  let size = 0;
  let stored = 0;
  // A window of places per lookup: on PostgreSQL one round trip, not one per chunk.
  for (let w = 0; w < list.length; w += PLACES_WINDOW) {
    const window = list.slice(w, w + PLACES_WINDOW);
    const found = await storage.index.blobPlaces(window);
    for (const [i, c] of window.entries()) {
      const p = found[i];
      if (!p) throw new KeepError("integrity", `Cannot read ${what}: its chunk ${c} is missing`);
      if (p.chunked) {
        throw new KeepError("integrity", `Cannot read ${what}: its chunk ${c} is a chunked file`);
      }
      places.push(p);
      size += p.size;
      stored += p.stored;
    }
  }
  const first = await storage.blobs.pieces(list[0], places[0]);
  const blobs = storage.blobs;
  const pieces = (async function* () {
    yield* first;
    // Local pack chunks go through one buffer (a piece is valid until the
    // next): a buffer per chunk was ~1 GB of garbage per GB restored.
    let buf: Uint8Array = new Uint8Array(0);
    for (let i = 1; i < list.length; i++) {
      if (blobs.readPacked && places[i].pack !== null) {
        const view = blobs.readPacked(list[i], places[i], buf);
        if (view.buffer !== buf.buffer) buf = new Uint8Array(view.buffer);
        yield view;
      } else yield* await blobs.pieces(list[i], places[i]);
    }
  })();
  return { pieces, size, stored };
}

/**
 * Cuts stored pieces into members and inflates each (CRC and length
 * checked), handing the raw bytes to `sink` (valid during the call); each
 * piece is copied first unless `copy` is false. Returns
 * the raw size; throws KeepError (integrity or invalid) on damaged members.
 */
export async function forEachRaw(
  pieces: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  sink: (raw: Uint8Array) => void,
  copy = true,
): Promise<number> {
  const split = new MemberSplitter();
  let total = 0;
  for await (const piece of pieces) {
    // A copy: the splitter holds the piece past the next one's read, which
    // may reuse its buffer (`copy` false: the caller's pieces stay put).
    split.push(copy ? piece.slice() : piece);
    if (copy) churned(piece.length);
    for (let m = split.next(); m; m = split.next()) {
      const raw = decodeMemberTransient(m);
      total += raw.length;
      sink(raw);
    }
  }
  split.end();
  return total;
}
