import { assert, assertEquals, assertMatch, assertThrows } from "../../tests/assert.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import { rng } from "../../tests/seeded.ts";
import { KeepError } from "../errors.ts";
import { CDC_SIZES } from "./fastcdc.ts";
import {
  CHANGE_LINE_MAX,
  type ChangeRecord,
  changeRecordToJson,
  type Entry,
  entryFromJson,
  entryToJson,
  HAVE_CHUNKS_MAX,
  LineChunker,
  LineSplitter,
  parseChangeRecord,
  parseUploadHeader,
} from "./manifest.ts";

const encoder = new TextEncoder();
const HASH = "0123456789abcdef".repeat(4);
const XXH = "fedcba9876543210";
const I64_MAX = 9223372036854775807n;

function invalid(fn: () => unknown, re: RegExp, code = "invalid"): KeepError {
  const err = assertThrows(fn, KeepError, re);
  assertEquals(err.code, code);
  return err;
}

// ---------------------------------------------------------------- entries

const ENTRIES: Entry[] = [
  {
    path: "src/main.c",
    type: "f",
    size: 123,
    mode: 0o644,
    mtime: 1_700_000_000_123_456_789n,
    ctime: 1_700_000_001_000_000_000n,
    hash: HASH,
    xxh: XXH,
  },
  { path: "src", type: "d", size: 0, mode: 0o755, mtime: 0n, ctime: 0n },
  {
    path: "link",
    type: "l",
    size: 0,
    mode: 0o777,
    mtime: -1_500_000_000n,
    ctime: 5n,
    target: "../한국어/🎉",
  },
  {
    path: "한국어/파일.txt",
    type: "f",
    size: Number.MAX_SAFE_INTEGER,
    mode: 0o4755,
    mtime: I64_MAX,
    ctime: -I64_MAX - 1n,
    hash: HASH,
    flag: "unreadable",
  },
  { path: "empty", type: "f", size: 0, mode: 0, mtime: 1n, ctime: 1n, flag: "unsettled" },
];

Deno.test("entryToJson and entryFromJson round-trip every kind of entry", () => {
  for (const e of ENTRIES) {
    const line = entryToJson(e);
    assertEquals(line.includes("\n"), false);
    assertEquals(entryFromJson(JSON.parse(line)), e);
  }
});

Deno.test("entryToJson writes the short keys with times as decimal strings", () => {
  assertEquals(
    entryToJson(ENTRIES[0]),
    `{"p":"src/main.c","t":"f","s":123,"m":420,"mt":"1700000000123456789","ct":"1700000001000000000","h":"${HASH}","x":"${XXH}"}`,
  );
  assertEquals(
    entryToJson(ENTRIES[2]),
    '{"p":"link","t":"l","s":0,"m":511,"mt":"-1500000000","ct":"5","l":"../한국어/🎉"}',
  );
});

Deno.test("entryFromJson rejects bad entries with KeepError invalid", () => {
  const good = { p: "a", t: "f", s: 1, m: 0o644, mt: "1", ct: "2" };
  const cases: [unknown, RegExp][] = [
    [null, /^Cannot read manifest: entry is not an object$/],
    ["a", /^Cannot read manifest: entry is not an object$/],
    [42, /^Cannot read manifest: entry is not an object$/],
    [{ ...good, p: undefined }, /^Cannot read manifest: entry without a path$/],
    [{ ...good, p: 5 }, /^Cannot read manifest: entry without a path$/],
    [{ ...good, p: "" }, /^Cannot read manifest: "": empty path$/],
    [{ ...good, p: "/etc/passwd" }, /^Cannot read manifest: "\/etc\/passwd": absolute path$/],
    [{ ...good, p: "a/../b" }, /^Cannot read manifest: "a\/..\/b": path has a ".." component$/],
    [{ ...good, p: "a\0" }, /^Cannot read manifest: "a\\u0000": path contains NUL$/],
    [{ ...good, t: "x" }, /^Cannot read manifest: a: unknown type "x"$/],
    [{ ...good, t: undefined }, /^Cannot read manifest: a: unknown type undefined$/],
    [{ ...good, s: -1 }, /^Cannot read manifest: a: bad size$/],
    [{ ...good, s: 1.5 }, /^Cannot read manifest: a: bad size$/],
    [{ ...good, s: "1" }, /^Cannot read manifest: a: bad size$/],
    [{ ...good, s: 2 ** 53 }, /^Cannot read manifest: a: bad size$/],
    [{ ...good, m: 0o10000 }, /^Cannot read manifest: a: bad mode$/],
    [{ ...good, m: -1 }, /^Cannot read manifest: a: bad mode$/],
    [{ ...good, m: "644" }, /^Cannot read manifest: a: bad mode$/],
    [{ ...good, mt: 1 }, /^Cannot read manifest: a: bad mtime$/],
    [{ ...good, mt: "1.5" }, /^Cannot read manifest: a: bad mtime$/],
    [{ ...good, mt: "" }, /^Cannot read manifest: a: bad mtime$/],
    [{ ...good, mt: " 1" }, /^Cannot read manifest: a: bad mtime$/],
    [{ ...good, mt: "1".repeat(21) }, /^Cannot read manifest: a: bad mtime$/],
    [{ ...good, mt: (I64_MAX + 1n).toString() }, /^Cannot read manifest: a: bad mtime$/],
    [{ ...good, mt: "99999999999999999999" }, /^Cannot read manifest: a: bad mtime$/],
    [{ ...good, ct: undefined }, /^Cannot read manifest: a: bad ctime$/],
    [{ ...good, ct: (-I64_MAX - 2n).toString() }, /^Cannot read manifest: a: bad ctime$/],
    [{ ...good, h: HASH.toUpperCase() }, /^Cannot read manifest: a: bad hash$/],
    [{ ...good, h: HASH.slice(1) }, /^Cannot read manifest: a: bad hash$/],
    [{ ...good, h: null }, /^Cannot read manifest: a: bad hash$/],
    [{ ...good, x: "xyz" }, /^Cannot read manifest: a: bad partial hash$/],
    [{ ...good, x: HASH }, /^Cannot read manifest: a: bad partial hash$/],
    [{ ...good, t: "l", s: 0, l: "" }, /^Cannot read manifest: a: bad symlink target$/],
    [{ ...good, t: "l", s: 0, l: "a\0b" }, /^Cannot read manifest: a: bad symlink target$/],
    [{ ...good, t: "l", s: 0, l: 7 }, /^Cannot read manifest: a: bad symlink target$/],
    [{ ...good, fl: "gone" }, /^Cannot read manifest: a: unknown flag$/],
    [{ ...good, t: "l", s: 0 }, /^Cannot read manifest: a: symlink without target$/],
    [{ ...good, t: "d" }, /^Cannot read manifest: a: size on a non-file$/],
    [{ ...good, t: "l", l: "b" }, /^Cannot read manifest: a: size on a non-file$/],
    [{ ...good, l: "b" }, /^Cannot read manifest: a: symlink target on a non-symlink$/],
    [
      { ...good, t: "d", s: 0, l: "b" },
      /^Cannot read manifest: a: symlink target on a non-symlink$/,
    ],
  ];
  for (const [o, re] of cases) invalid(() => entryFromJson(o), re);
  // The base case itself is fine.
  assertEquals(entryFromJson(good), {
    path: "a",
    type: "f",
    size: 1,
    mode: 0o644,
    mtime: 1n,
    ctime: 2n,
  });
});

// ---------------------------------------------------------------- upload header

const HEADER = {
  format: 1,
  parent: "c0ffee".repeat(8),
  message: "build 42",
  tags: { branch: "main", "ci job": "7" },
  host: "builder",
  source: "/home/ci/app",
  scanTime: "1700000000123456789",
  granularity: "1",
};

Deno.test("parseUploadHeader accepts a good commit header", () => {
  assertEquals(parseUploadHeader(JSON.stringify(HEADER)), HEADER as never);
  // No parent (first commit), no tags, long message.
  const first = { ...HEADER, parent: null, tags: undefined, message: "m".repeat(65536) };
  assertEquals(parseUploadHeader(JSON.stringify(first)), { ...first, tags: {} } as never);
  // A null tags reads as no tags.
  assertEquals(parseUploadHeader(JSON.stringify({ ...HEADER, tags: null })).tags, {});
  // Negative and extreme ns values still fit.
  const times = { ...HEADER, scanTime: "-5", granularity: I64_MAX.toString() };
  assertEquals(parseUploadHeader(JSON.stringify(times)).granularity, I64_MAX.toString());
  // Unknown fields are dropped.
  const extra = parseUploadHeader(JSON.stringify({ ...HEADER, evil: true }));
  assertEquals("evil" in extra, false);
});

Deno.test("parseUploadHeader rejects bad commit headers with KeepError invalid", () => {
  const cases: [string, RegExp][] = [
    ["", /^Cannot read upload: commit header is not JSON$/],
    ["{", /^Cannot read upload: commit header is not JSON$/],
    ["null", /^Cannot read upload: unknown commit header format$/],
    ["[]", /^Cannot read upload: unknown commit header format$/],
    ['"x"', /^Cannot read upload: unknown commit header format$/],
    [
      JSON.stringify({ ...HEADER, format: 2 }),
      /^Cannot read upload: unknown commit header format$/,
    ],
    [
      JSON.stringify({ ...HEADER, format: "1" }),
      /^Cannot read upload: unknown commit header format$/,
    ],
    [
      JSON.stringify({ ...HEADER, parent: undefined }),
      /^Cannot read upload: commit header field parent is missing or too long$/,
    ],
    [
      JSON.stringify({ ...HEADER, parent: "a".repeat(65) }),
      /^Cannot read upload: commit header field parent is missing or too long$/,
    ],
    [JSON.stringify({ ...HEADER, tags: [] }), /^Cannot read upload: tags must be an object$/],
    [JSON.stringify({ ...HEADER, tags: "a=b" }), /^Cannot read upload: tags must be an object$/],
    [
      JSON.stringify({ ...HEADER, tags: { a: 1 } }),
      /^Cannot read upload: tags must map short strings to strings$/,
    ],
    [
      JSON.stringify({ ...HEADER, tags: { ["k".repeat(257)]: "v" } }),
      /^Cannot read upload: tags must map short strings to strings$/,
    ],
    [
      JSON.stringify({ ...HEADER, tags: { k: "v".repeat(4097) } }),
      /^Cannot read upload: tags must map short strings to strings$/,
    ],
    [
      JSON.stringify({ ...HEADER, scanTime: 1700000000 }),
      /^Cannot read upload: commit header field scanTime is missing or too long$/,
    ],
    [
      JSON.stringify({ ...HEADER, scanTime: "1".repeat(25) }),
      /^Cannot read upload: commit header field scanTime is missing or too long$/,
    ],
    [
      JSON.stringify({ ...HEADER, scanTime: "soon" }),
      /^Cannot read upload: scanTime and granularity must be ns integers$/,
    ],
    [
      JSON.stringify({ ...HEADER, scanTime: (I64_MAX + 1n).toString() }),
      /^Cannot read upload: scanTime and granularity must be ns integers$/,
    ],
    [
      JSON.stringify({ ...HEADER, granularity: "1.5" }),
      /^Cannot read upload: scanTime and granularity must be ns integers$/,
    ],
    [
      JSON.stringify({ ...HEADER, granularity: undefined }),
      /^Cannot read upload: commit header field granularity is missing or too long$/,
    ],
    [
      JSON.stringify({ ...HEADER, message: undefined }),
      /^Cannot read upload: commit header field message is missing or too long$/,
    ],
    [
      JSON.stringify({ ...HEADER, message: "m".repeat(65537) }),
      /^Cannot read upload: commit header field message is missing or too long$/,
    ],
    [
      JSON.stringify({ ...HEADER, host: "h".repeat(1025) }),
      /^Cannot read upload: commit header field host is missing or too long$/,
    ],
    [
      JSON.stringify({ ...HEADER, source: ["/"] }),
      /^Cannot read upload: commit header field source is missing or too long$/,
    ],
  ];
  for (const [text, re] of cases) invalid(() => parseUploadHeader(text), re);
});

// ---------------------------------------------------------------- change records

Deno.test("parseChangeRecord accepts each kind of record", () => {
  const records: ChangeRecord[] = [
    { op: "del", p: "old/file.o" },
    { op: "meta", e: ENTRIES[0] },
    { op: "meta", e: ENTRIES[1] },
    { op: "meta", e: ENTRIES[2] },
    { op: "keep", p: "locked.db", flag: "unreadable", reason: "Permission denied" },
    { op: "keep", p: "한국어", flag: "unsettled", reason: "" },
    { op: "drop", p: "growing.log", reason: "changed while being read" },
  ];
  for (const r of records) {
    const line = changeRecordToJson(r);
    assertEquals(line.includes("\n"), false);
    assertEquals(parseChangeRecord(line), r);
  }
  // A missing reason reads as "", a long one is cut to 1024 characters.
  assertEquals(parseChangeRecord('{"op":"drop","p":"a"}'), { op: "drop", p: "a", reason: "" });
  const long = parseChangeRecord(
    JSON.stringify({ op: "keep", p: "a", flag: "unreadable", reason: "r".repeat(5000) }),
  );
  assertEquals(long.op === "keep" && long.reason.length, 1024);
});

Deno.test("parseChangeRecord rejects bad records with KeepError invalid", () => {
  const e = JSON.parse(entryToJson(ENTRIES[0]));
  const cases: [string, RegExp][] = [
    ["", /^Cannot read upload: change record is not JSON$/],
    ['{"op":"del"', /^Cannot read upload: change record is not JSON$/],
    ["null", /^Cannot read upload: unknown change record$/],
    ["[]", /^Cannot read upload: unknown change record$/],
    ["7", /^Cannot read upload: unknown change record$/],
    ["{}", /^Cannot read upload: unknown change record$/],
    ['{"op":"rename","p":"a"}', /^Cannot read upload: unknown change record$/],
    ['{"op":"del"}', /^Cannot read upload: change record without path$/],
    ['{"op":"del","p":7}', /^Cannot read upload: change record without path$/],
    ['{"op":"del","p":"/etc"}', /^Cannot read upload: "\/etc": absolute path$/],
    [
      '{"op":"del","p":"a/../../b"}',
      /^Cannot read upload: "a\/..\/..\/b": path has a ".." component$/,
    ],
    ['{"op":"drop","p":""}', /^Cannot read upload: "": empty path$/],
    ['{"op":"keep","p":"a","flag":"lost"}', /^Cannot read upload: keep record with unknown flag$/],
    ['{"op":"keep","p":"a"}', /^Cannot read upload: keep record with unknown flag$/],
    [
      '{"op":"keep","p":"a/","flag":"unreadable"}',
      /^Cannot read upload: "a\/": path has a "" component$/,
    ],
    ['{"op":"meta"}', /^Cannot read manifest: entry is not an object$/],
    [
      JSON.stringify({ op: "meta", e: { ...e, h: undefined } }),
      /^Cannot read upload: metadata record for src\/main.c without hash$/,
    ],
    [
      JSON.stringify({ op: "meta", e: { ...e, p: ".." } }),
      /^Cannot read manifest: "..": path has a ".." component$/,
    ],
    [
      JSON.stringify({ op: "meta", e: { ...e, mt: "99999999999999999999" } }),
      /^Cannot read manifest: src\/main.c: bad mtime$/,
    ],
  ];
  for (const [line, re] of cases) invalid(() => parseChangeRecord(line), re);
});

// ---------------------------------------------------------------- LineSplitter

/** Pushes `bytes` in chunks of the given sizes; returns every line, then end()'s. */
function lines(bytes: Uint8Array, sizes: number[], maxLine?: number): string[] {
  const s = new LineSplitter(maxLine);
  const out: string[] = [];
  let i = 0;
  for (const n of sizes) {
    if (i >= bytes.length) break;
    out.push(...s.push(bytes.subarray(i, i + n)));
    i += n;
  }
  if (i < bytes.length) out.push(...s.push(bytes.subarray(i)));
  out.push(...s.end());
  return out;
}

Deno.test("LineSplitter yields the same lines across any chunk boundaries", () => {
  const want = [
    '{"commit":null}',
    ...ENTRIES.map(entryToJson),
    "한국어 안녕하세요",
    "emoji 🎉😀 and \uFFFF and \u{10FFFF}",
    "x".repeat(10_000),
    "last",
  ];
  const bytes = encoder.encode(want.join("\n") + "\n");
  assertEquals(lines(bytes, []), want);
  assertEquals(lines(bytes, new Array(bytes.length).fill(1)), want);
  for (let seed = 1; seed <= 30; seed++) {
    const r = rng(seed);
    const sizes = Array.from({ length: bytes.length }, () => r(seed < 15 ? 8 : 4000));
    assertEquals(lines(bytes, sizes), want, `seed ${seed}`);
  }
});

Deno.test("LineSplitter decodes multi-byte UTF-8 split across chunks", () => {
  const text = "가😀\n€";
  const bytes = encoder.encode(text); // 3 + 4 + 1 + 3 bytes
  for (let a = 1; a < bytes.length; a++) {
    for (let b = a + 1; b < bytes.length; b++) {
      assertEquals(lines(bytes, [a, b - a]), ["가😀", "€"], `cut at ${a}, ${b}`);
    }
  }
  // Each byte of a 4-byte character in its own chunk yields nothing until the newline.
  const s = new LineSplitter();
  for (const byte of encoder.encode("😀")) assertEquals(s.push(new Uint8Array([byte])), []);
  assertEquals(s.push(encoder.encode("\n")), ["😀"]);
  assertEquals(s.end(), []);
});

Deno.test("LineSplitter drops empty lines and returns the unterminated last line at end", () => {
  assertEquals(lines(encoder.encode("\n\na\n\n\nb"), []), ["a", "b"]);
  assertEquals(lines(encoder.encode(""), []), []);
  const s = new LineSplitter();
  assertEquals(s.push(encoder.encode("one\ntw")), ["one"]);
  assertEquals(s.push(encoder.encode("o")), []);
  assertEquals(s.end(), ["two"]);
  assertEquals(s.end(), []);
});

Deno.test("LineSplitter rejects invalid UTF-8 with KeepError invalid", () => {
  const bad = [
    new Uint8Array([0x61, 0xff, 0x0a]),
    new Uint8Array([0xc0, 0xaf, 0x0a]), // overlong "/"
    new Uint8Array([0xed, 0xa0, 0x80, 0x0a]), // a surrogate
    new Uint8Array([0xe2, 0x28, 0xa1, 0x0a]),
  ];
  for (const b of bad) {
    invalid(() => lines(b, []), /^Cannot read manifest: not valid UTF-8$/);
    invalid(() => lines(b, [1, 1, 1, 1]), /^Cannot read manifest: not valid UTF-8$/);
  }
  // Input that ends inside a character.
  invalid(
    () => lines(new Uint8Array([0x61, 0x0a, 0xe2, 0x82]), []),
    /^Cannot read manifest: not valid UTF-8$/,
  );
  invalid(
    () => lines(new Uint8Array([0xf0, 0x9f, 0x98]), [1, 1, 1]),
    /^Cannot read manifest: not valid UTF-8$/,
  );
});

Deno.test("LineSplitter rejects lines over maxLine with KeepError too_large", () => {
  const re = /^Cannot read manifest: line too long$/;
  // Unterminated, growing over several chunks.
  invalid(() => lines(encoder.encode("x".repeat(101)), [50, 50, 1], 100), re, "too_large");
  // Complete within one chunk.
  invalid(() => lines(encoder.encode("x".repeat(101) + "\nok\n"), [], 100), re, "too_large");
  invalid(() => lines(encoder.encode("ok\n" + "x".repeat(101) + "\n"), [], 100), re, "too_large");
  // The last line, unterminated, at end().
  invalid(() => lines(encoder.encode("ok\n" + "x".repeat(101)), [], 100), re, "too_large");
  // Exactly maxLine is fine, however it is chunked.
  const ok = encoder.encode("x".repeat(100) + "\n" + "y".repeat(100));
  assertEquals(lines(ok, [], 100), ["x".repeat(100), "y".repeat(100)]);
  assertEquals(lines(ok, new Array(ok.length).fill(1), 100), ["x".repeat(100), "y".repeat(100)]);
});

// ---------------------------------------------------------------- LineChunker

Deno.test("LineChunker yields whole lines, byte for byte, across any chunk boundaries", () => {
  const text = ['{"commit":null}', ...ENTRIES.map(entryToJson), "가😀", "x".repeat(5000), "last"]
    .join("\n");
  const bytes = encoder.encode(text); // the last line unterminated
  for (let seed = 0; seed <= 30; seed++) {
    const r = rng(seed + 100);
    const c = new LineChunker();
    const out: Uint8Array[] = [];
    const input = bytes.slice(); // reused below, as a transient inflate buffer would be
    for (let i = 0; i < input.length;) {
      const n = seed === 0 ? 1 : 1 + r(seed < 15 ? 8 : 4000);
      const whole = c.push(input.subarray(i, i + n));
      input.fill(0, i, i + n); // a copy must have been taken
      if (whole) {
        assertEquals(whole[whole.length - 1], 10, "a chunk ends at a newline");
        out.push(whole);
      }
      i += n;
    }
    const rest = c.end();
    assert(rest !== null);
    out.push(rest);
    assertEquals(c.end(), null);
    assertEquals(new TextDecoder().decode(concatBytes(out)), text, `seed ${seed}`);
  }
  const c = new LineChunker(10);
  assertEquals(c.push(encoder.encode("0123456789\n01234")), encoder.encode("0123456789\n"));
  assertThrows(
    () => c.push(encoder.encode("56789x")),
    KeepError,
    /^Cannot read manifest: line too long$/,
  );
});

Deno.test("parseChangeRecord: a have record's chunk list, property-tested around its bounds (count, hex, proof or none)", () => {
  const rand = rng(18);
  const min = CDC_SIZES.min;
  const hex = (i: number) => i.toString(16).padStart(64, "0");
  const file = (size: number): Entry => ({ ...ENTRIES[0], type: "f", size, hash: undefined });
  for (let round = 0; round < 300; round++) {
    // Sizes on, just under and just over multiples of the chunker's min.
    const k = 1 + rand(40);
    const size = Math.max(1, k * min + [-1, 0, 1][rand(3)]);
    const most = Math.ceil(size / min);
    const n = [1, most, most + 1, rand(most + 2)][rand(4)];
    const c = Array.from({ length: n }, (_, i) => hex(i + round));
    const proven = rand(2) === 0;
    const rec = proven
      ? { op: "have", e: JSON.parse(entryToJson(file(size))), n: "1.ab", proof: "0".repeat(32), c }
      : { op: "have", e: JSON.parse(entryToJson(file(size))), c };
    const line = JSON.stringify(rec);
    if (n >= 1 && n <= most) {
      const r = parseChangeRecord(line);
      assert(r.op === "have" && r.c !== undefined, line.slice(0, 80));
      assertEquals(r.c, c);
      assertEquals(r.proof, proven ? "0".repeat(32) : undefined);
      // Serialised back, it reads the same.
      assertEquals(parseChangeRecord(changeRecordToJson(r)), r);
    } else {
      const err = assertThrows(() => parseChangeRecord(line), KeepError);
      assertEquals(err.code, "invalid");
    }
  }
  const base = { op: "have", e: JSON.parse(entryToJson(file(3 * min))) };
  for (
    const [what, rec] of [
      ["a hash that is not hex", { ...base, c: ["g".repeat(64)] }],
      ["a short hash", { ...base, c: ["a".repeat(63)] }],
      ["no chunks", { ...base, c: [] }],
      ["not a list", { ...base, c: "a".repeat(64) }],
      ["a nonce without a proof", { ...base, n: "x", c: [hex(1)] }],
      ["a proof without a nonce", { ...base, proof: "0".repeat(32), c: [hex(1)] }],
      ["no list and no hash", { ...base, n: "x", proof: "0".repeat(32) }],
    ] as const
  ) {
    const err = assertThrows(() => parseChangeRecord(JSON.stringify(rec)), KeepError);
    assertEquals(err.code, "invalid", what);
  }
});

Deno.test("a have record of the most chunks, with the longest escaped path, fits a change-list line; one chunk more is refused", () => {
  const hex = (i: number) => i.toString(16).padStart(64, "0");
  // 4095 bytes of path, every byte but the slashes escaped in JSON as six.
  const path = Array(16).fill("\x01".repeat(255)).join("/");
  const size = (HAVE_CHUNKS_MAX + 1) * CDC_SIZES.min;
  const e: Entry = { ...ENTRIES[0], path, type: "f", size, hash: undefined };
  const record = (n: number): ChangeRecord => ({
    op: "have",
    e,
    n: "n".repeat(128),
    proof: "0".repeat(32),
    c: Array.from({ length: n }, (_, i) => hex(i)),
  });
  const most = changeRecordToJson(record(HAVE_CHUNKS_MAX));
  assert(most.length <= CHANGE_LINE_MAX, `${most.length} > ${CHANGE_LINE_MAX}`);
  // It goes through the server's splitter for change lists, and parses.
  const s = new LineSplitter(CHANGE_LINE_MAX, "upload's change list");
  const got = [...s.push(encoder.encode(most + "\n")), ...s.end()];
  assertEquals(got.length, 1);
  const r = parseChangeRecord(got[0]);
  assert(r.op === "have" && r.c?.length === HAVE_CHUNKS_MAX);
  const over = assertThrows(
    () => parseChangeRecord(changeRecordToJson(record(HAVE_CHUNKS_MAX + 1))),
    KeepError,
  );
  assertEquals(over.code, "invalid");
  assertMatch(over.message, /names its chunks wrongly \(1 to \d+ SHA-256 hex\)/);
  // A longer line is refused by the splitter with a message naming what it read.
  const long = new LineSplitter(CHANGE_LINE_MAX, "upload's change list");
  const err = assertThrows(
    () => long.push(encoder.encode("x".repeat(CHANGE_LINE_MAX + 1))),
    KeepError,
  );
  assertEquals(err.code, "too_large");
  assertEquals(
    err.message,
    `Cannot read upload's change list: a record is longer than ${CHANGE_LINE_MAX} bytes`,
  );
});
