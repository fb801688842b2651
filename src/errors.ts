/**
 * The one error type of Keep. Every failure the engine, the server or the
 * client can report carries a string `code`; the CLI maps codes to exit codes
 * with the table here (the HTTP layer maps them to statuses: http/errors.ts).
 *
 * @module
 */

/** What went wrong, as stable machine-readable words (listed once, here). */
export const ERROR_CODES = [
  "usage", // bad flags or arguments
  "invalid", // malformed input: archive, manifest, path, JSON body
  "not_found", // project, commit, blob or path does not exist
  "conflict", // parent commit is no longer the head
  "unauthorized", // no or unknown token
  "forbidden", // token lacks the role or project
  "too_large", // body, header or entry over a limit
  "timeout", // peer too slow
  "integrity", // hash mismatch, corrupt blob, failed verify
  "unavailable", // server unreachable, disk full, shutting down
  "incomplete", // finished, but some files could not be backed up
  "quota", // the project would pass its storage quota
  "io", // a local file system error (permission, read-only, I/O)
  "internal", // a bug
] as const;

/** One of ERROR_CODES. */
export type ErrorCode = typeof ERROR_CODES[number];

/** True when `code` is one of ERROR_CODES (for codes read off the wire). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return (ERROR_CODES as readonly unknown[]).includes(code);
}

/**
 * An error with a `code`, safe to show to users: the message is one line.
 *
 * @example
 * ```ts
 * throw new KeepError("not_found", "Cannot find commit: abc123 is not in project app");
 * ```
 */
export class KeepError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KeepError";
    this.code = code;
  }
}

/** Process exit codes; `--help` prints this table. */
export const EXIT_CODES: { code: number; meaning: string; errors: ErrorCode[] }[] = [
  { code: 0, meaning: "success", errors: [] },
  {
    code: 1,
    meaning: "failed: nothing was recorded (see the message)",
    errors: ["internal", "invalid", "not_found", "conflict", "too_large", "timeout", "io"],
  },
  { code: 2, meaning: "usage: bad flags or arguments", errors: ["usage"] },
  {
    code: 3,
    meaning: "incomplete: a commit was recorded, but some files were not backed up (listed above)",
    errors: ["incomplete"],
  },
  {
    code: 4,
    meaning: "integrity: a hash did not match or the store is damaged",
    errors: ["integrity"],
  },
  {
    code: 5,
    meaning: "unavailable: cannot reach the server, or it cannot store",
    errors: ["unavailable"],
  },
  {
    code: 6,
    meaning: "denied: missing, unknown or insufficient token",
    errors: ["unauthorized", "forbidden"],
  },
  {
    code: 7,
    meaning: "quota: the backup would take the project past its quota; nothing was stored",
    errors: ["quota"],
  },
];

/** The exit code for an error code. */
export function exitCodeFor(code: ErrorCode): number {
  for (const row of EXIT_CODES) if (row.errors.includes(code)) return row.code;
  return 1;
}

/** Turns anything thrown into a KeepError, keeping known system errors readable. */
export function toKeepError(err: unknown, action = "Cannot complete"): KeepError {
  if (err instanceof KeepError) return err;
  if (err instanceof Deno.errors.NotFound) {
    return new KeepError("not_found", `${action}: ${err.message}`);
  }
  if (err instanceof Deno.errors.PermissionDenied || err instanceof Deno.errors.NotADirectory) {
    return new KeepError("io", `${action}: ${err.message}`);
  }
  if (err instanceof Deno.errors.ConnectionRefused || err instanceof Deno.errors.ConnectionReset) {
    return new KeepError("unavailable", `${action}: ${err.message}`);
  }
  const msg = err instanceof Error ? err.message : String(err);
  if (/ENOSPC|No space left|disk is full|EDQUOT|quota exceeded/i.test(msg)) {
    return new KeepError("unavailable", `${action}: disk full (${msg})`);
  }
  return new KeepError("internal", `${action}: ${msg.split("\n")[0]}`, { cause: err });
}
