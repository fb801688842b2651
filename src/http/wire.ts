/**
 * Wire types of the HTTP API (v1) and their checks. Manifest entries,
 * commit records and the upload archive are engine formats (manifest.ts);
 * this file holds what only HTTP carries.
 *
 * @module
 */

import { KeepError } from "../engine/errors.ts";
import type { CommitInfo } from "../engine/manifest.ts";
import type { CommitNote, ProjectInfo } from "../engine/index_db.ts";
import type { VerifyReport } from "../engine/verify.ts";

/** Version of this program and of the API it speaks. */
export const VERSION = "0.1.0";
export const API = "/v1";

/** Every error response: `{error: {code, message}}`. */
export interface ErrorBody {
  error: { code: string; message: string };
}

export interface HeadBody {
  commit: CommitInfo | null;
}
export interface CommitBody {
  commit: CommitInfo;
  notes?: CommitNote[];
}
export interface CommitsBody {
  commits: CommitInfo[];
}
export interface ProjectsBody {
  projects: ProjectInfo[];
}
export interface VerifyBody {
  report: VerifyReport;
}

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

/** Reads an error body into a KeepError (for the client). */
export function errorFromBody(status: number, body: unknown): KeepError {
  const e = (body as ErrorBody | null)?.error;
  const codes = [
    "usage",
    "invalid",
    "not_found",
    "conflict",
    "unauthorized",
    "forbidden",
    "too_large",
    "timeout",
    "integrity",
    "unavailable",
    "incomplete",
    "io",
    "internal",
  ];
  if (e && typeof e.message === "string" && codes.includes(e.code)) {
    return new KeepError(e.code as KeepError["code"], e.message);
  }
  // Deno's HTTP layer answers some requests itself, with no body: request
  // headers over 64 KiB get an empty 400 before Keep sees them.
  return new KeepError(
    status >= 500 ? "unavailable" : "invalid",
    status === 400 && body === null
      ? "Cannot use server answer: HTTP 400 with no error body (refused before Keep saw the request; headers over 64 KiB are)"
      : `Cannot use server answer: HTTP ${status}`,
  );
}
