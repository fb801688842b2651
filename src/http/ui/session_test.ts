import { createHash } from "node:crypto";
import { assert, assertEquals } from "../../../tests/assert.ts";
import { SqliteIndex } from "../../server/storage/sqlite_index.ts";
import { SessionStore } from "./session.ts";

function withIndex(): { index: SqliteIndex } & Disposable {
  const dir = Deno.makeTempDirSync({ prefix: "keep-sessions-" });
  const index = SqliteIndex.open(`${dir}/index.db`);
  return {
    index,
    [Symbol.dispose]() {
      index.closeSync();
      Deno.removeSync(dir, { recursive: true });
    },
  };
}

Deno.test("SessionStore keeps only the hash of a session's id, and any store on the index finds it", async () => {
  using s = withIndex();
  const { id, session } = await new SessionStore(s.index).create("tok1");
  const row = s.index.db.prepare("SELECT hash, token, csrf FROM sessions").get() as {
    hash: Uint8Array;
    token: string;
  };
  assertEquals(row.token, "tok1");
  assertEquals(
    new Uint8Array(row.hash),
    new Uint8Array(createHash("sha256").update(id).digest()),
  );
  // Another server's store on the same index.
  const other = await new SessionStore(s.index).get(id);
  assertEquals([other?.tokenId, other?.csrf], ["tok1", session.csrf]);
  // One character changed (the id may end in "A" itself: 1 run in 64 failed so).
  const near = id.slice(0, -1) + (id.endsWith("A") ? "B" : "A");
  assertEquals(await new SessionStore(s.index).get(near), null);
  assertEquals(await new SessionStore(s.index).get("short"), null);
});

Deno.test("SessionStore ends a session idle for 2 h or older than 12 h, and on sign-out", async () => {
  using s = withIndex();
  let now = 1_000_000_000;
  const store = new SessionStore(s.index, () => now);
  const { id } = await store.create("tok1");
  // Requests every hour keep it alive ... until 12 h after it was made.
  for (let h = 1; h < 12; h++) {
    now += 3600_000;
    assert(await store.get(id), `alive after ${h} h`);
  }
  now += 3600_000 + 1;
  assertEquals(await store.get(id), null);
  const idle = (await store.create(null)).id;
  now += 2 * 3600_000 + 1;
  assertEquals(await store.get(idle), null, "idle for more than 2 h");
  const out = (await store.create("tok2")).id;
  await store.delete(out);
  assertEquals(await store.get(out), null);
  const n = s.index.db.prepare("SELECT count(*) AS n FROM sessions").get() as { n: number };
  assertEquals(Number(n.n), 0, "ended sessions leave no row");
});

Deno.test("SessionStore keeps at most 10,000 sessions: the least recently seen go first", async () => {
  using s = withIndex();
  let now = 1_000_000_000;
  const store = new SessionStore(s.index, () => now);
  const insert = s.index.db.prepare(
    "INSERT INTO sessions(hash, token, csrf, created, seen) VALUES (?, NULL, 'c', ?, ?)",
  );
  for (let i = 0; i < 10_000; i++) insert.run(new Uint8Array([i >> 8, i & 255]), now, now + i);
  now += 20_000;
  const { id } = await store.create("tok1");
  const n = s.index.db.prepare("SELECT count(*) AS n FROM sessions").get() as { n: number };
  assertEquals(Number(n.n), 10_000);
  assert(await store.get(id), "the new one stays");
  const oldest = s.index.db.prepare("SELECT 1 FROM sessions WHERE hash = ?").get(
    new Uint8Array([0, 0]),
  );
  assertEquals(oldest, undefined, "the least recently seen went");
});

Deno.test("an index of schema 4 gets its sessions table on opening", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "keep-sessions-" });
  try {
    const old = SqliteIndex.open(`${dir}/index.db`);
    old.db.exec("DROP TABLE sessions; PRAGMA user_version=4");
    old.closeSync();
    const index = SqliteIndex.open(`${dir}/index.db`);
    try {
      const version = index.db.prepare("PRAGMA user_version").get() as { user_version: number };
      assertEquals(Number(version.user_version), 6);
      const { id } = await new SessionStore(index).create("tok1");
      assertEquals((await new SessionStore(index).get(id))?.tokenId, "tok1");
    } finally {
      index.closeSync();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
