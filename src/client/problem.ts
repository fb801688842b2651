/**
 * What the client could not do as asked, for one path: the one shape every
 * step reports (scan, settle, upload, backup, restore), and what each kind
 * means for the backup's outcome.
 *
 * @module
 */

/**
 * - `unreadable`: could not be read (permission, I/O, a name that is not
 *   UTF-8): its last good version is kept;
 * - `unsettled`: kept changing while the backup waited or read it: its last
 *   good version is kept;
 * - `withdrawn`: a large file that changed while it was sent: the server
 *   drops what it received, the last good version is kept;
 * - `skipped`: left out by design (FIFOs, sockets, devices);
 * - `rules`: an ignore file that cannot be used (not a regular file, over
 *   1 MiB, unreadable, not UTF-8): its rules are not applied (the file
 *   itself is backed up like any other);
 * - `adjusted`: backed up with a metadata change (an mtime Keep cannot hold);
 * - `damaged`: (restore) content that failed its hash check, not written.
 */
export type ProblemKind =
  | "unreadable"
  | "unsettled"
  | "withdrawn"
  | "skipped"
  | "rules"
  | "adjusted"
  | "damaged";

/** A path that was not handled as asked, and why. */
export interface Problem {
  path: string;
  reason: string;
  kind: ProblemKind;
}

/** True when the problem leaves a backup incomplete (exit 3): a path was not backed up as it is. */
export function isIncomplete(p: Problem): boolean {
  return p.kind === "unreadable" || p.kind === "unsettled" || p.kind === "withdrawn";
}

/** A file-system error as the short reason shown beside the path. */
export function reasonOf(err: unknown): string {
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (err instanceof Deno.errors.NotFound) return "vanished during the backup";
  return err instanceof Error ? err.message.split("\n")[0] : String(err);
}
