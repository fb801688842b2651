import { assert, assertEquals, assertRejects } from "../../tests/assert.ts";
import { createHash } from "node:crypto";
import {
  commitHeader,
  crc32,
  handMember,
  noise,
  noiseText,
  rechunk,
  storedBlocks,
  T0,
  Upload,
} from "../../tests/craft.ts";
import { scopedStore } from "../../tests/helpers.ts";
import { KeepError } from "../errors.ts";
import { encodeHeader, padded } from "../format/tar.ts";
import type { CommitInfo, Entry } from "../format/manifest.ts";
import { contentPieces, forEachRaw } from "./content_pieces.ts";
import { Ingest } from "./ingest.ts";
import type { Storage } from "./storage/open.ts";

const store = () => scopedStore("keep-ingest-");

/** Pushes `body` in HTTP-sized chunks, flushing when asked (or only at the end). */
async function ingest(
  storage: Storage,
  body: Uint8Array,
  opts: { flush?: boolean } = {},
): Promise<CommitInfo> {
  const ing = await Ingest.start(storage, "app");
  try {
    for (let i = 0; i < body.length; i += 65000) {
      ing.push(body.subarray(i, i + 65000));
      if (ing.wantsFlush && (opts.flush ?? true)) await ing.flush();
    }
    return (await ing.finish()).commit;
  } catch (err) {
    await ing.abort();
    throw err;
  }
}

async function headEntries(storage: Storage): Promise<Entry[]> {
  const out: Entry[] = [];
  const head = (await storage.index.headCommit("app"))!;
  for await (const page of storage.index.entryPages("app", head)) out.push(...page);
  return out;
}

function tmpFiles(dir: string): string[] {
  return [...Deno.readDirSync(`${dir}/tmp`)].map((e) => e.name);
}

Deno.test("Ingest records a commit with its counts and the server's own hashes", async () => {
  await using s = await store();
  const body = new Upload().commit(commitHeader(null, { message: "first" }))
    .dir("d").file("d/a.txt", "hello\n").file("d/empty", "").symlink("l", "d").changes().end();
  const commit = await ingest(s.storage, body.bytes());
  assertEquals([commit.seq, commit.parent, commit.message], [1, null, "first"]);
  assertEquals(commit.counts, {
    files: 2,
    dirs: 1,
    symlinks: 1,
    bytes: 6,
    added: 4,
    changed: 0,
    deleted: 0,
    metadata: 0,
    unchanged: 0,
    flagged: 0,
  });
  assertEquals([commit.stats.filesReceived, commit.stats.bytesReceived], [2, 6]);
  assertEquals(commit.stats.wireBytes, body.bytes().length);
  assertEquals((await s.storage.index.headCommit("app"))?.id, commit.id);
  const entries = await headEntries(s.storage);
  assertEquals(entries.map((e) => [e.path, e.type]), [
    ["d", "d"],
    ["d/a.txt", "f"],
    ["d/empty", "f"],
    ["l", "l"],
  ]);
  // SHA-256 of "hello\n", computed by the server.
  assertEquals(
    entries[1].hash,
    "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
  );
  assertEquals(entries[3].target, "d");
});

Deno.test("Ingest stores identical content in two files once (newBlobs)", async () => {
  await using s = await store();
  const big = noise(1536 * 1024, 3); // over PACK_MAX: a large blob of its own
  const first = await ingest(
    s.storage,
    new Upload().commit(commitHeader(null)).file("a", "same").file("b", "same").file("c", "other")
      .file("x.bin", big).file("y.bin", big).changes().end().bytes(),
  );
  assertEquals(first.stats.newBlobs, 3);
  assertEquals(first.counts.files, 5);
  assertEquals(tmpFiles(s.dir), [], "the duplicate large blob's temp file is gone");
  // The same content in the next commit, under other names: nothing new is stored.
  const second = await ingest(
    s.storage,
    new Upload().commit(commitHeader(first.id)).file("d", "same").file("z.bin", big).changes()
      .end().bytes(),
  );
  assertEquals([second.stats.newBlobs, second.stats.newBlobBytes], [0, 0]);
  assertEquals(second.stats.filesReceived, 2);
});

Deno.test("Ingest.flush throws KeepError conflict when the upload's parent is no commit of the project", async () => {
  await using s = await store();
  const first = await ingest(
    s.storage,
    new Upload().commit(commitHeader(null)).file("a", "1").changes().end().bytes(),
  );
  const ingOther = await Ingest.start(s.storage, "other");
  ingOther.push(new Upload().commit(commitHeader(null)).file("o", "o").changes().end().bytes());
  const other = (await ingOther.finish()).commit;
  // An id no commit has, a prefix of the head, and the head of another project.
  for (const parent of ["0123456789abcdef", first.id.slice(0, 8), other.id]) {
    const ing = await Ingest.start(s.storage, "app");
    ing.push(new Upload().commit(commitHeader(parent)).file("a", "2").changes().end().bytes());
    assert(ing.wantsFlush, "the header waits for its check");
    const err = await assertRejects(() => ing.flush(), KeepError, /^Cannot commit: parent /);
    assertEquals(err.code, "conflict", parent);
    await ing.abort();
  }
  assertEquals((await s.storage.index.headCommit("app"))?.id, first.id);
});

Deno.test("Ingest: a body cut in the middle throws, and abort() leaves no temp file in DIR/tmp", async () => {
  await using s = await store();
  const body = new Upload().commit(commitHeader(null)).file("big.bin", noise(3 << 20, 4)).changes()
    .end().bytes();
  const ing = await Ingest.start(s.storage, "app");
  ing.push(body.subarray(0, body.length >> 1));
  assertEquals(tmpFiles(s.dir).length, 1, "the large file is spooled to tmp/");
  await assertRejects(() => ing.finish(), KeepError, /truncated/);
  await ing.abort();
  await ing.abort(); // safe twice
  assertEquals(tmpFiles(s.dir), []);
  assertEquals(await s.storage.index.headCommit("app"), null);
});

Deno.test("Ingest.wantsFlush turns true after 4096 rows, and flushing then gives the same commit as not", async () => {
  const upload = new Upload().commit(commitHeader(null));
  // 5,000 files, 3,000 contents: duplicates fall on both sides of a batch.
  for (let i = 0; i < 5000; i++) upload.file(`f${String(i).padStart(4, "0")}`, `c${i % 3000}`);
  upload.changes().end();

  await using a = await store();
  const ing = await Ingest.start(a.storage, "app");
  let files = 0;
  let asked = -1;
  for (const part of upload.parts) {
    ing.push(part.bytes);
    if (part.label === "commit:data0") {
      assert(ing.wantsFlush, "the header waits for its check");
      await ing.flush();
    } else if (/^entry:.*:data0$/.test(part.label)) files++;
    if (ing.wantsFlush && asked < 0) {
      asked = files;
      await ing.flush();
    }
  }
  const flushed = (await ing.finish()).commit;
  assertEquals(asked, 4096);

  await using b = await store();
  const whole = await ingest(b.storage, upload.bytes(), { flush: false });
  assertEquals(flushed.counts, whole.counts);
  assertEquals(
    [flushed.stats.newBlobs, flushed.stats.newBlobBytes],
    [whole.stats.newBlobs, whole.stats.newBlobBytes],
  );
  assertEquals(whole.stats.newBlobs, 3000);
  assertEquals(await headEntries(a.storage), await headEntries(b.storage));
});

Deno.test("Ingest: a big file's chunks go into the batch buffer and read back byte for byte, however its members are cut and whenever batches flush", async () => {
  // Text and noise, 27 MB: chunks end where short members do, or at the
  // chunker's max; 8 MB batches flush while a chunk is open.
  const parts: Uint8Array[] = [];
  for (let i = 0; i < 9; i++) {
    parts.push(
      i % 2
        ? noise(3_000_000 + i * 7919, i)
        : new TextEncoder().encode(noiseText(3_000_000 - i * 4099, i)),
    );
  }
  const content = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (content.set(p, at), at + p.length), 0);
  const want = createHash("sha256").update(content).digest("hex");
  const body = new Upload().commit(commitHeader(null)).file("big.bin", content).changes().end()
    .bytes();
  const cases: [string, Uint8Array, boolean][] = [
    ["full members", body, true],
    ["members of 300 KiB (re-encoded)", rechunk(body, 300 << 10), true],
    ["members of 100,003 bytes", rechunk(body, 100_003), true],
    // Several members a body chunk: a batch flushes with bytes of the next chunk held.
    ["members of 20,011 bytes", rechunk(body, 20_011), true],
    ["no flush until the end", rechunk(body, 700_001), false],
  ];
  for (const [what, bytes, flush] of cases) {
    await using s = await store();
    await ingest(s.storage, bytes, { flush });
    const [entry] = await headEntries(s.storage);
    assertEquals(entry.hash, want, what);
    const place = (await s.storage.index.blobPlace(want))!;
    assert(place.chunked, what);
    assert((await s.storage.index.chunksOf!(want)).length >= 10, what);
    const sha = createHash("sha256");
    const size = await forEachRaw(
      await contentPieces(s.storage, want, place),
      (raw) => sha.update(raw),
    );
    assertEquals([size, sha.digest("hex")], [content.length, want], what);
  }
});

Deno.test("Ingest refuses a big file whose members are padded past stored blocks (a chunk may store at most twice its raw bytes)", async () => {
  await using s = await store();
  // 1 KiB raw per member, each padded to ~600 KB with empty stored blocks:
  // valid deflate, right CRC, but ~600x its content on the wire and in store.
  const raw = noise(1024, 9);
  const pad = new Uint8Array(5 * 120_000);
  for (let i = 0; i < pad.length; i += 5) pad.set([0, 0, 0, 0xff, 0xff], i);
  const member = handMember({
    body: new Uint8Array([...pad, ...storedBlocks(raw)]),
    rawLen: raw.length,
    crc: crc32(raw),
  });
  const n = 160; // 160 KiB raw: past the chunker's min, one chunk
  const up = new Upload().commit(commitHeader(null)).headerBlocks(
    encodeHeader({ path: "big.bin", type: "file", size: n * 1024, mode: 0o644, mtime: T0 }),
  );
  for (let i = 0; i < n; i++) up.wire(member);
  up.pad = padded(n * 1024) - n * 1024;
  const body = up.changes().end().bytes();
  const ing = await Ingest.start(s.storage, "app", {
    limits: { maxUploadBytes: 1 << 30, maxEntries: 1000, chunkOverBytes: 0 },
  });
  const err = await assertRejects(async () => {
    for (let i = 0; i < body.length; i += 65000) {
      ing.push(body.subarray(i, i + 65000));
      if (ing.wantsFlush) await ing.flush();
    }
    await ing.finish();
  }, KeepError);
  await ing.abort();
  assertEquals((err as KeepError).code, "invalid");
  assert(
    /a chunk of "big\.bin" stores more than \d+ bytes/.test((err as Error).message),
    (err as Error).message,
  );
  assertEquals(await s.storage.index.headCommit("app"), null);
});
