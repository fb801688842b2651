/**
 * What the HTTP API (v1) carries as JSON besides the formats of
 * manifest.ts: the version, project ids and the shapes of the answers. The
 * server builds these and the client reads them; both import them from here
 * (neither half imports the other).
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import type { CommitInfo, EntryFlag } from "./manifest.ts";

/** Version of this program and of the API it speaks. */
export const VERSION = "0.1.0";
/** Every route is under this prefix. */
export const API = "/v1";

const PROJECT = /^[A-Za-z0-9._-]{1,128}$/;

/** Validates a project id: [A-Za-z0-9._-], 1–128 chars, not "." or "..". */
export function checkProjectName(name: string): string {
  if (!PROJECT.test(name) || name === "." || name === "..") {
    throw new KeepError(
      "invalid",
      `Cannot use project id ${JSON.stringify(name.slice(0, 140))}: use 1-128 of A-Z a-z 0-9 . _ -`,
    );
  }
  return name;
}

/** A path of a commit whose last good version was kept, and why. */
export interface CommitNote {
  path: string;
  flag: EntryFlag;
  reason: string;
}

/** Summary of a project for listings. */
export interface ProjectInfo {
  name: string;
  /** Live commits (forgotten ones do not count). */
  commits: number;
  head: CommitInfo | null;
  /** When its newest complete commit (no flagged paths) was made (ISO 8601), null: none. */
  lastComplete: string | null;
}

/** What `keep verify` found (`POST /v1/verify` answers `{report}`). */
export interface VerifyReport {
  ok: boolean;
  integrity: string;
  projects: number;
  commits: number;
  blobs: number;
  /** Stored bytes of all blobs. */
  storedBytes: number;
  damaged: { hash: string; problem: string }[];
  /** Damaged blobs newly marked by this run (the next upload of their content repairs them). */
  marked: number;
  /** Head entries that use damaged content (up to 1000): re-sent by their next backup. */
  affected: { project: string; path: string; hash: string }[];
  /** Content referenced by a commit but absent from the store. */
  missing: { hash: string; project: string; path: string }[];
  orphanBlobs: number;
  orphanFiles: string[];
  /** Pack files, and their bytes no blob row points at (crash leftovers, pruned blobs). */
  packs: number;
  packSlack: number;
  orphanPacks: string[];
  seconds: number;
}

/** What a project keeps. Every field optional; an empty policy keeps everything. */
export interface Policy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
  /** Milliseconds before the newest commit. */
  withinMs?: number;
  /** "key=value" tags that keep a commit. */
  tags?: string[];
  /** IANA time zone of the buckets (default UTC). */
  timeZone?: string;
  /** Largest stored bytes of the project's content (a backup past it is refused). */
  quotaBytes?: number;
}

/** What a round of garbage collection did (while it runs: so far). */
export interface GcFigures {
  /** ms since the epoch. */
  started: number;
  finished: number | null;
  commitsForgotten: number;
  versionsRemoved: number;
  blobsMarked: number;
  blobsSwept: number;
  /** Stored bytes of the blob rows swept. */
  sweptBytes: number;
  packsEvacuated: number;
  /** Bytes copied out of packs being emptied. */
  bytesCopied: number;
  packsDeleted: number;
  /** Size of the pack files and large objects deleted. */
  bytesDeleted: number;
  straysDeleted: number;
  /** Blobs found damaged while copying them (marked; copied as they are). */
  damaged: number;
  /** Milliseconds spent in each phase (work only, not the pauses between slices). */
  phaseMs: Record<string, number>;
  /** The longest single step (ms): how long a request may have waited on GC. */
  longestStepMs: number;
}

/** A commit and what retention says of it. */
export interface RetentionDecision {
  id: string;
  seq: number;
  time: string;
  keep: boolean;
  /** The rules that keep it ("last", "daily", "within", "tag k=v", "newest"); empty: removed. */
  reasons: string[];
  /** Its backup was incomplete (flagged paths). */
  incomplete: boolean;
}

/** What `keep prune` removed or would remove. */
export interface PruneResult {
  project: string;
  dryRun: boolean;
  commitsKept: number;
  commitsRemoved: number;
  /** Every commit, newest first. */
  decisions: RetentionDecision[];
  /** The GC round run after (with --wait), else null: the server's next round frees the space. */
  gc: GcFigures | null;
}

/** One project in `keep stats` (`GET /v1/stats`). */
export interface ProjectStats {
  name: string;
  commits: number;
  /** Files and raw bytes of the latest commit. */
  latest: { id: string; time: string; files: number; bytes: number } | null;
  /** Stored bytes of every content its commits refer to. */
  storedBytes: number;
  /** Of those, what no other project refers to (what deleting it would free). */
  exclusiveBytes: number;
  policy: Policy | null;
}

/** The store in `keep stats`. */
export interface StoreStats {
  projects: number;
  blobs: number;
  /** Bytes the blobs take in the store. */
  storedBytes: number;
  /** Every kept commit's file bytes, summed: what the store would hold without dedup. */
  logicalBytes: number;
  /** logicalBytes / storedBytes (dedup and compression together); null when empty. */
  dedupRatio: number | null;
  /** Free space where the blobs go; null when the backend cannot say. */
  freeBytes: number | null;
  /** Blobs found unreferenced, waiting out the grace before they go. */
  pendingOrphans: number;
  /** When the last retention and GC round ended (ISO 8601), null: never. */
  lastRun: string | null;
  /** Net bytes the last round freed (deleted minus copied). */
  lastFreedBytes: number | null;
  /** The round running now, if any. */
  running: { phase: string; figures: GcFigures } | null;
}

/** `GET /v1/stats` answers `{stats}`. */
export interface Stats {
  /** Null when asked about one project only. */
  store: StoreStats | null;
  projects: ProjectStats[];
}

// ---------------------------------------------------------------- browsing (tree, diff, find, history)

/**
 * One version of a path as browsing shows it (an Entry in wire form: times
 * are ns as decimal strings).
 */
export interface VersionInfo {
  type: "f" | "d" | "l";
  size: number;
  mode: number;
  /** Modification time, ns since the epoch (decimal string). */
  mtime: string;
  /** SHA-256, hex (files). */
  hash?: string;
  target?: string;
  flag?: string;
}

/** A child in a directory listing; directories carry what lies below them. */
export interface TreeItem extends VersionInfo {
  name: string;
  path: string;
  /** Directories: files below (any depth) and their bytes, when asked for. */
  files?: number;
  bytes?: number;
}

/** `GET /v1/projects/:p/tree`: a page of one directory of a commit. */
export interface TreePage {
  commit: CommitInfo;
  /** The directory ("" for the root). */
  path: string;
  /** The entry at `path` (null for the root); a file's page has no items. */
  entry: VersionInfo | null;
  items: TreeItem[];
  /** Cursor for the next page (the last item's path), null at the end. */
  next: string | null;
}

/** How a path differs between two commits. */
export type DiffKind = "added" | "deleted" | "changed" | "meta";

export interface DiffItem {
  path: string;
  kind: DiffKind;
  before: VersionInfo | null;
  after: VersionInfo | null;
  /** after.size - before.size (a missing side counts 0). */
  delta: number;
}

/** `GET /v1/projects/:p/diff`: a page of the differences from one commit to another. */
export interface DiffPage {
  from: CommitInfo;
  to: CommitInfo;
  path: string;
  items: DiffItem[];
  next: string | null;
}

/** A version of one path and the commits it lives in (live ones only). */
export interface PathVersion extends VersionInfo {
  /** The oldest and newest live commit holding this version. */
  first: { id: string; seq: number; time: string };
  last: { id: string; seq: number; time: string };
  /** How many live commits hold it. */
  commits: number;
}

/** `GET /v1/projects/:p/history`: every version of one path, newest first. */
export interface HistoryResult {
  project: string;
  path: string;
  versions: PathVersion[];
}

/** `GET /v1/projects/:p/find`: paths matching a pattern across all commits. */
export interface FindResult {
  project: string;
  pattern: string;
  paths: { path: string; versions: PathVersion[] }[];
  /** Cursor for the next page, null at the end. */
  next: string | null;
}

/** What every `--json` output carries: `{"keep": JSON_VERSION, …}`. */
export const JSON_VERSION = 1;

/** Counts of a whole diff, by kind, and the size delta. */
export interface DiffTotals {
  added: number;
  changed: number;
  deleted: number;
  meta: number;
  delta: number;
}

/** Adds a page's items to running totals. */
export function addTotals(t: DiffTotals, page: { items: DiffItem[] }): DiffTotals {
  for (const i of page.items) {
    t[i.kind]++;
    t.delta += i.delta;
  }
  return t;
}

/** An empty DiffTotals. */
export function noTotals(): DiffTotals {
  return { added: 0, changed: 0, deleted: 0, meta: 0, delta: 0 };
}
