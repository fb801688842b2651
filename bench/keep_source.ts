/**
 * Freezes the Keep sources for one benchmark run. The repository is a
 * working tree that others edit while a run of several minutes goes on; a
 * server started from one version and a client from the next disagree on
 * the wire (seen: "gzip member … lacks Keep framing"), and a table mixing
 * versions means nothing. So the run uses a copy taken at its start.
 *
 * @module
 */

import { join } from "node:path";
import { run } from "./measure.ts";

/** The frozen copy: its launcher and what it was copied from. */
export interface KeepSnapshot {
  /** `scripts/keep` inside the copy: same launcher, flags and Deno as the repository's. */
  bin: string;
  /** e.g. "ffa7d83 + uncommitted changes in 4 files" or "ffa7d83 (clean)". */
  describe: string;
}

async function git(root: string, args: string[]): Promise<string | null> {
  try {
    return (await run("git", ["-C", root, ...args])).trim();
  } catch {
    return null;
  }
}

/**
 * Copies src/, scripts/, deno.json and deno.lock of `root` into `dest`, and
 * links dest/.deno to root/.deno so scripts/deno finds the Deno it already
 * installed there (no second npm install).
 *
 * @example
 * ```ts
 * const snap = await snapshotKeep("/work/main", "/tmp/keep-bench-x/keep-src");
 * await new Deno.Command(snap.bin, { args: ["--version"] }).output();
 * ```
 */
export async function snapshotKeep(root: string, dest: string): Promise<KeepSnapshot> {
  await Deno.mkdir(dest, { recursive: true });
  const parts = ["src", "scripts", "deno.json", "deno.lock"].filter((p) => {
    try {
      Deno.statSync(join(root, p));
      return true;
    } catch {
      return false;
    }
  });
  await run("cp", ["-a", ...parts.map((p) => join(root, p)), dest]);
  try {
    Deno.statSync(join(root, ".deno"));
    await Deno.symlink(join(root, ".deno"), join(dest, ".deno"));
  } catch { /* no local Deno: scripts/deno uses the one on PATH */ }
  const head = await git(root, ["rev-parse", "--short", "HEAD"]);
  const dirty = await git(root, ["status", "--porcelain", "--", ...parts]);
  const changed = dirty ? dirty.split("\n").filter(Boolean).length : 0;
  return {
    bin: join(dest, "scripts/keep"),
    describe: head === null
      ? "unknown (not a git checkout)"
      : changed
      ? `${head} + uncommitted changes in ${changed} files (${parts.join(", ")})`
      : `${head} (clean)`,
  };
}
