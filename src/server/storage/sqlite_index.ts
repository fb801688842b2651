/**
 * The embedded index: projects, commits, file versions, blobs, packs and
 * tokens in SQLite (WAL) through `node:sqlite`, behind IndexStore.
 *
 * `current` holds the latest version of every path of a project (the head
 * manifest is one sequential scan); when a commit replaces or deletes a
 * path, the old row moves to `history` with the half-open range [first,
 * last) of commit sequence numbers it was valid for. The manifest of commit
 * `s` is `current` rows with first <= s plus `history` rows with first <= s <
 * last. An unchanged file costs nothing per commit.
 *
 * Uploads are staged in a TEMP table and applied by set-based SQL in one
 * IMMEDIATE transaction, checked (parent still head, every parent path a
 * directory, content known) before it commits: a commit exists whole or not
 * at all. node:sqlite is synchronous: every method does its work before its
 * promise resolves, so two calls never interleave inside a transaction.
 *
 * @module
 */

// The methods of IndexStore are async for backends that wait on a network;
// here they do their work synchronously, and `async` makes a throw a rejection.
// deno-lint-ignore-file require-await

import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { KeepError } from "../../errors.ts";
import type {
  CommitNote,
  DiffItem,
  PathVersion,
  Policy,
  ProjectInfo,
  TreeItem,
  VersionInfo,
} from "../../format/api.ts";
import { bytesToHex, hexToBytes } from "../../format/hex.ts";
import type {
  CommitInfo,
  CommitStats,
  Entry,
  EntryFlag,
  UploadHeader,
} from "../../format/manifest.ts";
import { parentOf } from "../../format/paths.ts";
import { type CellValue, neutralCell, tableSpec } from "./tables.ts";
import type { BlobPlace } from "./blob_store.ts";
import {
  argsOf,
  CHECK_MESSAGES,
  commitCounts,
  commitFromRow,
  commitStatements,
  EMPTY_HASH,
  noteOf,
  placeOf,
  sessionOf,
  type Statement,
  tokenOf,
} from "./commit_sql.ts";
import type {
  BlobRow,
  IndexStore,
  NewBlob,
  PlacedEntry,
  ProjectUsage,
  SessionRow,
  StageRow,
  StoreCounts,
  TokenRow,
  UploadStage,
} from "./index_store.ts";
import { diffOfHistoryScan, liveVersions, versionOf } from "./versions.ts";

/**
 * 2: blobs.damaged and packs.sealed; 3: blobs.orphan (GC marks), packs.dead,
 * commits.forgotten, the uploads registry, retention policies; 4: the
 * `paths` table (every path a project ever held, for find and listings); 5:
 * web UI sessions; 6: chunked files (`blobs.chunked`, the `chunks` table: a
 * big file's content as a list of chunk blobs).
 */
const SCHEMA_VERSION = 6;

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
  forgotten INTEGER,
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
  damaged TEXT,
  orphan INTEGER,
  chunked INTEGER
);
CREATE TABLE IF NOT EXISTS chunks(
  file BLOB NOT NULL,
  seq INTEGER NOT NULL,
  chunk BLOB NOT NULL,
  PRIMARY KEY(file, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_chunk ON chunks(chunk);
CREATE INDEX IF NOT EXISTS blobs_orphan ON blobs(orphan) WHERE orphan IS NOT NULL;
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs(pack, offset) WHERE pack IS NOT NULL;
CREATE TABLE IF NOT EXISTS uploads(
  id INTEGER PRIMARY KEY,
  project TEXT NOT NULL,
  parent TEXT,
  started INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS policies(
  project TEXT PRIMARY KEY,
  policy TEXT NOT NULL,
  updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS store_meta(
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS packs(
  id INTEGER PRIMARY KEY,
  created INTEGER NOT NULL,
  sealed INTEGER,
  dead INTEGER
);
-- Every path a project's versions hold (current or history): what find
-- scans (a tenth of the version rows) and where a listing finds a directory's
-- children by seeking, whatever the commit. Rows go with their last version (GC).
CREATE TABLE IF NOT EXISTS paths(
  project INTEGER NOT NULL, path TEXT NOT NULL,
  PRIMARY KEY(project, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS secrets(name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tokens(
  id TEXT PRIMARY KEY,
  hash BLOB NOT NULL UNIQUE,
  name TEXT NOT NULL,
  role TEXT NOT NULL,
  projects TEXT NOT NULL,
  created INTEGER NOT NULL,
  revoked INTEGER
);
-- Web UI sessions, by the SHA-256 of their cookie value (session.ts).
CREATE TABLE IF NOT EXISTS sessions(
  hash BLOB PRIMARY KEY,
  token TEXT,
  csrf TEXT NOT NULL,
  created INTEGER NOT NULL,
  seen INTEGER NOT NULL
) WITHOUT ROWID;
`;

const STAGE = `
CREATE TEMP TABLE IF NOT EXISTS gc_live(seq INTEGER PRIMARY KEY);
CREATE TEMP TABLE IF NOT EXISTS gc_gone(hash BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS gc_paths(path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS stage(
  upload INTEGER NOT NULL, path TEXT NOT NULL, parent TEXT NOT NULL, op TEXT NOT NULL,
  type TEXT, size INTEGER, mode INTEGER, mtime INTEGER, ctime INTEGER,
  hash BLOB, target TEXT, xxh BLOB, flag TEXT, reason TEXT,
  PRIMARY KEY(upload, path)
) WITHOUT ROWID;
`;

/** Rows per statement inside GC's transactions: the longest a waiting writer waits. */
const SUB_BATCH = 4000;

/** SQL conditions on a `blobs` row: no version of any project refers to it (or one does). */
const UNREFERENCED = `AND NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = blobs.hash)
  AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = blobs.hash)
  AND NOT EXISTS (SELECT 1 FROM chunks k WHERE k.chunk = blobs.hash)`;
const REFERENCED = `AND (EXISTS (SELECT 1 FROM current c WHERE c.hash = blobs.hash)
  OR EXISTS (SELECT 1 FROM history h WHERE h.hash = blobs.hash)
  OR EXISTS (SELECT 1 FROM chunks k WHERE k.chunk = blobs.hash))`;

type Row = Record<string, unknown>;

/** The commit's statements on this connection's TEMP staging table. */
const COMMIT = commitStatements("temp.stage");

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

/**
 * The end of the sorted key range of the paths below `prefix`: "prefix0" ("0"
 * follows "/" in byte order), or null for the whole commit (no string is an
 * upper bound of every valid path).
 */
function prefixEnd(prefix: string): string | null {
  return prefix === "" ? null : prefix + "0";
}

/** Columns of a version as browsing shows it (mtime as text: no BigInt per row). */
const VERSION_COLS = "path, type, size, mode, CAST(mtime AS TEXT), lower(hex(hash)), target, flag";

/** A VERSION_COLS row as a VersionInfo. */
function rowToVersion(r: unknown[]): VersionInfo {
  const v: VersionInfo = {
    type: r[1] as VersionInfo["type"],
    size: Number(r[2]),
    mode: Number(r[3]),
    mtime: r[4] as string,
  };
  if (r[5]) v.hash = r[5] as string;
  if (r[6] !== null) v.target = r[6] as string;
  if (r[7] !== null) v.flag = r[7] as string;
  return v;
}

/** Rows per page of a commit's entries (no statement stays open between pages). */
const PAGE = 2000;

/**
 * A Bloom filter over blob hashes, so that looking up content the store has
 * never seen (every file of a first backup) costs no SQLite query. The
 * SHA-256 bits are already uniform: the k probes are 32-bit words of the
 * hash. False positives fall through to SQLite; a false negative cannot
 * happen for hashes added here.
 */
class HashFilter {
  #bits: Uint32Array;
  #mask: number;
  #count = 0;
  constructor(expected: number) {
    let m = 1 << 23; // 8 Mbit = 1 MiB
    while (m < expected * 16) m *= 2;
    this.#bits = new Uint32Array(m / 32);
    this.#mask = m - 1;
  }
  /** True when the filter should be rebuilt larger. */
  get full(): boolean {
    return this.#count * 12 > this.#mask;
  }
  add(h: Uint8Array): void {
    for (let i = 0; i < 24; i += 4) {
      const bit = ((h[i] | (h[i + 1] << 8) | (h[i + 2] << 16) | (h[i + 3] << 24)) >>> 0) &
        this.#mask;
      this.#bits[bit >>> 5] |= 1 << (bit & 31);
    }
    this.#count++;
  }
  mayHave(h: Uint8Array): boolean {
    for (let i = 0; i < 24; i += 4) {
      const bit = ((h[i] | (h[i + 1] << 8) | (h[i + 2] << 16) | (h[i + 3] << 24)) >>> 0) &
        this.#mask;
      if ((this.#bits[bit >>> 5] & (1 << (bit & 31))) === 0) return false;
    }
    return true;
  }
}

function blobRowOf(r: Row): BlobRow {
  return { id: Number(r.id), hash: r.hash as Uint8Array, ...placeOf(r) };
}

/**
 * The SQLite index of one data directory.
 *
 * @example
 * ```ts
 * const index = SqliteIndex.open("/srv/keep/index.db");
 * const head = await index.headCommit("app");
 * ```
 */
export class SqliteIndex implements IndexStore {
  readonly db: DatabaseSync;
  #stmts = new Map<string, StatementSync>();
  #nextUpload = 1;
  /** Uploads being staged, with their start (ms): GC spares what they may count on. */
  #filter: HashFilter | null = null;
  #blobEpoch = 0;

  /**
   * Writers waiting for or holding the write lock, shared between the
   * server's connection (which counts itself in around each transaction)
   * and GC's (which waits until none, and ends its long transactions early
   * when one comes): see shareWriters.
   */
  #writers: Int32Array | null = null;
  #yielding = false;
  #inTransaction = false;

  private constructor(db: DatabaseSync) {
    this.db = db;
  }

  /**
   * Shares a writers counter with another connection (another thread).
   * `yielding`: this connection is the background one (GC) that gives way.
   */
  shareWriters(buffer: SharedArrayBuffer, yielding: boolean): void {
    this.#writers = new Int32Array(buffer);
    this.#yielding = yielding;
  }

  /** True when this is the yielding connection and another writer waits. */
  #othersWait(): boolean {
    return this.#yielding && this.#writers !== null && Atomics.load(this.#writers, 0) > 0;
  }

  /** Opens (creating when needed) the index at `path`. */
  /** `cacheMiB`: SQLite's page cache (default 4; GC's connection takes more: big batches). */
  static open(path: string, options: { cacheMiB?: number } = {}): SqliteIndex {
    const db = new DatabaseSync(path);
    db.exec("PRAGMA journal_mode=WAL");
    db.exec("PRAGMA synchronous=NORMAL");
    db.exec("PRAGMA busy_timeout=30000");
    db.exec("PRAGMA foreign_keys=OFF");
    db.exec("PRAGMA temp_store=FILE");
    // 4 MiB: the hot set is the B-tree tops (see DESIGN.md).
    db.exec(`PRAGMA cache_size=-${Math.round((options.cacheMiB ?? 4) * 1024)}`);
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
    if (version === 1 || version === 2) {
      // 2 → 3 (retention and GC): unreferenced blobs are marked, emptied packs
      // wait as dead, forgotten commits keep their rows through the grace.
      db.exec("ALTER TABLE blobs ADD COLUMN orphan INTEGER");
      db.exec("ALTER TABLE packs ADD COLUMN dead INTEGER");
      db.exec("ALTER TABLE commits ADD COLUMN forgotten INTEGER");
    }
    if (
      version >= 1 && version <= 5 &&
      !(db.prepare("PRAGMA table_info(blobs)").all() as Row[]).some((c) => c.name === "chunked")
    ) {
      // 5 → 6: chunked files (old rows are whole blobs: chunked NULL).
      db.exec("ALTER TABLE blobs ADD COLUMN chunked INTEGER");
    }
    db.exec(SCHEMA);
    if (version >= 1 && version <= 3) {
      // 3 → 4: the paths of every version recorded so far.
      db.exec(`INSERT OR IGNORE INTO paths(project, path)
        SELECT project, path FROM current UNION SELECT project, path FROM history`);
    }
    if (version === 0) {
      // A new store has no blobs of failed uploads yet: its first full GC mark pass is a day away.
      db.prepare("INSERT OR IGNORE INTO store_meta(key, value) VALUES ('gc_full_mark', ?)").run(
        Date.now(),
      );
    }
    db.exec(`PRAGMA user_version=${SCHEMA_VERSION}`);
    db.exec(STAGE);
    return new SqliteIndex(db);
  }

  async close(): Promise<void> {
    this.closeSync();
    return Promise.resolve();
  }

  /** Closes at once (a forced exit). */
  closeSync(): void {
    this.#stmts.clear();
    if (this.db.isOpen) this.db.close();
  }

  /** A cached prepared statement. */
  #stmt(sql: string, bigints = false, arrays = false): StatementSync {
    const key = (bigints ? "B" : "N") + (arrays ? "A" : "O") + sql;
    let s = this.#stmts.get(key);
    if (!s) {
      s = this.db.prepare(sql);
      s.setAllowUnknownNamedParameters(true);
      if (bigints) s.setReadBigInts(true);
      // Rows as arrays: less allocation on big scans (present at runtime, missing from the types).
      if (arrays) (s as unknown as { setReturnArrays(on: boolean): void }).setReturnArrays(true);
      if (/^\s*(INSERT|UPDATE|DELETE)/i.test(sql)) {
        // A write outside a transaction takes the write lock too: counted
        // in like a transaction (see #writers).
        const run = s.run.bind(s);
        s.run = ((...args: Parameters<typeof run>) => {
          const w = this.#writers;
          if (!w || this.#yielding || this.#inTransaction) return run(...args);
          Atomics.add(w, 0, 1);
          try {
            return run(...args);
          } finally {
            Atomics.sub(w, 0, 1);
          }
        }) as typeof s.run;
      }
      this.#stmts.set(key, s);
    }
    return s;
  }

  #count(sql: string, ...args: (number | string | Uint8Array)[]): number {
    return Number((this.#stmt(sql).get(...args) as Row).n);
  }

  /**
   * Runs `fn` in a BEGIN IMMEDIATE transaction; `durable` makes the COMMIT
   * fsync the WAL (synchronous=FULL) before returning.
   */
  #transaction<T>(fn: () => T, durable = false): T {
    const w = this.#writers;
    if (w && this.#yielding) {
      // Give way: start only once no foreground writer waits (they wait at
      // most for one sub-batch of a transaction already running).
      while (Atomics.load(w, 0) > 0) Atomics.wait(w, 1, 0, 2);
    } else if (w) Atomics.add(w, 0, 1);
    if (durable) this.db.exec("PRAGMA synchronous=FULL");
    this.#inTransaction = true;
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
      this.#inTransaction = false;
      if (durable) this.db.exec("PRAGMA synchronous=NORMAL");
      if (w && !this.#yielding) Atomics.sub(w, 0, 1);
    }
  }

  // ---------------------------------------------------------------- projects and commits

  /** The numeric id of a project, created when `create` is set. */
  #projectId(name: string, create = false): number | null {
    const row = this.#stmt("SELECT id FROM projects WHERE name = ?").get(name) as Row | undefined;
    if (row) return Number(row.id);
    if (!create) return null;
    const r = this.#stmt("INSERT INTO projects(name, created) VALUES (?, ?)").run(name, Date.now());
    return Number(r.lastInsertRowid);
  }

  async listProjects(): Promise<ProjectInfo[]> {
    const rows = this.#stmt("SELECT id, name, head FROM projects ORDER BY name").all() as Row[];
    return Promise.resolve(rows.map((r) => ({
      name: r.name as string,
      commits: this.#count(
        "SELECT count(*) AS n FROM commits WHERE project = ? AND forgotten IS NULL",
        Number(r.id),
      ),
      head: Number(r.head)
        ? this.#commitBySeq(Number(r.id), r.name as string, Number(r.head))
        : null,
      lastComplete: this.#lastComplete(Number(r.id)),
    })));
  }

  #lastComplete(projectId: number): string | null {
    const r = this.#stmt(
      `SELECT max(time) AS t FROM commits WHERE project = ? AND forgotten IS NULL
       AND coalesce(json_extract(counts, '$.flagged'), 0) = 0`,
    ).get(projectId) as Row;
    return r.t === null ? null : new Date(Number(r.t)).toISOString();
  }

  #commitBySeq(projectId: number, project: string, seq: number): CommitInfo | null {
    const r = this.#stmt(
      "SELECT * FROM commits WHERE project = ? AND seq = ? AND forgotten IS NULL",
      true,
    ).get(projectId, seq) as Row | undefined;
    return r ? commitFromRow(r, project) : null;
  }

  #head(project: string): CommitInfo | null {
    const r = this.#stmt("SELECT id, head FROM projects WHERE name = ?").get(project) as
      | Row
      | undefined;
    if (!r || !Number(r.head)) return null;
    return this.#commitBySeq(Number(r.id), project, Number(r.head));
  }

  async headCommit(project: string): Promise<CommitInfo | null> {
    return Promise.resolve(this.#head(project));
  }

  #resolve(project: string, ref: string): CommitInfo {
    const pid = this.#projectId(project);
    if (pid === null) {
      throw new KeepError("not_found", `Cannot find project ${project}: it has no commits`);
    }
    let found: CommitInfo | null = null;
    if (ref === "latest" || ref === "") {
      found = this.#head(project);
    } else if (/^#?\d{1,9}$/.test(ref) && ref.length < 12) {
      found = this.#commitBySeq(pid, project, Number(ref.replace("#", "")));
    } else if (/^[0-9a-f]{4,32}$/.test(ref)) {
      const rows = this.#stmt(
        "SELECT * FROM commits WHERE project = ? AND id >= ? AND id < ? AND forgotten IS NULL ORDER BY id LIMIT 2",
        true,
      ).all(pid, ref, ref + "g") as Row[];
      if (rows.length > 1) {
        throw new KeepError("usage", `Cannot pick commit: prefix ${ref} is ambiguous`);
      }
      if (rows.length === 1) found = commitFromRow(rows[0], project);
    }
    if (!found) throw new KeepError("not_found", `Cannot find commit ${ref} in project ${project}`);
    return found;
  }

  async resolveCommit(project: string, ref: string): Promise<CommitInfo> {
    return new Promise((resolve) => resolve(this.#resolve(project, ref)));
  }

  async listCommits(
    project: string,
    limit = 1000,
    beforeSeq = Number.MAX_SAFE_INTEGER,
  ): Promise<CommitInfo[]> {
    const pid = this.#projectId(project);
    if (pid === null) return Promise.resolve([]);
    const rows = this.#stmt(
      "SELECT * FROM commits WHERE project = ? AND seq < ? AND forgotten IS NULL ORDER BY seq DESC LIMIT ?",
      true,
    ).all(pid, beforeSeq, limit) as Row[];
    return Promise.resolve(rows.map((r) => commitFromRow(r, project)));
  }

  async commitNotes(project: string, seq: number): Promise<CommitNote[]> {
    const pid = this.#projectId(project);
    if (pid === null) return Promise.resolve([]);
    return Promise.resolve((this.#stmt(
      "SELECT path, flag, reason FROM notes WHERE project = ? AND seq = ? ORDER BY path",
    ).all(pid, seq) as Row[]).map(noteOf));
  }

  // ---------------------------------------------------------------- file versions

  /**
   * Up to `limit` rows of commit `seq` with `after < path < before` (no upper
   * bound when `before` is null), in path order (with the blob's place when
   * asked).
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
      // The blob's place in the same query: one lookup per file on restore
      // cost more than encoding its tar header.
      sql = `SELECT ${COLS_OF_E}, b.size, b.stored, b.pack, b.offset, b.chunked FROM (${sql}) e
        LEFT JOIN blobs b ON b.hash = e.hash ORDER BY e.path`;
    }
    const s = this.#stmt(sql, true, true);
    return s.all(projectId, seq, after, before ?? "", limit) as unknown as unknown[][];
  }

  #exactRow(projectId: number, seq: number, path: string): unknown[] | null {
    const s = this.#stmt(
      `SELECT ${COLS} FROM current WHERE project = ?1 AND path = ?3 AND first <= ?2
       UNION ALL SELECT ${COLS} FROM history WHERE project = ?1 AND path = ?3 AND first <= ?2 AND last > ?2`,
      true,
      true,
    );
    return (s.get(projectId, seq, path) as unknown as unknown[] | undefined) ?? null;
  }

  /**
   * The rows of a commit under `prefix`, a page at a time (no statement stays
   * open between pages), with the blobEpoch of their page.
   */
  *#rows(
    project: string,
    commit: CommitInfo,
    prefix: string,
    pageSize: number,
    withBlobs: boolean,
  ): Generator<{ rows: unknown[][]; epoch: number }> {
    const pid = this.#projectId(project);
    if (pid === null) return;
    if (prefix !== "") {
      const exact = this.#exactRow(pid, commit.seq, prefix);
      if (exact) {
        // The exact row has no blob columns: look its place up.
        if (withBlobs) {
          const place = exact[1] === "f" && exact[6]
            ? this.#stmt("SELECT size, stored, pack, offset, chunked FROM blobs WHERE hash = ?")
              .get(
                hexToBytes(exact[6] as string),
              ) as Row | undefined
            : undefined;
          const e = [...exact.slice(0, 10)];
          e.push(
            place ? place.size : null,
            place ? place.stored : null,
            place ? place.pack : null,
            place ? place.offset : null,
            place ? place.chunked : null,
          );
          yield { rows: [e], epoch: this.#blobEpoch };
        } else yield { rows: [exact], epoch: this.#blobEpoch };
      }
    }
    // Paths under prefix are > prefix + "/" only after "prefix/" itself.
    let after = prefix === "" ? "" : prefix + "/";
    const before = prefixEnd(prefix);
    for (;;) {
      // The head is read again for every page: a commit landing between two
      // pages moves replaced rows from `current` to `history`, and a page that
      // still read only `current` would miss them.
      const headSeq = this.#head(project)?.seq ?? 0;
      const epoch = this.#blobEpoch;
      const rows = this.#page(pid, commit.seq, headSeq, after, before, pageSize, withBlobs);
      if (rows.length) yield { rows, epoch };
      if (rows.length < pageSize) return;
      after = rows[rows.length - 1][0] as string;
    }
  }

  async *entryPages(project: string, commit: CommitInfo, prefix = ""): AsyncGenerator<Entry[]> {
    for (const { rows } of this.#rows(project, commit, prefix, PAGE, false)) {
      yield rows.map(rowToEntry);
    }
  }

  /** entryPages without the promises, for this process's own callers (see manifest building). */
  *entryPagesSync(project: string, commit: CommitInfo, prefix = ""): Generator<Entry[]> {
    for (const { rows } of this.#rows(project, commit, prefix, PAGE, false)) {
      yield rows.map(rowToEntry);
    }
  }

  async *placedPages(
    project: string,
    commit: CommitInfo,
    prefix = "",
  ): AsyncGenerator<PlacedEntry[]> {
    for (const { rows, epoch } of this.#rows(project, commit, prefix, PAGE, true)) {
      yield rows.map((r) => ({
        entry: rowToEntry(r),
        blob: r[10] === null || r[10] === undefined ? null : {
          size: Number(r[10]),
          stored: Number(r[11]),
          pack: r[12] === null ? null : Number(r[12]),
          offset: r[13] === null ? null : Number(r[13]),
          ...(r[14] ? { chunked: true } : {}),
        },
        epoch,
      }));
    }
  }

  async entriesAt(project: string, seq: number, paths: string[]): Promise<Entry[]> {
    const pid = this.#projectId(project);
    const out: Entry[] = [];
    if (pid !== null) {
      for (const p of paths) {
        const r = this.#exactRow(pid, seq, p);
        if (r) out.push(rowToEntry(r));
      }
    }
    return Promise.resolve(out);
  }

  projectChunks(project: string, hashes: Uint8Array[]): Promise<Set<string>> {
    const out = new Set<string>();
    const pid = this.#projectId(project);
    if (pid === null) return Promise.resolve(out);
    const has = this.#stmt(
      `SELECT 1 FROM chunks k WHERE k.chunk = ?2 AND (
         EXISTS (SELECT 1 FROM current c WHERE c.hash = k.file AND c.project = ?1)
         OR EXISTS (SELECT 1 FROM history h WHERE h.hash = k.file AND h.project = ?1)) LIMIT 1`,
    );
    for (const h of hashes) if (has.get(pid, h)) out.add(bytesToHex(h));
    return Promise.resolve(out);
  }

  async projectHasHash(project: string, hash: Uint8Array): Promise<boolean> {
    const pid = this.#projectId(project);
    if (pid === null) return Promise.resolve(false);
    return Promise.resolve(
      !!this.#stmt(
        "SELECT 1 FROM current WHERE hash = ?2 AND project = ?1 UNION ALL SELECT 1 FROM history WHERE hash = ?2 AND project = ?1 LIMIT 1",
      ).get(pid, hash),
    );
  }

  // ---------------------------------------------------------------- browsing

  async listDir(
    project: string,
    commit: CommitInfo,
    dir: string,
    options: { after?: string; limit: number; sizes?: boolean },
  ): Promise<{ entry: VersionInfo | null | undefined; items: TreeItem[]; next: string | null }> {
    const pid = this.#projectId(project);
    if (pid === null) return { entry: undefined, items: [], next: null };
    const seq = commit.seq;
    let entry: VersionInfo | null | undefined = null;
    if (dir !== "") {
      const r = this.#exactRow(pid, seq, dir);
      entry = r ? versionOf(rowToEntry(r)) : undefined;
      if (!r || r[1] !== "d") return { entry, items: [], next: null };
    }
    const base = dir === "" ? "" : dir + "/";
    const end = prefixEnd(dir);
    // The children are found by seeking in `paths`: each direct child's own
    // row, and past each child's subtree in one step, so a listing costs a
    // few seeks per child whatever lies below (and whatever the commit).
    const seek = this.#stmt(
      end === null
        ? "SELECT path FROM paths WHERE project = ?1 AND path >= ?2 ORDER BY path LIMIT 1"
        : "SELECT path FROM paths WHERE project = ?1 AND path >= ?2 AND path < ?3 ORDER BY path LIMIT 1",
    );
    const items: TreeItem[] = [];
    let from = options.after ? options.after + "\0" : base;
    let more = false;
    for (;;) {
      const r = (end === null ? seek.get(pid, from) : seek.get(pid, from, end)) as Row | undefined;
      if (!r) break;
      const path = r.path as string;
      const slash = path.indexOf("/", base.length);
      if (slash >= 0) {
        // Deeper: its directory's own row came first (or lies before `after`).
        from = path.slice(0, slash) + "0";
        continue;
      }
      from = path + "\0";
      const row = this.#exactRow(pid, seq, path);
      if (!row) continue;
      if (items.length === options.limit) {
        more = true;
        break;
      }
      const e = rowToEntry(row);
      const item: TreeItem = { name: path.slice(base.length), path, ...versionOf(e) };
      if (e.type === "d" && options.sizes) Object.assign(item, this.#sizeBelow(pid, commit, path));
      items.push(item);
    }
    return { entry, items, next: more ? items[items.length - 1].path : null };
  }

  /** Files below `dir` in `commit`, and their bytes: a range scan of the subtree. */
  #sizeBelow(projectId: number, commit: CommitInfo, dir: string): { files: number; bytes: number } {
    const headSeq = this.#stmt("SELECT head FROM projects WHERE id = ?").get(projectId) as Row;
    const cur =
      "SELECT size FROM current WHERE project = ?1 AND path > ?3 AND path < ?4 AND first <= ?2 AND type = 'f'";
    const sql = Number(headSeq.head) === commit.seq
      ? cur
      : `${cur} UNION ALL SELECT size FROM history
      WHERE project = ?1 AND path > ?3 AND path < ?4 AND first <= ?2 AND last > ?2 AND type = 'f'`;
    const r = this.#stmt(`SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM (${sql})`).get(
      projectId,
      commit.seq,
      dir + "/",
      prefixEnd(dir)!,
    ) as Row;
    return { files: Number(r.n), bytes: Number(r.b) };
  }

  async diffPage(
    project: string,
    from: CommitInfo,
    to: CommitInfo,
    options: { prefix?: string; after?: string; limit: number },
  ): Promise<{ items: DiffItem[]; next: string | null }> {
    const pid = this.#projectId(project);
    if (pid === null || from.seq === to.seq) return { items: [], next: null };
    const lo = Math.min(from.seq, to.seq);
    const hi = Math.max(from.seq, to.seq);
    const prefix = options.prefix ?? "";
    // Set-based: only the rows valid at exactly one of the two commits, in
    // two primary-key range scans in path order: history, for the rows whose
    // [first, last) holds lo but not hi (older) or hi but not lo (newer), and
    // `current`, where a row ends nowhere. Unchanged paths cost a skipped row
    // inside SQLite, never a row out of it; history is read once per page,
    // not once per kind of row. Each scan takes a page (LIMIT, .all():
    // node:sqlite's iterate() cost 3x as much per row, and an ORDER BY over a
    // UNION ALL another second on 190k rows); the two are merged here by path.
    // Below a prefix: its key range, less the siblings that sort inside it ("a-b" for "a").
    const range = prefix === ""
      ? "path > ?4"
      : "path > ?4 AND path >= ?6 AND path < ?7 AND (path = ?6 OR path > ?6 || '/')";
    const historyArm = `SELECT ${VERSION_COLS}, first <= ?2 FROM history
      WHERE project = ?1 AND ${range}
        AND ((first <= ?2 AND last > ?2 AND last <= ?3) OR (first > ?2 AND first <= ?3 AND last > ?3))
      ORDER BY path, first LIMIT ?5 + 1`;
    const currentArm = `SELECT ${VERSION_COLS} FROM current
      WHERE project = ?1 AND ${range} AND first > ?2 AND first <= ?3 ORDER BY path LIMIT ?5`;
    const args: (number | string)[] = [pid, lo, hi, options.after ?? "", options.limit];
    if (prefix !== "") args.push(prefix, prefixEnd(prefix)!);
    const run = (sql: string) =>
      this.#stmt(sql, false, true).all(...args) as unknown as unknown[][];
    const history = run(historyArm).map((r) => ({
      path: r[0] as string,
      version: rowToVersion(r),
      old: r[8] === 1,
    }));
    const current = run(currentArm).map((r) => ({
      path: r[0] as string,
      version: rowToVersion(r),
    }));
    return diffOfHistoryScan(history, current, options.limit, from.seq === lo);
  }

  async findPaths(
    project: string,
    pattern: string,
    options: { after?: string; limit: number },
  ): Promise<{ paths: string[]; next: string | null }> {
    const pid = this.#projectId(project);
    if (pid === null) return { paths: [], next: null };
    const rows = this.#stmt(
      `SELECT path FROM paths WHERE project = ?1 AND path > ?2 AND (path GLOB ?3 OR path GLOB ?4)
       ORDER BY path LIMIT ?5`,
    ).all(
      pid,
      options.after ?? "",
      pattern,
      pattern.includes("/") ? pattern : "*/" + pattern,
      options.limit + 1,
    ) as Row[];
    const paths = rows.slice(0, options.limit).map((r) => r.path as string);
    return { paths, next: rows.length > options.limit ? paths[paths.length - 1] : null };
  }

  async pathVersions(project: string, paths: string[]): Promise<Map<string, PathVersion[]>> {
    const out = new Map<string, PathVersion[]>();
    const pid = this.#projectId(project);
    if (pid === null || paths.length === 0) return out;
    // The live commits, once: each version's range [first, last) is looked up in them.
    const live = (this.#stmt(
      "SELECT seq, id, time FROM commits WHERE project = ? AND forgotten IS NULL ORDER BY seq",
    ).all(pid) as Row[]).map((c) => ({
      seq: Number(c.seq),
      id: c.id as string,
      time: Number(c.time),
    }));
    const s = this.#stmt(
      `SELECT first, 9007199254740991 AS last, ${COLS} FROM current WHERE project = ?1 AND path = ?2
       UNION ALL SELECT first, last, ${COLS} FROM history WHERE project = ?1 AND path = ?2
       ORDER BY first DESC`,
      true,
      true,
    );
    for (const path of paths) {
      const versions = liveVersions(
        live,
        (s.all(pid, path) as unknown as unknown[][]).map((r) => ({
          first: Number(r[0]),
          last: Number(r[1]),
          version: versionOf(rowToEntry(r.slice(2))),
        })),
      );
      if (versions.length) out.set(path, versions);
    }
    return out;
  }

  // ---------------------------------------------------------------- uploads

  async beginUpload(project: string): Promise<UploadStage> {
    const upload = this.#nextUpload++;
    // Registered in the database: GC (another thread, process or server)
    // spares what an upload in flight may count on (see oldestUploadStart).
    const reg = Number(
      this.#stmt("INSERT INTO uploads(project, started) VALUES (?, ?)").run(project, Date.now())
        .lastInsertRowid,
    );
    const unregister = () => this.#stmt("DELETE FROM uploads WHERE id = ?").run(reg);
    return Promise.resolve({
      pin: async (parent) => {
        this.#stmt("UPDATE uploads SET parent = ? WHERE id = ?").run(parent, reg);
      },
      stage: async (rows, blobs) =>
        await Promise.resolve(this.#transaction(() => {
          const repaired = this.#insertBlobs(blobs);
          this.#stageRows(upload, rows);
          return repaired;
        })),
      withdraw: async (path, reason) => this.#withdraw(upload, project, path, reason),
      commit: async (header, stats) => {
        try {
          return this.#commitUpload(upload, project, header, stats);
        } finally {
          unregister();
        }
      },
      abort: async () => {
        unregister();
        this.#stmt("DELETE FROM temp.stage WHERE upload = ?").run(upload);
      },
    });
  }

  #stageRows(upload: number, rows: StageRow[]): void {
    const ins = this.#stmt(
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
  #withdraw(upload: number, project: string, path: string, reason: string): void {
    const pid = this.#projectId(project);
    const inParent = pid !== null &&
      !!this.#stmt("SELECT 1 FROM current WHERE project = ? AND path = ?").get(pid, path);
    const r = inParent
      ? this.#stmt(
        "UPDATE temp.stage SET op = 'keep', flag = 'unsettled', reason = ?3 WHERE upload = ?1 AND path = ?2 AND op = 'put'",
      ).run(upload, path, reason)
      : this.#stmt("DELETE FROM temp.stage WHERE upload = ?1 AND path = ?2 AND op = 'put'").run(
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

  /**
   * An upload whose parent is not the head any more (hosts of a build farm
   * backing up one project at once) becomes the next commit all the same, as
   * exactly the tree its host scanned: its parent's tree with its changes.
   * The paths other commits changed since that parent, and this upload does
   * not name, are staged back to their version in the parent (or deleted when
   * the parent lacked them); its own deletions and keeps of paths the head
   * no longer has are dropped or restored from the parent. The upload's
   * parent must still be a commit of the project (else conflict: the client
   * diffs again).
   */
  #rebase(
    upload: number,
    pid: number,
    project: string,
    header: UploadHeader,
    head: CommitInfo,
  ): void {
    let base = 0;
    if (header.parent !== null) {
      const p = this.#stmt(
        "SELECT seq FROM commits WHERE project = ? AND id = ? AND forgotten IS NULL",
      ).get(
        pid,
        header.parent,
      ) as Row | undefined;
      if (!p) {
        throw new KeepError(
          "conflict",
          `Cannot commit: parent ${header.parent} is not a commit of ${project} (any more); the head is ${head.id}`,
        );
      }
      base = Number(p.seq);
    }
    const q = (sql: string) => this.#stmt(sql);
    // Records that name paths of the parent: checked against the parent, not the head.
    const inBase = (path: string) => base > 0 && this.#exactRow(pid, base, path) !== null;
    const inHead = (path: string) =>
      !!q("SELECT 1 FROM current WHERE project = ? AND path = ?").get(pid, path);
    // Deletions another commit already made: done, and not to be undone below.
    const deleted = new Set<string>();
    for (
      const r of q(
        "SELECT path, op, flag, reason FROM temp.stage WHERE upload = ? AND op IN ('del', 'keep')",
      ).all(upload) as Row[]
    ) {
      const path = r.path as string;
      if (!inBase(path)) {
        const what = r.op === "del" ? "deleted path" : "keep record for";
        throw new KeepError(
          "invalid",
          `Cannot commit: ${what} ${JSON.stringify(path)} is not in the parent commit`,
        );
      }
      if (inHead(path)) continue;
      // Another commit deleted it: a deletion has nothing left to do; a kept
      // path keeps its version in the parent.
      q("DELETE FROM temp.stage WHERE upload = ? AND path = ?").run(upload, path);
      if (r.op === "del") deleted.add(path);
      if (r.op === "keep") {
        const e = rowToEntry(this.#exactRow(pid, base, path)!);
        e.flag = r.flag as EntryFlag;
        this.#stageRows(upload, [{ op: "put", path, entry: e }]);
      }
    }
    // Paths changed since the parent that this upload leaves as the parent had them.
    const changedSince = q(
      `SELECT path FROM current WHERE project = ?1 AND first > ?2
       UNION SELECT path FROM history WHERE project = ?1 AND last > ?2`,
    ).all(pid, base) as Row[];
    const rows: StageRow[] = [];
    const staged = q("SELECT 1 FROM temp.stage WHERE upload = ? AND path = ?");
    for (const r of changedSince) {
      const path = r.path as string;
      if (deleted.has(path) || staged.get(upload, path)) continue;
      const then = base > 0 ? this.#exactRow(pid, base, path) : null;
      if (then) rows.push({ op: "put", path, entry: rowToEntry(then) });
      else if (inHead(path)) rows.push({ op: "del", path });
    }
    this.#stageRows(upload, rows);
  }

  /**
   * Applies a staged upload as the next commit of `project`, durably, in one
   * transaction (on the head, see #rebase). Throws conflict when the upload's
   * parent is no commit of the project any more, and invalid when the
   * result would not be a tree.
   */
  #commitUpload(
    upload: number,
    project: string,
    header: UploadHeader,
    stats: CommitStats,
  ): { commit: CommitInfo; changed: string[] | null } {
    let changed: string[] | null = null;
    const commit = this.#transaction(() => {
      const pid = this.#projectId(project, true)!;
      const head = this.#head(project);
      // Another host's commit landed since this upload's parent: the commit is
      // still exactly the tree this host scanned (see #rebase).
      if ((head?.id ?? null) !== header.parent) this.#rebase(upload, pid, project, header, head!);
      const seq = (head?.seq ?? 0) + 1;
      const q = (sql: string) => this.#stmt(sql);
      const v = { upload, project: pid, seq, empty: EMPTY_HASH };
      const get = (st: Statement) =>
        q(st.sql).get(...argsOf(st, v) as SQLInputValue[]) as Row | undefined;
      const check = (name: keyof typeof COMMIT.checks) => {
        const r = get(COMMIT.checks[name]);
        if (r) {
          throw new KeepError(
            "invalid",
            `Cannot commit: ${CHECK_MESSAGES[name](r.path as string)}`,
          );
        }
      };
      check("deletedMissing");
      check("keptMissing");
      // Content the upload counted on may have been collected meanwhile (it was
      // unreferenced): the client then backs up again, sending it.
      const gone = get(COMMIT.contentGone);
      if (gone) {
        throw new KeepError(
          "conflict",
          `Cannot commit: the content of ${
            JSON.stringify(gone.path)
          } is not in the store (collected during the upload); back up again`,
        );
      }
      check("metaForeign");
      const totalsOf = () => {
        const rows = q(COMMIT.totals.sql).all(
          ...argsOf(COMMIT.totals, v) as SQLInputValue[],
        ) as Row[];
        const t = { f: 0, d: 0, l: 0, bytes: 0 };
        for (const r of rows) {
          t[r.type as "f" | "d" | "l"] = Number(r.n);
          t.bytes += Number(r.bytes ?? 0);
        }
        return t;
      };
      const count = (st: Statement) => Number(get(st)!.n);
      const added = count(COMMIT.added);
      const staged = count(COMMIT.ofOp("put"));
      const metadata = count(COMMIT.ofOp("meta"));
      const deleted = count(COMMIT.ofOp("del"));
      const flagged = count(COMMIT.ofOp("keep"));
      const removed = totalsOf();
      for (const st of COMMIT.apply) q(st.sql).run(...argsOf(st, v) as SQLInputValue[]);
      check("noParentDir");
      check("childrenLeft");
      const addedTotals = totalsOf();

      const counts = commitCounts(head, removed, addedTotals, {
        added,
        staged,
        metadata,
        deleted,
        flagged,
      });
      const id = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
      const now = Date.now();
      q(
        `INSERT INTO commits(project, seq, id, parent, time, message, tags, host, source, scan_time, granularity, counts, stats)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        pid,
        seq,
        id,
        head?.id ?? null,
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
      changed = touched <= 50_000
        ? (q("SELECT path FROM temp.stage WHERE upload = ? ORDER BY path").all(upload) as Row[])
          .map((r) => r.path as string)
        : null;
      q("DELETE FROM temp.stage WHERE upload = ?").run(upload);
      return this.#commitBySeq(pid, project, seq)!;
    }, true);
    return { commit, changed };
  }

  // ---------------------------------------------------------------- blobs and packs

  #loadFilter(): HashFilter {
    const f = new HashFilter(this.#count("SELECT count(*) AS n FROM blobs") * 2);
    for (
      const r of this.db.prepare("SELECT hash FROM blobs").iterate() as Iterable<
        { hash: Uint8Array }
      >
    ) f.add(r.hash);
    return f;
  }

  #mayHave(hash: Uint8Array): boolean {
    if (!this.#filter || this.#filter.full) this.#filter = this.#loadFilter();
    return this.#filter.mayHave(hash);
  }

  async knownBlobs(hashes: Uint8Array[]): Promise<Set<string>> {
    const known = new Set<string>();
    const q = this.#stmt("SELECT orphan FROM blobs WHERE hash = ? AND damaged IS NULL");
    // A row GC marked unreferenced is unmarked before the upload counts on
    // it: marked again later, it is swept only after this upload ended
    // (gc.ts: the sweep spares rows marked after the oldest upload began).
    const revive = this.#stmt(
      "UPDATE blobs SET orphan = NULL WHERE hash = ? AND orphan IS NOT NULL",
    );
    for (const h of hashes) {
      if (!this.#mayHave(h)) continue;
      const r = q.get(h) as Row | undefined;
      if (!r) continue;
      // Unmarked in one statement, or swept just now by GC's connection:
      // then it is not known (the upload sends it).
      if (r.orphan !== null && Number(revive.run(h).changes) === 0 && !q.get(h)) continue;
      known.add(bytesToHex(h));
    }
    return Promise.resolve(known);
  }

  /**
   * Inserts blob rows (inside a transaction). Existing sound blobs are kept;
   * a row marked damaged takes the new bytes (a repair), and the head entries
   * its marking flagged are cleared. Returns the number repaired.
   */
  #insertBlobs(rows: NewBlob[]): number {
    const ins = this.#stmt(
      `INSERT INTO blobs(hash, size, stored, xxh, pack, offset, chunked) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(hash) DO UPDATE SET size = excluded.size, stored = excluded.stored,
         xxh = excluded.xxh, pack = excluded.pack, offset = excluded.offset, level = NULL,
         damaged = NULL, orphan = NULL, chunked = excluded.chunked
       WHERE blobs.damaged IS NOT NULL OR blobs.orphan IS NOT NULL`,
    );
    const prior = this.#stmt("SELECT damaged, orphan FROM blobs WHERE hash = ?");
    let repaired = 0;
    let moved = false;
    for (const r of rows) {
      // Only a hash the filter may know can be a row to repair or revive.
      const was = this.#mayHave(r.hash) ? prior.get(r.hash) as Row | undefined : undefined;
      const changed = Number(
        ins.run(r.hash, r.size, r.stored, r.xxh, r.pack, r.offset, r.chunks ? 1 : null).changes,
      );
      if (changed && (r.chunks || was)) {
        // The file's list, replaced whole (a repaired row may have had
        // another); a row repaired by a whole blob keeps none.
        this.#stmt("DELETE FROM chunks WHERE file = ?").run(r.hash);
        const add = this.#stmt("INSERT INTO chunks(file, seq, chunk) VALUES (?, ?, ?)");
        r.chunks?.forEach((c, i) => add.run(r.hash, i, c));
      }
      if (was && was.damaged !== null) {
        this.#stmt("UPDATE current SET flag = NULL WHERE hash = ? AND flag = 'damaged'").run(
          r.hash,
        );
        this.#bumpDamageEpoch();
        repaired++;
      }
      if (was && (was.damaged !== null || was.orphan !== null)) moved = true;
      this.#filter?.add(r.hash);
    }
    if (moved) this.#blobEpoch++;
    return repaired;
  }

  readonly chunking = true;

  async chunksOf(hashHex: string): Promise<string[]> {
    const rows = this.#stmt("SELECT chunk FROM chunks WHERE file = ? ORDER BY seq").all(
      hexToBytes(hashHex),
    ) as Row[];
    return Promise.resolve(rows.map((r) => bytesToHex(r.chunk as Uint8Array)));
  }

  async blobPlace(hashHex: string): Promise<BlobPlace | null> {
    const r = this.#stmt("SELECT size, stored, pack, offset, chunked FROM blobs WHERE hash = ?")
      .get(
        hexToBytes(hashHex),
      ) as Row | undefined;
    return Promise.resolve(r ? placeOf(r) : null);
  }

  async blobPlaces(hashesHex: string[]): Promise<(BlobPlace | null)[]> {
    const out: (BlobPlace | null)[] = [];
    for (const h of hashesHex) out.push(await this.blobPlace(h));
    return out;
  }

  async newPack(): Promise<number> {
    // Never a number a deleted pack had (GC deletes the highest too): another
    // process may still hold the old file open under that number. The
    // counter moves in one statement, so two connections never get the same.
    const r = this.#stmt(
      `INSERT INTO store_meta(key, value) VALUES ('pack_seq', (SELECT coalesce(max(id), 0) + 1 FROM packs))
       ON CONFLICT(key) DO UPDATE SET value = max(value, (SELECT coalesce(max(id), 0) FROM packs)) + 1
       RETURNING value`,
    ).get() as Row;
    const id = Number(r.value);
    this.#stmt("INSERT INTO packs(id, created) VALUES (?, ?)").run(id, Date.now());
    return Promise.resolve(id);
  }

  async sealPack(pack: number): Promise<void> {
    this.#stmt("UPDATE packs SET sealed = ? WHERE id = ? AND sealed IS NULL").run(Date.now(), pack);
    return Promise.resolve();
  }

  async forgetUploads(): Promise<void> {
    this.#stmt("DELETE FROM uploads").run();
  }

  noteBlobsMoved(): void {
    this.#blobEpoch++;
  }

  async sealAllPacks(): Promise<void> {
    this.#stmt("UPDATE packs SET sealed = ? WHERE sealed IS NULL").run(Date.now());
    return Promise.resolve();
  }

  get blobEpoch(): number {
    return this.#blobEpoch;
  }

  async markDamaged(hash: Uint8Array, problem: string): Promise<boolean> {
    return Promise.resolve(this.#transaction(() => {
      const r = this.#stmt("UPDATE blobs SET damaged = ? WHERE hash = ? AND damaged IS NULL").run(
        problem.slice(0, 500),
        hash,
      );
      if (Number(r.changes) === 0) return false;
      // Whatever flag a head entry had (unreadable last time), its content
      // must be sent again: damaged wins.
      this.#stmt(
        "UPDATE current SET flag = 'damaged' WHERE hash = ? AND (flag IS NULL OR flag != 'damaged')",
      ).run(hash);
      this.#bumpDamageEpoch();
      return true;
    }, true));
  }

  #bumpDamageEpoch(): void {
    this.#stmt(
      "INSERT INTO store_meta(key, value) VALUES ('damage_epoch', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1",
    ).run();
  }

  async damageEpoch(): Promise<number> {
    const r = this.#stmt("SELECT value FROM store_meta WHERE key = 'damage_epoch'").get() as
      | Row
      | undefined;
    return Promise.resolve(r ? Number(r.value) : 0);
  }

  // ---------------------------------------------------------------- maintenance

  async blobsPage(afterId: number, limit: number): Promise<BlobRow[]> {
    const rows = this.#stmt(
      "SELECT id, hash, size, stored, pack, offset, chunked FROM blobs WHERE id > ? ORDER BY id LIMIT ?",
    ).all(afterId, limit) as Row[];
    return Promise.resolve(rows.map(blobRowOf));
  }

  async compactCandidates(limit: number): Promise<BlobRow[]> {
    const rows = this.#stmt(
      "SELECT id, hash, size, stored, pack, offset FROM blobs WHERE pack IS NOT NULL AND level IS NULL ORDER BY id LIMIT ?",
    ).all(limit) as Row[];
    return Promise.resolve(rows.map(blobRowOf));
  }

  async moveBlobs(
    moves: { row: BlobRow; pack: number; offset: number; stored: number; level: number }[],
    skips: number[],
  ): Promise<number> {
    let saved = 0;
    this.#transaction(() => {
      const move = this.#stmt(
        "UPDATE blobs SET pack = ?, offset = ?, stored = ?, level = ? WHERE id = ? AND pack = ? AND offset = ?",
      );
      for (const m of moves) {
        const r = move.run(m.pack, m.offset, m.stored, m.level, m.row.id, m.row.pack, m.row.offset);
        if (Number(r.changes) === 1) saved += m.row.stored - m.stored;
      }
      const skip = this.#stmt("UPDATE blobs SET level = -1 WHERE id = ? AND level IS NULL");
      for (const id of skips) skip.run(id);
    }, true);
    this.#blobEpoch++;
    return Promise.resolve(saved);
  }

  /**
   * A pack without rows sealed after the oldest upload in flight began is
   * left out: on an object store ingest seals a pack, then stages its rows.
   */
  async packUsage(): Promise<{ pack: number; live: number }[]> {
    const rows = this.#stmt(
      `SELECT p.id AS id, coalesce(u.live, 0) AS live FROM packs p
       LEFT JOIN (SELECT pack, sum(stored) AS live FROM blobs WHERE pack IS NOT NULL GROUP BY pack) u
         ON u.pack = p.id
       WHERE p.sealed IS NOT NULL AND p.dead IS NULL
         AND (u.live IS NOT NULL OR p.sealed < coalesce((SELECT min(started) FROM uploads), ?))`,
    ).all(Date.now() + 1) as Row[];
    return Promise.resolve(rows.map((r) => ({ pack: Number(r.id), live: Number(r.live) })));
  }

  async knownPacks(): Promise<Set<number>> {
    return Promise.resolve(
      new Set((this.#stmt("SELECT id FROM packs").all() as Row[]).map((r) => Number(r.id))),
    );
  }

  async blobsInPack(pack: number, limit: number): Promise<BlobRow[]> {
    const rows = this.#stmt(
      "SELECT id, hash, size, stored, pack, offset FROM blobs WHERE pack = ? ORDER BY offset LIMIT ?",
    ).all(pack, limit) as Row[];
    return rows.map(blobRowOf);
  }

  async relocateBlobs(moves: { row: BlobRow; pack: number; offset: number }[]): Promise<number> {
    let moved = 0;
    this.#transaction(() => {
      const upd = this.#stmt(
        "UPDATE blobs SET pack = ?, offset = ? WHERE id = ? AND pack = ? AND offset = ?",
      );
      for (const m of moves) {
        moved += Number(upd.run(m.pack, m.offset, m.row.id, m.row.pack, m.row.offset).changes);
      }
    }, true);
    this.#blobEpoch++;
    return moved;
  }

  async checkIntegrity(): Promise<string> {
    return (this.db.prepare("PRAGMA quick_check").all() as { quick_check: string }[])
      .map((r) => r.quick_check).join("; ");
  }

  async counts(): Promise<StoreCounts> {
    return Promise.resolve({
      projects: this.#count("SELECT count(*) AS n FROM projects"),
      commits: this.#count("SELECT count(*) AS n FROM commits WHERE forgotten IS NULL"),
      blobs: this.#count("SELECT count(*) AS n FROM blobs"),
      storedBytes: this.#count(
        "SELECT coalesce(sum(stored), 0) AS n FROM blobs WHERE chunked IS NULL",
      ),
    });
  }

  async missingContent(limit: number): Promise<{ project: string; path: string; hash: string }[]> {
    const out: { project: string; path: string; hash: string }[] = [];
    for (const table of ["current", "history"]) {
      const rows = this.db.prepare(
        `SELECT p.name AS project, t.path AS path, t.hash AS hash FROM ${table} t JOIN projects p ON p.id = t.project
         WHERE t.hash IS NOT NULL AND t.size > 0 AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = t.hash) LIMIT ?`,
      ).all(limit - out.length) as Row[];
      for (const r of rows) {
        out.push({
          project: r.project as string,
          path: r.path as string,
          hash: bytesToHex(r.hash as Uint8Array),
        });
      }
      if (out.length >= limit) break;
    }
    return Promise.resolve(out);
  }

  async gcBacklog(): Promise<{ projects: string[]; deadPacks: number; marked: number }> {
    const projects = (this.#stmt(
      `SELECT name FROM projects p
       WHERE EXISTS (SELECT 1 FROM commits c WHERE c.project = p.id AND c.forgotten IS NOT NULL)`,
    ).all() as Row[]).map((r) => r.name as string);
    return Promise.resolve({
      projects,
      deadPacks: this.#count("SELECT count(*) AS n FROM packs WHERE dead IS NOT NULL"),
      marked: this.#count("SELECT count(*) AS n FROM blobs WHERE orphan IS NOT NULL"),
    });
  }

  async orphanBlobCount(): Promise<number> {
    return Promise.resolve(this.#count(
      `SELECT count(*) AS n FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = b.hash)
       AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = b.hash)
       AND NOT EXISTS (SELECT 1 FROM chunks k WHERE k.chunk = b.hash)`,
    ));
  }

  async headEntriesUsing(
    hash: Uint8Array,
    limit: number,
  ): Promise<{ project: string; path: string }[]> {
    return Promise.resolve((this.#stmt(
      `SELECT p.name AS project, c.path AS path FROM current c JOIN projects p ON p.id = c.project
       WHERE c.hash = ? LIMIT ?`,
    ).all(hash, limit) as Row[]).map((r) => ({
      project: r.project as string,
      path: r.path as string,
    })));
  }

  // ---------------------------------------------------------------- retention and GC

  async getPolicy(project: string): Promise<Policy | null> {
    const r = this.#stmt("SELECT policy FROM policies WHERE project = ?").get(project) as
      | Row
      | undefined;
    return r ? JSON.parse(r.policy as string) as Policy : null;
  }

  async setPolicy(project: string, policy: Policy | null): Promise<void> {
    if (policy === null) this.#stmt("DELETE FROM policies WHERE project = ?").run(project);
    else {
      this.#stmt(
        `INSERT INTO policies(project, policy, updated) VALUES (?, ?, ?)
         ON CONFLICT(project) DO UPDATE SET policy = excluded.policy, updated = excluded.updated`,
      ).run(project, JSON.stringify(policy), Date.now());
    }
  }

  async listPolicies(): Promise<{ project: string; policy: Policy }[]> {
    return (this.#stmt("SELECT project, policy FROM policies ORDER BY project").all() as Row[])
      .map((r) => ({ project: r.project as string, policy: JSON.parse(r.policy as string) }));
  }

  async forgetCommits(project: string, seqs: number[], at: number): Promise<number> {
    const pid = this.#projectId(project);
    const head = this.#head(project);
    if (pid === null || !head) return 0;
    let removed = 0;
    this.#transaction(() => {
      // Parents of uploads in flight stay: those uploads land on them (see
      // #rebase). Read in the write transaction, so no pin slips in between.
      const pinned = new Set(
        (this.#stmt("SELECT parent FROM uploads WHERE project = ? AND parent IS NOT NULL").all(
          project,
        ) as Row[])
          .map((r) => r.parent as string),
      );
      const idOf = this.#stmt(
        "SELECT id FROM commits WHERE project = ? AND seq = ? AND forgotten IS NULL",
      );
      const forget = this.#stmt("UPDATE commits SET forgotten = ? WHERE project = ? AND seq = ?");
      for (const seq of seqs) {
        if (seq === head.seq) continue; // the newest commit always stays
        const id = (idOf.get(pid, seq) as Row | undefined)?.id as string | undefined;
        if (id === undefined || pinned.has(id)) continue;
        removed += Number(forget.run(at, pid, seq).changes);
      }
    }, true);
    return removed;
  }

  async cleanHistory(
    project: string,
    after: { path: string; first: number } | null,
    limit: number,
    before: number,
    now: number,
  ): Promise<{ next: { path: string; first: number } | null; removed: number; marked: number }> {
    const pid = this.#projectId(project);
    if (pid === null) return { next: null, removed: 0, marked: 0 };
    // A version stays while a commit of its range is still there (one
    // forgotten less than the grace ago still counts: a restore may read it).
    const unused =
      `NOT EXISTS (SELECT 1 FROM temp.gc_live l WHERE l.seq >= history.first AND l.seq < history.last)`;
    let removed = 0;
    let marked = 0;
    let from: [string, number] = [after?.path ?? "", after?.first ?? -1];
    let done = false;
    // All in SQL, statements per sub-batch (a key range), no row crossing into
    // JavaScript; one transaction for up to `limit` rows (fewer index pages
    // rewritten per row), ended early when another writer waits (#yielding).
    this.#transaction(() => {
      this.db.exec("DELETE FROM temp.gc_live");
      this.#stmt(
        `INSERT INTO temp.gc_live(seq) SELECT seq FROM commits WHERE project = ?
         AND (forgotten IS NULL OR forgotten >= ?)`,
      ).run(pid, before);
      for (let taken = 0; taken < limit && !done;) {
        const sub = Math.min(SUB_BATCH, limit - taken);
        const end = this.#stmt(
          `SELECT path, first FROM history WHERE project = ?1 AND (path, first) > (?2, ?3)
           ORDER BY path, first LIMIT 1 OFFSET ?4`,
        ).get(pid, from[0], from[1], sub - 1) as Row | undefined;
        const to: [string, number] | null = end ? [end.path as string, Number(end.first)] : null;
        const range = to
          ? "project = $p AND (path, first) > ($fp, $ff) AND (path, first) <= ($tp, $tf)"
          : "project = $p AND (path, first) > ($fp, $ff)";
        const args = { p: pid, fp: from[0], ff: from[1], ...(to ? { tp: to[0], tf: to[1] } : {}) };
        this.#stmt(
          `INSERT OR IGNORE INTO temp.gc_gone(hash) SELECT hash FROM history
           WHERE ${range} AND hash IS NOT NULL AND ${unused}`,
        ).run(args);
        this.#stmt(
          `INSERT OR IGNORE INTO temp.gc_paths(path) SELECT path FROM history
           WHERE ${range} AND ${unused}`,
        ).run(args);
        removed += Number(
          this.#stmt(`DELETE FROM history WHERE ${range} AND ${unused}`).run(args).changes,
        );
        // A path whose last version went is no longer one find can show.
        this.#stmt(
          `DELETE FROM paths WHERE project = ?1 AND path IN (SELECT path FROM temp.gc_paths)
             AND NOT EXISTS (SELECT 1 FROM current c WHERE c.project = ?1 AND c.path = paths.path)
             AND NOT EXISTS (SELECT 1 FROM history h WHERE h.project = ?1 AND h.path = paths.path)`,
        ).run(pid);
        this.db.exec("DELETE FROM temp.gc_paths");
        // What the removed versions referred to may be unreferenced now:
        // marked here, at once (the only blobs a round must look at; see gcMark).
        marked += Number(
          this.#stmt(
            `UPDATE blobs SET orphan = ?1 WHERE orphan IS NULL
               AND hash IN (SELECT hash FROM temp.gc_gone) ${UNREFERENCED}`,
          ).run(now).changes,
        );
        this.db.exec("DELETE FROM temp.gc_gone");
        taken += sub;
        if (to) from = to;
        else done = true;
        if (this.#othersWait()) break;
      }
    });
    return { next: done ? null : { path: from[0], first: from[1] }, removed, marked };
  }

  async purgeForgotten(
    project: string,
    before: number,
  ): Promise<{ purged: number; waiting: number }> {
    const pid = this.#projectId(project);
    if (pid === null) return { purged: 0, waiting: 0 };
    let purged = 0;
    this.#transaction(() => {
      const gone = this.#stmt(
        "SELECT seq FROM commits WHERE project = ? AND forgotten IS NOT NULL AND forgotten < ?",
      ).all(pid, before) as Row[];
      const delNotes = this.#stmt("DELETE FROM notes WHERE project = ? AND seq = ?");
      const del = this.#stmt("DELETE FROM commits WHERE project = ? AND seq = ?");
      for (const r of gone) {
        delNotes.run(pid, Number(r.seq));
        purged += Number(del.run(pid, Number(r.seq)).changes);
      }
    }, true);
    const waiting = this.#count(
      "SELECT count(*) AS n FROM commits WHERE project = ? AND forgotten IS NOT NULL",
      pid,
    );
    return { purged, waiting };
  }

  async gcMark(afterId: number, limit: number, now: number): Promise<{
    lastId: number | null;
    marked: number;
  }> {
    const hi = this.#batchEnd("SELECT id FROM blobs WHERE id > ?1", afterId, limit);
    let marked = 0;
    if (hi.n) {
      this.#transaction(() => {
        marked = Number(
          this.#stmt(
            `UPDATE blobs SET orphan = ?3 WHERE id > ?1 AND id <= ?2 AND orphan IS NULL ${UNREFERENCED}`,
          ).run(afterId, hi.last, now).changes,
        );
        this.#stmt(
          `UPDATE blobs SET orphan = NULL WHERE id > ?1 AND id <= ?2 AND orphan IS NOT NULL ${REFERENCED}`,
        ).run(afterId, hi.last);
      });
    }
    return { lastId: hi.n < limit ? null : hi.last, marked };
  }

  /** The last id and count of the first `limit` rows of `select` (ids in order, after `after`). */
  #batchEnd(
    select: string,
    after: number,
    limit: number,
    ...more: unknown[]
  ): { last: number; n: number } {
    const r = this.#stmt(
      `SELECT max(id) AS last, count(*) AS n FROM (${select} ORDER BY id LIMIT ?${
        2 + more.length
      })`,
    ).get(after, ...(more as number[]), limit) as Row;
    return { last: Number(r.last ?? after), n: Number(r.n) };
  }

  async gcSweep(
    afterId: number,
    before: number,
    limit: number,
    now: number,
  ): Promise<
    { swept: number; sweptBytes: number; marked: number; large: BlobRow[]; lastId: number | null }
  > {
    // In id order from a cursor: the rows (and their packs) sit together on
    // disk, so a batch rewrites few pages; statements per sub-batch, and only
    // the large blobs (whose files the caller deletes) come back as rows.
    let swept = 0;
    let sweptBytes = 0;
    let marked = 0;
    const large: BlobRow[] = [];
    let cursor = afterId;
    let done = false;
    this.#transaction(() => {
      for (let taken = 0; taken < limit && !done;) {
        const sub = Math.min(SUB_BATCH, limit - taken);
        const hi = this.#batchEnd(
          "SELECT id FROM blobs WHERE id > ?1 AND orphan IS NOT NULL AND orphan < ?2",
          cursor,
          sub,
          before,
        );
        if (hi.n < sub) done = true;
        if (hi.n === 0) break;
        // Referenced again since it was marked (a commit landed): it stays.
        this.#stmt(
          `UPDATE blobs SET orphan = NULL WHERE id > ?1 AND id <= ?2 AND orphan IS NOT NULL ${REFERENCED}`,
        ).run(cursor, hi.last);
        const due = "id > ?1 AND id <= ?2 AND orphan IS NOT NULL AND orphan < ?3";
        for (
          const r of this.#stmt(
            `SELECT id, hash, size, stored, pack, offset FROM blobs WHERE ${due} AND pack IS NULL AND chunked IS NULL`,
          ).all(cursor, hi.last, before) as Row[]
        ) large.push(blobRowOf(r));
        // A chunked file's row has no bytes of its own (its chunks count as they go).
        sweptBytes += Number(
          (this.#stmt(
            `SELECT coalesce(sum(stored), 0) AS n FROM blobs WHERE ${due} AND chunked IS NULL`,
          ).get(
            cursor,
            hi.last,
            before,
          ) as Row).n,
        );
        // A chunked file's list goes with it; the chunks no other list (or
        // version) holds are then marked, to go after the grace (as
        // cleanHistory marks a removed version's content), not at the next
        // daily full mark.
        const listed = `SELECT hash FROM blobs WHERE ${due} AND chunked IS NOT NULL`;
        const lists = Number(
          this.#stmt(
            `INSERT OR IGNORE INTO temp.gc_gone(hash) SELECT chunk FROM chunks WHERE file IN (${listed})`,
          ).run(cursor, hi.last, before).changes,
        );
        if (lists) {
          this.#stmt(`DELETE FROM chunks WHERE file IN (${listed})`).run(cursor, hi.last, before);
        }
        swept += Number(
          this.#stmt(`DELETE FROM blobs WHERE ${due}`).run(cursor, hi.last, before).changes,
        );
        if (lists) {
          marked += Number(
            this.#stmt(
              `UPDATE blobs SET orphan = ? WHERE hash IN (SELECT hash FROM temp.gc_gone)
               AND orphan IS NULL ${UNREFERENCED}`,
            ).run(now).changes,
          );
          this.db.exec("DELETE FROM temp.gc_gone");
        }
        taken += sub;
        cursor = hi.last;
        if (this.#othersWait()) break;
      }
    }, true);
    // The hash filter keeps the swept hashes: a "maybe" is always asked of
    // the table, so it costs a lookup, never a wrong answer (and no reload).
    if (swept) this.#blobEpoch++;
    return { swept, sweptBytes, marked, large, lastId: done ? null : cursor };
  }

  async pendingOrphans(): Promise<number> {
    return this.#count("SELECT count(*) AS n FROM blobs WHERE orphan IS NOT NULL");
  }

  async markPackDead(pack: number, at: number): Promise<void> {
    this.#stmt(
      "UPDATE packs SET dead = ? WHERE id = ? AND dead IS NULL AND NOT EXISTS (SELECT 1 FROM blobs WHERE pack = ?)",
    ).run(at, pack, pack);
  }

  /**
   * Only packs no row points into: on an object store, ingest seals a
   * pack before it stages the pack's rows, so a pack GC found empty in
   * between gets its rows after it was marked dead; it then stays.
   */
  async deadPacks(before: number): Promise<number[]> {
    return (this.#stmt(
      `SELECT id FROM packs p WHERE dead IS NOT NULL AND dead < ?
       AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.pack = p.id) ORDER BY id`,
    ).all(before) as Row[]).map((r) => Number(r.id));
  }

  async forgetPack(pack: number): Promise<void> {
    this.#stmt("DELETE FROM packs WHERE id = ? AND NOT EXISTS (SELECT 1 FROM blobs WHERE pack = ?)")
      .run(pack, pack);
  }

  async oldestUploadStart(): Promise<number | null> {
    const r = this.#stmt("SELECT min(started) AS t FROM uploads").get() as Row;
    return r.t === null ? null : Number(r.t);
  }

  async meta(key: string): Promise<number | null> {
    const r = this.#stmt("SELECT value FROM store_meta WHERE key = ?").get(key) as Row | undefined;
    return r ? Number(r.value) : null;
  }

  async setMeta(key: string, value: number): Promise<void> {
    this.#stmt(
      "INSERT INTO store_meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    ).run(key, value);
  }

  async projectUsage(project: string): Promise<ProjectUsage> {
    const pid = this.#projectId(project);
    if (pid === null) return { storedBytes: 0, exclusiveBytes: 0 };
    const used =
      `SELECT DISTINCT hash FROM (SELECT hash FROM current WHERE project = ?1 AND hash IS NOT NULL
      UNION SELECT hash FROM history WHERE project = ?1 AND hash IS NOT NULL)`;
    const r = this.#stmt(
      `SELECT coalesce(sum(b.stored), 0) AS stored,
         coalesce(sum(CASE WHEN NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = b.hash AND c.project != ?1)
           AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = b.hash AND h.project != ?1)
           THEN b.stored ELSE 0 END), 0) AS exclusive
       FROM blobs b WHERE b.hash IN (${used})`,
    ).get(pid) as Row;
    return { storedBytes: Number(r.stored), exclusiveBytes: Number(r.exclusive) };
  }

  async logicalBytes(): Promise<number> {
    // Each kept commit's tree at full size: what restoring all of them
    // would write, so that ratio shows dedup across commits too.
    return this.#count(
      `SELECT coalesce(sum(json_extract(counts, '$.bytes')), 0) AS n
       FROM commits WHERE forgotten IS NULL`,
    );
  }

  // ---------------------------------------------------------------- tokens

  async insertToken(t: TokenRow): Promise<void> {
    this.#stmt(
      "INSERT INTO tokens(id, hash, name, role, projects, created) VALUES (?, ?, ?, ?, ?, ?)",
    ).run(t.id, t.hash, t.name, t.role, JSON.stringify(t.projects), t.created);
    return Promise.resolve();
  }

  async listTokens(): Promise<TokenRow[]> {
    return Promise.resolve(
      (this.#stmt("SELECT * FROM tokens ORDER BY created").all() as Row[]).map((r) => tokenOf(r)),
    );
  }

  async tokenById(id: string): Promise<TokenRow | null> {
    const r = this.#stmt("SELECT * FROM tokens WHERE id = ?").get(id) as Row | undefined;
    return Promise.resolve(r ? tokenOf(r) : null);
  }

  async revokeToken(id: string, at: number): Promise<boolean> {
    const r = this.#stmt("UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL").run(
      at,
      id,
    );
    return Promise.resolve(Number(r.changes) === 1);
  }

  async sharedSecret(name: string): Promise<Uint8Array> {
    this.#stmt("INSERT OR IGNORE INTO secrets(name, value) VALUES (?, randomblob(32))").run(name);
    const r = this.#stmt("SELECT value FROM secrets WHERE name = ?").get(name) as Row;
    return Promise.resolve(new Uint8Array(r.value as Uint8Array));
  }

  // ---------------------------------------------------------------- copying (keep migrate)

  async dumpRows(table: string, after: CellValue[] | null, limit: number): Promise<CellValue[][]> {
    const t = tableSpec(table);
    const keys = t.columns.slice(0, t.key).map((c) => `"${c}"`);
    const where = after ? `WHERE (${keys.join(", ")}) > (${keys.map(() => "?").join(", ")})` : "";
    const rows = this.#stmt(
      `SELECT ${t.columns.map((c) => `"${c}"`).join(", ")} FROM ${t.name} ${where}
       ORDER BY ${keys.join(", ")} LIMIT ${Math.max(1, Math.floor(limit))}`,
      true,
      true,
    ).all(...((after ?? []) as SQLInputValue[])) as unknown as unknown[][];
    return Promise.resolve(rows.map((r) => r.map((v, i) => neutralCell(t, t.columns[i], v))));
  }

  async clearRows(table: string): Promise<void> {
    this.#stmt(`DELETE FROM ${tableSpec(table).name}`).run();
    return Promise.resolve();
  }

  async loadRows(table: string, rows: CellValue[][]): Promise<void> {
    const t = tableSpec(table);
    const st = this.#stmt(
      `INSERT OR REPLACE INTO ${t.name}(${t.columns.map((c) => `"${c}"`).join(", ")})
       VALUES (${t.columns.map(() => "?").join(", ")})`,
    );
    this.#transaction(() => {
      for (const r of rows) st.run(...(r as SQLInputValue[]));
    }, true);
    return Promise.resolve();
  }

  async afterLoad(packSeq: number): Promise<void> {
    this.#stmt(
      `INSERT INTO store_meta(key, value) VALUES ('pack_seq', ?1)
       ON CONFLICT(key) DO UPDATE SET value = max(value, ?1)`,
    ).run(packSeq);
    return Promise.resolve();
  }

  async highestPack(): Promise<number> {
    const r = this.#stmt(
      `SELECT max(coalesce((SELECT max(id) FROM packs), 0),
                  coalesce((SELECT value FROM store_meta WHERE key = 'pack_seq'), 0)) AS n`,
    ).get() as Row;
    return Promise.resolve(Number(r.n));
  }

  // ---------------------------------------------------------------- web UI sessions

  async insertSession(r: SessionRow): Promise<void> {
    this.#stmt("INSERT INTO sessions(hash, token, csrf, created, seen) VALUES (?, ?, ?, ?, ?)")
      .run(r.hash, r.tokenId, r.csrf, r.created, r.seen);
  }

  async sessionByHash(hash: Uint8Array): Promise<SessionRow | null> {
    const r = this.#stmt("SELECT * FROM sessions WHERE hash = ?").get(hash) as Row | undefined;
    return r ? sessionOf(r) : null;
  }

  async touchSession(hash: Uint8Array, seen: number): Promise<void> {
    this.#stmt("UPDATE sessions SET seen = ? WHERE hash = ?").run(seen, hash);
  }

  async deleteSession(hash: Uint8Array): Promise<void> {
    this.#stmt("DELETE FROM sessions WHERE hash = ?").run(hash);
  }

  async pruneSessions(
    seenBefore: number,
    createdBefore: number,
    keepAtMost: number,
  ): Promise<void> {
    this.#stmt("DELETE FROM sessions WHERE seen < ? OR created < ?").run(seenBefore, createdBefore);
    this.#stmt(
      `DELETE FROM sessions WHERE hash IN
         (SELECT hash FROM sessions ORDER BY seen DESC LIMIT -1 OFFSET ?)`,
    ).run(keepAtMost);
  }
}
