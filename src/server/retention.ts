/**
 * Retention: which commits of a project a policy keeps, and why. Rules as
 * restic's `forget` has them, combined as a union: a commit stays when any
 * rule keeps it, and the newest commit always stays.
 *
 * - `last N`: the N newest commits;
 * - `hourly/daily/weekly/monthly/yearly N`: the newest commit of each of the
 *   N newest hours, days, ISO weeks, months, years that have commits;
 * - `within D`: every commit made within D before the newest one (so a
 *   project whose builds stopped keeps what it has);
 * - `tags k=v`: every commit with one of those tags (releases).
 *
 * Buckets use the server's commit times, in the policy's time zone (UTC
 * unless set). In a bucket the newest complete commit is taken (a commit
 * whose backup was incomplete has flagged paths); an incomplete one only when
 * the bucket has no complete one.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import type { Policy } from "../format/api.ts";
import type { CommitInfo } from "../format/manifest.ts";

export type { Policy };

/** The bucket rules, in the order they are reported. */
export const BUCKETS = ["hourly", "daily", "weekly", "monthly", "yearly"] as const;
export type Bucket = (typeof BUCKETS)[number];

/** One commit and the verdict on it. */
export interface Decision {
  commit: CommitInfo;
  keep: boolean;
  /** The rules that keep it ("last", "daily", "within", "tag", "newest"); empty: removed. */
  reasons: string[];
  /** The backup was incomplete (flagged paths). */
  incomplete: boolean;
}

/** True when the policy has a rule that can remove a commit (else it keeps everything). */
export function hasRules(p: Policy): boolean {
  return p.last !== undefined || BUCKETS.some((b) => p[b] !== undefined) ||
    p.withinMs !== undefined || (p.tags?.length ?? 0) > 0;
}

/** Throws usage unless `p` is a policy this server can apply. */
export function checkPolicy(p: Policy): Policy {
  const count = (name: string, v: number | undefined) => {
    // 0 would plan every commit but the newest away: leave the rule out instead.
    if (v !== undefined && (!Number.isInteger(v) || v < 1 || v > 1_000_000)) {
      throw new KeepError(
        "usage",
        `Cannot use policy: ${name} must be a whole number 1..1000000 (leave the rule out to not use it)`,
      );
    }
  };
  count("last", p.last);
  for (const b of BUCKETS) count(b, p[b]);
  if (p.withinMs !== undefined && (!Number.isFinite(p.withinMs) || p.withinMs <= 0)) {
    throw new KeepError("usage", "Cannot use policy: within must be a duration over 0");
  }
  for (const t of p.tags ?? []) {
    if (!/^[^=\s]+=.*$/.test(t)) {
      throw new KeepError("usage", `Cannot use policy: tag ${JSON.stringify(t)} is not KEY=VALUE`);
    }
  }
  if (p.timeZone !== undefined) {
    try {
      new Intl.DateTimeFormat("en-US", { timeZone: p.timeZone });
    } catch {
      throw new KeepError("usage", `Cannot use policy: unknown time zone ${p.timeZone}`);
    }
  }
  if (p.quotaBytes !== undefined && (!Number.isFinite(p.quotaBytes) || p.quotaBytes < 0)) {
    throw new KeepError("usage", "Cannot use policy: quota must be a size of 0 or more");
  }
  return p;
}

/** The calendar fields of `ms` in `timeZone`. */
function fields(ms: number, timeZone: string): { y: number; mo: number; d: number; h: number } {
  const parts = formatter(timeZone).formatToParts(new Date(ms));
  const get = (t: string) => Number(parts.find((p) => p.type === t)!.value);
  return { y: get("year"), mo: get("month"), d: get("day"), h: get("hour") % 24 };
}

const formatters = new Map<string, Intl.DateTimeFormat>();
function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      hourCycle: "h23",
    });
    formatters.set(timeZone, f);
  }
  return f;
}

/** The ISO 8601 week (year and number) of a calendar date. */
function isoWeek(y: number, mo: number, d: number): string {
  const date = new Date(Date.UTC(y, mo - 1, d));
  const day = (date.getUTCDay() + 6) % 7; // Monday 0
  date.setUTCDate(date.getUTCDate() - day + 3); // the week's Thursday
  const year = date.getUTCFullYear();
  const first = new Date(Date.UTC(year, 0, 4));
  const week = 1 + Math.round(
    ((date.getTime() - first.getTime()) / 86400_000 - 3 +
      ((first.getUTCDay() + 6) % 7)) / 7,
  );
  return `${year}-W${week}`;
}

/** The key of the bucket a commit made at `ms` falls in. */
export function bucketKey(bucket: Bucket, ms: number, timeZone = "UTC"): string {
  const f = fields(ms, timeZone);
  switch (bucket) {
    case "hourly":
      return `${f.y}-${f.mo}-${f.d} ${f.h}`;
    case "daily":
      return `${f.y}-${f.mo}-${f.d}`;
    case "weekly":
      return isoWeek(f.y, f.mo, f.d);
    case "monthly":
      return `${f.y}-${f.mo}`;
    case "yearly":
      return `${f.y}`;
  }
}

function incompleteOf(c: CommitInfo): boolean {
  return (c.counts.flagged ?? 0) > 0;
}

/**
 * The verdict on every commit (newest first in the result, whatever the
 * order given).
 *
 * @example
 * ```ts
 * const plan = planRetention(commits, { last: 10, daily: 7 });
 * const remove = plan.filter((d) => !d.keep).map((d) => d.commit.seq);
 * ```
 */
export function planRetention(commits: CommitInfo[], policy: Policy): Decision[] {
  const sorted = [...commits].sort((a, b) => b.seq - a.seq);
  const decisions: Decision[] = sorted.map((commit) => ({
    commit,
    keep: false,
    reasons: [],
    incomplete: incompleteOf(commit),
  }));
  if (decisions.length === 0) return decisions;
  const keepFor = (d: Decision, why: string) => {
    d.keep = true;
    if (!d.reasons.includes(why)) d.reasons.push(why);
  };
  if (!hasRules(policy)) {
    for (const d of decisions) keepFor(d, "no rules");
    return decisions;
  }
  keepFor(decisions[0], "newest");
  for (let i = 0; i < Math.min(policy.last ?? 0, decisions.length); i++) {
    keepFor(decisions[i], "last");
  }
  const tz = policy.timeZone ?? "UTC";
  const time = (d: Decision) => Date.parse(d.commit.time);
  for (const bucket of BUCKETS) {
    const n = policy[bucket] ?? 0;
    if (n <= 0) continue;
    // Buckets newest first; in each, the newest complete commit, else the newest.
    const order: string[] = [];
    const best = new Map<string, Decision>();
    for (const d of decisions) {
      const key = bucketKey(bucket, time(d), tz);
      const cur = best.get(key);
      if (!cur) {
        order.push(key);
        best.set(key, d);
      } else if (cur.incomplete && !d.incomplete) best.set(key, d);
    }
    for (const key of order.slice(0, n)) keepFor(best.get(key)!, bucket);
  }
  if (policy.withinMs !== undefined) {
    const from = time(decisions[0]) - policy.withinMs;
    for (const d of decisions) if (time(d) >= from) keepFor(d, "within");
  }
  if (policy.tags?.length) {
    for (const d of decisions) {
      for (const t of policy.tags) {
        const eq = t.indexOf("=");
        if (d.commit.tags[t.slice(0, eq)] === t.slice(eq + 1)) keepFor(d, `tag ${t}`);
      }
    }
  }
  return decisions;
}

/** A policy from a request body (untrusted), checked; throws invalid. */
export function parsePolicy(o: unknown): Policy {
  if (typeof o !== "object" || o === null || Array.isArray(o)) {
    throw new KeepError("invalid", "Cannot read policy: it must be a JSON object");
  }
  const r = o as Record<string, unknown>;
  const out: Policy = {};
  const known = new Set([
    "last",
    ...BUCKETS,
    "withinMs",
    "tags",
    "timeZone",
    "quotaBytes",
  ]);
  for (const k of Object.keys(r)) {
    if (!known.has(k)) throw new KeepError("invalid", `Cannot read policy: unknown field ${k}`);
  }
  const num = (k: "last" | Bucket | "withinMs" | "quotaBytes") => {
    const v = r[k];
    if (v === undefined || v === null) return;
    if (typeof v !== "number") {
      throw new KeepError("invalid", `Cannot read policy: ${k} must be a number`);
    }
    out[k] = v;
  };
  num("last");
  for (const b of BUCKETS) num(b);
  num("withinMs");
  num("quotaBytes");
  if (r.tags !== undefined) {
    if (
      !Array.isArray(r.tags) || r.tags.some((t) => typeof t !== "string") || r.tags.length > 100
    ) {
      throw new KeepError(
        "invalid",
        "Cannot read policy: tags must be a list of KEY=VALUE strings",
      );
    }
    out.tags = r.tags as string[];
  }
  if (r.timeZone !== undefined) {
    if (typeof r.timeZone !== "string") {
      throw new KeepError("invalid", "Cannot read policy: timeZone must be a string");
    }
    out.timeZone = r.timeZone;
  }
  try {
    return checkPolicy(out);
  } catch (err) {
    throw new KeepError("invalid", (err as Error).message);
  }
}
