import { assertEquals } from "../../tests/assert.ts";
import { rng } from "../../tests/seeded.ts";
import { CDC_SIZES, memberEndsChunk } from "../format/fastcdc.ts";
import { MAX_MEMBER_RAW } from "../format/gzip_member.ts";
import { ChunkMembers } from "./upload.ts";

/** Where the server ends chunks, given the members the client wrote for chunks of `sizes`. */
function serverCuts(sizes: number[], pieceMax: number, rand: (n: number) => number): number[] {
  const members: number[] = [];
  const m = new ChunkMembers((raw) => members.push(raw.length));
  for (const size of sizes) {
    // A chunk arrives in pieces of any size (reads, cuts inside a read).
    for (let left = size; left > 0;) {
      const n = Math.min(left, 1 + rand(pieceMax));
      m.add(new Uint8Array(n));
      left -= n;
    }
    m.flush();
  }
  const cuts: number[] = [];
  let chunk = 0;
  let at = 0;
  for (const n of members) {
    chunk += n;
    at += n;
    if (memberEndsChunk(n, chunk)) {
      cuts.push(at);
      chunk = 0;
    }
  }
  if (chunk) cuts.push(at);
  return cuts;
}

Deno.test("ChunkMembers: the server ends chunks where the client cut, property-tested around the member size, min and max", () => {
  const { min, max } = CDC_SIZES;
  const full = MAX_MEMBER_RAW;
  const edges = [min, min + 1, full - 1, full, full + 1, max - 1, max, 2 * full - 1];
  for (let seed = 1; seed <= 200; seed++) {
    const rand = rng(seed);
    const sizes = Array.from(
      { length: 1 + rand(12) },
      () => rand(2) === 0 ? edges[rand(edges.length)] : min + rand(max - min + 1),
    );
    // The last chunk of a file may be shorter than min.
    if (rand(3) === 0) sizes.push(1 + rand(min));
    const want: number[] = [];
    let at = 0;
    for (const s of sizes) want.push(at += s);
    const pieceMax = [1 << 16, full, 3 * full][rand(3)];
    assertEquals(serverCuts(sizes, pieceMax, rand), want, `seed ${seed}: ${sizes.join(",")}`);
  }
});
