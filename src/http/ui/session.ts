/**
 * Web UI sessions. Signing in with a token makes a session: a random 256-bit
 * id in an HttpOnly, SameSite=Strict cookie. The index keeps the session's
 * row under the SHA-256 of that id (never the id itself), so every server
 * on the index knows it: a session made through one node of a load
 * balancer works on the others, and a restart signs no one out. The
 * session holds the token's id, never its secret; each request reads the
 * token's row again, so revoking the token ends its sessions at once. Each
 * session has its own CSRF value, which every form that changes state
 * (sign-out) must carry.
 *
 * @module
 */

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { IndexStore } from "../../server/storage/index_store.ts";

/** A signed-in browser. */
export interface Session {
  /** The token it was made from (its id, not its secret). */
  tokenId: string | null;
  csrf: string;
  created: number;
  seen: number;
}

/** How long a session lives without requests, and at most. */
const IDLE_MS = 2 * 3600_000;
const MAX_MS = 12 * 3600_000;
/** A request is recorded (one write) when the last one recorded is older than this. */
const TOUCH_MS = 60_000;
/** Sessions kept at most (the least recently seen go first). */
const MAX_SESSIONS = 10_000;

/** The row key of cookie value `id`. */
function keyOf(id: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(id).digest());
}

/**
 * The sessions of a store, in its index.
 *
 * @example
 * ```ts
 * const sessions = new SessionStore(storage.index);
 * const { id } = await sessions.create("tok1");
 * const s = await sessions.get(id); // on any server of this index
 * ```
 */
export class SessionStore {
  #index: IndexStore;
  #now: () => number;

  constructor(index: IndexStore, now: () => number = Date.now) {
    this.#index = index;
    this.#now = now;
  }

  /** A new session for token `tokenId` (null: a server without tokens); returns its cookie value. */
  async create(tokenId: string | null): Promise<{ id: string; session: Session }> {
    const now = this.#now();
    await this.#index.pruneSessions(now - IDLE_MS, now - MAX_MS, MAX_SESSIONS - 1);
    const id = randomBytes(32).toString("base64url");
    const session = {
      tokenId,
      csrf: randomBytes(24).toString("base64url"),
      created: now,
      seen: now,
    };
    await this.#index.insertSession({ hash: keyOf(id), ...session });
    return { id, session };
  }

  /** The live session of cookie value `id`, or null. */
  async get(id: string | undefined): Promise<Session | null> {
    if (!id || !/^[A-Za-z0-9_-]{43}$/.test(id)) return null;
    const key = keyOf(id);
    const row = await this.#index.sessionByHash(key);
    if (!row) return null;
    const now = this.#now();
    if (now - row.seen > IDLE_MS || now - row.created > MAX_MS) {
      await this.#index.deleteSession(key);
      return null;
    }
    if (now - row.seen >= TOUCH_MS) await this.#index.touchSession(key, now);
    return { tokenId: row.tokenId, csrf: row.csrf, created: row.created, seen: now };
  }

  async delete(id: string | undefined): Promise<void> {
    if (id) await this.#index.deleteSession(keyOf(id));
  }

  /** True when `presented` is the session's CSRF value (compared in constant time). */
  static csrfOk(s: Session, presented: unknown): boolean {
    if (typeof presented !== "string" || presented.length !== s.csrf.length) return false;
    return timingSafeEqual(new TextEncoder().encode(presented), new TextEncoder().encode(s.csrf));
  }
}
