import { assert, assertEquals, assertThrows } from "../../tests/assert.ts";
import { rng } from "../../tests/seeded.ts";
import { DatabaseSync } from "node:sqlite";
import { KeepError } from "../errors.ts";
import {
  checkPath,
  comparePaths,
  MAX_NAME_BYTES,
  MAX_PATH_BYTES,
  normalisePrefix,
  parentOf,
  pathProblem,
  sortPaths,
  underPrefix,
} from "./paths.ts";

const encoder = new TextEncoder();

/** Code points from the ranges where UTF-16 and UTF-8 orders disagree, and around them. */
function randomChar(r: (n: number) => number): string {
  switch (r(9)) {
    case 0:
      return "/-._aZ0 ~"[r(9)];
    case 1:
      return String.fromCodePoint(0x01 + r(0x7f));
    case 2:
      return String.fromCodePoint(0x80 + r(0x780)); // 2-byte UTF-8
    case 3:
      return String.fromCodePoint(0x800 + r(0xd800 - 0x800)); // 3 bytes, below surrogates
    case 4:
      return String.fromCodePoint(0xe000 + r(0x2000)); // 3 bytes, U+E000..U+FFFF
    case 5:
      return String.fromCodePoint(0xf000 + r(0x1000)); // up to U+FFFF
    case 6:
      return ["😀", "🎉", "𝄞", "\u{10000}", "\u{10FFFF}", "\u{1F600}"][r(6)];
    case 7:
      return String.fromCodePoint(0x10000 + r(0x100000)); // surrogate pairs
    default:
      return ["\uD7FF", "\uE000", "\uFFFD", "\uFFFF", "\u07FF", "\u0800", "/"][r(7)];
  }
}

function randomString(r: (n: number) => number): string {
  let s = "";
  const n = r(7);
  for (let i = 0; i < n; i++) s += randomChar(r);
  return s;
}

function byteCompare(a: string, b: string): number {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

function randomStrings(count: number, seed: number): string[] {
  const r = rng(seed);
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    const s = randomString(r);
    out.push(s);
    // Near neighbours: shared prefixes make the later characters decide.
    if (r(3) === 0) out.push(s + randomChar(r));
    // (by code point: cutting a surrogate pair would leave an invalid string)
    if (r(3) === 0 && s.length > 0) out.push([...s].slice(0, -1).join("") + randomChar(r));
  }
  return out;
}

Deno.test("comparePaths equals UTF-8 byte order on random strings", () => {
  const strings = randomStrings(3000, 1);
  assert(strings.every((s) => s.isWellFormed()));
  assert(
    strings.some((s) => /[\uE000-\uFFFF]/.test(s)) &&
      strings.some((s) => /[\u{10000}-\u{10FFFF}]/u.test(s)),
  );
  const r = rng(2);
  for (let i = 0; i < 50_000; i++) {
    const a = strings[r(strings.length)];
    const b = strings[r(strings.length)];
    assertEquals(
      Math.sign(comparePaths(a, b)),
      Math.sign(byteCompare(a, b)),
      `${JSON.stringify(a)} vs ${JSON.stringify(b)}`,
    );
  }
  const sorted = [...strings].sort(comparePaths);
  assertEquals(sorted, [...strings].sort(byteCompare));
  // sortPaths: the mixed set through comparePaths, a set without high code units natively.
  assertEquals(sortPaths([...strings]), sorted);
  const low = strings.filter((s) => !/[\uD800-\uFFFF]/.test(s));
  assert(low.length > 100 && low.some((s) => /[\u0080-\uD7FF]/.test(s)));
  assertEquals(sortPaths([...low]), [...low].sort(byteCompare));
  assertEquals(sortPaths(["b", "a\uFFFF", "a😀", "a"]), ["a", "a\uFFFF", "a😀", "b"]);
});

Deno.test("comparePaths orders characters above U+FFFF after U+E000..U+FFFF", () => {
  const cases: [string, string][] = [
    ["\uFFFF", "😀"],
    ["\uE000", "\u{10000}"],
    ["\uFFFD", "🎉"],
    ["a\uFFFF/b", "a😀"],
    ["\uD7FF", "\uE000"],
    ["a", "a/"],
    ["a-b", "a/b"], // '-' 0x2d < '.' 0x2e < '/' 0x2f
    ["a.b", "a/b"],
    ["a/b", "a0"],
    ["", "a"],
    ["😀", "😁"],
    ["\u{1F600}", "\u{10FFFF}"],
  ];
  for (const [a, b] of cases) {
    assert(comparePaths(a, b) < 0, `${JSON.stringify(a)} < ${JSON.stringify(b)}`);
    assert(comparePaths(b, a) > 0, `${JSON.stringify(b)} > ${JSON.stringify(a)}`);
    assert(byteCompare(a, b) < 0); // the test's own oracle agrees
    assertEquals(comparePaths(a, a), 0);
  }
  // JavaScript's own order is different here, which is why comparePaths exists.
  assert("\uFFFF" > "😀");
});

Deno.test("comparePaths equals SQLite ORDER BY on a TEXT column", () => {
  const strings = [...new Set(randomStrings(4000, 3))];
  const db = new DatabaseSync(":memory:");
  try {
    db.exec("CREATE TABLE t (p TEXT NOT NULL)");
    const insert = db.prepare("INSERT INTO t (p) VALUES (?)");
    db.exec("BEGIN");
    for (const s of strings) insert.run(s);
    db.exec("COMMIT");
    const rows = db.prepare("SELECT p FROM t ORDER BY p").all() as { p: string }[];
    const fromSql = rows.map((r) => r.p);
    assertEquals(fromSql.length, strings.length);
    assertEquals(fromSql, [...strings].sort(comparePaths));
    // And a range query (as prefix scans use) agrees with the order too.
    const mid = [...strings].sort(comparePaths)[strings.length >> 1];
    const below = db.prepare("SELECT count(*) AS n FROM t WHERE p < ?").get(mid) as { n: number };
    assertEquals(below.n, strings.filter((s) => comparePaths(s, mid) < 0).length);
  } finally {
    db.close();
  }
});

Deno.test("pathProblem accepts valid stored paths", () => {
  for (
    const p of [
      "a",
      "a/b/c",
      ".hidden",
      "..a",
      "a..",
      "...",
      "a/.b/..c",
      "한국어/파일.txt",
      "🎉/😀",
      "with space/and\ttab",
      "back\\slash",
      "\uE000\uFFFF",
      "n".repeat(MAX_NAME_BYTES),
      "가".repeat(85), // 255 bytes
      "😀".repeat(63), // 252 bytes
      Array(16).fill("d".repeat(255)).join("/").slice(0, MAX_PATH_BYTES), // 4095 bytes
    ]
  ) {
    assertEquals(pathProblem(p), null, JSON.stringify(p).slice(0, 80));
    assertEquals(checkPath(p), p);
  }
});

Deno.test("pathProblem reports each kind of invalid path", () => {
  const longPath = Array(17).fill("d".repeat(240)).join("/"); // 4096 bytes
  const cases: [string, string][] = [
    ["", "empty path"],
    ["a\0b", "path contains NUL"],
    ["\0", "path contains NUL"],
    ["/a", "absolute path"],
    ["/", "absolute path"],
    [".", 'path has a "." component'],
    ["..", 'path has a ".." component'],
    ["a/./b", 'path has a "." component'],
    ["a/../b", 'path has a ".." component'],
    ["a/..", 'path has a ".." component'],
    ["a//b", 'path has a "" component'],
    ["a/", 'path has a "" component'],
    ["a/b/", 'path has a "" component'],
    ["a\uD800", "path is not valid UTF-8"], // lone high surrogate
    ["\uDC00a", "path is not valid UTF-8"], // lone low surrogate
    ["a/\uDE00\uD83D", "path is not valid UTF-8"], // pair in the wrong order
    [longPath + "/x", `path longer than ${MAX_PATH_BYTES} bytes`],
    ["가".repeat(1366), `path longer than ${MAX_PATH_BYTES} bytes`], // 4098 bytes
    ["n".repeat(MAX_NAME_BYTES + 1), `name longer than ${MAX_NAME_BYTES} bytes`],
    ["a/" + "가".repeat(86), `name longer than ${MAX_NAME_BYTES} bytes`], // 258 bytes
    ["😀".repeat(64) + "/a", `name longer than ${MAX_NAME_BYTES} bytes`], // 256 bytes
  ];
  assertEquals(encoder.encode(longPath).length, MAX_PATH_BYTES);
  for (const [p, problem] of cases) {
    assertEquals(pathProblem(p), problem, JSON.stringify(p).slice(0, 80));
  }
  assertEquals(pathProblem(longPath), null); // exactly the limit
});

Deno.test("checkPath throws KeepError invalid naming the path and its problem", () => {
  const err = assertThrows(
    () => checkPath("a/../b"),
    KeepError,
    /^Cannot accept path "a\/..\/b": path has a ".." component$/,
  );
  assertEquals(err.code, "invalid");
  const err2 = assertThrows(
    () => checkPath("/etc/passwd", "symlink target"),
    KeepError,
    /^Cannot accept symlink target "\/etc\/passwd": absolute path$/,
  );
  assertEquals(err2.code, "invalid");
  // The message stays one line whatever the path holds.
  const err3 = assertThrows(
    () => checkPath("a\n\0"),
    KeepError,
    /^Cannot accept path "a\\n\\u0000": path contains NUL$/,
  );
  assertEquals(err3.message.includes("\n"), false);
});

Deno.test("normalisePrefix turns user prefixes into stored form", () => {
  const cases: [string, string][] = [
    ["", ""],
    [".", ""],
    ["./", ""],
    ["/", ""],
    ["//", ""],
    ["src", "src"],
    ["./src/", "src"],
    ["src//lib", "src/lib"],
    ["src/./lib/.", "src/lib"],
    ["/abs/path", "abs/path"],
    ["한국어/", "한국어"],
  ];
  for (const [input, want] of cases) assertEquals(normalisePrefix(input), want, input);
});

Deno.test("normalisePrefix rejects prefixes that leave the tree", () => {
  for (
    const [input, re] of [
      ["..", /^Cannot accept path prefix "..": path has a ".." component$/],
      ["src/../..", /^Cannot accept path prefix "src\/..\/..": path has a ".." component$/],
      ["a\0", /^Cannot accept path prefix "a\\u0000": path contains NUL$/],
      ["x".repeat(300), /^Cannot accept path prefix "x+": name longer than 255 bytes$/],
    ] as const
  ) {
    const err = assertThrows(() => normalisePrefix(input), KeepError, re);
    assertEquals(err.code, "invalid");
  }
});

Deno.test("parentOf returns the parent path or an empty string", () => {
  assertEquals(parentOf("a"), "");
  assertEquals(parentOf("a/b"), "a");
  assertEquals(parentOf("a/b/c.txt"), "a/b");
  assertEquals(parentOf("한국어/🎉"), "한국어");
  assertEquals(parentOf(""), "");
});

Deno.test("underPrefix matches the prefix itself and paths below it only", () => {
  assert(underPrefix("a", ""));
  assert(underPrefix("", ""));
  assert(underPrefix("src", "src"));
  assert(underPrefix("src/a.c", "src"));
  assert(underPrefix("src/lib/x", "src/lib"));
  assert(!underPrefix("srcx", "src"));
  assert(!underPrefix("src-old/a", "src"));
  assert(!underPrefix("sr", "src"));
  assert(!underPrefix("lib/src", "src"));
  assert(!underPrefix("src", "src/lib"));
  assert(underPrefix("한국어/파일", "한국어"));
});
