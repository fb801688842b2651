/**
 * Concurrency: backups of one project from two hosts at once, ten projects
 * at once, reads while a long upload is in progress, and a head that moves
 * on between a backup's manifest and its hash lookups.
 */

import { join } from "node:path";
import { runBackup } from "../src/client/backup.ts";
import { KeepClient } from "../src/http/client.ts";
import { assert, assertEquals } from "./assert.ts";
import {
  assertSameTree,
  keep,
  keepOk,
  logJson,
  randomData,
  snapshot,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";

Deno.test("two hosts backing up one project at once: both land on the first attempt, in a chain, each its own tree", async () => {
  await using server = await startServer();
  const client = new KeepClient({ server: server.url });
  try {
    const hostA = await tempDir();
    const hostB = await tempDir();
    writeTree(hostA, { "shared.txt": "A\n", "a-only.bin": randomData(3 << 20) });
    writeTree(hostB, { "shared.txt": "B\n", "b-only.bin": randomData(3 << 20) });
    const remote = client.remote("same");
    // Both read the same (empty) head; the server places the second on the first.
    const [a, b] = await Promise.all([
      runBackup(hostA, remote, { settleMs: 0, host: "host-a" }),
      runBackup(hostB, remote, { settleMs: 0, host: "host-b" }),
    ]);
    assertEquals([a.attempts, b.attempts], [1, 1]);
    const [firstDone, secondDone] = a.commit.seq === 1 ? [a, b] : [b, a];
    assertEquals(secondDone.commit.parent, firstDone.commit.id);
    assertEquals(secondDone.commit.seq, 2);
    for (const [r, dir] of [[a, hostA], [b, hostB]] as const) {
      const dest = await tempDir();
      await keepOk(["restore", "-s", server.url, "-p", "same", "--commit", r.commit.id, dest]);
      assertSameTree(snapshot(dest), snapshot(dir));
    }

    // The same through the real CLI from two processes started together.
    writeTree(hostA, { "shared.txt": "A2\n" });
    writeTree(hostB, { "shared.txt": "B2\n" });
    const runs = await Promise.all(
      [hostA, hostB].map((dir) =>
        keep(["backup", "-s", server.url, "-p", "same", "--settle", "0", "--json", dir])
      ),
    );
    for (const r of runs) assertEquals(r.code, 0, r.stderr);
    const log = logJson<{ seq: number; parent: string | null; id: string }>(
      await keepOk(["log", "-s", server.url, "-p", "same", "--json"]),
    );
    assertEquals(log.map((c) => c.seq), [4, 3, 2, 1]);
    for (let i = 0; i < 3; i++) assertEquals(log[i].parent, log[i + 1].id);
  } finally {
    client.close();
  }
});

Deno.test("ten projects backing up at once: no lock errors, every commit correct", async () => {
  await using server = await startServer();
  const dirs: string[] = [];
  for (let i = 0; i < 10; i++) {
    const d = await tempDir();
    const spec: Record<string, Uint8Array | string> = { "common.txt": "shared by all\n" };
    for (let f = 0; f < 30; f++) spec[`p${i}/f${f}.bin`] = randomData(20_000 + f * 1000);
    writeTree(d, spec);
    dirs.push(d);
  }
  const runs = await Promise.all(
    dirs.map((d, i) => keep(["backup", "-s", server.url, "-p", `proj${i}`, "--settle", "0", d])),
  );
  for (const r of runs) assertEquals(r.code, 0, r.stderr);
  for (let i = 0; i < 10; i++) {
    const dest = await tempDir();
    await keepOk(["restore", "-s", server.url, "-p", `proj${i}`, dest]);
    assertSameTree(snapshot(dest), snapshot(dirs[i]), `proj${i}`);
  }
  const v = await keepOk(["verify", "--data", server.dataDir]);
  assert(v.stdout.includes("keep verify: OK"));
});

Deno.test("reads never wait for a long upload", async () => {
  await using server = await startServer();
  const client = new KeepClient({ server: server.url });
  try {
    const other = await tempDir();
    writeTree(other, { "x.txt": "x\n" });
    await keepOk(["backup", "-s", server.url, "-p", "reader", "--settle", "0", other]);
    const slow = await tempDir();
    for (let i = 0; i < 24; i++) writeTree(slow, { [`f${i}.bin`]: randomData(256 << 10) });
    // An upload that trickles: the real archive, released in pieces over ~3 s.
    const remote = client.remote("slow");
    const trickle = {
      latest: remote.latest,
      upload: (body: ReadableStream<Uint8Array>) => {
        const reader = body.getReader();
        const slowed = new ReadableStream<Uint8Array>({
          async pull(c) {
            const r = await reader.read();
            if (r.done) return c.close();
            for (let i = 0; i < r.value.length; i += 64 << 10) {
              await new Promise((res) => setTimeout(res, 60));
              c.enqueue(r.value.subarray(i, i + (64 << 10)));
            }
          },
        });
        return remote.upload(slowed);
      },
    };
    const started = performance.now();
    let uploadEnded = Infinity;
    const upload = runBackup(slow, trickle, { settleMs: 0, compress: "none" })
      .finally(() => uploadEnded = performance.now());
    await new Promise((r) => setTimeout(r, 500));
    const latencies: number[] = [];
    const dest = await tempDir();
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      await client.head("reader");
      await client.commits("reader");
      latencies.push(performance.now() - t);
    }
    await keepOk(["restore", "-s", server.url, "-p", "reader", dest]);
    const restoreEnded = performance.now();
    assert(restoreEnded < uploadEnded, "the restore ended only after the upload did: it waited");
    const result = await upload;
    const uploadMs = performance.now() - started;
    assert(uploadMs > 4000, `the upload took only ${uploadMs} ms; the test needs a long one`);
    assertEquals(result.commit.stats.filesReceived, 24);
    // Waiting for the upload would take over 4 s; 2.5 s allows for a loaded CI box.
    assert(
      Math.max(...latencies) < 2500,
      `reads took ${latencies.map((l) => l.toFixed(0)).join(", ")} ms`,
    );
    assertEquals(Deno.readTextFileSync(join(dest, "x.txt")), "x\n");
  } finally {
    client.close();
  }
});

Deno.test("when the head moves on before a backup asks for its suspects' hashes, they are sent whole and the commit lands", async () => {
  await using server = await startServer();
  const client = new KeepClient({ server: server.url });
  try {
    const src = await tempDir();
    const spec: Record<string, string> = {};
    for (let i = 0; i < 20; i++) spec[`f${i}.txt`] = `file ${i}\n`;
    writeTree(src, spec);
    const remote = client.remote("moved");
    await runBackup(src, remote, { settleMs: 0 });
    // Another host's copy of the same files (times kept).
    const other = join(await tempDir(), "copy");
    const cp = await new Deno.Command("cp", { args: ["-a", src, other] }).output();
    assert(cp.success);
    // Mode and ctime change on every file: all suspects, whose hashes the backup asks for.
    for (const p of Object.keys(spec)) Deno.chmodSync(join(src, p), 0o600);
    let lookups = 0;
    const moving = {
      latest: remote.latest,
      upload: remote.upload,
      entries: async (commit: string, paths: string[]) => {
        if (++lookups === 1) {
          // Another host commits first; for a backup token the old head's entries are then
          // out of reach (403): simulated here.
          await runBackup(other, client.remote("moved"), { settleMs: 0 });
          const { KeepError } = await import("../src/errors.ts");
          throw new KeepError("forbidden", "Cannot allow this: the head moved");
        }
        return await remote.entries!(commit, paths);
      },
    };
    const r = await runBackup(src, moving, { settleMs: 0 });
    // Without the hashes the 20 files went whole; the server placed the commit on the
    // other host's head, as the tree this host scanned.
    assertEquals(r.attempts, 1);
    assertEquals(lookups, 1);
    assertEquals(r.commit.stats.filesReceived, 20);
    assertEquals(r.commit.seq, 3);
    const dest = await tempDir();
    await keepOk(["restore", "-s", server.url, "-p", "moved", dest]);
    assertSameTree(snapshot(dest), snapshot(src));
  } finally {
    client.close();
  }
});
