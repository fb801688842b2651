import { assert, assertEquals, assertThrows } from "../../tests/assert.ts";
import { concatBytes as concat } from "../platform/concat_bytes.ts";
import { randomBytes, rng } from "../../tests/seeded.ts";
import zlib from "node:zlib";
import { KeepError } from "../errors.ts";
import {
  autoLevel,
  decodeMember,
  decodeMemberTransient,
  encodeMember,
  fastZlib,
  MAX_MEMBER_BYTES,
  MAX_MEMBER_RAW,
  memberRawLength,
  MemberSplitter,
} from "./gzip_member.ts";

const encoder = new TextEncoder();

// ---------------------------------------------------------------- helpers

/** Compressible text of `n` bytes. */
function text(n: number, seed = 1): Uint8Array {
  const r = rng(seed);
  const words = ["int", "main", "(void)", "{", "return", "0;", "}", "\n", "static", "const"];
  let s = "";
  while (s.length < n) s += words[r(words.length)] + " ";
  return encoder.encode(s.slice(0, n));
}

/** A plain Uint8Array view (node:zlib hands out Buffers, which deep equality tells apart). */
function plain(b: Uint8Array): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function u32(b: Uint8Array, off: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off, true);
}

function setU32(b: Uint8Array, off: number, v: number): Uint8Array {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(off, v, true);
  return b;
}

/** A member with the Keep header around an arbitrary deflate body. */
function handMember(body: Uint8Array, raw: number, crc: number, isize = raw): Uint8Array {
  const m = new Uint8Array(24 + body.length + 8);
  m.set([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 12, 0, 0x4b, 0x50, 8, 0]);
  setU32(m, 16, m.length);
  setU32(m, 20, raw);
  m.set(body, 24);
  setU32(m, m.length - 8, crc);
  return setU32(m, m.length - 4, isize);
}

/** Splits `stream` into members, pushing chunks of the given sizes. */
function split(stream: Uint8Array, sizes: number[] = [], transient = false): Uint8Array[] {
  const s = new MemberSplitter();
  const out: Uint8Array[] = [];
  let i = 0;
  const drain = () => {
    // Transient members are only valid until the next call: copied at once.
    for (let m = s.next(transient); m; m = s.next(transient)) out.push(transient ? m.slice() : m);
  };
  for (const n of sizes) {
    if (i >= stream.length) break;
    s.push(stream.subarray(i, i + n));
    i += n;
    drain();
  }
  if (i < stream.length) s.push(stream.subarray(i));
  drain();
  s.end();
  assertEquals(s.offset, stream.length);
  return out;
}

function randomSplits(n: number, seed: number, max: number): number[] {
  const r = rng(seed);
  const out: number[] = [];
  for (let total = 0; total < n;) {
    const k = 1 + r(max);
    out.push(k);
    total += k;
  }
  return out;
}

function assertInvalid(fn: () => unknown, re: RegExp): KeepError {
  const err = assertThrows(fn, KeepError, re);
  assertEquals(err.code, "invalid");
  return err;
}

async function gzipCli(
  stream: Uint8Array,
): Promise<{ code: number; out: Uint8Array; err: string }> {
  const child = new Deno.Command("gzip", {
    args: ["-dc"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  const written = w.write(stream).then(() => w.close()).catch(() => {});
  const o = await child.output();
  await written;
  return { code: o.code, out: o.stdout, err: new TextDecoder().decode(o.stderr) };
}

// ---------------------------------------------------------------- encode / decode

Deno.test("encodeMember and decodeMember round-trip every level", () => {
  const payloads = [
    new Uint8Array(0),
    new Uint8Array([42]),
    text(1000),
    randomBytes(1000, 1),
    text(200_000, 2),
    randomBytes(70_000, 3),
  ];
  for (const raw of payloads) {
    for (let level = 0; level <= 9; level++) {
      const m = encodeMember(raw, level);
      assertEquals(u32(m, 16), m.length);
      assertEquals(memberRawLength(m), raw.length);
      assertEquals(plain(decodeMember(m)), raw, `level ${level}, ${raw.length} bytes`);
    }
  }
});

Deno.test("encodeMember writes Keep's gzip header and trailer", () => {
  const raw = encoder.encode("hello, hello, hello, hello");
  const m = encodeMember(raw, 6);
  assertEquals(
    [...m.subarray(0, 16)],
    [0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 12, 0, 0x4b, 0x50, 8, 0],
  );
  assertEquals(u32(m, 16), m.length);
  assertEquals(u32(m, 20), raw.length);
  assertEquals(u32(m, m.length - 8), zlib.crc32(raw));
  assertEquals(u32(m, m.length - 4), raw.length);
});

Deno.test("encodeMember stores level 0 and incompressible data in stored blocks", () => {
  for (
    const [n, blocks] of [[0, 1], [1, 1], [65535, 1], [65536, 2], [131070, 2], [131071, 3]]
  ) {
    const raw = randomBytes(n, n);
    // Deflate cannot shrink random data of this size; tiny payloads may still deflate.
    for (const level of n >= 65535 ? [0, 1, 9] : [0]) {
      const m = encodeMember(raw, level);
      assertEquals(m.length, 24 + n + 5 * blocks + 8, `${n} bytes at level ${level}`);
      assertEquals(plain(decodeMember(m)), raw);
    }
  }
  // A compressible payload deflates unless level 0 asks to store it.
  const t = text(65536);
  assertEquals(encodeMember(t, 0).length, 24 + 65536 + 10 + 8);
  assert(encodeMember(t, 1).length < 65536 / 2);
});

Deno.test("encodeMember and decodeMember handle 65535, 65536 and MAX_MEMBER_RAW bytes", () => {
  for (const n of [65535, 65536, MAX_MEMBER_RAW - 1, MAX_MEMBER_RAW]) {
    for (const raw of [randomBytes(n, n), text(n, n)]) {
      for (const level of [0, 1, 9]) {
        const m = encodeMember(raw, level);
        assert(m.length <= MAX_MEMBER_BYTES, `${m.length} > MAX_MEMBER_BYTES`);
        assertEquals(plain(decodeMember(m)), raw);
      }
    }
  }
  assertEquals(encodeMember(new Uint8Array(MAX_MEMBER_RAW), 0).length <= MAX_MEMBER_BYTES, true);
});

Deno.test("encodeMember refuses payloads over MAX_MEMBER_RAW", () => {
  assertThrows(
    () => encodeMember(new Uint8Array(MAX_MEMBER_RAW + 1), 1),
    RangeError,
    /^member payload too large$/,
  );
});

Deno.test("encodeMember output is gzip that node:zlib and gzip -dc read as one stream", async () => {
  const payloads = [
    text(5000),
    new Uint8Array(0),
    randomBytes(65536, 4),
    text(MAX_MEMBER_RAW, 5),
    encoder.encode("안녕하세요 🎉\n"),
  ];
  const members = payloads.map((p, i) => encodeMember(p, i % 3 === 0 ? 0 : i));
  const stream = concat(members);
  const want = concat(payloads);
  assertEquals(new Uint8Array(zlib.gunzipSync(stream)), want);
  const cli = await gzipCli(stream);
  assertEquals(cli.err, "");
  assertEquals(cli.code, 0);
  assertEquals(cli.out, want);
});

Deno.test("decodeMember rejects a CRC mismatch", () => {
  for (const level of [0, 1]) {
    const m = encodeMember(text(3000), level);
    m[m.length - 8] ^= 1;
    assertInvalid(
      () => decodeMember(m),
      /^Cannot read archive: corrupt gzip member \(CRC mismatch\)$/,
    );
    // The same with the payload changed instead.
    const n = encodeMember(encoder.encode("abcdef"), 0);
    n[24 + 5] ^= 0x20;
    assertInvalid(
      () => decodeMember(n),
      /^Cannot read archive: corrupt gzip member \(CRC mismatch\)$/,
    );
  }
});

Deno.test("decodeMember rejects an ISIZE mismatch", () => {
  for (const level of [0, 1]) {
    const m = encodeMember(text(3000), level);
    setU32(m, m.length - 4, 2999);
    assertInvalid(
      () => decodeMember(m),
      /^Cannot read archive: corrupt gzip member \(isize mismatch\)$/,
    );
  }
});

Deno.test("decodeMember rejects a payload shorter than declared", () => {
  for (const level of [0, 1]) {
    const raw = text(3000);
    const m = encodeMember(raw, level);
    setU32(m, 20, 3001);
    assertInvalid(
      () => decodeMember(m),
      /^Cannot read archive: corrupt gzip member \(length 3000, header says 3001\)$/,
    );
  }
});

Deno.test("decodeMember stops a deflate bomb at its declared raw length", () => {
  // 1 MiB of zeros deflates to about 1 KiB; declare 1000 bytes.
  const zeros = new Uint8Array(MAX_MEMBER_RAW);
  const body = zlib.deflateRawSync(zeros, { level: 9 });
  assert(body.length < 2000);
  const m = handMember(body, 1000, zlib.crc32(zeros.subarray(0, 1000)));
  assertInvalid(
    () => decodeMember(m),
    /^Cannot read archive: corrupt gzip member \(inflates past its declared size\)$/,
  );
  // A member declaring 0 bytes whose stream holds one.
  const one = handMember(zlib.deflateRawSync(new Uint8Array(2)), 0, 0);
  assertInvalid(
    () => decodeMember(one),
    /^Cannot read archive: corrupt gzip member \(inflates past its declared size\)$/,
  );
  // Also through the stored fast path: one stored block longer than declared.
  const stored = encodeMember(randomBytes(100, 1), 0);
  setU32(stored, 20, 50);
  assertInvalid(
    () => decodeMember(stored),
    /^Cannot read archive: corrupt gzip member \(inflates past its declared size\)$/,
  );
});

Deno.test("decodeMember rejects bytes after the deflate data inside a member", async () => {
  const raw = text(3000);
  const body = zlib.deflateRawSync(raw, { level: 1 });
  const junk = handMember(concat([body, encoder.encode("junk")]), raw.length, zlib.crc32(raw));
  assertInvalid(
    () => decodeMember(junk),
    /^Cannot read archive: corrupt gzip member \(4 bytes after the deflate data\)$/,
  );
  // gzip itself would take the junk as the trailer: such a member is not gzip.
  assert((await gzipCli(junk)).code !== 0);
  // Without the junk, both agree.
  const good = handMember(body, raw.length, zlib.crc32(raw));
  assertEquals(plain(decodeMember(good)), raw);
  assertEquals((await gzipCli(good)).out, raw);
});

Deno.test("decodeMember rejects a truncated or broken deflate body", () => {
  const raw = text(50_000);
  const body = zlib.deflateRawSync(raw, { level: 6 });
  const cut = handMember(body.subarray(0, body.length - 100), raw.length, zlib.crc32(raw));
  assertInvalid(() => decodeMember(cut), /^Cannot read archive: corrupt gzip member \(.+\)$/);
  const reserved = handMember(new Uint8Array([0x07, 0, 0, 0, 0]), 0, 0); // BTYPE 11
  assertInvalid(() => decodeMember(reserved), /^Cannot read archive: corrupt gzip member \(.+\)$/);
});

Deno.test("members are coded through reused zlib streams, which a bad member does not break", () => {
  // Deno 2.9's node:zlib exposes the binding its sync calls use; if a
  // release drops it, Keep falls back to the one-shot calls (slower, and RSS
  // grows ~1 KB per call until a GC), and this test says so.
  assert(fastZlib(), "node:zlib's stream binding is not available: one-shot calls in use");
  const raw = text(50_000);
  const good = encodeMember(raw, 1);
  const body = zlib.deflateRawSync(raw, { level: 6 });
  const cut = handMember(body.subarray(0, body.length - 100), raw.length, zlib.crc32(raw));
  for (let round = 0; round < 3; round++) {
    assertInvalid(() => decodeMemberTransient(cut), /corrupt gzip member/);
    assertEquals(plain(decodeMemberTransient(good)), raw);
    assertInvalid(() => decodeMember(cut), /corrupt gzip member/);
    assertEquals(plain(decodeMember(good)), raw);
  }
  // The owned result survives later decodes; the transient one is reused.
  const owned = decodeMember(good);
  const other = encodeMember(text(50_000).map((b) => b ^ 1), 6);
  decodeMember(other);
  decodeMemberTransient(other);
  assertEquals(plain(owned), raw);
  // Plain deflate that zlib's one-shot inflate reads, as small as the one-shot deflate's.
  for (const level of [1, 2, 6, 9]) {
    const viaStream = encodeMember(raw, level).subarray(24, -8);
    assertEquals(plain(zlib.inflateRawSync(viaStream)), raw);
    const oneShot = zlib.deflateRawSync(raw, { level }).length;
    assert(Math.abs(viaStream.length - oneShot) <= oneShot / 100, `level ${level}`);
  }
});

Deno.test("decodeMember rejects input that is not a whole Keep member", () => {
  const m = encodeMember(text(100), 1);
  for (
    const [bad, re] of [
      [new Uint8Array(0), /\(not a Keep gzip member\)$/],
      [m.subarray(0, 20), /\(not a Keep gzip member\)$/],
      [new Uint8Array(zlib.gzipSync(text(100))), /\(not a Keep gzip member\)$/],
      [
        m.subarray(0, m.length - 1),
        new RegExp(`\\(${m.length - 1} bytes, header says ${m.length}\\)$`),
      ],
      [
        setU32(m.slice(), 20, MAX_MEMBER_RAW + 1),
        new RegExp(`\\(declares ${MAX_MEMBER_RAW + 1} raw bytes\\)$`),
      ],
    ] as const
  ) {
    assertInvalid(() => decodeMember(bad), re);
  }
});

// ---------------------------------------------------------------- MemberSplitter

function stream(count: number, seed: number): { members: Uint8Array[]; payloads: Uint8Array[] } {
  const r = rng(seed);
  const payloads: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const n = [0, 1, 100, 4000, 65535, 65536, 200_000][r(7)];
    payloads.push(r(2) ? text(n, i) : randomBytes(n, i));
  }
  return { payloads, members: payloads.map((p, i) => encodeMember(p, i % 4 === 0 ? 0 : 1)) };
}

Deno.test("MemberSplitter cuts members from any chunking", () => {
  const { members, payloads } = stream(40, 1);
  const bytes = concat(members);
  // All at once: many members in one chunk.
  assertEquals(split(bytes), members);
  // One byte at a time.
  const small = [0, 1, 100, 4000, 20_000].map((n, i) => encodeMember(text(n, i), i % 2));
  const smallBytes = concat(small);
  assertEquals(split(smallBytes, new Array(smallBytes.length).fill(1)), small);
  // Random splits, small and large, so members straddle chunks and chunks hold several.
  for (let seed = 1; seed <= 8; seed++) {
    const sizes = randomSplits(bytes.length, seed, seed % 2 ? 3000 : 300_000);
    assertEquals(split(bytes, sizes), members);
    assertEquals(split(bytes, sizes, true), members);
  }
  assertEquals(split(smallBytes, randomSplits(smallBytes.length, 9, 50)), small);
  assertEquals(split(bytes).map((m) => plain(decodeMember(m))), payloads);
});

Deno.test("MemberSplitter reports offsets and waits for whole members", () => {
  const a = encodeMember(text(500), 1);
  const b = encodeMember(randomBytes(500, 2), 0);
  const s = new MemberSplitter();
  assertEquals(s.next(), null);
  s.push(a.subarray(0, 23));
  assertEquals(s.next(), null); // not even a header yet
  s.push(a.subarray(23, a.length - 1));
  assertEquals(s.next(), null); // header, but not the whole member
  assertEquals(s.offset, 0);
  s.push(concat([a.subarray(a.length - 1), b.subarray(0, 30)]));
  assertEquals(s.next(), a);
  assertEquals(s.offset, a.length);
  assertEquals(s.next(), null);
  assertInvalid(
    () => s.end(),
    new RegExp(`^Cannot read archive: truncated gzip stream at offset ${a.length}$`),
  );
  s.push(b.subarray(30));
  assertEquals(s.next(), b);
  assertEquals(s.offset, a.length + b.length);
  s.end();
});

Deno.test("MemberSplitter rejects data that is not gzip", () => {
  assertInvalid(
    () => split(encoder.encode("this is not gzip data at all, not even close")),
    /^Cannot read archive: not gzip data at offset 0$/,
  );
  const a = encodeMember(text(100), 1);
  assertInvalid(
    () => split(concat([a, new Uint8Array(100)])),
    new RegExp(`^Cannot read archive: not gzip data at offset ${a.length}$`),
  );
});

Deno.test("MemberSplitter rejects gzip without Keep framing", () => {
  const plain = new Uint8Array(zlib.gzipSync(text(1000)));
  assertInvalid(
    () => split(plain),
    /^Cannot read archive: gzip member at offset 0 lacks Keep framing \(not written by keep\)$/,
  );
  // A different extra subfield, or a KP subfield of another length.
  for (const [off, v] of [[12, 0x41], [13, 0x41], [14, 9], [3, 0x0c], [10, 13]]) {
    const m = encodeMember(text(100), 1);
    m[off] = v;
    assertInvalid(() => split(m), /lacks Keep framing \(not written by keep\)$/);
  }
});

Deno.test("MemberSplitter rejects declared sizes over the limits", () => {
  const cases: [number, number][] = [
    [MAX_MEMBER_BYTES + 1, 100], // member too long
    [0xffffffff, 100],
    [32, 0], // shorter than header + trailer + 1
    [0, 0],
    [1000, MAX_MEMBER_RAW + 1], // payload too long
    [1000, 0xffffffff],
  ];
  for (const [total, raw] of cases) {
    const m = encodeMember(text(100), 1);
    setU32(m, 16, total);
    setU32(m, 20, raw);
    assertInvalid(
      () => split(m),
      new RegExp(
        `^Cannot read archive: corrupt gzip member \\(member at offset 0 declares ${total} bytes for ${raw}\\)$`,
      ),
    );
  }
  // The largest legal declaration is only waited for.
  const big = encodeMember(text(100), 1);
  setU32(big, 16, MAX_MEMBER_BYTES);
  setU32(big, 20, MAX_MEMBER_RAW);
  const s = new MemberSplitter();
  s.push(big);
  assertEquals(s.next(), null);
});

Deno.test("MemberSplitter.end throws on a truncated stream", () => {
  const { members } = stream(3, 5);
  const bytes = concat(members);
  for (const cut of [1, 23, 24, members[0].length - 1, members[0].length + 5, bytes.length - 1]) {
    let at = 0; // offset of the member the cut falls in
    for (const m of members) {
      if (at + m.length > cut) break;
      at += m.length;
    }
    assertInvalid(
      () => split(bytes.subarray(0, cut)),
      new RegExp(`^Cannot read archive: truncated gzip stream at offset ${at}$`),
    );
  }
  assertEquals(split(new Uint8Array(0)), []);
});

Deno.test("MemberSplitter rejects trailing junk after the last member", () => {
  const a = encodeMember(text(100), 1);
  // Short junk cannot be a member: the stream ends inside one.
  assertInvalid(
    () => split(concat([a, encoder.encode("junk")])),
    new RegExp(`^Cannot read archive: truncated gzip stream at offset ${a.length}$`),
  );
  // Longer junk is not gzip.
  assertInvalid(
    () => split(concat([a, encoder.encode("junk".repeat(10))])),
    new RegExp(`^Cannot read archive: not gzip data at offset ${a.length}$`),
  );
  // A gzip member of another writer after ours.
  assertInvalid(
    () => split(concat([a, new Uint8Array(zlib.gzipSync(text(10)))])),
    new RegExp(`^Cannot read archive: gzip member at offset ${a.length} lacks Keep framing`),
  );
});

// ---------------------------------------------------------------- autoLevel

Deno.test("autoLevel picks 0 for random data and 1 for text", () => {
  assertEquals(autoLevel(randomBytes(100_000, 1)), 0);
  assertEquals(autoLevel(randomBytes(1000, 2)), 0);
  assertEquals(autoLevel(new Uint8Array(zlib.gzipSync(text(100_000)))), 0);
  assertEquals(autoLevel(text(100_000)), 1);
  assertEquals(autoLevel(text(100)), 1);
  assertEquals(autoLevel(new Uint8Array(1 << 20)), 1);
  // Tiny payloads are not worth deflating.
  assertEquals(autoLevel(text(63)), 0);
  assertEquals(autoLevel(new Uint8Array(0)), 0);
  // The sample is the first 16 KiB: random head, text tail still counts as random.
  assertEquals(autoLevel(concat([randomBytes(16384, 3), text(100_000)])), 0);
});
