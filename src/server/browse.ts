/**
 * Browsing a project's commits: a directory of a commit, the differences
 * between two commits, every version of one path, and paths matching a
 * pattern across all commits. What the web UI shows and `keep diff`, `find`
 * and `history` print; the work is the IndexStore's (set-based queries over
 * the version ranges, see DESIGN.md "Browsing"), these functions resolve
 * references, check arguments and bound the pages.
 *
 * Forgotten commits never show: references resolve only to live commits, and
 * a version held only by forgotten ones is left out.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import type { DiffPage, FindResult, HistoryResult, TreePage } from "../format/api.ts";
import { checkPath, normalisePrefix } from "../format/paths.ts";
import type { IndexStore } from "./storage/index_store.ts";

/** Page sizes: default and most a caller may ask for. */
export const PAGE_LIMITS = {
  tree: { def: 200, max: 5000 },
  diff: { def: 1000, max: 10_000 },
  find: { def: 100, max: 1000 },
} as const;

/** A page size from a query parameter (undefined: the default). */
export function pageLimit(kind: keyof typeof PAGE_LIMITS, value: string | undefined): number {
  const { def, max } = PAGE_LIMITS[kind];
  if (value === undefined || value === "") return def;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new KeepError("usage", `Cannot page: limit must be 1–${max}, not ${value}`);
  }
  return n;
}

/** A cursor from a query parameter: a path, or "" for the start. */
function cursor(after: string | undefined): string {
  if (after === undefined || after === "") return "";
  return checkPath(after, "cursor");
}

/**
 * A page of directory `dir` of commit `ref`.
 *
 * @example
 * ```ts
 * const page = await treePage(index, "app", "latest", "src", { limit: 200 });
 * ```
 */
export async function treePage(
  index: IndexStore,
  project: string,
  ref: string,
  dir: string,
  options: { after?: string; limit?: number; sizes?: boolean } = {},
): Promise<TreePage> {
  const commit = await index.resolveCommit(project, ref);
  const path = normalisePrefix(dir);
  const r = await index.listDir(project, commit, path, {
    after: cursor(options.after),
    limit: options.limit ?? PAGE_LIMITS.tree.def,
    sizes: options.sizes ?? true,
  });
  if (r.entry === undefined) {
    throw new KeepError("not_found", `Cannot list ${path}: not in commit ${commit.id}`);
  }
  return { commit, path, entry: r.entry, items: r.items, next: r.next };
}

/** A page of what differs from commit `fromRef` to commit `toRef` (at or below `prefix`). */
export async function diffPage(
  index: IndexStore,
  project: string,
  fromRef: string,
  toRef: string,
  options: { prefix?: string; after?: string; limit?: number } = {},
): Promise<DiffPage> {
  const from = await index.resolveCommit(project, fromRef);
  const to = await index.resolveCommit(project, toRef);
  const path = normalisePrefix(options.prefix ?? "");
  const r = await index.diffPage(project, from, to, {
    prefix: path,
    after: cursor(options.after),
    limit: options.limit ?? PAGE_LIMITS.diff.def,
  });
  return { from, to, path, items: r.items, next: r.next };
}

/** Every version of `path`, newest first (not_found when no live commit ever held it). */
export async function pathHistory(
  index: IndexStore,
  project: string,
  path: string,
): Promise<HistoryResult> {
  await index.resolveCommit(project, "latest");
  const p = normalisePrefix(path);
  if (p === "") throw new KeepError("usage", "Cannot show history: give a path");
  const versions = (await index.pathVersions(project, [p])).get(p) ?? [];
  if (versions.length === 0) {
    throw new KeepError("not_found", `Cannot show history of ${p}: no commit of ${project} has it`);
  }
  return { project, path: p, versions };
}

/** Checks a find pattern: a glob of 1–4096 bytes, no NUL. */
export function checkPattern(pattern: string): string {
  if (pattern === "" || new TextEncoder().encode(pattern).length > 4096 || pattern.includes("\0")) {
    throw new KeepError("usage", "Cannot find: give a pattern of 1–4096 bytes (glob: * ? [...])");
  }
  return pattern;
}

/** A page of paths matching `pattern` in any live commit, each with its versions. */
export async function findPaths(
  index: IndexStore,
  project: string,
  pattern: string,
  options: { after?: string; limit?: number } = {},
): Promise<FindResult> {
  await index.resolveCommit(project, "latest");
  const r = await index.findPaths(project, checkPattern(pattern), {
    after: cursor(options.after),
    limit: options.limit ?? PAGE_LIMITS.find.def,
  });
  const versions = await index.pathVersions(project, r.paths);
  return {
    project,
    pattern,
    paths: r.paths.filter((p) => versions.has(p)).map((p) => ({
      path: p,
      versions: versions.get(p)!,
    })),
    next: r.next,
  };
}
