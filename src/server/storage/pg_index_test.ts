import { assertEquals } from "../../../tests/assert.ts";
import { globRegex, likeFilter, literalRange } from "./pg_index.ts";

/** The regular expression with its \UXXXXXXXX escapes read back as characters. */
function readable(re: string | null): string | null {
  return re && re.replace(/\\U([0-9a-f]{8})/g, (_, h) => String.fromCodePoint(parseInt(h, 16)));
}

Deno.test("globRegex turns SQLite's GLOB into an anchored regular expression", () => {
  assertEquals(readable(globRegex("*.o", true)), "^(.*/)?.*.o$");
  assertEquals(globRegex("*.o", true), "^(.*/)?.*\\U0000002e\\U0000006f$");
  assertEquals(readable(globRegex("a/?.c", false)), "^a/..c$");
  assertEquals(readable(globRegex("[^a-c]x", false)), "^[^a-c]x$");
  // A leading "]" is a member; "-" after a range is a member too.
  assertEquals(readable(globRegex("[]a]", false)), "^[]a]$");
  assertEquals(readable(globRegex("[a-c-e]", false)), "^[a-c-e]$");
  // A reversed range adds nothing but its start (as in SQLite).
  assertEquals(readable(globRegex("[z-a]", false)), "^[z]$");
  // A "[" without its "]" matches nothing.
  assertEquals(globRegex("abc[", false), null);
  assertEquals(globRegex("[^]", false), null);
  assertEquals(readable(globRegex("日本/ß*", false)), "^日本/ß.*$");
});

Deno.test("literalRange bounds the paths that start with a glob's literal start", () => {
  assertEquals(literalRange("d0042/*"), ["d0042/", "d00420"]);
  assertEquals(literalRange("*.o"), ["", null]);
  assertEquals(literalRange("a[bc]"), ["a", "b"]);
  assertEquals(literalRange("日本/x?"), ["日本/x", "日本/y"]);
  assertEquals(literalRange("a\uD7FF*"), ["a\uD7FF", "a\uE000"]);
  assertEquals(literalRange("a\u{10FFFF}*"), ["a\u{10FFFF}", null]);
});

Deno.test("likeFilter takes a glob's longest literal run, with LIKE's own characters escaped", () => {
  assertEquals(likeFilter("f4242.o"), "%f4242.o%");
  assertEquals(likeFilter("*.o"), "%.o%");
  assertEquals(likeFilter("ab*longer[xyz]c"), "%longer%");
  assertEquals(likeFilter("[]abcdef]x"), "%x%");
  assertEquals(likeFilter("100%_done\\*"), "%100\\%\\_done\\\\%");
  assertEquals(likeFilter("*"), "%%");
});
