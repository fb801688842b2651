/**
 * keep verify finds what a crash or a lost file would leave, and a head
 * manifest cache cut short by a crash is never served after a restart.
 */

import { join } from "node:path";
import { assertEquals, assertMatch } from "./assert.ts";
import { json, keep, keepOk, startServer, tempDir, writeTree } from "./helpers.ts";

Deno.test("keep verify, full and --quick, reports a missing pack file", async () => {
  const server = await startServer();
  const src = await tempDir();
  writeTree(src, { "a.txt": "a".repeat(5000), "b.txt": "b".repeat(7000) });
  await keepOk(["backup", "-s", server.url, "-p", "v", "--settle", "0", src]);
  await server.stop();
  const packs = [...Deno.readDirSync(join(server.dataDir, "packs"))].map((e) => e.name);
  assertEquals(packs.length, 1);
  Deno.removeSync(join(server.dataDir, "packs", packs[0]));
  for (const flags of [[], ["--quick"]]) {
    const r = await keep(["verify", "--data", server.dataDir, ...flags]);
    assertEquals(r.code, 4, r.stdout);
    assertMatch(r.stdout, /keep verify: DAMAGED/);
    assertMatch(r.stdout, /damaged +[0-9a-f]{64}: .*pack \d+ is missing/);
  }
});

Deno.test("a head manifest cache cut short by a crash is not served after a restart", async () => {
  const dataDir = await tempDir("keep-cache-");
  let server = await startServer({ dataDir });
  const src = await tempDir();
  try {
    const spec: Record<string, string> = {};
    for (let i = 0; i < 50; i++) spec[`f${i}.txt`] = `file ${i}`;
    writeTree(src, spec);
    await keepOk(["backup", "-s", server.url, "-p", "c", "--settle", "0", src]);
    // Wait for the cache of the head, then crash the server and leave the file
    // empty, as a power loss could (a clean stop removes the cache).
    await (await fetch(`${server.url}/v1/projects/c/manifest`)).arrayBuffer();
    await (await fetch(`${server.url}/v1/projects/c/manifest?fields=stat`)).arrayBuffer();
    await server.stop("SIGKILL");
    const cached = [...Deno.readDirSync(join(dataDir, "cache"))].map((e) => e.name);
    assertEquals(cached.length, 2); // the whole manifest and its stat form
    for (const name of cached) Deno.writeFileSync(join(dataDir, "cache", name), new Uint8Array());
    server = await startServer({ dataDir });
    Deno.removeSync(join(src, "f7.txt"));
    const r = json<{ commit: { counts: { deleted: number; files: number } } }>(
      await keepOk(["backup", "-s", server.url, "-p", "c", "--settle", "0", "--json", src]),
    );
    assertEquals([r.commit.counts.deleted, r.commit.counts.files], [1, 49]);
  } finally {
    await server.stop();
  }
});

Deno.test("restoring from a damaged store exits 4 and names the file (missing pack, flipped byte)", async () => {
  let server = await startServer();
  const src = await tempDir();
  try {
    writeTree(src, { "a.txt": "a".repeat(5000), "b.txt": "b".repeat(7000) });
    await keepOk(["backup", "-s", server.url, "-p", "v", "--settle", "0", src]);
    // A flipped byte inside the second blob's data: the client's decode fails.
    const packs = [...Deno.readDirSync(join(server.dataDir, "packs"))].map((e) => e.name);
    const pack = join(server.dataDir, "packs", packs[0]);
    const bytes = Deno.readFileSync(pack);
    bytes[bytes.length - 20] ^= 0xff;
    Deno.writeFileSync(pack, bytes);
    const flipped = await keep(["restore", "-s", server.url, "-p", "v", await tempDir()]);
    assertEquals(flipped.code, 4, flipped.stderr);
    assertMatch(flipped.stderr, /^keep: Cannot restore b\.txt: corrupt gzip member/m);
    // The pack gone (while the server was down): it says which file it cannot read.
    await server.stop();
    Deno.removeSync(pack);
    server = await startServer({ dataDir: server.dataDir });
    const missing = await keep(["restore", "-s", server.url, "-p", "v", await tempDir()]);
    assertEquals(missing.code, 4, missing.stderr);
    assertMatch(
      missing.stderr,
      /^keep: Cannot restore a\.txt: the server cannot read its content \(cannot read blob [0-9a-f]{64}: pack \d+ is missing\)/,
    );
  } finally {
    await server.stop();
  }
});
