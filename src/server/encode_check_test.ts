/**
 * The server stores only encodings it has checked: with a deliberately
 * broken encoder (members that decode, with valid CRCs, to other bytes),
 * ingest's re-encoding and the compactor keep correct bytes, and verify
 * stays clean.
 */

import { join } from "node:path";
import { assert, assertEquals } from "../../tests/assert.ts";
import { commitHeader, rechunk, Upload } from "../../tests/craft.ts";
import { BlobStore } from "./storage/local_blobs.ts";
import { Compactor } from "./compactor.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import {
  decodeMember,
  encodeMember,
  type MemberEncoder,
  MemberSplitter,
} from "../format/gzip_member.ts";
import { IndexDb } from "./storage/sqlite_index.ts";
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

function open(dir: string): { index: IndexDb; store: BlobStore } {
  const index = IndexDb.open(join(dir, "index.db"));
  return { index, store: BlobStore.open(dir, index, { clean: true }) };
}

/** The raw bytes of a stored blob, decoded member by member. */
function contentOf(store: BlobStore, hex: string): Uint8Array {
  const s = new MemberSplitter();
  const out: Uint8Array[] = [];
  for (const chunk of store.read(hex)) {
    s.push(chunk);
    for (let m = s.next(); m; m = s.next()) out.push(decodeMember(m));
  }
  s.end();
  return concatBytes(out);
}

function hashes(index: IndexDb): { path: string; hash: string }[] {
  return index.db.prepare("SELECT path, lower(hex(hash)) AS hash FROM current WHERE type = 'f'")
    .all() as { path: string; hash: string }[];
}

Deno.test("ingest re-encodes straddling members with a broken encoder and still stores the right bytes", () => {
  // Members cut anywhere: inside headers, data and padding.
  for (const cut of [511, 1000, 4096, 7000, 65536]) {
    const dir = Deno.makeTempDirSync({ prefix: "keep-enc-" });
    const { index, store } = open(dir);
    try {
      const files = [0, 1, 2, 3].map((i) => text(3000 + i * 5000, i + 1));
      const up = new Upload().commit(commitHeader(null));
      files.forEach((d, i) => up.file(`f${i}.c`, d));
      const ingest = new Ingest(index, store, "app", { encode: broken });
      ingest.push(rechunk(up.changes([]).end().bytes(), cut));
      ingest.finish();
      const rows = hashes(index);
      assertEquals(rows.length, 4);
      for (const r of rows) {
        const i = Number(r.path.slice(1, 2));
        assertEquals(contentOf(store, r.hash), files[i], `${r.path}, members of ${cut} bytes`);
      }
      const report = verifyStore(index, store);
      assert(report.ok, JSON.stringify(report.damaged));
    } finally {
      index.close();
      Deno.removeSync(dir, { recursive: true });
    }
  }
});

Deno.test("the compactor with a broken encoder moves no row to a wrong encoding", () => {
  const dir = Deno.makeTempDirSync({ prefix: "keep-enc-" });
  const { index, store } = open(dir);
  try {
    const files = Array.from({ length: 20 }, (_, i) => text(2000 + i * 700, i + 10));
    const up = new Upload().commit(commitHeader(null));
    files.forEach((d, i) => up.file(`f${String(i).padStart(2, "0")}.c`, d));
    const ingest = new Ingest(index, store, "app");
    ingest.push(up.changes([]).end().bytes());
    ingest.finish();
    const before = index.db.prepare("SELECT id, pack, offset, stored FROM blobs ORDER BY id").all();
    const c = new Compactor(index, store, { encode: broken });
    while (c.step(1000)) { /* until done */ }
    c.close();
    // Nothing shrank (every new encoding was refused), nothing was lost.
    assertEquals(c.saved, 0);
    const after = index.db.prepare("SELECT id, stored FROM blobs ORDER BY id").all();
    assertEquals(
      after.map((r) => r.stored),
      before.map((r) => r.stored),
      "stored sizes unchanged: the originals stayed in use",
    );
    for (const r of hashes(index)) {
      assertEquals(contentOf(store, r.hash), files[Number(r.path.slice(1, 3))], r.path);
    }
    assert(verifyStore(index, store).ok, "verify is clean");
    // The same store with a sound encoder does recompress.
    index.db.exec("UPDATE blobs SET level = NULL");
    const good = new Compactor(index, store);
    while (good.step(1000)) { /* until done */ }
    good.close();
    assert(good.saved > 0, "a sound encoder saves bytes");
    assert(verifyStore(index, store).ok, "verify is clean after recompression");
  } finally {
    index.close();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the compactor marks a blob whose stored bytes decode to other content, and an upload repairs it", () => {
  const dir = Deno.makeTempDirSync({ prefix: "keep-enc-" });
  const { index, store } = open(dir);
  try {
    const data = text(5000, 3);
    const upload = (parent: string | null) => {
      const up = new Upload().commit(commitHeader(parent)).file("a.c", data);
      const ingest = new Ingest(index, store, "app");
      ingest.push(up.changes([]).end().bytes());
      return ingest;
    };
    const first = upload(null).finish();
    // Rewrite the blob's bytes in its pack as a valid member of other content
    // (what an unchecked encoder could once have stored).
    const row = index.db.prepare("SELECT pack, offset, stored FROM blobs").get() as {
      pack: number;
      offset: number;
      stored: number;
    };
    const wrong = data.slice();
    wrong[10] ^= 1;
    const member = encodeMember(wrong, 0);
    const f = Deno.openSync(store.packPath(Number(row.pack)), { write: true });
    f.seekSync(Number(row.offset), Deno.SeekMode.Start);
    f.writeSync(member);
    f.close();
    index.db.prepare("UPDATE blobs SET stored = ?").run(member.length);
    const c = new Compactor(index, store);
    while (c.step(1000)) { /* until done */ }
    c.close();
    assertEquals(c.damaged, 1);
    assertEquals(
      (index.db.prepare("SELECT flag FROM current WHERE path = 'a.c'").get() as { flag: string })
        .flag,
      "damaged",
    );
    // The next upload of that content replaces the bytes and clears the flag.
    const again = upload(first.id);
    again.finish();
    assertEquals(again.repairedBlobs, 1);
    const [r] = hashes(index);
    assertEquals(contentOf(store, r.hash), data);
    assert(verifyStore(index, store).ok, "verify is clean after the repair");
  } finally {
    index.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
