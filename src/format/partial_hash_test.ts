import { assert, assertEquals, assertMatch, assertThrows } from "../../tests/assert.ts";
import { randomBytes, rng } from "../../tests/seeded.ts";
import xxhash from "xxhash-wasm";
import {
  PARTIAL_SPAN,
  partialHash,
  PartialHasher,
  partialHashOfBytes,
  partialHashOfFile,
  readFullySync,
  tailStart,
} from "./partial_hash.ts";

const SIZES = [0, 1, 4095, 4096, 4097, 8191, 8192, 8193, 12_288, (1 << 20) + 3];

function streamed(data: Uint8Array, sizes: Iterable<number>): string {
  const h = new PartialHasher();
  let i = 0;
  for (const n of sizes) {
    if (i >= data.length) break;
    h.update(data.subarray(i, i + n));
    i += n;
  }
  if (i < data.length) h.update(data.subarray(i));
  return h.digest();
}

/** Chunk sizes: random, biased to the interesting range around PARTIAL_SPAN. */
function* randomSizes(seed: number): Generator<number> {
  const r = rng(seed);
  for (;;) {
    switch (r(5)) {
      case 0:
        yield r(3); // including empty chunks
        break;
      case 1:
        yield 1 + r(100);
        break;
      case 2:
        yield PARTIAL_SPAN - 2 + r(5);
        break;
      case 3:
        yield 1 + r(3 * PARTIAL_SPAN);
        break;
      default:
        yield 1 + r(100_000);
    }
  }
}

function* repeat(n: number): Generator<number> {
  for (;;) yield n;
}

/** The definition, spelled out with xxHash64 directly. */
async function reference(data: Uint8Array): Promise<string> {
  const { h64Raw } = await xxhash();
  const size = data.length;
  const head = data.subarray(0, Math.min(4096, size));
  const tail = data.subarray(Math.max(4096, size - 4096));
  const sz = new Uint8Array(8);
  new DataView(sz.buffer).setBigUint64(0, BigInt(size), true);
  const all = new Uint8Array(head.length + tail.length + 8);
  all.set(head, 0);
  all.set(tail, head.length);
  all.set(sz, head.length + tail.length);
  return h64Raw(all, 0n).toString(16).padStart(16, "0");
}

Deno.test("partialHashOfBytes follows the definition: head, tail and size", async () => {
  for (const size of SIZES) {
    const data = randomBytes(size, size);
    const h = partialHashOfBytes(data);
    assertMatch(h, /^[0-9a-f]{16}$/);
    assertEquals(h, await reference(data), `size ${size}`);
  }
  assertEquals(tailStart(0), 4096);
  assertEquals(tailStart(8192), 4096);
  assertEquals(tailStart(8193), 4097);
});

Deno.test("partialHashOfBytes ignores the middle but not the ends or the size", () => {
  const data = randomBytes(100_000, 1);
  const h = partialHashOfBytes(data);
  const middle = data.slice();
  middle[50_000] ^= 1;
  assertEquals(partialHashOfBytes(middle), h);
  for (const at of [0, 4095, 100_000 - 4096, 99_999]) {
    const changed = data.slice();
    changed[at] ^= 1;
    assert(partialHashOfBytes(changed) !== h, `byte ${at}`);
  }
  // Zero bytes of different lengths differ by the size alone.
  assert(partialHashOfBytes(new Uint8Array(10)) !== partialHashOfBytes(new Uint8Array(11)));
  assert(
    partialHashOfBytes(new Uint8Array(0)) !== partialHash(new Uint8Array(0), new Uint8Array(0), 1),
  );
});

Deno.test("PartialHasher equals partialHashOfBytes under any chunking", () => {
  for (const size of SIZES) {
    const data = randomBytes(size, size + 1);
    const want = partialHashOfBytes(data);
    assertEquals(streamed(data, []), want, `size ${size} whole`);
    if (size <= 16_384) assertEquals(streamed(data, repeat(1)), want, `size ${size} bytewise`);
    for (const n of [7, 4095, 4096, 4097, 8192]) {
      assertEquals(streamed(data, repeat(n)), want, `size ${size} by ${n}`);
    }
    for (let seed = 1; seed <= 12; seed++) {
      assertEquals(streamed(data, randomSizes(seed)), want, `size ${size} seed ${seed}`);
    }
  }
  // A big chunk after small ones, and small ones after a big one.
  const data = randomBytes(30_000, 5);
  const want = partialHashOfBytes(data);
  assertEquals(streamed(data, [10, 20, 20_000, 1, 1, 5000, 3]), want);
  assertEquals(streamed(data, [9000, 1, 4095, 1, 4096, 1]), want);
});

Deno.test("partialHashOfFile equals partialHashOfBytes on a real file", () => {
  const path = Deno.makeTempFileSync({ prefix: "keep-partial-" });
  try {
    for (const size of SIZES) {
      const data = randomBytes(size, size + 2);
      Deno.writeFileSync(path, data);
      using file = Deno.openSync(path, { read: true });
      assertEquals(partialHashOfFile(file, size), partialHashOfBytes(data), `size ${size}`);
      // The same file hashed twice (seeks, not sequential reads).
      assertEquals(partialHashOfFile(file, size), partialHashOfBytes(data));
    }
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("partialHashOfFile throws UnexpectedEof when the file is shorter than its size", () => {
  const path = Deno.makeTempFileSync({ prefix: "keep-partial-" });
  try {
    Deno.writeFileSync(path, randomBytes(5000, 1));
    using file = Deno.openSync(path, { read: true });
    assertThrows(
      () => partialHashOfFile(file, 5001),
      Deno.errors.UnexpectedEof,
      /^file shrank while being read$/,
    );
    assertThrows(
      () => partialHashOfFile(file, 20_000),
      Deno.errors.UnexpectedEof,
      /^file shrank while being read$/,
    );
    const buf = new Uint8Array(10);
    readFullySync(file, buf, 4990);
    assertThrows(() => readFullySync(file, buf, 4991), Deno.errors.UnexpectedEof);
  } finally {
    Deno.removeSync(path);
  }
});
