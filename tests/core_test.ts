/**
 * Backup and restore end to end, the real CLI against a real `keep serve` on
 * 127.0.0.1: round trips of every kind of entry, restores of a subtree and
 * over a non-empty destination, dedup across projects, and what travels on
 * the wire (the upload as a tar.gz, the head manifest, deflated headers).
 */

import { assert, assertEquals, assertMatch } from "./assert.ts";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import {
  assertSameTree,
  captureProxy,
  json,
  keep,
  keepOk,
  randomData,
  snapshot,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";

interface BackupJson {
  commit: {
    id: string;
    seq: number;
    counts: Record<string, number>;
    stats: Record<string, number>;
  };
  incomplete: number;
}

const KOREAN = "한국어_파일";

Deno.test("backup and restore round-trip two commits with every kind of entry", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, {
    "README.md": "# app\n",
    "src/main.c": "int main(void) { return 0; }\n",
    "src/lib/util.c": "void util(void) {}\n".repeat(100),
    "src/lib/deep/er/still/x.h": "#define X 1\n",
    "build/empty.o": "",
    "build/big.bin": randomData(65536),
    [`docs/${KOREAN}.txt`]: "안녕하세요\n",
    "docs/emoji_🎉.txt": "party\n",
    "empty-dir": { dir: true },
    "link-to-main": { link: "src/main.c" },
    "dangling": { link: "../outside/nowhere" },
  });
  Deno.chmodSync(join(src, "src/main.c"), 0o755);
  const before1 = snapshot(src, { dirTimes: true });
  const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "app" };
  const b1 = json<BackupJson>(
    await keepOk(["backup", "--settle", "0", "--json", "-m", "first", src], 0, { env }),
  );
  assertEquals(b1.commit.counts.added, Object.keys(before1).length);
  assertEquals(b1.commit.stats.filesReceived, 8);

  // Modify, add, delete.
  Deno.writeTextFileSync(join(src, "src/main.c"), "int main(void) { return 1; }\n");
  Deno.writeTextFileSync(join(src, "src/new.c"), "new\n");
  Deno.removeSync(join(src, "build/empty.o"));
  Deno.removeSync(join(src, "dangling"));
  Deno.writeTextFileSync(join(src, "build/added.txt"), "added\n");
  const before2 = snapshot(src, { dirTimes: true });
  const b2 = json<BackupJson>(
    await keepOk(["backup", "--settle", "0", "--json", "-m", "second", src], 0, { env }),
  );
  // The server received only the changed and added files.
  assertEquals(b2.commit.stats.filesReceived, 3);
  assertEquals(b2.commit.counts.deleted, 2);
  assert(
    b2.commit.stats.bytesReceived < 200,
    `second upload carried ${b2.commit.stats.bytesReceived} bytes`,
  );

  for (const [commit, expected] of [[b1.commit.id, before1], [b2.commit.id, before2]] as const) {
    const dest = await tempDir();
    await Deno.remove(dest);
    const r = await keepOk(["restore", "--commit", commit, dest], 0, { env });
    assertMatch(r.stdout, new RegExp(`commit ${commit}`));
    assertSameTree(snapshot(dest, { dirTimes: true }), expected, `restore of ${commit}`);
  }

  const log = await keepOk(["log"], 0, { env });
  assertMatch(log.stdout, /#2 .*second/);
  assertMatch(log.stdout, /#1 .*first/);
});

Deno.test("restore refuses a non-empty destination without --overwrite", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "a.txt": "a" });
  const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "p1" };
  await keepOk(["backup", "--settle", "0", src], 0, { env });
  const dest = await tempDir();
  writeTree(dest, { "a.txt": "old", "keep-me.txt": "mine" });
  const r = await keep(["restore", dest], { env });
  assertEquals(r.code, 2);
  assertMatch(r.stderr, /^keep: Cannot restore into .*: it is not empty \(use --overwrite/);
  assertEquals(Deno.readTextFileSync(join(dest, "a.txt")), "old");
  await keepOk(["restore", "--overwrite", dest], 0, { env });
  assertEquals(Deno.readTextFileSync(join(dest, "a.txt")), "a");
  assertEquals(Deno.readTextFileSync(join(dest, "keep-me.txt")), "mine");
});

Deno.test("restore of a path prefix writes only that subtree", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, {
    "src/a/x.c": "x",
    "src/a/y.c": "y",
    "src/b.c": "b",
    "src-other/z": "z",
    "top.txt": "t",
  });
  const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "p2" };
  await keepOk(["backup", "--settle", "0", src], 0, { env });
  const dest = await tempDir();
  await keepOk(["restore", "--path", "src/a", dest], 0, { env });
  assertEquals(Object.keys(snapshot(dest)).sort(), ["src", "src/a", "src/a/x.c", "src/a/y.c"]);
  const missing = await keep(["restore", "--path", "nope", await tempDir()], { env });
  assertEquals(missing.code, 1);
  assertMatch(missing.stderr, /Cannot restore nope: not in commit/);
});

Deno.test("a second project with the same files stores no new blobs (global dedup)", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const spec: Record<string, Uint8Array> = {};
  for (let i = 0; i < 20; i++) spec[`f${i}.bin`] = randomData(1000 + i * 5000);
  writeTree(src, spec);
  const one = json<BackupJson>(
    await keepOk(["backup", "--settle", "0", "--json", "-s", server.url, "-p", "one", src]),
  );
  assertEquals(one.commit.stats.newBlobs, 20);
  const copy = await tempDir();
  writeTree(copy, spec);
  // Sent anyway (--no-negotiate): the server finds it has every content.
  const two = json<BackupJson>(
    await keepOk([
      "backup",
      "--settle",
      "0",
      "--json",
      "--no-negotiate",
      "-s",
      server.url,
      "-p",
      "two",
      copy,
    ]),
  );
  assertEquals(two.commit.stats.filesReceived, 20);
  assertEquals(two.commit.stats.newBlobs, 0);
  assertEquals(two.commit.stats.newBlobBytes, 0);
  // Negotiated (the default): nothing of it is sent at all.
  const three = json<BackupJson>(
    await keepOk(["backup", "--settle", "0", "--json", "-s", server.url, "-p", "three", copy]),
  );
  assertEquals(three.commit.stats.filesReceived, 0);
  assertEquals(three.commit.counts.added, 20);
  assertEquals(three.commit.stats.newBlobs, 0);
  const v = await keepOk(["verify", "--data", server.dataDir]);
  assertMatch(v.stdout, /keep verify: OK/);
  assertMatch(v.stdout, /blobs +20 /);
});

Deno.test("tar -tzvf lists a captured upload: the files and the manifest entries", async () => {
  await using server = await startServer();
  const proxy = captureProxy(server.url);
  const src = await tempDir();
  try {
    writeTree(src, {
      "dir/file.txt": "hello\n",
      [`dir/${"long_name_".repeat(15)}.txt`]: "long\n",
      [`${KOREAN}.txt`]: "k\n",
      "link": { link: "dir/file.txt" },
    });
    await keepOk(["backup", "--settle", "0", "-s", proxy.url, "-p", "cap", src]);
    assertEquals(proxy.uploads.length, 1);
    const file = join(await tempDir(), "upload.tar.gz");
    Deno.writeFileSync(file, proxy.uploads[0]);
    for (const tar of ["tar", "bsdtar"]) {
      const out = await new Deno.Command(tar, {
        args: ["-tzvf", file],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assertEquals(out.code, 0, `${tar} failed: ${new TextDecoder().decode(out.stderr)}`);
      assertEquals(new TextDecoder().decode(out.stderr), "", `${tar} warned`);
      const listing = new TextDecoder().decode(out.stdout);
      for (
        const name of [
          ".keep-commit.json",
          "dir/file.txt",
          `dir/${"long_name_".repeat(15)}.txt`,
          `${KOREAN}.txt`,
          "link -> dir/file.txt",
          ".keep-changes.ndjson",
        ]
      ) {
        assert(listing.includes(name), `${tar} listing lacks ${name}:\n${listing}`);
      }
      assertMatch(listing, /-rw-r--r--.* 6 .*dir\/file\.txt/);
    }
  } finally {
    await proxy.close();
  }
});

Deno.test("the head manifest is gzip'd NDJSON sorted by path, cached per head", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "b.txt": "b", "a/x.txt": "x", "a-b": "dash" });
  const url = `${server.url}/v1/projects/man/manifest`;
  const empty = gunzipSync(new Uint8Array(await (await fetch(url)).arrayBuffer())).toString();
  assertEquals(empty, '{"commit":null}\n');
  await keepOk(["backup", "-s", server.url, "-p", "man", "--settle", "0", src]);
  const raw1 = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const lines = gunzipSync(raw1).toString().trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(lines[0].commit.seq, 1);
  assertEquals(lines.slice(1).map((e) => e.p), ["a", "a-b", "a/x.txt", "b.txt"]);
  assertEquals(lines[3].h, "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881");
  // Two forms per head, both cached: whole, and "stat" (no hashes) for the backup's diff
  // (built second: a request for it waits for it).
  await (await fetch(`${url}?fields=stat`)).arrayBuffer();
  const cached = Deno.readDirSync(join(server.dataDir, "cache")).toArray().map((e) => e.name)
    .sort();
  assertEquals(cached.length, 2);
  assertEquals(new Uint8Array(await (await fetch(url)).arrayBuffer()), raw1);
  const statRes = await fetch(`${url}?fields=stat`);
  assertEquals(statRes.headers.get("keep-manifest-fields"), "stat");
  const stat = gunzipSync(new Uint8Array(await statRes.arrayBuffer())).toString().trim()
    .split("\n").map((l) => JSON.parse(l));
  assertEquals(stat[0], lines[0]);
  assertEquals(stat.slice(1), lines.slice(1).map(({ h: _h, x: _x, ...rest }) => rest));
  assert(stat[3].s === 1 && stat[3].h === undefined && stat[3].x === undefined);
  const bad = await fetch(`${url}?fields=hashes`);
  assertEquals(bad.status, 400);
  assert((await bad.json()).error.message.includes("unknown fields hashes"));
  Deno.writeTextFileSync(join(src, "c.txt"), "c");
  await keepOk(["backup", "-s", server.url, "-p", "man", "--settle", "0", src]);
  const lines2 = gunzipSync(new Uint8Array(await (await fetch(url)).arrayBuffer())).toString()
    .trim().split("\n");
  assertEquals(JSON.parse(lines2[0]).commit.seq, 2);
  assertEquals(lines2.length, 6);
  await (await fetch(`${url}?fields=stat`)).arrayBuffer();
  const cached2 = Deno.readDirSync(join(server.dataDir, "cache")).toArray().map((e) => e.name)
    .sort();
  assertEquals(cached2.length, 2);
  assert(cached2[0] !== cached[0] && cached2[1] !== cached[1]);
});

Deno.test("the cached head manifest, built incrementally from the parent's, equals one built from the index", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const spec: Record<string, string> = {};
  for (let i = 0; i < 300; i++) spec[`d${i % 7}/f${i}.txt`] = `file ${i}\n`;
  spec['odd/q"uote\\back.txt'] = "escapes";
  spec["odd/한글 🎉.txt"] = "utf8";
  writeTree(src, spec);
  const run = () => keepOk(["backup", "-s", server.url, "-p", "inc", "--settle", "0", src]);
  await run();
  const steps: (() => void)[] = [
    () => Deno.writeTextFileSync(join(src, "d1/f1.txt"), "changed"),
    () => Deno.removeSync(join(src, "d2/f2.txt")),
    () => writeTree(src, { "d0/new.txt": "n", "a-first.txt": "a", "zz/last.txt": "z" }),
    () => Deno.chmodSync(join(src, "d3/f3.txt"), 0o600),
    () => Deno.removeSync(join(src, "d4"), { recursive: true }),
    () => {}, // no change at all
  ];
  const text = async (query: string) => {
    const res = await fetch(`${server.url}/v1/projects/inc/manifest${query}`);
    return gunzipSync(new Uint8Array(await res.arrayBuffer())).toString();
  };
  for (const step of steps) {
    step();
    await run();
    const cached = await text("");
    const id = JSON.parse(cached.slice(0, cached.indexOf("\n"))).commit.id;
    const fresh = await text(`?commit=${id}`);
    assertEquals(cached, fresh);
    // The stat form: copied, or stripped from the whole one; the same as built from the index.
    const stat = await text("?fields=stat");
    assertEquals(stat, await text(`?commit=${id}&fields=stat`));
    const strip = (t: string) =>
      t.trim().split("\n").map((l) => {
        const { h: _h, x: _x, ...rest } = JSON.parse(l);
        return rest;
      });
    assertEquals(strip(stat), strip(cached));
    assert(!stat.includes('"h":') && cached.includes('"h":'));
  }
  assert((await text("")).includes('"p":"odd/q\\"uote\\\\back.txt"'));
});

Deno.test("tar headers travel deflated both ways: 2,000 tiny files cost ~0.2 KB each, not ~2 KB", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const spec: Record<string, string> = {};
  for (let i = 0; i < 2000; i++) spec[`d${i % 20}/file-${i}.o`] = `${i}`;
  writeTree(src, spec);
  const up = json<BackupJson>(
    await keepOk(["backup", "--settle", "0", "--json", "-s", server.url, "-p", "tiny", src]),
  );
  assertEquals(up.commit.stats.filesReceived, 2000);
  // Stored, each file's pax and ustar blocks plus padding are ~2 KB on the wire.
  const upload = up.commit.stats.wireBytes;
  assert(upload < 2000 * 400, `upload of 2000 tiny files: ${upload} bytes`);
  const res = await fetch(`${server.url}/v1/projects/tiny/archive?commit=latest`);
  const archive = new Uint8Array(await res.arrayBuffer());
  assert(archive.length < 2000 * 400, `archive of 2000 tiny files: ${archive.length} bytes`);
  // Still one tar.gz: every file is in it.
  const names = new TextDecoder().decode(gunzipSync(archive)).match(/file-\d+\.o/g) ?? [];
  assertEquals(new Set(names).size, 2000);
});
