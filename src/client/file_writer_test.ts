import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../../tests/assert.ts";
import { noise } from "../../tests/craft.ts";
import { scopedTempDir } from "../../tests/helpers.ts";
import { lstatNs } from "../platform/fs_native.ts";
import { FileWriter } from "./file_writer.ts";

const T = 1_700_000_000_123_456_789n;

Deno.test("FileWriter.add: files appear with their content, mode and mtime after finish()", async () => {
  using dir = scopedTempDir("keep-writer-");
  const writer = new FileWriter();
  try {
    // More files than one batch, one of them larger than a batch's 4 MiB.
    const files = Array.from({ length: FileWriter.BATCH * 2 + 10 }, (_, i) => ({
      path: join(dir.path, `f${i}`),
      data: i === 7 ? noise(5 << 20, 1) : new TextEncoder().encode(`file ${i}\n`),
      mode: [0o644, 0o600, 0o755, 0o777][i % 4], // 0o777 is more than the umask lets through
      mtime: T + BigInt(i),
    }));
    for (const f of files) {
      // The data's buffer goes to the worker: the writer gets a copy, the test keeps its own.
      writer.add({ ...f, data: f.data.slice() });
      await writer.ready();
    }
    assertEquals(await writer.finish(), []);
    for (const f of files) {
      assertEquals(Deno.readFileSync(f.path), f.data, f.path);
      const st = lstatNs(f.path);
      assertEquals([st.kind, st.mode, st.mtime], ["file", f.mode, f.mtime], f.path);
    }
  } finally {
    writer.close();
  }
});

Deno.test("FileWriter.isPending is true right after add and false after finish", async () => {
  using dir = scopedTempDir("keep-writer-");
  const writer = new FileWriter();
  try {
    const path = join(dir.path, "a.txt");
    assert(!writer.isPending(path));
    writer.add({ path, data: new TextEncoder().encode("a"), mode: 0o644, mtime: T });
    assert(writer.isPending(path), "pending once handed over");
    assert(!writer.isPending(join(dir.path, "other")));
    assertEquals(await writer.finish(), []);
    assert(!writer.isPending(path), "not pending once written");
    assertEquals(Deno.readTextFileSync(path), "a");
  } finally {
    writer.close();
  }
});

Deno.test("FileWriter.finish returns the writes that failed; the others are written", async () => {
  using dir = scopedTempDir("keep-writer-");
  const writer = new FileWriter();
  try {
    const bad = join(dir.path, "no-such-dir", "x.txt");
    const good = join(dir.path, "y.txt");
    Deno.writeTextFileSync(join(dir.path, "exists.txt"), "mine");
    const job = (path: string) => ({ path, data: new Uint8Array([1, 2]), mode: 0o644, mtime: T });
    writer.add(job(bad));
    writer.add(job(join(dir.path, "exists.txt"))); // created exclusively: an existing file fails
    writer.add(job(good));
    const errors = await writer.finish();
    assertEquals(errors.map((e) => e.path), [bad, join(dir.path, "exists.txt")]);
    for (const e of errors) assertMatch(e.message, /\S/);
    assert(errors.every((e) => !e.message.includes("\n")), "one-line messages");
    assertEquals(Deno.readFileSync(good), new Uint8Array([1, 2]));
    assertEquals(Deno.readTextFileSync(join(dir.path, "exists.txt")), "mine");
    // The error list is per finish: the next one starts empty.
    assertEquals(await writer.finish(), []);
  } finally {
    writer.close();
  }
});

Deno.test("FileWriter.writeLarge: a verified large file is renamed into place; a failed one leaves nothing", async () => {
  using dir = scopedTempDir("keep-writer-");
  const writer = new FileWriter();
  try {
    const data = noise(3 * FileWriter.CHUNK + 12345, 2);
    data.fill(0, FileWriter.CHUNK, 2 * FileWriter.CHUNK); // a hole in the middle
    const good = join(dir.path, "big.bin");
    const bad = join(dir.path, "bad.bin");
    for (const [target, ok] of [[good, true], [bad, false]] as const) {
      writer.openLarge(`${target}.part`, target);
      assert(writer.isPending(target));
      // Odd-sized pieces, as inflated members come.
      for (let o = 0; o < data.length; o += 300_001) {
        writer.writeLarge(data.subarray(o, Math.min(o + 300_001, data.length)));
        await writer.ready();
      }
      writer.endLarge(ok, data.length, 0o640, T);
    }
    assertEquals(await writer.finish(), []);
    assert(!writer.isPending(good));
    assertEquals(Deno.readFileSync(good), data);
    const st = lstatNs(good);
    assertEquals([st.kind, st.mode, st.mtime], ["file", 0o640, T]);
    assertEquals([...Deno.readDirSync(dir.path)].map((e) => e.name), ["big.bin"]);
  } finally {
    writer.close();
  }
});

Deno.test("FileWriter.finish removes the temp file of a large file left open", async () => {
  using dir = scopedTempDir("keep-writer-");
  const writer = new FileWriter();
  try {
    const target = join(dir.path, "big.bin");
    writer.openLarge(`${target}.part`, target);
    writer.writeLarge(noise(FileWriter.CHUNK + 1, 3));
    assertEquals(await writer.finish(), []);
    assertEquals([...Deno.readDirSync(dir.path)], []);
  } finally {
    writer.close();
  }
});
