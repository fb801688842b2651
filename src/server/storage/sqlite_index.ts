/**
 * The server's index: projects, commits and file versions in SQLite (WAL)
 * through `node:sqlite`.
 *
 * History grows with changes, not with files × commits. `current` holds the
 * latest version of every path of a project (the head manifest is one
 * sequential scan); when a commit replaces or deletes a path, the old row
 * moves to `history` with the half-open range [first, last) of commit
 * sequence numbers it was valid for. The manifest of commit `s` is
 * `current` rows with first <= s plus `history` rows with first <= s < last.
 * An unchanged file costs nothing per commit.
 *
 * Uploads are staged in a TEMP table and applied by set-based SQL in one
 * IMMEDIATE transaction, checked (parent still head, every parent path a
 * directory, content known) before it commits: a commit exists whole or not
 * at all.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import { KeepError } from "../../errors.ts";
import type {
  CommitCounts,
  CommitInfo,
  CommitStats,
  Entry,
  EntryFlag,
  UploadHeader,
} from "../../format/manifest.ts";
import { parentOf } from "../../format/paths.ts";
import type { CommitNote, ProjectInfo } from "../../format/api.ts";

/** 2: blobs.damaged, packs.sealed and the store_meta table (damage epoch). */
const SCHEMA_VERSION = 2;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS projects(
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  head INTEGER NOT NULL DEFAULT 0,
  created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commits(
  project INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  id TEXT NOT NULL UNIQUE,
  parent TEXT,
  time INTEGER NOT NULL,
  message TEXT NOT NULL,
  tags TEXT NOT NULL,
  host TEXT NOT NULL,
  source TEXT NOT NULL,
  scan_time INTEGER NOT NULL,
  granularity INTEGER NOT NULL,
  counts TEXT NOT NULL,
  stats TEXT NOT NULL,
  PRIMARY KEY(project, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS current(
  project INTEGER NOT NULL, path TEXT NOT NULL, first INTEGER NOT NULL,
  type TEXT NOT NULL, size INTEGER NOT NULL, mode INTEGER NOT NULL,
  mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
  hash BLOB, target TEXT, xxh BLOB, flag TEXT,
  PRIMARY KEY(project, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history(
  project INTEGER NOT NULL, path TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
  type TEXT NOT NULL, size INTEGER NOT NULL, mode INTEGER NOT NULL,
  mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
  hash BLOB, target TEXT, xxh BLOB, flag TEXT,
  PRIMARY KEY(project, path, first)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS current_hash ON current(hash) WHERE hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS history_hash ON history(hash) WHERE hash IS NOT NULL;
CREATE TABLE IF NOT EXISTS notes(
  project INTEGER NOT NULL, seq INTEGER NOT NULL, path TEXT NOT NULL, flag TEXT NOT NULL, reason TEXT NOT NULL,
  PRIMARY KEY(project, seq, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs(
  id INTEGER PRIMARY KEY,
  hash BLOB NOT NULL UNIQUE,
  size INTEGER NOT NULL,
  stored INTEGER NOT NULL,
  xxh BLOB,
  pack INTEGER,
  offset INTEGER,
  level INTEGER,
  damaged TEXT
);
CREATE TABLE IF NOT EXISTS store_meta(
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS packs(
  id INTEGER PRIMARY KEY,
  created INTEGER NOT NULL,
  sealed INTEGER
);
CREATE TABLE IF NOT EXISTS tokens(
  id TEXT PRIMARY KEY,
  hash BLOB NOT NULL UNIQUE,
  name TEXT NOT NULL,
  role TEXT NOT NULL,
  projects TEXT NOT NULL,
  created INTEGER NOT NULL,
  revoked INTEGER
);
`;

const STAGE = `
CREATE TEMP TABLE IF NOT EXISTS stage(
  upload INTEGER NOT NULL, path TEXT NOT NULL, parent TEXT NOT NULL, op TEXT NOT NULL,
  type TEXT, size INTEGER, mode INTEGER, mtime INTEGER, ctime INTEGER,
  hash BLOB, target TEXT, xxh BLOB, flag TEXT, reason TEXT,
  PRIMARY KEY(upload, path)
) WITHOUT ROWID;
`;

/** What an upload stages for one path. */
export type StageOp = "put" | "meta" | "del" | "keep";

/** One staged change. `entry` for put/meta; `flag`/`reason` for keep. */
export interface StageRow {
  op: StageOp;
  path: string;
  entry?: Entry;
  /** The entry's hash and partial hash as bytes, when the caller has them (saves a hex round trip). */
  hashBytes?: Uint8Array;
  xxhBytes?: Uint8Array;
  flag?: EntryFlag;
  reason?: string;
}

const HEX_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) {
  HEX_VALUE["0123456789abcdef".charCodeAt(i)] = i;
  HEX_VALUE["0123456789ABCDEF".charCodeAt(i)] = i;
}

/** Lower- or upper-case hex to bytes (callers validate the text first). */
export function hexToBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length >> 1);
  for (let i = 0, j = 0; i < out.length; i++, j += 2) {
    out[i] = (HEX_VALUE[hex.charCodeAt(j) & 127] << 4) | HEX_VALUE[hex.charCodeAt(j + 1) & 127];
  }
  return out;
}

/** SHA-256 of no bytes: the content of every empty file (never stored as a blob). */
const EMPTY_HASH = hexToBytes("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));
export function bytesToHex(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += HEX[b[i]];
  return s;
}

type Row = Record<string, unknown>;

function rowToEntry(r: unknown[]): Entry {
  // path, type, size, mode, mtime, ctime, hash, target, xxh, flag
  const e: Entry = {
    path: r[0] as string,
    type: r[1] as Entry["type"],
    size: Number(r[2]),
    mode: Number(r[3]),
    mtime: r[4] as bigint,
    ctime: r[5] as bigint,
  };
  if (r[6]) e.hash = r[6] as string;
  if (r[7] !== null) e.target = r[7] as string;
  if (r[8]) e.xxh = r[8] as string;
  if (r[9] !== null) e.flag = r[9] as EntryFlag;
  return e;
}

// Hashes come out as hex text: no small ArrayBuffer per row (a 1M-row manifest made 2M of them).
const COLS =
  "path, type, size, mode, mtime, ctime, lower(hex(hash)), target, lower(hex(xxh)), flag";
/** COLS with the raw hash (for a join), and COLS read back from such a row set `e`. */
const RAW_COLS = "path, type, size, mode, mtime, ctime, hash, target, xxh, flag";
const COLS_OF_E =
  "e.path, e.type, e.size, e.mode, e.mtime, e.ctime, lower(hex(e.hash)), e.target, lower(hex(e.xxh)), e.flag";

/** Where a blob's bytes are (see BlobStore). */
export interface BlobPlace {
  size: number;
  stored: number;
  pack: number | null;
  offset: number | null;
}

/**
 * The end of the sorted key range of the paths below `prefix`: "prefix0" ("0"
 * follows "/" in byte order), or null for the whole commit (no string is an
 * upper bound of every valid path).
 */
function prefixEnd(prefix: string): string | null {
  return prefix === "" ? null : prefix + "0";
}

/**
 * The SQLite index of one data directory.
 *
 * @example
 * ```ts
 * const index = IndexDb.open("/srv/keep/index.db");
 * const head = index.headCommit("app");
 * ```
 */
export class IndexDb {
  readonly db: DatabaseSync;
  #stmts = new Map<string, StatementSync>();
  #nextUpload = 1;
  /** Paths the last commitUpload touched, sorted (null when there were many). */
  lastChanged: string[] | null = null;

  private constructor(db: DatabaseSync) {
    this.db = db;
  }

  /** Opens (creating when needed) the index at `path`. */
  static open(path: string): IndexDb {
    const db = new DatabaseSync(path);
    db.exec("PRAGMA journal_mode=WAL");
    db.exec("PRAGMA synchronous=NORMAL");
    db.exec("PRAGMA busy_timeout=30000");
    db.exec("PRAGMA foreign_keys=OFF");
    db.exec("PRAGMA temp_store=FILE");
    db.exec("PRAGMA cache_size=-4096"); // 4 MiB: the hot set is the B-tree tops (16 MiB: +12 MB RSS, no faster)
    const version = Number((db.prepare("PRAGMA user_version").get() as Row).user_version);
    if (version > SCHEMA_VERSION) {
      db.close();
      throw new KeepError(
        "invalid",
        `Cannot open index: schema ${version} is newer than this keep (${SCHEMA_VERSION})`,
      );
    }
    if (version === 1) {
      // 1 → 2: damaged blobs are marked (existing rows: sound until checked);
      // packs are sealed once their writer closed (existing ones all are).
      db.exec("ALTER TABLE blobs ADD COLUMN damaged TEXT");
      db.exec("ALTER TABLE packs ADD COLUMN sealed INTEGER");
      db.exec("UPDATE packs SET sealed = created");
    }
    db.exec(SCHEMA);
    db.exec(`PRAGMA user_version=${SCHEMA_VERSION}`);
    db.exec(STAGE);
    return new IndexDb(db);
  }

  close(): void {
    this.#stmts.clear();
    if (this.db.isOpen) this.db.close();
  }

  /** A cached prepared statement. */
  stmt(sql: string, bigints = false, arrays = false): StatementSync {
    const key = (bigints ? "B" : "N") + (arrays ? "A" : "O") + sql;
    let s = this.#stmts.get(key);
    if (!s) {
      s = this.db.prepare(sql);
      s.setAllowUnknownNamedParameters(true);
      if (bigints) s.setReadBigInts(true);
      // Rows as arrays: less allocation on big scans (present at runtime, missing from the types).
      if (arrays) (s as unknown as { setReturnArrays(on: boolean): void }).setReturnArrays(true);
      this.#stmts.set(key, s);
    }
    return s;
  }

  /**
   * Runs `fn` in a BEGIN IMMEDIATE transaction; `durable` makes the COMMIT
   * fsync the WAL (synchronous=FULL) before returning.
   */
  transaction<T>(fn: () => T, durable = false): T {
    if (durable) this.db.exec("PRAGMA synchronous=FULL");
    try {
      this.db.exec("BEGIN IMMEDIATE");
      let result: T;
      try {
        result = fn();
      } catch (err) {
        this.db.exec("ROLLBACK");
        throw err;
      }
      this.db.exec("COMMIT");
      return result;
    } finally {
      if (durable) this.db.exec("PRAGMA synchronous=NORMAL");
    }
  }

  /**
   * Marks blob `hash` damaged (it failed a check): uploads no longer count on
   * it, so the next upload of that content replaces it, and every head entry
   * that refers to it is flagged `damaged`, so the next backup of those files
   * sends them whole. Bumps the damage epoch (head manifests are stale).
   * Returns false when the blob was already marked or is unknown.
   */
  markDamaged(hash: Uint8Array, problem: string): boolean {
    return this.transaction(() => {
      const r = this.stmt("UPDATE blobs SET damaged = ? WHERE hash = ? AND damaged IS NULL").run(
        problem.slice(0, 500),
        hash,
      );
      if (Number(r.changes) === 0) return false;
      this.stmt("UPDATE current SET flag = 'damaged' WHERE hash = ? AND flag IS NULL").run(hash);
      this.#bumpDamageEpoch();
      return true;
    }, true);
  }

  /**
   * After an upload stored new bytes for a damaged blob: the flags its
   * marking set on head entries go (call inside the commit's transaction).
   */
  clearDamaged(hash: Uint8Array): void {
    this.stmt("UPDATE current SET flag = NULL WHERE hash = ? AND flag = 'damaged'").run(hash);
    this.#bumpDamageEpoch();
  }

  #bumpDamageEpoch(): void {
    this.stmt(
      "INSERT INTO store_meta(key, value) VALUES ('damage_epoch', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1",
    ).run();
  }

  /** Changes whenever blobs are marked damaged or repaired (any process). */
  damageEpoch(): number {
    const r = this.stmt("SELECT value FROM store_meta WHERE key = 'damage_epoch'").get() as
      | Row
      | undefined;
    return r ? Number(r.value) : 0;
  }

  /** The numeric id of a project, created when `create` is set. */
  projectId(name: string, create = false): number | null {
    const row = this.stmt("SELECT id FROM projects WHERE name = ?").get(name) as Row | undefined;
    if (row) return Number(row.id);
    if (!create) return null;
    const r = this.stmt("INSERT INTO projects(name, created) VALUES (?, ?)").run(name, Date.now());
    return Number(r.lastInsertRowid);
  }

  listProjects(): ProjectInfo[] {
    const rows = this.stmt("SELECT id, name, head FROM projects ORDER BY name").all() as Row[];
    return rows.map((r) => ({
      name: r.name as string,
      commits: Number(
        (this.stmt("SELECT count(*) AS n FROM commits WHERE project = ?").get(
          r.id as number,
        ) as Row).n,
      ),
      head: Number(r.head)
        ? this.#commitBySeq(Number(r.id), r.name as string, Number(r.head))
        : null,
    }));
  }

  #commitFromRow(r: Row, project: string): CommitInfo {
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

  #commitBySeq(projectId: number, project: string, seq: number): CommitInfo | null {
    const r = this.stmt("SELECT * FROM commits WHERE project = ? AND seq = ?", true).get(
      projectId,
      seq,
    ) as
      | Row
      | undefined;
    return r ? this.#commitFromRow(r, project) : null;
  }

  /** The latest commit of a project, or null (also for unknown projects). */
  headCommit(project: string): CommitInfo | null {
    const r = this.stmt("SELECT id, head FROM projects WHERE name = ?").get(project) as
      | Row
      | undefined;
    if (!r || !Number(r.head)) return null;
    return this.#commitBySeq(Number(r.id), project, Number(r.head));
  }

  /**
   * Finds a commit by id, unique id prefix (4+ chars), sequence number (`#N`
   * or `N`), or `latest`. Throws not_found.
   */
  resolveCommit(project: string, ref: string): CommitInfo {
    const pid = this.projectId(project);
    if (pid === null) {
      throw new KeepError("not_found", `Cannot find project ${project}: it has no commits`);
    }
    let found: CommitInfo | null = null;
    if (ref === "latest" || ref === "") {
      found = this.headCommit(project);
    } else if (/^#?\d{1,9}$/.test(ref) && ref.length < 12) {
      found = this.#commitBySeq(pid, project, Number(ref.replace("#", "")));
    } else if (/^[0-9a-f]{4,32}$/.test(ref)) {
      const rows = this.stmt(
        "SELECT * FROM commits WHERE project = ? AND id >= ? AND id < ? ORDER BY id LIMIT 2",
        true,
      ).all(pid, ref, ref + "g") as Row[];
      if (rows.length > 1) {
        throw new KeepError("usage", `Cannot pick commit: prefix ${ref} is ambiguous`);
      }
      if (rows.length === 1) found = this.#commitFromRow(rows[0], project);
    }
    if (!found) throw new KeepError("not_found", `Cannot find commit ${ref} in project ${project}`);
    return found;
  }

  /** Commits of a project, newest first. */
  listCommits(project: string, limit = 1000, beforeSeq = Number.MAX_SAFE_INTEGER): CommitInfo[] {
    const pid = this.projectId(project);
    if (pid === null) return [];
    const rows = this.stmt(
      "SELECT * FROM commits WHERE project = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
      true,
    ).all(pid, beforeSeq, limit) as Row[];
    return rows.map((r) => this.#commitFromRow(r, project));
  }

  /** Paths of a commit that were kept flagged, with reasons. */
  commitNotes(project: string, seq: number): CommitNote[] {
    const pid = this.projectId(project);
    if (pid === null) return [];
    return (this.stmt(
      "SELECT path, flag, reason FROM notes WHERE project = ? AND seq = ? ORDER BY path",
    )
      .all(pid, seq) as Row[]).map((r) => ({
        path: r.path as string,
        flag: r.flag as EntryFlag,
        reason: r.reason as string,
      }));
  }

  /**
   * Up to `limit` rows of commit `seq` with `after < path < before` (no upper
   * bound when `before` is null), in path
   * order (with the blob's place when asked). Call repeatedly with `after` =
   * the last path returned.
   */
  #page(
    projectId: number,
    seq: number,
    headSeq: number,
    after: string,
    before: string | null,
    limit: number,
    withBlobs: boolean,
  ): unknown[][] {
    const cols = withBlobs ? RAW_COLS : COLS;
    // Two statements, with and without the upper bound: an "?4 IS NULL OR"
    // would keep SQLite from using the bound as a range on the key.
    const range = before === null ? "path > ?3" : "path > ?3 AND path < ?4";
    const cur = `SELECT ${cols} FROM current WHERE project = ?1 AND ${range} AND first <= ?2`;
    let sql = seq === headSeq
      ? `${cur} ORDER BY path LIMIT ?5`
      : `SELECT * FROM (${cur} UNION ALL SELECT ${cols} FROM history WHERE project = ?1 AND ${range} AND first <= ?2 AND last > ?2) ORDER BY path LIMIT ?5`;
    if (withBlobs) {
      // The blob's place in the store, in the same query: one lookup per
      // file on restore cost more than encoding its tar header.
      sql = `SELECT ${COLS_OF_E}, b.size, b.stored, b.pack, b.offset FROM (${sql}) e
        LEFT JOIN blobs b ON b.hash = e.hash ORDER BY e.path`;
    }
    const s = this.stmt(sql, true, true);
    return s.all(projectId, seq, after, before ?? "", limit) as unknown as unknown[][];
  }

  /**
   * Bumped whenever blob rows move or go (prune, recompression): a place
   * read before a change of this number may be stale.
   */
  blobEpoch = 0;

  /**
   * Like `entries`, with each file's blob place (null for other entries, or
   * when the blob row is missing) and the `blobEpoch` it was read at.
   */
  *entriesWithBlobs(
    project: string,
    commit: CommitInfo,
    prefix = "",
    pageSize = 2000,
  ): Generator<{ entry: Entry; blob: BlobPlace | null; epoch: number }> {
    for (const { row: r, epoch } of this.#rows(project, commit, prefix, pageSize, true)) {
      const blob = r[10] === null || r[10] === undefined ? null : {
        size: Number(r[10]),
        stored: Number(r[11]),
        pack: r[12] === null ? null : Number(r[12]),
        offset: r[13] === null ? null : Number(r[13]),
      };
      yield { entry: rowToEntry(r), blob, epoch };
    }
  }

  /** One entry of commit `seq`, or null. */
  entryAt(projectId: number, seq: number, path: string): Entry | null {
    const r = this.#exactRow(projectId, seq, path);
    return r ? rowToEntry(r) : null;
  }

  #exactRow(projectId: number, seq: number, path: string): unknown[] | null {
    const s = this.stmt(
      `SELECT ${COLS} FROM current WHERE project = ?1 AND path = ?3 AND first <= ?2
       UNION ALL SELECT ${COLS} FROM history WHERE project = ?1 AND path = ?3 AND first <= ?2 AND last > ?2`,
      true,
      true,
    );
    return (s.get(projectId, seq, path) as unknown as unknown[] | undefined) ?? null;
  }

  /**
   * Streams the entries of a commit under `prefix` ("" for all) in path
   * order, a page at a time (no statement stays open between pages).
   */
  *entries(project: string, commit: CommitInfo, prefix = "", pageSize = 2000): Generator<Entry> {
    for (const { row } of this.#rows(project, commit, prefix, pageSize, false)) {
      yield rowToEntry(row);
    }
  }

  /** The rows behind `entries` (with blob places when asked), and the blobEpoch of their page. */
  *#rows(
    project: string,
    commit: CommitInfo,
    prefix: string,
    pageSize: number,
    withBlobs: boolean,
  ): Generator<{ row: unknown[]; epoch: number }> {
    const pid = this.projectId(project);
    if (pid === null) return;
    if (prefix !== "") {
      const exact = this.#exactRow(pid, commit.seq, prefix);
      if (exact) yield { row: exact, epoch: -1 };
    }
    // Paths under prefix are > prefix + "/" only after "prefix/" itself.
    let after = prefix === "" ? "" : prefix + "/";
    const before = prefixEnd(prefix);
    for (;;) {
      // The head is read again for every page: a commit landing between two
      // pages moves replaced rows from `current` to `history`, and a page that
      // still read only `current` would miss them.
      const headSeq = this.headCommit(project)?.seq ?? 0;
      const epoch = this.blobEpoch;
      const rows = this.#page(pid, commit.seq, headSeq, after, before, pageSize, withBlobs);
      for (const row of rows) yield { row, epoch };
      if (rows.length < pageSize) return;
      after = rows[rows.length - 1][0] as string;
    }
  }

  /** True when the project refers to content `hash` in any commit. */
  projectHasHash(projectId: number, hash: Uint8Array): boolean {
    return !!this.stmt(
      "SELECT 1 FROM current WHERE hash = ?2 AND project = ?1 UNION ALL SELECT 1 FROM history WHERE hash = ?2 AND project = ?1 LIMIT 1",
    ).get(projectId, hash);
  }

  /** A fresh id for staging one upload. */
  newUpload(): number {
    return this.#nextUpload++;
  }

  /** Stages rows of an upload. Call inside a transaction for speed. */
  stage(upload: number, rows: StageRow[]): void {
    const ins = this.stmt(
      `INSERT INTO temp.stage(upload, path, parent, op, type, size, mode, mtime, ctime, hash, target, xxh, flag, reason)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    for (const r of rows) {
      const e = r.entry;
      try {
        ins.run(
          upload,
          r.path,
          parentOf(r.path),
          r.op,
          e?.type ?? null,
          e?.size ?? null,
          e?.mode ?? null,
          e?.mtime ?? null,
          e?.ctime ?? null,
          r.hashBytes ?? (e?.hash ? hexToBytes(e.hash) : null),
          e?.target ?? null,
          r.xxhBytes ?? (e?.xxh ? hexToBytes(e.xxh) : null),
          r.flag ?? null,
          r.reason ?? null,
        );
      } catch (err) {
        if (String(err).includes("UNIQUE")) {
          throw new KeepError(
            "invalid",
            `Cannot accept upload: path ${JSON.stringify(r.path)} appears twice`,
          );
        }
        throw err;
      }
    }
  }

  /**
   * Withdraws a staged put (the client saw the file move while sending it):
   * a path the parent has keeps its last version (a keep, flagged); a new
   * one is left out of the commit.
   */
  unstagePut(upload: number, project: string, path: string, reason: string): void {
    const pid = this.projectId(project);
    const inParent = pid !== null &&
      !!this.stmt("SELECT 1 FROM current WHERE project = ? AND path = ?").get(pid, path);
    const r = inParent
      ? this.stmt(
        "UPDATE temp.stage SET op = 'keep', flag = 'unsettled', reason = ?3 WHERE upload = ?1 AND path = ?2 AND op = 'put'",
      ).run(upload, path, reason)
      : this.stmt("DELETE FROM temp.stage WHERE upload = ?1 AND path = ?2 AND op = 'put'").run(
        upload,
        path,
      );
    if (Number(r.changes) !== 1) {
      throw new KeepError(
        "invalid",
        `Cannot accept upload: drop record for ${JSON.stringify(path)} names no sent file`,
      );
    }
  }

  /** Forgets an upload's staged rows. */
  dropUpload(upload: number): void {
    this.stmt("DELETE FROM temp.stage WHERE upload = ?").run(upload);
  }

  /**
   * Applies a staged upload as the next commit of `project`, durably, in one
   * transaction. Throws conflict when `header.parent` is not the head and
   * invalid when the result would not be a tree.
   */
  commitUpload(
    upload: number,
    project: string,
    header: UploadHeader,
    stats: CommitStats,
  ): CommitInfo {
    return this.transaction(() => {
      const pid = this.projectId(project, true)!;
      const head = this.headCommit(project);
      if ((head?.id ?? null) !== header.parent) {
        throw new KeepError(
          "conflict",
          `Cannot commit: parent ${header.parent ?? "(none)"} is not the head of ${project} (${
            head?.id ?? "none"
          })`,
        );
      }
      const seq = (head?.seq ?? 0) + 1;
      const q = (sql: string) => this.stmt(sql);
      const fail = (sql: string, msg: (p: string) => string) => {
        const r = q(sql).get({ u: upload, p: pid, s: seq, empty: EMPTY_HASH }) as Row | undefined;
        if (r) throw new KeepError("invalid", `Cannot commit: ${msg(r.path as string)}`);
      };
      fail(
        "SELECT path FROM temp.stage s WHERE upload = $u AND op = 'del' AND NOT EXISTS (SELECT 1 FROM current c WHERE c.project = $p AND c.path = s.path) LIMIT 1",
        (p) => `deleted path ${JSON.stringify(p)} is not in the parent commit`,
      );
      fail(
        "SELECT path FROM temp.stage s WHERE upload = $u AND op = 'keep' AND NOT EXISTS (SELECT 1 FROM current c WHERE c.project = $p AND c.path = s.path) LIMIT 1",
        (p) => `keep record for ${JSON.stringify(p)} names a path the parent commit does not have`,
      );
      fail(
        "SELECT path FROM temp.stage s WHERE upload = $u AND op = 'put' AND type = 'f' AND size > 0 AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = s.hash) LIMIT 1",
        (p) => `content of ${JSON.stringify(p)} was not stored`,
      );
      // A metadata record re-records content: it must be content of this very
      // project, of exactly that size; non-files carry no hash.
      fail(
        `SELECT path FROM temp.stage s WHERE upload = $u AND op = 'meta' AND (
           (type != 'f' AND (hash IS NOT NULL OR xxh IS NOT NULL)) OR
           (type = 'f' AND (hash IS NULL OR (size = 0 AND hash != $empty))) OR
           (type = 'f' AND size > 0 AND NOT (
             EXISTS (SELECT 1 FROM blobs b WHERE b.hash = s.hash AND b.size = s.size) AND (
             EXISTS (SELECT 1 FROM current c WHERE c.hash = s.hash AND c.project = $p) OR
             EXISTS (SELECT 1 FROM history h WHERE h.hash = s.hash AND h.project = $p))))) LIMIT 1`,
        (p) =>
          `metadata record for ${
            JSON.stringify(p)
          } names content the project never had (at that size)`,
      );
      const totalsOf = (where: string) => {
        const rows = q(
          `SELECT c.type AS type, count(*) AS n, sum(c.size) AS bytes FROM current c JOIN temp.stage s
           ON s.upload = $u AND s.path = c.path WHERE c.project = $p ${where} GROUP BY c.type`,
        ).all({ u: upload, p: pid }) as Row[];
        const t = { f: 0, d: 0, l: 0, bytes: 0 };
        for (const r of rows) {
          t[r.type as "f" | "d" | "l"] = Number(r.n);
          t.bytes += Number(r.bytes ?? 0);
        }
        return t;
      };
      const count = (sql: string) => Number((q(sql).get({ u: upload, p: pid }) as Row).n);
      const added = count(
        "SELECT count(*) AS n FROM temp.stage s WHERE upload = $u AND op = 'put' AND NOT EXISTS (SELECT 1 FROM current c WHERE c.project = $p AND c.path = s.path)",
      );
      const staged = count("SELECT count(*) AS n FROM temp.stage WHERE upload = $u AND op = 'put'");
      const metadata = count(
        "SELECT count(*) AS n FROM temp.stage WHERE upload = $u AND op = 'meta'",
      );
      const deleted = count(
        "SELECT count(*) AS n FROM temp.stage WHERE upload = $u AND op = 'del'",
      );
      const flagged = count(
        "SELECT count(*) AS n FROM temp.stage WHERE upload = $u AND op = 'keep'",
      );
      const removed = totalsOf("");

      // Move every replaced or deleted row to history, then write the new ones.
      q(
        `INSERT INTO history(project, path, first, last, type, size, mode, mtime, ctime, hash, target, xxh, flag)
         SELECT c.project, c.path, c.first, $s, c.type, c.size, c.mode, c.mtime, c.ctime, c.hash, c.target, c.xxh, c.flag
         FROM current c JOIN temp.stage s ON s.upload = $u AND s.path = c.path WHERE c.project = $p`,
      ).run({ u: upload, p: pid, s: seq });
      q(
        "DELETE FROM current WHERE project = $p AND path IN (SELECT path FROM temp.stage WHERE upload = $u)",
      ).run({ u: upload, p: pid });
      q(
        `INSERT INTO current(project, path, first, type, size, mode, mtime, ctime, hash, target, xxh, flag)
         SELECT $p, path, $s, type, size, mode, mtime, ctime, hash, target,
           CASE WHEN op = 'put' THEN xxh ELSE (SELECT b.xxh FROM blobs b WHERE b.hash = s.hash) END, NULL
         FROM temp.stage s WHERE upload = $u AND op IN ('put', 'meta')`,
      ).run({ u: upload, p: pid, s: seq });
      q(
        `INSERT INTO current(project, path, first, type, size, mode, mtime, ctime, hash, target, xxh, flag)
         SELECT h.project, h.path, $s, h.type, h.size, h.mode, h.mtime, h.ctime, h.hash, h.target, h.xxh, s.flag
         FROM history h JOIN temp.stage s ON s.upload = $u AND s.path = h.path AND s.op = 'keep'
         WHERE h.project = $p AND h.last = $s`,
      ).run({ u: upload, p: pid, s: seq });
      q(
        `INSERT INTO notes(project, seq, path, flag, reason)
         SELECT $p, $s, path, flag, coalesce(reason, '') FROM temp.stage WHERE upload = $u AND op = 'keep'`,
      ).run({ u: upload, p: pid, s: seq });

      // The result must be a tree: every parent a directory, no children left under a non-directory.
      fail(
        `SELECT path FROM temp.stage s WHERE upload = $u AND op != 'del' AND parent != '' AND NOT EXISTS
           (SELECT 1 FROM current c WHERE c.project = $p AND c.path = s.parent AND c.type = 'd') LIMIT 1`,
        (p) =>
          `${
            JSON.stringify(p)
          } has no parent directory in the new commit (missing, or a file or symlink)`,
      );
      fail(
        `SELECT s.path AS path FROM temp.stage s WHERE upload = $u AND (op = 'del' OR type != 'd') AND EXISTS
           (SELECT 1 FROM current c WHERE c.project = $p AND c.path > s.path || '/' AND c.path < s.path || '0') LIMIT 1`,
        (p) => `${JSON.stringify(p)} is deleted or not a directory but still has entries below it`,
      );
      const addedTotals = totalsOf("");

      const prev = head?.counts ?? { files: 0, dirs: 0, symlinks: 0, bytes: 0 } as CommitCounts;
      const files = prev.files - removed.f + addedTotals.f;
      const dirs = prev.dirs - removed.d + addedTotals.d;
      const symlinks = prev.symlinks - removed.l + addedTotals.l;
      const counts: CommitCounts = {
        files,
        dirs,
        symlinks,
        bytes: prev.bytes - removed.bytes + addedTotals.bytes,
        added,
        changed: staged - added,
        deleted,
        metadata,
        unchanged: files + dirs + symlinks - staged - metadata - flagged,
        flagged,
      };
      const id = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
      const now = Date.now();
      q(
        `INSERT INTO commits(project, seq, id, parent, time, message, tags, host, source, scan_time, granularity, counts, stats)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        pid,
        seq,
        id,
        header.parent,
        now,
        header.message,
        JSON.stringify(header.tags),
        header.host,
        header.source,
        BigInt(header.scanTime),
        BigInt(header.granularity),
        JSON.stringify(counts),
        JSON.stringify(stats),
      );
      q("UPDATE projects SET head = ? WHERE id = ?").run(seq, pid);
      // The paths this commit touched, for an incremental head manifest (when few).
      const touched = staged + metadata + deleted + flagged;
      this.lastChanged = touched <= 50_000
        ? (q("SELECT path FROM temp.stage WHERE upload = ? ORDER BY path").all(upload) as Row[])
          .map((r) => r.path as string)
        : null;
      q("DELETE FROM temp.stage WHERE upload = ?").run(upload);
      return this.#commitBySeq(pid, project, seq)!;
    }, true);
  }
}
