/**
 * Recompression at rest: an idle server re-deflates what clients sent at
 * level 1, moves nothing but bytes, and the store stays sound.
 */

import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import {
  assertSameTree,
  json,
  keepOk,
  snapshot,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";
import { rng } from "./seeded.ts";

function pending(dataDir: string): number {
  const db = new DatabaseSync(join(dataDir, "index.db"), { readOnly: true });
  try {
    return Number(
      (db.prepare("SELECT count(*) AS n FROM blobs WHERE pack IS NOT NULL AND level IS NULL")
        .get() as {
          n: number;
        }).n,
    );
  } finally {
    db.close();
  }
}

Deno.test("an idle server recompresses blobs at rest; content, dedup and verify stay right", async () => {
  await using server = await startServer({ args: ["--compact-idle", "300ms"] });
  const src = await tempDir();
  const r = rng(7);
  const words = [
    "static",
    "int",
    "return",
    "struct",
    "buffer",
    "const",
    "void",
    "size_t",
    "if",
    "else",
  ];
  const spec: Record<string, string> = {};
  for (let i = 0; i < 300; i++) {
    let text = "";
    while (text.length < 2000 + (i * 37) % 12000) {
      text += words[r(words.length)] + (r(8) ? " " : ";\n");
    }
    spec[`src/m${i % 9}/f${i}.c`] = text;
  }
  writeTree(src, spec);
  const expected = snapshot(src);
  await keepOk(["backup", "-s", server.url, "-p", "cmp", "--settle", "0", src]);
  const before = json<{ storedBytes: number }>(
    await keepOk(["verify", "--data", server.dataDir, "--json"]),
  );
  const deadline = Date.now() + 30_000;
  while (pending(server.dataDir) > 0) {
    assert(Date.now() < deadline, "compaction did not finish in 30 s");
    await new Promise((res) => setTimeout(res, 200));
  }
  await new Promise((res) => setTimeout(res, 500)); // the final repack of dead packs
  const after = json<{ ok: boolean; storedBytes: number; packSlack: number; blobs: number }>(
    await keepOk(["verify", "--data", server.dataDir, "--json"]),
  );
  assertEquals([after.ok, after.blobs], [true, 300]);
  assert(
    after.storedBytes < before.storedBytes * 0.9,
    `${before.storedBytes} -> ${after.storedBytes}`,
  );
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "cmp", dest]);
  assertSameTree(snapshot(dest), expected);
  // A second project with the same content still stores nothing new.
  const copy = await tempDir();
  writeTree(copy, spec);
  const two = json<{ commit: { stats: { newBlobs: number } } }>(
    await keepOk(["backup", "-s", server.url, "-p", "cmp2", "--settle", "0", "--json", copy]),
  );
  assertEquals(two.commit.stats.newBlobs, 0);
});
