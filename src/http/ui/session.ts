/**
 * Web UI sessions. Signing in with a token makes a session: a random 256-bit
 * id in an HttpOnly, SameSite=Strict cookie, kept only in this process's
 * memory (a restart signs everyone out). The session holds the token's id,
 * never its secret; each request reads the token's row again, so revoking
 * the token ends its sessions at once. Each session has its own CSRF value,
 * which every form that changes state (sign-out) must carry.
 *
 * @module
 */

import { randomBytes, timingSafeEqual } from "node:crypto";

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
/** Sessions kept at most (the oldest go first). */
const MAX_SESSIONS = 10_000;

/** The sessions of one server process. */
export class SessionStore {
  #sessions = new Map<string, Session>();
  #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** A new session for token `tokenId` (null: a server without tokens); returns its cookie value. */
  create(tokenId: string | null): { id: string; session: Session } {
    if (this.#sessions.size >= MAX_SESSIONS) {
      this.#sessions.delete(this.#sessions.keys().next().value!);
    }
    const id = randomBytes(32).toString("base64url");
    const now = this.#now();
    const session = {
      tokenId,
      csrf: randomBytes(24).toString("base64url"),
      created: now,
      seen: now,
    };
    this.#sessions.set(id, session);
    return { id, session };
  }

  /** The live session of cookie value `id`, or null. */
  get(id: string | undefined): Session | null {
    if (!id || !/^[A-Za-z0-9_-]{43}$/.test(id)) return null;
    const s = this.#sessions.get(id);
    if (!s) return null;
    const now = this.#now();
    if (now - s.seen > IDLE_MS || now - s.created > MAX_MS) {
      this.#sessions.delete(id);
      return null;
    }
    s.seen = now;
    return s;
  }

  delete(id: string | undefined): void {
    if (id) this.#sessions.delete(id);
  }

  /** True when `presented` is the session's CSRF value (compared in constant time). */
  static csrfOk(s: Session, presented: unknown): boolean {
    if (typeof presented !== "string" || presented.length !== s.csrf.length) return false;
    return timingSafeEqual(new TextEncoder().encode(presented), new TextEncoder().encode(s.csrf));
  }
}
