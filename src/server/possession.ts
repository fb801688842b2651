/**
 * The server's half of negotiated uploads (see format/possession.ts): keys
 * for proofs of possession, and the check of a proof against stored content.
 *
 * A key is never stored: it is HMAC-SHA256(secret, project + nonce), with a
 * random secret kept in the index (IndexStore.sharedSecret, made at the first
 * start) and a nonce that carries its issue time, so any server on the index
 * can recompute the key of the nonce an upload names, for that project only,
 * until the nonce expires: behind a load balancer the negotiation and the
 * upload may reach different servers, and a restart keeps open negotiations.
 *
 * @module
 */

import { createHash, createHmac, randomBytes } from "node:crypto";
import { KeepError } from "../errors.ts";
import { bytesToHex, hexToBytes } from "../format/hex.ts";
import { PartialHasher } from "../format/partial_hash.ts";
import { Proof } from "../format/possession.ts";
import type { Storage } from "./storage/open.ts";
import { contentPieces, forEachRaw, PLACES_WINDOW } from "./content_pieces.ts";
import type { BlobPlace } from "./storage/blob_store.ts";
import { nextTurn } from "../platform/turn.ts";

/** Raw bytes hashed on the event loop between two turns given to other requests. */
const TURN_BYTES = 8 << 20;

/** How long a negotiation's key is accepted. */
export const NONCE_TTL_MS = 6 * 3600_000;

/** Issues and recomputes the keys of negotiations. */
export class PossessionKeys {
  #secret: Uint8Array;
  #now: () => number;

  constructor(secret: Uint8Array = randomBytes(32), now: () => number = Date.now) {
    this.#secret = secret;
    this.#now = now;
  }

  /** Uses the store's secret (the server sets it at start, from the index). */
  useSecret(secret: Uint8Array): void {
    this.#secret = secret;
  }

  /** A fresh nonce and its key for `project`. */
  issue(project: string): { nonce: string; key: Uint8Array } {
    const nonce = `${this.#now().toString(36)}.${randomBytes(16).toString("hex")}`;
    return { nonce, key: this.#keyOf(project, nonce) };
  }

  /** The key of `nonce` for `project`; throws when it is not this server's or expired. */
  keyFor(project: string, nonce: string): Uint8Array {
    const m = /^([0-9a-z]{1,12})\.[0-9a-f]{32}$/.exec(nonce);
    const issued = m ? parseInt(m[1], 36) : NaN;
    const age = this.#now() - issued;
    if (!m || !(age >= -60_000 && age <= NONCE_TTL_MS)) {
      throw new KeepError(
        "conflict",
        `Cannot record negotiated content: negotiation ${
          nonce.slice(0, 24)
        } is expired or not from this store; back up again`,
      );
    }
    return this.#keyOf(project, nonce);
  }

  #keyOf(project: string, nonce: string): Uint8Array {
    return createHmac("sha256", this.#secret).update(`${project}\n${nonce}`).digest();
  }
}

/** This process's keys (the secret from the index once the server started). */
export const possessionKeys = new PossessionKeys();

/** What a checked proof tells about the stored content. */
export interface Possessed {
  /** The partial hash of the content (for the version row). */
  xxh: string;
}

/**
 * Reads the stored content of `hashHex` and checks `proof` under `key`
 * against it. Throws conflict when the store lost the content (the client
 * backs up again and sends it), integrity when the stored bytes are damaged
 * (marked: the next upload sends them), forbidden when the proof is wrong.
 */
export async function checkPossession(
  storage: Storage,
  path: string,
  hashHex: string,
  size: number,
  key: Uint8Array,
  proof: string,
): Promise<Possessed> {
  const place = await storage.index.blobPlace(hashHex);
  if (!place || place.size !== size) {
    throw new KeepError(
      "conflict",
      `Cannot record ${JSON.stringify(path)}: the store no longer has its content (${
        hashHex.slice(0, 12)
      }…); back up again`,
    );
  }
  const sha = createHash("sha256");
  const xxh = new PartialHasher();
  const mac = new Proof(key);
  let total = 0;
  try {
    total = await forEachRaw(await contentPieces(storage, hashHex, place), (raw) => {
      sha.update(raw);
      xxh.update(raw);
      mac.update(raw);
    });
  } catch (err) {
    if (!(err instanceof KeepError) || (err.code !== "integrity" && err.code !== "invalid")) {
      throw err;
    }
    await storage.index.markDamaged(hexToBytes(hashHex), err.message);
    throw new KeepError(
      "conflict",
      `Cannot record ${
        JSON.stringify(path)
      }: its stored content is damaged; back up again to send it`,
    );
  }
  if (total !== size || sha.digest("hex") !== hashHex) {
    await storage.index.markDamaged(hexToBytes(hashHex), "content does not match its hash");
    throw new KeepError(
      "conflict",
      `Cannot record ${
        JSON.stringify(path)
      }: its stored content is damaged; back up again to send it`,
    );
  }
  if (mac.digest() !== proof) {
    throw new KeepError(
      "forbidden",
      `Cannot record ${JSON.stringify(path)}: its proof of possession does not match the content ${
        hashHex.slice(0, 12)
      }… (send the content itself); nothing was recorded`,
    );
  }
  return { xxh: xxh.digest() };
}

/** What a check of a file named by its chunks tells: also its hash and its chunks' stored bytes. */
export interface PossessedChunks extends Possessed {
  /** SHA-256 (hex) of the content the chunks make. */
  hash: string;
  stored: number;
}

/**
 * Reads a big file named by its chunks (`packed`: their SHA-256 back to back,
 * in order, each a blob the store holds) and hashes the content they make: it must be
 * `size` bytes, hash to `hashHex` when the client gave one, and match
 * `proof` under `key` when there is one (the caller decided the chunks need
 * none: the project's own, or sent). A chunk gone or found damaged is a
 * conflict (it is marked: the next upload sends it); chunks that do not make
 * the claimed content, or a wrong proof, are forbidden.
 */
export async function checkChunkedPossession(
  storage: Storage,
  path: string,
  hashHex: string | null,
  size: number,
  proven: { key: Uint8Array; proof: string } | null,
  packed: Uint8Array,
): Promise<PossessedChunks> {
  // Hex names a window at a time: a list of 250,000 as strings is ~20 MB.
  const count = packed.length / 32;
  const windowAt = (w: number) => {
    const out: string[] = [];
    for (let i = w; i < Math.min(count, w + PLACES_WINDOW); i++) {
      out.push(bytesToHex(packed.subarray(i * 32, i * 32 + 32)));
    }
    return out;
  };
  const forbidden = (why: string) =>
    new KeepError(
      "forbidden",
      `Cannot record ${
        JSON.stringify(path)
      }: ${why} (send the content itself); nothing was recorded`,
    );
  const sha = createHash("sha256");
  const xxh = new PartialHasher();
  const mac = proven ? new Proof(proven.key) : null;
  const buf = { bytes: new Uint8Array(0) };
  let total = 0;
  let stored = 0;
  // A window of chunks at a time: a list of 250,000 keeps 4,096 places, not all.
  for (let w = 0; w < count; w += PLACES_WINDOW) {
    const window = windowAt(w);
    const places = await placesOf(storage, path, window);
    for (const p of places) {
      total += p.size;
      stored += p.stored;
    }
    if (total > size) throw forbidden(`its chunks hold more than ${size} bytes`);
    await hashHere(storage, path, window, places, buf, (raw) => {
      sha.update(raw);
      xxh.update(raw);
      mac?.update(raw);
    });
  }
  if (total !== size) throw forbidden(`its chunks hold ${total} bytes, not ${size}`);
  const hash = sha.digest("hex");
  if (hashHex !== null && hash !== hashHex) {
    // The client's list is wrong, or a chunk's bytes no longer hash to its
    // name (damaged behind CRCs that still hold): only the second is ours.
    for (let w = 0; w < count; w += PLACES_WINDOW) {
      const window = windowAt(w);
      const places = await placesOf(storage, path, window);
      for (let i = 0; i < window.length; i++) {
        const h = createHash("sha256");
        await readChunk(storage, path, window[i], places[i], buf, (raw) => h.update(raw));
        if (h.digest("hex") !== window[i]) {
          throw await damaged(storage, path, window[i], "content does not match its hash");
        }
      }
    }
    throw forbidden(`its chunks do not make the content ${hashHex.slice(0, 12)}…`);
  }
  if (mac && mac.digest() !== proven!.proof) {
    throw forbidden(`its proof of possession does not match the content ${hash.slice(0, 12)}…`);
  }
  return { hash, xxh: xxh.digest(), stored };
}

/** The places of `chunks` (SHA-256 hex): each must be a stored chunk, not a chunked file. */
async function placesOf(storage: Storage, path: string, chunks: string[]): Promise<BlobPlace[]> {
  const places: BlobPlace[] = [];
  const found = await storage.index.blobPlaces(chunks);
  for (const [i, c] of chunks.entries()) {
    const place = found[i];
    if (!place) {
      throw new KeepError(
        "conflict",
        `Cannot record ${JSON.stringify(path)}: the store no longer has its chunk ${
          c.slice(0, 12)
        }…; back up again`,
      );
    }
    if (place.chunked) {
      throw new KeepError(
        "forbidden",
        `Cannot record ${JSON.stringify(path)}: ${
          c.slice(0, 12)
        }… is a chunked file, not a chunk; nothing was recorded`,
      );
    }
    places.push(place);
  }
  await nextTurn();
  return places;
}

/** Feeds the content of `chunks` to `sink` (one reused buffer for local pack reads). */
async function hashHere(
  storage: Storage,
  path: string,
  chunks: string[],
  places: BlobPlace[],
  buf: { bytes: Uint8Array },
  sink: (raw: Uint8Array) => void,
): Promise<void> {
  let sinceTurn = 0;
  for (let i = 0; i < chunks.length; i++) {
    // Local reads never wait: other requests get the event loop every few MB.
    if ((sinceTurn += places[i].size) >= TURN_BYTES) {
      sinceTurn = 0;
      await nextTurn();
    }
    await readChunk(storage, path, chunks[i], places[i], buf, sink);
  }
}

function isDamage(err: unknown): boolean {
  return err instanceof KeepError && (err.code === "integrity" || err.code === "invalid");
}

/** Marks chunk `hex` damaged; the conflict to throw (the next upload sends it). */
async function damaged(
  storage: Storage,
  path: string,
  hex: string,
  why: string,
): Promise<KeepError> {
  await storage.index.markDamaged(hexToBytes(hex), why);
  return new KeepError(
    "conflict",
    `Cannot record ${
      JSON.stringify(path)
    }: a stored chunk of it is damaged; back up again to send it`,
  );
}

/**
 * Feeds the raw bytes of chunk `hex` to `sink`; damage marks the chunk and is
 * a conflict. A local pack blob is read into `buf` (reused chunk after chunk:
 * a proof over a big file reads hundreds of MB, a buffer each would raise the
 * server's RSS by as much before a GC).
 */
async function readChunk(
  storage: Storage,
  path: string,
  hex: string,
  place: BlobPlace,
  buf: { bytes: Uint8Array },
  sink: (raw: Uint8Array) => void,
): Promise<void> {
  try {
    let total = 0;
    if (storage.blobs.readPacked && place.pack !== null) {
      const stored = storage.blobs.readPacked(hex, place, buf.bytes);
      if (stored.buffer !== buf.bytes.buffer) buf.bytes = new Uint8Array(stored.buffer);
      total = await forEachRaw([stored], sink, false);
    } else total = await forEachRaw(await storage.blobs.pieces(hex, place), sink);
    if (total !== place.size) {
      throw new KeepError("integrity", `chunk ${hex} holds ${total} bytes, not ${place.size}`);
    }
  } catch (err) {
    if (!isDamage(err)) throw err;
    throw await damaged(storage, path, hex, (err as Error).message);
  }
}
