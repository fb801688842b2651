import { assert, assertEquals, assertThrows } from "../../tests/assert.ts";
import { noise } from "../../tests/craft.ts";
import { createHash } from "node:crypto";
import { CDC_SIZES, type CdcSizes, chunkCuts, ChunkHasher, FastCdc } from "./fastcdc.ts";

/** A seeded xorshift for the property tests (reproducible failures: the seed is in the message). */
function rng(seed: number): () => number {
  let x = (seed * 0x9e3779b1) >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

function sizesOf(cuts: number[]): number[] {
  return cuts.map((c, i) => c - (i ? cuts[i - 1] : 0));
}

/** Data with long runs (text-like repeats and zeros), not only noise. */
function mixed(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  const out = noise(n, seed);
  for (let o = 0; o < n;) {
    const len = Math.floor(r() * 200_000);
    if (r() < 0.3) out.fill(r() < 0.5 ? 0 : 0x41, o, Math.min(n, o + len));
    o += len + Math.floor(r() * 300_000);
  }
  return out;
}

function sha256(d: Uint8Array): string {
  return createHash("sha256").update(d).digest("hex");
}

const SMALL: CdcSizes = { min: 2048, avg: 8192, max: 32768 };

Deno.test("FastCdc: cuts are the same whatever the pieces the stream comes in", () => {
  for (let seed = 1; seed <= 30; seed++) {
    const r = rng(seed);
    const data = mixed(200_000 + Math.floor(r() * 400_000), seed);
    const whole = chunkCuts(data, SMALL);
    const cdc = new FastCdc(SMALL);
    const cuts: number[] = [];
    for (let o = 0; o < data.length;) {
      // Pieces of 0 bytes up to past max, around every threshold.
      const pick = [0, 1, 31, 32, 33, SMALL.min - 1, SMALL.min, SMALL.avg + 1, SMALL.max + 7];
      const len = r() < 0.5 ? pick[Math.floor(r() * pick.length)] : Math.floor(r() * 50_000);
      cuts.push(...cdc.push(data.subarray(o, o + len)));
      o += len;
    }
    cuts.push(...cdc.end());
    assertEquals(cuts, whole, `seed ${seed}`);
  }
});

Deno.test("FastCdc: every chunk is within min..max except the last, which is 1..max", () => {
  let checked = 0;
  for (const sizes of [SMALL, { min: 64, avg: 64, max: 64 }, { min: 100, avg: 1000, max: 1000 }]) {
    for (let seed = 1; seed <= 20; seed++) {
      const n =
        [0, 1, sizes.min - 1, sizes.min, sizes.min + 1, sizes.max, sizes.max + 1][seed % 7] +
        (seed > 7 ? Math.floor(rng(seed)() * 300_000) : 0);
      const data = mixed(n, seed);
      const cuts = chunkCuts(data, sizes);
      const s = sizesOf(cuts);
      checked += s.length;
      assertEquals(s.reduce((a, b) => a + b, 0), n, `seed ${seed}: sizes add up`);
      if (n === 0) assertEquals(cuts, []);
      for (let i = 0; i < s.length; i++) {
        const last = i === s.length - 1;
        assert(s[i] <= sizes.max, `seed ${seed}: chunk ${i} of ${s[i]} > max`);
        assert(last ? s[i] >= 1 : s[i] >= sizes.min, `seed ${seed}: chunk ${i} of ${s[i]} < min`);
      }
    }
  }
  assert(checked > 1000, `only ${checked} chunks checked`);
  // Zeros have no content to cut on: every chunk is max.
  assertEquals(sizesOf(chunkCuts(new Uint8Array(100_000), SMALL)), [32768, 32768, 32768, 1696]);
});

Deno.test("FastCdc: an insertion or deletion moves only the cuts near it", () => {
  // On data with content everywhere: in a long run of one byte value there is
  // nothing to cut on, so cuts there sit every max bytes from the run's first
  // cut and move with an edit before them until the run ends (restic alike).
  let lostTotal = 0;
  for (let seed = 1; seed <= 40; seed++) {
    const r = rng(seed);
    const data = noise(1_000_000, seed);
    const at = Math.floor(r() * data.length);
    const k = 1 + Math.floor(r() * 5000);
    const edited = r() < 0.5
      ? new Uint8Array([...data.subarray(0, at), ...noise(k, seed + 99), ...data.subarray(at)])
      : new Uint8Array([...data.subarray(0, at), ...data.subarray(Math.min(data.length, at + k))]);
    const delta = edited.length - data.length;
    const before = chunkCuts(data, SMALL);
    const after = new Set(chunkCuts(edited, SMALL));
    // Cuts before the edit stay; cuts well after it come back shifted by the edit.
    const lost = before.filter((c) =>
      c <= at ? !after.has(c) : c > at + Math.abs(delta) && !after.has(c + delta)
    );
    // The edited chunk's end, and the cuts after it until one lands on the
    // same bytes again: a cut's mask depends on its distance from the previous
    // cut (normalized chunking), so a shifted start can pass over the old cuts
    // for a few chunks.
    assert(lost.length <= 8, `seed ${seed}: ${lost.length} of ${before.length} cuts moved`);
    lostTotal += lost.length;
  }
  assert(lostTotal <= 100, `${lostTotal} cuts moved over 40 edits`);
});

Deno.test("FastCdc with Keep's sizes: chunks of a random stream average near CDC_SIZES.avg", () => {
  const data = noise(64 << 20, 5);
  const s = sizesOf(chunkCuts(data));
  const avg = data.length / s.length;
  assert(avg > 0.8 * CDC_SIZES.avg && avg < 1.5 * CDC_SIZES.avg, `average ${avg}`);
  assert(s.slice(0, -1).every((x) => x >= CDC_SIZES.min && x <= CDC_SIZES.max));
});

Deno.test("FastCdc refuses sizes out of order", () => {
  assertThrows(() => new FastCdc({ min: 10, avg: 5, max: 20 }), RangeError, /^Cannot chunk/);
  assertThrows(() => new FastCdc({ min: 8, avg: 8, max: 8 }), RangeError, /^Cannot chunk/);
});

Deno.test("FastCdc: bytes inserted at the front and in the middle of a 200 MB file make only a few new chunks", () => {
  const data = noise(200_000_000, 11);
  const chunks = (d: Uint8Array) => {
    const cuts = chunkCuts(d);
    return new Set(cuts.map((c, i) => sha256(d.subarray(i ? cuts[i - 1] : 0, c))));
  };
  const before = chunks(data);
  const front = noise(1000, 12);
  const middle = noise(5000, 13);
  const mid = 100_000_000;
  const edited = new Uint8Array(data.length + front.length + middle.length);
  edited.set(front, 0);
  edited.set(data.subarray(0, mid), front.length);
  edited.set(middle, front.length + mid);
  edited.set(data.subarray(mid), front.length + mid + middle.length);
  const after = chunks(edited);
  const fresh = [...after].filter((h) => !before.has(h)).length;
  assert(before.size > 300, `${before.size} chunks`);
  assert(fresh <= 12, `${fresh} new chunks of ${after.size}`);
});

Deno.test("ChunkHasher: the chunks of any split of a stream are chunkCuts' chunks, each hashed, with its bytes when kept", () => {
  const r = rng(181);
  const rand = (n: number) => Math.floor(r() * n);
  for (let round = 0; round < 12; round++) {
    const data = noise(CDC_SIZES.max * (1 + rand(6)) + rand(CDC_SIZES.max), round + 7);
    const cuts = chunkCuts(data);
    const want = cuts.map((end, i) => {
      const bytes = data.subarray(i ? cuts[i - 1] : 0, end);
      return { hash: createHash("sha256").update(bytes).digest("hex"), size: bytes.length };
    });
    const got: { hash: string; size: number }[] = [];
    let at = 0;
    const h = new ChunkHasher((hash, size, bytes) => {
      got.push({ hash, size });
      assertEquals(bytes!, data.subarray(at, at + size), `chunk ${got.length} bytes`);
      at += size;
    }, true);
    // Pieces of 1 byte to 3 MiB, cut at random (crossing chunk cuts and the max).
    for (let o = 0; o < data.length;) {
      const n = Math.min(data.length - o, 1 + rand(rand(2) ? 3 << 20 : 4096));
      h.push(data.subarray(o, o + n));
      o += n;
    }
    h.end();
    assertEquals(got, want, `round ${round}`);
  }
});
