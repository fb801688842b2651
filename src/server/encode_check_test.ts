/**
 * The server stores only encodings it has checked: with a deliberately
 * broken encoder (members that decode, with valid CRCs, to other bytes),
 * ingest's re-encoding and the compactor keep correct bytes, and verify
 * stays clean.
 */

import { assert, assertEquals } from "../../tests/assert.ts";
import { commitHeader, rechunk, Upload } from "../../tests/craft.ts";
import { Compactor } from "./compactor.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import {
  decodeMember,
  encodeMember,
  type MemberEncoder,
  MemberSplitter,
} from "../format/gzip_member.ts";
import type { LocalBlobStore } from "./storage/local_blobs.ts";
import { openLocalStorage, type Storage } from "./storage/open.ts";
import type { SqliteIndex } from "./storage/sqlite_index.ts";
import { Ingest } from "./ingest.ts";
import { verifyStore } from "./verify.ts";

/** Encodes `raw` with its first byte changed: a well-formed member of the wrong content. */
const broken: MemberEncoder = (raw, level) => {
  const wrong = raw.slice();
  if (wrong.length) wrong[0] ^= 0x55;
  return encodeMember(wrong, level);
};

function text(n: number, seed: number): Uint8Array {
  const words = ["static", "int", "return", "struct", "buffer", "const", "void", "if"];
  let s = "";
  let x = seed;
  while (s.length < n) {
    x = (x * 1103515245 + 12345) >>> 0;
    s += words[x % words.length] + (x % 7 ? " " : ";\n");
  }
  return new TextEncoder().encode(s.slice(0, n));
}

/** A store in a temp dir, with its SQLite database for the assertions. */
async function open(dir: string): Promise<{ storage: Storage; db: SqliteIndex["db"] }> {
  const storage = await openLocalStorage(dir, { create: true, owner: true });
  return { storage, db: (storage.index as SqliteIndex).db };
}

/** Runs a whole upload through an Ingest. */
async function upload(storage: Storage, body: Uint8Array, encode?: MemberEncoder) {
  const ingest = await Ingest.start(storage, "app", { encode });
  ingest.push(body);
  const { commit } = await ingest.finish();
  return { commit, repaired: ingest.repairedBlobs };
}

/** The raw bytes of a stored blob, decoded member by member. */
async function contentOf(storage: Storage, hex: string): Promise<Uint8Array> {
  const place = (await storage.index.blobPlace(hex))!;
  const s = new MemberSplitter();
  const out: Uint8Array[] = [];
  for await (const chunk of await storage.blobs.pieces(hex, place)) {
    s.push(chunk.slice());
    for (let m = s.next(); m; m = s.next()) out.push(decodeMember(m));
  }
  s.end();
  return concatBytes(out);
}

function hashes(db: SqliteIndex["db"]): { path: string; hash: string }[] {
  return db.prepare("SELECT path, lower(hex(hash)) AS hash FROM current WHERE type = 'f'")
    .all() as { path: string; hash: string }[];
}

Deno.test("ingest re-encodes straddling members with a broken encoder and still stores the right bytes", async () => {
  // Members cut anywhere: inside headers, data and padding.
  for (const cut of [511, 1000, 4096, 7000, 65536]) {
    const dir = Deno.makeTempDirSync({ prefix: "keep-enc-" });
    const { storage, db } = await open(dir);
    try {
      const files = [0, 1, 2, 3].map((i) => text(3000 + i * 5000, i + 1));
      const up = new Upload().commit(commitHeader(null));
      files.forEach((d, i) => up.file(`f${i}.c`, d));
      await upload(storage, rechunk(up.changes([]).end().bytes(), cut), broken);
      const rows = hashes(db);
      assertEquals(rows.length, 4);
      for (const r of rows) {
        const i = Number(r.path.slice(1, 2));
        assertEquals(
          await contentOf(storage, r.hash),
          files[i],
          `${r.path}, members of ${cut} bytes`,
        );
      }
      const report = await verifyStore(storage);
      assert(report.ok, JSON.stringify(report.damaged));
    } finally {
      await storage.close();
      Deno.removeSync(dir, { recursive: true });
    }
  }
});

Deno.test("the compactor with a broken encoder moves no row to a wrong encoding", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "keep-enc-" });
  const { storage, db } = await open(dir);
  try {
    const files = Array.from({ length: 20 }, (_, i) => text(2000 + i * 700, i + 10));
    const up = new Upload().commit(commitHeader(null));
    files.forEach((d, i) => up.file(`f${String(i).padStart(2, "0")}.c`, d));
    await upload(storage, up.changes([]).end().bytes());
    const before = db.prepare("SELECT id, pack, offset, stored FROM blobs ORDER BY id").all();
    const c = new Compactor(storage, { encode: broken });
    while (await c.step(1000)) { /* until done */ }
    await c.close();
    // Nothing shrank (every new encoding was refused), nothing was lost.
    assertEquals(c.saved, 0);
    const after = db.prepare("SELECT id, stored FROM blobs ORDER BY id").all();
    assertEquals(
      after.map((r) => r.stored),
      before.map((r) => r.stored),
      "stored sizes unchanged: the originals stayed in use",
    );
    for (const r of hashes(db)) {
      assertEquals(await contentOf(storage, r.hash), files[Number(r.path.slice(1, 3))], r.path);
    }
    assert((await verifyStore(storage)).ok, "verify is clean");
    // The same store with a sound encoder does recompress.
    db.exec("UPDATE blobs SET level = NULL");
    const good = new Compactor(storage);
    while (await good.step(1000)) { /* until done */ }
    await good.close();
    assert(good.saved > 0, "a sound encoder saves bytes");
    assert((await verifyStore(storage)).ok, "verify is clean after recompression");
  } finally {
    await storage.close();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the compactor marks a blob whose stored bytes decode to other content, and an upload repairs it", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "keep-enc-" });
  const { storage, db } = await open(dir);
  try {
    const data = text(5000, 3);
    const send = (parent: string | null) =>
      upload(
        storage,
        new Upload().commit(commitHeader(parent)).file("a.c", data).changes([]).end().bytes(),
      );
    const first = (await send(null)).commit;
    // Rewrite the blob's bytes in its pack as a valid member of other content
    // (what an unchecked encoder could once have stored).
    const row = db.prepare("SELECT pack, offset, stored FROM blobs").get() as {
      pack: number;
      offset: number;
      stored: number;
    };
    const wrong = data.slice();
    wrong[10] ^= 1;
    const member = encodeMember(wrong, 0);
    const packPath = (storage.blobs as LocalBlobStore).packPath(Number(row.pack));
    const f = Deno.openSync(packPath, { write: true });
    f.seekSync(Number(row.offset), Deno.SeekMode.Start);
    f.writeSync(member);
    f.close();
    db.prepare("UPDATE blobs SET stored = ?").run(member.length);
    const c = new Compactor(storage);
    while (await c.step(1000)) { /* until done */ }
    await c.close();
    assertEquals(c.damaged, 1);
    assertEquals(
      (db.prepare("SELECT flag FROM current WHERE path = 'a.c'").get() as { flag: string }).flag,
      "damaged",
    );
    // The next upload of that content replaces the bytes and clears the flag.
    const again = await send(first.id);
    assertEquals(again.repaired, 1);
    const [r] = hashes(db);
    assertEquals(await contentOf(storage, r.hash), data);
    assert((await verifyStore(storage)).ok, "verify is clean after the repair");
  } finally {
    await storage.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
