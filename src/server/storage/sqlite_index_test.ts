import { assertEquals } from "../../../tests/assert.ts";
import { commitHeader, Upload } from "../../../tests/craft.ts";
import { BlobStore } from "./local_blobs.ts";
import { IndexDb } from "./sqlite_index.ts";
import { Ingest } from "../ingest.ts";

function ingest(index: IndexDb, store: BlobStore, body: Uint8Array) {
  const ing = new Ingest(index, store, "app");
  try {
    for (let i = 0; i < body.length; i += 65000) ing.push(body.subarray(i, i + 65000));
    return ing.finish();
  } catch (err) {
    ing.abort();
    throw err;
  }
}

Deno.test("IndexDb.entries of the head stays whole when a commit lands between its pages", () => {
  const dir = Deno.makeTempDirSync({ prefix: "keep-index-" });
  const index = IndexDb.open(`${dir}/index.db`);
  try {
    const store = BlobStore.open(dir, index, { clean: true });
    let u = new Upload().commit(commitHeader(null));
    for (let i = 0; i < 3000; i++) u.file(`f${String(i).padStart(4, "0")}`, `v1-${i}`);
    const first = ingest(index, store, u.changes([]).end().bytes());
    // A reader (restore of "latest", keep ls) is streaming the head ...
    const it = index.entries("app", index.headCommit("app")!);
    const seen: string[] = [];
    for (let i = 0; i < 10; i++) seen.push(it.next().value!.path);
    // ... when another backup changes one path and deletes another, both in later pages.
    u = new Upload().commit(commitHeader(first.id)).file("f2500", "v2").changes([{
      op: "del",
      p: "f2600",
    }]);
    ingest(index, store, u.end().bytes());
    for (let r = it.next(); !r.done; r = it.next()) seen.push(r.value.path);
    assertEquals(seen.length, 3000);
    assertEquals([seen.includes("f2500"), seen.includes("f2600")], [true, true]);
  } finally {
    index.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
