/**
 * Bearer tokens. A token is `keep_<id>_<secret>`; the index keeps only its
 * SHA-256, the role and the projects it may touch. Roles:
 * - `backup`: append-only: read the head and latest manifest of its
 *   projects, add commits; cannot read old content, delete or prune;
 * - `restore`: read everything of its projects (commits, manifests,
 *   archives, blobs);
 * - `admin`: everything, on all projects, plus verify and prune.
 *
 * @module
 */

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { KeepError } from "../errors.ts";
import type { IndexStore, TokenRow } from "./storage/index_store.ts";

export type Role = "backup" | "restore" | "admin";
export const ROLES: Role[] = ["backup", "restore", "admin"];

/** Who is calling: the checked token. */
export interface Access {
  id: string;
  name: string;
  role: Role;
  /** Project names, or ["*"] for all. */
  projects: string[];
}

/** A token as listed (no secret). */
export interface TokenInfo extends Access {
  created: string;
  revoked: string | null;
}

/**
 * What a route needs: `head` (head commit and latest manifest), `append`
 * (add a commit), `read` (old commits, archives, blobs), `admin`.
 */
export type Need = "head" | "append" | "read" | "admin";

const ALLOWED: Record<Need, Role[]> = {
  head: ["backup", "restore", "admin"],
  append: ["backup", "admin"],
  read: ["restore", "admin"],
  admin: ["admin"],
};

/**
 * Throws unless `access` may do `need` on `project`; without a project the
 * request concerns the whole store (verify) and needs a token for every
 * project (`*`). A null access means authentication is off (loopback
 * --no-auth).
 */
export function authorize(access: Access | null, need: Need, project?: string): void {
  if (access === null) return;
  if (!ALLOWED[need].includes(access.role)) {
    throw new KeepError(
      "forbidden",
      `Cannot allow this: token ${access.id} has role ${access.role}`,
    );
  }
  if (project === undefined && !access.projects.includes("*")) {
    throw new KeepError(
      "forbidden",
      `Cannot allow this: it concerns every project, and token ${access.id} is scoped to ${
        access.projects.join(", ")
      } (use a token for --project '*')`,
    );
  }
  if (
    project !== undefined && !access.projects.includes("*") && !access.projects.includes(project)
  ) {
    throw new KeepError(
      "forbidden",
      `Cannot allow this: token ${access.id} is not scoped to project ${project}`,
    );
  }
}

function sha(token: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(token).digest());
}

/**
 * Tokens stored in the index.
 *
 * @example
 * ```ts
 * const { token } = await new TokenStore(index).create("ci", "backup", ["app"]);
 * ```
 */
export class TokenStore {
  #index: IndexStore;
  constructor(index: IndexStore) {
    this.#index = index;
  }

  /** Creates a token; the secret is returned once and never stored. */
  async create(
    name: string,
    role: Role,
    projects: string[],
  ): Promise<{ token: string; info: TokenInfo }> {
    if (!ROLES.includes(role)) {
      throw new KeepError("usage", `Cannot create token: unknown role ${role}`);
    }
    if (projects.length === 0) {
      throw new KeepError("usage", "Cannot create token: give --project NAME or --project '*'");
    }
    const id = randomBytes(4).toString("hex");
    const token = `keep_${id}_${randomBytes(24).toString("base64url")}`;
    const now = Date.now();
    await this.#index.insertToken({
      id,
      hash: sha(token),
      name,
      role,
      projects,
      created: now,
      revoked: null,
    });
    return {
      token,
      info: { id, name, role, projects, created: new Date(now).toISOString(), revoked: null },
    };
  }

  async list(): Promise<TokenInfo[]> {
    return (await this.#index.listTokens()).map(infoOf);
  }

  /** Number of usable tokens. */
  async active(): Promise<number> {
    return (await this.#index.listTokens()).filter((t) => t.revoked === null).length;
  }

  async revoke(id: string): Promise<void> {
    if (!(await this.#index.revokeToken(id, Date.now()))) {
      throw new KeepError("not_found", `Cannot revoke token ${id}: no such active token`);
    }
  }

  /** The access a presented token grants; throws unauthorized. */
  async check(token: string): Promise<Access> {
    const m = /^keep_([0-9a-f]{8})_[A-Za-z0-9_-]{16,64}$/.exec(token);
    const deny = new KeepError("unauthorized", "Cannot authenticate: unknown or revoked token");
    if (!m) throw deny;
    const r = await this.#index.tokenById(m[1]);
    const presented = sha(token);
    // Compare even when the id is unknown, so timing does not tell ids apart.
    const stored = r ? r.hash : new Uint8Array(32);
    const same = timingSafeEqual(presented, stored);
    if (!r || !same || r.revoked !== null) throw deny;
    return { id: r.id, name: r.name, role: r.role as Role, projects: r.projects };
  }
}

/** The access token `id` grants now (null: unknown or revoked): for sessions made from it. */
export async function accessOf(index: IndexStore, id: string): Promise<Access | null> {
  const r = await index.tokenById(id);
  if (!r || r.revoked !== null) return null;
  return { id: r.id, name: r.name, role: r.role as Role, projects: r.projects };
}

function infoOf(r: TokenRow): TokenInfo {
  return {
    id: r.id,
    name: r.name,
    role: r.role as Role,
    projects: r.projects,
    created: new Date(r.created).toISOString(),
    revoked: r.revoked === null ? null : new Date(r.revoked).toISOString(),
  };
}
