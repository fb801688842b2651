import { assert, assertEquals } from "../../tests/assert.ts";
import { commitHeader, noise, Upload } from "../../tests/craft.ts";
import { scopedStore } from "../../tests/helpers.ts";
import { createHash } from "node:crypto";
import type { CommitInfo } from "../format/manifest.ts";
import { decodeMember, MemberSplitter } from "../format/gzip_member.ts";
import { applyPolicy, Collector, roundWanted } from "./gc.ts";
import { Ingest } from "./ingest.ts";
import type { Storage } from "./storage/open.ts";

const store = () => scopedStore("keep-gc-");

/** Pushes all of `body` but the last `hold` bytes (then flushes, unless `flush` is false). */
async function pushed(
  storage: Storage,
  project: string,
  body: Uint8Array,
  hold = 0,
  flush = true,
): Promise<Ingest> {
  const ing = await Ingest.start(storage, project);
  const end = body.length - hold;
  for (let i = 0; i < end; i += 65000) {
    ing.push(body.subarray(i, Math.min(end, i + 65000)));
    if (ing.wantsFlush) await ing.flush();
  }
  if (flush) await ing.flush();
  return ing;
}

async function finish(ing: Ingest, rest: Uint8Array = new Uint8Array()): Promise<CommitInfo> {
  if (rest.length) ing.push(rest);
  return (await ing.finish()).commit;
}

async function commit(storage: Storage, project: string, body: Uint8Array): Promise<CommitInfo> {
  return await finish(await pushed(storage, project, body));
}

function sha256(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

/** The stored bytes of `hash`, decoded (throws when they are not there or not whole). */
async function readBlob(storage: Storage, hash: string): Promise<Uint8Array> {
  const place = await storage.index.blobPlace(hash);
  if (!place) throw new Error(`no row for ${hash}`);
  const split = new MemberSplitter();
  const out: Uint8Array[] = [];
  for await (const p of await storage.blobs.pieces(hash, place)) {
    split.push(p.slice());
    for (let m = split.next(); m; m = split.next()) out.push(decodeMember(m));
  }
  split.end();
  const total = new Uint8Array(out.reduce((n, b) => n + b.length, 0));
  let o = 0;
  for (const b of out) {
    total.set(b, o);
    o += b.length;
  }
  return total;
}

/** Project "old": #1 has x (content `data`), #2 no longer has it. */
async function contentOnlyInHistory(storage: Storage, data: Uint8Array): Promise<void> {
  const c1 = await commit(
    storage,
    "old",
    new Upload().commit(commitHeader(null)).file("x", data).file("y", "y").changes().end().bytes(),
  );
  await commit(
    storage,
    "old",
    new Upload().commit(commitHeader(c1.id)).changes([{ op: "del", p: "x" }]).end().bytes(),
  );
}

Deno.test("GC sweeps content only a forgotten commit used (grace 0, nothing in flight)", async () => {
  await using s = await store();
  const data = noise(5000, 1);
  await contentOnlyInHistory(s.storage, data);
  assertEquals((await applyPolicy(s.storage, "old", { last: 1 })).forgotten, 1);
  const gc = new Collector(s.storage, { graceMs: 0 });
  gc.markDirty("old");
  await gc.start();
  assertEquals(gc.figures!.blobsSwept, 1);
  assertEquals(await s.storage.index.blobPlace(sha256(data)), null);
  await gc.close();
});

Deno.test("an upload that counts on content while GC finds it unreferenced keeps it", async () => {
  await using s = await store();
  const data = noise(5000, 2);
  await contentOnlyInHistory(s.storage, data);
  // Another project's upload sends the same content: the server finds it
  // known and stores nothing, counting on the row.
  const body = new Upload().commit(commitHeader(null)).file("copy", data).changes().end().bytes();
  const ing = await pushed(s.storage, "new", body, 100);
  assertEquals(ing.newBlobs, 0, "counted on the stored blob");
  // Meanwhile the only commit using it is forgotten and GC runs with no grace.
  await applyPolicy(s.storage, "old", { last: 1 });
  const gc = new Collector(s.storage, { graceMs: 0 });
  gc.markDirty("old");
  await gc.start();
  assertEquals(gc.figures!.blobsMarked, 1, "found unreferenced");
  assertEquals(gc.figures!.blobsSwept, 0, "but not swept: an upload began before it was marked");
  const c = await finish(ing, body.subarray(body.length - 100));
  assertEquals(c.seq, 1);
  assertEquals(sha256(await readBlob(s.storage, sha256(data))), sha256(data));
  // Referenced again: later rounds leave it.
  await gc.start();
  assertEquals(gc.figures!.blobsSwept, 0);
  assert(await s.storage.index.blobPlace(sha256(data)) !== null);
  await gc.close();
});

Deno.test("a row marked unreferenced before an upload began is unmarked when the upload counts on it", async () => {
  await using s = await store();
  const data = noise(6000, 3);
  await contentOnlyInHistory(s.storage, data);
  // Forgotten long ago (its versions are past the grace), marked now.
  await s.storage.index.forgetCommits("old", [1], Date.now() - 3 * 3600_000);
  // Round 1 marks it, with a grace that keeps it for now.
  const slow = new Collector(s.storage, { graceMs: 3600_000 });
  slow.markDirty("old");
  await slow.start();
  assertEquals([slow.figures!.blobsMarked, slow.figures!.blobsSwept], [1, 0]);
  await slow.close();
  await new Promise((r) => setTimeout(r, 5)); // the upload begins after the mark
  const body = new Upload().commit(commitHeader(null)).file("copy", data).changes().end().bytes();
  const ing = await pushed(s.storage, "new", body, 100);
  assertEquals(ing.newBlobs, 0);
  // Round 2 with no grace: the old mark would make it due; the upload unmarked it.
  const fast = new Collector(s.storage, { graceMs: 0 });
  await fast.start();
  assertEquals(fast.figures!.blobsSwept, 0);
  const c = await finish(ing, body.subarray(body.length - 100));
  assertEquals(c.counts.files, 1);
  assertEquals(sha256(await readBlob(s.storage, sha256(data))), sha256(data));
  await fast.close();
});

Deno.test("two uploads of one large content, encoded differently, at once: the row's bytes stay whole", async () => {
  await using s = await store();
  const data = noise(3 * 1024 * 1024, 4); // over PACK_MAX: a large blob
  const a = new Upload(1).commit(commitHeader(null)).file("a.bin", data).changes().end().bytes();
  const b = new Upload(0).commit(commitHeader(null)).file("a.bin", data).changes().end().bytes();
  assert(a.length !== b.length, "different encodings");
  // Both have received the file's bytes, and record them at the same moment.
  const ia = await pushed(s.storage, "p1", a, 200, false);
  const ib = await pushed(s.storage, "p2", b, 200, false);
  await Promise.all([
    finish(ia, a.subarray(a.length - 200)),
    finish(ib, b.subarray(b.length - 200)),
  ]);
  assertEquals(sha256(await readBlob(s.storage, sha256(data))), sha256(data));
  // The copy no row names is a stray: GC deletes it (no upload in flight, no grace).
  const objects = async () => {
    const out: string[] = [];
    for await (const o of s.storage.blobs.listLarge()) out.push(o.name);
    return out;
  };
  assertEquals((await objects()).length, 2);
  const gc = new Collector(s.storage, { graceMs: 0 });
  await new Promise((r) => setTimeout(r, 1100)); // strays must be older than a second
  await gc.start();
  assertEquals(gc.figures!.straysDeleted, 1);
  assertEquals((await objects()).length, 1);
  assertEquals(sha256(await readBlob(s.storage, sha256(data))), sha256(data));
  await gc.close();
});

Deno.test("forgotten commits keep their versions through the grace, then go", async () => {
  await using s = await store();
  const data = noise(4000, 5);
  await contentOnlyInHistory(s.storage, data);
  const old = (await s.storage.index.listCommits("old")).find((c) => c.seq === 1)!;
  await applyPolicy(s.storage, "old", { last: 1 });
  let now = Date.now();
  const gc = new Collector(s.storage, { graceMs: 60_000, now: () => now });
  gc.markDirty("old");
  await gc.start();
  assertEquals(gc.figures!.versionsRemoved, 0, "within the grace");
  // A restore that already resolved the commit still reads it whole.
  const paths: string[] = [];
  for await (const page of s.storage.index.entryPages("old", old)) {
    for (const e of page) paths.push(e.path);
  }
  assertEquals(paths, ["x", "y"]);
  now += 61_000;
  await gc.start();
  assertEquals(gc.figures!.versionsRemoved, 1, "after the grace");
  now += 61_000;
  await gc.start();
  assertEquals(gc.figures!.blobsSwept, 1);
  await gc.close();
});

Deno.test("roundWanted: a store without policies or backlog starts no round; forgotten commits, policies, a due full mark do", async () => {
  await using s = await store();
  const data = noise(5000, 2);
  await contentOnlyInHistory(s.storage, data);
  const now = Date.now();
  assertEquals(await roundWanted(s.storage.index, now), false, "new store: its full mark is fresh");
  assertEquals(await roundWanted(s.storage.index, now + 25 * 3600_000), true, "a day later");
  await s.storage.index.setPolicy("old", { last: 5 });
  assertEquals(await roundWanted(s.storage.index, now), true, "a policy to apply");
  await s.storage.index.setPolicy("old", null);
  assertEquals((await applyPolicy(s.storage, "old", { last: 1 })).forgotten, 1);
  assertEquals(await roundWanted(s.storage.index, now), true, "a forgotten commit to clean");
  // A new collector finds that project by itself (no markDirty) and cleans it.
  const gc = new Collector(s.storage, { graceMs: 0 });
  await gc.start();
  assertEquals(gc.figures!.blobsSwept, 1);
  await gc.close();
  assertEquals(await roundWanted(s.storage.index, now), false, "nothing left");
});
