/**
 * The retention rule flags `keep prune` and `keep policy set` share, and
 * how a policy and a retention plan are printed.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import type { Policy, PruneResult } from "../format/api.ts";
import { formatBytes } from "../format/units.ts";
import { type FlagSpec, type Parsed, parseDuration, parseSize } from "./flags.ts";

export const RULE_FLAGS: FlagSpec = {
  "keep-last": { type: "string", short: "k" },
  "keep-hourly": { type: "string" },
  "keep-daily": { type: "string" },
  "keep-weekly": { type: "string" },
  "keep-monthly": { type: "string" },
  "keep-yearly": { type: "string" },
  "keep-within": { type: "string" },
  "keep-tag": { type: "string", multiple: true },
  "time-zone": { type: "string" },
};

export const RULE_HELP =
  `Rules (a commit stays when any rule keeps it; the newest commit always stays):
  -k, --keep-last N      the N newest commits
      --keep-hourly N    the newest commit of each of the N newest hours with commits
      --keep-daily N     ... days
      --keep-weekly N    ... ISO weeks (Monday to Sunday)
      --keep-monthly N   ... months
      --keep-yearly N    ... years
      --keep-within DUR  every commit less than DUR older than the newest (e.g. 7d, 36h,
                         2w, 6mo, 1y; "m" alone is refused: min or mo)
      --keep-tag K=V     every commit with tag K=V (repeatable; e.g. release=yes)
      --time-zone TZ     the zone hours, days, weeks... are cut in (IANA, default UTC)
In a bucket the newest complete commit is kept; an incomplete one (exit 3:
flagged paths) only when the bucket has no complete one.`;

const BUCKET_FLAGS = ["hourly", "daily", "weekly", "monthly", "yearly"] as const;

function count(p: Parsed, flag: string): number | undefined {
  const v = p.values[flag];
  if (typeof v !== "string") return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n > 1_000_000) {
    throw new KeepError(
      "usage",
      `Cannot parse --${flag} ${JSON.stringify(v)}: give a whole number`,
    );
  }
  return n;
}

/** The rules given as flags (an empty object when none). */
export function policyFromFlags(p: Parsed): Policy {
  const policy: Policy = {};
  const last = count(p, "keep-last");
  if (last !== undefined) {
    if (last < 1) throw new KeepError("usage", "Cannot use --keep-last 0: keep at least 1");
    policy.last = last;
  }
  for (const b of BUCKET_FLAGS) {
    const n = count(p, `keep-${b}`);
    if (n === 0) {
      // 0 would keep only the newest commit: never what someone means.
      throw new KeepError(
        "usage",
        `Cannot use --keep-${b} 0: keep at least 1 (leave the flag out to not use it)`,
      );
    }
    if (n !== undefined) policy[b] = n;
  }
  const within = p.values["keep-within"];
  if (typeof within === "string") {
    policy.withinMs = parseDuration(within, "keep-within", true);
    if (policy.withinMs === 0) {
      throw new KeepError("usage", `Cannot use --keep-within ${within}: give a duration over 0`);
    }
  }
  const tags = p.values["keep-tag"] as string[] | undefined;
  if (tags?.length) {
    for (const t of tags) {
      if (t.indexOf("=") <= 0) {
        throw new KeepError("usage", `Cannot parse --keep-tag ${JSON.stringify(t)}: use KEY=VALUE`);
      }
    }
    policy.tags = tags;
  }
  const tz = p.values["time-zone"];
  if (typeof tz === "string") {
    try {
      new Intl.DateTimeFormat("en-US", { timeZone: tz });
    } catch {
      throw new KeepError("usage", `Cannot use --time-zone ${tz}: not an IANA time zone`);
    }
    policy.timeZone = tz;
  }
  return policy;
}

/** `--quota SIZE` ("off" or 0 removes it). */
export function quotaFromFlags(p: Parsed): number | null | undefined {
  const q = p.values.quota;
  if (typeof q !== "string") return undefined;
  if (q === "off") return null;
  const n = parseSize(q, "quota");
  return n === 0 ? null : n;
}

/** A policy in one line: "last 10, daily 7, within 7d, tag release=yes (UTC); quota 50 GiB". */
export function describePolicy(policy: Policy | null): string {
  if (!policy) return "none (every commit is kept)";
  const parts: string[] = [];
  if (policy.last !== undefined) parts.push(`last ${policy.last}`);
  for (const b of BUCKET_FLAGS) if (policy[b] !== undefined) parts.push(`${b} ${policy[b]}`);
  if (policy.withinMs !== undefined) parts.push(`within ${formatDuration(policy.withinMs)}`);
  for (const t of policy.tags ?? []) parts.push(`tag ${t}`);
  let s = parts.length
    ? `${parts.join(", ")} (${policy.timeZone ?? "UTC"})`
    : "no rules (every commit is kept)";
  if (policy.quotaBytes !== undefined) s += `; quota ${formatBytes(policy.quotaBytes)}`;
  return s;
}

function formatDuration(ms: number): string {
  const units: [string, number][] = [["y", 365 * 86_400_000], ["d", 86_400_000], ["h", 3_600_000], [
    "min",
    60_000,
  ], ["s", 1000]];
  for (const [u, n] of units) if (ms >= n && ms % n === 0) return `${ms / n}${u}`;
  return `${ms}ms`;
}

/** The plan as a table: one line per commit, newest first. */
export function planLines(result: PruneResult): string[] {
  const lines = result.decisions.map((d) => {
    const verdict = d.keep
      ? `keep (${d.reasons.join(", ")})`
      : result.dryRun
      ? "remove"
      : "removed";
    return `  #${String(d.seq).padEnd(6)} ${d.id}  ${d.time.replace("T", " ").slice(0, 19)}  ${
      verdict.padEnd(24)
    }${d.incomplete ? " incomplete" : ""}`.trimEnd();
  });
  return lines;
}
