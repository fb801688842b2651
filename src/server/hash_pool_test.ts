import { createHash } from "node:crypto";
import { assert, assertEquals } from "../../tests/assert.ts";
import { noise } from "../../tests/craft.ts";
import { encodeMember, MAX_MEMBER_RAW } from "../format/gzip_member.ts";
import { PartialHasher } from "../format/partial_hash.ts";
import { Proof } from "../format/possession.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import { ChunkFault, HashPool, WorkerFailure } from "./hash_pool.ts";

/** Chunks of `data` at `cuts`, each stored as members of at most 1 MiB. */
function stored(data: Uint8Array, sizes: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  for (const n of sizes) {
    const members: Uint8Array[] = [];
    for (let i = 0; i < n; i += MAX_MEMBER_RAW) {
      members.push(encodeMember(data.subarray(at + i, at + Math.min(n, i + MAX_MEMBER_RAW)), 1));
    }
    out.push(concatBytes(members));
    at += n;
  }
  return out;
}

Deno.test("HashPool: files hashed on two workers at once match the hashes made here; a damaged chunk is named", async () => {
  using pool = new HashPool(2);
  const key = new Uint8Array(32).fill(7);
  const files = [1, 2, 3, 4, 5].map((seed) => {
    const sizes = Array.from({ length: 3 + seed }, (_, i) => (1 << 20) + 1000 * i + seed);
    const data = noise(sizes.reduce((a, b) => a + b, 0), seed);
    for (let i = 0; i < data.length; i += 3) data[i] = 65; // compressible in part
    return { sizes, data, chunks: stored(data, sizes) };
  });
  const got = await Promise.all(
    files.map((f, n) =>
      pool.hash(f.sizes, (i) => Promise.resolve(f.chunks[i].slice()), n % 2 ? key : null)
    ),
  );
  files.forEach((f, n) => {
    const xxh = new PartialHasher();
    xxh.update(f.data);
    const mac = new Proof(key);
    mac.update(f.data);
    assertEquals(got[n], {
      hash: createHash("sha256").update(f.data).digest("hex"),
      xxh: xxh.digest(),
      mac: n % 2 ? mac.digest() : null,
    });
  });
  // A flipped byte in the third chunk's deflate data: a fault naming chunk 2,
  // and the pool goes on hashing the next file.
  const f = files[0];
  const bad = f.chunks.map((c) => c.slice());
  bad[2][bad[2].length - 20] ^= 0xff;
  let fault: unknown = null;
  try {
    await pool.hash(f.sizes, (i) => Promise.resolve(bad[i]), null);
  } catch (err) {
    fault = err;
  }
  assert(fault instanceof ChunkFault, String(fault));
  assertEquals(fault.index, 2);
  // A chunk that holds fewer raw bytes than its row says.
  const short = [...f.sizes];
  short[1] += 1;
  let fault2: unknown = null;
  try {
    await pool.hash(short, (i) => Promise.resolve(f.chunks[i].slice()), null);
  } catch (err) {
    fault2 = err;
  }
  assert(fault2 instanceof ChunkFault && fault2.index === 1, String(fault2));
  const again = await pool.hash(f.sizes, (i) => Promise.resolve(f.chunks[i].slice()), null);
  assertEquals(again.hash, createHash("sha256").update(f.data).digest("hex"));
});

/** A worker module in a temp file: `body` runs in it. */
function workerOf(body: string): string {
  const path = Deno.makeTempFileSync({ suffix: ".js" });
  Deno.writeTextFileSync(path, body);
  return new URL(`file://${path}`).href;
}

/** Settles within 10 s, or fails the test (a hang). */
function settled<T>(p: Promise<T>): Promise<PromiseSettledResult<T>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    Promise.allSettled([p]).then((r) => r[0]),
    new Promise<never>((_, reject) =>
      timer = setTimeout(() => reject(new Error("hash did not settle within 10 s")), 10_000)
    ),
  ]).finally(() => clearTimeout(timer));
}

Deno.test("HashPool: a worker that dies, or never starts, fails its hash with WorkerFailure and nothing waits forever; close fails hashes in progress", async () => {
  const read = () => Promise.resolve(new Uint8Array(10));
  // Dies on its first chunk (an uncaught error ends a worker).
  {
    using pool = new HashPool(
      2,
      workerOf(
        `self.onmessage = (ev) => { if (ev.data.t === "chunk") throw new Error("boom\\nsecond line"); };
         self.postMessage({ t: "ready", id: 0 });`,
      ),
    );
    const all = await Promise.all([0, 1, 2, 3].map(() => settled(pool.hash([10, 10], read, null))));
    for (const r of all) {
      assert(r.status === "rejected" && r.reason instanceof WorkerFailure, String(r));
      assert(!r.reason.message.includes("\n"), r.reason.message);
    }
  }
  // Fails to load.
  {
    using pool = new HashPool(2, workerOf(`throw new Error("cannot load");`));
    const all = await Promise.all([0, 1, 2].map(() => settled(pool.hash([10], read, null))));
    for (const r of all) {
      assert(r.status === "rejected" && r.reason instanceof WorkerFailure, String(r));
    }
  }
  // Never answers: close() fails the hash in progress and the one waiting.
  {
    const pool = new HashPool(
      1,
      workerOf(`self.onmessage = () => {}; self.postMessage({ t: "ready", id: 0 });`),
    );
    const a = settled(pool.hash([10], read, null));
    const b = settled(pool.hash([10], read, null));
    await new Promise((r) => setTimeout(r, 300));
    pool.close();
    for (const r of [await a, await b]) {
      assert(r.status === "rejected" && r.reason instanceof WorkerFailure, String(r));
    }
  }
});
