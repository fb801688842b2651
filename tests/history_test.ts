/**
 * History grows with changes, not with files × commits.
 */

import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { assertEquals } from "./assert.ts";
import { startServer, tempDir } from "./helpers.ts";
import { runBackup } from "../src/client/backup.ts";
import { KeepClient } from "../src/http/client.ts";

function rows(dataDir: string): { current: number; history: number; commits: number } {
  const db = new DatabaseSync(join(dataDir, "index.db"), { readOnly: true });
  try {
    const n = (sql: string) => Number((db.prepare(sql).get() as { n: number }).n);
    return {
      current: n("SELECT count(*) AS n FROM current"),
      history: n("SELECT count(*) AS n FROM history"),
      commits: n("SELECT count(*) AS n FROM commits"),
    };
  } finally {
    db.close();
  }
}

Deno.test("100 backups of an unchanged 10,000-file tree add no per-file rows", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const client = new KeepClient({ server: server.url });
  try {
    for (let d = 0; d < 100; d++) {
      Deno.mkdirSync(join(src, `d${d}`));
      for (let f = 0; f < 100; f++) {
        Deno.writeTextFileSync(join(src, `d${d}`, `f${f}.c`), `${d}/${f}\n`);
      }
    }
    // Let the files age past the settle window so no backup treats them as racily clean.
    const old = new Date(Date.now() - 60_000);
    for (const d of Deno.readDirSync(src)) {
      for (const f of Deno.readDirSync(join(src, d.name))) {
        Deno.utimeSync(join(src, d.name, f.name), old, old);
      }
      Deno.utimeSync(join(src, d.name), old, old);
    }
    const remote = client.remote("hist");
    const first = await runBackup(src, remote, { settleMs: 0 });
    assertEquals(first.commit.counts.files, 10_000);
    const after1 = rows(server.dataDir);
    assertEquals(after1, { current: 10_100, history: 0, commits: 1 });
    for (let i = 0; i < 99; i++) {
      const r = await runBackup(src, remote, { settleMs: 0 });
      assertEquals(r.commit.stats.filesReceived, 0);
      assertEquals(r.hashed, 0);
    }
    assertEquals(rows(server.dataDir), { current: 10_100, history: 0, commits: 100 });

    // One change costs one history row and one current row, nothing more.
    Deno.writeTextFileSync(join(src, "d7", "f7.c"), "changed\n");
    Deno.utimeSync(join(src, "d7", "f7.c"), old, old);
    Deno.utimeSync(join(src, "d7"), old, old);
    const changed = await runBackup(src, remote, { settleMs: 0 });
    assertEquals(changed.commit.counts.changed, 1);
    assertEquals(rows(server.dataDir), { current: 10_100, history: 1, commits: 101 });
  } finally {
    client.close();
  }
});
