/**
 * keep prune: old commits go, the kept ones restore, unneeded blobs are
 * freed, and archives and the compactor at work at the same time lose nothing.
 */

import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { concatBytes } from "../src/platform/concat_bytes.ts";
import { exportArchive } from "../src/server/archive.ts";
import { decodeMember, MemberSplitter } from "../src/format/gzip_member.ts";
import { openLocalStorage } from "../src/server/storage/open.ts";
import { Collector, pruneProject } from "../src/server/gc.ts";
import { TarParser } from "../src/format/tar.ts";
import { verifyStore } from "../src/server/verify.ts";
import {
  assertSameTree,
  json,
  keep,
  keepOk,
  logJson,
  randomData,
  type Snapshot,
  snapshot,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";

Deno.test("prune keeps the newest N commits, frees blobs only they used, and needs an admin token", async () => {
  await using server = await startServer({ noAuth: false, args: ["--gc-grace", "0s"] });
  const src = await tempDir();
  const admin = (await keepOk(["token", "create", "--data", server.dataDir, "--role", "admin"]))
    .stdout.trim();
  const backupTok = (await keepOk([
    "token",
    "create",
    "--data",
    server.dataDir,
    "--role",
    "backup",
    "--project",
    "pr",
  ]))
    .stdout.trim();
  const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "pr", KEEP_TOKEN: admin };
  const snaps: [string, Snapshot][] = [];
  writeTree(src, { "stable.txt": "kept in every commit\n" });
  for (let i = 0; i < 5; i++) {
    writeTree(src, { "changing.bin": randomData(50_000 + i) });
    const r = json<{ commit: { id: string } }>(
      await keepOk(["backup", "--settle", "0", "--json", src], 0, { env }),
    );
    snaps.push([r.commit.id, snapshot(src)]);
  }
  const denied = await keep(["prune", "--keep-last", "2"], {
    env: { ...env, KEEP_TOKEN: backupTok },
  });
  assertEquals(denied.code, 6);
  const dry = json<Record<string, number>>(
    await keepOk(["prune", "-k", "2", "--dry-run", "--json"], 0, { env }),
  );
  assertEquals([dry.commitsRemoved, dry.commitsKept, dry.gc], [3, 2, null]);
  const busy = await keep(["prune", "--data", server.dataDir, "--project", "pr", "-k", "2"]);
  assertEquals(busy.code, 5);
  assertMatch(busy.stderr, /keep serve is running on it; use --server/);

  const r = json<{ commitsRemoved: number; gc: { versionsRemoved: number; blobsSwept: number } }>(
    await keepOk(["prune", "--keep-last", "2", "--wait", "--json"], 0, { env }),
  );
  assertEquals([r.commitsRemoved, r.gc.versionsRemoved, r.gc.blobsSwept], [3, 3, 3]);
  const log = logJson(await keepOk(["log", "--json"], 0, { env }));
  assertEquals(log.map((c) => c.id), [snaps[4][0], snaps[3][0]]);
  for (const [id, snap] of snaps.slice(3)) {
    const dest = await tempDir();
    await keepOk(["restore", "--commit", id, dest], 0, { env });
    assertSameTree(snapshot(dest), snap);
  }
  const gone = await keep(["restore", "--commit", snaps[0][0], await tempDir()], { env });
  assertEquals(gone.code, 1);
  assertMatch(gone.stderr, /Cannot find commit/);
  const v = json<
    { ok: boolean; blobs: number; orphanBlobs: number; packSlack: number; orphanPacks: string[] }
  >(
    await keepOk(["verify", "--data", server.dataDir, "--json"]),
  );
  // Pack files that were mostly dead were rewritten: no slack left behind.
  assertEquals([v.ok, v.blobs, v.orphanBlobs, v.packSlack, v.orphanPacks], [true, 3, 0, 0, []]);
  // Backups continue on top of the pruned history.
  writeTree(src, { "after.txt": "after prune\n" });
  await keepOk(["backup", "--settle", "0", src], 0, { env });
});

Deno.test("an archive being streamed when prune moves and deletes packs still carries every file's content", async () => {
  const server = await startServer();
  const src = await tempDir();
  // 60 files kept, 240 dropped by the next commit: after prune, their pack is mostly dead
  // space and gets rewritten (moved, old pack deleted).
  const keepSpec: Record<string, Uint8Array> = {};
  for (let i = 0; i < 60; i++) keepSpec[`keep/f${i}.bin`] = randomData(20_000 + i);
  try {
    const dropSpec: Record<string, Uint8Array> = {};
    for (let i = 0; i < 240; i++) dropSpec[`drop/f${i}.bin`] = randomData(20_000);
    writeTree(src, { ...keepSpec, ...dropSpec });
    await keepOk(["backup", "-s", server.url, "-p", "mv", "--settle", "0", src]);
    await Deno.remove(join(src, "drop"), { recursive: true });
    await keepOk(["backup", "-s", server.url, "-p", "mv", "--settle", "0", src]);
  } finally {
    await server.stop();
  }
  // The server is stopped: drive its engine in-process, as its handlers do.
  const storage = await openLocalStorage(server.dataDir);
  try {
    const head = (await storage.index.headCommit("mv"))!;
    const packsBefore = [...Deno.readDirSync(join(server.dataDir, "packs"))].map((e) => e.name);
    const chunks: Uint8Array[] = [];
    const stream = exportArchive(storage, head);
    chunks.push((await stream.next()).value!); // the first page's blob places are read now
    const gc = new Collector(storage, { graceMs: 0 });
    const pruned = await pruneProject(storage, gc, "mv", { last: 1 }, { wait: true });
    await gc.close();
    assertEquals(pruned.commitsRemoved, 1);
    const packsAfter = [...Deno.readDirSync(join(server.dataDir, "packs"))].map((e) => e.name);
    assert(packsBefore.some((p) => !packsAfter.includes(p)), "no pack was rewritten");
    for await (const c of stream) chunks.push(c);
    // Every file arrives with the content its pax hash names.
    const seen = new Map<string, Uint8Array>();
    let name = "";
    let parts: Uint8Array[] = [];
    const parser = new TarParser({
      entry(h) {
        name = h.path;
        parts = [];
      },
      data(d) {
        parts.push(d.slice());
      },
      entryEnd() {
        if (name.endsWith(".bin")) seen.set(name, concatBytes(parts));
      },
    });
    const split = new MemberSplitter();
    for (const c of chunks) {
      split.push(c);
      for (let m = split.next(); m; m = split.next()) parser.push(decodeMember(m));
    }
    split.end();
    parser.finish();
    assertEquals([...seen.keys()].sort(), Object.keys(keepSpec).sort());
    for (const [path, data] of Object.entries(keepSpec)) assertEquals(seen.get(path), data, path);
    assert((await verifyStore(storage)).ok);
  } finally {
    await storage.close();
  }
});

/** Blobs not yet recompressed (level NULL), read while the server runs. */
function pendingCompaction(dataDir: string): number {
  const db = new DatabaseSync(join(dataDir, "index.db"), { readOnly: true });
  try {
    return Number(
      (db.prepare("SELECT count(*) AS n FROM blobs WHERE pack IS NOT NULL AND level IS NULL")
        .get() as { n: number }).n,
    );
  } finally {
    db.close();
  }
}

/** ~3 MB of compressible text in 800 files, different for each `seed`. */
function textTree(root: string, seed: number): void {
  const words = ["static", "int", "return", "buffer", "struct", "const", "void", "size_t"];
  let x = seed * 7919 + 1;
  for (let i = 0; i < 800; i++) {
    let s = `/* tree ${seed} file ${i} */\n`;
    while (s.length < 3000 + (i % 7) * 500) {
      x = (x * 1103515245 + 12345) >>> 0;
      s += words[x % words.length] + (x % 5 ? " " : ";\n");
    }
    Deno.mkdirSync(join(root, `d${i % 40}`), { recursive: true });
    Deno.writeTextFileSync(join(root, `d${i % 40}`, `f${i}.c`), s);
  }
}

Deno.test("prune while the idle compactor has its pack open loses nothing", async () => {
  await using server = await startServer({ args: ["--compact-idle", "300ms", "--gc-grace", "0s"] });
  const a = await tempDir();
  const b = await tempDir();
  textTree(a, 1);
  textTree(b, 2);
  await keepOk(["backup", "-s", server.url, "-p", "pc", "--settle", "0", a]);
  await keepOk(["backup", "-s", server.url, "-p", "pc", "--settle", "0", b]);
  const expected = snapshot(b);
  // Wait until the compactor has moved some of the first commit's blobs.
  const total = pendingCompaction(server.dataDir);
  const deadline = Date.now() + 30_000;
  while (pendingCompaction(server.dataDir) > total - 50) {
    assert(Date.now() < deadline, "the compactor did not start");
    await new Promise((r) => setTimeout(r, 20));
  }
  const res = await fetch(`${server.url}/v1/projects/pc/prune`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ keepLast: 1, wait: true }),
  });
  assertEquals(res.status, 200, await res.text());
  // Let the compactor finish its work, then check everything it touched.
  while (pendingCompaction(server.dataDir) > 0) {
    assert(Date.now() < deadline + 30_000, "compaction did not finish");
    await new Promise((r) => setTimeout(r, 100));
  }
  // GC again: it empties the packs the compactor left mostly dead.
  await keepOk(["prune", "-s", server.url, "-p", "pc", "-k", "1", "--wait"]);
  const v = json<{ ok: boolean; damaged: unknown[] }>(
    await keepOk(["verify", "--data", server.dataDir, "--json"], 0),
  );
  assertEquals([v.ok, v.damaged.length], [true, 0]);
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "pc", join(dest, "r")]);
  assertSameTree(snapshot(join(dest, "r")), expected);
});
