/**
 * The index in PostgreSQL (`keep serve --index postgres://…`), behind
 * IndexStore: the same tables and the same set-based commit as the SQLite
 * index (sqlite_index.ts), so that several servers can share one index.
 *
 * The commit's statements are shared with SQLite (commit_sql.ts). What
 * makes it safe across servers: an upload's commit runs in one
 * transaction that first locks its project's row (`SELECT … FOR UPDATE`),
 * so commits of one project are applied one at a time whichever server
 * received them: the head a commit is placed on is the head at that moment,
 * and the "parent is no commit of the project" rule (409) is checked under
 * the lock. Blob rows are inserted with ON CONFLICT, so two servers storing
 * the same content at once keep one row (both copies are durable; the other
 * is left to GC). Staged rows live in an ordinary table keyed by the upload's
 * id (a server-wide sequence), since a connection pool gives no session of
 * one's own for a TEMP table.
 *
 * Browsing (tree, diff, find, history) answers as SqliteIndex does, page
 * for page: paths compare in byte order (`COLLATE "C"`, as SQLite and
 * comparePaths), the listing's seek loop is one recursive CTE, find's GLOB
 * a regular expression (globRegex), and the diff's scans and a path's
 * versions are merged by the code both indexes share (versions.ts).
 *
 * Retention and GC (forget, clean, mark, sweep, evacuation, dead packs) and
 * recompression run here with several servers on one database; what keeps
 * them safe is argued at "GC with several servers" below (and in
 * docs/DESIGN.md). Uploads are registered with an expiry their server
 * refreshes (a heartbeat): a server killed with -9 leaves rows that stop
 * holding back retention and GC once they expire.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import postgres from "postgres";
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
import { bytesToHex } from "../../format/hex.ts";
import type {
  CommitInfo,
  CommitStats,
  Entry,
  EntryFlag,
  UploadHeader,
} from "../../format/manifest.ts";
import { parentOf } from "../../format/paths.ts";
import type { BlobPlace } from "./blob_store.ts";
import { type CellValue, neutralCell, type TableSpec, tableSpec } from "./tables.ts";
import {
  argsOf,
  CHECK_MESSAGES,
  commitCounts,
  commitFromRow,
  commitStatements,
  EMPTY_HASH,
  noteOf,
  pgText,
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
import { diffOfScans, liveVersions, type PathRow, versionOf } from "./versions.ts";

type Sql = postgres.Sql | postgres.TransactionSql;
type Row = Record<string, unknown>;

/** Statements this process sent to PostgreSQL (keep_db_statements_total in /metrics). */
export const DB_STATEMENTS = { n: 0 };

/**
 * The commit's statements on the shared staging table. Paths are added with
 * `ON CONFLICT DO NOTHING`, one index probe per row whatever the planner
 * thinks of `stage`. An anti-join (`NOT EXISTS`) was planned as a nested loop
 * over the project's rows per staged row, rows the statement itself had just
 * inserted among them: 15 s for a first commit of 20,000 paths, 131 s for
 * 100,000 in psql, against under 0.3 s and 1.0 s this way.
 */
const COMMIT = commitStatements("stage");

const SCHEMA = `
CREATE TABLE IF NOT EXISTS projects(
  id bigserial PRIMARY KEY, name text COLLATE "C" NOT NULL UNIQUE,
  head bigint NOT NULL DEFAULT 0, created bigint NOT NULL);
CREATE TABLE IF NOT EXISTS commits(
  project bigint NOT NULL, seq bigint NOT NULL, id text NOT NULL UNIQUE, parent text,
  time bigint NOT NULL, message text NOT NULL, tags text NOT NULL, host text NOT NULL,
  source text NOT NULL, scan_time bigint NOT NULL, granularity bigint NOT NULL,
  counts text NOT NULL, stats text NOT NULL, forgotten bigint,
  PRIMARY KEY(project, seq));
CREATE TABLE IF NOT EXISTS current(
  project bigint NOT NULL, path text COLLATE "C" NOT NULL, first bigint NOT NULL,
  type text NOT NULL, size bigint NOT NULL, mode integer NOT NULL,
  mtime bigint NOT NULL, ctime bigint NOT NULL, hash bytea, target text, xxh bytea, flag text,
  PRIMARY KEY(project, path));
CREATE TABLE IF NOT EXISTS history(
  project bigint NOT NULL, path text COLLATE "C" NOT NULL, first bigint NOT NULL, last bigint NOT NULL,
  type text NOT NULL, size bigint NOT NULL, mode integer NOT NULL,
  mtime bigint NOT NULL, ctime bigint NOT NULL, hash bytea, target text, xxh bytea, flag text,
  PRIMARY KEY(project, path, first));
CREATE INDEX IF NOT EXISTS current_hash ON current(hash) WHERE hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS history_hash ON history(hash) WHERE hash IS NOT NULL;
-- A diff of commits with few changes between them reads its rows by commit
-- number (diffPage; on 1.1M versions a diff of neighbours: 179-263 -> 6-8 ms).
CREATE INDEX IF NOT EXISTS history_last ON history(project, last);
CREATE INDEX IF NOT EXISTS history_first ON history(project, first);
CREATE INDEX IF NOT EXISTS current_first ON current(project, first);
CREATE TABLE IF NOT EXISTS paths(
  project bigint NOT NULL, path text COLLATE "C" NOT NULL, PRIMARY KEY(project, path));
CREATE TABLE IF NOT EXISTS notes(
  project bigint NOT NULL, seq bigint NOT NULL, path text COLLATE "C" NOT NULL,
  flag text NOT NULL, reason text NOT NULL, PRIMARY KEY(project, seq, path));
CREATE TABLE IF NOT EXISTS blobs(
  id bigserial PRIMARY KEY, hash bytea NOT NULL UNIQUE, size bigint NOT NULL,
  stored bigint NOT NULL, xxh bytea, pack bigint, "offset" bigint, level integer,
  damaged text, orphan bigint);
-- Big files kept in content-defined chunks: the file's blob row is
-- \`chunked\` (no bytes of its own), \`chunks\` lists its chunk blobs in order.
-- A list is a reference to each chunk (GC): chunks_chunk answers that.
ALTER TABLE blobs ADD COLUMN IF NOT EXISTS chunked bigint;
CREATE TABLE IF NOT EXISTS chunks(
  file bytea NOT NULL, seq bigint NOT NULL, chunk bytea NOT NULL, PRIMARY KEY(file, seq));
CREATE INDEX IF NOT EXISTS chunks_chunk ON chunks(chunk);
CREATE TABLE IF NOT EXISTS uploads(
  id bigserial PRIMARY KEY, project text NOT NULL, parent text, started bigint NOT NULL);
CREATE UNLOGGED TABLE IF NOT EXISTS stage(
  upload bigint NOT NULL, path text COLLATE "C" NOT NULL, parent text COLLATE "C" NOT NULL,
  op text NOT NULL, type text, size bigint, mode integer, mtime bigint, ctime bigint,
  hash bytea, target text, xxh bytea, flag text, reason text, PRIMARY KEY(upload, path));
CREATE TABLE IF NOT EXISTS policies(
  project text PRIMARY KEY, policy text NOT NULL, updated bigint NOT NULL);
CREATE TABLE IF NOT EXISTS store_meta(key text PRIMARY KEY, value double precision NOT NULL);
CREATE TABLE IF NOT EXISTS packs(
  id bigserial PRIMARY KEY, created bigint NOT NULL, sealed bigint, dead bigint);
CREATE TABLE IF NOT EXISTS keep_store(one boolean PRIMARY KEY DEFAULT true CHECK (one), id text NOT NULL);
CREATE TABLE IF NOT EXISTS secrets(name text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS tokens(
  id text PRIMARY KEY, hash bytea NOT NULL UNIQUE, name text NOT NULL, role text NOT NULL,
  projects text NOT NULL, created bigint NOT NULL, revoked bigint);
CREATE TABLE IF NOT EXISTS sessions(
  hash bytea PRIMARY KEY, token text, csrf text NOT NULL, created bigint NOT NULL,
  seen bigint NOT NULL);
`;

/**
 * What GC needs besides the tables above. `keep_now()` is the database's
 * clock in ms: upload starts, pack seals and GC marks are all stamped with
 * it, so their order holds whatever the servers' own clocks say.
 */
const GC_SCHEMA = `
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS expires bigint NOT NULL DEFAULT 0;
ALTER TABLE packs ADD COLUMN IF NOT EXISTS expires bigint;
CREATE INDEX IF NOT EXISTS blobs_orphan ON blobs(orphan) WHERE orphan IS NOT NULL;
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs(pack, "offset") WHERE pack IS NOT NULL;
CREATE TABLE IF NOT EXISTS leases(name text PRIMARY KEY, holder text NOT NULL, expires bigint NOT NULL);
CREATE OR REPLACE FUNCTION keep_now() RETURNS bigint LANGUAGE sql VOLATILE
  AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;
`;

/** Advisory lock (first key): GC's marking transactions against upload registrations. */
const LOCK_MARK = 727275;
/** Advisory lock (first key; second: the project's hashtext): forgetting against pins. */
const LOCK_FORGET = 727276;
/** Default: an upload not refreshed for this long is a dead server's (ms). */
const UPLOAD_TIMEOUT_MS = 60_000;

/**
 * How long the database may not answer (serve --index-timeout): see
 * PgIndex.open. Thirty seconds is far above any statement's time here
 * (a commit of 100k paths takes ~2 s) and far below TCP's own ~15 min.
 */
export const INDEX_TIMEOUT_MS = 30_000;

/** A promise's value, or `late` once `ms` passed without one. */
function within<T>(p: Promise<T>, ms: number, late: T): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<T>((r) => timer = setTimeout(() => r(late), ms));
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
/** GC rows per statement inside one call. */
const SUB_BATCH = 4000;

/** SQL conditions on a `blobs` row: no version or chunk list refers to it (or one does). */
const UNREFERENCED = `AND NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = blobs.hash)
  AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = blobs.hash)
  AND NOT EXISTS (SELECT 1 FROM chunks k WHERE k.chunk = blobs.hash)`;
const REFERENCED = `AND (EXISTS (SELECT 1 FROM current c WHERE c.hash = blobs.hash)
  OR EXISTS (SELECT 1 FROM history h WHERE h.hash = blobs.hash)
  OR EXISTS (SELECT 1 FROM chunks k WHERE k.chunk = blobs.hash))`;

/**
 * The blob rows matching `cond`, locked in id order: every statement that
 * changes many blob rows takes them this way, so two of them never wait
 * for each other in a cycle (then PostgreSQL would abort one after its
 * deadlock_timeout, 1 s by default). A row changed meanwhile is re-checked
 * against `cond` once its lock is taken.
 */
function inIdOrder(cond: string): string {
  return `id IN (SELECT id FROM blobs WHERE ${cond} ORDER BY id FOR UPDATE)`;
}

const COLS =
  `path, type, size, mode, mtime, ctime, encode(hash, 'hex') AS hash, target, encode(xxh, 'hex') AS xxh, flag`;
const PAGE = 2000;
/** Chunk list rows per INSERT (a 10 GB file has ~20,000 chunks). */
const LIST_ROWS = 10_000;
/** Rows per INSERT … SELECT FROM unnest(…) (GC's moves). */
const CHUNK = 1000;
/** Rows per INSERT of a JSON array (an ingest batch is one: up to 4,096 rows). */
const JSON_ROWS = 4096;
/**
 * A commit touching this many paths has the version and blob tables
 * analyzed after it (see #analyze).
 */
const ANALYZE_AFTER = 10_000;
/** Hashes per knownBlobs statement: an ingest batch (4,096 rows) is one round trip. */
const LOOKUP_ROWS = 4096;

/** Columns of a version as browsing shows it (mtime as text, hash as hex). */
const VERSION_COLS =
  `path, type, size, mode, mtime::text AS mtime, encode(hash, 'hex') AS hash, target, flag`;

/** A VERSION_COLS row as a VersionInfo. */
function rowToVersion(r: Row): VersionInfo {
  const v: VersionInfo = {
    type: r.type as VersionInfo["type"],
    size: Number(r.size),
    mode: Number(r.mode),
    mtime: r.mtime as string,
  };
  if (r.hash) v.hash = r.hash as string;
  if (r.target !== null) v.target = r.target as string;
  if (r.flag !== null) v.flag = r.flag as string;
  return v;
}

/** The end of the key range of the paths below `prefix` ("0" follows "/"), null for all. */
function prefixEnd(prefix: string): string | null {
  return prefix === "" ? null : prefix + "0";
}

/** The `/` after the directory `$3` in a path: 0 for a direct child. */
function slashIn(col: string): string {
  return `strpos(substr(${col}, char_length($3) + 1), '/')`;
}

/**
 * The children of a directory as SqliteIndex.listDir finds them, in one
 * statement: a recursive CTE seeks in `paths` from `$2` (the first child
 * after the cursor), each step past the subtree of a deeper path (`child0`)
 * or past a direct child (`path || chr(1)`); each direct child's version at
 * commit `$4` is one key lookup, and the CTE runs only as far as the LIMIT
 * (`$5`) pulls it. `$1` project, `$3` the directory with its `/`, `$6` the
 * end of its key range (when bounded).
 */
function listDirSql(bounded: boolean): string {
  const end = (col: string) => bounded ? ` AND ${col} < $6` : "";
  return `WITH RECURSIVE k(path) AS (
      (SELECT path FROM paths WHERE project = $1 AND path >= $2${end("path")}
       ORDER BY path LIMIT 1)
      UNION ALL
      SELECT (SELECT p.path FROM paths p WHERE p.project = $1 AND p.path >= CASE
          WHEN ${slashIn("k.path")} > 0
            THEN left(k.path, char_length($3) + ${slashIn("k.path")} - 1) || '0'
          ELSE k.path || chr(1) END${end("p.path")}
        ORDER BY p.path LIMIT 1)
      FROM k WHERE k.path IS NOT NULL)
    SELECT v.* FROM k CROSS JOIN LATERAL (
      SELECT ${VERSION_COLS} FROM current c WHERE c.project = $1 AND c.path = k.path AND c.first <= $4
      UNION ALL SELECT ${VERSION_COLS} FROM history h
        WHERE h.project = $1 AND h.path = k.path AND h.first <= $4 AND h.last > $4
      LIMIT 1) v
    WHERE k.path IS NOT NULL AND ${slashIn("k.path")} = 0
    LIMIT $5`;
}

/**
 * The key range of the paths that start with the literal start of glob
 * `pattern` (up to its first `*`, `?` or `[`): [start, end), end null when
 * unbounded (no literal start, or it ends in the last code point).
 */
export function literalRange(pattern: string): [string, string | null] {
  const chars = [.../^[^*?[]*/.exec(pattern)![0]];
  if (chars.length === 0) return ["", null];
  const last = chars.pop()!.codePointAt(0)!;
  if (last >= 0x10ffff) return [chars.join("") + String.fromCodePoint(last), null];
  // Byte order is code point order (UTF-8); the surrogates are no characters.
  const next = last === 0xd7ff ? 0xe000 : last + 1;
  const start = [...chars, String.fromCodePoint(last)].join("");
  return [start, chars.join("") + String.fromCodePoint(next)];
}

/**
 * The longest run of literal characters of glob `pattern` (outside `*`, `?`
 * and `[…]`) as a LIKE pattern `%run%`: every match contains it, and LIKE
 * rejects most paths several times faster than the regular expression.
 */
export function likeFilter(pattern: string): string {
  let best = "";
  let run = "";
  const chars = [...pattern];
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i];
    if (c === "*" || c === "?" || c === "[") {
      if (run.length > best.length) best = run;
      run = "";
      if (c === "[") {
        // Past the set: a "]" right after "[" or "[^" is a member.
        let j = i + 1;
        if (chars[j] === "^") j++;
        if (chars[j] === "]") j++;
        while (j < chars.length && chars[j] !== "]") j++;
        i = j;
      }
    } else run += c;
  }
  if (run.length > best.length) best = run;
  return `%${best.replace(/[\\%_]/g, "\\$&")}%`;
}

/** A character as a regular expression escape (ARE: \U and 8 hex digits). */
function reChar(c: string): string {
  return "\\U" + c.codePointAt(0)!.toString(16).padStart(8, "0");
}

/**
 * SQLite's GLOB as a PostgreSQL regular expression (ARE), anchored: `*` any
 * run (`/` too), `?` one character, `[…]` a set (`^` first negates, `]`
 * first is a member, `a-z` a range), everything else itself. `anyDir`: the
 * pattern may match the last component (`path GLOB p OR path GLOB '*\/' ||
 * p`). Null when it can match nothing (a `[` without its `]`, as in SQLite).
 */
export function globRegex(pattern: string, anyDir: boolean): string | null {
  const chars = [...pattern];
  let out = "";
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i];
    if (c === "*") out += ".*";
    else if (c === "?") out += ".";
    else if (c === "[") {
      let j = i + 1;
      let negate = false;
      if (chars[j] === "^") {
        negate = true;
        j++;
      }
      let set = "";
      let prior: string | null = null;
      let first = true;
      for (; j < chars.length && (first || chars[j] !== "]"); j++, first = false) {
        const d = chars[j];
        if (d === "-" && prior !== null && j + 1 < chars.length && chars[j + 1] !== "]") {
          const to = chars[++j];
          // Its start is a member already; a reversed range adds nothing (and
          // a regular expression would refuse it).
          if (to.codePointAt(0)! >= prior.codePointAt(0)!) set += "-" + reChar(to);
          prior = null;
        } else {
          set += reChar(d);
          // A leading "]" is a member, never the start of a range (as in SQLite).
          prior = first && d === "]" ? null : d;
        }
      }
      if (j >= chars.length) return null;
      if (set === "" && !negate) return null;
      out += set === "" ? "." : `[${negate ? "^" : ""}${set}]`;
      i = j;
    } else out += reChar(c);
  }
  return anyDir ? `^(.*/)?${out}$` : `^${out}$`;
}

function rowToEntry(r: Row): Entry {
  const e: Entry = {
    path: r.path as string,
    type: r.type as Entry["type"],
    size: Number(r.size),
    mode: Number(r.mode),
    mtime: BigInt(r.mtime as string),
    ctime: BigInt(r.ctime as string),
  };
  if (r.hash) e.hash = r.hash as string;
  if (r.target !== null) e.target = r.target as string;
  if (r.xxh) e.xxh = r.xxh as string;
  if (r.flag !== null) e.flag = r.flag as EntryFlag;
  return e;
}

function blobRowOf(r: Row): BlobRow {
  return { id: Number(r.id), hash: new Uint8Array(r.hash as Uint8Array), ...placeOf(r) };
}

/** What checkIntegrity counts: each query finds the rows that break one rule. */
const INTEGRITY_CHECKS: [string, string][] = [
  [
    "projects whose head is no live commit",
    `SELECT 1 FROM projects p WHERE p.head > 0 AND NOT EXISTS
       (SELECT 1 FROM commits c WHERE c.project = p.id AND c.seq = p.head AND c.forgotten IS NULL)`,
  ],
  [
    "current versions that start after their project's head",
    "SELECT 1 FROM current c JOIN projects p ON p.id = c.project WHERE c.first > p.head",
  ],
  [
    "history versions whose range is empty or outlives the head",
    `SELECT 1 FROM history h JOIN projects p ON p.id = h.project
     WHERE h.last <= h.first OR h.last > p.head`,
  ],
  [
    "versions whose path is missing from paths",
    `SELECT 1 FROM (SELECT project, path FROM current UNION SELECT project, path FROM history) v
     WHERE NOT EXISTS (SELECT 1 FROM paths x WHERE x.project = v.project AND x.path = v.path)`,
  ],
];

/** A lease a server holds for a while (one GC round, one compaction at a time). */
export interface Lease {
  /** Takes the lease, or renews it when this server holds it; false when another holds it. */
  acquire(): Promise<boolean>;
  release(): Promise<void>;
}

/** Lower-case hex of `b`, by Buffer's native encoder (bytesToHex cost ~0.5 s a 100k-file backup). */
function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
}

function hexOf(b: Uint8Array | null | undefined): string | null {
  return b ? hex(b) : null;
}

/** A database error as a KeepError: no connection is "unavailable" (503, exit 5). */
function dbError(err: unknown, what: string): unknown {
  if (err instanceof KeepError) return err;
  const e = err as { code?: string; message?: string };
  const code = String(e.code ?? "");
  // Connection failures (ECONNREFUSED, CONNECT_TIMEOUT, …), class 08/57P (shutdown) and a
  // session the database ended for idling in its transaction (25P03: this server stalled).
  if (/^(E[A-Z]+|CONNECT_TIMEOUT|CONNECTION_.*|08...|57P0.|25P03)$/.test(code)) {
    return new KeepError("unavailable", `Cannot ${what}: the database is unavailable (${code})`);
  }
  return err;
}

/**
 * The index of a store in a PostgreSQL database.
 *
 * @example
 * ```ts
 * const index = await PgIndex.open("postgres://keep@db/keep");
 * const head = await index.headCommit("app");
 * await index.close();
 * ```
 */
export class PgIndex implements IndexStore {
  #sql: postgres.Sql;
  #url: string;
  #blobEpoch = 0;
  /** This server's name in leases. */
  #holder = crypto.randomUUID();
  #uploadTimeoutMs: number;
  #timeoutMs: number;
  #onReset: (message: string) => void;
  /** Uploads of this server in flight: the heartbeat refreshes their rows. */
  #live = new Set<number>();
  /** Packs this server opened and has not sealed: the heartbeat refreshes them too. */
  #open = new Set<number>();
  #timer: ReturnType<typeof setInterval>;
  #beat: Promise<void> | null = null;
  /** The store-wide blob epoch (store_meta) as last read: another server moved rows when it changes. */
  #sharedEpoch: number | null = null;

  private constructor(
    url: string,
    options: { uploadTimeoutMs: number; timeoutMs: number; onReset: (message: string) => void },
  ) {
    this.#url = url;
    this.#uploadTimeoutMs = options.uploadTimeoutMs;
    this.#timeoutMs = options.timeoutMs;
    this.#onReset = options.onReset;
    this.#sql = PgIndex.#connect(url, options.timeoutMs);
    this.#timer = setInterval(() => {
      this.#beat ??= this.#run("refresh uploads", () => this.#heartbeat()).catch(() => {})
        .finally(() => this.#beat = null);
    }, Math.max(100, Math.floor(this.#uploadTimeoutMs / 3)));
    Deno.unrefTimer(this.#timer as unknown as number);
  }

  /** The connection pool (replaced when the database stopped answering: see #reset). */
  get sql(): postgres.Sql {
    return this.#sql;
  }

  /**
   * A pool whose sessions PostgreSQL ends on its side too when this server
   * is cut off: a transaction left idle (its server gone silent) is rolled
   * back after `timeoutMs`, releasing the rows it locked (a project's
   * head); TCP keepalives and the user timeout find a client host gone (a
   * black-holed route) in about as long, whatever the session was doing.
   * Without them such a session held its locks until the database's own
   * keepalive (two hours by default) or TCP's retries (~15 min), and every
   * commit of that project on every server waited.
   */
  static #connect(
    url: string,
    timeoutMs: number,
    extra: { max?: number; onclose?: () => void } = {},
  ): postgres.Sql {
    const s = Math.max(1, Math.round(timeoutMs / 1000));
    return postgres(url, {
      max: extra.max ?? 8,
      onnotice: () => {},
      connect_timeout: Math.min(10, s),
      connection: {
        idle_in_transaction_session_timeout: timeoutMs,
        tcp_keepalives_idle: Math.max(1, Math.round(s / 2)),
        tcp_keepalives_interval: Math.max(1, Math.round(s / 6)),
        tcp_keepalives_count: 3,
        // Unacknowledged data (an answer into a black hole) ends the connection too (PG 12+).
        tcp_user_timeout: timeoutMs,
      },
      debug: () => DB_STATEMENTS.n++,
      // The lock's connection lives as long as it can (a new one is a new session, without it).
      ...(extra.onclose ? { max_lifetime: null, onclose: extra.onclose } : {}),
    });
  }

  /**
   * Connects and creates the tables when missing (under a lock: several
   * servers may start). `uploadTimeoutMs`: this server's uploads are
   * refreshed every third of it; one not refreshed for that long (its
   * server died) stops holding back retention and GC. `timeoutMs`: once
   * this index holds the store lock (a serving node, keep migrate), it
   * pings the database on that lock's own connection every few seconds; a
   * ping not answered in this long (a stopped or black-holed database, a
   * failover) drops every connection, so that the requests waiting on them
   * fail as unavailable (503) instead of waiting out TCP (~15 min), and
   * connects again (`onReset` says so). keep migrate stops then (its lock
   * went with the connection); a serving node takes its shared lock again.
   */
  static async open(
    url: string,
    options: {
      uploadTimeoutMs?: number;
      timeoutMs?: number;
      onReset?: (message: string) => void;
    } = {},
  ): Promise<PgIndex> {
    const index = new PgIndex(url, {
      uploadTimeoutMs: options.uploadTimeoutMs ?? UPLOAD_TIMEOUT_MS,
      timeoutMs: options.timeoutMs ?? INDEX_TIMEOUT_MS,
      onReset: options.onReset ?? (() => {}),
    });
    try {
      const made = index.sql.begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock(727274)`;
        await tx.unsafe(SCHEMA + GC_SCHEMA);
        // A new store has no blobs of failed uploads yet: its first full GC
        // mark pass is a day away, as on SQLite. (Run 10 s after the first
        // start, it marked every blob of a first backup in flight, which the
        // commit then unmarked: 100k rows written twice more.)
        await tx`INSERT INTO store_meta(key, value)
          SELECT 'gc_full_mark', keep_now() WHERE NOT EXISTS (SELECT 1 FROM blobs)
          ON CONFLICT (key) DO NOTHING`;
      });
      const late = { code: "ENOANSWER", message: "no answer" };
      if (await within(made.then(() => null), index.#timeoutMs, late)) throw late;
    } catch (err) {
      clearInterval(index.#timer);
      await index.sql.end({ timeout: 0 }).catch(() => {});
      if ((err as { code?: string }).code === "42704") {
        throw new KeepError(
          "usage",
          `Cannot open the index at ${redact(url)}: ${
            (err as Error).message
          } (Keep needs PostgreSQL 12 or later, and a pooler that passes its startup parameters on)`,
        );
      }
      const e = dbError(err, `open the index at ${redact(url)}`);
      if (e instanceof KeepError) throw e;
      throw new KeepError(
        "usage",
        `Cannot open the index at ${redact(url)}: ${(err as Error).message}`,
      );
    }
    return index;
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    if (this.#watch) clearInterval(this.#watch);
    this.#lock = null;
    // Each waited for no longer than the timeout (the database may be gone silent).
    for (const p of [this.#beat, this.#analyzing, this.#retaking]) {
      if (p) await within(p.then(() => {}, () => {}), this.#timeoutMs, undefined);
    }
    this.#held = null;
    await this.#lockSql?.end({ timeout: 5 });
    await this.sql.end({ timeout: 5 });
  }

  /**
   * The store lock's own pool of one connection (holdStoreLock). Not a
   * connection reserved from the main pool: a reserved connection that the
   * database closed takes no more queries safely (postgres.js 3.4.9 then
   * throws from a timer, outside any promise), and its close is not told.
   */
  #lockSql: postgres.Sql | null = null;
  /** That pool while its session holds the store lock. */
  #held: postgres.Sql | null = null;
  /** The store lock as asked for: taken again on a new connection after a reset. */
  #lock: { exclusive: boolean } | null = null;
  /** keep migrate's exclusive lock went with its connection: it may not go on. */
  #lostExclusive = false;
  #watch: ReturnType<typeof setInterval> | null = null;
  #pinging = false;
  #retaking: Promise<boolean> | null = null;

  /**
   * Takes the store's lock for as long as this index is open, on a
   * connection of its own: shared for a serving node (any number of them),
   * exclusive for keep migrate (none then). False when it is not free. A
   * session lock: a node killed, or its connection lost, holds it no more.
   * From then on the database is pinged on that connection (see open),
   * and a serving node takes the lock again when its session ended.
   */
  holdStoreLock(exclusive: boolean): Promise<boolean> {
    return this.#run("lock the store", async () => {
      if (this.#held) return true;
      if (!(await this.#takeLock(exclusive))) return false;
      this.#lock = { exclusive };
      if (!this.#watch) {
        const every = Math.max(200, Math.min(5_000, Math.floor(this.#timeoutMs / 3)));
        this.#watch = setInterval(() => this.#ping(), every);
        Deno.unrefTimer(this.#watch as unknown as number);
      }
      return true;
    });
  }

  async #takeLock(exclusive: boolean): Promise<boolean> {
    const pool = this.#lockSql ??= PgIndex.#connect(this.#url, this.#timeoutMs, {
      max: 1,
      onclose: () => {
        // Its session ended (a restart, a broken connection, a reset): the lock went with it.
        if (this.#lockSql !== pool || !this.#held) return;
        this.#held = null;
        if (this.#lock?.exclusive) this.#lostExclusive = true;
        this.#say(
          `the PostgreSQL index at ${redact(this.#url)} ended the session that held the store lock${
            this.#lostExclusive ? "" : "; taking it again"
          }`,
        );
      },
    });
    // Bounded: connect_timeout ends at the first ReadyForQuery, and a database that went
    // silent after it would hold the watchdog and every call waiting on this.
    const rows = await within(
      (async () =>
        exclusive
          ? await pool`SELECT pg_try_advisory_lock(727275) AS ok`
          : await pool`SELECT pg_try_advisory_lock_shared(727275) AS ok`)(),
      this.#timeoutMs,
      null,
    );
    if (rows === null) {
      if (this.#lockSql === pool) this.#lockSql = null;
      pool.end({ timeout: 0 }).catch(() => {});
      throw Object.assign(new Error(`no answer in ${this.#timeoutMs / 1000} s`), {
        code: "ENOANSWER",
      });
    }
    if (!rows[0].ok) return false;
    this.#held = pool;
    return true;
  }

  /** The lock taken again after its session ended (one attempt at a time); false while a migrate holds it. */
  #retake(): Promise<boolean> {
    return this.#retaking ??= this.#takeLock(false).then((ok) => {
      if (ok) this.#say(`the PostgreSQL index at ${redact(this.#url)} answers again`);
      return ok;
    }, (err) => {
      // Connected, then silent: the main pool is as stuck (its calls fail now, as after a ping).
      if ((err as { code?: string }).code === "ENOANSWER") this.#reset((err as Error).message);
      throw err;
    }).finally(() => this.#retaking = null);
  }

  /**
   * The watchdog's round: a ping on the lock's connection. Unanswered in
   * the timeout, it resets both pools; whenever the lock's session ended,
   * it takes the lock again (until it can).
   */
  async #ping(): Promise<void> {
    if (this.#pinging || !this.#lock) return;
    this.#pinging = true;
    try {
      await this.#pingOnce();
    } catch {
      /* told through the calls it failed */
    } finally {
      this.#pinging = false;
    }
  }

  async #pingOnce(): Promise<void> {
    const held = this.#held;
    if (held) {
      let answered = false; // an error is an answer too; a closed session shows in #held
      const ping = (async () => await held`SELECT 1`)().then(
        () => answered = true,
        () => answered = true,
      );
      await within(ping, this.#timeoutMs, undefined);
      // An event loop stalled past the deadline runs the timer before it reads the answer
      // waiting on the socket: one more turn for it, so a busy node is not reset.
      if (!answered) await new Promise((r) => setTimeout(r, 100));
      if (answered || this.#held !== held || !this.#lock) return;
      this.#reset(`no answer in ${this.#timeoutMs / 1000} s`);
    }
    if (!this.#held && !this.#lostExclusive) await this.#retake().catch(() => false);
  }

  /** A line for the server's log: never a throw (it runs in timers and socket handlers). */
  #say(message: string): void {
    try {
      this.#onReset(message);
    } catch { /* a closed stderr */ }
  }

  /**
   * Drops every connection (the requests waiting on them fail, as
   * unavailable) for new pools. The old sessions' locks and transactions
   * end on the database's side when it notices (see #connect).
   */
  #reset(reason: string): void {
    const old = [this.#sql, this.#lockSql];
    this.#sql = PgIndex.#connect(this.#url, this.#timeoutMs);
    this.#lockSql = null;
    this.#held = null;
    if (this.#lock?.exclusive) this.#lostExclusive = true;
    // Rows may have moved meanwhile: readers look places up again.
    this.#blobEpoch++;
    for (const pool of old) pool?.end({ timeout: 0 }).catch(() => {});
    for (const drop of this.#inflight) drop(reason);
    this.#inflight.clear();
    this.#say(
      `lost the PostgreSQL index at ${
        redact(this.#url)
      } (${reason}): its connections were dropped; connecting again`,
    );
  }

  /**
   * Refreshes the expiry of this server's uploads in flight, and notes when
   * another server moved blob rows (its readers then look places up again).
   */
  async #heartbeat(): Promise<void> {
    if (this.#live.size) {
      await this.sql`UPDATE uploads SET expires = keep_now() + ${this.#uploadTimeoutMs}
        WHERE id = ANY(${[...this.#live]}::bigint[])`;
    }
    if (this.#open.size) {
      await this.sql`UPDATE packs SET expires = keep_now() + ${this.#uploadTimeoutMs}
        WHERE id = ANY(${[...this.#open]}::bigint[]) AND sealed IS NULL`;
    }
    const [r] = await this.sql`SELECT value FROM store_meta WHERE key = 'blob_epoch'`;
    const shared = r ? Number(r.value) : 0;
    if (this.#sharedEpoch !== null && shared !== this.#sharedEpoch) this.#blobEpoch++;
    this.#sharedEpoch = shared;
  }

  /** Rows moved or went: this server's readers and (at their next heartbeat) the others' look again. */
  async #movedBlobs(): Promise<void> {
    this.#blobEpoch++;
    await this.sql`INSERT INTO store_meta(key, value) VALUES ('blob_epoch', 1)
      ON CONFLICT (key) DO UPDATE SET value = store_meta.value + 1`;
  }

  #expired(what: string): KeepError {
    return new KeepError(
      "unavailable",
      `Cannot ${what}: this upload's registration expired (its server did not refresh it for ${
        this.#uploadTimeoutMs / 1000
      } s); back up again`,
    );
  }

  /**
   * A lease named `name`, held for `ttlMs` after each acquire: one GC round
   * (or one compaction) at a time across the servers on this database. A
   * server that dies holding it loses it when it expires.
   */
  lease(name: string, ttlMs = 30_000): Lease {
    return {
      acquire: () =>
        this.#run(`take the ${name} lease`, async () => {
          const r = await this.sql`
            INSERT INTO leases(name, holder, expires) VALUES (${name}, ${this.#holder}, keep_now() + ${ttlMs})
            ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
            WHERE leases.holder = excluded.holder OR leases.expires < keep_now()
            RETURNING holder`;
          return r.length === 1;
        }),
      release: () =>
        this.#run(`give the ${name} lease back`, async () => {
          await this.sql`DELETE FROM leases WHERE name = ${name} AND holder = ${this.#holder}`;
        }),
    };
  }

  /**
   * This index's id, made at its first call: every server on this database
   * claims a bucket prefix under the same id (open.ts), so they share it.
   */
  storeId(): Promise<string> {
    return this.#run("read the store id", async () => {
      await this.sql`INSERT INTO keep_store(id) VALUES (${crypto.randomUUID()})
        ON CONFLICT (one) DO NOTHING`;
      const [r] = await this.sql`SELECT id FROM keep_store`;
      return r.id as string;
    });
  }

  /**
   * A transaction, tried again when PostgreSQL broke a deadlock by
   * aborting it (40P01) or could not serialize it (40001): rows are locked
   * in no fixed order by uploads (by hash) and GC (by id), and an aborted
   * transaction left nothing behind.
   */
  #begin<T>(f: (tx: postgres.TransactionSql) => Promise<T>): Promise<T> {
    // On the pool of the call: tried again after a reset, it fails (that pool ended) rather
    // than run again, unseen, on the new one.
    const sql = this.sql;
    return this.#retry(() => sql.begin(f) as Promise<T>);
  }

  async #retry<T>(f: () => Promise<T>): Promise<T> {
    for (let attempt = 1;; attempt++) {
      try {
        return await f();
      } catch (err) {
        const code = (err as { code?: string }).code;
        if ((code !== "40P01" && code !== "40001") || attempt >= 8) throw err;
        await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
      }
    }
  }

  /**
   * Fresh planner statistics after a bulk commit. Taken while the tables
   * were small (a first backup), they made the planner read a restore's
   * pages through a bitmap scan of every row after the cursor and a sort,
   * per page of 2,000 (85 ms a page on 100k paths, growing with the tree),
   * until autovacuum came round. A failure only leaves the old statistics.
   */
  async #analyze(): Promise<void> {
    await this.#run("analyze", () => this.sql`ANALYZE current, history, paths, blobs`)
      .catch(() => {});
    this.#analyzing = null;
  }

  /** The ANALYZE after a bulk commit, while it runs (close waits for it). */
  #analyzing: Promise<void> | null = null;

  /** Calls of #run in flight: a reset fails them (see #run). */
  #inflight = new Set<(reason: string) => void>();

  /**
   * `f` as a KeepError on failure (no database: "unavailable"). A reset
   * fails the calls in flight at once: postgres.js ends a connection by
   * closing its socket, which on a black-holed route never closes, so a
   * transaction on it would wait out TCP (its ROLLBACK queued behind the
   * query that got no answer). What it sent stays unanswered; PostgreSQL
   * rolls its transaction back (see #connect).
   */
  async #run<T>(what: string, f: () => Promise<T>): Promise<T> {
    let drop!: (reason: string) => void;
    const dropped = new Promise<never>((_, reject) =>
      drop = (reason) =>
        reject(
          new KeepError("unavailable", `Cannot ${what}: the database is unavailable (${reason})`),
        )
    );
    this.#inflight.add(drop);
    try {
      if (this.#lostExclusive) {
        throw new KeepError(
          "unavailable",
          `Cannot ${what}: the connection that held the store's lock on its PostgreSQL index was lost; run keep migrate again`,
        );
      }
      // After a reset: this node writes only under its shared lock (not while a migrate runs).
      if (this.#lock && !this.#held && !(await Promise.race([this.#retake(), dropped]))) {
        throw new KeepError(
          "unavailable",
          `Cannot ${what}: a keep migrate holds this store's PostgreSQL index`,
        );
      }
      return await Promise.race([f(), dropped]);
    } catch (err) {
      throw dbError(err, what);
    } finally {
      this.#inflight.delete(drop);
    }
  }

  // ---------------------------------------------------------------- projects and commits

  async #projectId(sql: Sql, name: string): Promise<number | null> {
    const [r] = await sql`SELECT id FROM projects WHERE name = ${name}`;
    return r ? Number(r.id) : null;
  }

  async #commitBySeq(sql: Sql, pid: number, project: string, seq: number) {
    const [r] = await sql`
      SELECT * FROM commits WHERE project = ${pid} AND seq = ${seq} AND forgotten IS NULL`;
    return r ? commitFromRow(r, project) : null;
  }

  async #head(sql: Sql, project: string): Promise<CommitInfo | null> {
    const [r] = await sql`SELECT id, head FROM projects WHERE name = ${project}`;
    if (!r || !Number(r.head)) return null;
    return await this.#commitBySeq(sql, Number(r.id), project, Number(r.head));
  }

  listProjects(): Promise<ProjectInfo[]> {
    return this.#run("list projects", async () => {
      const rows = await this.sql`
        SELECT p.id, p.name, p.head,
          (SELECT count(*) FROM commits c WHERE c.project = p.id AND c.forgotten IS NULL) AS n,
          (SELECT max(time) FROM commits c WHERE c.project = p.id AND c.forgotten IS NULL
            AND coalesce((c.counts::json ->> 'flagged')::bigint, 0) = 0) AS complete
        FROM projects p ORDER BY p.name`;
      const out: ProjectInfo[] = [];
      for (const r of rows) {
        out.push({
          name: r.name,
          lastComplete: r.complete === null ? null : new Date(Number(r.complete)).toISOString(),
          commits: Number(r.n),
          head: Number(r.head)
            ? await this.#commitBySeq(this.sql, Number(r.id), r.name, Number(r.head))
            : null,
        });
      }
      return out;
    });
  }

  headCommit(project: string): Promise<CommitInfo | null> {
    return this.#run("read the head", () => this.#head(this.sql, project));
  }

  resolveCommit(project: string, ref: string): Promise<CommitInfo> {
    return this.#run("find a commit", async () => {
      const pid = await this.#projectId(this.sql, project);
      if (pid === null) {
        throw new KeepError("not_found", `Cannot find project ${project}: it has no commits`);
      }
      let found: CommitInfo | null = null;
      if (ref === "latest" || ref === "") found = await this.#head(this.sql, project);
      else if (/^#?\d{1,9}$/.test(ref) && ref.length < 12) {
        found = await this.#commitBySeq(this.sql, pid, project, Number(ref.replace("#", "")));
      } else if (/^[0-9a-f]{4,32}$/.test(ref)) {
        const rows = await this.sql`
          SELECT * FROM commits WHERE project = ${pid} AND id >= ${ref} AND id < ${ref + "g"}
            AND forgotten IS NULL ORDER BY id LIMIT 2`;
        if (rows.length > 1) {
          throw new KeepError("usage", `Cannot pick commit: prefix ${ref} is ambiguous`);
        }
        if (rows.length === 1) found = commitFromRow(rows[0], project);
      }
      if (!found) {
        throw new KeepError("not_found", `Cannot find commit ${ref} in project ${project}`);
      }
      return found;
    });
  }

  listCommits(
    project: string,
    limit = 1000,
    beforeSeq = Number.MAX_SAFE_INTEGER,
  ): Promise<CommitInfo[]> {
    return this.#run("list commits", async () => {
      const pid = await this.#projectId(this.sql, project);
      if (pid === null) return [];
      const rows = await this.sql`
        SELECT * FROM commits WHERE project = ${pid} AND seq < ${beforeSeq} AND forgotten IS NULL
        ORDER BY seq DESC LIMIT ${limit}`;
      return rows.map((r) => commitFromRow(r, project));
    });
  }

  commitNotes(project: string, seq: number): Promise<CommitNote[]> {
    return this.#run("read notes", async () => {
      const pid = await this.#projectId(this.sql, project);
      if (pid === null) return [];
      const rows = await this.sql`
        SELECT path, flag, reason FROM notes WHERE project = ${pid} AND seq = ${seq} ORDER BY path`;
      return rows.map(noteOf);
    });
  }

  // ---------------------------------------------------------------- file versions

  async #exactRow(sql: Sql, pid: number, seq: number, path: string): Promise<Row | null> {
    const [r] = await sql.unsafe(
      `SELECT ${COLS} FROM current WHERE project = $1 AND path = $3 AND first <= $2
       UNION ALL SELECT ${COLS} FROM history WHERE project = $1 AND path = $3 AND first <= $2 AND last > $2`,
      [pid, seq, path],
    );
    return r ?? null;
  }

  async *#rows(
    project: string,
    commit: CommitInfo,
    prefix: string,
    withBlobs: boolean,
  ): AsyncGenerator<{ rows: Row[]; epoch: number }> {
    const pid = await this.#run("read entries", () => this.#projectId(this.sql, project));
    if (pid === null) return;
    const place = async (rows: Row[]) => {
      if (!withBlobs) return rows;
      const hashes = rows.filter((r) => r.hash).map((r) => r.hash as string);
      const places = new Map<string, Row>();
      if (hashes.length) {
        for (
          const b of await this.sql`
          SELECT encode(hash, 'hex') AS hex, size, stored, pack, "offset", chunked FROM blobs
          WHERE hash IN (SELECT decode(h, 'hex') FROM unnest(${hashes}::text[]) h)`
        ) places.set(b.hex, b);
      }
      for (const r of rows) r.place = r.hash ? places.get(r.hash as string) ?? null : null;
      return rows;
    };
    if (prefix !== "") {
      const exact = await this.#run(
        "read entries",
        () => this.#exactRow(this.sql, pid, commit.seq, prefix),
      );
      if (exact) yield { rows: await place([exact]), epoch: this.#blobEpoch };
    }
    let after = prefix === "" ? "" : prefix + "/";
    const before = prefix === "" ? null : prefix + "0";
    for (;;) {
      const rows = await this.#run("read entries", async () => {
        const headSeq = (await this.#head(this.sql, project))?.seq ?? 0;
        const range = before === null ? "path > $3" : "path > $3 AND path < $5";
        const cur = `SELECT ${COLS} FROM current WHERE project = $1 AND ${range} AND first <= $2`;
        const q = commit.seq === headSeq
          ? `${cur} ORDER BY path LIMIT $4`
          : `SELECT * FROM (${cur} UNION ALL SELECT ${COLS} FROM history WHERE project = $1 AND ${range} AND first <= $2 AND last > $2) u ORDER BY path LIMIT $4`;
        const args: (string | number)[] = [pid, commit.seq, after, PAGE];
        if (before !== null) args.push(before);
        return await place(await this.sql.unsafe(q, args));
      });
      if (rows.length) yield { rows, epoch: this.#blobEpoch };
      if (rows.length < PAGE) return;
      after = rows[rows.length - 1].path as string;
    }
  }

  async *entryPages(project: string, commit: CommitInfo, prefix = ""): AsyncGenerator<Entry[]> {
    for await (const { rows } of this.#rows(project, commit, prefix, false)) {
      yield rows.map(rowToEntry);
    }
  }

  async *placedPages(
    project: string,
    commit: CommitInfo,
    prefix = "",
  ): AsyncGenerator<PlacedEntry[]> {
    for await (const { rows, epoch } of this.#rows(project, commit, prefix, true)) {
      yield rows.map((r) => ({
        entry: rowToEntry(r),
        blob: r.place ? placeOf(r.place as Row) : null,
        epoch,
      }));
    }
  }

  entriesAt(project: string, seq: number, paths: string[]): Promise<Entry[]> {
    return this.#run("read entries", async () => {
      const pid = await this.#projectId(this.sql, project);
      if (pid === null || paths.length === 0) return [];
      const rows = await this.sql.unsafe(
        `SELECT ${COLS} FROM current WHERE project = $1 AND path = ANY($3::text[]) AND first <= $2
         UNION ALL SELECT ${COLS} FROM history WHERE project = $1 AND path = ANY($3::text[])
           AND first <= $2 AND last > $2`,
        [pid, seq, paths as unknown as string],
      );
      // In the order asked for, as the SQLite index answers.
      const byPath = new Map(rows.map((r) => [r.path as string, rowToEntry(r)]));
      return paths.flatMap((p) => byPath.has(p) ? [byPath.get(p)!] : []);
    });
  }

  projectChunks(project: string, hashes: Uint8Array[]): Promise<Set<string>> {
    return this.#run("look up chunks", async () => {
      const out = new Set<string>();
      const pid = await this.#projectId(this.sql, project);
      if (pid === null || !hashes.length) return out;
      for (let i = 0; i < hashes.length; i += CHUNK) {
        const part = hashes.slice(i, i + CHUNK).map((h) => bytesToHex(h));
        const rows = await this.sql`
          SELECT DISTINCT encode(k.chunk, 'hex') AS h FROM chunks k
          WHERE k.chunk IN (SELECT decode(x, 'hex') FROM unnest(${part}::text[]) x)
            AND (EXISTS (SELECT 1 FROM current c WHERE c.hash = k.file AND c.project = ${pid})
              OR EXISTS (SELECT 1 FROM history h WHERE h.hash = k.file AND h.project = ${pid}))`;
        for (const r of rows) out.add(r.h as string);
      }
      return out;
    });
  }

  projectHasHash(project: string, hash: Uint8Array): Promise<boolean> {
    return this.#run("look up content", async () => {
      const pid = await this.#projectId(this.sql, project);
      if (pid === null) return false;
      const h = Buffer.from(hash);
      const rows = await this.sql`
        SELECT 1 FROM current WHERE hash = ${h} AND project = ${pid}
        UNION ALL SELECT 1 FROM history WHERE hash = ${h} AND project = ${pid} LIMIT 1`;
      return rows.length > 0;
    });
  }

  // ---------------------------------------------------------------- uploads

  async beginUpload(project: string): Promise<UploadStage> {
    // Registered under GC's marking lock (shared): a marking transaction
    // either ended before this (the upload's lookups see its marks and
    // unmark them) or began after, and stamps its marks later than this
    // start, which GC's cutoff then spares (see "GC with several servers").
    const upload = await this.#run("begin an upload", () =>
      this.#begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock_shared(${LOCK_MARK}::int, 0)`;
        const [reg] = await tx`
          INSERT INTO uploads(project, started, expires)
          VALUES (${project}, keep_now(), keep_now() + ${this.#uploadTimeoutMs}) RETURNING id`;
        return Number(reg.id);
      }));
    // Refreshed by the heartbeat from here until its caller saw the commit or the abort end,
    // however they ended: a row left behind (its DELETE failed or never ran) then expires.
    // (Added here, not in the call: one a reset dropped may still land, unseen.)
    this.#live.add(upload);
    const forget = () => this.#live.delete(upload);
    const unregister = () => this.sql`DELETE FROM uploads WHERE id = ${upload}`;
    const clear = () => this.sql`DELETE FROM stage WHERE upload = ${upload}`;
    return {
      pin: (parent) =>
        this.#run("pin the parent", () =>
          this.#begin(async (tx) => {
            // Against forgetCommits of this project (it reads the pins under the lock).
            await tx`SELECT pg_advisory_xact_lock_shared(${LOCK_FORGET}::int, hashtext(${project}))`;
            const r = await tx`UPDATE uploads SET parent = ${parent},
              expires = keep_now() + ${this.#uploadTimeoutMs} WHERE id = ${upload}`;
            if (r.count !== 1) throw this.#expired("pin the parent");
          })),
      stage: (rows, blobs) =>
        this.#run("stage the upload", () =>
          this.#begin(async (tx) => {
            // Refreshed, and proven alive: rows of an expired upload no longer hold GC back.
            const r = await tx`UPDATE uploads SET expires = keep_now() + ${this.#uploadTimeoutMs}
              WHERE id = ${upload}`;
            if (r.count !== 1) throw this.#expired("stage the upload");
            const repaired = await this.#insertBlobs(tx, blobs);
            await this.#stageRows(tx, upload, rows);
            return repaired;
          })),
      withdraw: (path, reason) =>
        this.#run("withdraw a file", () => this.#withdraw(upload, project, path, reason)),
      commit: (header, stats) =>
        this.#run("commit", async () => {
          try {
            const { commit, changed, touched } = await this.#commitUpload(
              upload,
              project,
              header,
              stats,
            );
            // After the answer: the client need not wait for the statistics.
            if (touched >= ANALYZE_AFTER) this.#analyzing ??= this.#analyze();
            return { commit, changed };
          } finally {
            await clear().catch(() => {});
            await unregister().catch(() => {});
          }
        }).finally(forget),
      abort: () => {
        forget();
        return this.#run("abort the upload", async () => {
          await unregister();
          await clear();
        });
      },
    };
  }

  async #stageRows(sql: Sql, upload: number, rows: StageRow[]): Promise<void> {
    // A statement per batch, its rows one JSON array (JSON.stringify is
    // native; postgres.js escaped every element of 13 text arrays in
    // JavaScript on the server's event loop, ~1.5 s a 100k-file backup with
    // the blob rows'). A rebase may stage more than a batch: in parts.
    for (let i = 0; i < rows.length; i += JSON_ROWS) {
      const json = JSON.stringify(
        rows.slice(i, i + JSON_ROWS).map((r) => {
          const e = r.entry;
          return [
            r.path,
            parentOf(r.path),
            r.op,
            e?.type ?? null,
            e?.size ?? null,
            e?.mode ?? null,
            e ? String(e.mtime) : null,
            e ? String(e.ctime) : null,
            hexOf(r.hashBytes) ?? e?.hash ?? null,
            e?.target ?? null,
            hexOf(r.xxhBytes) ?? e?.xxh ?? null,
            r.flag ?? null,
            r.reason ?? null,
          ];
        }),
      );
      try {
        await sql`
          INSERT INTO stage(upload, path, parent, op, type, size, mode, mtime, ctime, hash, target, xxh, flag, reason)
          SELECT ${upload}, r->>0, r->>1, r->>2, r->>3, (r->>4)::bigint, (r->>5)::integer,
            (r->>6)::bigint, (r->>7)::bigint, decode(r->>8, 'hex'), r->>9, decode(r->>10, 'hex'),
            r->>11, r->>12
          FROM jsonb_array_elements(${json}::text::jsonb) r`;
      } catch (err) {
        if ((err as { code?: string }).code === "23505") {
          throw new KeepError("invalid", "Cannot accept upload: a path appears twice");
        }
        throw err;
      }
    }
  }

  async #withdraw(upload: number, project: string, path: string, reason: string): Promise<void> {
    const pid = await this.#projectId(this.sql, project);
    const inParent = pid !== null &&
      (await this.sql`SELECT 1 FROM current WHERE project = ${pid} AND path = ${path}`).length > 0;
    const r = inParent
      ? await this.sql`
        UPDATE stage SET op = 'keep', flag = 'unsettled', reason = ${reason}
        WHERE upload = ${upload} AND path = ${path} AND op = 'put'`
      : await this
        .sql`DELETE FROM stage WHERE upload = ${upload} AND path = ${path} AND op = 'put'`;
    if (r.count !== 1) {
      throw new KeepError(
        "invalid",
        `Cannot accept upload: drop record for ${JSON.stringify(path)} names no sent file`,
      );
    }
  }

  /** As SqliteIndex's #rebase: the commit holds exactly the tree its host scanned. */
  async #rebase(
    tx: Sql,
    upload: number,
    pid: number,
    project: string,
    header: UploadHeader,
    head: CommitInfo,
  ): Promise<void> {
    let base = 0;
    if (header.parent !== null) {
      const [p] = await tx`
        SELECT seq FROM commits WHERE project = ${pid} AND id = ${header.parent} AND forgotten IS NULL`;
      if (!p) {
        throw new KeepError(
          "conflict",
          `Cannot commit: parent ${header.parent} is not a commit of ${project} (any more); the head is ${head.id}`,
        );
      }
      base = Number(p.seq);
    }
    const inBase = async (path: string) =>
      base > 0 && (await this.#exactRow(tx, pid, base, path)) !== null;
    const inHead = async (path: string) =>
      (await tx`SELECT 1 FROM current WHERE project = ${pid} AND path = ${path}`).length > 0;
    const deleted = new Set<string>();
    for (
      const r of await tx`
      SELECT path, op, flag FROM stage WHERE upload = ${upload} AND op IN ('del', 'keep')`
    ) {
      const path = r.path as string;
      if (!await inBase(path)) {
        const what = r.op === "del" ? "deleted path" : "keep record for";
        throw new KeepError(
          "invalid",
          `Cannot commit: ${what} ${JSON.stringify(path)} is not in the parent commit`,
        );
      }
      if (await inHead(path)) continue;
      await tx`DELETE FROM stage WHERE upload = ${upload} AND path = ${path}`;
      if (r.op === "del") deleted.add(path);
      if (r.op === "keep") {
        const e = rowToEntry((await this.#exactRow(tx, pid, base, path))!);
        e.flag = r.flag as EntryFlag;
        await this.#stageRows(tx, upload, [{ op: "put", path, entry: e }]);
      }
    }
    const changedSince = await tx`
      SELECT path FROM current WHERE project = ${pid} AND first > ${base}
      UNION SELECT path FROM history WHERE project = ${pid} AND last > ${base}`;
    const staged = new Set(
      (await tx`SELECT path FROM stage WHERE upload = ${upload}`).map((r) => r.path as string),
    );
    const rows: StageRow[] = [];
    for (const r of changedSince) {
      const path = r.path as string;
      if (deleted.has(path) || staged.has(path)) continue;
      const then = base > 0 ? await this.#exactRow(tx, pid, base, path) : null;
      if (then) rows.push({ op: "put", path, entry: rowToEntry(then) });
      else if (await inHead(path)) rows.push({ op: "del", path });
    }
    await this.#stageRows(tx, upload, rows);
  }

  /** As SqliteIndex's #commitUpload, in one transaction holding the project's row. */
  #commitUpload(
    upload: number,
    project: string,
    header: UploadHeader,
    stats: CommitStats,
  ): Promise<{ commit: CommitInfo; changed: string[] | null; touched: number }> {
    return this.#begin(async (tx) => {
      await tx`INSERT INTO projects(name, created) VALUES (${project}, ${Date.now()})
        ON CONFLICT (name) DO NOTHING`;
      const [p] = await tx`SELECT id, head FROM projects WHERE name = ${project} FOR UPDATE`;
      const pid = Number(p.id);
      // The registration holds GC back until this transaction ends (it is
      // deleted in it); expired meanwhile (the server stalled), it held
      // nothing back and the upload may have lost what it counted on.
      const [reg] = await tx`SELECT id FROM uploads WHERE id = ${upload} FOR UPDATE`;
      if (!reg) throw this.#expired("commit");
      const head = Number(p.head)
        ? await this.#commitBySeq(tx, pid, project, Number(p.head))
        : null;
      if ((head?.id ?? null) !== header.parent) {
        await this.#rebase(tx, upload, pid, project, header, head!);
      }
      const seq = (head?.seq ?? 0) + 1;
      const v = { upload, project: pid, seq, empty: Buffer.from(EMPTY_HASH) };
      const get = async (st: Statement) =>
        (await tx.unsafe(pgText(st), argsOf(st, v) as never[]))[0] as Row | undefined;
      const check = async (name: keyof typeof COMMIT.checks) => {
        const r = await get(COMMIT.checks[name]);
        if (r) {
          throw new KeepError(
            "invalid",
            `Cannot commit: ${CHECK_MESSAGES[name](r.path as string)}`,
          );
        }
      };
      await check("deletedMissing");
      await check("keptMissing");
      // The content this commit refers to, unmarked in this transaction:
      // GC's sweep deletes only marked rows and re-reads a row another
      // transaction changed, so it either went before this statement (and
      // contentGone sees it) or it stays (see "GC with several servers").
      // From the upload's own rows, each blob by its hash: a test on
      // `orphan` the partial index could answer let the planner start from
      // every marked row instead, a whole-table walk after a mark pass (a
      // commit of 100k paths then took minutes).
      await tx.unsafe(
        `UPDATE blobs SET orphan = NULL WHERE id IN (
           SELECT b.id FROM stage s JOIN blobs b ON b.hash = s.hash
           WHERE s.upload = $1 AND s.hash IS NOT NULL AND coalesce(b.orphan, 0) <> 0
           ORDER BY b.id FOR UPDATE OF b)`,
        [upload],
      );
      const gone = await get(COMMIT.contentGone);
      if (gone) {
        throw new KeepError(
          "conflict",
          `Cannot commit: the content of ${
            JSON.stringify(gone.path)
          } is not in the store (collected during the upload); back up again`,
        );
      }
      await check("metaForeign");
      const totals = async () => {
        const t = { f: 0, d: 0, l: 0, bytes: 0 };
        for (
          const r of await tx.unsafe(pgText(COMMIT.totals), argsOf(COMMIT.totals, v) as never[])
        ) {
          t[r.type as "f" | "d" | "l"] = Number(r.n);
          t.bytes += Number(r.bytes ?? 0);
        }
        return t;
      };
      // The staged rows per op in one scan (SQLite counts them one op at a time).
      const [ops] = await tx`
        SELECT count(*) FILTER (WHERE op = 'put') AS put, count(*) FILTER (WHERE op = 'meta') AS meta,
          count(*) FILTER (WHERE op = 'del') AS del, count(*) FILTER (WHERE op = 'keep') AS keep
        FROM stage WHERE upload = ${upload}`;
      const staged = Number(ops.put);
      const metadata = Number(ops.meta);
      const deleted = Number(ops.del);
      const flagged = Number(ops.keep);
      // A project's first commit has no head rows: every put is added, nothing
      // is replaced (two scans of the staged rows less on a first backup).
      const added = head ? Number((await get(COMMIT.added))!.n) : staged;
      const removed = head ? await totals() : { f: 0, d: 0, l: 0, bytes: 0 };
      for (const st of COMMIT.apply) await tx.unsafe(pgText(st), argsOf(st, v) as never[]);
      // The checks below read the project's new head rows. With statistics
      // from before they were written (a new project: "1 row"), and `stage`
      // analyzed by autovacuum meanwhile, PostgreSQL planned them as nested
      // loops over every row of the project per staged row: 4 s for
      // noParentDir, over 10 minutes for childrenLeft on a first backup of
      // 100k files (psql, same rows). ANALYZE in this transaction counts its
      // own rows (~0.2 s); the checks then probe the primary key (~0.3 s each).
      if (staged + metadata >= ANALYZE_AFTER) await tx`ANALYZE current`;
      await check("noParentDir");
      await check("childrenLeft");
      const addedTotals = await totals();
      const counts = commitCounts(head, removed, addedTotals, {
        added,
        staged,
        metadata,
        deleted,
        flagged,
      });
      const id = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
      await tx`
        INSERT INTO commits(project, seq, id, parent, time, message, tags, host, source, scan_time, granularity, counts, stats)
        VALUES (${pid}, ${seq}, ${id}, ${head?.id ?? null}, ${Date.now()}, ${header.message},
          ${JSON.stringify(header.tags)}, ${header.host}, ${header.source}, ${
        String(header.scanTime)
      },
          ${String(header.granularity)}, ${JSON.stringify(counts)}, ${JSON.stringify(stats)})`;
      await tx`UPDATE projects SET head = ${seq} WHERE id = ${pid}`;
      const touched = staged + metadata + deleted + flagged;
      const changed = touched <= 50_000
        ? (await tx`SELECT path FROM stage WHERE upload = ${upload} ORDER BY path`).map((r) =>
          r.path as string
        )
        : null;
      await tx`DELETE FROM stage WHERE upload = ${upload}`;
      await tx`DELETE FROM uploads WHERE id = ${upload}`;
      return { commit: (await this.#commitBySeq(tx, pid, project, seq))!, changed, touched };
    });
  }

  // ---------------------------------------------------------------- blobs and packs

  knownBlobs(hashes: Uint8Array[]): Promise<Set<string>> {
    return this.#run("look up blobs", async () => {
      const known = new Set<string>();
      const hexes = hashes.map(hex);
      for (let i = 0; i < hexes.length; i += LOOKUP_ROWS) {
        const part = JSON.stringify(hexes.slice(i, i + LOOKUP_ROWS));
        // One round trip: the rows there, and the marked ones among them
        // unmarked by id (locked in id order, as every writer of many blob
        // rows locks them) before the upload counts on them (see gc.ts). A
        // marked row counts only when its unmark took its lock: one the sweep
        // deleted first is not returned, and the upload sends the content. A
        // row unmarked when read counts: one marked since was marked after
        // this upload's registration (its start), which GC spares (point 2 of
        // "GC with several servers"). Only rows GC marked are written.
        const rows = await this.#retry(() =>
          this.sql.unsafe(
            `WITH found AS MATERIALIZED (
               SELECT id, hash, orphan IS NOT NULL AS marked FROM blobs
               WHERE hash IN (SELECT decode(h, 'hex') FROM jsonb_array_elements_text($1::text::jsonb) h)
                 AND damaged IS NULL),
             kept AS (
               UPDATE blobs SET orphan = NULL WHERE id IN (
                 SELECT id FROM blobs WHERE id IN (SELECT id FROM found WHERE marked)
                   AND damaged IS NULL ORDER BY id FOR UPDATE)
               RETURNING id)
             SELECT encode(hash, 'hex') AS hex FROM found
             WHERE NOT marked OR id IN (SELECT id FROM kept)`,
            [part],
          )
        );
        for (const r of rows) known.add(r.hex as string);
      }
      return known;
    });
  }

  /** Inserts blob rows; a damaged or marked row takes the new bytes. Returns the repaired. */
  async #insertBlobs(tx: Sql, unsorted: NewBlob[]): Promise<number> {
    let repaired = 0;
    // In hash order: two uploads inserting the same new contents lock them in one order.
    const sorted = unsorted.map((r) => ({ r, hex: hex(r.hash) }))
      .sort((a, b) => a.hex < b.hex ? -1 : a.hex > b.hex ? 1 : 0);
    const rows = sorted.map((x) => x.r);
    // The packs the rows point into, touched (a new row version): GC's
    // forgetting of a dead pack re-reads the row and leaves it; a pack GC
    // already collected is refused (the upload is sent again).
    const packs = [...new Set(rows.map((r) => r.pack).filter((p) => p !== null))];
    if (packs.length) {
      const live = await tx`UPDATE packs SET sealed = sealed
        WHERE id = ANY(${packs}::bigint[]) AND dead IS NULL RETURNING id`;
      if (live.length !== packs.length) {
        throw new KeepError(
          "conflict",
          "Cannot stage the upload: a pack it wrote was collected meanwhile; back up again",
        );
      }
    }
    for (let i = 0; i < rows.length; i += JSON_ROWS) {
      const part = rows.slice(i, i + JSON_ROWS);
      // One JSON array per statement, as #stageRows (in hash order still).
      const json = JSON.stringify(part.map((r, j) => [
        sorted[i + j].hex,
        r.size,
        r.stored,
        hex(r.xxh),
        r.pack,
        r.offset,
        r.chunks ? 1 : null,
      ]));
      // Back come only the rows #writeChunkLists and the repair need (replaced
      // or chunked), not every new row's hash.
      const fixed = await tx`
        WITH written AS (
          INSERT INTO blobs(hash, size, stored, xxh, pack, "offset", chunked)
          SELECT decode(r->>0, 'hex'), (r->>1)::bigint, (r->>2)::bigint, decode(r->>3, 'hex'),
            (r->>4)::bigint, (r->>5)::bigint, (r->>6)::bigint
          FROM jsonb_array_elements(${json}::text::jsonb) r
          ON CONFLICT (hash) DO UPDATE SET size = excluded.size, stored = excluded.stored,
            xxh = excluded.xxh, pack = excluded.pack, "offset" = excluded."offset", level = NULL,
            damaged = NULL, orphan = NULL, chunked = excluded.chunked
          WHERE blobs.damaged IS NOT NULL OR blobs.orphan IS NOT NULL
          RETURNING xmax <> 0 AS updated, hash, chunked)
        SELECT updated, hash FROM written WHERE updated OR chunked IS NOT NULL`;
      await this.#writeChunkLists(tx, part, fixed);
      const updated = fixed.filter((r) => r.updated);
      if (updated.length) {
        this.#blobEpoch++;
        for (const r of updated) {
          const n = await tx`
            UPDATE current SET flag = NULL WHERE hash = ${r.hash} AND flag = 'damaged'`;
          if (n.count) repaired++;
        }
      }
    }
    // Damage marks changed for every server (their manifest caches; see damageEpoch).
    if (repaired) await this.#bumpDamageEpoch(tx);
    return repaired;
  }

  /**
   * The chunk lists of the rows an insert wrote (`written`: those replaced,
   * and those inserted chunked), as SQLite's #insertBlobs: a replaced row's list is rewritten
   * whole (the repair of a chunked file; a whole blob's row keeps none). In
   * the insert's transaction, which holds those rows: a second server
   * inserting the same file waits for it and then writes nothing (its
   * conflict does no update), a sweep of the row and its list (one
   * statement, gcSweep) goes before or after, never between.
   */
  async #writeChunkLists(tx: Sql, part: NewBlob[], written: Row[]): Promise<void> {
    // Most batches have neither (a first backup of small files): no map of the batch.
    if (!part.some((r) => r.chunks) && !written.some((w) => w.updated)) return;
    const byHex = new Map(part.map((r) => [hex(r.hash), r]));
    const drop: string[] = [];
    const file: string[] = [];
    const seq: number[] = [];
    const chunk: string[] = [];
    for (const w of written) {
      const h = hex(w.hash as Uint8Array);
      const r = byHex.get(h);
      if (!r || !(r.chunks || w.updated)) continue;
      drop.push(h);
      r.chunks?.forEach((c, i) => {
        file.push(h);
        seq.push(i);
        chunk.push(hex(c));
      });
    }
    if (drop.length) {
      await tx`DELETE FROM chunks WHERE file IN (SELECT decode(h, 'hex') FROM unnest(${drop}::text[]) h)`;
    }
    for (let i = 0; i < file.length; i += LIST_ROWS) {
      await tx`INSERT INTO chunks(file, seq, chunk)
        SELECT decode(f, 'hex'), s, decode(c, 'hex')
        FROM unnest(${file.slice(i, i + LIST_ROWS)}::text[], ${
        seq.slice(i, i + LIST_ROWS)
      }::bigint[], ${chunk.slice(i, i + LIST_ROWS)}::text[]) AS t(f, s, c)`;
    }
  }

  blobPlace(hashHex: string): Promise<BlobPlace | null> {
    return this.#run("look up a blob", async () => {
      const [r] = await this.sql`
        SELECT size, stored, pack, "offset", chunked FROM blobs
        WHERE hash = decode(${hashHex}, 'hex')`;
      return r ? placeOf(r) : null;
    });
  }

  blobPlaces(hashesHex: string[]): Promise<(BlobPlace | null)[]> {
    if (!hashesHex.length) return Promise.resolve([]);
    return this.#run("look up blobs", async () => {
      const found = new Map<string, BlobPlace>();
      for (
        const r of await this.sql`
        SELECT encode(hash, 'hex') AS hex, size, stored, pack, "offset", chunked FROM blobs
        WHERE hash IN (SELECT decode(h, 'hex') FROM unnest(${[...new Set(hashesHex)]}::text[]) h)`
      ) found.set(r.hex as string, placeOf(r));
      return hashesHex.map((h) => found.get(h.toLowerCase()) ?? null);
    });
  }

  readonly chunking = true;

  chunksOf(hashHex: string): Promise<string[]> {
    return this.#run("read a chunk list", async () =>
      (await this.sql`
        SELECT encode(chunk, 'hex') AS hex FROM chunks WHERE file = decode(${hashHex}, 'hex')
        ORDER BY seq`).map((r) => r.hex as string));
  }

  async newPack(): Promise<number> {
    const pack = await this.#run("number a pack", async () => {
      const [r] = await this.sql`INSERT INTO packs(created, expires)
        VALUES (${Date.now()}, keep_now() + ${this.#uploadTimeoutMs}) RETURNING id`;
      return Number(r.id);
    });
    // Refreshed once its caller has it, until it asks to seal it (sealed or not: one left
    // open expires and sealAbandoned seals it).
    this.#open.add(pack);
    return pack;
  }

  sealPack(pack: number): Promise<void> {
    this.#open.delete(pack);
    return this.#run("seal a pack", async () => {
      await this.sql`UPDATE packs SET sealed = keep_now() WHERE id = ${pack} AND sealed IS NULL`;
    });
  }

  /**
   * Unlike SQLite, only the packs whose writer is gone: other servers' open
   * packs share the table. A pack's writer refreshes its expiry with its
   * uploads'; one a killed server left open is sealed once that expired
   * (here at start, and by GC), so GC can evacuate and delete it. A writer
   * that only stalled past it finds its pack collected when it stages (the
   * pack is dead: refused, the client backs up again; point 5).
   */
  sealAllPacks(): Promise<void> {
    return this.#run("seal abandoned packs", () => this.#sealAbandoned(this.sql));
  }

  async #sealAbandoned(sql: Sql): Promise<void> {
    await sql`UPDATE packs SET sealed = keep_now()
      WHERE sealed IS NULL AND expires IS NOT NULL AND expires < keep_now()`;
  }

  /** The uploads (and staged rows) of dead servers: those whose registration expired. */
  forgetUploads(): Promise<void> {
    return this.#run("forget expired uploads", () => this.#expireUploads(this.sql));
  }

  async #expireUploads(sql: Sql): Promise<void> {
    // A row locked is a commit at work: alive.
    const gone = await sql`
      DELETE FROM uploads WHERE id IN (
        SELECT id FROM uploads WHERE expires < keep_now() FOR UPDATE SKIP LOCKED)
      RETURNING id`;
    if (gone.length) {
      await sql`DELETE FROM stage WHERE upload = ANY(${gone.map((r) => Number(r.id))}::bigint[])`;
    }
  }

  noteBlobsMoved(): void {
    this.#blobEpoch++;
  }

  get blobEpoch(): number {
    return this.#blobEpoch;
  }

  markDamaged(hash: Uint8Array, problem: string): Promise<boolean> {
    return this.#run("mark a blob damaged", () =>
      this.sql.begin(async (tx) => {
        const h = Buffer.from(hash);
        const r = await tx`
          UPDATE blobs SET damaged = ${
          problem.slice(0, 500)
        } WHERE hash = ${h} AND damaged IS NULL`;
        if (r.count === 0) return false;
        // Whatever flag a head entry had (unreadable last time), its content
        // must be sent again: damaged wins.
        await tx`
          UPDATE current SET flag = 'damaged'
          WHERE hash = ${h} AND (flag IS NULL OR flag != 'damaged')`;
        await this.#bumpDamageEpoch(tx);
        return true;
      }));
  }

  async #bumpDamageEpoch(tx: Sql): Promise<void> {
    await tx`INSERT INTO store_meta(key, value) VALUES ('damage_epoch', 1)
      ON CONFLICT (key) DO UPDATE SET value = store_meta.value + 1`;
  }

  damageEpoch(): Promise<number> {
    return this.#run("read the damage epoch", async () => {
      const [r] = await this.sql`SELECT value FROM store_meta WHERE key = 'damage_epoch'`;
      return r ? Number(r.value) : 0;
    });
  }

  // ---------------------------------------------------------------- browsing

  listDir(
    project: string,
    commit: CommitInfo,
    dir: string,
    options: { after?: string; limit: number; sizes?: boolean },
  ): Promise<{ entry: VersionInfo | null | undefined; items: TreeItem[]; next: string | null }> {
    return this.#run("list a directory", async () => {
      const pid = await this.#projectId(this.sql, project);
      if (pid === null) return { entry: undefined, items: [], next: null };
      let entry: VersionInfo | null | undefined = null;
      if (dir !== "") {
        const r = await this.#exactRow(this.sql, pid, commit.seq, dir);
        entry = r ? versionOf(rowToEntry(r)) : undefined;
        if (!r || r.type !== "d") return { entry, items: [], next: null };
      }
      const base = dir === "" ? "" : dir + "/";
      const end = prefixEnd(dir);
      // "\u0001" follows a path and precedes every longer one (no path holds a NUL).
      const from = options.after ? options.after + "\u0001" : base;
      const args: (string | number)[] = [pid, from, base, commit.seq, options.limit + 1];
      if (end !== null) args.push(end);
      const rows = await this.sql.unsafe(listDirSql(end !== null), args);
      const more = rows.length > options.limit;
      const items: TreeItem[] = rows.slice(0, options.limit).map((r) => ({
        name: (r.path as string).slice(base.length),
        path: r.path as string,
        ...rowToVersion(r),
      }));
      const dirs = items.filter((i) => i.type === "d");
      if (options.sizes && dirs.length) {
        const headSeq = (await this.#head(this.sql, project))?.seq ?? 0;
        const sizes = await this.#sizesBelow(pid, commit.seq, headSeq, dirs.map((i) => i.path));
        for (const i of dirs) Object.assign(i, sizes.get(i.path));
      }
      return { entry, items, next: more ? items[items.length - 1].path : null };
    });
  }

  /**
   * Files below each of `dirs` in commit `seq`, and their bytes: a range scan
   * of each subtree (`current` only for the head), all in one statement.
   */
  async #sizesBelow(
    pid: number,
    seq: number,
    headSeq: number,
    dirs: string[],
  ): Promise<Map<string, { files: number; bytes: number }>> {
    const range = "project = $1 AND path > d.dir || '/' AND path < d.dir || '0' AND first <= $2";
    const cur = `SELECT size FROM current WHERE ${range} AND type = 'f'`;
    const all = seq === headSeq
      ? cur
      : `${cur} UNION ALL SELECT size FROM history WHERE ${range} AND last > $2 AND type = 'f'`;
    const rows = await this.sql.unsafe(
      `SELECT d.dir, s.n, s.b FROM unnest($3::text[]) AS d(dir) CROSS JOIN LATERAL
         (SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM (${all}) u) s`,
      [pid, seq, dirs as unknown as string],
    );
    return new Map(rows.map((r) => [r.dir as string, { files: Number(r.n), bytes: Number(r.b) }]));
  }

  /**
   * As SqliteIndex.diffPage (three page-bounded range scans, merged by path)
   * in one read-only snapshot, so a commit landing meanwhile cannot move a
   * row between the scans.
   */
  diffPage(
    project: string,
    from: CommitInfo,
    to: CommitInfo,
    options: { prefix?: string; after?: string; limit: number },
  ): Promise<{ items: DiffItem[]; next: string | null }> {
    return this.#run("diff commits", async () => {
      const pid = await this.#projectId(this.sql, project);
      if (pid === null || from.seq === to.seq) return { items: [], next: null };
      const lo = Math.min(from.seq, to.seq);
      const hi = Math.max(from.seq, to.seq);
      const prefix = options.prefix ?? "";
      const range = prefix === ""
        ? "path > $4"
        : "path > $4 AND path >= $6 AND path < $7 AND (path = $6 OR path > $6::text || '/')";
      const arms = [
        `FROM history WHERE project = $1 AND ${range} AND first <= $2 AND last > $2 AND last <= $3`,
        `FROM history WHERE project = $1 AND ${range} AND first > $2 AND first <= $3 AND last > $3`,
        `FROM current WHERE project = $1 AND ${range} AND first > $2 AND first <= $3`,
      ];
      const args: (number | string)[] = [pid, lo, hi, options.after ?? "", options.limit];
      if (prefix !== "") args.push(prefix, prefixEnd(prefix)!);
      const pages = await this.sql.begin(
        "ISOLATION LEVEL REPEATABLE READ READ ONLY",
        async (tx) => {
          // Planned for these very commits: with few rows changed between them
          // PostgreSQL reads those by commit number (history_last, …) and sorts
          // them, else it scans in path order up to the page. A generic plan
          // (a prepared statement's, after five runs) cannot tell which.
          await tx`SET LOCAL plan_cache_mode = force_custom_plan`;
          const [p] = await tx`SELECT head FROM projects WHERE id = ${pid}`;
          const out: PathRow[][] = [];
          for (const [i, arm] of arms.entries()) {
            // No history row outlives the head (see SqliteIndex.diffPage).
            if (i === 1 && hi >= Number(p.head)) {
              out.push([]);
              continue;
            }
            const rows = await tx.unsafe(
              `SELECT ${VERSION_COLS} ${arm} ORDER BY path LIMIT $5`,
              args,
            );
            out.push(rows.map((r) => ({ path: r.path as string, version: rowToVersion(r) })));
          }
          return out;
        },
      );
      return diffOfScans(pages[0], pages[1], pages[2], options.limit, from.seq === lo);
    });
  }

  findPaths(
    project: string,
    pattern: string,
    options: { after?: string; limit: number },
  ): Promise<{ paths: string[]; next: string | null }> {
    return this.#run("find paths", async () => {
      const pid = await this.#projectId(this.sql, project);
      const re = globRegex(pattern, !pattern.includes("/"));
      if (pid === null || re === null) return { paths: [], next: null };
      // A pattern with a "/" matches whole paths: its literal start is a key range.
      const [from, to] = pattern.includes("/") ? literalRange(pattern) : ["", null];
      const after = options.after ?? "";
      const like = likeFilter(pattern);
      const rows = to === null
        ? await this.sql`
          SELECT path FROM paths WHERE project = ${pid} AND path >= ${from} AND path > ${after}
            AND path LIKE ${like} AND path ~ ${re} ORDER BY path LIMIT ${options.limit + 1}`
        : await this.sql`
          SELECT path FROM paths WHERE project = ${pid} AND path >= ${from} AND path < ${to}
            AND path > ${after} AND path LIKE ${like} AND path ~ ${re}
          ORDER BY path LIMIT ${options.limit + 1}`;
      const paths = rows.slice(0, options.limit).map((r) => r.path as string);
      return { paths, next: rows.length > options.limit ? paths[paths.length - 1] : null };
    });
  }

  pathVersions(project: string, paths: string[]): Promise<Map<string, PathVersion[]>> {
    return this.#run("list a path's versions", async () => {
      const out = new Map<string, PathVersion[]>();
      const pid = await this.#projectId(this.sql, project);
      if (pid === null || paths.length === 0) return out;
      const { live, rows } = await this.sql.begin(
        "ISOLATION LEVEL REPEATABLE READ READ ONLY",
        async (tx) => ({
          live: await tx`
            SELECT seq, id, time FROM commits WHERE project = ${pid} AND forgotten IS NULL
            ORDER BY seq`,
          rows: await tx.unsafe(
            `SELECT first, 9007199254740991 AS last, ${VERSION_COLS} FROM current
               WHERE project = $1 AND path = ANY($2::text[])
             UNION ALL SELECT first, last, ${VERSION_COLS} FROM history
               WHERE project = $1 AND path = ANY($2::text[])
             ORDER BY path, first DESC`,
            [pid, paths as unknown as string],
          ),
        }),
      );
      const commits = live.map((c) => ({
        seq: Number(c.seq),
        id: c.id as string,
        time: Number(c.time),
      }));
      const byPath = new Map<string, Row[]>();
      for (const r of rows) {
        const list = byPath.get(r.path as string);
        if (list) list.push(r);
        else byPath.set(r.path as string, [r]);
      }
      for (const [path, list] of byPath) {
        const versions = liveVersions(
          commits,
          list.map((r) => ({
            first: Number(r.first),
            last: Number(r.last),
            version: rowToVersion(r),
          })),
        );
        if (versions.length) out.set(path, versions);
      }
      return out;
    });
  }

  // ---------------------------------------------------------------- maintenance

  blobsPage(afterId: number, limit: number): Promise<BlobRow[]> {
    return this.#run("read blob rows", async () =>
      (await this.sql`
        SELECT id, hash, size, stored, pack, "offset", chunked FROM blobs WHERE id > ${afterId}
        ORDER BY id LIMIT ${limit}`).map(blobRowOf));
  }
  knownPacks(): Promise<Set<number>> {
    return this.#run(
      "list packs",
      async () => new Set((await this.sql`SELECT id FROM packs`).map((r) => Number(r.id))),
    );
  }
  counts(): Promise<StoreCounts> {
    return this.#run("count the store", async () => {
      const [r] = await this.sql`
        SELECT (SELECT count(*) FROM projects) AS projects,
          (SELECT count(*) FROM commits WHERE forgotten IS NULL) AS commits,
          (SELECT count(*) FROM blobs) AS blobs,
          (SELECT coalesce(sum(stored), 0) FROM blobs WHERE chunked IS NULL) AS stored`;
      return {
        projects: Number(r.projects),
        commits: Number(r.commits),
        blobs: Number(r.blobs),
        storedBytes: Number(r.stored),
      };
    });
  }

  /**
   * PostgreSQL checks its own pages (checksums, amcheck are its
   * administrator's); this checks what the index's rows must hold: every
   * head a live commit, no version starting after its head or ending
   * where it starts or after the head, every version's path in `paths`.
   */
  checkIntegrity(): Promise<string> {
    return this.#run("check the index", async () => {
      const problems: string[] = [];
      for (const [what, query] of INTEGRITY_CHECKS) {
        const [r] = await this.sql.unsafe(`SELECT count(*) AS n FROM (${query}) q`);
        if (Number(r.n) > 0) problems.push(`${r.n} ${what}`);
      }
      return problems.length ? problems.join("; ") : "ok";
    });
  }

  missingContent(limit: number): Promise<{ project: string; path: string; hash: string }[]> {
    return this.#run("look for missing content", async () => {
      const out: { project: string; path: string; hash: string }[] = [];
      for (const table of ["current", "history"]) {
        if (out.length >= limit) break;
        const rows = await this.sql.unsafe(
          `SELECT p.name AS project, t.path AS path, encode(t.hash, 'hex') AS hash
           FROM ${table} t JOIN projects p ON p.id = t.project
           WHERE t.hash IS NOT NULL AND t.size > 0
             AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = t.hash) LIMIT $1`,
          [limit - out.length],
        );
        for (const r of rows) {
          out.push({
            project: r.project as string,
            path: r.path as string,
            hash: r.hash as string,
          });
        }
      }
      return out;
    });
  }

  orphanBlobCount(): Promise<number> {
    return this.#run("count orphans", async () => {
      const [r] = await this.sql`
        SELECT count(*) AS n FROM blobs b
        WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = b.hash)
          AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = b.hash)
          AND NOT EXISTS (SELECT 1 FROM chunks k WHERE k.chunk = b.hash)`;
      return Number(r.n);
    });
  }

  headEntriesUsing(hash: Uint8Array, limit: number): Promise<{ project: string; path: string }[]> {
    return this.#run("look up head entries", async () =>
      (await this.sql`
        SELECT p.name AS project, c.path AS path FROM current c JOIN projects p ON p.id = c.project
        WHERE c.hash = ${Buffer.from(hash)} LIMIT ${limit}`).map((r) => ({
        project: r.project as string,
        path: r.path as string,
      })));
  }

  // ---------------------------------------------------------------- retention (policies only)

  getPolicy(project: string): Promise<Policy | null> {
    return this.#run("read a policy", async () => {
      const [r] = await this.sql`SELECT policy FROM policies WHERE project = ${project}`;
      return r ? JSON.parse(r.policy as string) : null;
    });
  }

  setPolicy(project: string, policy: Policy | null): Promise<void> {
    return this.#run("store a policy", async () => {
      if (policy === null) await this.sql`DELETE FROM policies WHERE project = ${project}`;
      else {
        await this.sql`
          INSERT INTO policies(project, policy, updated)
          VALUES (${project}, ${JSON.stringify(policy)}, ${Date.now()})
          ON CONFLICT (project) DO UPDATE SET policy = excluded.policy, updated = excluded.updated`;
      }
    });
  }

  listPolicies(): Promise<{ project: string; policy: Policy }[]> {
    return this.#run(
      "list policies",
      async () =>
        (await this.sql`SELECT project, policy FROM policies ORDER BY project`).map((r) => ({
          project: r.project as string,
          policy: JSON.parse(r.policy as string),
        })),
    );
  }

  // ---------------------------------------------------------------- GC with several servers
  //
  // The invariant of gc.ts (an upload counts on stored content only through
  // knownBlobs, which unmarks; marks made after the oldest upload in flight
  // began are never swept before it ends) must hold when the collector runs
  // on one server and uploads on others, with no event loop to serialize
  // them. In SQL terms:
  //
  // 1. One clock. Upload starts (`uploads.started`), marks (`blobs.orphan`)
  //    and pack seals are stamped by the database (keep_now()), never by a
  //    server, so "marked after the upload began" is decided by one clock.
  // 2. Marks never straddle a registration. A marking transaction
  //    (cleanHistory, gcMark, a sweep that frees a chunked file's chunks)
  //    holds the advisory lock LOCK_MARK exclusively and stamps after taking
  //    it; registering an upload takes it shared.
  //    So each marking transaction either committed before the upload was
  //    registered (the upload's knownBlobs, later, sees its marks and
  //    unmarks them) or stamps a time after the upload's start (GC's cutoff,
  //    at most that start, spares it until the upload ends).
  // 3. Row locks settle the rest. The sweep is one `DELETE … WHERE orphan IS
  //    NOT NULL AND orphan < cutoff AND <unreferenced>`; knownBlobs, a
  //    repairing insert and the commit transaction itself unmark with an
  //    UPDATE of the same row. Under READ COMMITTED the later of two writers
  //    of a row waits for the earlier and re-checks its WHERE on the row's
  //    new version: either the delete went first (knownBlobs then does not
  //    return the hash, and the upload sends the content; a commit sees it
  //    gone and answers 409) or the unmark did (orphan is NULL: the delete
  //    skips the row). The commit's unmark runs in the commit transaction,
  //    so no sweep can take a row between the commit's check that its
  //    content exists and its commit.
  // 4. Registrations expire. A server refreshes its uploads' `expires`
  //    every third of the timeout (and at each batch, in the same
  //    transaction as the batch: an expired upload cannot stage or commit),
  //    so a server killed with -9 holds GC back for one timeout at most.
  // 5. Packs. Numbers come from a sequence (never reused by any server); a
  //    pack with no rows sealed after the oldest upload in flight began may
  //    be an upload's whose rows are not staged yet, so it is not evacuated;
  //    staging touches (updates) the rows of the packs it points into and is
  //    refused for a dead one; a dead pack is deleted only while no row
  //    points into it.
  // 6. One collector at a time: rounds and compaction hold a lease row
  //    (lease()), renewed at each step; a round that loses it stops.

  gcBacklog(): Promise<{ projects: string[]; deadPacks: number; marked: number }> {
    return this.#run("read GC's backlog", async () => {
      const projects = (await this.sql`
        SELECT name FROM projects p WHERE EXISTS (
          SELECT 1 FROM commits c WHERE c.project = p.id AND c.forgotten IS NOT NULL)
        ORDER BY name`).map((r) => r.name as string);
      const [d] = await this.sql`SELECT count(*) AS n FROM packs WHERE dead IS NOT NULL`;
      const [m] = await this.sql`SELECT count(*) AS n FROM blobs WHERE orphan IS NOT NULL`;
      return { projects, deadPacks: Number(d.n), marked: Number(m.n) };
    });
  }

  forgetCommits(project: string, seqs: number[], at: number): Promise<number> {
    return this.#run("forget commits", () =>
      this.#begin(async (tx) => {
        // Pins are read under the project's lock that pin() shares: no pin
        // slips in between this read and the update.
        await tx`SELECT pg_advisory_xact_lock(${LOCK_FORGET}::int, hashtext(${project}))`;
        const [p] = await tx`SELECT id, head FROM projects WHERE name = ${project}`;
        if (!p || !Number(p.head)) return 0;
        const r = await tx`
          UPDATE commits SET forgotten = ${at}
          WHERE project = ${p.id} AND seq = ANY(${seqs}::bigint[]) AND forgotten IS NULL
            AND seq <> (SELECT head FROM projects WHERE id = ${p.id})
            AND id NOT IN (SELECT parent FROM uploads WHERE project = ${project}
              AND parent IS NOT NULL AND expires >= keep_now())`;
        return r.count;
      }));
  }

  cleanHistory(
    project: string,
    after: { path: string; first: number } | null,
    limit: number,
    before: number,
    _now: number,
  ): Promise<{ next: { path: string; first: number } | null; removed: number; marked: number }> {
    return this.#run("clean history", () =>
      this.#begin(async (tx) => {
        const pid = await this.#projectId(tx, project);
        if (pid === null) return { next: null, removed: 0, marked: 0 };
        // The project's row is shared with its commits: a commit re-adding a
        // path whose last version goes here waits (the paths row stays
        // right); taken first, so a long commit holds back no registration.
        // Marks are stamped after the marking lock (point 2 above).
        await tx`SELECT 1 FROM projects WHERE id = ${pid} FOR SHARE`;
        await tx`SELECT pg_advisory_xact_lock(${LOCK_MARK}::int, 0)`;
        const [{ now }] = await tx`SELECT keep_now() AS now`;
        let from: [string, number] = [after?.path ?? "", after?.first ?? -1];
        let removed = 0;
        let marked = 0;
        let done = false;
        for (let taken = 0; taken < limit && !done;) {
          const sub = Math.min(SUB_BATCH, limit - taken);
          const [end] = await tx`
            SELECT path, first FROM history WHERE project = ${pid} AND (path, first) > (${
            from[0]
          }, ${from[1]})
            ORDER BY path, first LIMIT 1 OFFSET ${sub - 1}`;
          const to: [string, number] | null = end ? [end.path as string, Number(end.first)] : null;
          // A version stays while a commit of its range is there (one
          // forgotten less than the grace ago still counts).
          const gone = await tx`
            DELETE FROM history h WHERE project = ${pid} AND (path, first) > (${from[0]}, ${
            from[1]
          })
              AND (${to === null} OR (path, first) <= (${to?.[0] ?? ""}, ${to?.[1] ?? 0}))
              AND NOT EXISTS (SELECT 1 FROM commits c WHERE c.project = ${pid}
                AND c.seq >= h.first AND c.seq < h.last
                AND (c.forgotten IS NULL OR c.forgotten >= ${before}))
            RETURNING path, encode(hash, 'hex') AS hash`;
          removed += gone.length;
          if (gone.length) {
            const paths = [...new Set(gone.map((r) => r.path as string))];
            // A path whose last version went is no longer one find can show.
            await tx`
              DELETE FROM paths WHERE project = ${pid} AND path = ANY(${paths}::text[])
                AND NOT EXISTS (SELECT 1 FROM current c WHERE c.project = ${pid} AND c.path = paths.path)
                AND NOT EXISTS (SELECT 1 FROM history h WHERE h.project = ${pid} AND h.path = paths.path)`;
            const hashes = [...new Set(gone.filter((r) => r.hash).map((r) => r.hash as string))];
            if (hashes.length) {
              const m = await tx.unsafe(
                `UPDATE blobs SET orphan = $1 WHERE ${
                  inIdOrder(`orphan IS NULL
                   AND hash IN (SELECT decode(h, 'hex') FROM unnest($2::text[]) h) ${UNREFERENCED}`)
                }`,
                [now, hashes as unknown as string],
              );
              marked += m.count;
            }
          }
          taken += sub;
          if (to) from = to;
          else done = true;
        }
        return { next: done ? null : { path: from[0], first: from[1] }, removed, marked };
      }));
  }

  purgeForgotten(project: string, before: number): Promise<{ purged: number; waiting: number }> {
    return this.#run("purge forgotten commits", () =>
      this.#begin(async (tx) => {
        const pid = await this.#projectId(tx, project);
        if (pid === null) return { purged: 0, waiting: 0 };
        await tx`DELETE FROM notes n USING commits c WHERE n.project = ${pid} AND c.project = ${pid}
          AND c.seq = n.seq AND c.forgotten IS NOT NULL AND c.forgotten < ${before}`;
        const r = await tx`DELETE FROM commits WHERE project = ${pid}
          AND forgotten IS NOT NULL AND forgotten < ${before}`;
        const [w] = await tx`SELECT count(*) AS n FROM commits WHERE project = ${pid}
          AND forgotten IS NOT NULL`;
        return { purged: r.count, waiting: Number(w.n) };
      }));
  }

  gcMark(
    afterId: number,
    limit: number,
    _now: number,
  ): Promise<{ lastId: number | null; marked: number }> {
    return this.#run("mark unreferenced blobs", () =>
      this.#begin(async (tx) => {
        const [hi] = await tx`SELECT max(id) AS last, count(*) AS n FROM (
          SELECT id FROM blobs WHERE id > ${afterId} ORDER BY id LIMIT ${limit}) b`;
        const n = Number(hi.n);
        if (n === 0) return { lastId: null, marked: 0 };
        const last = Number(hi.last);
        await tx`SELECT pg_advisory_xact_lock(${LOCK_MARK}::int, 0)`;
        const m = await tx.unsafe(
          `UPDATE blobs SET orphan = keep_now()
           WHERE ${inIdOrder(`id > $1 AND id <= $2 AND orphan IS NULL ${UNREFERENCED}`)}`,
          [afterId, last],
        );
        await tx.unsafe(
          `UPDATE blobs SET orphan = NULL
           WHERE ${inIdOrder(`id > $1 AND id <= $2 AND orphan IS NOT NULL ${REFERENCED}`)}`,
          [afterId, last],
        );
        return { lastId: n < limit ? null : last, marked: m.count };
      }));
  }

  gcSweep(
    afterId: number,
    before: number,
    limit: number,
    _now: number,
  ): Promise<
    { swept: number; sweptBytes: number; marked: number; large: BlobRow[]; lastId: number | null }
  > {
    return this.#run("sweep unreferenced blobs", async () => {
      let swept = 0;
      let sweptBytes = 0;
      let marked = 0;
      const large: BlobRow[] = [];
      let cursor = afterId;
      let done = false;
      const marks = "id > $1 AND id <= $2 AND orphan IS NOT NULL AND orphan < $3";
      const due = `${marks} ${UNREFERENCED}`;
      // The rows and, in the same statement, the chunk lists of chunked ones
      // (a list never outlives its file's row, nor goes without it).
      const sweep = (sql: Sql, last: number) =>
        sql.unsafe(
          `WITH gone AS (DELETE FROM blobs WHERE ${inIdOrder(due)}
             RETURNING id, stored, pack, "offset", size, chunked, hash),
           lists AS (DELETE FROM chunks WHERE file IN (SELECT hash FROM gone WHERE chunked IS NOT NULL))
           SELECT id, stored, pack, "offset", size, chunked,
             CASE WHEN pack IS NULL AND chunked IS NULL THEN hash END AS hash FROM gone`,
          [cursor, last, before],
        );
      // Statements of their own (no transaction needed): each DELETE is atomic, and re-checks
      // rows another transaction unmarked meanwhile (point 3 above).
      for (let taken = 0; taken < limit && !done;) {
        const sub = Math.min(SUB_BATCH, limit - taken);
        const [hi] = await this.sql`SELECT max(id) AS last, count(*) AS n,
            bool_or(chunked IS NOT NULL) AS lists FROM (
          SELECT id, chunked FROM blobs WHERE id > ${cursor} AND orphan IS NOT NULL AND orphan < ${before}
          ORDER BY id LIMIT ${sub}) b`;
        const n = Number(hi.n);
        if (n < sub) done = true;
        if (n === 0) break;
        const last = Number(hi.last);
        // Referenced again since it was marked (a commit landed): it stays.
        await this.#retry(() =>
          this.sql.unsafe(
            `UPDATE blobs SET orphan = NULL
             WHERE ${inIdOrder(`id > $1 AND id <= $2 AND orphan IS NOT NULL ${REFERENCED}`)}`,
            [cursor, last],
          )
        );
        const gone = !hi.lists ? await this.#retry(() => sweep(this.sql, last)) : await this.#begin(
          async (tx) => {
            // Chunked files among them: the chunks their lists held are marked
            // here (as cleanHistory marks a removed version's content), so
            // they go after the grace, not at the next daily full mark. A
            // marking transaction: under the marking lock, stamped after it.
            await tx`SELECT pg_advisory_xact_lock(${LOCK_MARK}::int, 0)`;
            const held = (await tx.unsafe(
              `SELECT DISTINCT encode(chunk, 'hex') AS hex FROM chunks WHERE file IN (
                 SELECT hash FROM blobs WHERE ${marks} AND chunked IS NOT NULL)`,
              [cursor, last, before],
            )).map((r) => r.hex as string);
            const rows = await sweep(tx, last);
            if (held.length) {
              // Only those no other list (or version) still holds.
              const m = await tx.unsafe(
                `UPDATE blobs SET orphan = keep_now() WHERE ${
                  inIdOrder(`orphan IS NULL
                    AND hash IN (SELECT decode(h, 'hex') FROM unnest($1::text[]) h) ${UNREFERENCED}`)
                }`,
                [held as unknown as string],
              );
              marked += m.count;
            }
            return rows;
          },
        );
        for (const r of gone) {
          // A chunked file's row has no bytes of its own (its chunks are counted as they go).
          if (r.chunked === null) sweptBytes += Number(r.stored);
          if (r.pack === null && r.chunked === null) large.push(blobRowOf(r));
        }
        swept += gone.length;
        taken += sub;
        cursor = last;
      }
      if (swept) await this.#movedBlobs();
      return { swept, sweptBytes, marked, large, lastId: done ? null : cursor };
    });
  }

  pendingOrphans(): Promise<number> {
    return this.#run("count marked blobs", async () => {
      const [r] = await this.sql`SELECT count(*) AS n FROM blobs WHERE orphan IS NOT NULL`;
      return Number(r.n);
    });
  }

  /**
   * Sealed packs, not dead, with their live bytes; a pack without rows
   * sealed after the oldest upload in flight began is left out (its rows
   * may still be on their way: ingest seals an object's pack, then stages).
   */
  packUsage(): Promise<{ pack: number; live: number }[]> {
    return this.#run("read pack usage", async () => {
      await this.#expireUploads(this.sql);
      await this.#sealAbandoned(this.sql);
      const rows = await this.sql`
        SELECT p.id, coalesce(u.live, 0) AS live FROM packs p
        LEFT JOIN (SELECT pack, sum(stored) AS live FROM blobs WHERE pack IS NOT NULL GROUP BY pack) u
          ON u.pack = p.id
        WHERE p.sealed IS NOT NULL AND p.dead IS NULL
          AND (u.live IS NOT NULL
            OR p.sealed < coalesce((SELECT min(started) FROM uploads), keep_now() + 1))
        ORDER BY p.id`;
      return rows.map((r) => ({ pack: Number(r.id), live: Number(r.live) }));
    });
  }

  blobsInPack(pack: number, limit: number): Promise<BlobRow[]> {
    return this.#run("read a pack's blobs", async () =>
      (await this.sql`
        SELECT id, hash, size, stored, pack, "offset" FROM blobs WHERE pack = ${pack}
        ORDER BY "offset" LIMIT ${limit}`).map(blobRowOf));
  }

  relocateBlobs(moves: { row: BlobRow; pack: number; offset: number }[]): Promise<number> {
    return this.#run("move blobs", async () => {
      let moved = 0;
      for (let i = 0; i < moves.length; i += CHUNK) {
        const part = moves.slice(i, i + CHUNK);
        // Guarded: a row another writer moved meanwhile is left where it is.
        const r = await this.#retry(() =>
          this.sql`
          UPDATE blobs b SET pack = m.np, "offset" = m.no
          FROM unnest(${part.map((m) => m.row.id)}::bigint[], ${part.map((m) => m.pack)}::bigint[],
            ${part.map((m) => m.offset)}::bigint[], ${part.map((m) => m.row.pack)}::bigint[],
            ${part.map((m) => m.row.offset)}::bigint[]) AS m(id, np, no, op, oo)
          WHERE b.id = m.id AND b.pack = m.op AND b."offset" = m.oo`
        );
        moved += r.count;
      }
      await this.#movedBlobs();
      return moved;
    });
  }

  compactCandidates(limit: number): Promise<BlobRow[]> {
    return this.#run("find blobs to recompress", async () =>
      (await this.sql`
        SELECT id, hash, size, stored, pack, "offset" FROM blobs
        WHERE pack IS NOT NULL AND level IS NULL ORDER BY id LIMIT ${limit}`).map(blobRowOf));
  }

  moveBlobs(
    moves: { row: BlobRow; pack: number; offset: number; stored: number; level: number }[],
    skips: number[],
  ): Promise<number> {
    return this.#run("move recompressed blobs", async () => {
      let saved = 0;
      await this.#begin(async (tx) => {
        for (let i = 0; i < moves.length; i += CHUNK) {
          const part = moves.slice(i, i + CHUNK);
          const r = await tx`
            UPDATE blobs b SET pack = m.np, "offset" = m.no, stored = m.ns, level = m.lv
            FROM unnest(${part.map((m) => m.row.id)}::bigint[], ${
            part.map((m) => m.pack)
          }::bigint[],
              ${part.map((m) => m.offset)}::bigint[], ${part.map((m) => m.stored)}::bigint[],
              ${part.map((m) => m.level)}::integer[], ${part.map((m) => m.row.pack)}::bigint[],
              ${part.map((m) => m.row.offset)}::bigint[], ${
            part.map((m) => m.row.stored - m.stored)
          }::bigint[]) AS m(id, np, no, ns, lv, op, oo, saved)
            WHERE b.id = m.id AND b.pack = m.op AND b."offset" = m.oo
            RETURNING m.saved`;
          for (const s of r) saved += Number(s.saved);
        }
        if (skips.length) {
          await tx`UPDATE blobs SET level = -1 WHERE id = ANY(${skips}::bigint[]) AND level IS NULL`;
        }
      });
      await this.#movedBlobs();
      return saved;
    });
  }

  markPackDead(pack: number, at: number): Promise<void> {
    return this.#run("mark a pack dead", async () => {
      await this.sql`UPDATE packs SET dead = ${at} WHERE id = ${pack} AND dead IS NULL
        AND NOT EXISTS (SELECT 1 FROM blobs WHERE pack = ${pack})`;
    });
  }

  /** Dead before `before`, and no row points into them (see point 5 above). */
  deadPacks(before: number): Promise<number[]> {
    return this.#run("list dead packs", async () =>
      (await this.sql`
        SELECT id FROM packs p WHERE dead IS NOT NULL AND dead < ${before}
          AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.pack = p.id) ORDER BY id`).map((r) =>
        Number(r.id)
      ));
  }

  forgetPack(pack: number): Promise<void> {
    return this.#run("forget a pack", async () => {
      await this.sql`DELETE FROM packs WHERE id = ${pack} AND dead IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM blobs WHERE pack = ${pack})`;
    });
  }

  /** The oldest start of an upload in flight (by the database's clock); expired ones are removed first. */
  oldestUploadStart(): Promise<number | null> {
    return this.#run("read uploads", async () => {
      await this.#expireUploads(this.sql);
      const [r] = await this.sql`SELECT min(started) AS m FROM uploads`;
      return r?.m === null || r?.m === undefined ? null : Number(r.m);
    });
  }
  meta(key: string): Promise<number | null> {
    return this.#run("read meta", async () => {
      const [r] = await this.sql`SELECT value FROM store_meta WHERE key = ${key}`;
      return r ? Number(r.value) : null;
    });
  }
  setMeta(key: string, value: number): Promise<void> {
    return this.#run("write meta", async () => {
      await this.sql`INSERT INTO store_meta(key, value) VALUES (${key}, ${value})
        ON CONFLICT (key) DO UPDATE SET value = excluded.value`;
    });
  }
  projectUsage(project: string): Promise<ProjectUsage> {
    return this.#run("measure a project's usage", async () => {
      const pid = await this.#projectId(this.sql, project);
      if (pid === null) return { storedBytes: 0, exclusiveBytes: 0 };
      const [r] = await this.sql`
        WITH used AS (
          SELECT hash FROM current WHERE project = ${pid} AND hash IS NOT NULL
          UNION SELECT hash FROM history WHERE project = ${pid} AND hash IS NOT NULL)
        SELECT coalesce(sum(b.stored), 0) AS stored,
          coalesce(sum(b.stored) FILTER (WHERE
            NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = b.hash AND c.project != ${pid})
            AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = b.hash AND h.project != ${pid})
          ), 0) AS exclusive
        FROM blobs b JOIN used u ON u.hash = b.hash`;
      return { storedBytes: Number(r.stored), exclusiveBytes: Number(r.exclusive) };
    });
  }
  logicalBytes(): Promise<number> {
    return this.#run("count logical bytes", async () => {
      // Each kept commit's tree at full size (see SqliteIndex.logicalBytes).
      const [r] = await this.sql`
        SELECT coalesce(sum((counts::json ->> 'bytes')::bigint), 0) AS n
        FROM commits WHERE forgotten IS NULL`;
      return Number(r.n);
    });
  }

  // ---------------------------------------------------------------- tokens

  insertToken(t: TokenRow): Promise<void> {
    return this.#run("store a token", async () => {
      await this.sql`
        INSERT INTO tokens(id, hash, name, role, projects, created, revoked)
        VALUES (${t.id}, ${Buffer.from(t.hash)}, ${t.name}, ${t.role}, ${
        JSON.stringify(t.projects)
      },
          ${t.created}, ${t.revoked})`;
    });
  }

  listTokens(): Promise<TokenRow[]> {
    return this.#run(
      "list tokens",
      async () =>
        (await this.sql`SELECT * FROM tokens ORDER BY created, id`).map((r) => tokenOf(r)),
    );
  }

  tokenById(id: string): Promise<TokenRow | null> {
    return this.#run("look up a token", async () => {
      const [r] = await this.sql`SELECT * FROM tokens WHERE id = ${id}`;
      return r ? tokenOf(r) : null;
    });
  }

  revokeToken(id: string, at: number): Promise<boolean> {
    return this.#run("revoke a token", async () => {
      const r = await this.sql`
        UPDATE tokens SET revoked = ${at} WHERE id = ${id} AND revoked IS NULL`;
      return r.count === 1;
    });
  }

  sharedSecret(name: string): Promise<Uint8Array> {
    return this.#run("read a secret", async () => {
      const fresh = Buffer.from(crypto.getRandomValues(new Uint8Array(32)));
      await this.sql`INSERT INTO secrets(name, value) VALUES (${name}, ${fresh})
        ON CONFLICT (name) DO NOTHING`;
      const [r] = await this.sql`SELECT value FROM secrets WHERE name = ${name}`;
      return new Uint8Array(r.value as Uint8Array);
    });
  }

  // ---------------------------------------------------------------- copying (keep migrate)

  dumpRows(table: string, after: CellValue[] | null, limit: number): Promise<CellValue[][]> {
    const t = tableSpec(table);
    return this.#run(`read ${t.name}`, async () => {
      // Text keys in byte order, as SQLite's: a column not declared COLLATE "C"
      // (policies, tokens, store_meta) takes the database's, e.g. en-US, where
      // "app" < "Zeta"; the copy compares the two stores' rows in turn.
      const text = (c: string) => t.text?.includes(c) ? ` COLLATE "C"` : "";
      const keys = t.columns.slice(0, t.key).map((c) => `"${c}"${text(c)}`);
      const where = after
        ? `WHERE (${keys.join(", ")}) > (${
          keys.map((_, i) => `$${i + 1}::${pgType(t, t.columns[i])}${text(t.columns[i])}`).join(
            ", ",
          )
        })`
        : "";
      const rows = await this.sql.unsafe(
        `SELECT ${t.columns.map((c) => `"${c}"`).join(", ")} FROM ${t.name} ${where}
         ORDER BY ${keys.join(", ")} LIMIT ${Math.max(1, Math.floor(limit))}`,
        (after ?? []).map(pgParam) as never[],
      );
      return rows.map((r) => t.columns.map((c) => neutralCell(t, c, r[c])));
    });
  }

  clearRows(table: string): Promise<void> {
    const t = tableSpec(table);
    return this.#run(`clear ${t.name}`, async () => {
      await this.sql.unsafe(`DELETE FROM ${t.name}`);
    });
  }

  loadRows(table: string, rows: CellValue[][]): Promise<void> {
    const t = tableSpec(table);
    return this.#run(`write ${t.name}`, async () => {
      const cols = t.columns.map((c) => `"${c}"`).join(", ");
      const keys = t.columns.slice(0, t.key).map((c) => `"${c}"`).join(", ");
      const rest = t.columns.slice(t.key);
      const onConflict = rest.length === 0
        ? "DO NOTHING"
        : `DO UPDATE SET ${rest.map((c) => `"${c}" = excluded."${c}"`).join(", ")}`;
      // At most ~30,000 parameters a statement (the protocol's limit is 65,535).
      const per = Math.max(1, Math.floor(30_000 / t.columns.length));
      await this.sql.begin(async (tx) => {
        for (let i = 0; i < rows.length; i += per) {
          const chunk = rows.slice(i, i + per);
          const values = chunk.map((_, r) =>
            `(${
              t.columns.map((c, k) => `$${r * t.columns.length + k + 1}::${pgType(t, c)}`).join(
                ", ",
              )
            })`
          );
          await tx.unsafe(
            `INSERT INTO ${t.name}(${cols}) VALUES ${
              values.join(", ")
            } ON CONFLICT (${keys}) ${onConflict}`,
            chunk.flat().map(pgParam) as never[],
          );
        }
      });
    });
  }

  afterLoad(packSeq: number): Promise<void> {
    return this.#run("set the id counters", async () => {
      for (const table of ["projects", "blobs", "packs", "uploads"]) {
        const floor = table === "packs" ? packSeq : 0;
        await this.sql.unsafe(
          `SELECT setval(pg_get_serial_sequence('${table}', 'id'),
             greatest((SELECT coalesce(max(id), 0) FROM ${table}), $1::bigint, 1))`,
          [String(floor)],
        );
      }
    });
  }

  highestPack(): Promise<number> {
    return this.#run("read the pack counter", async () => {
      const [r] = await this.sql`
        SELECT greatest((SELECT coalesce(max(id), 0) FROM packs),
          (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM packs_id_seq)) AS n`;
      return Number(r.n);
    });
  }

  // ---------------------------------------------------------------- web UI sessions

  insertSession(r: SessionRow): Promise<void> {
    return this.#run("store a session", async () => {
      await this.sql`
        INSERT INTO sessions(hash, token, csrf, created, seen)
        VALUES (${Buffer.from(r.hash)}, ${r.tokenId}, ${r.csrf}, ${r.created}, ${r.seen})`;
    });
  }

  sessionByHash(hash: Uint8Array): Promise<SessionRow | null> {
    return this.#run("look up a session", async () => {
      const [r] = await this.sql`SELECT * FROM sessions WHERE hash = ${Buffer.from(hash)}`;
      return r ? sessionOf(r) : null;
    });
  }

  touchSession(hash: Uint8Array, seen: number): Promise<void> {
    return this.#run("record a session's request", async () => {
      await this.sql`UPDATE sessions SET seen = ${seen} WHERE hash = ${Buffer.from(hash)}`;
    });
  }

  deleteSession(hash: Uint8Array): Promise<void> {
    return this.#run("end a session", async () => {
      await this.sql`DELETE FROM sessions WHERE hash = ${Buffer.from(hash)}`;
    });
  }

  pruneSessions(seenBefore: number, createdBefore: number, keepAtMost: number): Promise<void> {
    return this.#run("expire sessions", async () => {
      await this.sql`DELETE FROM sessions WHERE seen < ${seenBefore} OR created < ${createdBefore}`;
      await this.sql`
        DELETE FROM sessions WHERE hash IN
          (SELECT hash FROM sessions ORDER BY seen DESC OFFSET ${keepAtMost})`;
    });
  }
}

/** The type a value of `column` is cast to in a statement. */
function pgType(t: TableSpec, column: string): string {
  if (t.bytes?.includes(column)) return "bytea";
  if (t.text?.includes(column)) return "text";
  if (t.real?.includes(column)) return "float8";
  return "bigint";
}

/** A neutral cell as a parameter: bytes as a Buffer, integers as text. */
function pgParam(v: CellValue): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (typeof v === "bigint") return v.toString();
  return v;
}

/** A URL without its password, for messages. */
function redact(url: string): string {
  return url.replace(/\/\/([^:/@]+):[^@]*@/, "//$1:***@");
}
