/**
 * keep diff, find and history against a real server, and the one versioned
 * `--json` object every command prints (errors too), driven as a user runs
 * the CLI.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { json, keep, keepOk, startServer, tempDir, writeTree } from "./helpers.ts";

interface BackupJson {
  commit: { id: string; seq: number };
}

async function twoCommits() {
  const server = await startServer();
  const src = await tempDir();
  writeTree(src, {
    "src": { dir: true },
    "src/main.c": "int main(){}\n",
    "src/util.c": "util\n",
    "build": { dir: true },
    "build/main.o": "object one",
    "README": "read me\n",
  });
  const s = ["-s", server.url, "-p", "app"];
  const one = json<BackupJson>(await keepOk(["backup", ...s, "--settle", "0", "--json", src]));
  Deno.writeTextFileSync(join(src, "build/main.o"), "object two, longer");
  Deno.removeSync(join(src, "src/util.c"));
  Deno.writeTextFileSync(join(src, "build/extra.o"), "x");
  Deno.chmodSync(join(src, "README"), 0o600);
  const two = json<BackupJson>(await keepOk(["backup", ...s, "--settle", "0", "--json", src]));
  return { server, s, one: one.commit, two: two.commit };
}

Deno.test("keep diff lists added, changed, deleted and metadata-only paths with sizes", async () => {
  const { server, s, one, two } = await twoCommits();
  await using _ = server;
  const text = await keepOk(["diff", ...s, one.id, `#${two.seq}`]);
  const lines = text.stdout.trim().split("\n");
  assertEquals(lines.length, 5);
  assertMatch(lines[0], /^m +8 B +0 B {2}README {2}\(mode 644→600\)$/);
  assertMatch(lines[1], /^\+ +1 B +\+1 B {2}build\/extra\.o$/);
  assertMatch(lines[2], /^~ +18 B +\+8 B {2}build\/main\.o {2}\(10 B → 18 B\)$/);
  assertMatch(lines[3], /^- +5 B +-5 B {2}src\/util\.c$/);
  assertMatch(lines.at(-1)!, /1 added, 1 changed, 1 deleted, 1 metadata-only; size \+4 B$/);
  const j = json<{ items: { path: string; kind: string }[]; totals: Record<string, number> }>(
    await keepOk(["diff", ...s, "--path", "build", "--json", one.id, two.id]),
  );
  assertEquals(j.items.map((i) => `${i.kind} ${i.path}`), [
    "added build/extra.o",
    "changed build/main.o",
  ]);
  assertEquals(j.totals, { added: 1, changed: 1, deleted: 0, meta: 0, delta: 9 });
});

Deno.test("keep find and keep history show every version with the commits it lives in", async () => {
  const { server, s, one, two } = await twoCommits();
  await using _ = server;
  const f = await keepOk(["find", ...s, "*.o"]);
  const lines = f.stdout.trim().split("\n");
  assertEquals(lines[0], "build/extra.o");
  assertMatch(lines[1], new RegExp(`^  #${two.seq} +1 commit +1 B  -rw-r--r--  2d711642b726`));
  assertEquals(lines[2], "build/main.o");
  assertMatch(lines[3], new RegExp(`^  #${two.seq} +1 commit +18 B`));
  assertMatch(lines[4], new RegExp(`^  #${one.seq} +1 commit +10 B`));
  const fj = json<{ paths: { path: string }[]; truncated: boolean }>(
    await keepOk(["find", ...s, "--json", "src/*"]),
  );
  assertEquals(fj.paths.map((p) => p.path), ["src/main.c", "src/util.c"]);
  assertEquals(fj.truncated, false);
  const h = json<{ versions: { size: number; commits: number; first: { id: string } }[] }>(
    await keepOk(["history", ...s, "--json", "src/main.c"]),
  );
  assertEquals(h.versions.map((v) => [v.size, v.commits, v.first.id]), [[13, 2, one.id]]);
  const text = await keepOk(["history", ...s, "build/main.o"]);
  assertMatch(text.stdout, /^build\/main\.o: 2 versions\n {2}#2 /);
  const none = await keep(["history", ...s, "nope"]);
  assertEquals(none.code, 1);
  assertEquals(none.stderr.trim(), "keep: Cannot show history of nope: no commit of app has it");
  const empty = await keepOk(["find", ...s, "*.rs"]);
  assertEquals(empty.stdout, "");
  assertMatch(empty.stderr, /no path of app matches \*\.rs/);
});

Deno.test("--json: one {keep: 1} object on stdout, for results and for errors alike", async () => {
  const { server, s, one } = await twoCommits();
  await using _ = server;
  const log = json<{ commits: { id: string }[] }>(await keepOk(["log", ...s, "--json"]));
  assertEquals(log.commits.length, 2);
  const ls = json<{ commit: { id: string }; entries: { p: string }[] }>(
    await keepOk(["ls", ...s, "--commit", one.id, "--path", "src", "--json"]),
  );
  assertEquals(ls.entries.map((e) => e.p), ["src", "src/main.c", "src/util.c"]);
  for (
    const [args, code, errCode] of [
      [["diff", ...s, "--json", one.id, "ffffffff"], 1, "not_found"],
      [["diff", ...s, "--json", one.id], 2, "usage"],
      [["find", ...s, "--json", "--limit", "x", "*"], 2, "usage"],
      [["log", "-s", "http://127.0.0.1:1", "-p", "app", "--json"], 5, "unavailable"],
      [["backup", "--json", "--bogus"], 2, "usage"],
      [["--json"], 2, "usage"],
      [["--json", "bogus"], 2, "usage"],
    ] as const
  ) {
    const r = await keep([...args]);
    assertEquals(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    const o = JSON.parse(r.stdout);
    assertEquals([o.keep, o.error.code, o.error.exit], [1, errCode, code], r.stdout);
    assert(r.stderr.startsWith("keep: Cannot "), r.stderr);
    assertEquals(r.stderr.trim().split("\n").length, 1);
  }
  // Help and version are JSON too when asked for it.
  for (const args of [["--json", "--help"], ["diff", "--json", "--help"], ["--json", "version"]]) {
    const r = await keep(args);
    assertEquals(r.code, 0, args.join(" "));
    const o = JSON.parse(r.stdout);
    assertEquals(o.keep, 1);
    assert(typeof (o.help ?? o.version) === "string", r.stdout);
  }
  // The help of the command asked for, wherever --json is.
  for (
    const args of [["help", "--json", "diff"], ["--json", "help", "diff"], [
      "diff",
      "--help",
      "--json",
    ]]
  ) {
    const r = await keep(args);
    assertEquals(r.code, 0, args.join(" "));
    assertMatch(JSON.parse(r.stdout).help, /^Usage: keep diff /, args.join(" "));
  }
});
