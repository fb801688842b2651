/**
 * The index: what the server knows about projects, commits, file versions,
 * blobs, packs and tokens. This interface is what the rest of the server
 * uses, and nothing else of a backend; the embedded one is SQLite
 * (sqlite_index.ts). Every call may wait on a database, so all are
 * asynchronous; calls that touch many rows take them in batches.
 *
 * History grows with changes, not with files × commits: each version of a
 * path is valid for a half-open range [first, last) of commit sequence
 * numbers, so an unchanged file costs nothing per commit.
 *
 * @module
 */

import type {
  CommitNote,
  DiffItem,
  PathVersion,
  Policy,
  ProjectInfo,
  TreeItem,
  VersionInfo,
} from "../../format/api.ts";
import type {
  CommitInfo,
  CommitStats,
  Entry,
  EntryFlag,
  UploadHeader,
} from "../../format/manifest.ts";
import type { BlobPlace } from "./blob_store.ts";
import type { CellValue } from "./tables.ts";

/** What an upload stages for one path. `entry` for put/meta; `flag`/`reason` for keep. */
export interface StageRow {
  op: "put" | "meta" | "del" | "keep";
  path: string;
  entry?: Entry;
  /** The entry's hash and partial hash as bytes, when the caller has them. */
  hashBytes?: Uint8Array;
  xxhBytes?: Uint8Array;
  flag?: EntryFlag;
  reason?: string;
}

/** A blob row to insert: its content and where its bytes are (already durable). */
export interface NewBlob {
  hash: Uint8Array;
  size: number;
  stored: number;
  /** Partial hash (xxHash64 of head + tail + size) computed by the server. */
  xxh: Uint8Array;
  pack: number | null;
  offset: number | null;
  /** A chunked file's chunks, in order (each a blob of this batch or already stored). */
  chunks?: Uint8Array[];
}

/** A blob row as maintenance sees it. */
export interface BlobRow extends BlobPlace {
  id: number;
  hash: Uint8Array;
}

/** One upload being staged: batches go in as they come, the commit at the end. */
export interface UploadStage {
  /** The upload names its parent: retention keeps that commit until the upload ends. */
  pin(parent: string | null): Promise<void>;
  /**
   * Inserts blob rows (their bytes must be durable) and stages path rows.
   * A row for content marked damaged takes the new bytes (a repair); the
   * number repaired is returned.
   */
  stage(rows: StageRow[], blobs: NewBlob[]): Promise<number>;
  /** The client withdrew a file it sent: a parent path keeps its last version, a new one goes. */
  withdraw(path: string, reason: string): Promise<void>;
  /**
   * Applies the staged upload as the project's next commit, durably and at
   * once. When other commits landed since `header.parent`, the new commit
   * still holds exactly the tree the client scanned (the parent's tree with
   * the upload's changes), placed on the head: many hosts backing up one
   * project at once land in a chain. Conflict when the parent is no commit
   * of the project any more; invalid when the result is not a tree or names
   * content that is not there.
   */
  commit(header: UploadHeader, stats: CommitStats): Promise<{
    commit: CommitInfo;
    /** The paths the commit touched, sorted; null when there were many. */
    changed: string[] | null;
  }>;
  /** Forgets the staged rows (blob rows inserted stay: content-addressed). */
  abort(): Promise<void>;
}

/** An entry of a commit with its blob's place (null for non-files or a missing row). */
export interface PlacedEntry {
  entry: Entry;
  blob: BlobPlace | null;
  /** The blob epoch the place was read at (see IndexStore.blobEpoch). */
  epoch: number;
}

/** A token as stored (the hash of its secret, never the secret). */
export interface TokenRow {
  id: string;
  hash: Uint8Array;
  name: string;
  role: string;
  projects: string[];
  created: number;
  revoked: number | null;
}

/**
 * A web UI session as stored (the hash of its cookie value, never the
 * value): any server on the index can read it, so a session made on one
 * node works on another behind a load balancer.
 */
export interface SessionRow {
  hash: Uint8Array;
  /** The token it was made from (its id); null on a server without tokens. */
  tokenId: string | null;
  csrf: string;
  created: number;
  seen: number;
}

/** What a project's content costs the store. */
export interface ProjectUsage {
  /** Stored bytes of every content its commits refer to. */
  storedBytes: number;
  /** Of those, the bytes of content no other project refers to. */
  exclusiveBytes: number;
}

/** The counts verify and stats report, read in one go. */
export interface StoreCounts {
  projects: number;
  commits: number;
  blobs: number;
  storedBytes: number;
}

/** The metadata half of a store. */
export interface IndexStore {
  close(): Promise<void>;

  // ---- projects and commits
  listProjects(): Promise<ProjectInfo[]>;
  /** The latest commit of a project, or null (also for unknown projects). */
  headCommit(project: string): Promise<CommitInfo | null>;
  /** By id, unique id prefix (4+), `#N` or `N`, or `latest`; throws not_found. */
  resolveCommit(project: string, ref: string): Promise<CommitInfo>;
  /** Newest first. */
  listCommits(project: string, limit?: number, beforeSeq?: number): Promise<CommitInfo[]>;
  commitNotes(project: string, seq: number): Promise<CommitNote[]>;

  // ---- file versions
  /** The entries of `commit` below `prefix` ("" for all), in path order, a page at a time. */
  entryPages(project: string, commit: CommitInfo, prefix?: string): AsyncIterable<Entry[]>;
  /** As entryPages, each file with its blob's place. */
  placedPages(project: string, commit: CommitInfo, prefix?: string): AsyncIterable<PlacedEntry[]>;
  /** The entries of some paths of commit `seq` (paths it lacks are left out). */
  entriesAt(project: string, seq: number, paths: string[]): Promise<Entry[]>;
  /** True when the project refers to content `hash` in any commit. */
  projectHasHash(project: string, hash: Uint8Array): Promise<boolean>;

  // ---- browsing (see server/browse.ts; forgotten commits never show)
  /**
   * A page of the children of directory `dir` ("" for the root) in `commit`,
   * in path order after the child path `after`; `sizes` adds each
   * directory's files and bytes below. `entry` is the version at `dir` (null
   * for the root, undefined when the commit has no such path).
   */
  listDir(
    project: string,
    commit: CommitInfo,
    dir: string,
    options: { after?: string; limit: number; sizes?: boolean },
  ): Promise<{ entry: VersionInfo | null | undefined; items: TreeItem[]; next: string | null }>;
  /**
   * A page of the paths (at or below `prefix`) whose version differs between
   * commits `from` and `to`, in path order after `after`.
   */
  diffPage(
    project: string,
    from: CommitInfo,
    to: CommitInfo,
    options: { prefix?: string; after?: string; limit: number },
  ): Promise<{ items: DiffItem[]; next: string | null }>;
  /**
   * A page of the paths any commit of the project ever held that match the
   * glob `pattern` (`*` crosses `/`; a pattern without `/` matches the last
   * component), after `after`. Paths only forgotten commits held may be in
   * it: pathVersions leaves them without versions.
   */
  findPaths(
    project: string,
    pattern: string,
    options: { after?: string; limit: number },
  ): Promise<{ paths: string[]; next: string | null }>;
  /** Every version of each path that a live commit holds, newest first. */
  pathVersions(project: string, paths: string[]): Promise<Map<string, PathVersion[]>>;

  // ---- uploads
  beginUpload(project: string): Promise<UploadStage>;

  // ---- blobs and packs
  /**
   * Which of `hashes` the store has sound (a blob marked damaged does not
   * count); hex. The caller counts on them: rows GC marked unreferenced are
   * unmarked (gcMark).
   */
  knownBlobs(hashes: Uint8Array[]): Promise<Set<string>>;
  blobPlace(hashHex: string): Promise<BlobPlace | null>;
  /**
   * The places of `hashesHex`, in their order (null where the store has no
   * such blob): one round trip for a chunk list's window on a database.
   */
  blobPlaces(hashesHex: string[]): Promise<(BlobPlace | null)[]>;
  /**
   * True when the index records chunked files (NewBlob.chunks, chunksOf):
   * ingest cuts big files into chunk blobs only then.
   */
  readonly chunking?: boolean;
  /** The chunk hashes (hex, in order) of a chunked file's blob; [] for any other. */
  chunksOf?(hashHex: string): Promise<string[]>;
  /**
   * Which of `hashes` (hex) are chunks of a file `project` has in a live
   * version (its current tree or its history): content the project already
   * has, which an upload may name without a proof of possession.
   */
  projectChunks?(project: string, hashes: Uint8Array[]): Promise<Set<string>>;
  /** A new pack number, unsealed: its writer may still append to it. */
  newPack(): Promise<number>;
  /** The pack's writer closed it: from now on only repack rewrites or deletes it. */
  sealPack(pack: number): Promise<void>;
  /** Seals every open pack (at start: their writers are gone). */
  sealAllPacks(): Promise<void>;
  /** Forgets the uploads registered as in flight (at start: a crash left them). */
  forgetUploads(): Promise<void>;
  /** Another connection moved or removed blob rows: places read before may be stale. */
  noteBlobsMoved(): void;
  /**
   * Bumped whenever blob rows move or go (prune, repack, recompression, a
   * repair): a place read before a change of this number may be stale.
   */
  readonly blobEpoch: number;
  /**
   * Marks blob `hash` damaged: uploads stop counting on it (the next upload
   * of that content replaces it) and head entries using it are flagged
   * `damaged`. False when already marked or unknown.
   */
  markDamaged(hash: Uint8Array, problem: string): Promise<boolean>;
  /** Changes whenever blobs are marked damaged or repaired (by any process). */
  damageEpoch(): Promise<number>;

  // ---- maintenance
  /** Blob rows in id order after `afterId`. */
  blobsPage(afterId: number, limit: number): Promise<BlobRow[]>;
  /** Pack blobs not yet recompressed. */
  compactCandidates(limit: number): Promise<BlobRow[]>;
  /**
   * Moves rows to new places (their bytes durable), each only if it is still
   * where `from` says; `skips` are marked as not worth recompressing.
   * Returns the stored bytes saved by the moves that happened.
   */
  moveBlobs(
    moves: { row: BlobRow; pack: number; offset: number; stored: number; level: number }[],
    skips: number[],
  ): Promise<number>;
  /** Sealed packs, not dead, with the stored bytes their rows still use. */
  packUsage(): Promise<{ pack: number; live: number }[]>;
  /** Pack numbers the index knows. */
  knownPacks(): Promise<Set<number>>;
  /** Up to `limit` rows of one pack, in offset order. */
  blobsInPack(pack: number, limit: number): Promise<BlobRow[]>;
  /** Points rows at copies of their bytes (durable), each only if it is still where it was. */
  relocateBlobs(moves: { row: BlobRow; pack: number; offset: number }[]): Promise<number>;
  counts(): Promise<StoreCounts>;
  /** The database's own consistency check: "ok", or what it found. */
  checkIntegrity(): Promise<string>;
  /** Versions whose content is not in the store (up to `limit`). */
  missingContent(limit: number): Promise<{ project: string; path: string; hash: string }[]>;
  /** Blob rows no version refers to. */
  orphanBlobCount(): Promise<number>;
  /** Head entries that use content `hash` (up to `limit`). */
  headEntriesUsing(hash: Uint8Array, limit: number): Promise<{ project: string; path: string }[]>;

  // ---- retention and garbage collection (see server/gc.ts for the order of the steps)
  getPolicy(project: string): Promise<Policy | null>;
  /** Stores (null: removes) a project's policy. */
  setPolicy(project: string, policy: Policy | null): Promise<void>;
  listPolicies(): Promise<{ project: string; policy: Policy }[]>;
  /**
   * What GC has left to do, as the index records it: projects with
   * forgotten commits (their history to clean), dead packs (to delete after
   * the grace) and marked blob rows (to sweep).
   */
  gcBacklog(): Promise<{ projects: string[]; deadPacks: number; marked: number }>;
  /**
   * Forgets commits (never the head, nor the parent of an upload in flight)
   * at `at`: from then on no listing or lookup finds them, but their rows
   * stay until purgeForgotten (a restore that already began may read them
   * through the grace). Returns how many were forgotten.
   */
  forgetCommits(project: string, seqs: number[], at: number): Promise<number>;
  /**
   * Removes up to `limit` history rows of `project` after `after` (in path,
   * first order) that no remaining commit uses (commits forgotten before
   * `before` do not count), and marks (at `now`, see gcMark) the blobs only
   * they referred to; `next` is where to go on.
   */
  cleanHistory(
    project: string,
    after: { path: string; first: number } | null,
    limit: number,
    before: number,
    now: number,
  ): Promise<{ next: { path: string; first: number } | null; removed: number; marked: number }>;
  /**
   * Deletes the rows (and notes) of commits forgotten before `before`;
   * `waiting` counts the forgotten ones left (a later round's).
   */
  purgeForgotten(project: string, before: number): Promise<{ purged: number; waiting: number }>;
  /**
   * Marks (at `now`) blob rows after `afterId` that no version refers to, and
   * unmarks marked ones referred to again; `lastId` null at the end. Blobs
   * whose versions went are marked by cleanHistory already: this full pass
   * (daily) finds the others, e.g. the blobs of uploads that failed.
   */
  gcMark(
    afterId: number,
    limit: number,
    now: number,
  ): Promise<{ lastId: number | null; marked: number }>;
  /**
   * Deletes up to `limit` rows after `afterId` (id order) marked before
   * `before` that are still unreferenced (referenced ones are unmarked).
   * Returns how many went and their stored bytes, the large ones as rows
   * (their files are the caller's to delete), and where to go on (null: done).
   * A chunked file's row goes with its list; the chunks no other list or
   * version holds are then marked (at `now`), to go after the grace.
   */
  gcSweep(
    afterId: number,
    before: number,
    limit: number,
    now: number,
  ): Promise<
    { swept: number; sweptBytes: number; marked: number; large: BlobRow[]; lastId: number | null }
  >;
  /** Rows marked and not yet swept. */
  pendingOrphans(): Promise<number>;
  /** A pack whose rows all moved: its file is deleted after a grace (deadPacks). */
  markPackDead(pack: number, at: number): Promise<void>;
  deadPacks(before: number): Promise<number[]>;
  /** Forgets a dead pack once its file is deleted. */
  forgetPack(pack: number): Promise<void>;
  /**
   * When the oldest upload in flight started (ms), or null: GC spares rows
   * marked after it (that upload may have counted on them).
   */
  oldestUploadStart(): Promise<number | null>;
  /** Small numbers about the store (GC figures, last retention run). */
  meta(key: string): Promise<number | null>;
  setMeta(key: string, value: number): Promise<void>;
  projectUsage(project: string): Promise<ProjectUsage>;
  /** The file bytes of every kept commit's tree, summed (what dedup is measured against). */
  logicalBytes(): Promise<number>;

  // ---- copying a store (keep migrate; tables as in tables.ts)
  /** Up to `limit` rows of a durable table after primary key `after`, in key order. */
  dumpRows(table: string, after: CellValue[] | null, limit: number): Promise<CellValue[][]>;
  /** Removes every row of a durable table (a resumed copy loads them again). */
  clearRows(table: string): Promise<void>;
  /** Writes rows (replacing rows of the same key), durably, in one transaction. */
  loadRows(table: string, rows: CellValue[][]): Promise<void>;
  /** After loading: id counters past every id loaded; pack numbers past `packSeq`. */
  afterLoad(packSeq: number): Promise<void>;
  /** The highest pack number this index ever handed out (deleted packs count). */
  highestPack(): Promise<number>;

  /**
   * A random 32-byte secret kept under `name`, made at its first call: the
   * same for every server on this index (the keys of proofs of possession).
   */
  sharedSecret(name: string): Promise<Uint8Array>;

  // ---- tokens
  insertToken(row: TokenRow): Promise<void>;
  listTokens(): Promise<TokenRow[]>;
  tokenById(id: string): Promise<TokenRow | null>;
  /** Marks a token revoked; false when there was no active token `id`. */
  revokeToken(id: string, at: number): Promise<boolean>;

  // ---- web UI sessions (http/ui/session.ts)
  insertSession(row: SessionRow): Promise<void>;
  sessionByHash(hash: Uint8Array): Promise<SessionRow | null>;
  /** Records a request of the session at `seen`. */
  touchSession(hash: Uint8Array, seen: number): Promise<void>;
  deleteSession(hash: Uint8Array): Promise<void>;
  /**
   * Deletes the sessions last seen before `seenBefore` or made before
   * `createdBefore`, then all but the `keepAtMost` most recently seen.
   */
  pruneSessions(seenBefore: number, createdBefore: number, keepAtMost: number): Promise<void>;
}
