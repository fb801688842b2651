/**
 * Content-defined chunks for big files (issue 18, part 2), end to end with
 * the real CLI and server: edits inside a big file store only the chunks
 * around them, restore, verify, `tar -tzvf` and GC work on chunked files, and
 * a store of schema 4 (before chunks) opens and keeps working.
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { noise } from "./craft.ts";
import { chunkCuts, ChunkHasher, gearHash } from "../src/format/fastcdc.ts";
import {
  captureProxy,
  json,
  keepOk,
  randomData,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";

interface BackupJson {
  commit: { id: string; stats: { newBlobs: number; newBlobBytes: number; wireBytes: number } };
}

function sha(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

function du(dir: string): number {
  let n = 0;
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) n += du(p);
    else if (e.isFile) n += Deno.statSync(p).size;
  }
  return n;
}

Deno.test("chunks: bytes inserted at the front and in the middle of a 200 MB file store only a few chunks; restore, verify, tar and GC work", async () => {
  await using server = await startServer({ args: ["--gc-grace", "0s"] });
  const proxy = captureProxy(server.url);
  try {
    const src = await tempDir();
    const v1 = randomData(200_000_000);
    writeTree(src, { "big.bin": v1, "small.txt": "small\n" });
    const env = { KEEP_SERVER: proxy.url, KEEP_PROJECT: "c" };
    const backup = async () =>
      json<BackupJson>(await keepOk(["backup", "--settle", "0", "--json", src], 0, { env }));
    const first = await backup();
    const before = du(join(server.dataDir, "blobs")) + du(join(server.dataDir, "packs"));

    const v2 = new Uint8Array(v1.length + 6000);
    v2.set(randomData(1000), 0);
    v2.set(v1.subarray(0, 100_000_000), 1000);
    v2.set(randomData(5000), 100_001_000);
    v2.set(v1.subarray(100_000_000), 100_006_000);
    Deno.writeFileSync(join(src, "big.bin"), v2);
    const second = await backup();
    const grown = du(join(server.dataDir, "blobs")) + du(join(server.dataDir, "packs")) - before;
    // The new chunks around the two edits and the file's row (no bytes of its own).
    assert(second.commit.stats.newBlobs <= 8, `${second.commit.stats.newBlobs} new blobs`);
    assert(grown < 10_000_000, `the store grew by ${grown} bytes`);

    // Only the chunks around the edits went over the wire (the client asked
    // which chunks the store holds), and the upload still reads as a tar.gz
    // listing what was sent: those chunks, named after the file and offset.
    // Which chunks are new depends on where the random data cuts: count them.
    const chunksOf = (data: Uint8Array) => {
      const out = new Map<string, number>();
      const cut = new ChunkHasher((h, size) => out.set(h, size));
      cut.push(data);
      cut.end();
      return out;
    };
    const old = chunksOf(v1);
    const fresh = [...chunksOf(v2)].filter(([h]) => !old.has(h));
    const freshBytes = fresh.reduce((n, [, size]) => n + size, 0);
    assert(fresh.length <= 5, `${fresh.length} new chunks`);
    assert(
      second.commit.stats.wireBytes < freshBytes + 200_000,
      `sent ${second.commit.stats.wireBytes} B for ${freshBytes} B of new chunks`,
    );
    assert(
      second.commit.stats.wireBytes < v2.length / 50,
      `sent ${second.commit.stats.wireBytes} B`,
    );
    const upload = join(await tempDir(), "upload.tar.gz");
    Deno.writeFileSync(upload, proxy.uploads[proxy.uploads.length - 1]);
    const tar = await new Deno.Command("tar", { args: ["-tzvf", upload] }).output();
    assertEquals(tar.code, 0, new TextDecoder().decode(tar.stderr));
    const listing = new TextDecoder().decode(tar.stdout);
    assertMatch(listing, /\.keep-chunk\/big\.bin@0\n/);
    assertMatch(listing, /\.keep-chunk\/big\.bin@[1-9]\d+\n/);
    assert(!/ big\.bin\n/.test(listing), listing);
    // Without negotiation the whole file goes, and tar lists it as the file.
    v2[150_000_000] ^= 1;
    Deno.writeFileSync(join(src, "big.bin"), v2);
    const whole = json<BackupJson>(
      await keepOk(["backup", "--settle", "0", "--no-negotiate", "--json", src], 0, { env }),
    );
    assert(whole.commit.stats.wireBytes > 200_000_000, `sent ${whole.commit.stats.wireBytes} B`);
    assert(whole.commit.stats.newBlobs <= 4, `${whole.commit.stats.newBlobs} new blobs`);
    Deno.writeFileSync(upload, proxy.uploads[proxy.uploads.length - 1]);
    const tar2 = await new Deno.Command("tar", { args: ["-tzvf", upload] }).output();
    assertMatch(new TextDecoder().decode(tar2.stdout), /200006000 .* big\.bin/);

    // Both versions restore byte for byte.
    const v2s = v2.slice();
    v2s[150_000_000] ^= 1; // as it was in the second commit
    for (
      const [id, want] of [[first.commit.id, v1], [second.commit.id, v2s], [
        whole.commit.id,
        v2,
      ]] as const
    ) {
      const out = await tempDir();
      await keepOk(["restore", "--commit", id, out], 0, { env });
      assertEquals(sha(Deno.readFileSync(join(out, "big.bin"))), sha(want), `restore of ${id}`);
    }
    // verify reads chunked files through their lists.
    const v = await keepOk(["verify", "--server", proxy.url], 0, { env });
    assertMatch(v.stdout, /keep verify: OK/);

    // GC: the first commit goes; the chunks only it used go, the shared ones stay.
    const p = json<{ gc: { blobsSwept: number } }>(
      await keepOk(["prune", "--keep-last", "1", "--wait", "--json"], 0, { env }),
    );
    assert(p.gc.blobsSwept >= 1, `swept ${p.gc.blobsSwept}`);
    // Chunks are unreferenced only once their file's row is gone (the sweep
    // marks them then): a second round frees them.
    const again = json<{ gc: { blobsSwept: number } }>(
      await keepOk(["prune", "--keep-last", "1", "--wait", "--json"], 0, { env }),
    );
    assert(again.gc.blobsSwept + p.gc.blobsSwept >= 3, `swept ${again.gc.blobsSwept}`);
    const db = new DatabaseSync(join(server.dataDir, "index.db"), { readOnly: true });
    try {
      const left = db.prepare(
        `SELECT count(*) AS n FROM blobs b
         WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = b.hash)
           AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = b.hash)
           AND NOT EXISTS (SELECT 1 FROM chunks k WHERE k.chunk = b.hash)`,
      ).get() as { n: number };
      assertEquals(Number(left.n), 0, "no chunk left that no list holds");
    } finally {
      db.close();
    }
    const out = await tempDir();
    await keepOk(["restore", out], 0, { env });
    assertEquals(sha(Deno.readFileSync(join(out, "big.bin"))), sha(v2), "restore after GC");
    const after = await keepOk(["verify", "--server", proxy.url], 0, { env });
    assertMatch(after.stdout, /keep verify: OK/);
  } finally {
    await proxy.close();
  }
});

for (const schema of [4, 5]) {
  Deno.test(`chunks: a store of schema ${schema} (before chunks) opens, its whole blobs restore, new big files are chunked`, async () => {
    const old = randomData(20_000_000);
    const data4 = await tempDir("keep-data-");
    const small = { "a.txt": "a\n", "b.bin": randomData(300_000) };
    const src4 = await tempDir();
    writeTree(src4, small);
    {
      await using server = await startServer({ dataDir: data4 });
      await keepOk(["backup", "-p", "o", "--settle", "0", src4], 0, {
        env: { KEEP_SERVER: server.url },
      });
    }
    {
      const db = new DatabaseSync(join(data4, "index.db"));
      db.exec("DROP TABLE chunks");
      db.exec("ALTER TABLE blobs DROP COLUMN chunked");
      // Schema 5 had the web UI's sessions, 4 not.
      if (schema === 4) db.exec("DROP TABLE sessions");
      db.exec(`PRAGMA user_version=${schema}`);
      db.close();
    }
    await using server = await startServer({ dataDir: data4 });
    const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "o" };
    const out = await tempDir();
    await keepOk(["restore", out], 0, { env });
    assertEquals(Deno.readFileSync(join(out, "b.bin")), small["b.bin"]);
    writeTree(src4, { "big.bin": old });
    const r = json<BackupJson>(
      await keepOk(["backup", "--settle", "0", "--json", src4], 0, { env }),
    );
    assert(r.commit.stats.newBlobs > 10, `${r.commit.stats.newBlobs} blobs: chunked`);
    const out2 = await tempDir();
    await keepOk(["restore", out2], 0, { env });
    assertEquals(sha(Deno.readFileSync(join(out2, "big.bin"))), sha(old));
    const v = await keepOk(["verify", "--server", server.url]);
    assertMatch(v.stdout, /keep verify: OK/);
  });
}

Deno.test("chunks: recompression at rest rewrites chunks bigger than a member and they still restore", async () => {
  await using server = await startServer({ args: ["--compact-idle", "300ms"] });
  const src = await tempDir();
  const text = new TextEncoder().encode(
    Array.from({ length: 400_000 }, (_, i) => `line ${i} of a log, value ${(i * 7919) % 10007}\n`)
      .join(""),
  );
  writeTree(src, { "log.txt": text });
  const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "z" };
  await keepOk(["backup", "--settle", "0", src], 0, { env });
  const db = () => new DatabaseSync(join(server.dataDir, "index.db"), { readOnly: true });
  const left = () => {
    const d = db();
    try {
      return Number(
        (d.prepare("SELECT count(*) AS n FROM blobs WHERE pack IS NOT NULL AND level IS NULL")
          .get() as { n: number }).n,
      );
    } finally {
      d.close();
    }
  };
  const until = Date.now() + 60_000;
  while (left() > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
  assertEquals(left(), 0, "every pack blob recompressed");
  const out = await tempDir();
  await keepOk(["restore", out], 0, { env });
  assertEquals(sha(Deno.readFileSync(join(out, "log.txt"))), sha(text));
  const v = await keepOk(["verify", "--server", server.url]);
  assertMatch(v.stdout, /keep verify: OK/);
});

Deno.test("chunks: a chunk of exactly one full gzip member (1 MiB) is stored as the client cuts it, so a later backup finds it", async () => {
  await using server = await startServer();
  // Random bytes with no cut before 1 MiB - 32, then 32 bytes that put one
  // at 1 MiB exactly (past the average a cut is where the hash's top
  // log2(512 Ki) - 2 = 17 bits are zero).
  const MiB = 1 << 20;
  let data: Uint8Array | null = null;
  for (let seed = 1; !data && seed < 2000; seed++) {
    const head = noise(MiB - 32, seed);
    if (chunkCuts(head).length !== 1) continue; // a cut before the end
    const tail = noise(32 * 300_000, seed + 7);
    for (let t = 0; t < 300_000; t++) {
      const x = tail.subarray(t * 32, t * 32 + 32);
      if (gearHash(x) >>> 15 !== 0) continue;
      const d = new Uint8Array(10 * MiB);
      d.set(head);
      d.set(x, MiB - 32);
      d.set(noise(9 * MiB, seed + 11), MiB);
      if (chunkCuts(d)[0] === MiB) data = d;
      break;
    }
  }
  assert(data, "no seed gives a cut at 1 MiB");
  const src = await tempDir();
  writeTree(src, { "one.bin": data });
  const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "m" };
  // Sent whole (first backup): the server cuts it where the members say.
  await keepOk(["backup", "--settle", "0", src], 0, { env });
  const chunks: string[] = [];
  const cut = new ChunkHasher((h) => chunks.push(h));
  cut.push(data);
  cut.end();
  const res = await fetch(`${server.url}/v1/projects/m/negotiate`, {
    method: "POST",
    body: JSON.stringify({ hashes: chunks, own: true }),
    headers: { "content-type": "application/json" },
  });
  const a = await res.json() as { own: string[] };
  assertEquals(a.own, chunks, "the store holds every chunk the client cuts, as the project's");
  const out = await tempDir();
  await keepOk(["restore", out], 0, { env });
  assertEquals(sha(Deno.readFileSync(join(out, "one.bin"))), sha(data));
});

Deno.test("chunks: a quota counts only the chunks a backup sends, not the whole edited file", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const v1 = randomData(40_000_000);
  writeTree(src, { "big.bin": v1 });
  const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "q" };
  await keepOk(["backup", "--settle", "0", src], 0, { env });
  // 40 MB stored; 48 MB allowed: the edit's chunks fit, the whole file would not.
  await keepOk(["policy", "set", "-s", server.url, "-p", "q", "--quota", "46M"]);
  v1[20_000_000] ^= 1;
  Deno.writeFileSync(join(src, "big.bin"), v1);
  const b = json<BackupJson>(await keepOk(["backup", "--settle", "0", "--json", src], 0, { env }));
  assert(b.commit.stats.wireBytes < 3_000_000, `sent ${b.commit.stats.wireBytes} B`);
  // A new file of 10 MB is over the quota all the same.
  writeTree(src, { "more.bin": randomData(10_000_000) });
  const r = await keepOk(["backup", "--settle", "0", src], 7, { env });
  assertMatch(r.stderr, /past its quota/);
});

Deno.test("chunks: several big files edited are hashed from their chunks; a damaged stored chunk is found, marked, and the backup sends it again", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const a = randomData(40_000_000);
  const b = randomData(40_000_000);
  writeTree(src, { "a.bin": a, "b.bin": b });
  const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "w" };
  await keepOk(["backup", "--settle", "0", src], 0, { env });
  // Flip a byte in the middle of b.bin's sixth chunk, as stored in its pack.
  const chunks: string[] = [];
  const cut = new ChunkHasher((h) => chunks.push(h));
  cut.push(b);
  cut.end();
  const db = new DatabaseSync(join(server.dataDir, "index.db"), { readOnly: true });
  const row = db.prepare("SELECT pack, offset, stored FROM blobs WHERE hash = ?")
    .get(Buffer.from(chunks[5], "hex")) as { pack: number; offset: number; stored: number };
  db.close();
  assert(row && row.pack !== null, "the chunk is in a pack");
  const pack = join(server.dataDir, "packs", `${row.pack}.pack`);
  const f = Deno.openSync(pack, { read: true, write: true });
  const one = new Uint8Array(1);
  f.seekSync(row.offset + Math.floor(row.stored / 2), Deno.SeekMode.Start);
  f.readSync(one);
  one[0] ^= 0xff;
  f.seekSync(row.offset + Math.floor(row.stored / 2), Deno.SeekMode.Start);
  f.writeSync(one);
  f.close();
  // Both files edited in their first chunk: each goes as one chunk and a
  // list naming the rest, b's damaged chunk among them.
  a[1000] ^= 1;
  b[1000] ^= 1;
  writeTree(src, { "a.bin": a, "b.bin": b });
  const r = await keepOk(["backup", "--settle", "0", "-v", "--json", src], 0, { env });
  assertMatch(r.stderr, /damaged/);
  const out = await tempDir();
  await keepOk(["restore", out], 0, { env });
  assertEquals(sha(Deno.readFileSync(join(out, "a.bin"))), sha(a));
  assertEquals(sha(Deno.readFileSync(join(out, "b.bin"))), sha(b));
});
