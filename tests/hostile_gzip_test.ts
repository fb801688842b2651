/**
 * Hostile uploads at the gzip level: Keep member framing (plain gzip, a
 * bare tar), truncated streams, corrupt members (CRC, ISIZE, KP lengths) and
 * members that inflate past their declared size. The common checks are in
 * tests/hostile.ts.
 */

import { assert } from "./assert.ts";
import { crc32, deflateRaw, flip, gunzip, handMember, noise, plainGzip } from "./craft.ts";
import { hostile, MiB, onHead, refuse } from "./hostile.ts";

// ---- gzip framing ---------------------------------------------------------

hostile("refuses a truncated gzip stream", async (c) => {
  const up = onHead(c).file("big.bin", noise(3 * MiB, 9)).changes().end();
  const whole = up.bytes();
  let cut = 0;
  for (const p of up.parts.slice(0, up.index("entry:big.bin:data2"))) cut += p.bytes.length;
  await refuse(
    c,
    "cut inside the third data member",
    whole.subarray(0, cut + 1000),
    400,
    "invalid",
    /truncated gzip stream/,
  );
  await refuse(
    c,
    "cut inside a member header",
    whole.subarray(0, cut + 10),
    400,
    "invalid",
    /truncated gzip stream/,
  );
  await refuse(
    c,
    "cut before the end member",
    whole.subarray(0, whole.length - up.parts[up.parts.length - 1].bytes.length),
    400,
    "invalid",
    /truncated/,
  );
  await refuse(c, "first 10 bytes only", whole.subarray(0, 10), 400, "invalid", /truncated/);
});

hostile("refuses a corrupt gzip member (CRC)", async (c) => {
  const big = () => onHead(c).file("big.bin", noise(3 * MiB, 11));
  await refuse(
    c,
    "CRC field of the third data member",
    big().replace("entry:big.bin:data2", (m) => flip(m, -8)).changes().end(),
    400,
    "invalid",
    /CRC mismatch/,
  );
  await refuse(
    c,
    "a payload byte of a stored data member",
    big().replace("entry:big.bin:data1", (m) => flip(m, 5000, 0x01)).changes().end(),
    400,
    "invalid",
    /CRC mismatch/,
  );
  await refuse(
    c,
    "ISIZE of a header member",
    big().changes().replace("changes:header", (m) => flip(m, -1, 0x01)).end(),
    400,
    "invalid",
    /corrupt gzip member/,
  );
  await refuse(
    c,
    "a byte inside a deflated header member",
    onHead(c).file("a.txt", "a").replace("entry:a.txt:header", (m) => flip(m, 40)).changes()
      .end(),
    400,
    "invalid",
    /corrupt gzip member/,
  );
  await refuse(
    c,
    "KP member length too short",
    big().replace("entry:big.bin:data0", (m) => {
      const b = m.slice();
      new DataView(b.buffer).setUint32(16, 100, true);
      return b;
    }).changes().end(),
    400,
    "invalid",
    /Cannot read archive/,
  );
});

hostile("refuses plain gzip without Keep framing", async (c) => {
  const tar = gunzip(onHead(c).file("a.txt", "a").changes().end().bytes());
  await refuse(c, "gzip of the tar", plainGzip(tar), 400, "invalid", /lacks Keep framing/);
  await refuse(c, "uncompressed tar", tar, 400, "invalid", /not gzip data/);
  const tail = onHead(c).file("a.txt", "a").changes().end();
  const last = tail.parts.length - 1;
  tail.parts[last] = { label: "end", bytes: plainGzip(new Uint8Array(1024)) };
  await refuse(c, "Keep members, then a plain gzip member", tail, 400, "invalid", /Keep framing/);
});

hostile("refuses a tar bomb: a member that inflates past its declared size", async (c) => {
  const zeros = new Uint8Array(64 * MiB);
  const bomb = handMember({
    body: deflateRaw(zeros),
    rawLen: 1024,
    crc: crc32(zeros.subarray(0, 1024)),
  });
  assert(bomb.length < 200 * 1024, `bomb member of ${bomb.length} bytes`);
  await refuse(
    c,
    "64 MiB of zeros in a member declaring 1 KiB",
    onHead(c).file("bomb.bin", new Uint8Array(1024)).replace("entry:bomb.bin:data0", () => bomb)
      .changes().end(),
    400,
    "invalid",
    /inflates past its declared size/,
  );
  await refuse(
    c,
    "a member declaring 64 MiB raw",
    onHead(c).file("bomb.bin", new Uint8Array(1024)).replace(
      "entry:bomb.bin:data0",
      () => handMember({ body: deflateRaw(zeros), rawLen: 64 * MiB, crc: crc32(zeros) }),
    ).changes().end(),
    400,
    "invalid",
    /corrupt gzip member/,
  );
});
