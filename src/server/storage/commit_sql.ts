/**
 * What the SQL indexes share: the statements that apply a staged upload as
 * a commit (checks, the moves from `current` to `history`, the new rows),
 * and the conversions of their rows. SQLite (sqlite_index.ts) and
 * PostgreSQL (pg_index.ts) run the same text: parameters are written `?1`,
 * `?2`, … (SQLite's numbered form; PostgreSQL's `$1` is made by `pgText`),
 * and the staging table's name is an argument (a TEMP table in SQLite, an
 * ordinary one keyed by upload in PostgreSQL).
 *
 * @module
 */

import type { CommitNote } from "../../format/api.ts";
import { hexToBytes } from "../../format/hex.ts";
import type { CommitCounts, CommitInfo, EntryFlag } from "../../format/manifest.ts";
import type { BlobPlace } from "./blob_store.ts";
import type { SessionRow, TokenRow } from "./index_store.ts";

type Row = Record<string, unknown>;

/** SHA-256 of no bytes: the content of every empty file (never stored as a blob). */
export const EMPTY_HASH = hexToBytes(
  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
);

/** A statement and what its `?1`, `?2`, … stand for, in order. */
export interface Statement {
  sql: string;
  params: ("upload" | "project" | "seq" | "empty")[];
}

/** The commit's statements on staging table `stage`; each `check` names a path when it fails. */
export function commitStatements(stage: string) {
  const s = (sql: string, ...params: Statement["params"]): Statement => ({ sql, params });
  return {
    checks: {
      deletedMissing: s(
        `SELECT path FROM ${stage} s WHERE upload = ?1 AND op = 'del' AND NOT EXISTS (SELECT 1 FROM current c WHERE c.project = ?2 AND c.path = s.path) LIMIT 1`,
        "upload",
        "project",
      ),
      keptMissing: s(
        `SELECT path FROM ${stage} s WHERE upload = ?1 AND op = 'keep' AND NOT EXISTS (SELECT 1 FROM current c WHERE c.project = ?2 AND c.path = s.path) LIMIT 1`,
        "upload",
        "project",
      ),
      // A metadata record re-records content: it must be content of this very
      // project, of exactly that size; non-files carry no hash.
      metaForeign: s(
        `SELECT path FROM ${stage} s WHERE upload = ?1 AND op = 'meta' AND (
           (type != 'f' AND (hash IS NOT NULL OR xxh IS NOT NULL)) OR
           (type = 'f' AND (hash IS NULL OR (size = 0 AND hash != ?3))) OR
           (type = 'f' AND size > 0 AND NOT (
             EXISTS (SELECT 1 FROM blobs b WHERE b.hash = s.hash AND b.size = s.size) AND (
             EXISTS (SELECT 1 FROM current c WHERE c.hash = s.hash AND c.project = ?2) OR
             EXISTS (SELECT 1 FROM history h WHERE h.hash = s.hash AND h.project = ?2))))) LIMIT 1`,
        "upload",
        "project",
        "empty",
      ),
      // The result must be a tree: every parent a directory, no children left under a non-directory.
      noParentDir: s(
        `SELECT path FROM ${stage} s WHERE upload = ?1 AND op != 'del' AND parent != '' AND NOT EXISTS
           (SELECT 1 FROM current c WHERE c.project = ?2 AND c.path = s.parent AND c.type = 'd') LIMIT 1`,
        "upload",
        "project",
      ),
      childrenLeft: s(
        `SELECT s.path AS path FROM ${stage} s WHERE upload = ?1 AND (op = 'del' OR type != 'd') AND EXISTS
           (SELECT 1 FROM current c WHERE c.project = ?2 AND c.path > s.path || '/' AND c.path < s.path || '0') LIMIT 1`,
        "upload",
        "project",
      ),
    },
    /** Content the upload counted on that went meanwhile (conflict: back up again). */
    contentGone: s(
      `SELECT path FROM ${stage} s WHERE upload = ?1 AND op = 'put' AND type = 'f' AND size > 0 AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = s.hash) LIMIT 1`,
      "upload",
    ),
    /** Per type: the count and bytes of the head rows the upload names. */
    totals: s(
      `SELECT c.type AS type, count(*) AS n, sum(c.size) AS bytes FROM current c JOIN ${stage} s
       ON s.upload = ?1 AND s.path = c.path WHERE c.project = ?2 GROUP BY c.type`,
      "upload",
      "project",
    ),
    added: s(
      `SELECT count(*) AS n FROM ${stage} s WHERE upload = ?1 AND op = 'put' AND NOT EXISTS (SELECT 1 FROM current c WHERE c.project = ?2 AND c.path = s.path)`,
      "upload",
      "project",
    ),
    /** `count(op)`: staged rows of one op. */
    ofOp: (op: "put" | "meta" | "del" | "keep") =>
      s(`SELECT count(*) AS n FROM ${stage} WHERE upload = ?1 AND op = '${op}'`, "upload"),
    /** Every replaced or deleted row to history, then the new ones, in this order. */
    apply: [
      s(
        `INSERT INTO history(project, path, first, last, type, size, mode, mtime, ctime, hash, target, xxh, flag)
         SELECT c.project, c.path, c.first, ?3, c.type, c.size, c.mode, c.mtime, c.ctime, c.hash, c.target, c.xxh, c.flag
         FROM current c JOIN ${stage} s ON s.upload = ?1 AND s.path = c.path WHERE c.project = ?2`,
        "upload",
        "project",
        "seq",
      ),
      s(
        `DELETE FROM current WHERE project = ?2 AND path IN (SELECT path FROM ${stage} WHERE upload = ?1)`,
        "upload",
        "project",
      ),
      s(
        `INSERT INTO current(project, path, first, type, size, mode, mtime, ctime, hash, target, xxh, flag)
         SELECT ?2, path, ?3, type, size, mode, mtime, ctime, hash, target,
           CASE WHEN op = 'put' THEN xxh ELSE (SELECT b.xxh FROM blobs b WHERE b.hash = s.hash) END,
           CASE WHEN op = 'meta' AND EXISTS (SELECT 1 FROM blobs b WHERE b.hash = s.hash AND b.damaged IS NOT NULL)
             THEN 'damaged' ELSE flag END
         FROM ${stage} s WHERE upload = ?1 AND op IN ('put', 'meta')`,
        "upload",
        "project",
        "seq",
      ),
      s(
        `INSERT INTO current(project, path, first, type, size, mode, mtime, ctime, hash, target, xxh, flag)
         SELECT h.project, h.path, ?3, h.type, h.size, h.mode, h.mtime, h.ctime, h.hash, h.target, h.xxh,
           CASE WHEN EXISTS (SELECT 1 FROM blobs b WHERE b.hash = h.hash AND b.damaged IS NOT NULL)
             THEN 'damaged' ELSE s.flag END
         FROM history h JOIN ${stage} s ON s.upload = ?1 AND s.path = h.path AND s.op = 'keep'
         WHERE h.project = ?2 AND h.last = ?3`,
        "upload",
        "project",
        "seq",
      ),
      // Every path a commit ever had, for find and history (browse.ts).
      s(
        `INSERT INTO paths(project, path)
         SELECT ?2, path FROM ${stage} WHERE upload = ?1 AND op IN ('put', 'meta')
         ON CONFLICT DO NOTHING`,
        "upload",
        "project",
      ),
      s(
        `INSERT INTO notes(project, seq, path, flag, reason)
         SELECT ?2, ?3, path, flag, coalesce(reason, '') FROM ${stage} WHERE upload = ?1 AND op = 'keep'`,
        "upload",
        "project",
        "seq",
      ),
    ],
  };
}

/** What each failed check says (after "Cannot commit: "). */
export const CHECK_MESSAGES: Record<string, (path: string) => string> = {
  deletedMissing: (p) => `deleted path ${JSON.stringify(p)} is not in the parent commit`,
  keptMissing: (p) =>
    `keep record for ${JSON.stringify(p)} names a path the parent commit does not have`,
  metaForeign: (p) =>
    `metadata record for ${JSON.stringify(p)} names content the project never had (at that size)`,
  noParentDir: (p) =>
    `${
      JSON.stringify(p)
    } has no parent directory in the new commit (missing, or a file or symlink)`,
  childrenLeft: (p) =>
    `${JSON.stringify(p)} is deleted or not a directory but still has entries below it`,
};

/** The arguments of a statement, in order. */
export function argsOf(
  st: Statement,
  v: { upload: number; project: number; seq?: number; empty?: Uint8Array },
): unknown[] {
  return st.params.map((p) => v[p]);
}

/** A statement's text for PostgreSQL (`?N` → `$N`). */
export function pgText(st: Statement): string {
  return st.sql.replace(/\?(\d)/g, "$$$1");
}

/** A `commits` row as CommitInfo. */
export function commitFromRow(r: Row, project: string): CommitInfo {
  return {
    id: r.id as string,
    project,
    seq: Number(r.seq),
    parent: (r.parent as string | null) ?? null,
    time: new Date(Number(r.time)).toISOString(),
    message: r.message as string,
    tags: JSON.parse(r.tags as string),
    host: r.host as string,
    source: r.source as string,
    scanTime: String(r.scan_time),
    granularity: String(r.granularity),
    counts: JSON.parse(r.counts as string),
    stats: JSON.parse(r.stats as string),
  };
}

/** A `blobs` row's place. */
export function placeOf(r: Row): BlobPlace {
  return {
    size: Number(r.size),
    stored: Number(r.stored),
    pack: r.pack === null ? null : Number(r.pack),
    offset: r.offset === null ? null : Number(r.offset),
    ...(r.chunked ? { chunked: true } : {}),
  };
}

/** A `tokens` row. */
export function tokenOf(r: Row): TokenRow {
  return {
    id: r.id as string,
    hash: new Uint8Array(r.hash as Uint8Array),
    name: r.name as string,
    role: r.role as string,
    projects: JSON.parse(r.projects as string),
    created: Number(r.created),
    revoked: r.revoked === null ? null : Number(r.revoked),
  };
}

/** A `sessions` row. */
export function sessionOf(r: Row): SessionRow {
  return {
    hash: new Uint8Array(r.hash as Uint8Array),
    tokenId: (r.token as string | null) ?? null,
    csrf: r.csrf as string,
    created: Number(r.created),
    seen: Number(r.seen),
  };
}

/** A `notes` row. */
export function noteOf(r: Row): CommitNote {
  return { path: r.path as string, flag: r.flag as EntryFlag, reason: r.reason as string };
}

/** Files, dirs, symlinks and bytes of head rows an upload names (the `totals` statement). */
export interface Totals {
  f: number;
  d: number;
  l: number;
  bytes: number;
}

/**
 * The new commit's counts: the head's, minus the rows the upload replaced
 * (`removed`, read before the moves), plus what it wrote (`written`, after).
 */
export function commitCounts(
  head: CommitInfo | null,
  removed: Totals,
  written: Totals,
  n: { added: number; staged: number; metadata: number; deleted: number; flagged: number },
): CommitCounts {
  const prev = head?.counts ?? { files: 0, dirs: 0, symlinks: 0, bytes: 0 } as CommitCounts;
  const files = prev.files - removed.f + written.f;
  const dirs = prev.dirs - removed.d + written.d;
  const symlinks = prev.symlinks - removed.l + written.l;
  return {
    files,
    dirs,
    symlinks,
    bytes: prev.bytes - removed.bytes + written.bytes,
    added: n.added,
    changed: n.staged - n.added,
    deleted: n.deleted,
    metadata: n.metadata,
    unchanged: files + dirs + symlinks - n.staged - n.metadata - n.flagged,
    flagged: n.flagged,
  };
}
