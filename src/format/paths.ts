/**
 * Relative paths as Keep stores them: `/`-separated, UTF-8, no `.`/`..` or
 * empty components, no NUL, never absolute. Everything that orders paths
 * (scan, manifest, SQLite, tar streams) uses UTF-8 byte order, which is what
 * SQLite's BINARY collation gives; JavaScript's `<` on strings differs from it
 * for characters outside the BMP, hence `comparePaths`.
 *
 * @module
 */

import { KeepError } from "../errors.ts";

/** Longest path accepted, in UTF-8 bytes (Linux PATH_MAX). */
export const MAX_PATH_BYTES = 4096;
/** Longest single name accepted, in UTF-8 bytes (Linux NAME_MAX). */
export const MAX_NAME_BYTES = 255;

function unit(c: number): number {
  // Map UTF-16 code units so that their order is UTF-8 byte order: surrogates
  // (code points above U+FFFF) must sort after U+E000..U+FFFF.
  if (c < 0xd800) return c;
  return c >= 0xe000 ? c - 0x800 : c + 0x2000;
}

/** Compares two paths in UTF-8 byte order. */
export function comparePaths(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return unit(x) - unit(y);
  }
  return a.length - b.length;
}

/** A code unit at or above the surrogates: where UTF-16 order and UTF-8 order part. */
const ASTRAL_OR_HIGH = /[\uD800-\uFFFF]/;

/**
 * Sorts `paths` in place in UTF-8 byte order. When no path has a code unit
 * from U+D800 up, the two orders agree and the engine's own sort is used
 * (measured: 100k names in 1,000 directories, 5 ms against 35 ms through
 * `comparePaths`).
 */
export function sortPaths(paths: string[]): string[] {
  for (const p of paths) if (ASTRAL_OR_HIGH.test(p)) return paths.sort(comparePaths);
  return paths.sort();
}

const encoder = new TextEncoder();

/** An empty, "." or ".." component, or a leading or trailing "/". */
const BAD_COMPONENT = /(?:^|\/)\.{0,2}(?:\/|$)/;

/** Returns why `path` is not a valid stored path, or null when it is. */
export function pathProblem(path: string): string | null {
  if (path.length === 0) return "empty path";
  if (path.includes("\0")) return "path contains NUL";
  if (path.charCodeAt(0) === 47) return "absolute path";
  if (path.length * 3 > MAX_PATH_BYTES && encoder.encode(path).length > MAX_PATH_BYTES) {
    return `path longer than ${MAX_PATH_BYTES} bytes`;
  }
  if (path.length * 3 > MAX_NAME_BYTES || BAD_COMPONENT.test(path)) {
    // Component by component, without splitting (hot path: every manifest entry).
    for (let start = 0; start <= path.length;) {
      let end = path.indexOf("/", start);
      if (end < 0) end = path.length;
      const n = end - start;
      if (n <= 2) {
        const part = path.slice(start, end);
        if (part === "" || part === "." || part === "..") return `path has a "${part}" component`;
      } else if (
        n * 3 > MAX_NAME_BYTES && encoder.encode(path.slice(start, end)).length > MAX_NAME_BYTES
      ) {
        return `name longer than ${MAX_NAME_BYTES} bytes`;
      }
      start = end + 1;
    }
  }
  // Reject lone surrogates: they cannot be encoded as UTF-8.
  if (!path.isWellFormed()) return "path is not valid UTF-8";
  return null;
}

/** Throws `invalid` unless `path` is a valid stored path. */
export function checkPath(path: string, what = "path"): string {
  const problem = pathProblem(path);
  if (problem) {
    throw new KeepError("invalid", `Cannot accept ${what} ${JSON.stringify(path)}: ${problem}`);
  }
  return path;
}

/** The parent of a stored path, "" for top-level names. */
export function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}

/** True when `path` equals `prefix` or lies below it. An empty prefix matches all. */
export function underPrefix(path: string, prefix: string): boolean {
  return prefix === "" || path === prefix || path.startsWith(prefix + "/");
}

/** Normalises a user-given prefix ("./src/", "src//lib") to stored form, "" for all. */
export function normalisePrefix(prefix: string): string {
  const parts = prefix.split("/").filter((p) => p !== "" && p !== ".");
  const out = parts.join("/");
  if (out !== "") checkPath(out, "path prefix");
  return out;
}
