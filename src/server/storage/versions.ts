/**
 * What the SQL indexes share when browsing: a version as VersionInfo, how
 * two versions of a path differ, the merge of a diff's three page-bounded
 * range scans (see SqliteIndex.diffPage) into one page, and a path's
 * version rows as PathVersions of the live commits. SQLite
 * (sqlite_index.ts) and PostgreSQL (pg_index.ts) read their rows each in
 * their own shape; both answer with these, so their answers are the same.
 *
 * @module
 */

import type { DiffItem, PathVersion, VersionInfo } from "../../format/api.ts";
import type { Entry } from "../../format/manifest.ts";
import { comparePaths } from "../../format/paths.ts";

/** An entry as browsing shows it. */
export function versionOf(e: Entry): VersionInfo {
  const v: VersionInfo = { type: e.type, size: e.size, mode: e.mode, mtime: String(e.mtime) };
  if (e.hash !== undefined) v.hash = e.hash;
  if (e.target !== undefined) v.target = e.target;
  if (e.flag !== undefined) v.flag = e.flag;
  return v;
}

/**
 * How a path differs from `a` to `b` (null: not at all, e.g. only its ctime
 * or flag moved): content (type, size, hash, target) or metadata (mode, mtime).
 */
export function diffItem(
  path: string,
  a: VersionInfo | null,
  b: VersionInfo | null,
): DiffItem | null {
  const delta = (b?.size ?? 0) - (a?.size ?? 0);
  if (!a) return { path, kind: "added", before: null, after: b, delta };
  if (!b) return { path, kind: "deleted", before: a, after: null, delta };
  if (a.type !== b.type || a.size !== b.size || a.hash !== b.hash || a.target !== b.target) {
    return { path, kind: "changed", before: a, after: b, delta };
  }
  if (a.mode !== b.mode || (a.type !== "d" && a.mtime !== b.mtime)) {
    return { path, kind: "meta", before: a, after: b, delta };
  }
  return null;
}

/** A version row of a diff's scans: its path and the version. */
export interface PathRow {
  path: string;
  version: VersionInfo;
}

/** Two lists of rows sorted by path, with no path in both, as one. */
function mergeSorted(a: PathRow[], b: PathRow[]): PathRow[] {
  if (a.length === 0) return b;
  if (b.length === 0) return a;
  const out: PathRow[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j === b.length || (i < a.length && comparePaths(a[i].path, b[j].path) < 0)) {
      out.push(a[i++]);
    } else out.push(b[j++]);
  }
  return out;
}

/**
 * One page of a diff from its three scans, each sorted by path and cut at
 * `limit` rows: `older` the rows valid at the lower commit only, `newer`
 * (history, current) those valid at the higher only. Rows up to the first
 * path a full scan stopped at are complete; the page ends there (`next`).
 * `fromIsLo`: the diff runs from the lower commit to the higher.
 */
export function diffOfScans(
  older: PathRow[],
  newerHistory: PathRow[],
  newerCurrent: PathRow[],
  limit: number,
  fromIsLo: boolean,
): { items: DiffItem[]; next: string | null } {
  let bound: string | null = null;
  for (const rows of [older, newerHistory, newerCurrent]) {
    if (rows.length < limit) continue;
    const last = rows[rows.length - 1].path;
    if (bound === null || comparePaths(last, bound) < 0) bound = last;
  }
  return pageOf(older, newerHistory, newerCurrent, bound, limit, fromIsLo);
}

/** A history row of a diff's one history scan: valid at the lower commit (`old`) or the higher. */
export interface HistoryRow extends PathRow {
  old: boolean;
}

/**
 * One page of a diff from one scan of history (the rows valid at exactly
 * one of the two commits, sorted by path then first, cut at `limit` + 1
 * rows) and one of current (cut at `limit`). A path has at most two
 * history rows here (one valid at each commit), so a full history scan
 * drops its last path, which may have lost its second row to the cut,
 * unless that path is all the scan holds (then it has both).
 */
export function diffOfHistoryScan(
  history: HistoryRow[],
  current: PathRow[],
  limit: number,
  fromIsLo: boolean,
): { items: DiffItem[]; next: string | null } {
  let bound: string | null = null;
  if (history.length > limit) {
    const last = history[history.length - 1].path;
    let keep = history.length;
    while (keep > 0 && history[keep - 1].path === last) keep--;
    if (keep > 0) history = history.slice(0, keep);
    bound = history[history.length - 1].path;
  }
  if (current.length >= limit) {
    const last = current[current.length - 1].path;
    if (bound === null || comparePaths(last, bound) < 0) bound = last;
  }
  return pageOf(
    history.filter((r) => r.old),
    history.filter((r) => !r.old),
    current,
    bound,
    limit,
    fromIsLo,
  );
}

/** The page of the three sorted scans' rows up to `bound` (all of them when null). */
function pageOf(
  older: PathRow[],
  newerHistory: PathRow[],
  newerCurrent: PathRow[],
  bound: string | null,
  limit: number,
  fromIsLo: boolean,
): { items: DiffItem[]; next: string | null } {
  // Rows are sorted: each scan is cut after the bound by a binary search.
  const upTo = (rows: PathRow[]) => {
    if (bound === null) return rows;
    let lo = 0;
    let hi = rows.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (comparePaths(rows[mid].path, bound) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return lo === rows.length ? rows : rows.slice(0, lo);
  };
  const low = upTo(older);
  // History and current hold disjoint paths at the higher commit: one sorted list.
  const high = mergeSorted(upTo(newerHistory), upTo(newerCurrent));
  const items: DiffItem[] = [];
  const add = (path: string, l: VersionInfo | null, h: VersionInfo | null) => {
    const item = fromIsLo ? diffItem(path, l, h) : diffItem(path, h, l);
    if (item) items.push(item);
  };
  let i = 0;
  let j = 0;
  while (i < low.length || j < high.length) {
    const c = i === low.length
      ? 1
      : j === high.length
      ? -1
      : comparePaths(low[i].path, high[j].path);
    if (c < 0) add(low[i].path, low[i++].version, null);
    else if (c > 0) add(high[j].path, null, high[j++].version);
    else add(low[i].path, low[i++].version, high[j++].version);
  }
  // Three scans may give up to three times `limit`: the page is cut to it.
  if (items.length > limit) {
    items.length = limit;
    return { items, next: items[items.length - 1].path };
  }
  return { items, next: bound };
}

/** The index of the first element of sorted `xs` that is >= `x`. */
function lowerBound(xs: number[], x: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (xs[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** A live commit as a PathVersion names it. */
export interface LiveCommit {
  seq: number;
  id: string;
  /** ms since the epoch. */
  time: number;
}

/**
 * A path's versions (each valid for [first, last) of commit numbers;
 * `last` Infinity for the current one), newest first, as the live commits
 * `live` (in seq order) hold them; a version only forgotten commits held is
 * left out.
 */
export function liveVersions(
  live: LiveCommit[],
  rows: { first: number; last: number; version: VersionInfo }[],
): PathVersion[] {
  const seqs = live.map((c) => c.seq);
  const ref = (i: number) => ({
    id: live[i].id,
    seq: seqs[i],
    time: new Date(live[i].time).toISOString(),
  });
  const out: PathVersion[] = [];
  for (const r of rows) {
    const lo = lowerBound(seqs, r.first);
    const hi = lowerBound(seqs, r.last); // first live seq >= last
    if (hi <= lo) continue;
    out.push({ ...r.version, first: ref(lo), last: ref(hi - 1), commits: hi - lo });
  }
  return out;
}
