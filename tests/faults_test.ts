/**
 * Faults: a client killed mid-upload, a connection cut, a full disk, and
 * kill -9 of the server during uploads. Nothing committed is lost,
 * no half commit appears, temp files go away, the next backup succeeds.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import {
  assertSameTree,
  json,
  KEEP,
  keep,
  keepOk,
  logJson,
  randomData,
  type Snapshot,
  snapshot,
  startServer,
  tempDir,
  type TestServer,
  writeTree,
} from "./helpers.ts";

async function head(server: TestServer, project: string): Promise<string | null> {
  const res = await fetch(`${server.url}/v1/projects/${project}/head`);
  return (await res.json()).commit?.id ?? null;
}

function tmpFiles(dataDir: string): string[] {
  try {
    return [...Deno.readDirSync(join(dataDir, "tmp"))].map((e) => e.name);
  } catch {
    return [];
  }
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function bigTree(root: string, files: number, size: number): void {
  for (let i = 0; i < files; i++) writeTree(root, { [`big/f${i}.bin`]: randomData(size) });
}

async function verifyClean(dataDir: string): Promise<void> {
  const v = await keep(["verify", "--data", dataDir, "--json"]);
  const report = JSON.parse(v.stdout);
  assertEquals(v.code, 0, v.stdout);
  assertEquals([report.integrity, report.damaged, report.missing], ["ok", [], []]);
}

Deno.test("a client killed mid-upload leaves no commit and no temp files; the next backup succeeds", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "a.txt": "first\n" });
  await keepOk(["backup", "-s", server.url, "-p", "k", "--settle", "0", src]);
  const before = await head(server, "k");
  bigTree(src, 60, 4 << 20);
  const client = new Deno.Command(KEEP, {
    args: ["backup", "-s", server.url, "-p", "k", "--settle", "0", "--compress", "fast", src],
    stdout: "null",
    stderr: "null",
  }).spawn();
  // Kill it once the server is writing a large blob to tmp/.
  await waitFor(() => tmpFiles(server.dataDir).length > 0, 20_000, "an upload in progress");
  client.kill("SIGKILL");
  assertEquals((await client.status).code, 137);
  await waitFor(() => tmpFiles(server.dataDir).length === 0, 5_000, "temp files to be removed");
  assertEquals(await head(server, "k"), before);
  await verifyClean(server.dataDir);
  const r = json<{ commit: { parent: string } }>(
    await keepOk(["backup", "-s", server.url, "-p", "k", "--settle", "0", "--json", src]),
  );
  assertEquals(r.commit.parent, before);
});

/** A TCP proxy that cuts both sides once `limit` bytes went upstream. */
function cuttingProxy(targetPort: number, limit: number): { port: number; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const up = await Deno.connect({ hostname: "127.0.0.1", port: targetPort });
        let sent = 0;
        const down = (async () => {
          try {
            for await (const chunk of up.readable) await conn.write(chunk);
          } catch { /* cut */ }
        })();
        try {
          for await (const chunk of conn.readable) {
            const n = Math.min(chunk.length, limit - sent);
            if (n > 0) await up.write(chunk.subarray(0, n));
            sent += n;
            if (sent >= limit) break;
          }
        } catch { /* cut */ }
        try {
          up.close();
        } catch { /* closed */ }
        try {
          conn.close();
        } catch { /* closed */ }
        await down;
      })();
    }
  })();
  return { port: (listener.addr as Deno.NetAddr).port, close: () => listener.close() };
}

Deno.test("a connection cut mid-upload fails the backup cleanly and changes nothing", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const port = Number(new URL(server.url).port);
  const proxy = cuttingProxy(port, 3 << 20);
  try {
    writeTree(src, { "a.txt": "first\n" });
    await keepOk(["backup", "-s", server.url, "-p", "cut", "--settle", "0", src]);
    const before = await head(server, "cut");
    bigTree(src, 10, 1 << 20);
    const r = await keep([
      "backup",
      "-s",
      `http://127.0.0.1:${proxy.port}`,
      "-p",
      "cut",
      "--settle",
      "0",
      src,
    ]);
    assert(r.code === 5 || r.code === 1, `exit ${r.code}: ${r.stderr}`);
    assertMatch(r.stderr, /^keep: Cannot /);
    await waitFor(() => tmpFiles(server.dataDir).length === 0, 5_000, "temp files to be removed");
    assertEquals(await head(server, "cut"), before);
    await verifyClean(server.dataDir);
    await keepOk(["backup", "-s", server.url, "-p", "cut", "--settle", "0", src]);
  } finally {
    proxy.close();
  }
});

Deno.test("a full disk fails the upload with 'unavailable', keeps the head, and the next backup succeeds", async () => {
  const mnt = await tempDir("keep-full-");
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt],
  }).output();
  assertEquals(mount.code, 0, `mount tmpfs: ${new TextDecoder().decode(mount.stderr)}`);
  // No free-space reserve: this is about the disk filling up under an upload.
  const server = await startServer({ dataDir: join(mnt, "data"), args: ["--min-free", "0"] });
  const src = await tempDir();
  try {
    writeTree(src, { "small.txt": "small\n" });
    await keepOk(["backup", "-s", server.url, "-p", "full", "--settle", "0", src]);
    const before = await head(server, "full");
    bigTree(src, 12, 3 << 20); // 36 MiB of incompressible data into 24 MiB
    const r = await keep(["backup", "-s", server.url, "-p", "full", "--settle", "0", src]);
    assertEquals(r.code, 5, r.stderr);
    assertMatch(r.stderr, /^keep: Cannot accept upload: disk full/);
    assertEquals(await head(server, "full"), before);
    await waitFor(() => tmpFiles(server.dataDir).length === 0, 5_000, "temp files to be removed");
    // Once there is room (here: a smaller change), backups work again.
    Deno.removeSync(join(src, "big"), { recursive: true });
    writeTree(src, { "next.txt": "next\n" });
    await keepOk(["backup", "-s", server.url, "-p", "full", "--settle", "0", src]);
    await verifyClean(server.dataDir);
  } finally {
    await server.stop();
    await new Deno.Command("umount", { args: ["-l", mnt] }).output();
  }
});

Deno.test("kill -9 of the server during uploads, 20 times: the index opens, verify is clean, every commit restores", async () => {
  const dataDir = await tempDir("keep-crash-");
  const src = await tempDir();
  const expected = new Map<string, Snapshot>();
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  writeTree(src, { "README": "crash test\n" });
  for (let i = 0; i < 40; i++) writeTree(src, { [`small/s${i}.txt`]: `small ${i}\n`.repeat(100) });
  bigTree(src, 16, 2 << 20);
  let server = await startServer({ dataDir });
  try {
    const snap0 = snapshot(src);
    const t0 = performance.now();
    const first = json<{ commit: { id: string } }>(
      await keepOk([
        "backup",
        "-s",
        server.url,
        "-p",
        "crash",
        "--settle",
        "0",
        "--compress",
        "fast",
        "--json",
        src,
      ]),
    );
    // Kill at a random point of a backup's life: from process start to just before it would end.
    const life = performance.now() - t0;
    expected.set(first.commit.id, snap0);
    let killedDuring = 0;
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 16; i++) {
        if (rand() < 0.7) writeTree(src, { [`big/f${i}.bin`]: randomData(2 << 20) });
      }
      writeTree(src, { [`small/round${round}.txt`]: `round ${round}\n` });
      const snap = snapshot(src);
      const client = new Deno.Command(KEEP, {
        args: [
          "backup",
          "-s",
          server.url,
          "-p",
          "crash",
          "--settle",
          "0",
          "--compress",
          "fast",
          src,
        ],
        stdout: "null",
        stderr: "null",
      }).spawn();
      // A round sends ~70% of what the first backup sent: its life is that much shorter;
      // half of the first backup's life leaves room for a box that got faster since.
      const delay = Math.floor(rand() * life * 0.5);
      await new Promise((r) => setTimeout(r, delay));
      await server.stop("SIGKILL");
      const code = (await client.status).code;
      if (code !== 0) killedDuring++;
      server = await startServer({ dataDir });
      await verifyClean(dataDir);
      const now = await head(server, "crash");
      assert(now !== null);
      if (!expected.has(now)) expected.set(now, snap);
      assertEquals(tmpFiles(dataDir), []);
    }
    assert(killedDuring >= 10, `only ${killedDuring} of 20 kills hit an upload`);
    // Every commit that exists restores byte-identical to the tree it was made from.
    const log = logJson(
      await keepOk(["log", "-s", server.url, "-p", "crash", "--json", "-n", "100"]),
    );
    assertEquals(log.map((c) => c.id).sort(), [...expected.keys()].sort());
    for (const [id, snap] of expected) {
      const dest = await tempDir();
      await keepOk(["restore", "-s", server.url, "-p", "crash", "--commit", id, dest]);
      assertSameTree(snapshot(dest), snap, `commit ${id}`);
    }
    await keepOk(["backup", "-s", server.url, "-p", "crash", "--settle", "0", src]);
  } finally {
    await server.stop();
  }
});
