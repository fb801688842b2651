/**
 * The scale-out backends against real servers (scripts/services): Ceph RGW
 * for `keep serve --blobs s3://…`, PostgreSQL 15 for `--index postgres://…`.
 *
 * - Blobs in RGW: backup, restore, log, ls, verify, prune and GC end to
 *   end; objects gone or cut short behind the server's back; radosgw
 *   stopped and started between two backups.
 * - The index in PostgreSQL (blobs in RGW): backup, restore, log and ls
 *   counted alike by PostgreSQL and SQLite; two servers on one database
 *   and one bucket prefix (hosts backing up one project at once through
 *   both land in a chain, dedup and restores across servers, 409 for a
 *   parent that is no commit); PostgreSQL stopped between two backups.
 *
 * Each test has its own bucket prefix and database. One file, so its tests
 * run one after another: the outage tests stop radosgw or PostgreSQL, which
 * every test here needs. Keep every test that needs them in this file.
 */

import postgres from "postgres";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { commitHeader, Upload } from "./craft.ts";
import { post } from "./hostile.ts";
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
import {
  bucketClient,
  freshPrefix,
  restartPg,
  restartRgw,
  services,
  type ServicesEnv,
  stopPg,
  stopRgw,
} from "./services.ts";
import type { S3Client } from "../src/server/storage/s3_client.ts";
import { S3BlobStore } from "../src/server/storage/s3_blobs.ts";
import { KeepError } from "../src/errors.ts";

async function s3Server(env: ServicesEnv, prefix: string, args: string[] = [], dataDir?: string) {
  return await startServer({
    dataDir,
    // Whole files: these cases are about large blobs' multipart objects.
    args: ["--blobs", `s3://${env.KEEP_S3_BUCKET}/${prefix}`, "--chunk-over", "off", ...args],
    env: { ...env },
  });
}

async function keys(s3: S3Client, prefix: string): Promise<{ key: string; size: number }[]> {
  const out: { key: string; size: number }[] = [];
  for await (const page of s3.list(prefix)) out.push(...page);
  return out;
}

function smallFiles(n: number, seed: number): Record<string, string> {
  const spec: Record<string, string> = {};
  for (let i = 0; i < n; i++) spec[`src/f${i}.txt`] = `file ${i} of round ${seed}\n`.repeat(20 + i);
  return spec;
}

Deno.test("s3 blobs: backup, restore, log, ls, verify, prune and GC end to end on RGW", async () => {
  const env = await services();
  const s3 = bucketClient(env);
  const prefix = freshPrefix("e2e");
  await using server = await s3Server(env, prefix, ["--gc-grace", "0s"]);
  const src = await tempDir();
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  const snaps: [string, Snapshot][] = [];
  writeTree(src, { ...smallFiles(200, 0), "link": { link: "src/f1.txt" } });
  for (let i = 0; i < 3; i++) {
    // 20 MB: more than one multipart part (16 MiB); a new one each commit.
    writeTree(src, { "big.bin": randomData(20_000_000 + i), "round.txt": `round ${i}\n` });
    const r = json<{ commit: { id: string } }>(
      await keepOk(["backup", "--settle", "0", "--json", src], 0, cli),
    );
    snaps.push([r.commit.id, snapshot(src)]);
  }
  const objects = await keys(s3, prefix);
  const packs = objects.filter((o) => o.key.startsWith(`${prefix}packs/`));
  const large = objects.filter((o) => o.key.startsWith(`${prefix}blobs/`));
  assert(packs.length >= 3, `a pack per upload at least: ${packs.length}`);
  assertEquals(large.length, 3);
  for (const o of large) {
    assertMatch(o.key.slice(prefix.length), /^blobs\/[0-9a-f]{64}\.\d+$/);
    assert(o.size > 19_000_000, `a large blob is whole: ${o.size}`);
  }
  assert(objects.some((o) => o.key === `${prefix}keep-store.json`));
  // Nothing of the blobs in the data dir.
  const local = [...Deno.readDirSync(server.dataDir)].map((e) => e.name);
  assert(!local.includes("packs") && !local.includes("blobs"), local.join(" "));

  for (const [id, snap] of snaps) {
    const dest = await tempDir();
    await keepOk(["restore", "--commit", id, dest], 0, cli);
    assertSameTree(snapshot(dest), snap);
  }
  const log = logJson<{ id: string }>(await keepOk(["log", "--json"], 0, cli));
  assertEquals(log.map((c) => c.id), snaps.map(([id]) => id).reverse());
  const ls = await keepOk(["ls", "--path", "src"], 0, cli);
  assertMatch(ls.stdout, /src\/f19\.txt/);
  assertMatch((await keepOk(["verify", "--server", server.url], 0)).stdout, /OK/);
  // verify --data finds the bucket through DATA/blobs.json (keys from the environment).
  const direct = await keepOk(["verify", "--data", server.dataDir, "--json"], 0, {
    env: { ...env },
  });
  assertEquals(json<{ ok: boolean; blobs: number }>(direct).ok, true);

  const pruned = json<{ commitsRemoved: number; gc: { blobsSwept: number; packsDeleted: number } }>(
    await keepOk(["prune", "--keep-last", "1", "--wait", "--json"], 0, cli),
  );
  assertEquals(pruned.commitsRemoved, 2);
  assert(pruned.gc.blobsSwept >= 4, `old big.bin and round.txt swept: ${pruned.gc.blobsSwept}`);
  const after = await keys(s3, `${prefix}blobs/`);
  assertEquals(after.length, 1, "the large blobs only pruned commits used are deleted");
  const dest = await tempDir();
  await keepOk(["restore", dest], 0, cli);
  assertSameTree(snapshot(dest), snaps[2][1]);
  const v = json<{ ok: boolean; missing: unknown[]; orphanFiles: unknown[] }>(
    await keepOk(["verify", "--server", server.url, "--json"], 0),
  );
  assertEquals([v.ok, v.missing.length, v.orphanFiles.length], [true, 0, 0]);
});

Deno.test("s3 blobs: a pack object deleted or a large object cut short is reported by verify, and restore exits 4", async () => {
  const env = await services();
  const s3 = bucketClient(env);
  const prefix = freshPrefix("hostile");
  await using server = await s3Server(env, prefix);
  const src = await tempDir();
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  writeTree(src, { ...smallFiles(50, 1), "big/large.bin": randomData(3_000_000) });
  await keepOk(["backup", "--settle", "0", src], 0, cli);
  const objects = await keys(s3, prefix);
  const pack = objects.find((o) => o.key.startsWith(`${prefix}packs/`))!;
  const large = objects.find((o) => o.key.startsWith(`${prefix}blobs/`))!;
  // Cut the large object short: written again under its name, behind the server's back.
  const whole = new Uint8Array(await (await s3.get(large.key))!.arrayBuffer());
  await s3.put(large.key, whole.subarray(0, whole.length - 1000));
  await s3.deleteMany([pack.key]);

  const cut = await keep(["restore", "--path", "big", await tempDir()], cli);
  assertEquals(cut.code, 4, cut.stderr);
  assertMatch(cut.stderr, /big\/large\.bin|object has \d+ bytes/);
  const gone = await keep(["restore", "--path", "src", await tempDir()], cli);
  assertEquals(gone.code, 4, gone.stderr);
  assertMatch(gone.stderr, /src\/f\d+\.txt|pack \d+ is missing/);

  const v = await keep(["verify", "--server", server.url, "--read-only", "--json"]);
  assertEquals(v.code, 4, v.stderr);
  const report = json<{ ok: boolean; damaged: { hash: string; problem: string }[] }>(v);
  assertEquals(report.ok, false);
  const problems = report.damaged.map((d) => d.problem).join("\n");
  assertMatch(problems, /pack \d+ is missing/);
  assertMatch(problems, /has \d+ bytes, the index says \d+|ended after/);
  const largeHash = createHash("sha256").update(Deno.readFileSync(join(src, "big/large.bin")))
    .digest("hex");
  assert(report.damaged.some((d) => d.hash === largeHash), "the cut large blob is named");
});

Deno.test("s3 blobs: radosgw stopped between two backups gives 503 and exit 5, and the server recovers without a restart", async () => {
  const env = await services();
  const prefix = freshPrefix("outage");
  await using server = await s3Server(env, prefix);
  const src = await tempDir();
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  writeTree(src, { ...smallFiles(30, 2), "big.bin": randomData(2_000_000) });
  await keepOk(["backup", "--settle", "0", src], 0, cli);
  const first = snapshot(src);
  const bigHash = createHash("sha256").update(Deno.readFileSync(join(src, "big.bin")))
    .digest("hex");
  await stopRgw();
  try {
    // A backup with nothing new needs only the index: it goes on.
    await keepOk(["backup", "--settle", "0", src], 0, cli);
    writeTree(src, {
      "new.txt": "made while the store was down\n",
      "big2.bin": randomData(1_500_000),
    });
    const down = await keep(["backup", "--settle", "0", src], cli);
    assertEquals(down.code, 5, down.stderr);
    assertMatch(down.stderr, /object store/);
    const res = await fetch(`${server.url}/v1/projects/app/blobs/${bigHash}`);
    assertEquals(res.status, 503);
    assertMatch(JSON.stringify(await res.json()), /unavailable/);
    const restore = await keep(["restore", await tempDir()], cli);
    assertEquals(restore.code, 5, restore.stderr);
    // What needs only the index still answers.
    assertEquals(logJson<unknown>(await keepOk(["log", "--json"], 0, cli)).length, 2);
  } finally {
    await restartRgw();
  }
  await keepOk(["backup", "--settle", "0", src], 0, cli);
  const second = snapshot(src);
  const commits = logJson<{ id: string }>(await keepOk(["log", "--json"], 0, cli));
  assertEquals(commits.length, 3, "the refused backup left no commit");
  for (const [id, snap] of [[commits[2].id, first], [commits[0].id, second]] as const) {
    const dest = await tempDir();
    await keepOk(["restore", "--commit", id, dest], 0, cli);
    assertSameTree(snapshot(dest), snap);
  }
  assertMatch((await keepOk(["verify", "--server", server.url], 0)).stdout, /OK/);
});

Deno.test("s3 blobs: kill -9 of the server in the middle of an upload leaves no commit and nothing verify finds wrong", async () => {
  const env = await services();
  const prefix = freshPrefix("kill");
  const first = await s3Server(env, prefix);
  const src = await tempDir();
  const cli = (url: string) => ({ env: { KEEP_SERVER: url, KEEP_PROJECT: "app" } });
  writeTree(src, { ...smallFiles(300, 4), "big/a.bin": randomData(40_000_000) });
  const backup = keep(["backup", "--settle", "0", src], cli(first.url));
  // Killed once the large file is arriving (its spool file exists).
  const tmp = join(first.dataDir, "tmp");
  for (let i = 0; i < 200; i++) {
    if ([...Deno.readDirSync(tmp)].some((e) => e.name.endsWith(".s3part"))) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  await first.stop("SIGKILL");
  const cut = await backup;
  assertEquals(cut.code, 5, cut.stderr);
  await using again = await s3Server(env, prefix, [], first.dataDir);
  assertEquals(
    [...Deno.readDirSync(tmp)].filter((e) => e.name.endsWith(".s3part")).length,
    0,
    "the spool of the cut upload is removed at start",
  );
  assertEquals(logJson<unknown>(await keepOk(["log", "--json"], 0, cli(again.url))).length, 0);
  const v = json<{ ok: boolean; missing: unknown[] }>(
    await keepOk(["verify", "--server", again.url, "--json"], 0),
  );
  assertEquals([v.ok, v.missing.length], [true, 0]);
  await keepOk(["backup", "--settle", "0", src], 0, cli(again.url));
  const dest = await tempDir();
  await keepOk(["restore", dest], 0, cli(again.url));
  assertSameTree(snapshot(dest), snapshot(src));
});

Deno.test("S3BlobStore never writes a pack name twice: the same bytes again pass (a retried PUT), other bytes are refused", async () => {
  const env = await services();
  const prefix = freshPrefix("once");
  const tmp = await tempDir();
  const store = new S3BlobStore(
    {
      endpoint: env.AWS_ENDPOINT_URL,
      region: env.AWS_REGION,
      accessKey: env.AWS_ACCESS_KEY_ID,
      secretKey: env.AWS_SECRET_ACCESS_KEY,
      bucket: env.KEEP_S3_BUCKET,
    },
    prefix,
    tmp,
  );
  const bytes = randomData(100_000);
  for (const data of [bytes, bytes]) {
    const sink = store.openPack(7);
    assertEquals(sink.add(data), 0);
    await sink.close();
  }
  const other = store.openPack(7);
  other.add(randomData(100_000));
  const err = await other.close().then(() => null, (e) => e as KeepError);
  assert(err instanceof KeepError, "a different pack 7 is refused");
  assertEquals(err.code, "unavailable");
  assertMatch(err.message, /PreconditionFailed|412/);
  assertEquals(await store.packSize(7), 100_000);
  const [piece] = await Array.fromAsync(
    await store.pieces("x", {
      size: 0,
      stored: 1000,
      pack: 7,
      offset: 5000,
    }),
  );
  assertEquals(piece, bytes.subarray(5000, 6000));
});

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

async function node(env: ServicesEnv, db: string, prefix: string, noAuth = true) {
  return await startServer({
    args: ["--index", db, "--blobs", `s3://${env.KEEP_S3_BUCKET}/${prefix}`],
    env: { ...env },
    noAuth,
  });
}

Deno.test("pg index: backup, restore, log and ls through a server whose data dir holds no index.db", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  await using server = await node(env, db.url, freshPrefix("pg1"), false);
  // Tokens live in the database: made with keep token --index, checked by the server.
  const admin = (await keepOk([
    "token",
    "create",
    "--data",
    server.dataDir,
    "--index",
    db.url,
    "--role",
    "admin",
    "--project",
    "*",
  ])).stdout.trim();
  const denied = await keep(["log", "--project", "app"], { env: { KEEP_SERVER: server.url } });
  assertEquals(denied.code, 6, denied.stderr);
  // The embedded store takes the same backups: both indexes must count them alike.
  await using embedded = await startServer();
  const src = await tempDir();
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app", KEEP_TOKEN: admin } };
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
  const log = logJson<{ id: string; parent: string | null }>(
    await keepOk(["log", "--json"], 0, cli),
  );
  assertEquals(log.map((c) => [c.id, c.parent]), [[second.id, one], [one, null]]);
  assertMatch((await keepOk(["ls", "--commit", one], 0, cli)).stdout, /d\/b\.txt/);
  assert(!(await keepOk(["ls"], 0, cli)).stdout.includes("d/b.txt"));
  const names = [...Deno.readDirSync(server.dataDir)].map((e) => e.name);
  assert(!names.includes("index.db"), names.join(" "));
  // What is not done yet says so, with a usage error.
  const v = await keep(["verify", "--server", server.url, "--token", admin]);
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
  const log = logJson<{ id: string; seq: number; parent: string | null }>(
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
  assertEquals(logJson<unknown>(await keepOk(["log", "--json"], 0, via(b))).length, 4);
});

Deno.test("pg index: PostgreSQL stopped between two backups gives exit 5, and the server recovers without a restart", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  await using server = await node(env, db.url, freshPrefix("pg3"));
  const src = await tempDir();
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  writeTree(src, { "a.txt": "one\n" });
  await keepOk(["backup", "--settle", "0", src], 0, cli);
  await stopPg();
  try {
    writeTree(src, { "b.txt": "two\n" });
    const down = await keep(["backup", "--settle", "0", src], cli);
    assertEquals(down.code, 5, down.stderr);
    assertMatch(down.stderr, /database is unavailable/);
    const res = await fetch(`${server.url}/v1/projects/app/commits`);
    assertEquals(res.status, 503);
    await res.body?.cancel();
  } finally {
    await restartPg();
  }
  await keepOk(["backup", "--settle", "0", src], 0, cli);
  const dest = await tempDir();
  await keepOk(["restore", dest], 0, cli);
  assertSameTree(snapshot(dest), snapshot(src));
  assertEquals(logJson<unknown>(await keepOk(["log", "--json"], 0, cli)).length, 2);
});
