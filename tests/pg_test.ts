/**
 * `keep serve --index postgres://…` against a real PostgreSQL 15, with the
 * blobs in the real RGW (scripts/services): backup, restore, log and ls
 * through one server; two servers on one database and one bucket prefix
 * (hosts backing up one project at once through both land in a chain,
 * dedup and restores across servers, 409 for a parent that is no commit).
 * Each test gets a database of its own.
 */

import postgres from "postgres";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { commitHeader, Upload } from "./craft.ts";
import { post } from "./hostile.ts";
import {
  assertSameTree,
  json,
  keep,
  keepOk,
  snapshot,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";
import { freshPrefix, services, type ServicesEnv } from "./services.ts";

/** A new empty database on the services' PostgreSQL; dropped when the scope ends. */
async function freshDatabase(env: ServicesEnv): Promise<{ url: string } & AsyncDisposable> {
  const name = `kt_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const admin = postgres(env.KEEP_PG_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${name}`);
  return {
    url: env.KEEP_PG_URL.replace(/\/[^/]*$/, `/${name}`),
    async [Symbol.asyncDispose]() {
      await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
      await admin.end();
    },
  };
}

async function node(env: ServicesEnv, db: string, prefix: string) {
  return await startServer({
    args: ["--index", db, "--blobs", `s3://${env.KEEP_S3_BUCKET}/${prefix}`],
    env: { ...env },
  });
}

Deno.test("pg index: backup, restore, log and ls through a server whose data dir holds no index.db", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  await using server = await node(env, db.url, freshPrefix("pg1"));
  // The embedded store takes the same backups: both indexes must count them alike.
  await using embedded = await startServer();
  const src = await tempDir();
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  const both = async () => {
    type Commit = { id: string; counts: Record<string, number> };
    const args = ["backup", "--settle", "0", "--json", src];
    const pg = json<{ commit: Commit }>(await keepOk(args, 0, cli)).commit;
    const sqlite = json<{ commit: Commit }>(
      await keepOk(args, 0, { env: { KEEP_SERVER: embedded.url, KEEP_PROJECT: "app" } }),
    ).commit;
    assertEquals(pg.counts, sqlite.counts);
    return pg;
  };
  writeTree(src, {
    "a.txt": "alpha\n",
    "d/b.txt": "beta\n".repeat(1000),
    "d/e/c.bin": new Uint8Array(2_500_000).fill(7),
    "ln": { link: "a.txt" },
  });
  const one = (await both()).id;
  const first = snapshot(src);
  writeTree(src, { "a.txt": "alpha 2\n", "new.txt": "new\n" });
  Deno.removeSync(`${src}/d/b.txt`);
  const second = await both();
  assertEquals([second.counts.added, second.counts.deleted], [1, 1]);
  for (const [ref, snap] of [[one, first], ["latest", snapshot(src)]] as const) {
    const dest = await tempDir();
    await keepOk(["restore", "--commit", ref, dest], 0, cli);
    assertSameTree(snapshot(dest), snap);
  }
  const log = json<{ id: string; parent: string | null }[]>(
    await keepOk(["log", "--json"], 0, cli),
  );
  assertEquals(log.map((c) => [c.id, c.parent]), [[second.id, one], [one, null]]);
  assertMatch((await keepOk(["ls", "--commit", one], 0, cli)).stdout, /d\/b\.txt/);
  assert(!(await keepOk(["ls"], 0, cli)).stdout.includes("d/b.txt"));
  const names = [...Deno.readDirSync(server.dataDir)].map((e) => e.name);
  assert(!names.includes("index.db"), names.join(" "));
  // What is not done yet says so, with a usage error.
  const v = await keep(["verify", "--server", server.url]);
  assertEquals(v.code, 2, v.stderr);
  assertMatch(v.stderr, /not yet done on the PostgreSQL index/);
});

Deno.test("pg index: two servers on one database and bucket: one project backed up through both at once lands in a chain", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pg2");
  await using a = await node(env, db.url, prefix);
  await using b = await node(env, db.url, prefix);
  const via = (s: { url: string }, project = "farm") => ({
    env: { KEEP_SERVER: s.url, KEEP_PROJECT: project },
  });
  const base: Record<string, string> = {};
  for (let i = 0; i < 200; i++) base[`src/f${i}.c`] = `int f${i}(void) { return ${i}; }\n`;
  const host1 = await tempDir();
  const host2 = await tempDir();
  writeTree(host1, base);
  writeTree(host2, base);
  await keepOk(["backup", "--settle", "0", host1], 0, via(a));
  // host2's tree is the same: through the other server, nothing new is stored.
  const again = json<{ commit: { stats: { newBlobs: number } } }>(
    await keepOk(["backup", "--settle", "0", "--json", host2], 0, via(b)),
  );
  assertEquals(again.commit.stats.newBlobs, 0, "dedup across servers");
  writeTree(host1, { "src/f1.c": "changed on host 1\n", "only1.txt": "1\n" });
  writeTree(host2, { "src/f2.c": "changed on host 2\n", "only2.txt": "2\n" });
  const [r1, r2] = await Promise.all([
    keep(["backup", "--settle", "0", "--json", host1], via(a)),
    keep(["backup", "--settle", "0", "--json", host2], via(b)),
  ]);
  assertEquals([r1.code, r2.code], [0, 0], r1.stderr + r2.stderr);
  const c1 = json<{ commit: { id: string; seq: number } }>(r1).commit;
  const c2 = json<{ commit: { id: string; seq: number } }>(r2).commit;
  const log = json<{ id: string; seq: number; parent: string | null }[]>(
    await keepOk(["log", "--json"], 0, via(a)),
  );
  assertEquals(log.map((c) => c.seq), [4, 3, 2, 1]);
  for (let i = 0; i < log.length - 1; i++) assertEquals(log[i].parent, log[i + 1].id);
  assertEquals(new Set([c1.seq, c2.seq]), new Set([3, 4]));
  // Each commit is its host's tree, restored through the server that did not take it.
  for (const [c, host, other] of [[c1, host1, b], [c2, host2, a]] as const) {
    const dest = await tempDir();
    await keepOk(["restore", "--commit", c.id, dest], 0, via(other));
    assertSameTree(snapshot(dest), snapshot(host));
  }
  // A parent that is no commit of the project is refused, on either server.
  const body = new Upload().commit(commitHeader("0123456789abcdef")).file("x.txt", "x")
    .changes().end().bytes();
  const refused = await post(`${b.url}/v1/projects/farm/commits`, body);
  assertEquals(refused.status, 409, refused.text);
  assertMatch(refused.text, /conflict/);
  assertEquals(json<unknown[]>(await keepOk(["log", "--json"], 0, via(b))).length, 4);
});
