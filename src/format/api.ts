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

/** What `keep prune` removed or would remove. */
export interface PruneResult {
  project: string;
  commitsRemoved: number;
  commitsKept: number;
  versionsRemoved: number;
  blobsRemoved: number;
  bytesFreed: number;
  dryRun: boolean;
}
