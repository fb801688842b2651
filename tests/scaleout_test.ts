/**
 * The scale-out backends against real servers (scripts/services): Ceph RGW
 * for `keep serve --blobs s3://…`, PostgreSQL 15 for `--index postgres://…`.
 *
 * - Blobs in RGW: backup, restore, log, ls, verify, prune and GC end to
 *   end; objects gone or cut short behind the server's back; radosgw
 *   stopped and started between two backups, and all of Ceph (monitor,
 *   OSD, radosgw, with the index in PostgreSQL); the store cut off (a proxy)
 *   during the first pack PUT or after three, then the backup again.
 * - The index in PostgreSQL (blobs in RGW): backup, restore, log and ls
 *   counted alike by PostgreSQL and SQLite; two servers on one database
 *   and one bucket prefix (hosts backing up one project at once through
 *   both land in a chain, dedup and restores across servers, 409 for a
 *   parent that is no commit); PostgreSQL stopped between two backups (the
 *   node's store lock taken again after); the database gone silent (a proxy
 *   that black-holes every connection once a commit locked its project's
 *   row: 503 within --index-timeout, the other node commits the project
 *   once PostgreSQL rolled the silent session back, recovery on failover);
 *   tree, diff, find and history pages compared with an embedded server fed
 *   the same trees; verify (clean, then a pack deleted behind the server's
 *   back: found, marked, sent again by the next backup), stats and a quota
 *   refusal; a web UI session made through one node used on another;
 *   keep migrate from a data dir into RGW + PostgreSQL and back (backups
 *   there, the id counters moved on; names whose UTF-8 and UTF-16 orders
 *   differ; big files in chunks), into a database whose default collation
 *   is not C, and refused while a node serves the database.
 * - Big files in chunks (packs in RGW), through PostgreSQL and through
 *   SQLite alike: an edit in the middle stores a chunk or few, both
 *   commits restore, verify is clean, GC frees the chunks only the
 *   forgotten version held and keeps the shared ones. Cases about a large
 *   blob's own object (multipart parts, its spool) keep files whole
 *   (WHOLE_FILES); the others chunk files over 8 MiB, as a server does.
 * - Three servers on one database and prefix: hosts backing up one project
 *   at once through all three land in a chain, each commit restored
 *   through another server; kill -9 of one in the middle of an upload (the
 *   others serve, no commit half written, its registration stops holding
 *   GC back once it expires); prune and GC on one while the other two take
 *   backups (every kept commit restores, forgotten content leaves the
 *   bucket); scheduled rounds and recompression on one for backups through
 *   another; two prunes at once (one GC round after the other: the lease).
 * - PgIndex itself on two connections: a storm of uploads counting on
 *   content while mark and sweep run with no grace; a pack a dead server
 *   left open is sealed once its refresh expired.
 *
 * Each test has its own bucket prefix and database. One file, so its tests
 * run one after another: the outage tests stop radosgw or PostgreSQL, which
 * every test here needs. Keep every test that needs them in this file.
 */

import { concatBytes } from "../src/platform/concat_bytes.ts";
import postgres from "postgres";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { commitHeader, Upload } from "./craft.ts";
import { post } from "./hostile.ts";
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
  writeTree,
} from "./helpers.ts";
import {
  bucketClient,
  freshPrefix,
  restartCeph,
  restartPg,
  restartRgw,
  services,
  type ServicesEnv,
  stopCeph,
  stopPg,
  stopRgw,
} from "./services.ts";
import type { S3Client } from "../src/server/storage/s3_client.ts";
import { S3BlobStore } from "../src/server/storage/s3_blobs.ts";
import { KeepError } from "../src/errors.ts";
import { bytesToHex } from "../src/format/hex.ts";
import type { UploadHeader } from "../src/format/manifest.ts";
import type { NewBlob } from "../src/server/storage/index_store.ts";
import { DB_STATEMENTS, PgIndex } from "../src/server/storage/pg_index.ts";
import { openLocalStorage } from "../src/server/storage/open.ts";

async function s3Server(env: ServicesEnv, prefix: string, args: string[] = [], dataDir?: string) {
  return await startServer({
    dataDir,
    args: ["--blobs", `s3://${env.KEEP_S3_BUCKET}/${prefix}`, ...args],
    env: { ...env },
  });
}

/**
 * serve's flag for whole files: the cases about a large blob's object
 * (multipart parts, its spool while it arrives) keep big files whole; the
 * others store files over 8 MiB as chunks in packs, as a server does.
 */
const WHOLE_FILES = ["--chunk-over", "off"];

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
  // Whole files: this case is about large blobs' multipart objects.
  await using server = await s3Server(env, prefix, ["--gc-grace", "0s", ...WHOLE_FILES]);
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

/**
 * The object store goes away between two backups (`stop`) and comes back
 * (`restart`): a backup with nothing new goes on, one with new content is
 * refused (exit 5, a 503 for a blob) and leaves no commit, restores say
 * exit 5, and once back the server serves both commits without a restart.
 * `kept` checks what the store kept through the restart, with the objects
 * under `prefix` before it.
 */
async function outage(
  server: { url: string },
  prefix: string,
  stop: () => Promise<void>,
  restart: () => Promise<void>,
  kept?: (before: { key: string; size: number }[]) => Promise<void>,
): Promise<void> {
  const src = await tempDir();
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  writeTree(src, { ...smallFiles(30, 4), "big.bin": randomData(2_000_000) });
  await keepOk(["backup", "--settle", "0", src], 0, cli);
  const first = snapshot(src);
  const bigHash = createHash("sha256").update(Deno.readFileSync(join(src, "big.bin")))
    .digest("hex");
  const before = kept ? await keys(bucketClient(await services()), prefix) : [];
  if (kept) assert(before.length > 0, "the first backup stored objects");
  await stop();
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
    await restart();
  }
  await kept?.(before);
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
}

Deno.test("s3 blobs: radosgw stopped between two backups gives 503 and exit 5, and the server recovers without a restart", async () => {
  const env = await services();
  const prefix = freshPrefix("outage");
  await using server = await s3Server(env, prefix);
  await outage(server, prefix, stopRgw, restartRgw);
});

Deno.test("scale-out: all of Ceph (monitor, OSD, radosgw) restarted between two backups loses nothing, 503 and exit 5 while down, and the server recovers without a restart", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("ceph");
  await using server = await node(env, db.url, prefix);
  await outage(server, prefix, stopCeph, restartCeph, async (before) => {
    // The OSD kept every object through its restart (bluestore on its file).
    const after = await keys(bucketClient(env), prefix);
    for (const o of before) assert(after.some((a) => a.key === o.key && a.size === o.size), o.key);
  });
});

/**
 * A TCP proxy in front of radosgw that cuts the store off on cue: once
 * `cutAfter(n)` bytes more went towards the store, every connection is
 * closed and new ones are closed as they come, until `heal()`. What a
 * network failure or a dying store looks like to the server, with the
 * real RGW behind it. `stallAfter(n)` instead goes silent: connections stay
 * open, nothing more passes either way (a store whose disk is full: its
 * writes hang); `stallAfter(n, "down")` counts the bytes coming from the
 * store (a store that hangs in the middle of an answer).
 */
class CutProxy implements AsyncDisposable {
  readonly url: string;
  #listener: Deno.TcpListener;
  #conns = new Set<Deno.Conn>();
  #budget = Infinity;
  #stall = false;
  #counted: "up" | "down" = "up";
  cut = false;

  private constructor(listener: Deno.TcpListener, target: URL) {
    this.#listener = listener;
    this.url = `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`;
    (async () => {
      for await (const conn of listener) this.#serve(conn, target);
    })().catch(() => {});
  }

  static start(target: string): CutProxy {
    return new CutProxy(Deno.listen({ hostname: "127.0.0.1", port: 0 }), new URL(target));
  }

  cutAfter(bytes: number): void {
    this.#budget = bytes;
    this.#stall = false;
    this.#counted = "up";
    this.cut = false;
  }

  stallAfter(bytes: number, counted: "up" | "down" = "up"): void {
    this.cutAfter(bytes);
    this.#stall = true;
    this.#counted = counted;
  }

  heal(): void {
    if (this.cut && this.#stall) this.#cutAll(); // the silent connections end
    this.#budget = Infinity;
    this.#stall = false;
    this.cut = false;
  }

  #cutAll(): void {
    this.cut = true;
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    this.#conns.clear();
  }

  async #serve(conn: Deno.Conn, target: URL): Promise<void> {
    if (this.cut && !this.#stall) return conn.close();
    const up = await Deno.connect({ hostname: target.hostname, port: Number(target.port) });
    this.#conns.add(conn).add(up);
    const pipe = async (from: Deno.Conn, to: Deno.Conn, way: "up" | "down") => {
      const buf = new Uint8Array(64 * 1024);
      try {
        for (let n; (n = await from.read(buf)) !== null;) {
          if (way === this.#counted && (this.#budget -= n) < 0) {
            if (!this.#stall) return this.#cutAll();
            this.cut = true;
          }
          if (this.cut) continue; // stalled: swallowed
          for (let o = 0; o < n;) o += await to.write(buf.subarray(o, n));
        }
      } catch { /* cut */ }
      for (const c of [from, to]) {
        try {
          c.close();
        } catch { /* closed */ }
        this.#conns.delete(c);
      }
    };
    pipe(conn, up, "up");
    pipe(up, conn, "down");
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    this.#cutAll();
    return Promise.resolve();
  }
}

/** A new directory of `n` files of 200 KB that do not compress, in `dirs` directories. */
async function randomTree(n: number, dirs: number): Promise<string> {
  const src = await tempDir();
  const spec: Record<string, Uint8Array> = {};
  for (let i = 0; i < n; i++) spec[`d${i % dirs}/f${i}.bin`] = randomData(200_000);
  writeTree(src, spec);
  return src;
}

/** `keep restore` into a new directory, killed if it runs past `ms` (a hang fails the test, not the suite). */
async function restoreWithin(
  ms: number,
  env: Record<string, string>,
): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(KEEP, {
    args: ["restore", await tempDir()],
    env: { KEEP_TOKEN: "", KEEP_DATA: "", ...env },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(ms),
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("s3 blobs + pg index: a pack PUT cut off early or late fails the upload (exit 5, the store named), records nothing, and the same backup then lands and restores byte for byte", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("cut");
  await using proxy = CutProxy.start(env.AWS_ENDPOINT_URL);
  await using server = await startServer({
    args: ["--index", db.url, "--blobs", `s3://${env.KEEP_S3_BUCKET}/${prefix}`],
    env: { ...env, AWS_ENDPOINT_URL: proxy.url },
  });
  // ~48 MB that does not compress, in small files: six batches, six pack PUTs.
  const src = await randomTree(240, 8);
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  // Early: the first pack's PUT; late: after about three packs went (their rows staged).
  for (const [when, after] of [["early", 1 << 20], ["late", 26 << 20]] as const) {
    proxy.cutAfter(after);
    const r = await keep(["backup", "--settle", "0", src], cli);
    assert(proxy.cut, `${when}: the proxy cut the store off`);
    assertEquals(r.code, 5, `${when}: ${r.stderr}`);
    assertMatch(r.stderr, /Cannot store pack \d+: cannot reach the object store/, when);
    const packs = (await keys(bucketClient(env), `${prefix}packs/`)).length;
    if (when === "early") assertEquals(packs, 0, "early: no pack stored");
    else assert(packs >= 2, `late: packs stored before the cut: ${packs}`);
    proxy.heal();
    const log = await keep(["log", "--json"], cli);
    assert(log.code !== 0 || logJson(log).length === 0, `${when}: no commit: ${log.stdout}`);
  }
  await keepOk(["backup", "--settle", "0", src], 0, cli);
  assertEquals(logJson(await keepOk(["log", "--json"], 0, cli)).length, 1);
  const dest = await tempDir();
  await keepOk(["restore", dest], 0, cli);
  assertSameTree(snapshot(dest), snapshot(src));
  assertMatch((await keepOk(["verify", "--server", server.url], 0)).stdout, /OK/);
});

Deno.test("s3 blobs + pg index: a store that stops answering (writes hang, as on a full disk) fails the upload as unavailable (exit 5, the store named), not as the client's silence; once it answers the backup lands", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("stall");
  for (
    const [bad, message] of [
      ["500ms", /--s3-timeout 500ms: give 1s to 1h/],
      ["30d", /--s3-timeout 30d: give 1s to 1h/],
      ["soon", /Cannot parse --s3-timeout "soon"/],
    ] as const
  ) {
    const r = await keep(["serve", "--data", await tempDir(), "--no-auth", "--s3-timeout", bad]);
    assertEquals(r.code, 2, r.stderr);
    assertMatch(r.stderr, message);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
  await using proxy = CutProxy.start(env.AWS_ENDPOINT_URL);
  // The idle timeout is shorter than the store's: the server's own wait must not count as the client's
  // (4 s for the store, 2 s for the client: under the suite's load a healthy RGW can take over a
  // second to answer, and a client can be starved as long).
  await using server = await startServer({
    args: [
      "--index",
      db.url,
      "--blobs",
      `s3://${env.KEEP_S3_BUCKET}/${prefix}`,
      "--s3-timeout",
      "4s",
      "--idle-timeout",
      "2s",
    ],
    env: { ...env, AWS_ENDPOINT_URL: proxy.url },
  });
  // ~64 MB that does not compress: more packs than the server PUTs at once, so it waits on the store.
  const src = await randomTree(320, 4);
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  proxy.stallAfter(1 << 20);
  const r = await keep(["backup", "--settle", "0", src], cli);
  assert(proxy.cut, "the proxy went silent");
  assertEquals(r.code, 5, r.stderr);
  assertMatch(
    r.stderr,
    /Cannot store pack \d+: cannot reach the object store at .*no answer in time/,
  );
  assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
  proxy.heal();
  const log = await keep(["log", "--json"], cli);
  assert(log.code !== 0 || logJson(log).length === 0, `nothing committed: ${log.stdout}`);
  await keepOk(["backup", "--settle", "0", src], 0, cli);
  const dest = await tempDir();
  await keepOk(["restore", dest], 0, cli);
  assertSameTree(snapshot(dest), snapshot(src));
  // A restore whose pack reads stop in the middle of an answer: exit 5 in bounded time, not a hang.
  proxy.stallAfter(6 << 20, "down");
  const stuck = await restoreWithin(90_000, cli.env);
  assert(proxy.cut, "the proxy went silent");
  assertEquals(stuck.code, 5, stuck.stderr);
  assertMatch(stuck.stderr, /Cannot restore: the connection to the server broke/);
  proxy.heal();
  const again = await tempDir();
  await keepOk(["restore", again], 0, cli);
  assertSameTree(snapshot(again), snapshot(src));
  // A large object (a 3 MB file: its own object, streamed) that stops coming: exit 5 too.
  const one = await tempDir();
  writeTree(one, { "big.bin": randomData(3_000_000) });
  const big = { env: { ...cli.env, KEEP_PROJECT: "big" } };
  await keepOk(["backup", "--settle", "0", one], 0, big);
  assert((await keys(bucketClient(env), `${prefix}blobs/`)).length > 0, "a large object");
  proxy.stallAfter(1 << 20, "down");
  const cutBig = await restoreWithin(90_000, big.env);
  assert(proxy.cut, "the proxy went silent on the large object");
  assertEquals(cutBig.code, 5, cutBig.stderr);
  proxy.heal();
  const bigBack = await tempDir();
  await keepOk(["restore", bigBack], 0, big);
  assertSameTree(snapshot(bigBack), snapshot(one));
});

Deno.test("s3 blobs: kill -9 of the server in the middle of an upload leaves no commit and nothing verify finds wrong", async () => {
  const env = await services();
  const prefix = freshPrefix("kill");
  // Whole files: the kill comes while a large blob is spooled for its multipart upload.
  const first = await s3Server(env, prefix, WHOLE_FILES);
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
  await using again = await s3Server(env, prefix, WHOLE_FILES, first.dataDir);
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

/** An S3BlobStore on the services' bucket under `prefix`, with no index (for the store's own calls). */
async function bareStore(prefix: string): Promise<S3BlobStore> {
  const env = await services();
  return new S3BlobStore(
    {
      endpoint: env.AWS_ENDPOINT_URL,
      region: env.AWS_REGION,
      accessKey: env.AWS_ACCESS_KEY_ID,
      secretKey: env.AWS_SECRET_ACCESS_KEY,
      bucket: env.KEEP_S3_BUCKET,
    },
    prefix,
    await tempDir(),
  );
}

Deno.test("S3BlobStore never writes a pack name twice: the same bytes again pass (a retried PUT), other bytes are refused", async () => {
  const store = await bareStore(freshPrefix("once"));
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

Deno.test("S3BlobStore: a pack past its first buffer (9 MiB, doubled) is written whole; blobs inside one 4 MiB range and across ranges read back byte for byte", async () => {
  const store = await bareStore(freshPrefix("grow"));
  const MiB = 1 << 20;
  // 3 + 7 + 12 MiB (+ odd bytes): the buffer grows twice (9 → 18 → 36 MiB).
  const parts = [randomData(3 * MiB + 1), randomData(7 * MiB + 2), randomData(12 * MiB + 3)];
  const sink = store.openPack(3);
  const at: number[] = [];
  for (const p of parts) at.push(sink.add(p));
  await sink.close();
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.forEach((p, i) => all.set(p, at[i]));
  assertEquals(at, [0, parts[0].length, parts[0].length + parts[1].length]);
  assertEquals(await store.packSize(3), all.length);
  const read = async (offset: number, stored: number) => {
    const pieces = await Array.fromAsync(
      await store.pieces("x", { size: 0, stored, pack: 3, offset }),
    );
    return concatBytes(pieces);
  };
  for (
    const [offset, stored] of [
      [0, 1000], // inside the first range
      [4 * MiB - 10, 10], // ends exactly at a range's end
      [4 * MiB - 10, 20], // across two ranges
      [5 * MiB, 9 * MiB], // across three
      [all.length - 5000, 5000], // the pack's last bytes
    ]
  ) {
    assertEquals(
      await read(offset, stored),
      all.subarray(offset, offset + stored),
      `${offset}+${stored}`,
    );
  }
  // Past the pack's end: short, not a silent empty piece.
  const err = await read(all.length - 10, 20).then(() => null, (e) => e as KeepError);
  assert(err instanceof KeepError && err.code === "integrity", String(err));
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

async function node(
  env: ServicesEnv,
  db: string,
  prefix: string,
  noAuth = true,
  args: string[] = [],
) {
  return await startServer({
    args: ["--index", db, "--blobs", `s3://${env.KEEP_S3_BUCKET}/${prefix}`, ...args],
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
  assertMatch((await keepOk(["verify", "--server", server.url, "--token", admin], 0)).stdout, /OK/);
});

/** An answer without what differs between two stores fed the same trees: ids and times. */
function comparable(value: unknown): unknown {
  const drop = new Set(["id", "time", "parent", "stats", "scanTime", "keep"]);
  return JSON.parse(JSON.stringify(value), (k, v) => drop.has(k) ? undefined : v);
}

/** Every page of a browse route (`next` → `after`), each answer made comparable. */
async function pages(url: string, query: Record<string, string>): Promise<unknown[]> {
  const out: unknown[] = [];
  let after = "";
  for (;;) {
    const q = new URLSearchParams({ ...query, ...(after ? { after } : {}) });
    const res = await fetch(`${url}?${q}`);
    const body = await res.json();
    assertEquals(res.status, 200, JSON.stringify(body));
    out.push(comparable(body));
    if (!body.next) return out;
    after = body.next;
  }
}

/** Every directory of commit `ref` below `dir`, listed two children a page (with sizes). */
async function wholeTree(url: string, ref: string, dir = ""): Promise<unknown[]> {
  const out = await pages(`${url}/v1/projects/app/tree`, { commit: ref, path: dir, limit: "2" });
  for (const page of out as { items: { path: string; type: string }[] }[]) {
    for (const item of page.items) {
      if (item.type === "d") out.push(...await wholeTree(url, ref, item.path));
    }
  }
  return out;
}

Deno.test("pg index: log, ls, tree, diff, find and history answer as the embedded index does, page by page", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  await using pg = await node(env, db.url, freshPrefix("pgbrowse"));
  await using embedded = await startServer();
  const src = await tempDir();
  const many: Record<string, string> = {};
  for (let i = 0; i < 12; i++) many[`many/f${i}.txt`] = `many ${i}\n`;
  writeTree(src, {
    ...many,
    "a.txt": "a\n",
    "b.txt": "b\n",
    "a/x.txt": "x\n",
    "a/y/z.c": "int z;\n",
    "a-b/q.txt": "q\n",
    "a0": "zero\n",
    "é.txt": "accent\n",
    "日本/ß.c": "sharp s\n",
    "deep/1/2/3/4.txt": "deep\n",
    "zz/[x].txt": "brackets\n",
    "odd/100%_done\\.txt": "odd\n",
    "odd/100xydone.txt": "not odd\n",
    "ln": { link: "a.txt" },
  });
  const both = async () => {
    for (const url of [pg.url, embedded.url]) {
      await keepOk(["backup", "-s", url, "-p", "app", "--settle", "0", src]);
    }
  };
  await both();
  writeTree(src, { "a.txt": "a, second\n", "a/new.txt": "new\n", "many/f3.txt": "changed\n" });
  Deno.removeSync(join(src, "b.txt"));
  Deno.removeSync(join(src, "deep"), { recursive: true });
  Deno.chmodSync(join(src, "a/x.txt"), 0o600);
  Deno.utimeSync(join(src, "a0"), new Date(2020, 1, 1), new Date(2020, 1, 1));
  Deno.removeSync(join(src, "ln"));
  Deno.symlinkSync("a0", join(src, "ln"));
  await both();
  writeTree(src, { "b.txt": "b is back\n", "a/y/z.c": "int z = 2;\n", "日本/新.txt": "new\n" });
  await both();

  const cli = async (url: string, args: string[]) =>
    comparable(json(await keepOk([...args, "-s", url, "-p", "app", "--json"])));
  const same = async (what: string, answer: (url: string) => Promise<unknown>) => {
    const [a, b] = [await answer(pg.url), await answer(embedded.url)];
    assertEquals(a, b, what);
    return a;
  };
  for (const [from, to] of [["#1", "#2"], ["#2", "#3"], ["#3", "#1"], ["#1", "latest"]]) {
    await same(`diff ${from} ${to}`, (url) => cli(url, ["diff", from, to]));
    await same(`diff --path a ${from} ${to}`, (url) => cli(url, ["diff", "--path", "a", from, to]));
    await same(
      `diff ${from} ${to} in pages of 2`,
      (url) => pages(`${url}/v1/projects/app/diff`, { from, to, limit: "2" }),
    );
  }
  const diff = await cli(pg.url, ["diff", "#1", "#3"]) as { items: { path: string }[] };
  assert(diff.items.length >= 10, `the diff found the changes: ${JSON.stringify(diff)}`);
  await same("log", (url) => cli(url, ["log"]));
  for (const ref of ["#1", "#2", "#3"]) {
    await same(`ls ${ref}`, (url) => cli(url, ["ls", "--commit", ref]));
    const tree = await same(`tree ${ref}`, (url) => wholeTree(url, ref));
    assert((tree as unknown[]).length > 10, `tree ${ref} has pages: ${JSON.stringify(tree)}`);
  }
  const patterns = [
    "*.txt",
    "a/*",
    "[a-c]*",
    "?.txt",
    "*ß*",
    "[^a]*.c",
    "f1?.txt",
    "*[[]x]*",
    "[]a]*",
    "[z-a]*",
    "[",
    "日本/*",
    "many/f1*",
    "a/y/*.c",
    "zz/[[]*",
    "100%_done*",
    "*%_*",
    "*\\*",
  ];
  for (const pattern of patterns) {
    await same(`find ${pattern}`, (url) => cli(url, ["find", pattern]));
    await same(
      `find ${pattern} in pages of 2`,
      (url) => pages(`${url}/v1/projects/app/find`, { pattern, limit: "2" }),
    );
  }
  const found = await cli(pg.url, ["find", "*.txt"]) as { paths: unknown[] };
  assert(found.paths.length > 15, `find found them: ${found.paths.length}`);
  for (const path of ["a.txt", "b.txt", "a/x.txt", "deep/1/2/3/4.txt", "日本/ß.c", "ln"]) {
    const h = await same(`history ${path}`, (url) => cli(url, ["history", path]));
    assert((h as { versions: unknown[] }).versions.length >= 1, path);
  }
  const gone = await keep(["history", "-s", pg.url, "-p", "app", "nothing/here"]);
  assertEquals(gone.code, 1, gone.stderr);
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

Deno.test("pg index: PostgreSQL stopped between two backups gives exit 5, and the server recovers without a restart, its store lock taken again", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pg3");
  await using server = await node(env, db.url, prefix, true, ["--index-timeout", "3s"]);
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
  // The restart ended the session that held the node's shared store lock; its watchdog (a ping
  // a second at this timeout) took it again, so a migrate is still refused while it serves.
  await waitFor(() => /answers again/.test(server.stderr()), 15_000, server.stderr());
  const m = await keep([
    "migrate",
    "--from-blobs",
    `s3://${env.KEEP_S3_BUCKET}/${prefix}`,
    "--from-index",
    db.url,
    "--to",
    join(await tempDir(), "copy"),
  ], { env: { ...env } });
  assertEquals(m.code, 2, m.stderr);
  assertMatch(m.stderr, /a keep serve runs on it/);
});

/** Waits until `ok()` (checked every 50 ms), failing with `what` after `ms`. */
async function waitFor(ok: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A loopback proxy in front of PostgreSQL that can go silent as a network
 * does when it black-holes a route (a failover, a dead switch): after the
 * client sent `pattern`, that statement still runs and its answer comes
 * back up to ReadyForQuery in a transaction, then nothing more goes either
 * way on any connection, and none is closed (the database keeps its
 * sessions, idle in their transactions; the server its sockets). New
 * connections are taken and swallowed too, until `failover()`: from then
 * on new ones reach the database; the silent ones stay silent. (TCP itself
 * stays up: the keepalives and user timeout Keep asks of PostgreSQL cannot
 * show here, only what a silent client gets.)
 */
class BlackHole implements AsyncDisposable {
  readonly port: number;
  #listener: Deno.TcpListener;
  #conns = new Set<Deno.Conn>();
  #pattern: string | null = null;
  #silent = new Set<Deno.Conn>();
  #forward = true;
  frozen = false;

  private constructor(listener: Deno.TcpListener, target: number) {
    this.#listener = listener;
    this.port = (listener.addr as Deno.NetAddr).port;
    (async () => {
      for await (const conn of listener) this.#serve(conn, target).catch(() => {});
    })().catch(() => {});
  }

  static start(target: number): BlackHole {
    return new BlackHole(Deno.listen({ hostname: "127.0.0.1", port: 0 }), target);
  }

  /** Goes silent once a client sends a message holding `pattern`. */
  freezeOn(pattern: string): void {
    this.#pattern = pattern;
  }

  failover(): void {
    this.#forward = true;
  }

  #freeze(): void {
    this.frozen = true;
    this.#forward = false;
    for (const c of this.#conns) this.#silent.add(c);
  }

  async #serve(conn: Deno.Conn, target: number): Promise<void> {
    this.#conns.add(conn);
    if (!this.#forward) {
      this.#silent.add(conn);
      for (const buf = new Uint8Array(65536); (await conn.read(buf)) !== null;) { /* swallowed */ }
      return;
    }
    const up = await Deno.connect({ hostname: "127.0.0.1", port: target });
    this.#conns.add(up);
    const silent = () => this.#silent.has(conn);
    let armed = false; // this connection sent the pattern: silent at its next ReadyForQuery 'T'
    const pipe = async (from: Deno.Conn, to: Deno.Conn, client: boolean) => {
      const buf = new Uint8Array(65536);
      let tail = "";
      try {
        for (let n; (n = await from.read(buf)) !== null;) {
          if (silent()) continue;
          const bytes = buf.subarray(0, n);
          const chunk = new TextDecoder("latin1").decode(bytes);
          const text = tail + chunk;
          tail = text.slice(-64);
          if (client && this.#pattern && text.includes(this.#pattern)) {
            this.#pattern = null;
            armed = true;
          }
          for (let o = 0; o < n;) o += await to.write(bytes.subarray(o));
          // (In this chunk: the tail may hold the ReadyForQuery of the statement before.)
          if (!client && armed && chunk.includes("Z\0\0\0\x05T")) this.#freeze();
        }
      } catch { /* closed */ }
      // A silent connection is never closed: the other side must see nothing at all.
      if (silent()) return;
      for (const c of [from, to]) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    };
    pipe(conn, up, true);
    pipe(up, conn, false);
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    return Promise.resolve();
  }
}

Deno.test("pg index: a database gone silent (a black-holed route, then a failover) fails the node's requests as unavailable within --index-timeout, not TCP's ~15 min; PostgreSQL rolls back the cut-off commit, so another node commits the project; the node recovers without a restart", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  for (
    const [args, message] of [
      [["--index", db.url, "--index-timeout", "500ms"], /--index-timeout 500ms: give 1s to 10m/],
      [["--index", db.url, "--index-timeout", "1h"], /--index-timeout 1h: give 1s to 10m/],
      [["--index", db.url, "--index-timeout", "soon"], /Cannot parse --index-timeout "soon"/],
      [["--index-timeout", "5s"], /Cannot use --index-timeout without --index/],
    ] as const
  ) {
    const r = await keep(["serve", "--data", await tempDir(), "--no-auth", ...args]);
    assertEquals(r.code, 2, r.stderr);
    assertMatch(r.stderr, message);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
  const pgUrl = new URL(db.url);
  await using hole = BlackHole.start(Number(pgUrl.port));
  const viaHole = new URL(db.url);
  viaHole.port = String(hole.port);
  const prefix = freshPrefix("hole");
  // Its uploads' registrations expire 2 s after it stops refreshing them.
  await using a = await node(env, viaHole.href, prefix, true, [
    "--index-timeout",
    "3s",
    "--upload-timeout",
    "2s",
  ]);
  await using b = await node(env, db.url, prefix);
  const srcA = await tempDir();
  const srcB = await tempDir();
  writeTree(srcA, smallFiles(40, 1));
  writeTree(srcB, smallFiles(30, 2));
  const viaA = { env: { KEEP_SERVER: a.url, KEEP_PROJECT: "app" }, timeoutMs: 60_000 };
  const viaB = { env: { KEEP_SERVER: b.url, KEEP_PROJECT: "app" }, timeoutMs: 60_000 };
  // Silent once the commit locked the project's row: the database holds that lock for a
  // session whose server hears nothing more.
  hole.freezeOn("FROM projects WHERE name = $1 FOR UPDATE");
  let t = Date.now();
  const cut = await keep(["backup", "--settle", "0", srcA], viaA);
  const cutMs = Date.now() - t;
  assert(hole.frozen, "the route went silent");
  assertEquals(cut.code, 5, `${cut.stderr}\nserver: ${a.stderr()}`);
  assertMatch(cut.stderr, /database is unavailable/);
  // The ping's timeout (3 s) after at most a ping's interval, then the upload's abort (its
  // registration cannot be deleted through the silent route: a connect timeout, 3 s).
  assert(cutMs < 20_000, `the cut-off backup ended in ${cutMs} ms`);
  assertMatch(a.stderr(), /lost the PostgreSQL index at .* \(no answer in 3 s\)/);
  // Still silent: the node answers 503 (new connections time out), it does not hang.
  t = Date.now();
  const down = await fetch(`${a.url}/v1/projects/app/commits`, {
    signal: AbortSignal.timeout(30_000),
  });
  assertEquals(down.status, 503, await down.text());
  assert(Date.now() - t < 20_000, `503 after ${Date.now() - t} ms`);
  // The other node commits the project: the silent session's transaction was rolled back (it
  // idled past the timeout) and its lock on the project went with it.
  t = Date.now();
  await keepOk(["backup", "--settle", "0", srcB], 0, viaB);
  const other = logJson<{ id: string }>(await keepOk(["log", "--json"], 0, viaB));
  assertEquals(other.length, 1, "only the other node's commit");
  hole.failover();
  await waitFor(() => /answers again/.test(a.stderr()), 20_000, a.stderr());
  await keepOk(["backup", "--settle", "0", srcA], 0, viaA);
  const log = logJson<{ id: string; parent: string | null }>(
    await keepOk(["log", "--json"], 0, viaA),
  );
  assertEquals(log.length, 2);
  assertEquals(log[0].parent, other[0].id, "a chain");
  const dest = await tempDir();
  await keepOk(["restore", dest], 0, viaA);
  assertSameTree(snapshot(dest), snapshot(srcA));
  assertMatch((await keepOk(["verify", "--server", b.url], 0)).stdout, /OK/);
  // The cut-off upload's registration (its DELETE never got through) is no longer refreshed:
  // it stops holding GC back once expired, on every node.
  const admin = postgres(db.url, { max: 1, onnotice: () => {} });
  try {
    let live = -1;
    for (const end = Date.now() + 15_000; Date.now() < end;) {
      const [r] = await admin`SELECT count(*)::int AS n FROM uploads WHERE expires > keep_now()`;
      if ((live = r.n) === 0) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assertEquals(live, 0, "live upload registrations once the backups ended");
  } finally {
    await admin.end();
  }
});

Deno.test("pg index: verify finds a pack deleted behind the server's back and marks it; stats and a quota refusal", async () => {
  const env = await services();
  const s3 = bucketClient(env);
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pgverify");
  await using server = await node(env, db.url, prefix);
  await using embedded = await startServer();
  const src = await tempDir();
  writeTree(src, { ...smallFiles(40, 5), "big/large.bin": randomData(2_000_000) });
  for (const url of [server.url, embedded.url]) {
    await keepOk(["backup", "-s", url, "-p", "app", "--settle", "0", src]);
  }
  const clean = json<{ ok: boolean; integrity: string; blobs: number; orphanBlobs: number }>(
    await keepOk(["verify", "--server", server.url, "--json"], 0),
  );
  assertEquals([clean.ok, clean.integrity, clean.orphanBlobs], [true, "ok", 0]);
  assert(clean.blobs >= 41, `blobs counted: ${clean.blobs}`);
  // Stats of the project: the same bytes as the embedded store holds for the same tree.
  type Stats = { projects: { name: string; commits: number; storedBytes: number }[] };
  const stats = async (url: string) =>
    json<Stats>(await keepOk(["stats", "-s", url, "-p", "app", "--json"])).projects[0];
  const [pgStats, sqliteStats] = [await stats(server.url), await stats(embedded.url)];
  assertEquals(comparable(pgStats), comparable(sqliteStats));
  assertEquals(pgStats.commits, 1);
  assert(pgStats.storedBytes > 2_000_000, JSON.stringify(pgStats));

  // The small files' pack goes, behind the server's back.
  const pack = (await keys(s3, `${prefix}packs/`))[0];
  await s3.deleteMany([pack.key]);
  // Straight on the database and bucket, read-only: found, nothing marked.
  const direct = await keep(
    ["verify", "--data", server.dataDir, "--index", db.url, "--read-only", "--json"],
    { env: { ...env } },
  );
  assertEquals(direct.code, 4, direct.stderr);
  const seen = json<{ damaged: unknown[]; marked: number }>(direct);
  assertEquals([seen.damaged.length, seen.marked], [40, 0]);
  const v = await keep(["verify", "--server", server.url, "--json"]);
  assertEquals(v.code, 4, v.stderr);
  const report = json<{
    ok: boolean;
    damaged: { problem: string }[];
    marked: number;
    affected: { project: string; path: string }[];
  }>(v);
  assertEquals(report.ok, false);
  assertEquals(report.damaged.length, 40, "the 40 small files' blobs");
  assertEquals(report.marked, 40);
  assertMatch(report.damaged[0].problem, /pack \d+ is missing/);
  assertEquals(report.affected.length, 40);
  assert(report.affected.every((a) => a.project === "app" && a.path.startsWith("src/")));
  // Marked once: a second run finds them again but marks nothing new.
  const again = json<{ damaged: unknown[]; marked: number }>(
    await keep(["verify", "--server", server.url, "--json"]),
  );
  assertEquals([again.damaged.length, again.marked], [40, 0]);
  // The next backup sends the damaged content again (the head flags it): verify is clean.
  await keepOk(["backup", "-s", server.url, "-p", "app", "--settle", "0", src]);
  const repaired = json<{ ok: boolean; damaged: unknown[] }>(
    await keepOk(["verify", "--server", server.url, "--json"], 0),
  );
  assertEquals([repaired.ok, repaired.damaged.length], [true, 0]);
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "app", dest]);
  assertSameTree(snapshot(dest), snapshot(src));

  // A quota the project is past refuses a backup that sends more (exit 7), before storing it.
  await keepOk(["policy", "set", "-s", server.url, "-p", "app", "--quota", "1M"]);
  writeTree(src, { "more.bin": randomData(300_000) });
  const refused = await keep(["backup", "-s", server.url, "-p", "app", "--settle", "0", src]);
  assertEquals(refused.code, 7, refused.stderr);
  assertMatch(refused.stderr, /past its quota of 1\.00 MiB/);
  assertEquals((await stats(server.url)).commits, 2);
});

/** Signs in through `url` with `token` (a form posted from its own page); the session cookie. */
async function signIn(url: string, token: string): Promise<string> {
  const res = await fetch(`${url}/ui/signin`, {
    method: "POST",
    headers: { origin: url, "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ token }),
    redirect: "manual",
  });
  await res.body?.cancel();
  assertEquals(res.status, 303);
  const cookie = res.headers.get("set-cookie") ?? "";
  assertMatch(cookie, /HttpOnly/);
  assertMatch(cookie, /SameSite=Strict/);
  return /keep_session=([^;]+)/.exec(cookie)![1];
}

async function uiPage(url: string, path: string, cookie: string) {
  const res = await fetch(`${url}${path}`, { headers: { cookie: `keep_session=${cookie}` } });
  return { status: res.status, text: await res.text() };
}

Deno.test("pg index: a web UI session made through one node works on another; sign-out and revocation end it on both", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pgui");
  await using one = await node(env, db.url, prefix, false);
  await using two = await node(env, db.url, prefix, false);
  const token = async (role: string, project: string) =>
    (await keepOk([
      "token",
      "create",
      "--data",
      one.dataDir,
      "--index",
      db.url,
      "--role",
      role,
      "--project",
      project,
    ])).stdout.trim();
  const admin = await token("admin", "*");
  const restore = await token("restore", "app");
  const src = await tempDir();
  writeTree(src, { "hello.txt": "hello\n" });
  for (const p of ["app", "other"]) {
    await keepOk(["backup", "-s", one.url, "-p", p, "--token", admin, "--settle", "0", src]);
  }
  const cookie = await signIn(one.url, restore);
  const home = await uiPage(two.url, "/", cookie);
  assertEquals(home.status, 200);
  assertMatch(home.text, /data-project="app"/);
  assert(!home.text.includes('data-project="other"'), "only what the token may read");
  const tree = await uiPage(two.url, "/p/app/tree", cookie);
  assertEquals(tree.status, 200);
  assertMatch(tree.text, /hello\.txt/);
  assertEquals((await uiPage(two.url, "/p/other", cookie)).status, 403);
  // Every page of the project answers from the database.
  writeTree(src, { "hello.txt": "hello again\n" });
  await keepOk(["backup", "-s", two.url, "-p", "app", "--token", admin, "--settle", "0", src]);
  for (
    const [path, expect] of [
      ["/p/app", /#2/],
      ["/p/app/diff?from=%231&to=%232", /hello\.txt/],
      ["/p/app/history?path=hello.txt", /#1/],
      ["/p/app/find?q=*.txt", /hello\.txt/],
      ["/p/app/file?path=hello.txt", /hello again/],
    ] as const
  ) {
    const r = await uiPage(one.url, path, cookie);
    assertEquals(r.status, 200, `${path}: ${r.text.slice(0, 300)}`);
    assertMatch(r.text, expect);
  }
  assertEquals((await uiPage(two.url, "/p/app", "x".repeat(43))).status, 401);
  // /metrics reads the store's figures from the database.
  const metrics = await fetch(`${two.url}/metrics`, {
    headers: { authorization: `Bearer ${admin}` },
  });
  const text = await metrics.text();
  assertEquals(metrics.status, 200, text);
  assertMatch(text, /^keep_blobs [1-9]/m);
  assertMatch(text, /project="app"/);
  // The index holds the SHA-256 of the cookie value, never the value.
  const pg = postgres(db.url, { max: 1, onnotice: () => {} });
  try {
    const rows = await pg`SELECT encode(hash, 'hex') AS hash, token, csrf FROM sessions`;
    assertEquals(rows.length, 1);
    assertEquals(rows[0].hash, createHash("sha256").update(cookie).digest("hex"));
    assert(!JSON.stringify(rows).includes(cookie), "no cookie value in the index");
  } finally {
    await pg.end();
  }
  // Sign-out through node 2 (with the session's CSRF value) ends it on node 1 too.
  const csrf = /name="csrf" value="([^"]+)"/.exec(tree.text)![1];
  const out = await fetch(`${two.url}/ui/signout`, {
    method: "POST",
    headers: {
      origin: two.url,
      cookie: `keep_session=${cookie}`,
      "content-type": "application/x-www-form-urlencoded",
    },
    body: new URLSearchParams({ csrf }),
    redirect: "manual",
  });
  await out.body?.cancel();
  assertEquals(out.status, 303);
  assertEquals((await uiPage(one.url, "/p/app", cookie)).status, 401);
  // A token revoked (in the database) ends its sessions on every node.
  const second = await signIn(two.url, restore);
  assertEquals((await uiPage(one.url, "/p/app", second)).status, 200);
  await keepOk([
    "token",
    "revoke",
    "--data",
    one.dataDir,
    "--index",
    db.url,
    restore.split("_")[1],
  ]);
  assertEquals((await uiPage(one.url, "/p/app", second)).status, 401);
  assertEquals((await uiPage(two.url, "/p/app", second)).status, 401);
});

Deno.test("keep migrate: a data dir into RGW + PostgreSQL and back, every commit restoring through two nodes, the next backups landing", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("migrate");
  // The embedded store: three commits with small files, large blobs and a link; a token.
  const from = await tempDir("keep-data-");
  const src = await tempDir();
  const snaps: [string, Snapshot][] = [];
  {
    await using server = await startServer({ dataDir: from });
    const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
    writeTree(src, {
      ...smallFiles(150, 0),
      "out/a.bin": randomData(3 << 20),
      "out/b.bin": randomData((1 << 20) + 7),
      "link": { link: "src/f1.txt" },
    });
    for (let round = 0; round < 3; round++) {
      if (round > 0) writeTree(src, { [`src/f${round}.txt`]: `round ${round}\n` });
      const r = json<{ commit: { id: string } }>(
        await keepOk(["backup", "-m", `r${round}`, "--json", src], 0, cli),
      );
      snaps.push([r.commit.id, snapshot(src)]);
    }
  }
  const secret = (await keepOk(["token", "create", "--data", from, "--role", "admin"])).stdout
    .trim();
  const node1 = await tempDir("keep-node-");
  const to = [
    "--to",
    node1,
    "--to-blobs",
    `s3://${env.KEEP_S3_BUCKET}/${prefix}`,
    "--to-index",
    db.url,
  ];
  const r = json<
    { verify: { ok: boolean }; rows: Record<string, number>; large: { copied: number } }
  >(
    await keepOk(["migrate", "--from", from, ...to, "--json"], 0, { env: { ...env } }),
  );
  assert(r.verify.ok);
  assertEquals([r.rows.commits, r.large.copied], [3, 2]);
  // Two nodes on the migrated bucket and database: every commit restores through either.
  const nodes = [
    await startServer({
      dataDir: node1,
      args: ["--index", db.url],
      env: { ...env },
      noAuth: false,
    }),
    await node(env, db.url, prefix, false),
  ];
  try {
    for (const [i, n] of nodes.entries()) {
      const cli = { env: { KEEP_SERVER: n.url, KEEP_PROJECT: "app", KEEP_TOKEN: secret } };
      const log = logJson<{ id: string; message: string }>(await keepOk(["log", "--json"], 0, cli));
      assertEquals(log.map((c) => c.id).reverse(), snaps.map(([id]) => id));
      for (const [id, snap] of snaps) {
        const dest = join(await tempDir(), "r");
        await keepOk(["restore", "--commit", id, dest], 0, cli);
        assertSameTree(snapshot(dest), snap, `node ${i + 1}, commit ${id}`);
      }
      // The next backup through each node lands on the migrated head (ids, packs, blobs go on).
      writeTree(src, {
        [`after${i}.txt`]: `after the migration ${i}\n`,
        "out/c.bin": randomData(2 << 20),
      });
      const b = json<{ commit: { id: string; parent: string; seq: number } }>(
        await keepOk(["backup", "--json", src], 0, cli),
      );
      assertEquals([b.commit.parent, b.commit.seq], [snaps[snaps.length - 1][0], snaps.length + 1]);
      snaps.push([b.commit.id, snapshot(src)]);
    }
  } finally {
    for (const n of nodes) await n.stop();
  }
  // And back into a data dir of its own: the five commits, verified, served.
  const back = join(await tempDir(), "back");
  const r2 = json<{ verify: { ok: boolean }; rows: Record<string, number> }>(
    await keepOk(["migrate", "--from", node1, "--from-index", db.url, "--to", back, "--json"], 0, {
      env: { ...env },
    }),
  );
  assert(r2.verify.ok);
  assertEquals(r2.rows.commits, 5);
  await using server = await startServer({ dataDir: back, noAuth: false });
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app", KEEP_TOKEN: secret } };
  for (const [id, snap] of snaps) {
    const dest = join(await tempDir(), "r");
    await keepOk(["restore", "--commit", id, dest], 0, cli);
    assertSameTree(snapshot(dest), snap, `back home, commit ${id}`);
  }
  const v = await keepOk(["verify", "--data", back]);
  assertMatch(v.stdout, /keep verify: OK/);
});

/** The commit a `backup --json` made. */
type Made = { id: string; seq: number; parent: string | null };

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** The commits of a project as log --json lists them (newest first): a chain, each on the next. */
async function assertChain(url: string, project: string, n: number): Promise<Made[]> {
  const log = logJson<Made>(
    await keepOk(["log", "--json"], 0, { env: { KEEP_SERVER: url, KEEP_PROJECT: project } }),
  );
  assertEquals(log.length, n, "commits in the log");
  for (let i = 0; i < log.length - 1; i++) {
    assertEquals(log[i].seq, log[i + 1].seq + 1, "seqs without a gap");
    assertEquals(log[i].parent, log[i + 1].id, `commit #${log[i].seq} sits on the one before`);
  }
  return log;
}

/**
 * What `keep verify` would check, asked of PostgreSQL and the bucket directly
 * (verify's queries on PostgreSQL are another part of issue 16): every
 * version's content has a row, every row's bytes exist in the bucket, and
 * the bucket holds no large object no row names. Returns the large objects.
 */
async function assertStoreSound(
  sql: postgres.Sql,
  s3: S3Client,
  prefix: string,
): Promise<Set<string>> {
  const [missing] = await sql`
    SELECT count(*) AS n FROM (SELECT hash FROM current WHERE hash IS NOT NULL AND size > 0
      UNION SELECT hash FROM history WHERE hash IS NOT NULL AND size > 0) v
    WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = v.hash)`;
  assertEquals(Number(missing.n), 0, "versions whose content has no row");
  const objects = new Set((await keys(s3, prefix)).map((o) => o.key.slice(prefix.length)));
  const rows = await sql`SELECT encode(hash, 'hex') AS hash, pack, "offset", chunked FROM blobs`;
  const large = new Set<string>();
  for (const r of rows) {
    if (r.chunked !== null) continue; // a big file in chunks: no object of its own
    if (r.pack === null) {
      const name = `blobs/${r.hash}.${r.offset}`;
      assert(objects.has(name), `the object of large blob ${r.hash} is there`);
      large.add(name);
    } else {
      assert(objects.has(`packs/${r.pack}.pack`), `pack ${r.pack} of blob ${r.hash} is there`);
    }
  }
  const strays = [...objects].filter((k) => k.startsWith("blobs/") && !large.has(k));
  assertEquals(strays, [], "large objects no row names");
  const packs = new Set((await sql`SELECT id FROM packs`).map((r) => `packs/${r.id}.pack`));
  const unknown = [...objects].filter((k) => k.startsWith("packs/") && !packs.has(k));
  assertEquals(unknown, [], "pack objects the index forgot");
  const [staged] = await sql`SELECT count(*) AS n FROM stage`;
  assertEquals(Number(staged.n), 0, "staged rows left behind");
  const [lists] = await sql`
    SELECT (SELECT count(*) FROM chunks k WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = k.chunk)) AS lost,
      (SELECT count(*) FROM chunks k WHERE NOT EXISTS (
        SELECT 1 FROM blobs b WHERE b.hash = k.file AND b.chunked IS NOT NULL)) AS stale,
      (SELECT count(*) FROM blobs b WHERE chunked IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM chunks k WHERE k.file = b.hash)) AS empty`;
  assertEquals(
    [Number(lists.lost), Number(lists.stale), Number(lists.empty)],
    [0, 0, 0],
    "chunk lists naming no blob, lists of no chunked file, chunked files without a list",
  );
  return large;
}

Deno.test("pg index: three servers on one database and bucket: one project backed up through all three at once lands in a chain, each commit restored through another server", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pg3n");
  await using a = await node(env, db.url, prefix);
  await using b = await node(env, db.url, prefix);
  await using c = await node(env, db.url, prefix);
  const nodes = [a, b, c];
  const via = (s: { url: string }) => ({ env: { KEEP_SERVER: s.url, KEEP_PROJECT: "farm" } });
  const base: Record<string, string | Uint8Array> = {};
  for (let i = 0; i < 150; i++) base[`src/f${i}.c`] = `int f${i}(void) { return ${i}; }\n`;
  base["lib/big.a"] = randomData(1_500_000);
  const hosts = [await tempDir(), await tempDir(), await tempDir()];
  for (const h of hosts) writeTree(h, base);
  const made = new Map<string, Snapshot>();
  const first = json<{ commit: Made }>(
    await keepOk(["backup", "--settle", "0", "--json", hosts[0]], 0, via(a)),
  ).commit;
  made.set(first.id, snapshot(hosts[0]));
  for (let round = 0; round < 3; round++) {
    hosts.forEach((h, i) =>
      writeTree(h, {
        [`src/f${i}.c`]: `changed on host ${i} in round ${round}\n`,
        [`host${i}/r${round}.txt`]: `host ${i} round ${round}\n`,
        [`host${i}/big.bin`]: randomData(1_200_000 + i),
      })
    );
    const runs = await Promise.all(
      hosts.map((h, i) => keep(["backup", "--settle", "0", "--json", h], via(nodes[i]))),
    );
    for (const [i, r] of runs.entries()) {
      assertEquals(r.code, 0, `round ${round}, host ${i}: ${r.stderr}`);
      made.set(json<{ commit: Made }>(r).commit.id, snapshot(hosts[i]));
    }
  }
  const log = await assertChain(c.url, "farm", 10);
  assertEquals(new Set(log.map((m) => m.id)), new Set(made.keys()));
  // Each commit is its host's tree, restored through a server that (mostly) did not take it.
  for (const [k, m] of log.entries()) {
    const dest = await tempDir();
    await keepOk(["restore", "--commit", m.id, dest], 0, via(nodes[k % 3]));
    assertSameTree(snapshot(dest), made.get(m.id)!, `commit #${m.seq}`);
  }
});

Deno.test("pg index: kill -9 of one of three servers in the middle of an upload: the others serve, nothing is half written, and its upload stops holding GC back once it expires", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pgkill");
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  const s3 = bucketClient(env);
  // 20 s: a's last refresh may come up to a third of it before the kill, and a backup and a
  // GC round must run before its registration expires (8 s left ~5 s: too little on a loaded box).
  const timeout = ["--upload-timeout", "20s", "--gc-grace", "0s"];
  // Whole files on a: the kill comes while a large blob is spooled for its multipart upload.
  const a = await node(env, db.url, prefix, true, [...timeout, ...WHOLE_FILES]);
  await using b = await node(env, db.url, prefix, true, timeout);
  await using c = await node(env, db.url, prefix, true, timeout);
  try {
    const via = (s: { url: string }, project = "app") => ({
      env: { KEEP_SERVER: s.url, KEEP_PROJECT: project },
    });
    // Two commits through b: the first holds old.bin, which the second deleted.
    const src = await tempDir();
    writeTree(src, { ...smallFiles(50, 7), "old.bin": randomData(1_300_000) });
    await keepOk(["backup", "--settle", "0", src], 0, via(b));
    Deno.removeSync(join(src, "old.bin"));
    await keepOk(["backup", "--settle", "0", src], 0, via(b));
    const kept = snapshot(src);

    // Another host's big upload through a, killed once the large file arrives.
    const other = await tempDir();
    writeTree(other, { ...smallFiles(300, 8), "big/a.bin": randomData(40_000_000) });
    const cut = keep(["backup", "--settle", "0", other], via(a, "other"));
    const tmp = join(a.dataDir, "tmp");
    let spooling = false;
    for (let i = 0; i < 400 && !spooling; i++) {
      spooling = [...Deno.readDirSync(tmp)].some((e) => e.name.endsWith(".s3part"));
      if (!spooling) await new Promise((r) => setTimeout(r, 25));
    }
    assert(spooling, "the large file was arriving");
    await a.stop("SIGKILL");
    const killed = Date.now();
    assertEquals((await cut).code, 5, "the cut backup fails");
    const [reg] = await sql`SELECT count(*) AS n FROM uploads WHERE project = 'other'`;
    assertEquals(Number(reg.n), 1, "the dead server's upload is still registered");

    // old.bin's last commit forgotten (it is a third commit's turn below):
    // its blob is marked after the dead upload began, so while that upload
    // counts as in flight it stays...
    writeTree(src, { "after.txt": "made while a was dead\n" });
    await keepOk(["backup", "--settle", "0", src], 0, via(c));
    const first = json<{ gc: { blobsMarked: number; blobsSwept: number } }>(
      await keepOk(["prune", "--keep-last", "2", "--wait", "--json"], 0, via(b)),
    );
    const [left] = await sql`SELECT count(*) AS n FROM uploads WHERE project = 'other'`;
    assertEquals(Number(left.n), 1, "the pruning round ran before the registration expired");
    assert(first.gc.blobsMarked >= 1, `old.bin marked: ${JSON.stringify(first.gc)}`);
    assertEquals(first.gc.blobsSwept, 0, "nothing marked after the dead upload began is swept");

    // The others serve: the commit through c restores through b.
    const dest = await tempDir();
    await keepOk(["restore", dest], 0, via(b));
    assertSameTree(snapshot(dest), snapshot(src));
    assertEquals(
      logJson<unknown>(await keepOk(["log", "--json"], 0, via(b, "other"))).length,
      0,
      "no commit of the cut upload",
    );
    // ...and once its registration expired (no heartbeat from a), it goes.
    await new Promise((r) => setTimeout(r, Math.max(0, killed + 20_500 - Date.now())));
    const second = json<{ gc: { blobsSwept: number } }>(
      await keepOk(["prune", "--keep-last", "2", "--wait", "--json"], 0, via(c)),
    );
    assert(second.gc.blobsSwept >= 1, `old.bin swept: ${JSON.stringify(second.gc)}`);
    const [gone] = await sql`SELECT count(*) AS n FROM uploads`;
    assertEquals(Number(gone.n), 0, "the expired registration is removed");
    const [sealed] = await sql`SELECT count(*) AS n FROM packs WHERE sealed IS NULL`;
    assertEquals(Number(sealed.n), 0, "the dead server's open pack is sealed (and collected)");
    const large = await assertStoreSound(sql, s3, prefix);
    assertEquals(large.size, 0, "old.bin's object deleted, the cut upload's left nothing");
    await assertChain(c.url, "app", 2);
    const direct = await keep(["prune", "--data", a.dataDir, "-p", "app", "--keep-last", "1"]);
    assertEquals(direct.code, 2, direct.stderr);
    assertMatch(direct.stderr, /index is in PostgreSQL; prune through a server/);
    const out = await tempDir();
    await keepOk(["restore", "--commit", "#2", out], 0, via(c));
    assertSameTree(snapshot(out), kept);
  } finally {
    await a.stop("SIGKILL");
    await sql.end();
  }
});

Deno.test("pg index: prune and GC on one of three servers while the other two take backups: every kept commit restores, forgotten content leaves the bucket", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pggc");
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  const s3 = bucketClient(env);
  try {
    await using gc = await node(env, db.url, prefix, true, ["--gc-grace", "0s"]);
    await using b = await node(env, db.url, prefix);
    await using c = await node(env, db.url, prefix);
    const via = (s: { url: string }) => ({ env: { KEEP_SERVER: s.url, KEEP_PROJECT: "farm" } });
    const hosts = [await tempDir(), await tempDir()];
    const made = new Map<string, Snapshot>();
    const bigOf = new Map<string, string[]>();
    let backingUp = true;
    const host = async (i: number, server: { url: string }) => {
      for (let round = 0; round < 6; round++) {
        const big = randomData(1_100_000 + round);
        writeTree(hosts[i], {
          ...smallFiles(40, round * 10 + i),
          [`h${i}/big.bin`]: big,
          [`h${i}/r${round}.txt`]: `host ${i} round ${round}\n`,
        });
        const r = await keep(["backup", "--settle", "0", "--json", hosts[i]], via(server));
        assertEquals(r.code, 0, `host ${i} round ${round}: ${r.stderr}`);
        const id = json<{ commit: Made }>(r).commit.id;
        made.set(id, snapshot(hosts[i]));
        bigOf.set(id, [sha256(big)]);
      }
    };
    const rounds: { commitsRemoved: number; gc: { blobsSwept: number; packsDeleted: number } }[] =
      [];
    const pruning = (async () => {
      while (backingUp) {
        const r = await keep(["prune", "--keep-last", "2", "--wait", "--json"], via(gc));
        // The first prune may come before any commit: no project yet.
        if (r.code === 0) rounds.push(json(r));
        else assertMatch(r.stderr, /no project farm/);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    try {
      await Promise.all([host(0, b), host(1, c)]);
    } finally {
      backingUp = false;
      await pruning;
    }
    assert(rounds.length >= 2, `GC rounds ran during the backups: ${rounds.length}`);
    assert(
      rounds.some((r) => r.commitsRemoved > 0),
      `commits were forgotten while backups ran: ${JSON.stringify(rounds)}`,
    );
    // One last round with no upload in flight: everything forgotten goes.
    await keepOk(["prune", "--keep-last", "2", "--wait", "--json"], 0, via(gc));
    const log = await assertChain(b.url, "farm", 2);
    assertEquals(log[0].seq, 12, "all twelve backups landed");
    for (const m of log) {
      for (const s of [b, c, gc]) {
        const dest = await tempDir();
        await keepOk(["restore", "--commit", m.id, dest], 0, via(s));
        assertSameTree(snapshot(dest), made.get(m.id)!, `commit #${m.seq} through ${s.url}`);
      }
    }
    const large = await assertStoreSound(sql, s3, prefix);
    const keptBig = new Set(log.flatMap((m) => bigOf.get(m.id)!));
    assertEquals(
      new Set([...large].map((k) => k.slice("blobs/".length).split(".")[0])),
      keptBig,
      "the bucket holds the large objects of kept commits, and no other",
    );
    const [marked] = await sql`SELECT count(*) AS n FROM blobs WHERE orphan IS NOT NULL`;
    assertEquals(Number(marked.n), 0, "nothing left marked after the last round");
  } finally {
    await sql.end();
  }
});

/**
 * About `n` bytes of real files back to back (binaries under /usr/bin and
 * /usr/lib, each up to 4 MB): data that compresses and repeats as build
 * output does, unlike random bytes.
 */
function systemBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  let at = 0;
  for (const dir of ["/usr/bin", "/usr/lib/x86_64-linux-gnu"]) {
    const names = [...Deno.readDirSync(dir)].filter((e) => e.isFile).map((e) => e.name).sort();
    for (const name of names) {
      if (at === n) return out;
      try {
        if (Deno.statSync(join(dir, name)).size > 4_000_000) continue;
        const data = Deno.readFileSync(join(dir, name));
        const take = Math.min(data.length, n - at);
        out.set(data.subarray(0, take), at);
        at += take;
      } catch { /* unreadable: the next one */ }
    }
  }
  if (at < n) throw new Error(`only ${at} bytes of files under /usr`);
  return out;
}

/** A server's index read directly (PostgreSQL, or the data dir's SQLite): counts and hashes. */
interface IndexReader {
  count(query: string): Promise<number>;
  /** The column `h` of every row, as hex. */
  hexes(query: string): Promise<string[]>;
  /** SQL for column `c` as lower-case hex. */
  hex(c: string): string;
}

Deno.test("chunks on RGW: a 20 MB file edited in its middle stores a few chunks in packs, alike through PostgreSQL and SQLite; both commits restore, verify is clean, GC frees the forgotten chunks and keeps the shared ones, a lost pack of chunks is repaired by the next backup", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const s3 = bucketClient(env);
  const grace = ["--gc-grace", "0s"];
  const prefixes = { pg: freshPrefix("pgchunks"), sqlite: freshPrefix("chunks") };
  await using pgServer = await node(env, db.url, prefixes.pg, true, grace);
  await using liteServer = await s3Server(env, prefixes.sqlite, grace);
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  const lite = new DatabaseSync(join(liteServer.dataDir, "index.db"), { readOnly: true });
  type Row = Record<string, unknown>;
  const stores: { name: "pg" | "sqlite"; url: string; index: IndexReader }[] = [
    {
      name: "pg",
      url: pgServer.url,
      index: {
        count: async (q) => Number((await sql.unsafe(q))[0].n),
        hexes: async (q) => (await sql.unsafe(q)).map((r) => r.h as string),
        hex: (c) => `encode(${c}, 'hex')`,
      },
    },
    {
      name: "sqlite",
      url: liteServer.url,
      index: {
        count: (q) => Promise.resolve(Number((lite.prepare(q).get() as Row).n)),
        hexes: (q) => Promise.resolve((lite.prepare(q).all() as Row[]).map((r) => r.h as string)),
        hex: (c) => `lower(hex(${c}))`,
      },
    },
  ];
  try {
    const v1 = systemBytes(20_000_000);
    const v2 = v1.slice();
    v2.set(randomData(4096), 10_000_000); // 4 KiB in the middle rewritten
    const [f1, f2] = [sha256(v1), sha256(v2)];
    const src = await tempDir();
    const figures: Record<string, unknown> = {};
    for (const { name, url, index } of stores) {
      const cli = { env: { KEEP_SERVER: url, KEEP_PROJECT: "app" } };
      const backup = async () =>
        json<{ commit: { id: string; stats: { newBlobs: number } } }>(
          await keepOk(["backup", "--settle", "0", "--json", src], 0, cli),
        ).commit;
      const stored = () =>
        index.count("SELECT coalesce(sum(stored), 0) AS n FROM blobs WHERE chunked IS NULL");
      const listed = (file: string) =>
        index.hexes(`SELECT DISTINCT ${index.hex("chunk")} AS h FROM chunks
          WHERE ${index.hex("file")} = '${file}'`);
      const among = (hashes: string[]) =>
        `${index.hex("hash")} IN (${hashes.map((h) => `'${h}'`).join(", ") || "''"})`;
      const present = (hashes: string[]) =>
        index.count(`SELECT count(*) AS n FROM blobs WHERE ${among(hashes)}`);
      const unmarked = (hashes: string[]) =>
        index.count(`SELECT count(*) AS n FROM blobs WHERE orphan IS NULL AND ${among(hashes)}`);

      writeTree(src, { "out/app.bin": v1, "README": "a build\n" });
      const one = await backup();
      const chunks1 = await index.count("SELECT count(*) AS n FROM chunks");
      const distinct1 = await index.count("SELECT count(DISTINCT chunk) AS n FROM chunks");
      assertEquals(
        await index.count("SELECT count(*) AS n FROM blobs WHERE chunked IS NOT NULL"),
        1,
        `${name}: the big file is one chunked row`,
      );
      // 20 MB in chunks of 128 KiB to 2 MiB.
      assert(chunks1 >= 10 && chunks1 <= 160, `${name}: ${chunks1} chunks`);
      assertEquals(
        await keys(s3, `${prefixes[name]}blobs/`),
        [],
        `${name}: no large object, the chunks are in packs`,
      );
      const stored1 = await stored();
      const stats = async () =>
        json<{ store: { storedBytes: number } }>(await keepOk(["stats", "-s", url, "--json"]))
          .store.storedBytes;
      assertEquals(await stats(), stored1, `${name}: stats count the chunks, not the file's row`);

      writeTree(src, { "out/app.bin": v2 });
      const two = await backup();
      const distinct2 = await index.count("SELECT count(DISTINCT chunk) AS n FROM chunks");
      const grown = (await stored()) - stored1;
      const added = distinct2 - distinct1;
      // The chunk around the edit, and a neighbour or two where a cut moved.
      assert(added >= 1 && added <= 6, `${name}: ${added} new chunks`);
      assertEquals(two.stats.newBlobs, added + 1, `${name}: the new chunks and the file's row`);
      assert(grown > 0 && grown <= added * (2 << 20) + 65536, `${name}: the store grew ${grown}`);
      assert(grown * 4 < stored1, `${name}: grew ${grown} on ${stored1}`);
      assertEquals(await stats(), stored1 + grown);

      for (const [id, want] of [[one.id, v1], [two.id, v2]] as const) {
        const dest = await tempDir();
        await keepOk(["restore", "--commit", id, dest], 0, cli);
        assertEquals(sha256(Deno.readFileSync(join(dest, "out/app.bin"))), sha256(want), id);
      }
      const clean = json<{ ok: boolean; blobs: number; damaged: unknown[] }>(
        await keepOk(["verify", "--server", url, "--json"], 0),
      );
      assertEquals([clean.ok, clean.damaged.length], [true, 0], `${name}: verify`);

      // GC: the first commit goes. Its file's row and list go, then the chunks only it held.
      const own = await listed(f1);
      const kept = await listed(f2);
      const only = own.filter((h) => !kept.includes(h)).sort();
      const shared = own.filter((h) => kept.includes(h));
      assert(only.length >= 1 && only.length <= 6, `${name}: ${only.length} chunks only v1 holds`);
      const prune = async () =>
        json<{ gc: { blobsSwept: number } }>(
          await keepOk(["prune", "--keep-last", "1", "--wait", "--json"], 0, cli),
        ).gc.blobsSwept;
      const first = await prune();
      assertEquals(await present([f1]), 0, `${name}: the forgotten file's row is swept`);
      assertEquals((await listed(f1)).length, 0, `${name}: its chunk list with it`);
      assertEquals(await unmarked(only), 0, `${name}: its own chunks marked (or swept)`);
      assertEquals(await unmarked(shared), shared.length, `${name}: the shared ones not`);
      const second = await prune();
      assertEquals(first + second, 1 + only.length, `${name}: swept ${first} + ${second}`);
      assertEquals(await present(only), 0, `${name}: v1's own chunks are gone`);
      assertEquals(await present(kept), kept.length, `${name}: every chunk of v2 is there`);
      assertEquals(
        await index.count(`SELECT count(*) AS n FROM blobs b
          WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = b.hash)
            AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = b.hash)
            AND NOT EXISTS (SELECT 1 FROM chunks k WHERE k.chunk = b.hash)`),
        0,
        `${name}: no blob left that nothing refers to`,
      );
      const dest = await tempDir();
      await keepOk(["restore", dest], 0, cli);
      assertEquals(sha256(Deno.readFileSync(join(dest, "out/app.bin"))), f2, `${name}: after GC`);
      assertMatch((await keepOk(["verify", "--server", url], 0)).stdout, /OK/);

      // A pack of v2's chunks deleted behind the server's back: verify finds its blobs and the
      // file (through its list) damaged and marks them; the next backup sends the file again,
      // which repairs the chunks and the file's row, its list rewritten whole.
      const pack = await index.count(`SELECT pack AS n FROM blobs WHERE ${among([kept[0]])}`);
      const lost = await index.count(`SELECT count(*) AS n FROM blobs WHERE pack = ${pack}`);
      const listRows = () =>
        index.count(`SELECT count(*) AS n FROM chunks WHERE ${index.hex("file")} = '${f2}'`);
      const rows2 = await listRows();
      await s3.deleteMany([`${prefixes[name]}packs/${pack}.pack`]);
      const broken = await keep(["verify", "--server", url, "--json"]);
      assertEquals(broken.code, 4, broken.stderr);
      const damaged = json<{ damaged: { hash: string }[] }>(broken).damaged.map((d) => d.hash);
      assert(damaged.includes(f2) && damaged.includes(kept[0]), `${name}: ${damaged}`);
      assertEquals(damaged.length, lost + 1, `${name}: the pack's ${lost} blobs and the file`);
      const repair = await backup();
      assertEquals(repair.stats.newBlobs, lost + 1, `${name}: all of them sent again`);
      assertEquals(await listRows(), rows2, `${name}: the repaired file's list, once`);
      const healed = await tempDir();
      await keepOk(["restore", healed], 0, cli);
      assertEquals(sha256(Deno.readFileSync(join(healed, "out/app.bin"))), f2, `${name}: repaired`);
      const sound = json<{ ok: boolean; damaged: unknown[] }>(
        await keepOk(["verify", "--server", url, "--json"], 0),
      );
      assertEquals([sound.ok, sound.damaged.length], [true, 0], `${name}: verify after the repair`);
      figures[name] = {
        chunks1,
        distinct1,
        stored1,
        added,
        grown,
        only,
        swept: first + second,
        lost,
      };
    }
    // The two indexes hold the same: the client's chunks and members, kept as they came.
    assertEquals(figures.pg, figures.sqlite);
    await assertStoreSound(sql, s3, prefixes.pg);
  } finally {
    lite.close();
    await sql.end();
  }
});

Deno.test("pg index: GC's mark and sweep on one connection while uploads on another count on the same content: no commit loses content, none is refused for it", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  // Two servers' indexes: uploads through one, GC through the other, no event loop between them.
  const up = await PgIndex.open(db.url);
  const gc = await PgIndex.open(db.url);
  try {
    const pool = Array.from({ length: 300 }, (_, i) => new TextEncoder().encode(`content ${i}`))
      .map((b) => ({
        hash: new Uint8Array(createHash("sha256").update(b).digest()),
        size: b.length,
      }));
    const pause = () => new Promise((r) => setTimeout(r, Math.random() * 15));
    let landed = 0;
    let parentGone = 0;
    const contentGone: string[] = [];
    const uploader = async (host: number) => {
      for (let n = 0; n < 20; n++) {
        const stage = await up.beginUpload("storm");
        const head = await up.headCommit("storm");
        await stage.pin(head?.id ?? null);
        const picks = Array.from(
          { length: 25 },
          () => pool[Math.floor(Math.random() * pool.length)],
        );
        const known = await up.knownBlobs(picks.map((p) => p.hash));
        await pause();
        const fresh = new Map<string, NewBlob>();
        for (const p of picks) {
          const hex = bytesToHex(p.hash);
          if (known.has(hex)) continue;
          fresh.set(hex, {
            hash: p.hash,
            size: p.size,
            stored: p.size,
            xxh: new Uint8Array(8),
            pack: null,
            offset: n * 100 + host,
          });
        }
        await stage.stage(
          picks.map((p, i) => ({
            op: "put" as const,
            path: `p${i}`,
            hashBytes: p.hash,
            entry: {
              path: `p${i}`,
              type: "f" as const,
              size: p.size,
              mode: 0o644,
              mtime: BigInt(n),
              ctime: BigInt(n),
              hash: bytesToHex(p.hash),
            },
          })),
          [...fresh.values()],
        );
        await pause();
        try {
          await stage.commit(
            { ...commitHeader(head?.id ?? null), host: `h${host}` } as unknown as UploadHeader,
            {
              filesReceived: 0,
              bytesReceived: 0,
              wireBytes: 0,
              newBlobs: 0,
              newBlobBytes: 0,
              seconds: 0,
            },
          );
          landed++;
        } catch (err) {
          const m = (err as Error).message;
          // A parent forgotten before the upload pinned it: the client diffs again (as on SQLite).
          if (/parent .* is not a commit/.test(m)) parentGone++;
          else contentGone.push(m);
        }
      }
    };
    let running = true;
    let swept = 0;
    let marked = 0;
    let rounds = 0;
    const collector = (async () => {
      // Rounds while the uploads go on, and one after them.
      for (let last = false; !last;) {
        last = !running;
        const commits = await gc.listCommits("storm", 1000);
        await gc.forgetCommits("storm", commits.slice(1).map((c) => c.seq), Date.now());
        let at: { path: string; first: number } | null = null;
        do {
          const r = await gc.cleanHistory("storm", at, 10, Date.now() + 1, 0);
          if (!last) marked += r.marked;
          at = r.next;
        } while (at);
        await gc.purgeForgotten("storm", Date.now() + 1);
        for (let after: number | null = 0; after !== null;) {
          const m = await gc.gcMark(after, 10, 0);
          if (!last) marked += m.marked;
          after = m.lastId;
        }
        const cutoff = Math.min(Date.now() + 1, await gc.oldestUploadStart() ?? Infinity);
        for (let after: number | null = 0; after !== null;) {
          const s = await gc.gcSweep(after, cutoff, 10, Date.now());
          swept += s.swept;
          after = s.lastId;
        }
        rounds++;
      }
    })();
    try {
      await Promise.all([0, 1, 2, 3].map(uploader));
    } finally {
      running = false;
      await collector;
    }
    assertEquals(contentGone, [], "commits refused for content GC took");
    assert(landed >= 30, `commits landed: ${landed} (${parentGone} parents forgotten first)`);
    assert(
      rounds >= 3 && marked > 0 && swept > 0,
      `GC worked meanwhile: ${rounds} rounds, ${marked} marked during the uploads, ${swept} swept`,
    );
    const [missing] = await up.sql`
      SELECT count(*) AS n FROM (SELECT hash FROM current UNION SELECT hash FROM history) v
      WHERE hash IS NOT NULL AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = v.hash)`;
    assertEquals(Number(missing.n), 0, "versions whose content GC deleted");
  } finally {
    await up.close();
    await gc.close();
  }
});

/** A blob row of `text` (its SHA-256, raw and stored size its length) at `pack`/`offset`. */
function blobRow(text: string, pack: number | null, offset: number | null): NewBlob {
  const b = new TextEncoder().encode(text);
  return {
    hash: new Uint8Array(createHash("sha256").update(b).digest()),
    size: b.length,
    stored: b.length,
    xxh: new Uint8Array(8),
    pack,
    offset,
  };
}

Deno.test("pg index: a commit after a mark pass marked its staged content unmarks it from the upload's rows, fast, and the sweep then takes only the unreferenced", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const index = await PgIndex.open(db.url);
  try {
    const N = 20_000;
    const blob = (i: number, what = "staged") => blobRow(`${what} ${i}`, null, i);
    const staged = Array.from({ length: N }, (_, i) => blob(i));
    // Content of a failed upload: in no version, so the mark pass marks it and the sweep takes it.
    const stray = Array.from({ length: 100 }, (_, i) => blob(i, "stray"));
    const stage = await index.beginUpload("marked");
    await stage.pin(null);
    const rows = staged.map((b, i) => ({
      op: "put" as const,
      path: `f${String(i).padStart(6, "0")}`,
      hashBytes: b.hash,
      entry: {
        path: `f${String(i).padStart(6, "0")}`,
        type: "f" as const,
        size: b.size,
        mode: 0o644,
        mtime: 1n,
        ctime: 1n,
        hash: bytesToHex(b.hash),
      },
    }));
    for (let i = 0; i < N; i += 4096) {
      await stage.stage(rows.slice(i, i + 4096), staged.slice(i, i + 4096));
    }
    await (await index.beginUpload("other")).stage([], stray);
    // Statistics from before the mark pass (as autovacuum would have them):
    // the planner takes marked rows for rare.
    await index.sql`ANALYZE blobs`;
    let marked = 0;
    for (let after: number | null = 0; after !== null;) {
      const m = await index.gcMark(after, 8000, Date.now());
      marked += m.marked;
      after = m.lastId;
    }
    assertEquals(marked, N + 100, "the mark pass marks every blob no version refers to");
    const t = performance.now();
    await stage.commit(commitHeader(null) as unknown as UploadHeader, {
      filesReceived: N,
      bytesReceived: 0,
      wireBytes: 0,
      newBlobs: N,
      newBlobBytes: 0,
      seconds: 0,
    });
    const ms = performance.now() - t;
    // Unmarking from every marked row took 61 s for 20,000 rows here; from the upload's, 0.3 s.
    // The whole commit: 1.4-1.7 s; 16-24 s while paths were added by an anti-join.
    assert(ms < 10_000, `commit after a mark pass took ${ms.toFixed(0)} ms`);
    assertEquals(await index.pendingOrphans(), 100, "the commit unmarked exactly its content");
    let swept = 0;
    for (let after: number | null = 0; after !== null;) {
      const s = await index.gcSweep(after, Date.now() + 60_000, 8000, Date.now());
      swept += s.swept;
      after = s.lastId;
    }
    assertEquals(swept, 100, "the sweep takes the stray content only");
    const [missing] = await index.sql`
      SELECT count(*) AS n FROM current c WHERE c.hash IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = c.hash)`;
    assertEquals(Number(missing.n), 0, "versions whose content was swept");
    // A later upload counting on content finds it (one statement per batch), and
    // content marked since is unmarked by that lookup, so no sweep takes it.
    const late = Array.from({ length: 10 }, (_, i) => blob(i, "late"));
    await (await index.beginUpload("other")).stage([], late);
    for (let after: number | null = 0; after !== null;) {
      after = (await index.gcMark(after, 8000, Date.now())).lastId;
    }
    assertEquals(await index.pendingOrphans(), 10);
    const known = await index.knownBlobs(
      [...staged.slice(0, 5000), ...stray, ...late].map((b) => b.hash),
    );
    assertEquals(known.size, 5010, "committed and late content known, swept content not");
    assertEquals(await index.pendingOrphans(), 0, "the lookup unmarked what it found marked");
  } finally {
    await index.close();
  }
});

Deno.test("pg index: a server's scheduled rounds apply a policy set through another, and its idle recompression moves blobs the other restores", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pgpol");
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  try {
    await using b = await node(env, db.url, prefix);
    const via = { env: { KEEP_SERVER: b.url, KEEP_PROJECT: "app" } };
    await keepOk(["policy", "set", "--keep-last", "2"], 0, via);
    const src = await tempDir();
    const made = new Map<string, Snapshot>();
    for (let i = 0; i < 4; i++) {
      const spec: Record<string, string> = {};
      // Text that deflate level 1 leaves room in (as source code does), varied per file.
      const words = [
        "alpha",
        "int",
        "return",
        "struct",
        "void",
        "if",
        "else",
        "for",
        "keep",
        "node",
      ];
      for (let f = 0; f < 60; f++) {
        let text = "";
        for (let w = 0; w < 3000; w++) {
          text += words[(w * 7 + f * 13 + i + ((w * w) >> 3)) % words.length] +
            (w % 11 === 0 ? ` ${w * f}\n` : " ");
        }
        spec[`t/${f}.txt`] = text;
      }
      writeTree(src, spec);
      const id = json<{ commit: Made }>(
        await keepOk(["backup", "--settle", "0", "--json", src], 0, via),
      ).commit.id;
      made.set(id, snapshot(src));
    }
    // Started after the backups: an idle compactor that found nothing looks again only 30 s later.
    await using a = await node(env, db.url, prefix, true, [
      "--retention-every",
      "1s",
      "--gc-grace",
      "0s",
      "--compact-idle",
      "1s",
    ]);
    let commits = 4;
    let recompressed = 0;
    for (let i = 0; i < 100 && (commits > 2 || recompressed === 0); i++) {
      await new Promise((r) => setTimeout(r, 200));
      const [c] = await sql`SELECT count(*) AS n FROM commits WHERE forgotten IS NULL`;
      const [l] = await sql`SELECT count(*) AS n FROM blobs WHERE level = 6`;
      commits = Number(c.n);
      recompressed = Number(l.n);
    }
    assertEquals(commits, 2, "the policy's rounds forgot the older commits");
    assert(recompressed > 0, `blobs recompressed at rest: ${a.stderr()}`);
    for (const m of await assertChain(b.url, "app", 2)) {
      const dest = await tempDir();
      await keepOk(["restore", "--commit", m.id, dest], 0, via);
      assertSameTree(snapshot(dest), made.get(m.id)!, `commit #${m.seq}`);
    }
  } finally {
    await sql.end();
  }
});

Deno.test("pg index: a pack a dead server left open is sealed once its refresh expired; a live server's open pack is not", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  // 2 s: the live server refreshes every 0.67 s, so a stalled event loop on a loaded box does not
  // make its pack look abandoned.
  const dead = await PgIndex.open(db.url, { uploadTimeoutMs: 2000 });
  const live = await PgIndex.open(db.url, { uploadTimeoutMs: 2000 });
  try {
    const abandoned = await dead.newPack();
    await dead.close(); // no more heartbeats: as after kill -9
    const open = await live.newPack();
    const sealed = await live.newPack();
    await live.sealPack(sealed);
    await live.sealAllPacks();
    const state = async () =>
      Object.fromEntries(
        (await live.sql`SELECT id, sealed IS NOT NULL AS s FROM packs ORDER BY id`).map((r) => [
          Number(r.id),
          r.s,
        ]),
      );
    assertEquals(await state(), { [abandoned]: false, [open]: false, [sealed]: true });
    await new Promise((r) => setTimeout(r, 3000));
    await live.sealAllPacks();
    assertEquals(await state(), { [abandoned]: true, [open]: false, [sealed]: true });
    // GC now sees it (no upload in flight): empty, so evacuated as dead and deleted.
    assert((await live.packUsage()).some((p) => p.pack === abandoned && p.live === 0));
  } finally {
    await live.close();
  }
});

Deno.test("pg index: prunes through two servers at once run their GC rounds one after the other (the lease)", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pglease");
  await using a = await node(env, db.url, prefix, true, ["--gc-grace", "0s"]);
  await using b = await node(env, db.url, prefix, true, ["--gc-grace", "0s"]);
  const src = await tempDir();
  for (let i = 0; i < 3; i++) {
    writeTree(src, smallFiles(400, i));
    await keepOk(["backup", "--settle", "0", src], 0, {
      env: { KEEP_SERVER: a.url, KEEP_PROJECT: "app" },
    });
  }
  type Figures = {
    started: number;
    finished: number;
    versionsRemoved: number;
    phaseMs: Record<string, number>;
  };
  const [ra, rb] = await Promise.all(
    [a, b].map(async (s) =>
      json<{ gc: Figures }>(
        await keepOk(["prune", "--keep-last", "1", "--wait", "--json"], 0, {
          env: { KEEP_SERVER: s.url, KEEP_PROJECT: "app" },
        }),
      ).gc
    ),
  );
  // The round that waited for the lease spent its first phase waiting, until the other ended.
  const [waiter, other] = ra.phaseMs.retention >= rb.phaseMs.retention ? [ra, rb] : [rb, ra];
  const waited = waiter.phaseMs.retention;
  assert(
    waiter.started + waited * 1.1 + 50 >= other.finished && other.finished > waiter.started,
    `one round waited for the other: ${JSON.stringify([ra, rb])}`,
  );
  assertEquals(ra.versionsRemoved + rb.versionsRemoved, 800, "the versions went once");
});

Deno.test("keep migrate: a data dir into RGW + PostgreSQL, backups there, and back into a data dir, verified each way", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("mig");
  const from = await tempDir("keep-data-");
  const src = await tempDir();
  const spec: Record<string, string | Uint8Array> = { "big.bin": randomData(2_500_000) };
  for (let i = 0; i < 50; i++) spec[`f${i}.txt`] = `file ${i}\n`.repeat(20);
  // Names whose UTF-8 byte order is not their UTF-16 order; a time before 1970.
  for (const n of ["odd\uFFFF", "odd\u{10000}", "odd\uE000", "é/ü", "odd\u{10FFFF}"]) {
    spec[`${n}.txt`] = n;
  }
  writeTree(src, spec);
  Deno.utimeSync(join(src, "f0.txt"), new Date(-86_400_123), new Date(-86_400_123));
  {
    await using embedded = await startServer({ dataDir: from });
    await keepOk(["backup", "-s", embedded.url, "-p", "app", "--settle", "0", src]);
  }
  const opts = { env: { ...env } };
  const blobs = `s3://${env.KEEP_S3_BUCKET}/${prefix}`;
  const there = json<{ verify: { ok: boolean } }>(
    await keepOk(
      ["migrate", "--from", from, "--to-blobs", blobs, "--to-index", db.url, "--json"],
      0,
      opts,
    ),
  );
  assert(there.verify.ok);
  // The migrated store takes new backups: new packs, blobs and projects (the id counters moved on).
  {
    await using server = await node(env, db.url, prefix);
    writeTree(src, { "f1.txt": "changed\n", "more.bin": randomData(2_600_000) });
    for (const p of ["app", "other"]) {
      await keepOk(["backup", "-s", server.url, "-p", p, "--settle", "0", src]);
    }
    assertMatch((await keepOk(["verify", "--server", server.url], 0)).stdout, /OK/);
  }
  // And back into a data dir: every row equal, verified.
  const back = join(await tempDir(), "back");
  const r = await keep(
    ["migrate", "--from-blobs", blobs, "--from-index", db.url, "--to", back, "--json"],
    opts,
  );
  assertEquals(r.code, 0, r.stderr);
  assert(json<{ verify: { ok: boolean } }>(r).verify.ok);
  await using local = await startServer({ dataDir: back });
  writeTree(src, { "f2.txt": "changed again\n" });
  await keepOk(["backup", "-s", local.url, "-p", "app", "--settle", "0", src]);
  const dest = await tempDir();
  await keepOk(["restore", "-s", local.url, "-p", "app", dest]);
  assertSameTree(snapshot(dest), snapshot(src));
});

Deno.test("keep migrate into a database whose default collation is not C (en-US): policies of projects Zeta and app compare equal", async () => {
  const env = await services();
  const name = `kt_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const admin = postgres(env.KEEP_PG_URL, { max: 1, onnotice: () => {} });
  // As initdb makes a cluster on a host whose locale is en_US.UTF-8 (Debian's usual).
  await admin.unsafe(
    `CREATE DATABASE ${name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'`,
  );
  try {
    const url = env.KEEP_PG_URL.replace(/\/[^/]*$/, `/${name}`);
    const from = await tempDir("keep-data-");
    const src = await tempDir();
    writeTree(src, { "a.txt": "a\n" });
    {
      await using embedded = await startServer({ dataDir: from });
      for (const p of ["Zeta", "app"]) {
        const cli = { env: { KEEP_SERVER: embedded.url, KEEP_PROJECT: p } };
        await keepOk(["backup", "--settle", "0", src], 0, cli);
        await keepOk(["policy", "set", "--keep-last", "5"], 0, cli);
      }
    }
    const blobs = `s3://${env.KEEP_S3_BUCKET}/${freshPrefix("migc")}`;
    const r = await keep(
      ["migrate", "--from", from, "--to-blobs", blobs, "--to-index", url, "--json"],
      { env: { ...env } },
    );
    assertEquals(r.code, 0, r.stderr);
    const back = join(await tempDir(), "back");
    const b = await keep(
      ["migrate", "--from-blobs", blobs, "--from-index", url, "--to", back, "--json"],
      { env: { ...env } },
    );
    assertEquals(b.code, 0, b.stderr);
  } finally {
    await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
    await admin.end();
  }
});

Deno.test("keep migrate refuses a PostgreSQL index a node serves, as source or as target", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("migsrv");
  const blobs = `s3://${env.KEEP_S3_BUCKET}/${prefix}`;
  const from = await tempDir("keep-data-");
  const src = await tempDir();
  writeTree(src, { "a.txt": "a\n" });
  {
    await using embedded = await startServer({ dataDir: from });
    await keepOk(["backup", "-s", embedded.url, "-p", "app", "--settle", "0", src]);
  }
  const opts = { env: { ...env } };
  {
    // The node's store is empty: the emptiness check alone lets the copy in under it.
    await using _serving = await node(env, db.url, prefix);
    const r = await keep(
      ["migrate", "--from", from, "--to-blobs", blobs, "--to-index", db.url],
      opts,
    );
    assertEquals(r.code, 2, r.stderr);
    assertMatch(r.stderr, /^keep: Cannot migrate .*: a keep serve runs on it/);
    const back = join(await tempDir(), "back");
    const s = await keep(
      ["migrate", "--from-blobs", blobs, "--from-index", db.url, "--to", back],
      opts,
    );
    assertEquals(s.code, 2, s.stderr);
    assertMatch(s.stderr, /a keep serve runs on it/);
  }
  await keepOk(["migrate", "--from", from, "--to-blobs", blobs, "--to-index", db.url], 0, opts);
});

Deno.test("keep migrate: a data dir with big files in chunks into RGW + PostgreSQL and back: the chunk lists arrive, every commit restores, a backup there stores only the chunks around an edit, verified each way", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("migchunks");
  const blobs = `s3://${env.KEEP_S3_BUCKET}/${prefix}`;
  const from = await tempDir("keep-data-");
  const src = await tempDir();
  const v1 = systemBytes(12 << 20);
  const v2 = v1.slice();
  v2.set(randomData(4096), 6 << 20);
  const commits: [string, string][] = []; // id, the big file's hash
  const backup = async (url: string, data: Uint8Array) => {
    writeTree(src, { "big.bin": data, "small.txt": "small\n" });
    const r = json<{ commit: { id: string; stats: { newBlobs: number } } }>(
      await keepOk(["backup", "-s", url, "-p", "app", "--settle", "0", "--json", src]),
    );
    commits.push([r.commit.id, sha256(data)]);
    return r.commit.stats.newBlobs;
  };
  const restoresAll = async (url: string) => {
    for (const [id, hash] of commits) {
      const dest = await tempDir();
      await keepOk(["restore", "-s", url, "-p", "app", "--commit", id, dest]);
      assertEquals(sha256(Deno.readFileSync(join(dest, "big.bin"))), hash, `commit ${id}`);
    }
    assertMatch((await keepOk(["verify", "--server", url], 0)).stdout, /OK/);
  };
  const sqliteLists = (dir: string) => {
    const lite = new DatabaseSync(join(dir, "index.db"), { readOnly: true });
    try {
      return Number((lite.prepare("SELECT count(*) AS n FROM chunks").get() as { n: number }).n);
    } finally {
      lite.close();
    }
  };
  {
    await using server = await startServer({ dataDir: from });
    for (const v of [v1, v2]) await backup(server.url, v);
  }
  const lists = sqliteLists(from);
  // Two files of 12 MiB in chunks of at most 2 MiB.
  assert(lists >= 12, `${lists} chunk list rows in the source`);
  const opts = { env: { ...env } };
  const there = json<{ verify: { ok: boolean }; finished: boolean; rows: Record<string, number> }>(
    await keepOk(
      ["migrate", "--from", from, "--to-blobs", blobs, "--to-index", db.url, "--json"],
      0,
      opts,
    ),
  );
  assertEquals([there.verify.ok, there.finished, there.rows.chunks], [true, true, lists]);
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  try {
    const [pg] = await sql`SELECT (SELECT count(*) FROM chunks) AS lists,
      (SELECT count(*) FROM blobs WHERE chunked IS NOT NULL) AS files`;
    assertEquals([Number(pg.lists), Number(pg.files)], [lists, 2]);
    {
      // Served from RGW + PostgreSQL: the copied chunks restore, and count for dedup.
      await using server = await node(env, db.url, prefix);
      await restoresAll(server.url);
      const v3 = v2.slice();
      v3.set(randomData(4096), 3 << 20);
      const added = await backup(server.url, v3);
      assert(added >= 2 && added <= 7, `${added} new blobs: a chunk or few and the file's row`);
      await restoresAll(server.url);
      await assertStoreSound(sql, bucketClient(env), prefix);
    }
    const [grown] = await sql`SELECT count(*) AS n FROM chunks`;
    // And back into a data dir: every row equal (the lists too), verified.
    const back = join(await tempDir(), "back");
    const r = await keep(
      ["migrate", "--from-blobs", blobs, "--from-index", db.url, "--to", back, "--json"],
      opts,
    );
    assertEquals(r.code, 0, r.stderr);
    const home = json<{ verify: { ok: boolean }; finished: boolean; rows: Record<string, number> }>(
      r,
    );
    assertEquals([home.verify.ok, home.finished], [true, true]);
    assertEquals([home.rows.chunks, sqliteLists(back)], [Number(grown.n), Number(grown.n)]);
    assert(Number(grown.n) > lists, "the third version's list came back too");
    await using local = await startServer({ dataDir: back });
    await restoresAll(local.url);
  } finally {
    await sql.end();
  }
});

Deno.test("pg index: behind a load balancer, a negotiation through one node and its upload through another record the content the store has without sending it", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const prefix = freshPrefix("pgneg");
  await using one = await node(env, db.url, prefix);
  await using two = await node(env, db.url, prefix);
  // A round-robin balancer: each request to the next node; the bytes sent up are counted.
  let turn = 0;
  let sent = 0;
  const targets = [one.url, two.url];
  const lb = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    const body = req.body ? new Uint8Array(await req.arrayBuffer()) : undefined;
    sent += body?.length ?? 0;
    const res = await fetch(targets[turn++ % 2] + url.pathname + url.search, {
      method: req.method,
      headers: req.headers,
      body,
    });
    return new Response(res.body, { status: res.status, headers: res.headers });
  });
  try {
    const lbUrl = `http://127.0.0.1:${lb.addr.port}`;
    const src = await tempDir();
    const spec: Record<string, Uint8Array> = {};
    for (let i = 0; i < 20; i++) spec[`out/a${i}.bin`] = randomData(200_000 + i);
    writeTree(src, spec);
    await keepOk(["backup", "-s", lbUrl, "-p", "first", "--settle", "0", src]);
    const before = sent;
    // The same tree as another project: negotiated, proved, not sent.
    const r = await keep(["backup", "-s", lbUrl, "-p", "second", "--settle", "0", src]);
    assertEquals(r.code, 0, r.stderr);
    const bytes = sent - before;
    assert(bytes < 0.01 * 20 * 200_000, `sent ${bytes} bytes for a tree the store had`);
    const dest = await tempDir();
    await keepOk(["restore", "-s", lbUrl, "-p", "second", dest]);
    assertSameTree(snapshot(dest), snapshot(src));
  } finally {
    await lb.shutdown();
  }
});

Deno.test("pg index: blobPlaces answers for a window of hashes in one statement as blobPlace does for each, in order, repeats and unknown hashes included; alike on SQLite", async () => {
  const env = await services();
  await using db = await freshDatabase(env);
  const pg = await PgIndex.open(db.url);
  const dir = await tempDir();
  const local = await openLocalStorage(dir, { create: true, owner: true });
  try {
    const made = (packs: number[]): NewBlob[] =>
      Array.from({ length: 5000 }, (_, i) => ({
        ...blobRow(`chunk ${i}`, i % 3 === 0 ? null : packs[i % 2], i % 3 === 0 ? null : i * 100),
        size: `chunk ${i}`.length + i,
      }));
    let blobs: NewBlob[] = [];
    for (const index of [pg, local.index]) {
      blobs = made([await index.newPack(), await index.newPack()]);
      const up = await index.beginUpload("app");
      for (let i = 0; i < blobs.length; i += 2048) await up.stage([], blobs.slice(i, i + 2048));
    }
    const hex = blobs.map((b) => bytesToHex(b.hash));
    const unknown = bytesToHex(new Uint8Array(32).fill(7));
    // Out of order, a hash twice, one the store lacks, 4,097 in all.
    const ask = [hex[4999], unknown, ...hex.slice(0, 4093), hex[10], hex[4999]];
    for (const index of [pg, local.index]) {
      const got = await index.blobPlaces(ask);
      assertEquals(got.length, ask.length);
      const each = [];
      for (const h of ask) each.push(await index.blobPlace(h));
      assertEquals(got, each, "blobPlaces as blobPlace for each");
      assertEquals(got[1], null, "an unknown hash has no place");
      assertEquals(got[0]!.size, blobs[4999].size);
    }
    assertEquals(
      await pg.blobPlaces(ask),
      await local.index.blobPlaces(ask),
      "PostgreSQL as SQLite",
    );
    assertEquals(await pg.blobPlaces([]), []);
    const before = DB_STATEMENTS.n;
    await pg.blobPlaces(ask);
    assertEquals(DB_STATEMENTS.n - before, 1, "one statement for the window");
  } finally {
    await pg.close();
    await local.close();
  }
});
