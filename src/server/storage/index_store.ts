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

import type { CommitNote, ProjectInfo, PruneResult } from "../../format/api.ts";
import type {
  CommitInfo,
  CommitStats,
  Entry,
  EntryFlag,
  UploadHeader,
} from "../../format/manifest.ts";
import type { BlobPlace } from "./blob_store.ts";

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
}

/** A blob row as maintenance sees it. */
export interface BlobRow extends BlobPlace {
  id: number;
  hash: Uint8Array;
}

/** One upload being staged: batches go in as they come, the commit at the end. */
export interface UploadStage {
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
   * once: conflict when `header.parent` is not the head, invalid when the
   * result is not a tree or names content that is not there.
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

/** The counts verify reports, read in one go. */
export interface StoreCounts {
  integrity: string;
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

  // ---- uploads
  beginUpload(project: string): Promise<UploadStage>;

  // ---- blobs and packs
  /** Which of `hashes` the store has sound (a blob marked damaged does not count); hex. */
  knownBlobs(hashes: Uint8Array[]): Promise<Set<string>>;
  blobPlace(hashHex: string): Promise<BlobPlace | null>;
  /** A new pack number, unsealed: its writer may still append to it. */
  newPack(): Promise<number>;
  /** The pack's writer closed it: from now on only repack rewrites or deletes it. */
  sealPack(pack: number): Promise<void>;
  /** Seals every open pack (at start: their writers are gone). */
  sealAllPacks(): Promise<void>;
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
  /** Sealed packs with the stored bytes their rows still use. */
  packUsage(): Promise<{ pack: number; live: number }[]>;
  /** Pack numbers the index knows. */
  knownPacks(): Promise<Set<number>>;
  /** The rows of one pack, in offset order. */
  blobsInPack(pack: number): Promise<BlobRow[]>;
  /** Points rows at their copies in another pack and forgets `pack`, at once. */
  replacePack(pack: number, moves: { id: number; pack: number; offset: number }[]): Promise<void>;
  /**
   * Forgets commits of `project` with seq <= head - keepLast, their notes and
   * the versions only they used, and the blob rows no commit refers to any
   * more; returns what it removed and the large blobs to delete.
   */
  prune(project: string, keepLast: number, dryRun: boolean): Promise<{
    result: PruneResult;
    deadLarge: string[];
  }>;
  counts(): Promise<StoreCounts>;
  /** Versions whose content is not in the store (up to `limit`). */
  missingContent(limit: number): Promise<{ project: string; path: string; hash: string }[]>;
  /** Blob rows no version refers to. */
  orphanBlobCount(): Promise<number>;
  /** Head entries that use content `hash` (up to `limit`). */
  headEntriesUsing(hash: Uint8Array, limit: number): Promise<{ project: string; path: string }[]>;

  // ---- tokens
  insertToken(row: TokenRow): Promise<void>;
  listTokens(): Promise<TokenRow[]>;
  tokenById(id: string): Promise<TokenRow | null>;
  /** Marks a token revoked; false when there was no active token `id`. */
  revokeToken(id: string, at: number): Promise<boolean>;
}
