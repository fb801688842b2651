import { assert, assertEquals, assertMatch, assertThrows } from "../../tests/assert.ts";
import { concatBytes as concat } from "../platform/concat_bytes.ts";
import { randomBytes, rng } from "../../tests/seeded.ts";
import { join } from "node:path";
import { KeepError } from "../errors.ts";
import { lstatNs, setTimesNs } from "../platform/fs_native.ts";
import {
  encodeHeader,
  END_OF_ARCHIVE,
  formatKeepComment,
  MAX_EXT_HEADER,
  padded,
  type TarHeader,
  TarParser,
} from "./tar.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------- helpers

interface Item {
  h: TarHeader;
  data?: Uint8Array;
}

/** What the parser hands its sink, entry by entry. */
interface Parsed {
  header: TarHeader;
  data: Uint8Array;
}

/** An archive of `items` as Keep writes it: header blocks, data, padding, end blocks. */
function build(items: Item[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const { h, data } of items) {
    parts.push(encodeHeader(h));
    if (data) parts.push(data, new Uint8Array(padded(data.length) - data.length));
  }
  parts.push(END_OF_ARCHIVE);
  return concat(parts);
}

/** Pushes `bytes` into a fresh parser in chunks of the given sizes (the rest at the end). */
function parse(bytes: Uint8Array, sizes: number[] = []): Parsed[] {
  const out: Parsed[] = [];
  let chunks: Uint8Array[] = [];
  let open = false;
  const parser = new TarParser({
    entry(h) {
      assert(!open, "entry before the previous entry ended");
      open = true;
      chunks = [];
      out.push({ header: h, data: new Uint8Array(0) });
    },
    data(c) {
      assert(open, "data outside an entry");
      chunks.push(c.slice());
    },
    entryEnd() {
      assert(open, "entryEnd without entry");
      open = false;
      out[out.length - 1].data = concat(chunks);
    },
  });
  let i = 0;
  for (const n of sizes) {
    if (i >= bytes.length) break;
    parser.push(bytes.subarray(i, i + n));
    i += n;
  }
  if (i < bytes.length) parser.push(bytes.subarray(i));
  parser.finish();
  assert(parser.done);
  assert(!open, "last entry never ended");
  assertEquals(parser.entries, out.length);
  return out;
}

/** Chunk sizes: one byte at a time. */
function bytewise(n: number): number[] {
  return new Array(n).fill(1);
}

/** Chunk sizes: random splits between 1 and `max` bytes. */
function randomSplits(n: number, seed: number, max = 1500): number[] {
  const r = rng(seed);
  const out: number[] = [];
  for (let total = 0; total < n;) {
    const k = 1 + r(max);
    out.push(k);
    total += k;
  }
  return out;
}

/** The header a round trip must give back for an encoded entry. */
function expected(h: TarHeader): TarHeader {
  return { ...h, size: h.type === "file" ? h.size : 0 };
}

function assertRoundTrip(items: Item[]): Uint8Array {
  const bytes = build(items);
  const got = parse(bytes);
  assertEquals(got.map((g) => g.header), items.map((i) => expected(i.h)));
  assertEquals(got.map((g) => g.data), items.map((i) => i.data ?? new Uint8Array(0)));
  return bytes;
}

/** Recomputes the checksum of a header block after a test changed it. */
function resum(b: Uint8Array): Uint8Array {
  for (let i = 148; i < 156; i++) b[i] = 0x20;
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[i];
  b.set(encoder.encode(sum.toString(8).padStart(6, "0")), 148);
  b[154] = 0;
  b[155] = 0x20;
  return b;
}

/** A ustar header block written by hand (independent of encodeHeader). */
function rawHeader(o: {
  name?: string | Uint8Array;
  type?: string;
  size?: number;
  mode?: string;
  linkname?: string;
  magic?: "posix" | "gnu";
}): Uint8Array {
  const b = new Uint8Array(512);
  const name = typeof o.name === "string" ? encoder.encode(o.name) : o.name ?? encoder.encode("f");
  b.set(name.subarray(0, 100), 0);
  b.set(encoder.encode(o.mode ?? "0000644\0"), 100);
  b.set(encoder.encode("0000000\0"), 108);
  b.set(encoder.encode("0000000\0"), 116);
  b.set(encoder.encode((o.size ?? 0).toString(8).padStart(11, "0") + "\0"), 124);
  b.set(encoder.encode("13000000000\0"), 136);
  b[156] = (o.type ?? "0").charCodeAt(0);
  b.set(encoder.encode(o.linkname ?? ""), 157);
  b.set(encoder.encode(o.magic === "gnu" ? "ustar  \0" : "ustar\x0000"), 257);
  return resum(b);
}

/** `n` bytes of data padded to whole blocks. */
function block(data: Uint8Array): Uint8Array {
  return concat([data, new Uint8Array(padded(data.length) - data.length)]);
}

/** A pax extended header ('x') carrying `records` as raw bytes. */
function paxBlocks(records: Uint8Array | string): Uint8Array {
  const r = typeof records === "string" ? encoder.encode(records) : records;
  return concat([rawHeader({ name: "PaxHeaders/f", type: "x", size: r.length }), block(r)]);
}

/** A well-formed pax record "LEN key=value\n". */
function rec(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const n = encoder.encode(body).length;
  let len = n + String(n).length;
  if (String(len).length + n !== len) len = n + String(len).length;
  return `${len}${body}`;
}

/** Feeds `bytes` (then finish) and returns the KeepError it must raise. */
function parseError(bytes: Uint8Array, re: RegExp, code = "invalid"): KeepError {
  const err = assertThrows(() => parse(bytes), KeepError, re);
  assertEquals(err.code, code);
  assertEquals(err.message.split("\n").length, 1);
  return err;
}

const T = 1_600_000_000_123_456_789n; // 2020-09-13, with ns
const S = 1_600_000_000_000_000_000n; // whole seconds: fits the ustar field

// ---------------------------------------------------------------- round trips

Deno.test("encodeHeader and TarParser round-trip files, dirs, symlinks and empty files", () => {
  const items: Item[] = [
    { h: { path: "a.txt", type: "file", size: 5, mode: 0o644, mtime: 1_000_000_000n * 1234n } },
    { h: { path: "bin", type: "dir", size: 0, mode: 0o755, mtime: 0n } },
    { h: { path: "bin/run", type: "file", size: 600, mode: 0o4755, mtime: T } },
    { h: { path: "empty", type: "file", size: 0, mode: 0o600, mtime: T } },
    { h: { path: "exact", type: "file", size: 512, mode: 0o644, mtime: T } },
    { h: { path: "link", type: "symlink", size: 0, mode: 0o777, mtime: T, linkname: "a.txt" } },
    {
      h: { path: "up", type: "symlink", size: 0, mode: 0o777, mtime: T, linkname: "../x/../y" },
    },
  ];
  items[0].data = encoder.encode("hello");
  items[2].data = randomBytes(600, 1);
  items[4].data = randomBytes(512, 2);
  const bytes = assertRoundTrip(items);
  // Entries without pax needs are a single ustar block.
  assertEquals(encodeHeader(items[0].h).length, 512);
  assertEquals(bytes.length % 512, 0);
});

Deno.test("encodeHeader writes a ustar block readable without pax for short ASCII names", () => {
  const b = encodeHeader({ path: "dir/f.c", type: "file", size: 10, mode: 0o640, mtime: S });
  assertEquals(b.length, 512);
  assertEquals(decoder.decode(b.subarray(0, 7)), "dir/f.c");
  assertEquals(decoder.decode(b.subarray(100, 108)), "0000640\0");
  assertEquals(decoder.decode(b.subarray(124, 136)), "00000000012\0");
  assertEquals(
    decoder.decode(b.subarray(136, 148)),
    (T / 1_000_000_000n).toString(8).padStart(11, "0") + "\0",
  );
  assertEquals(String.fromCharCode(b[156]), "0");
  assertEquals(decoder.decode(b.subarray(257, 265)), "ustar\x0000");
  const d = encodeHeader({ path: "dir", type: "dir", size: 0, mode: 0o755, mtime: 0n });
  assertEquals(decoder.decode(d.subarray(0, 4)), "dir/");
  assertEquals(String.fromCharCode(d[156]), "5");
});

Deno.test("encodeHeader and TarParser round-trip names over 100 and over 255 bytes", () => {
  const name100 = "n".repeat(100);
  const name101 = "m".repeat(101);
  const deep = `${"d".repeat(200)}/${"e".repeat(200)}/${"f".repeat(250)}`;
  const items: Item[] = [
    {
      h: { path: name100, type: "file", size: 1, mode: 0o644, mtime: S },
      data: encoder.encode("a"),
    },
    {
      h: { path: name101, type: "file", size: 1, mode: 0o644, mtime: S },
      data: encoder.encode("b"),
    },
    { h: { path: "q".repeat(99), type: "dir", size: 0, mode: 0o755, mtime: S } }, // 100 with "/"
    { h: { path: "r".repeat(100), type: "dir", size: 0, mode: 0o755, mtime: S } }, // 101 with "/"
    {
      h: { path: deep, type: "file", size: 3, mode: 0o644, mtime: S },
      data: encoder.encode("xyz"),
    },
    { h: { path: deep + "D", type: "dir", size: 0, mode: 0o700, mtime: S } },
  ];
  assertRoundTrip(items);
  // 100 bytes fit the name field; 101 need a pax path record.
  assertEquals(encodeHeader(items[0].h).length, 512);
  assertEquals(encodeHeader(items[2].h).length, 512);
  assert(encodeHeader(items[1].h).length > 512);
  assert(encodeHeader(items[3].h).length > 512);
  const pax = decoder.decode(encodeHeader(items[4].h));
  assert(pax.includes(` path=${deep}\n`));
});

Deno.test("encodeHeader and TarParser round-trip Korean and emoji names", () => {
  const items: Item[] = [
    { h: { path: "한국어", type: "dir", size: 0, mode: 0o755, mtime: T } },
    {
      h: { path: "한국어/안녕하세요.txt", type: "file", size: 16, mode: 0o644, mtime: T },
      data: encoder.encode("안녕하세요\n"),
    },
    { h: { path: "🎉/🎂🎈.bin", type: "file", size: 0, mode: 0o644, mtime: T } },
    { h: { path: "é", type: "symlink", size: 0, mode: 0o777, mtime: T, linkname: "한국어/🎉" } },
    { h: { path: "가".repeat(40), type: "file", size: 0, mode: 0o644, mtime: T } }, // 120 bytes
    { h: { path: "😀".repeat(70), type: "file", size: 0, mode: 0o644, mtime: T } }, // 280 bytes
    { h: { path: "tab\tand\nnewline", type: "file", size: 0, mode: 0o644, mtime: T } },
  ];
  assertRoundTrip(items);
  // Non-ASCII names always get a pax path, even when short.
  assert(decoder.decode(encodeHeader(items[3].h)).includes(" path=é\n"));
  assert(decoder.decode(encodeHeader(items[3].h)).includes(" linkpath=한국어/🎉\n"));
});

Deno.test("encodeHeader and TarParser round-trip long symlink targets", () => {
  const target100 = "t".repeat(100);
  const target4k = ("../" + "x".repeat(60) + "/").repeat(60) + "end";
  const items: Item[] = [
    { h: { path: "l100", type: "symlink", size: 0, mode: 0o777, mtime: S, linkname: target100 } },
    { h: { path: "l4k", type: "symlink", size: 0, mode: 0o777, mtime: S, linkname: target4k } },
    {
      h: {
        path: "l-ko",
        type: "symlink",
        size: 0,
        mode: 0o777,
        mtime: S,
        linkname: "가".repeat(50),
      },
    },
  ];
  assertRoundTrip(items);
  assertEquals(encodeHeader(items[0].h).length, 512);
  assert(decoder.decode(encodeHeader(items[1].h)).includes(` linkpath=${target4k}\n`));
});

Deno.test("encodeHeader and TarParser round-trip ns mtime and ctime", () => {
  const times = [
    0n,
    1n,
    999_999_999n,
    1_000_000_000n,
    T,
    1_700_000_000_000_000_000n, // whole seconds: no pax mtime
    -1n,
    -1_000_000_000n, // before 1970, whole seconds
    -1_500_000_000n,
    -86_400_000_000_123n,
    8_589_934_591_000_000_000n, // largest ustar time
    8_589_934_592_000_000_000n, // past it
    (1n << 63n) - 1n,
    -((1n << 63n) - 1n),
    -(1n << 63n),
  ];
  const items: Item[] = times.map((t, i) => ({
    h: { path: `f${i}`, type: "file", size: 0, mode: 0o644, mtime: t, ctime: t / 3n + 7n },
  }));
  assertRoundTrip(items);
  // Whole positive seconds within range ride in the ustar field alone.
  assertEquals(
    encodeHeader({ path: "f", type: "file", size: 0, mode: 0o644, mtime: 5_000_000_000n }).length,
    512,
  );
  const text = decoder.decode(
    encodeHeader({ path: "f", type: "file", size: 0, mode: 0o644, mtime: -1_500_000_000n }),
  );
  assert(text.includes(" mtime=-1.500000000\n"), text);
});

Deno.test("encodeHeader and TarParser round-trip Keep comment fields", () => {
  const keep = { sha256: "ab".repeat(32), xxh: "0123456789abcdef", control: "commit" };
  const items: Item[] = [
    { h: { path: ".keep-commit.json", type: "file", size: 2, mode: 0o600, mtime: T, keep } },
    { h: { path: "d", type: "dir", size: 0, mode: 0o755, mtime: T, keep: { flag: "unreadable" } } },
    { h: { path: "e", type: "file", size: 0, mode: 0o644, mtime: T, keep: {} } },
  ];
  items[0].data = encoder.encode("{}");
  assertRoundTrip(items);
  assertEquals(
    formatKeepComment(keep),
    `keep:1 sha256=${"ab".repeat(32)} xxh=0123456789abcdef control=commit`,
  );
  assertEquals(formatKeepComment({}), "keep:1");
});

Deno.test("TarParser ignores comments that are not Keep's", () => {
  const bytes = concat([
    paxBlocks(rec("comment", "made by hand") + rec("ctime", "12.5")),
    rawHeader({ name: "f" }),
    END_OF_ARCHIVE,
  ]);
  const [got] = parse(bytes);
  assertEquals(got.header.keep, undefined);
  assertEquals(got.header.ctime, 12_500_000_000n);
});

Deno.test("encodeHeader declares sizes above 8 GiB in a pax size record", () => {
  for (const size of [8 * 2 ** 30 - 1, 8 * 2 ** 30, 9 * 2 ** 30 + 5, Number.MAX_SAFE_INTEGER]) {
    const blocks = encodeHeader({ path: "huge.img", type: "file", size, mode: 0o644, mtime: T });
    const headers: TarHeader[] = [];
    const parser = new TarParser({
      entry: (h) => headers.push(h),
      data: () => {
        throw new Error("no data was pushed");
      },
      entryEnd: () => {
        throw new Error("the entry cannot end without data");
      },
    });
    parser.push(blocks); // the header alone: never allocate the data
    assertEquals(headers.length, 1);
    assertEquals(headers[0].size, size);
    assertEquals(parser.dataRemaining, size);
    assertEquals(decoder.decode(blocks).includes(` size=${size}\n`), size > 0o77777777777);
    assertThrows(
      () => parser.finish(),
      KeepError,
      /^Cannot read archive: truncated inside file data$/,
    );
  }
});

Deno.test("TarParser gives the same entries under any chunking", () => {
  const items: Item[] = [];
  const r = rng(7);
  for (let i = 0; i < 30; i++) {
    const size = [0, 1, 511, 512, 513, 1024, 3000][r(7)];
    const name = i % 3 === 0 ? `${"long-".repeat(30)}${i}` : i % 3 === 1 ? `파일${i}` : `f${i}`;
    items.push({
      h: {
        path: name,
        type: "file",
        size,
        mode: 0o644,
        mtime: T + BigInt(i),
        ctime: T,
        keep: { i: String(i) },
      },
      data: randomBytes(size, i),
    });
    if (i % 5 === 0) {
      items.push({
        h: {
          path: `s${i}`,
          type: "symlink",
          size: 0,
          mode: 0o777,
          mtime: T,
          linkname: "l".repeat(150),
        },
      });
    }
  }
  const bytes = build(items);
  const want = parse(bytes);
  assertEquals(want.length, items.length);
  assertEquals(parse(bytes, bytewise(bytes.length)), want);
  for (let seed = 1; seed <= 20; seed++) {
    assertEquals(parse(bytes, randomSplits(bytes.length, seed, seed < 10 ? 700 : 5000)), want);
  }
});

Deno.test("TarParser accepts extra zero blocks after the end of the archive", () => {
  const bytes = concat([
    build([{ h: { path: "f", type: "file", size: 0, mode: 0o644, mtime: T } }]),
    new Uint8Array(512 * 18),
  ]);
  assertEquals(parse(bytes).length, 1);
});

// ---------------------------------------------------------------- interop

async function run(cmd: string, args: string[], stdin?: Uint8Array) {
  const child = new Deno.Command(cmd, {
    args,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C.UTF-8", TZ: "UTC" },
  }).spawn();
  if (stdin) {
    const w = child.stdin.getWriter();
    await w.write(stdin);
    await w.close();
  }
  const out = await child.output();
  return { code: out.code, stdout: out.stdout, stderr: decoder.decode(out.stderr) };
}

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "keep-tar-test-" });
}

/** A tree's entries as Keep would archive them, sorted by name. */
function interopItems(): Item[] {
  const items: Item[] = [
    { h: { path: "d", type: "dir", size: 0, mode: 0o755, mtime: T } },
    { h: { path: "d/empty", type: "file", size: 0, mode: 0o644, mtime: T + 1n } },
    { h: { path: "d/한국어_파일.txt", type: "file", size: 16, mode: 0o600, mtime: T + 2n } },
    { h: { path: "d/🎉 party.txt", type: "file", size: 6, mode: 0o644, mtime: T + 3n } },
    { h: { path: `d/${"x".repeat(150)}`, type: "dir", size: 0, mode: 0o700, mtime: T + 4n } },
    {
      h: {
        path: `d/${"x".repeat(150)}/${"y".repeat(200)}`,
        type: "file",
        size: 70000,
        mode: 0o755,
        mtime: T + 5n,
        ctime: T + 6n,
        keep: { sha256: "0".repeat(64), xxh: "f".repeat(16) },
      },
    },
    { h: { path: "d/link", type: "symlink", size: 0, mode: 0o777, mtime: T, linkname: "empty" } },
    {
      h: {
        path: "d/longlink",
        type: "symlink",
        size: 0,
        mode: 0o777,
        mtime: T,
        linkname: `${"../".repeat(20)}${"z".repeat(150)}/한`,
      },
    },
    { h: { path: "old", type: "file", size: 3, mode: 0o644, mtime: 1_000_000_000n } },
  ];
  items[2].data = encoder.encode("안녕하세요\n");
  items[3].data = encoder.encode("party\n");
  items[5].data = randomBytes(70000, 3);
  items[8].data = encoder.encode("old");
  return items;
}

/** Checks a tree extracted by tar against the archived items. */
function assertExtracted(root: string, items: Item[]): void {
  for (const { h, data } of items) {
    const p = join(root, h.path);
    const st = lstatNs(p);
    assertEquals(st.kind, h.type, h.path);
    if (h.type === "symlink") {
      assertEquals(Deno.readLinkSync(p), h.linkname);
      continue;
    }
    assertEquals(st.mode, h.mode, h.path);
    assertEquals(st.mtime, h.mtime, h.path);
    if (h.type === "file") assertEquals(Deno.readFileSync(p), data ?? new Uint8Array(0), h.path);
  }
}

Deno.test("encodeHeader archives are listed and extracted by GNU tar without warnings", async () => {
  const items = interopItems();
  const dir = await tempDir();
  try {
    const file = join(dir, "a.tar");
    Deno.writeFileSync(file, build(items));
    const list = await run("tar", ["-tf", file]);
    assertEquals(list.stderr, "");
    assertEquals(list.code, 0);
    assertEquals(
      decoder.decode(list.stdout).split("\n").filter((l) => l),
      items.map(({ h }) => (h.type === "dir" ? h.path + "/" : h.path)),
    );
    const verbose = await run("tar", ["-tvf", file]);
    assertEquals(verbose.stderr, "");
    assert(decoder.decode(verbose.stdout).includes("d/link -> empty"));
    const out = join(dir, "out");
    Deno.mkdirSync(out);
    const x = await run("tar", ["-xf", file, "-C", out]);
    assertEquals(x.stderr, "");
    assertEquals(x.code, 0);
    assertExtracted(out, items);
    // Also from a pipe, as `tar -tzvf` reads Keep's streams.
    const piped = await run("tar", ["-tf", "-"], build(items));
    assertEquals(piped.stderr, "");
    assertEquals(decoder.decode(piped.stdout).split("\n").filter((l) => l).length, items.length);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("encodeHeader archives are listed and extracted by bsdtar without warnings", async () => {
  const items = interopItems();
  const dir = await tempDir();
  try {
    const file = join(dir, "a.tar");
    Deno.writeFileSync(file, build(items));
    const list = await run("bsdtar", ["-tf", file]);
    assertEquals(list.stderr, "");
    assertEquals(list.code, 0);
    assertEquals(
      decoder.decode(list.stdout).split("\n").filter((l) => l),
      items.map(({ h }) => (h.type === "dir" ? h.path + "/" : h.path)),
    );
    const out = join(dir, "out");
    Deno.mkdirSync(out);
    const x = await run("bsdtar", ["-xf", file, "-C", out]);
    assertEquals(x.stderr, "");
    assertEquals(x.code, 0);
    assertExtracted(out, items);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("encodeHeader writes times before 1970 as GNU tar does", async () => {
  const dir = await tempDir();
  try {
    // GNU tar's own encoding of -1.5 s, read back by TarParser.
    Deno.writeFileSync(join(dir, "f"), new Uint8Array(0));
    const touch = await run("touch", ["-d", "@-1.5", join(dir, "f")]);
    assertEquals(touch.code, 0);
    const r = await run("tar", ["--format=pax", "-C", dir, "-cf", "-", "f"]);
    assertEquals(r.code, 0);
    assert(decoder.decode(r.stdout.subarray(512, 1024)).includes(" mtime=-1.5\n"));
    assertEquals(parse(r.stdout)[0].header.mtime, -1_500_000_000n);

    // Ours, extracted by GNU tar (which warns about any time before 1970).
    const items: Item[] = [-1_500_000_000n, -3_000_000_000n, -1n].map((mtime, i) => ({
      h: { path: `old${i}`, type: "file", size: 0, mode: 0o644, mtime },
    }));
    const file = join(dir, "a.tar");
    Deno.writeFileSync(file, build(items));
    const out = join(dir, "out");
    Deno.mkdirSync(out);
    const x = await run("tar", ["-xf", file, "-C", out]);
    assertEquals(x.code, 0);
    for (const line of x.stderr.split("\n").filter((l) => l)) {
      assertMatch(line, /: implausibly old time stamp /);
    }
    assertExtracted(out, items);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

/** Writes a tree for GNU tar to archive; returns what TarParser must report. */
function writeTree(root: string, longNames: boolean): Map<string, Parsed> {
  const want = new Map<string, Parsed>();
  const put = (
    path: string,
    type: TarHeader["type"],
    mode: number,
    data?: Uint8Array,
    target?: string,
  ) => {
    const p = join(root, path);
    if (type === "dir") Deno.mkdirSync(p);
    else if (type === "file") Deno.writeFileSync(p, data!);
    else Deno.symlinkSync(target!, p);
    if (type !== "symlink") Deno.chmodSync(p, mode);
    const h: TarHeader = { path: `t/${path}`, type, size: data?.length ?? 0, mode, mtime: 0n };
    if (target !== undefined) h.linkname = target;
    want.set(h.path, { header: h, data: data ?? new Uint8Array(0) });
  };
  Deno.mkdirSync(join(root));
  want.set("t", {
    header: { path: "t", type: "dir", size: 0, mode: 0o755, mtime: 0n },
    data: new Uint8Array(0),
  });
  Deno.chmodSync(root, 0o755);
  put("empty", "file", 0o600, new Uint8Array(0));
  put("한국어_파일.txt", "file", 0o644, encoder.encode("안녕\n"));
  put("🎉", "dir", 0o750);
  put("🎉/x.bin", "file", 0o755, randomBytes(10000, 9));
  put("link", "symlink", 0o777, undefined, "empty");
  const a = "p".repeat(80);
  put(a, "dir", 0o755);
  put(`${a}/${"q".repeat(90)}`, "file", 0o644, encoder.encode("split by prefix"));
  if (longNames) {
    const b = "L".repeat(200);
    put(b, "dir", 0o755);
    put(`${b}/${"M".repeat(250)}`, "file", 0o644, encoder.encode("long"));
    put("longlink", "symlink", 0o777, undefined, `${"../".repeat(10)}${"T".repeat(200)}`);
  }
  return want;
}

async function gnuTarParse(format: "gnu" | "pax" | "ustar", longNames: boolean) {
  const dir = await tempDir();
  try {
    const want = writeTree(join(dir, "t"), longNames);
    // Times set last, so creating entries does not move a directory's mtime.
    let k = 0n;
    for (const [path, p] of [...want].reverse()) {
      p.header.mtime = (T / 1_000_000_000n) * 1_000_000_000n + 1_000_000_000n * k++;
      if (format === "pax") p.header.mtime += 123_456_789n;
      setTimesNs(join(dir, path), p.header.mtime, p.header.type === "symlink");
    }
    const r = await run("tar", [`--format=${format}`, "--sort=name", "-C", dir, "-cf", "-", "t"]);
    assertEquals(r.stderr, "");
    assertEquals(r.code, 0);
    for (const sizes of [[], bytewise(r.stdout.length), randomSplits(r.stdout.length, 3)]) {
      const got = parse(r.stdout, sizes);
      assertEquals(got.length, want.size);
      for (const g of got) {
        const w = want.get(g.header.path);
        assert(w, `unexpected entry ${g.header.path}`);
        if (format === "pax") {
          assertEquals(typeof g.header.ctime, "bigint");
          delete g.header.ctime;
        }
        if (g.header.type === "symlink") g.header.mode = 0o777;
        assertEquals(g, w, g.header.path);
      }
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("TarParser reads GNU tar --format=gnu archives with long names and links (L, K)", async () => {
  await gnuTarParse("gnu", true);
});

Deno.test("TarParser reads GNU tar --format=pax archives", async () => {
  await gnuTarParse("pax", true);
});

Deno.test("TarParser reads GNU tar --format=ustar archives with a name prefix", async () => {
  await gnuTarParse("ustar", false);
});

Deno.test("TarParser ignores atime and ctime of GNU incremental headers", async () => {
  const dir = await tempDir();
  try {
    Deno.writeTextFileSync(join(dir, "f.txt"), "hi\n");
    const r = await run("tar", ["--format=gnu", "-G", "-C", dir, "-cf", "-", "f.txt"]);
    assertEquals(r.code, 0);
    // GNU keeps atime and ctime where POSIX has the name prefix.
    assert(r.stdout.subarray(345, 356).every((c) => c >= 0x30 && c <= 0x37));
    const [got] = parse(r.stdout);
    assertEquals(got.header.path, "f.txt");
    assertEquals(decoder.decode(got.data), "hi\n");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

/** The first `n` bytes GNU tar writes for a 9 GiB sparse file (the data is never read). */
async function hugeFileHeader(format: "gnu" | "pax", n: number): Promise<Uint8Array> {
  const dir = await tempDir();
  try {
    const f = Deno.openSync(join(dir, "big"), { write: true, create: true });
    f.truncateSync(9 * 2 ** 30);
    f.close();
    const child = new Deno.Command("tar", {
      args: [`--format=${format}`, "-C", dir, "-cf", "-", "big"],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const reader = child.stdout.getReader();
    const parts: Uint8Array[] = [];
    let got = 0;
    while (got < n) {
      const { value, done } = await reader.read();
      if (done) break;
      parts.push(value);
      got += value.length;
    }
    await reader.cancel();
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await child.status;
    return concat(parts).subarray(0, n);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("TarParser reads a GNU base-256 size field", async () => {
  const head = await hugeFileHeader("gnu", 512);
  assertEquals(head[124], 0x80); // base-256 marker
  const headers: TarHeader[] = [];
  const parser = new TarParser({ entry: (h) => headers.push(h), data() {}, entryEnd() {} });
  parser.push(head);
  assertEquals(headers.map((h) => [h.path, h.size]), [["big", 9 * 2 ** 30]]);
  assertEquals(parser.dataRemaining, 9 * 2 ** 30);

  // A small base-256 size, with its data.
  const b = rawHeader({ name: "small" });
  b.fill(0, 124, 136);
  b[124] = 0x80;
  b[135] = 3;
  const [got] = parse(concat([resum(b), block(encoder.encode("abc")), END_OF_ARCHIVE]));
  assertEquals(decoder.decode(got.data), "abc");
  // A negative one is refused.
  b.fill(0xff, 124, 136);
  parseError(concat([resum(b), END_OF_ARCHIVE]), /^Cannot read archive: negative size$/);
  // One past 2^53 is refused.
  b.fill(0, 124, 136);
  b[124] = 0x80;
  b[128] = 0x20; // 2^61
  parseError(concat([resum(b), END_OF_ARCHIVE]), /^Cannot read archive: size too large$/);
});

Deno.test("TarParser reads a GNU tar pax size above 8 GiB", async () => {
  const head = await hugeFileHeader("pax", 1536);
  const headers: TarHeader[] = [];
  const parser = new TarParser({ entry: (h) => headers.push(h), data() {}, entryEnd() {} });
  parser.push(head);
  assertEquals(headers.map((h) => [h.path, h.size]), [["big", 9 * 2 ** 30]]);
  assertEquals(parser.dataRemaining, 9 * 2 ** 30);
});

// ---------------------------------------------------------------- hostile input

const ONE = (): Uint8Array =>
  build([{
    h: { path: "f", type: "file", size: 3, mode: 0o644, mtime: S },
    data: encoder.encode("abc"),
  }]);

Deno.test("TarParser rejects a header checksum mismatch", () => {
  const bytes = ONE();
  bytes[0] = 0x67; // "g"
  parseError(bytes, /^Cannot read archive: header checksum mismatch$/);
  const b = rawHeader({ name: "f" });
  b.set(encoder.encode("000000\0 "), 148);
  parseError(concat([b, END_OF_ARCHIVE]), /^Cannot read archive: header checksum mismatch$/);
});

Deno.test("TarParser rejects non-octal numeric fields", () => {
  for (
    const [off, text, what] of [
      [100, "00006x4\0", "mode"],
      [124, "0000000009\0\0", "size"],
      [136, "1300000000-\0", "mtime"],
      [148, "01234z\0 ", "checksum"],
    ] as const
  ) {
    const b = rawHeader({ name: "f" });
    if (what !== "checksum") {
      b.set(encoder.encode(text), off);
      resum(b);
    } else b.set(encoder.encode(text), off);
    parseError(
      concat([b, END_OF_ARCHIVE]),
      new RegExp(`^Cannot read archive: ${what} field is not octal$`),
    );
  }
});

Deno.test("TarParser.finish throws on a truncated archive", () => {
  const bytes = ONE(); // header 512, data 512, end 1024
  for (
    const [cut, re] of [
      [0, /^Cannot read archive: truncated \(no end-of-archive blocks\)$/],
      [100, /^Cannot read archive: truncated \(no end-of-archive blocks\)$/],
      [512, /^Cannot read archive: truncated inside file data$/],
      [514, /^Cannot read archive: truncated inside file data$/],
      [515, /^Cannot read archive: truncated \(no end-of-archive blocks\)$/], // in the padding
      [1024, /^Cannot read archive: truncated \(no end-of-archive blocks\)$/],
      [1536, /^Cannot read archive: truncated \(no end-of-archive blocks\)$/], // one end block
      [2047, /^Cannot read archive: truncated \(no end-of-archive blocks\)$/],
    ] as const
  ) {
    parseError(bytes.subarray(0, cut), re);
    assertThrows(() => parse(bytes.subarray(0, cut), bytewise(cut)), KeepError, re);
  }
  // A pax header cut short.
  const pax = encodeHeader({ path: "é", type: "file", size: 0, mode: 0o644, mtime: T });
  parseError(pax.subarray(0, 600), /^Cannot read archive: truncated \(no end-of-archive blocks\)$/);
  assertEquals(parse(bytes).length, 1);
});

Deno.test("TarParser rejects data after the end-of-archive blocks", () => {
  const junk = new Uint8Array(512);
  junk[100] = 1;
  parseError(concat([ONE(), junk]), /^Cannot read archive: data after the end-of-archive blocks$/);
  parseError(
    concat([ONE(), new Uint8Array(512), ONE()]),
    /^Cannot read archive: data after the end-of-archive blocks$/,
  );
  parseError(
    concat([ONE(), new Uint8Array(3)]),
    /^Cannot read archive: partial block after the end-of-archive blocks$/,
  );
});

Deno.test("TarParser rejects an entry after a single zero block", () => {
  const one = ONE();
  const bytes = concat([one.subarray(0, 1024), new Uint8Array(512), one]);
  parseError(bytes, /^Cannot read archive: entry after a zero block$/);
});

Deno.test("TarParser rejects hard links, devices, FIFOs and other entry types", () => {
  for (
    const [type, re] of [
      ["1", /^Cannot read archive: hard link entries are not accepted$/],
      ["3", /^Cannot read archive: unsupported entry type "3"$/],
      ["4", /^Cannot read archive: unsupported entry type "4"$/],
      ["6", /^Cannot read archive: unsupported entry type "6"$/],
      ["D", /^Cannot read archive: unsupported entry type "D"$/],
      ["S", /^Cannot read archive: unsupported entry type "S"$/],
    ] as const
  ) {
    parseError(concat([rawHeader({ name: "x", type, linkname: "f" }), END_OF_ARCHIVE]), re);
  }
  // '7' (contiguous) and NUL (old tar) are regular files.
  for (const type of ["7", "\0"]) {
    const [got] = parse(
      concat([rawHeader({ name: "x", type, size: 1 }), block(encoder.encode("z")), END_OF_ARCHIVE]),
    );
    assertEquals([got.header.type, decoder.decode(got.data)], ["file", "z"]);
  }
});

Deno.test("TarParser rejects malformed pax records", () => {
  const cases: [string | Uint8Array, RegExp][] = [
    ["11 path=a\n", /^Cannot read archive: malformed pax record$/], // says 11, is 10
    ["8 path=a\n", /^Cannot read archive: malformed pax record$/], // says 8, is 10
    ["10 path=a\n", /^Cannot read archive: malformed pax record$/], // (correct: control)
    ["9 path=aX", /^Cannot read archive: malformed pax record$/], // no newline
    ["8 patha\n", /^Cannot read archive: malformed pax record$/], // no "="
    ["7 =abc\n", /^Cannot read archive: malformed pax record$/], // empty key
    ["1e1 p=abc\n", /^Cannot read archive: malformed pax record$/], // not decimal
    ["0x9 p=ab\n", /^Cannot read archive: malformed pax record$/],
    [" 9 path=a\n", /^Cannot read archive: malformed pax record$/],
    ["99 path=a\n", /^Cannot read archive: malformed pax record$/], // longer than the header
    ["3 \n", /^Cannot read archive: malformed pax record$/],
    ["path=a\n", /^Cannot read archive: malformed pax record$/],
    ["99999999999999999999 path=a\n", /^Cannot read archive: malformed pax record$/],
    [rec("mtime", "soon"), /^Cannot read archive: pax mtime is not a time: "soon"$/],
    [rec("ctime", "1.2.3"), /^Cannot read archive: pax ctime is not a time: "1.2.3"$/],
    [
      rec("mtime", "9999999999999"),
      /^Cannot read archive: pax mtime is not a time: "9999999999999"$/,
    ],
    [
      rec("mtime", "9223372036.854775808"),
      /^Cannot read archive: pax mtime is out of range: "9223372036.854775808"$/,
    ],
    [
      rec("mtime", "999999999999"),
      /^Cannot read archive: pax mtime is out of range: "999999999999"$/,
    ],
    [rec("size", "-1"), /^Cannot read archive: pax size is not a number$/],
    [rec("size", "1e3"), /^Cannot read archive: pax size is not a number$/],
    [rec("size", "99999999999999999"), /^Cannot read archive: pax size is not a number$/],
    [
      concat([encoder.encode("11 path="), new Uint8Array([0xc3, 0x28]), encoder.encode("\n")]),
      /^Cannot read archive: pax record is not valid UTF-8$/,
    ],
    [
      concat([encoder.encode("10 path="), new Uint8Array([0xff]), encoder.encode("\n")]),
      /^Cannot read archive: pax record is not valid UTF-8$/,
    ],
  ];
  for (const [records, re] of cases) {
    const bytes = concat([paxBlocks(records), rawHeader({ name: "f" }), END_OF_ARCHIVE]);
    if (records === "10 path=a\n") {
      assertEquals(parse(bytes)[0].header.path, "a");
      continue;
    }
    parseError(bytes, re);
  }
});

Deno.test("TarParser applies pax records to the next entry only", () => {
  const bytes = concat([
    paxBlocks(rec("path", "long/name") + rec("mtime", "1.5")),
    rawHeader({ name: "short" }),
    rawHeader({ name: "next" }),
    END_OF_ARCHIVE,
  ]);
  const got = parse(bytes);
  assertEquals(got.map((g) => [g.header.path, g.header.mtime]), [
    ["long/name", 1_500_000_000n],
    ["next", 0o13000000000n * 1_000_000_000n],
  ]);
  // Global headers ('g') are read and ignored.
  const g = concat([
    rawHeader({ name: "g", type: "g", size: 9 }),
    block(encoder.encode("9 path=a\n")),
    rawHeader({ name: "f" }),
    END_OF_ARCHIVE,
  ]);
  assertEquals(parse(g).map((e) => e.header.path), ["f"]);
});

Deno.test("TarParser rejects an extended header without an entry", () => {
  parseError(
    concat([paxBlocks(rec("path", "a")), END_OF_ARCHIVE]),
    /^Cannot read archive: extended header without an entry$/,
  );
  for (const type of ["L", "K"]) {
    const ext = concat([
      rawHeader({ name: "././@LongLink", type, size: 2 }),
      block(encoder.encode("a\0")),
    ]);
    parseError(
      concat([ext, END_OF_ARCHIVE]),
      /^Cannot read archive: extended header without an entry$/,
    );
  }
});

Deno.test("TarParser rejects extended headers over MAX_EXT_HEADER with too_large", () => {
  for (const type of ["x", "g", "L", "K"]) {
    const b = rawHeader({ name: "big", type, size: MAX_EXT_HEADER + 1 });
    const err = parseError(
      concat([b, END_OF_ARCHIVE]),
      new RegExp(
        `^Cannot read archive: extended header of ${
          MAX_EXT_HEADER + 1
        } bytes \\(limit ${MAX_EXT_HEADER}\\)$`,
      ),
      "too_large",
    );
    assertEquals(err.code, "too_large");
  }
  // Exactly the limit is accepted.
  const path = "p".repeat(MAX_EXT_HEADER - 12);
  const r = rec("path", path);
  assertEquals(encoder.encode(r).length, MAX_EXT_HEADER);
  assertEquals(
    parse(concat([paxBlocks(r), rawHeader({ name: "f" }), END_OF_ARCHIVE]))[0].header.path,
    path,
  );
});

Deno.test("TarParser rejects a chain of extended headers adding up over MAX_EXT_HEADER", () => {
  // A record of exactly n bytes: 5 digits, " ", key, "=", value, "\n".
  const part = (key: string, n: number) => rec(key, "v".repeat(n - key.length - 8));
  const chain = (sizes: number[]) =>
    concat([
      ...sizes.map((n, i) => paxBlocks(part(`k${i}`, n))),
      rawHeader({ name: "f" }),
      END_OF_ARCHIVE,
    ]);
  assertEquals(encoder.encode(part("k0", 40_000)).length, 40_000);
  parseError(
    chain([40_000, 40_000]),
    new RegExp(
      `^Cannot read archive: extended headers of 80000 bytes for one entry \\(limit ${MAX_EXT_HEADER}\\)$`,
    ),
    "too_large",
  );
  const gnu = concat([
    paxBlocks(part("k", 40_000)),
    rawHeader({ name: "././@LongLink", type: "L", size: 30_000 }),
    block(new Uint8Array(30_000).fill(0x61)),
    rawHeader({ name: "f" }),
    END_OF_ARCHIVE,
  ]);
  parseError(
    gnu,
    /^Cannot read archive: extended headers of 70000 bytes for one entry/,
    "too_large",
  );
  // The budget is per entry: many entries each with their own headers are fine,
  assertEquals(
    parse(concat([chain([30_000, 30_000]).subarray(0, -1024), chain([60_000])])).length,
    2,
  );
  // and global headers, which are not kept, do not count.
  const globals = concat([
    rawHeader({ name: "g", type: "g", size: 60_000 }),
    block(encoder.encode(part("a", 60_000))),
    paxBlocks(part("k", 60_000)),
    rawHeader({ name: "f" }),
    END_OF_ARCHIVE,
  ]);
  assertEquals(parse(globals).length, 1);
});

Deno.test("TarParser rejects directory and symlink entries carrying data", () => {
  parseError(
    concat([
      rawHeader({ name: "d/", type: "5", size: 5 }),
      block(encoder.encode("hello")),
      END_OF_ARCHIVE,
    ]),
    /^Cannot read archive: dir entry with data$/,
  );
  parseError(
    concat([
      rawHeader({ name: "l", type: "2", size: 1, linkname: "t" }),
      block(encoder.encode("x")),
      END_OF_ARCHIVE,
    ]),
    /^Cannot read archive: symlink entry with data$/,
  );
  // The same through a pax size record (which overrides the ustar field).
  parseError(
    concat([
      paxBlocks(rec("size", "512")),
      rawHeader({ name: "d/", type: "5" }),
      new Uint8Array(512),
      END_OF_ARCHIVE,
    ]),
    /^Cannot read archive: dir entry with data$/,
  );
  parseError(
    concat([
      paxBlocks(rec("size", "1")),
      rawHeader({ name: "l", type: "2", size: 0, linkname: "t" }),
      block(encoder.encode("x")),
      END_OF_ARCHIVE,
    ]),
    /^Cannot read archive: symlink entry with data$/,
  );
  // A pax size of 0 overrides a non-zero ustar size.
  const got = parse(
    concat([
      paxBlocks(rec("size", "0")),
      rawHeader({ name: "d/", type: "5", size: 5 }),
      END_OF_ARCHIVE,
    ]),
  );
  assertEquals(got.map((g) => [g.header.path, g.header.type, g.header.size]), [["d", "dir", 0]]);
});

Deno.test("TarParser rejects non-zero padding after file data", () => {
  const bytes = ONE();
  bytes[512 + 511] = 1;
  parseError(bytes, /^Cannot read archive: non-zero padding after file data$/);
  const pax = concat([paxBlocks(rec("path", "a")), rawHeader({ name: "f" }), END_OF_ARCHIVE]);
  pax[1023] = 7; // padding of the pax record block
  parseError(pax, /^Cannot read archive: non-zero padding after file data$/);
});

Deno.test("TarParser rejects names that are not valid UTF-8", () => {
  const bad = new Uint8Array([0x61, 0xff, 0x62]);
  parseError(
    concat([rawHeader({ name: bad }), END_OF_ARCHIVE]),
    /^Cannot read archive: entry name is not valid UTF-8$/,
  );
  const b = rawHeader({ name: "x" });
  b.set([0xe2, 0x82], 345); // a broken prefix
  parseError(
    concat([resum(b), END_OF_ARCHIVE]),
    /^Cannot read archive: entry name is not valid UTF-8$/,
  );
  const l = rawHeader({ name: "l", type: "2" });
  l.set([0xc0, 0xaf], 157); // an overlong "/" as link target
  parseError(
    concat([resum(l), END_OF_ARCHIVE]),
    /^Cannot read archive: entry name is not valid UTF-8$/,
  );
  const long = concat([
    rawHeader({ name: "././@LongLink", type: "L", size: 3 }),
    block(new Uint8Array([0xed, 0xa0, 0x80])),
  ]);
  parseError(
    concat([long, rawHeader({ name: "f" }), END_OF_ARCHIVE]),
    /^Cannot read archive: GNU long name is not valid UTF-8$/,
  );
});

Deno.test("TarParser reads names from the ustar prefix only under POSIX magic", () => {
  const posix = rawHeader({ name: "name" });
  posix.set(encoder.encode("pre/fix"), 345);
  resum(posix);
  const gnu = rawHeader({ name: "name", magic: "gnu" });
  gnu.set(encoder.encode("14000000000"), 345);
  resum(gnu);
  const got = parse(concat([posix, gnu, END_OF_ARCHIVE]));
  assertEquals(got.map((g) => g.header.path), ["pre/fix/name", "name"]);
});
