import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "../../../tests/assert.ts";
import { noise } from "../../../tests/craft.ts";
import { scopedTempDir } from "../../../tests/helpers.ts";
import { KeepError } from "../../errors.ts";
import { concatBytes } from "../../platform/concat_bytes.ts";
import type { BlobPlace } from "./blob_store.ts";
import { LocalBlobStore } from "./local_blobs.ts";

const MiB = 1 << 20;

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Every piece of a blob, joined (each piece is copied: views are reused). */
async function readBack(store: LocalBlobStore, hash: string, place: BlobPlace) {
  const parts: Uint8Array[] = [];
  for await (const piece of await store.pieces(hash, place)) parts.push(piece.slice());
  return { bytes: concatBytes(parts), pieces: parts.length };
}

function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

/** A large blob written through a sink and finished under its hash; its place. */
async function writeLarge(store: LocalBlobStore, data: Uint8Array) {
  const sink = store.openLarge();
  for (let i = 0; i < data.length; i += 300_000) sink.write(data.subarray(i, i + 300_000));
  const hash = sha256(data);
  const gen = await sink.finish(hash);
  return { hash, gen, place: { size: data.length, stored: data.length, pack: null, offset: gen } };
}

Deno.test("LocalBlobStore pack sink: blobs read back through pieces() byte for byte after flush", async () => {
  using dir = scopedTempDir("keep-blobs-");
  const store = LocalBlobStore.open(dir.path);
  const sink = store.openPack(7);
  // Small ones share the write buffer; the 1.5 MiB one is larger than it.
  const blobs = [noise(10, 1), noise(70_000, 2), noise(MiB + MiB / 2, 3), noise(1, 4)];
  const places: BlobPlace[] = blobs.map((data) => ({
    size: data.length,
    stored: data.length,
    pack: 7,
    offset: sink.add(data),
  }));
  assertEquals(places.map((p) => p.offset), [0, 10, 70_010, 70_010 + MiB + MiB / 2]);
  assertEquals(sink.size, blobs.reduce((n, b) => n + b.length, 0));
  await sink.flush();
  for (let i = 0; i < blobs.length; i++) {
    const got = await readBack(store, sha256(blobs[i]), places[i]);
    assertEquals(got.bytes, blobs[i], `blob ${i}`);
  }
  // What is added after a flush reads back after the next one, and close keeps it all.
  const later = noise(5000, 5);
  const at = sink.add(later);
  await sink.close();
  const place = { size: later.length, stored: later.length, pack: 7, offset: at };
  assertEquals((await readBack(store, sha256(later), place)).bytes, later);
  assertEquals(await store.packSize(7), sink.size);
  assertEquals(names(store.tmpDir), []);
  await store.close();
});

Deno.test("LocalBlobStore large sink: finish(hash) puts the file under blobs/ab/cd/ with a new generation, and pieces() reads it", async () => {
  using dir = scopedTempDir("keep-blobs-");
  const store = LocalBlobStore.open(dir.path);
  const data = noise(2 * MiB + 12345, 6);
  const sink = store.openLarge();
  sink.write(data.subarray(0, MiB));
  assertEquals(names(store.tmpDir).length, 1, "written to tmp/ first");
  sink.write(data.subarray(MiB));
  const hash = sha256(data);
  const gen = await sink.finish(hash);
  const path = join(dir.path, "blobs", hash.slice(0, 2), hash.slice(2, 4), `${hash}.${gen}`);
  assertEquals(Deno.readFileSync(path), data);
  assertEquals(store.pathOf(hash, gen), path);
  assertEquals(names(store.tmpDir), []);
  assertEquals(await store.largeSize(hash, gen), data.length);
  const place = { size: data.length, stored: data.length, pack: null, offset: gen };
  const got = await readBack(store, hash, place);
  assertEquals(got.bytes, data);
  assertEquals(got.pieces, 3, "read in pieces of 1 MiB");
  // The same content written again gets a name of its own: the first file is untouched.
  const again = await writeLarge(store, data);
  assert(again.gen !== gen, "a new generation");
  assertEquals(names(join(dir.path, "blobs", hash.slice(0, 2), hash.slice(2, 4))).length, 2);
  // A blob of a store from before generations is named by its hash alone.
  Deno.renameSync(path, store.pathOf(hash, null));
  assertEquals((await readBack(store, hash, { ...place, offset: null })).bytes, data);
  await store.close();
});

Deno.test("LocalBlobStore abort leaves nothing in tmp/", async () => {
  using dir = scopedTempDir("keep-blobs-");
  const store = LocalBlobStore.open(dir.path);
  const large = store.openLarge();
  large.write(noise(3 * MiB, 7));
  assertEquals(names(store.tmpDir).length, 1);
  await large.abort();
  await large.abort(); // twice is harmless
  const pack = store.openPack(1);
  pack.add(noise(1000, 8));
  await pack.abort();
  assertEquals(names(store.tmpDir), []);
  assertEquals([...Deno.readDirSync(store.dir)], [], "no large blob was adopted");
  await store.close();
});

Deno.test("LocalBlobStore.pieces on a missing or short pack throws KeepError integrity before yielding", async () => {
  using dir = scopedTempDir("keep-blobs-");
  const store = LocalBlobStore.open(dir.path);
  const hash = "ab".repeat(32);
  // The promise itself rejects: nothing is iterated.
  const missing = await assertRejects(
    () => store.pieces(hash, { size: 10, stored: 10, pack: 99, offset: 0 }),
    KeepError,
    /^Cannot read blob (ab){32}: pack 99 is missing$/,
  );
  assertEquals(missing.code, "integrity");
  const sink = store.openPack(3);
  sink.add(noise(100, 9));
  await sink.close();
  const short = await assertRejects(
    () => store.pieces(hash, { size: 100, stored: 100, pack: 3, offset: 50 }),
    KeepError,
    /pack 3 is short/,
  );
  assertEquals(short.code, "integrity");
  await store.close();
});

Deno.test("LocalBlobStore.pieces on a large blob whose file is shorter than place.stored throws integrity at once", async () => {
  using dir = scopedTempDir("keep-blobs-");
  const store = LocalBlobStore.open(dir.path);
  const data = noise(MiB + 100, 10);
  const { hash, gen, place } = await writeLarge(store, data);
  Deno.truncateSync(store.pathOf(hash, gen), data.length - 1);
  const err = await assertRejects(
    () => store.pieces(hash, place),
    KeepError,
    new RegExp(`its file has ${data.length - 1} bytes, the index says ${data.length}$`),
  );
  assertEquals(err.code, "integrity");
  Deno.removeSync(store.pathOf(hash, gen));
  const gone = await assertRejects(() => store.pieces(hash, place), KeepError, /file is missing/);
  assertEquals(gone.code, "integrity");
  await store.close();
});

Deno.test("LocalBlobStore listPacks and listLarge list what was written; deletePack removes a pack", async () => {
  using dir = scopedTempDir("keep-blobs-");
  const store = LocalBlobStore.open(dir.path);
  for (const [pack, n] of [[1, 300], [2, 500]]) {
    const sink = store.openPack(pack);
    sink.add(noise(n, pack));
    await sink.close();
  }
  Deno.writeTextFileSync(join(store.packDir, "stray.txt"), "not a pack");
  const large = [
    await writeLarge(store, noise(MiB + 1, 11)),
    await writeLarge(store, noise(MiB + 2, 12)),
  ];
  const listPacks = async () => {
    const out: string[] = [];
    for await (const p of store.listPacks()) {
      out.push("name" in p ? p.name : `#${p.pack} ${p.size}`);
    }
    return out.sort();
  };
  const listLarge = async () => {
    const out: string[] = [];
    for await (const o of store.listLarge()) out.push(`${o.hash}.${o.gen}`);
    return out.sort();
  };
  assertEquals(await listPacks(), ["#1 300", "#2 500", "stray.txt"]);
  assertEquals(await listLarge(), large.map((b) => `${b.hash}.${b.gen}`).sort());
  // A pack read (its file kept open for reading) is deleted all the same.
  await readBack(store, "", { size: 300, stored: 300, pack: 1, offset: 0 });
  await store.deletePack(1);
  assertEquals(await store.packSize(1), null);
  assertEquals(await listPacks(), ["#2 500", "stray.txt"]);
  await store.deleteLarge(large[0].hash, large[0].gen);
  assertEquals(await store.largeSize(large[0].hash, large[0].gen), null);
  assertEquals(await listLarge(), [`${large[1].hash}.${large[1].gen}`]);
  await store.close();
});

Deno.test("LocalBlobStore.pieces of two blobs taken before either is read: each reads its own bytes", async () => {
  using dir = scopedTempDir("keep-blobs-");
  const store = LocalBlobStore.open(dir.path);
  const a = noise(5000, 1);
  const b = noise(7000, 2);
  const sink = store.openPack(3);
  const offA = sink.add(a);
  const offB = sink.add(b);
  await sink.close();
  const pa = { size: a.length, stored: a.length, pack: 3, offset: offA };
  const pb = { size: b.length, stored: b.length, pack: 3, offset: offB };
  // Two requests: both take their pieces, then read (a blob GET streams later).
  const piecesA = await store.pieces(sha256(a), pa);
  const piecesB = await store.pieces(sha256(b), pb);
  const read = async (pieces: AsyncIterable<Uint8Array>) => {
    const parts: Uint8Array[] = [];
    for await (const p of pieces) parts.push(p.slice());
    return concatBytes(parts);
  };
  assertEquals(await read(piecesA), a);
  assertEquals(await read(piecesB), b);
  // Two large blobs read in turns, a piece at a time.
  const big1 = noise(3 * MiB, 3);
  const big2 = noise(3 * MiB, 4);
  const w1 = await writeLarge(store, big1);
  const w2 = await writeLarge(store, big2);
  const i1 = (await store.pieces(w1.hash, w1.place))[Symbol.asyncIterator]();
  const i2 = (await store.pieces(w2.hash, w2.place))[Symbol.asyncIterator]();
  const got1: Uint8Array[] = [];
  const got2: Uint8Array[] = [];
  for (;;) {
    const r1 = await i1.next();
    const r2 = await i2.next();
    if (!r1.done) got1.push(r1.value.slice());
    if (!r2.done) got2.push(r2.value.slice());
    if (r1.done && r2.done) break;
  }
  assertEquals(sha256(concatBytes(got1)), w1.hash);
  assertEquals(sha256(concatBytes(got2)), w2.hash);
  await store.close();
});
