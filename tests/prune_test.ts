/**
 * keep prune: old commits go, the kept ones restore, unneeded blobs are freed.
 */

import { assertEquals, assertMatch } from "./assert.ts";
import {
  assertSameTree,
  json,
  keep,
  keepOk,
  randomData,
  type Snapshot,
  snapshot,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";

Deno.test("prune keeps the newest N commits, frees blobs only they used, and needs an admin token", async () => {
  const server = await startServer({ noAuth: false });
  const src = await tempDir();
  try {
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
    assertEquals([dry.commitsRemoved, dry.commitsKept, dry.versionsRemoved], [3, 2, 3]);
    const busy = await keep(["prune", "--data", server.dataDir, "--project", "pr", "-k", "2"]);
    assertEquals(busy.code, 5);
    assertMatch(busy.stderr, /keep serve is running on it; use --server/);

    const r = json<Record<string, number>>(
      await keepOk(["prune", "--keep-last", "2", "--json"], 0, { env }),
    );
    assertEquals([r.commitsRemoved, r.blobsRemoved], [3, 3]);
    const log = json<{ id: string }[]>(await keepOk(["log", "--json"], 0, { env }));
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
  } finally {
    await server.stop();
  }
});
