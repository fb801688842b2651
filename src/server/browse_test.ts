import { assert, assertEquals, assertRejects } from "../../tests/assert.ts";
import { commitHeader, metaRecord, T0, Upload } from "../../tests/craft.ts";
import { scopedStore } from "../../tests/helpers.ts";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { createHash } from "node:crypto";
import type { CommitInfo } from "../format/manifest.ts";
import { KeepError } from "../errors.ts";
import { comparePaths } from "../format/paths.ts";
import { diffPage, findPaths, pathHistory, treePage } from "./browse.ts";
import { applyPolicy, Collector } from "./gc.ts";
import { Ingest } from "./ingest.ts";
import { openLocalStorage, type Storage } from "./storage/open.ts";

async function commit(storage: Storage, project: string, u: Upload): Promise<CommitInfo> {
  const ing = await Ingest.start(storage, project);
  const body = u.end().bytes();
  for (let i = 0; i < body.length; i += 65000) {
    ing.push(body.subarray(i, Math.min(body.length, i + 65000)));
    if (ing.wantsFlush) await ing.flush();
  }
  return (await ing.finish()).commit;
}

const sha = (s: string) => createHash("sha256").update(s).digest("hex");

/**
 * #1: a/, a/x (3 bytes), a-b, b/, b/c/, b/c/d (5 bytes)
 * #2: a/x changed (4 bytes), a-b mode only, b/c/d deleted, n added
 * #3: n deleted again
 */
async function threeCommits(s: Storage): Promise<CommitInfo[]> {
  const c1 = await commit(
    s,
    "p",
    new Upload().commit(commitHeader(null)).dir("a").file("a-b", "ab").file("a/x", "one")
      .dir("b").dir("b/c").file("b/c/d", "fives").changes(),
  );
  const c2 = await commit(
    s,
    "p",
    new Upload().commit(commitHeader(c1.id)).file("a/x", "four").file("n", "new").changes([
      { op: "del", p: "b/c/d" },
      metaRecord({ p: "a-b", s: 2, m: 0o600, h: sha("ab") }),
    ]),
  );
  const c3 = await commit(
    s,
    "p",
    new Upload().commit(commitHeader(c2.id)).changes([{ op: "del", p: "n" }]),
  );
  return [c1, c2, c3];
}

const store = () => scopedStore("keep-browse-");

Deno.test("treePage lists a directory's children of any commit, with sizes below, in pages", async () => {
  await using s = await store();
  const [c1] = await threeCommits(s.storage);
  const root = await treePage(s.storage.index, "p", "latest", "");
  assertEquals(root.items.map((i) => i.name), ["a", "a-b", "b"]);
  assertEquals(root.items.map((i) => [i.files, i.bytes]), [[1, 4], [undefined, undefined], [0, 0]]);
  assertEquals(root.items[1].mode, 0o600);
  const old = await treePage(s.storage.index, "p", c1.id, "");
  assertEquals(old.items.map((i) => `${i.name}:${i.bytes ?? i.size}`), ["a:3", "a-b:2", "b:5"]);
  const bc = await treePage(s.storage.index, "p", `#${c1.seq}`, "b/c");
  assertEquals(bc.entry?.type, "d");
  assertEquals(bc.items.map((i) => i.path), ["b/c/d"]);
  // Pages of one: the cursor walks past a child's subtree, never lists a child twice.
  const seen: string[] = [];
  let after: string | undefined;
  for (;;) {
    const page = await treePage(s.storage.index, "p", c1.id, "", { after, limit: 1 });
    seen.push(...page.items.map((i) => i.name));
    if (!page.next) break;
    after = page.next;
  }
  assertEquals(seen, ["a", "a-b", "b"]);
  const err = await assertRejects(
    () => treePage(s.storage.index, "p", "latest", "b/c/d"),
    KeepError,
  );
  assertEquals((err as KeepError).code, "not_found");
});

Deno.test("diffPage finds added, changed, deleted and metadata-only paths, either way, under a prefix", async () => {
  await using s = await store();
  const [c1, c2, c3] = await threeCommits(s.storage);
  const d = await diffPage(s.storage.index, "p", c1.id, c2.id);
  assertEquals(
    d.items.map((i) => `${i.kind} ${i.path} ${i.delta}`),
    ["meta a-b 0", "changed a/x 1", "deleted b/c/d -5", "added n 3"],
  );
  const back = await diffPage(s.storage.index, "p", c2.id, c1.id);
  assertEquals(
    back.items.map((i) => `${i.kind} ${i.path}`),
    ["meta a-b", "changed a/x", "added b/c/d", "deleted n"],
  );
  // Added then deleted between the two: no difference at all.
  const d13 = await diffPage(s.storage.index, "p", c1.id, c3.id);
  assertEquals(d13.items.map((i) => i.path), ["a-b", "a/x", "b/c/d"]);
  const under = await diffPage(s.storage.index, "p", c1.id, c2.id, { prefix: "a" });
  assertEquals(under.items.map((i) => i.path), ["a/x"], "a-b is a sibling, not below a");
  const p1 = await diffPage(s.storage.index, "p", c1.id, c2.id, { limit: 2 });
  assertEquals(p1.items.map((i) => i.path), ["a-b", "a/x"]);
  const p2 = await diffPage(s.storage.index, "p", c1.id, c2.id, { limit: 2, after: p1.next! });
  assertEquals(p2.items.map((i) => i.path), ["b/c/d", "n"]);
});

Deno.test("history and find show versions of live commits only; GC takes dead paths out of find", async () => {
  await using s = await store();
  const [c1, c2, c3] = await threeCommits(s.storage);
  const h = await pathHistory(s.storage.index, "p", "a/x");
  assertEquals(h.versions.map((v) => [v.size, v.first.seq, v.last.seq, v.commits]), [
    [4, c2.seq, c3.seq, 2],
    [3, c1.seq, c1.seq, 1],
  ]);
  assertEquals(h.versions[1].hash, sha("one"));
  assertEquals(h.versions[0].mtime, String(T0));
  const f = await findPaths(s.storage.index, "p", "n");
  assertEquals(f.paths.map((p) => [p.path, p.versions[0].first.seq]), [["n", c2.seq]]);
  assertEquals((await findPaths(s.storage.index, "p", "*c*")).paths.map((p) => p.path), [
    "b/c",
    "b/c/d",
  ]);
  assertEquals((await findPaths(s.storage.index, "p", "b/*")).paths.map((p) => p.path), [
    "b/c",
    "b/c/d",
  ]);
  // Forget #1 and #2: n and b/c/d were only there.
  assertEquals((await applyPolicy(s.storage, "p", { last: 1 })).forgotten, 2);
  assertEquals((await findPaths(s.storage.index, "p", "n")).paths, []);
  assertEquals(
    (await pathHistory(s.storage.index, "p", "a/x")).versions.map((v) => v.first.seq),
    [c3.seq],
  );
  const err = await assertRejects(() => diffPage(s.storage.index, "p", c1.id, c3.id), KeepError);
  assertEquals((err as KeepError).code, "not_found");
  const gc = new Collector(s.storage, { graceMs: 0 });
  gc.markDirty("p");
  await gc.start();
  await gc.close();
  const db = new DatabaseSync(join(s.dir, "index.db"), { readOnly: true });
  const paths = (db.prepare("SELECT path FROM paths ORDER BY path").all() as { path: string }[])
    .map((r) => r.path);
  db.close();
  assertEquals(paths, ["a", "a-b", "a/x", "b", "b/c"]);
});

Deno.test("an index of schema 3 gets its paths table on opening", async () => {
  await using s = await store();
  await threeCommits(s.storage);
  await s.storage.close();
  const db = new DatabaseSync(join(s.dir, "index.db"));
  db.exec("DROP TABLE paths; PRAGMA user_version=3");
  db.close();
  const again = await openLocalStorage(s.dir, { create: false, owner: true });
  try {
    assertEquals((await findPaths(again.index, "p", "d")).paths.map((p) => p.path), ["b/c/d"]);
    assert((await treePage(again.index, "p", "latest", "")).items.length === 3);
  } finally {
    await again.close();
  }
  s.storage = await openLocalStorage(s.dir, { create: false, owner: true });
});

/** A tiny seeded generator (mulberry32): the same seed, the same history. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("diffPage of any two commits, at any page size and prefix, equals the diff of their trees", async () => {
  for (const seed of [1, 2, 3]) {
    await using s = await store();
    const rand = rng(seed);
    // Paths that sort around each other: "d", "d-x", "d/…", "d0", nested dirs.
    const dirs = ["d", "d/e", "d0"];
    const files = [
      "d-x",
      "d/a",
      "d/b",
      "d/e/f",
      "d/e/g",
      "d0/h",
      "d0/i",
      "d1",
      "z",
    ];
    type State = Map<string, { content: string; mode: number }>;
    const states: State[] = [];
    let state: State = new Map();
    let head: CommitInfo | null = null;
    const commits: CommitInfo[] = [];
    for (let c = 1; c <= 12; c++) {
      const next: State = new Map(state);
      const u = new Upload().commit(commitHeader(head?.id ?? null));
      // Entries go up in path order, as a client sends them.
      const puts: { path: string; content?: string; mode: number }[] = [];
      if (c === 1) { for (const d of dirs) puts.push({ path: d, mode: 0o755 }); }
      const dels: Record<string, unknown>[] = [];
      for (const f of files) {
        const r = rand();
        const had = next.get(f);
        if (r < 0.25) {
          const content = rand() < 0.3 && had ? had.content : `${f} at ${c} ${rand()}`;
          next.set(f, { content, mode: had?.mode ?? 0o644 });
          puts.push({ path: f, content, mode: had?.mode ?? 0o644 });
        } else if (r < 0.35 && had) {
          next.delete(f);
          dels.push({ op: "del", p: f });
        } else if (r < 0.42 && had) {
          const mode = had.mode === 0o644 ? 0o755 : 0o644;
          next.set(f, { content: had.content, mode });
          dels.push(metaRecord({ p: f, s: had.content.length, m: mode, h: sha(had.content) }));
        }
      }
      puts.sort((x, y) => comparePaths(x.path, y.path));
      for (const e of puts) {
        if (e.content === undefined) u.dir(e.path, { mode: e.mode });
        else u.file(e.path, e.content, { mode: e.mode });
      }
      head = await commit(s.storage, "p", u.changes(dels));
      commits.push(head);
      states.push(next);
      state = next;
    }
    const expected = (a: number, b: number, prefix: string) => {
      const out: string[] = [];
      const paths = [...new Set([...states[a].keys(), ...states[b].keys()])].sort(comparePaths);
      for (const p of paths) {
        if (prefix && p !== prefix && !p.startsWith(prefix + "/")) continue;
        const x = states[a].get(p);
        const y = states[b].get(p);
        const kind = !x
          ? "added"
          : !y
          ? "deleted"
          : x.content !== y.content
          ? "changed"
          : x.mode !== y.mode
          ? "meta"
          : null;
        if (kind) out.push(`${p}:${kind}`);
      }
      return out;
    };
    for (let a = 0; a < commits.length; a++) {
      for (let b = 0; b < commits.length; b++) {
        for (const limit of [1, 2, 3, 1000]) {
          for (const prefix of ["", "d", "d0"]) {
            const got: string[] = [];
            let after: string | undefined;
            for (let pages = 0;; pages++) {
              assert(pages < 100, "the pages never end");
              const page = await diffPage(s.storage.index, "p", commits[a].id, commits[b].id, {
                limit,
                after,
                prefix,
              });
              assert(page.items.length <= limit);
              got.push(...page.items.map((i) => `${i.path}:${i.kind}`));
              if (!page.next) break;
              after = page.next;
            }
            assertEquals(
              got,
              expected(a, b, prefix),
              `seed ${seed}: #${a + 1} -> #${b + 1}, limit ${limit}, prefix '${prefix}'`,
            );
          }
        }
      }
    }
  }
});
