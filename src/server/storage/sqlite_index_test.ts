import { assertEquals } from "../../../tests/assert.ts";
import { commitHeader, Upload } from "../../../tests/craft.ts";
import type { CommitInfo } from "../../format/manifest.ts";
import { Ingest } from "../ingest.ts";
import { openLocalStorage, type Storage } from "./open.ts";

async function ingest(storage: Storage, body: Uint8Array): Promise<CommitInfo> {
  const ing = await Ingest.start(storage, "app");
  try {
    for (let i = 0; i < body.length; i += 65000) {
      ing.push(body.subarray(i, i + 65000));
      if (ing.wantsFlush) await ing.flush();
    }
    return (await ing.finish()).commit;
  } catch (err) {
    await ing.abort();
    throw err;
  }
}

Deno.test("SqliteIndex.entryPages of the head stays whole when a commit lands between its pages", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "keep-index-" });
  const storage = await openLocalStorage(dir, { create: true, owner: true });
  try {
    let u = new Upload().commit(commitHeader(null));
    for (let i = 0; i < 3000; i++) u.file(`f${String(i).padStart(4, "0")}`, `v1-${i}`);
    const first = await ingest(storage, u.changes([]).end().bytes());
    // A reader (restore of "latest", keep ls) is streaming the head ...
    const pages = storage.index.entryPages("app", (await storage.index.headCommit("app"))!);
    const it = pages[Symbol.asyncIterator]();
    const seen: string[] = (await it.next()).value!.map((e: { path: string }) => e.path);
    assertEquals(seen.length < 3000, true, "more than one page");
    // ... when another backup changes one path and deletes another, both in later pages.
    u = new Upload().commit(commitHeader(first.id)).file("f2500", "v2").changes([{
      op: "del",
      p: "f2600",
    }]);
    await ingest(storage, u.end().bytes());
    for (let r = await it.next(); !r.done; r = await it.next()) {
      for (const e of r.value) seen.push(e.path);
    }
    assertEquals(seen.length, 3000);
    assertEquals([seen.includes("f2500"), seen.includes("f2600")], [true, true]);
  } finally {
    await storage.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
