import { assert, assertEquals, assertThrows } from "../../tests/assert.ts";
import { KeepError } from "../errors.ts";
import type { CommitInfo } from "../format/manifest.ts";
import { bucketKey, checkPolicy, parsePolicy, planRetention } from "./retention.ts";

let nextSeq = 0;
function commit(
  iso: string,
  o: { flagged?: number; tags?: Record<string, string> } = {},
): CommitInfo {
  const seq = ++nextSeq;
  return {
    id: `c${seq}`,
    project: "p",
    seq,
    parent: null,
    time: new Date(iso).toISOString(),
    message: "",
    tags: o.tags ?? {},
    host: "h",
    source: "/",
    scanTime: "0",
    granularity: "1",
    counts: {
      files: 1,
      dirs: 0,
      symlinks: 0,
      bytes: 0,
      added: 0,
      changed: 0,
      deleted: 0,
      metadata: 0,
      unchanged: 0,
      flagged: o.flagged ?? 0,
    },
    stats: {} as CommitInfo["stats"],
  };
}

function kept(commits: CommitInfo[], policy: Parameters<typeof planRetention>[1]): string[] {
  return planRetention(commits, policy).filter((d) => d.keep).map((d) => d.commit.id);
}

Deno.test("ISO weeks: the year boundary belongs to the week's Thursday", () => {
  // 2026-12-31 is a Thursday: week 53 of 2026; 2027-01-01 (Friday) too.
  assertEquals(bucketKey("weekly", Date.parse("2026-12-31T12:00:00Z")), "2026-W53");
  assertEquals(bucketKey("weekly", Date.parse("2027-01-01T12:00:00Z")), "2026-W53");
  assertEquals(bucketKey("weekly", Date.parse("2027-01-03T23:59:59Z")), "2026-W53");
  assertEquals(bucketKey("weekly", Date.parse("2027-01-04T00:00:00Z")), "2027-W1");
  // 2024-12-30 (Monday) is week 1 of 2025.
  assertEquals(bucketKey("weekly", Date.parse("2024-12-30T00:00:00Z")), "2025-W1");
  assertEquals(bucketKey("weekly", Date.parse("2024-12-29T23:59:59Z")), "2024-W52");
});

Deno.test("ISO weeks agree with a day-by-day count over ten years", () => {
  // Every Monday starts a new week, and only Mondays do.
  let prev = bucketKey("weekly", Date.parse("2020-01-01T12:00:00Z"));
  for (
    let t = Date.parse("2020-01-02T12:00:00Z");
    t < Date.parse("2030-01-01T00:00:00Z");
    t += 86400_000
  ) {
    const key = bucketKey("weekly", t);
    const monday = new Date(t).getUTCDay() === 1;
    assertEquals(key !== prev, monday, `week change on ${new Date(t).toISOString()}`);
    prev = key;
  }
});

Deno.test("buckets follow the policy's time zone, across a DST change", () => {
  // 23:30 UTC on 2026-03-28 is 00:30 on the 29th in Berlin (CET, +1).
  const t = Date.parse("2026-03-28T23:30:00Z");
  assertEquals(bucketKey("daily", t), "2026-3-28");
  assertEquals(bucketKey("daily", t, "Europe/Berlin"), "2026-3-29");
  // Berlin springs forward at 01:00 UTC on the 29th: 00:59 and 01:01 UTC are local 01:59 and 03:01.
  assertEquals(
    bucketKey("hourly", Date.parse("2026-03-29T00:59:00Z"), "Europe/Berlin"),
    "2026-3-29 1",
  );
  assertEquals(
    bucketKey("hourly", Date.parse("2026-03-29T01:01:00Z"), "Europe/Berlin"),
    "2026-3-29 3",
  );
  const commits = [commit("2026-03-28T22:30:00Z"), commit("2026-03-28T23:30:00Z")];
  assertEquals(kept(commits, { daily: 2 }).length, 1, "UTC: one day");
  assertEquals(
    kept(commits, { daily: 2, timeZone: "Europe/Berlin" }).length,
    2,
    "Berlin: two days",
  );
});

Deno.test("keep-last around its thresholds; the newest always stays", () => {
  const commits = Array.from({ length: 5 }, (_, i) => commit(`2026-01-0${i + 1}T00:00:00Z`));
  const ids = commits.map((c) => c.id).reverse(); // newest first
  assertEquals(kept(commits, { last: 1 }), ids.slice(0, 1));
  assertEquals(kept(commits, { last: 4 }), ids.slice(0, 4));
  assertEquals(kept(commits, { last: 5 }), ids);
  assertEquals(kept(commits, { last: 6 }), ids);
  // A rule that keeps nothing by itself: the newest stays.
  assertEquals(kept(commits, { tags: ["release=yes"] }), ids.slice(0, 1));
  assertEquals(planRetention(commits, { last: 2 })[0].reasons, ["newest", "last"]);
  // No rules at all: everything stays.
  assertEquals(kept(commits, {}), ids);
  assertEquals(planRetention([], { last: 1 }), []);
});

Deno.test("daily N takes the newest commit of each of the N newest days with commits", () => {
  const c = [
    commit("2026-01-01T08:00:00Z"),
    commit("2026-01-01T20:00:00Z"), // newest of Jan 1
    commit("2026-01-03T09:00:00Z"), // Jan 2 has none
    commit("2026-01-03T10:00:00Z"),
    commit("2026-01-04T00:00:00Z"),
  ];
  assertEquals(kept(c, { daily: 2 }), [c[4].id, c[3].id]);
  assertEquals(kept(c, { daily: 3 }), [c[4].id, c[3].id, c[1].id]);
  assertEquals(kept(c, { daily: 10 }), [c[4].id, c[3].id, c[1].id]);
  assertEquals(kept(c, { monthly: 1, yearly: 1 }), [c[4].id]);
});

Deno.test("an incomplete commit is kept for a bucket only when it has no complete one", () => {
  const c = [
    commit("2026-02-01T08:00:00Z"),
    commit("2026-02-01T09:00:00Z", { flagged: 3 }), // newest of the day, incomplete
    commit("2026-02-02T09:00:00Z", { flagged: 1 }), // the only one of its day
    commit("2026-02-03T09:00:00Z"),
  ];
  const plan = planRetention(c, { daily: 3 });
  const keep = plan.filter((d) => d.keep).map((d) => d.commit.id);
  assertEquals(keep, [c[3].id, c[2].id, c[0].id]);
  assert(plan.find((d) => d.commit.id === c[2].id)!.incomplete);
  assert(!plan.find((d) => d.commit.id === c[1].id)!.keep);
});

Deno.test("within and tags: a union with the other rules", () => {
  const c = [
    commit("2026-03-01T00:00:00Z", { tags: { release: "1.0" } }),
    commit("2026-03-05T00:00:00Z"),
    commit("2026-03-09T00:00:00Z"),
    commit("2026-03-10T00:00:00Z"),
  ];
  // within 1 day of the newest (Mar 10): Mar 9 and 10; plus the release.
  const plan = planRetention(c, { withinMs: 86400_000, tags: ["release=1.0"] });
  assertEquals(plan.filter((d) => d.keep).map((d) => d.commit.id), [c[3].id, c[2].id, c[0].id]);
  assertEquals(plan.find((d) => d.commit.id === c[0].id)!.reasons, ["tag release=1.0"]);
  // A tag's value must match exactly.
  assertEquals(kept(c, { tags: ["release=1"] }), [c[3].id]);
});

Deno.test("a generated history: every rule keeps what a direct count says", () => {
  // Commits every 37 minutes for 60 days: check hourly/daily against counting by hand.
  const start = Date.parse("2026-05-01T00:00:00Z");
  const c: CommitInfo[] = [];
  for (let t = start; t < start + 60 * 86400_000; t += 37 * 60_000) {
    c.push(commit(new Date(t).toISOString()));
  }
  for (const n of [0, 1, 7, 24, 59, 60, 61, 1000]) {
    const days = new Map<string, CommitInfo>();
    for (const x of [...c].reverse()) {
      const key = x.time.slice(0, 10);
      if (!days.has(key)) days.set(key, x);
    }
    const expected = new Set([...days.values()].slice(0, n).map((x) => x.id));
    expected.add(c[c.length - 1].id);
    assertEquals(new Set(kept(c, { daily: n })), expected, `daily ${n}`);
  }
});

Deno.test("policies from request bodies are checked", () => {
  assertEquals(parsePolicy({ last: 3, daily: 7, tags: ["a=b"], timeZone: "UTC" }), {
    last: 3,
    daily: 7,
    tags: ["a=b"],
    timeZone: "UTC",
  });
  for (
    const bad of [
      null,
      [],
      "x",
      { last: "3" },
      { last: -1 },
      { last: 1.5 },
      { weekly: 2e6 },
      { withinMs: -1 },
      { tags: "a=b" },
      { tags: ["nokey"] },
      { timeZone: "Mars/Olympus" },
      { quotaBytes: -5 },
      { keepLast: 3 },
    ]
  ) {
    let threw = false;
    try {
      parsePolicy(bad);
    } catch (err) {
      threw = err instanceof KeepError && err.code === "invalid";
    }
    assert(threw, `accepted ${JSON.stringify(bad)}`);
  }
  assertThrows(() => checkPolicy({ last: -2 }), KeepError);
});
