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
  commits: number;
  head: CommitInfo | null;
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
