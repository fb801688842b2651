import { assert, assertEquals, assertRejects } from "../../tests/assert.ts";
import { commitHeader, metaRecord, T0, Upload } from "../../tests/craft.ts";
import { scopedStore } from "../../tests/helpers.ts";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { createHash } from "node:crypto";
import type { CommitInfo } from "../format/manifest.ts";
import { KeepError } from "../errors.ts";
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
