/**
 * `keep serve --blobs s3://…` against a real Ceph RGW (scripts/services):
 * backup, restore, log, ls, verify, prune and GC end to end; objects gone
 * or cut short behind the server's back; radosgw stopped and started
 * between two backups. Each test has its own prefix in the one bucket.
 * The tests of this file run one after another (the outage test stops
 * radosgw): keep every test that needs RGW here.
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
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
import {
  bucketClient,
  freshPrefix,
  restartRgw,
  services,
  type ServicesEnv,
  stopRgw,
} from "./services.ts";
import type { S3Client } from "../src/server/storage/s3_client.ts";
import { S3BlobStore } from "../src/server/storage/s3_blobs.ts";
import { KeepError } from "../src/errors.ts";

async function s3Server(env: ServicesEnv, prefix: string, args: string[] = []) {
  return await startServer({
    args: ["--blobs", `s3://${env.KEEP_S3_BUCKET}/${prefix}`, ...args],
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
  const log = json<{ id: string }[]>(await keepOk(["log", "--json"], 0, cli));
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
    assertEquals(json<unknown[]>(await keepOk(["log", "--json"], 0, cli)).length, 2);
  } finally {
    await restartRgw();
  }
  await keepOk(["backup", "--settle", "0", src], 0, cli);
  const second = snapshot(src);
  const commits = json<{ id: string }[]>(await keepOk(["log", "--json"], 0, cli));
  assertEquals(commits.length, 3, "the refused backup left no commit");
  for (const [id, snap] of [[commits[2].id, first], [commits[0].id, second]] as const) {
    const dest = await tempDir();
    await keepOk(["restore", "--commit", id, dest], 0, cli);
    assertSameTree(snapshot(dest), snap);
  }
  assertMatch((await keepOk(["verify", "--server", server.url], 0)).stdout, /OK/);
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
