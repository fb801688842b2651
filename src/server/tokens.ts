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
import type { IndexDb } from "./storage/sqlite_index.ts";

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
 * const { token } = new TokenStore(index).create("ci", "backup", ["app"]);
 * ```
 */
export class TokenStore {
  #index: IndexDb;
  constructor(index: IndexDb) {
    this.#index = index;
  }

  /** Creates a token; the secret is returned once and never stored. */
  create(name: string, role: Role, projects: string[]): { token: string; info: TokenInfo } {
    if (!ROLES.includes(role)) {
      throw new KeepError("usage", `Cannot create token: unknown role ${role}`);
    }
    if (projects.length === 0) {
      throw new KeepError("usage", "Cannot create token: give --project NAME or --project '*'");
    }
    const id = randomBytes(4).toString("hex");
    const token = `keep_${id}_${randomBytes(24).toString("base64url")}`;
    const now = Date.now();
    this.#index.stmt(
      "INSERT INTO tokens(id, hash, name, role, projects, created) VALUES (?, ?, ?, ?, ?, ?)",
    )
      .run(id, sha(token), name, role, JSON.stringify(projects), now);
    return {
      token,
      info: { id, name, role, projects, created: new Date(now).toISOString(), revoked: null },
    };
  }

  list(): TokenInfo[] {
    return (this.#index.stmt("SELECT * FROM tokens ORDER BY created").all() as Record<
      string,
      unknown
    >[]).map((r) => ({
      id: r.id as string,
      name: r.name as string,
      role: r.role as Role,
      projects: JSON.parse(r.projects as string),
      created: new Date(Number(r.created)).toISOString(),
      revoked: r.revoked === null ? null : new Date(Number(r.revoked)).toISOString(),
    }));
  }

  /** Number of usable tokens. */
  active(): number {
    return Number(
      (this.#index.stmt("SELECT count(*) AS n FROM tokens WHERE revoked IS NULL").get() as {
        n: number;
      }).n,
    );
  }

  revoke(id: string): void {
    const r = this.#index.stmt("UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL")
      .run(Date.now(), id);
    if (Number(r.changes) !== 1) {
      throw new KeepError("not_found", `Cannot revoke token ${id}: no such active token`);
    }
  }

  /** The access a presented token grants; throws unauthorized. */
  check(token: string): Access {
    const m = /^keep_([0-9a-f]{8})_[A-Za-z0-9_-]{16,64}$/.exec(token);
    const deny = new KeepError("unauthorized", "Cannot authenticate: unknown or revoked token");
    if (!m) throw deny;
    const r = this.#index.stmt("SELECT * FROM tokens WHERE id = ?").get(m[1]) as
      | Record<string, unknown>
      | undefined;
    const presented = sha(token);
    // Compare even when the id is unknown, so timing does not tell ids apart.
    const stored = r ? (r.hash as Uint8Array) : new Uint8Array(32);
    const same = timingSafeEqual(presented, stored);
    if (!r || !same || r.revoked !== null) throw deny;
    return {
      id: r.id as string,
      name: r.name as string,
      role: r.role as Role,
      projects: JSON.parse(r.projects as string),
    };
  }
}
