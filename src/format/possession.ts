/**
 * Proof of possession for negotiated content. Before an upload the client
 * asks which contents (by SHA-256) the store already holds; the server answers
 * with a random key of its choosing, and for every content it holds the client
 * may send, instead of the bytes, a proof: HMAC-SHA256 under that key over the
 * whole content, truncated to 128 bits. The server recomputes it over the bytes
 * it stores before it records anything: a client that knows a hash but not the
 * content cannot produce the proof, and a proof seen once is worth nothing
 * under the next key (keys are bound to the project and expire).
 *
 * Why the whole content and not server-chosen samples: a client that knows
 * all of a file but a small secret part (a known binary with a password in it)
 * would pass a sampled check with high probability and could then restore the
 * secret. The full keyed hash costs one SHA-256 pass on each side, the price of
 * not sending the bytes.
 *
 * @module
 */

import { createHmac, type Hmac } from "node:crypto";

/** Hex digits of a proof (128 bits). */
export const PROOF_HEX = 32;

/**
 * A running proof over content pieces.
 *
 * @example
 * ```ts
 * const p = new Proof(key);
 * p.update(bytes);
 * p.digest(); // 32 hex digits
 * ```
 */
export class Proof {
  #h: Hmac;
  constructor(key: Uint8Array) {
    this.#h = createHmac("sha256", key);
  }
  update(piece: Uint8Array): void {
    this.#h.update(piece);
  }
  digest(): string {
    return this.#h.digest("hex").slice(0, PROOF_HEX);
  }
}

/** The answer to a negotiation (`POST /v1/projects/:p/negotiate`). */
export interface NegotiateAnswer {
  /** Names the key in the upload's `have` records. */
  nonce: string;
  /** The key, hex (32 bytes). */
  key: string;
  /** The asked hashes the store holds. */
  have: string[];
  /**
   * Files over this size are kept as content-defined chunks, so their chunks
   * may be negotiated too (a `have` record with `c`); null or absent: the
   * store keeps every file whole.
   */
  chunkOver?: number | null;
  /**
   * Asked with `own: true`: those of `have` that are chunks of files the
   * project already has (a file sent in part may name them without a proof).
   */
  own?: string[];
}

/** Hashes per negotiation request (the client splits longer lists). */
export const NEGOTIATE_BATCH = 10_000;
