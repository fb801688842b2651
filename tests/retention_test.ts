/**
 * Retention and GC as users meet them: policies the server applies by
 * itself, prune by hand (dry run, JSON), stats, quotas and the free-space
 * reserve, and GC that never refuses or breaks a backup or a restore in
 * flight.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import {
  assertSameTree,
  json,
  keep,
  keepOk,
  logJson,
  snapshot,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";
import { commitHeader, Upload } from "./craft.ts";
import { randomBytes } from "./seeded.ts";

interface LogEntry {
  id: string;
  seq: number;
  tags: Record<string, string>;
}

async function commits(url: string, project: string): Promise<LogEntry[]> {
  return logJson<LogEntry>(
    await keepOk(["log", "-s", url, "-p", project, "-n", "1000", "--json"]),
  );
}

/** Backs up `dir` as `project` and returns the commit id. */
async function backup(
  url: string,
  project: string,
  dir: string,
  extra: string[] = [],
): Promise<string> {
  const r = await keepOk([
    "backup",
    "-s",
    url,
    "-p",
    project,
    "--settle",
    "0",
    "--json",
    ...extra,
    dir,
  ]);
  return json<{ commit: { id: string } }>(r).commit.id;
}

/**
 * A proxy to `target` that passes response bodies of archive requests and
 * request bodies of uploads at `bytesPerTick` every 20 ms, and tells how many
 * bytes went through.
 */
function slowProxy(target: string, bytesPerTick: number) {
  let passed = 0;
  const slow = (body: ReadableStream<Uint8Array>) =>
    body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        async transform(chunk, ctl) {
          for (let i = 0; i < chunk.length; i += bytesPerTick) {
            await new Promise((r) => setTimeout(r, 20));
            const part = chunk.slice(i, i + bytesPerTick);
            passed += part.length;
            ctl.enqueue(part);
          }
        },
      }),
    );
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const u = new URL(req.url);
    const upload = req.method === "POST" && u.pathname.endsWith("/commits");
    const res = await fetch(target + u.pathname + u.search, {
      method: req.method,
      headers: req.headers,
      body: req.body && upload ? slow(req.body) : req.body,
      // deno-lint-ignore no-explicit-any
      ...(req.body ? { duplex: "half" } as any : {}),
    });
    const archive = u.pathname.endsWith("/archive");
    return new Response(archive && res.body ? slow(res.body) : res.body, {
      status: res.status,
      headers: res.headers,
    });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    passed: () => passed,
    close: () => server.shutdown(),
  };
}

async function until(
  what: string,
  cond: () => boolean | Promise<boolean>,
  ms = 20_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

Deno.test("keep policy set/show/clear, and the server applies the policy by itself", async () => {
  await using server = await startServer({ args: ["--retention-every", "1s", "--gc-grace", "0s"] });
  const src = await tempDir();
  for (let i = 0; i < 6; i++) {
    if (i > 0) Deno.removeSync(join(src, `only${i - 1}.bin`));
    writeTree(src, { "n.txt": `${i}\n`, [`only${i}.bin`]: randomBytes(30_000, i) });
    await backup(server.url, "app", src, i === 1 ? ["--tag", "release=1.0"] : []);
  }
  assertEquals((await commits(server.url, "app")).length, 6);
  const set = await keepOk([
    "policy",
    "set",
    "-s",
    server.url,
    "-p",
    "app",
    "--keep-last",
    "2",
    "--keep-tag",
    "release=1.0",
    "--time-zone",
    "Europe/Berlin",
  ]);
  assertMatch(set.stdout, /last 2, tag release=1\.0 \(Europe\/Berlin\)/);
  const shown = json<{ policy: Record<string, unknown> }>(
    await keepOk(["policy", "show", "-s", server.url, "-p", "app", "--json"]),
  );
  assertEquals(shown.policy, { last: 2, tags: ["release=1.0"], timeZone: "Europe/Berlin" });
  // Within a few rounds: the two newest and the release remain.
  await until("retention", async () => (await commits(server.url, "app")).length === 3);
  const left = await commits(server.url, "app");
  assertEquals(left.filter((c) => c.tags.release === "1.0").length, 1);
  // And the space goes: only the kept commits' content remains.
  await until("GC", async () => {
    const s = json<{ store: { blobs: number } }>(
      await keepOk(["stats", "-s", server.url, "--json"]),
    );
    return s.store.blobs === 3 + 3; // only{1,4,5}.bin and the n.txt of each
  });
  await keepOk(["policy", "clear", "-s", server.url, "-p", "app"]);
  assertMatch((await keepOk(["policy", "show", "-s", server.url, "-p", "app"])).stdout, /none/);
  const bad = await keep(["policy", "set", "-s", server.url, "-p", "app", "--keep-within", "6m"]);
  assertEquals(bad.code, 2);
  assertMatch(bad.stderr, /ambiguous/);
  const none = await keep(["policy", "set", "-s", server.url, "-p", "app"]);
  assertEquals(none.code, 2);
  const verify = await keep(["verify", "--data", server.dataDir]);
  assertEquals(verify.code, 0, verify.stdout);
});

Deno.test("keep prune --dry-run lists every commit with the rule that keeps it, incomplete ones marked", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    writeTree(src, { "n.txt": `${i}\n` });
    ids.push(await backup(server.url, "app", src, i === 0 ? ["--tag", "release=yes"] : []));
  }
  const dry = await keepOk([
    "prune",
    "-s",
    server.url,
    "-p",
    "app",
    "-k",
    "2",
    "--keep-tag",
    "release=yes",
    "-n",
  ]);
  const lines = dry.stdout.split("\n").filter((l) => l.startsWith("  #"));
  assertEquals(lines.length, 5);
  assertMatch(lines[0], new RegExp(`${ids[4]}.*keep \\(newest, last\\)`));
  assertMatch(lines[1], new RegExp(`${ids[3]}.*keep \\(last\\)`));
  assertMatch(lines[2], new RegExp(`${ids[2]}.*remove`));
  assertMatch(lines[4], new RegExp(`${ids[0]}.*keep \\(tag release=yes\\)`));
  assertMatch(dry.stdout, /would remove 2 commits, kept 3/);
  assertEquals((await commits(server.url, "app")).length, 5, "a dry run changes nothing");
  const j = json<{ decisions: { id: string; keep: boolean; reasons: string[] }[] }>(
    await keepOk(["prune", "-s", server.url, "-p", "app", "-k", "2", "-n", "--json"]),
  );
  assertEquals(j.decisions.map((d) => d.keep), [true, true, false, false, false]);
  // A real prune, waiting for its GC: the history is gone, the kept commits restore.
  const done = await keepOk(["prune", "-s", server.url, "-p", "app", "-k", "2", "--wait"]);
  assertMatch(done.stdout, /removed 3 commits, kept 2/);
  assertEquals((await commits(server.url, "app")).map((c) => c.id), [ids[4], ids[3]]);
  const bad = await keep(["prune", "-s", server.url, "-p", "app"]);
  assertEquals(bad.code, 2, "no rules and no policy");
  assertMatch(bad.stderr, /give a rule/);
  const zero = await keep(["prune", "-s", server.url, "-p", "app", "-k", "0"]);
  assertEquals(zero.code, 2);
  // An incomplete backup (a path kept from before, flagged) is marked as such.
  const body = new Upload().commit(commitHeader(ids[4])).changes([
    { op: "keep", p: "n.txt", flag: "unreadable", reason: "permission denied" },
  ]).end().bytes();
  const res = await fetch(`${server.url}/v1/projects/app/commits`, {
    method: "POST",
    body: new Uint8Array(body),
  });
  assertEquals(res.status, 201, await res.text());
  const dry2 = await keepOk(["prune", "-s", server.url, "-p", "app", "-k", "2", "-n"]);
  assertMatch(dry2.stdout.split("\n")[0], /keep \(newest, last\)\s+incomplete$/);
  assertMatch(dry2.stdout.split("\n")[1], /keep \(last\)$/);
});

Deno.test("a restore that began before its commit was pruned finishes with the right bytes (the grace)", async () => {
  await using server = await startServer({
    args: ["--gc-grace", "60s", "--retention-every", "off"],
  });
  const src = await tempDir();
  const spec: Record<string, Uint8Array> = {};
  for (let i = 0; i < 300; i++) spec[`f${i}.bin`] = randomBytes(4000, i);
  writeTree(src, spec);
  const first = await backup(server.url, "app", src);
  const expected = snapshot(src);
  for (let i = 0; i < 300; i++) Deno.removeSync(join(src, `f${i}.bin`));
  writeTree(src, { "new.txt": "new\n" });
  await backup(server.url, "app", src);
  const proxy = slowProxy(server.url, 16 * 1024);
  try {
    const out = join(await tempDir(), "out");
    const restore = keep(["restore", "-s", proxy.url, "-p", "app", "-c", first, out]);
    await until("the restore to start", () => proxy.passed() > 64 * 1024);
    await keepOk(["prune", "-s", server.url, "-p", "app", "-k", "1", "--wait"]);
    assertEquals((await commits(server.url, "app")).length, 1, "forgotten while being read");
    const r = await restore;
    assertEquals(r.code, 0, r.stderr);
    assertSameTree(snapshot(out), expected, "restored while pruned");
  } finally {
    await proxy.close();
  }
});

Deno.test("packs emptied by GC while a restore reads them: the restore finds the moved bytes", async () => {
  // No grace at all: emptied packs are deleted at once, so the restore must
  // look the blobs up again where they moved.
  await using server = await startServer({
    args: ["--gc-grace", "0s", "--retention-every", "off"],
  });
  const src = await tempDir();
  const spec: Record<string, Uint8Array> = {};
  for (let i = 0; i < 600; i++) {
    spec[`f${String(i).padStart(3, "0")}.bin`] = randomBytes(3000, 1000 + i);
  }
  writeTree(src, spec);
  await backup(server.url, "app", src);
  // Most of each pack goes with the first commit; a third stays.
  for (let i = 0; i < 600; i++) {
    if (i % 3 !== 0) Deno.removeSync(join(src, `f${String(i).padStart(3, "0")}.bin`));
  }
  const kept = await backup(server.url, "app", src);
  const expected = snapshot(src);
  const proxy = slowProxy(server.url, 8 * 1024);
  try {
    const out = join(await tempDir(), "out");
    const restore = keep(["restore", "-s", proxy.url, "-p", "app", "-c", kept, out]);
    await until("the restore to start", () => proxy.passed() > 32 * 1024);
    const p = await keepOk(["prune", "-s", server.url, "-p", "app", "-k", "1", "--wait", "--json"]);
    const gc = json<{ gc: { packsEvacuated: number; packsDeleted: number } }>(p).gc;
    assert(
      gc.packsEvacuated > 0 && gc.packsDeleted > 0,
      `packs were emptied and deleted: ${JSON.stringify(gc)}`,
    );
    const r = await restore;
    assertEquals(r.code, 0, r.stderr);
    assertSameTree(snapshot(out), expected, "restored across the repack");
  } finally {
    await proxy.close();
  }
  const verify = await keep(["verify", "--data", server.dataDir]);
  assertEquals(verify.code, 0, verify.stdout);
});

Deno.test("prune while a backup uploads: nothing is refused, the backup lands whole", async () => {
  await using server = await startServer({
    args: ["--gc-grace", "0s", "--retention-every", "off"],
  });
  const src = await tempDir();
  writeTree(src, { "a.txt": "a\n", "shared.bin": randomBytes(200_000, 5) });
  await backup(server.url, "app", src);
  writeTree(src, { "b.txt": "b\n" });
  await backup(server.url, "app", src);
  // The next backup is slow; meanwhile the older commits go, and with them
  // nothing the upload counts on.
  writeTree(src, { "big.bin": randomBytes(3_000_000, 9), "c.txt": "c\n" });
  const expected = snapshot(src);
  const proxy = slowProxy(server.url, 32 * 1024);
  try {
    const b = keep(["backup", "-s", proxy.url, "-p", "app", "--settle", "0", "--json", src]);
    await until("the upload to start", () => proxy.passed() > 100 * 1024);
    const p = await keep(["prune", "-s", server.url, "-p", "app", "-k", "1", "--wait"]);
    assertEquals(p.code, 0, `prune during an upload: ${p.stderr}`);
    const r = await b;
    assertEquals(r.code, 0, r.stderr);
    assertEquals(json<{ attempts: number }>(r).attempts, 1);
  } finally {
    await proxy.close();
  }
  await keepOk(["prune", "-s", server.url, "-p", "app", "-k", "1", "--wait"]);
  const out = join(await tempDir(), "out");
  await keepOk(["restore", "-s", server.url, "-p", "app", out]);
  assertSameTree(snapshot(out), expected);
  const verify = await keep(["verify", "--data", server.dataDir]);
  assertEquals(verify.code, 0, verify.stdout);
});

Deno.test("keep stats: per project and for the store, dedup across projects", async () => {
  await using server = await startServer();
  const a = await tempDir();
  const b = await tempDir();
  const common = randomBytes(500_000, 77);
  writeTree(a, { "lib.so": common, "a.txt": randomBytes(100_000, 1) });
  writeTree(b, { "lib.so": common, "b.txt": randomBytes(200_000, 2) });
  await backup(server.url, "pa", a);
  await backup(server.url, "pb", b);
  const s = json<{
    store: {
      projects: number;
      blobs: number;
      storedBytes: number;
      logicalBytes: number;
      dedupRatio: number;
    };
    projects: {
      name: string;
      commits: number;
      storedBytes: number;
      exclusiveBytes: number;
      latest: { files: number };
    }[];
  }>(await keepOk(["stats", "-s", server.url, "--json"]));
  assertEquals(s.store.projects, 2);
  assertEquals(s.store.blobs, 3);
  assertEquals(s.store.logicalBytes, 1_300_000);
  const pa = s.projects.find((p) => p.name === "pa")!;
  const pb = s.projects.find((p) => p.name === "pb")!;
  assertEquals([pa.commits, pa.latest.files, pb.latest.files], [1, 2, 2]);
  // The shared library counts for both, but is exclusive to neither.
  assert(pa.storedBytes > 600_000 && pa.exclusiveBytes < 110_000, JSON.stringify(pa));
  assert(pb.exclusiveBytes > 190_000 && pb.exclusiveBytes < 210_000, JSON.stringify(pb));
  assert(s.store.storedBytes < pa.storedBytes + pb.storedBytes, "shared content is stored once");
  const one = json<{ store: unknown; projects: unknown[] }>(
    await keepOk(["stats", "-s", server.url, "-p", "pa", "--json"]),
  );
  assertEquals([one.store, one.projects.length], [null, 1]);
  assertMatch((await keepOk(["stats", "-s", server.url])).stdout, /store: 2 projects, 3 blobs/);
  // Three more commits of pa, one file touched: each commit's tree counts in
  // full, the unchanged content is stored once.
  for (let i = 0; i < 3; i++) {
    Deno.utimeSync(join(a, "a.txt"), 1_700_000_000 + i, 1_700_000_000 + i);
    await backup(server.url, "pa", a);
  }
  const s2 = json<{ store: { logicalBytes: number; dedupRatio: number; blobs: number } }>(
    await keepOk(["stats", "-s", server.url, "--json"]),
  );
  assertEquals([s2.store.logicalBytes, s2.store.blobs], [1_300_000 + 3 * 600_000, 3]);
  assert(s2.store.dedupRatio > 2, JSON.stringify(s2.store));
});

Deno.test("a quota refuses a backup before anything is stored (exit 7); the free-space reserve refuses uploads", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "a.bin": randomBytes(300_000, 1) });
  await backup(server.url, "app", src);
  await keepOk(["policy", "set", "-s", server.url, "-p", "app", "--quota", "500K"]);
  writeTree(src, { "b.bin": randomBytes(400_000, 2) });
  const before = json<{ store: { blobs: number } }>(
    await keepOk(["stats", "-s", server.url, "--json"]),
  );
  const r = await keep(["backup", "-s", server.url, "-p", "app", "--settle", "0", src]);
  assertEquals(r.code, 7, r.stderr);
  assertMatch(r.stderr, /past its quota of 500\.0 KiB/);
  const after = json<{ store: { blobs: number } }>(
    await keepOk(["stats", "-s", server.url, "--json"]),
  );
  assertEquals(after.store.blobs, before.store.blobs, "nothing stored");
  assertEquals((await commits(server.url, "app")).length, 1);
  // Raised: it lands.
  await keepOk(["policy", "set", "-s", server.url, "-p", "app", "--quota", "2M"]);
  const head = await backup(server.url, "app", src);
  // An upload that does not say what it sends is held to the quota by what
  // its entries declare.
  const blobs = json<{ store: { blobs: number } }>(
    await keepOk(["stats", "-s", server.url, "--json"]),
  ).store.blobs;
  const crafted = new Upload().commit(commitHeader(head)).file("big.bin", randomBytes(2 << 20, 9))
    .changes().end().bytes();
  const res = await fetch(`${server.url}/v1/projects/app/commits`, {
    method: "POST",
    body: new Uint8Array(crafted),
  });
  assertEquals(res.status, 507, await res.text());
  assertEquals(
    json<{ store: { blobs: number } }>(await keepOk(["stats", "-s", server.url, "--json"])).store
      .blobs,
    blobs,
    "nothing stored",
  );
  // Over its quota (lowered), a backup that sends nothing still lands.
  await keepOk(["policy", "set", "-s", server.url, "-p", "app", "--quota", "100K"]);
  Deno.removeSync(join(src, "b.bin"));
  await backup(server.url, "app", src);
  assertEquals((await commits(server.url, "app")).length, 3);

  await using full = await startServer({ args: ["--min-free", "1000000T"] });
  const f = await keep(["backup", "-s", full.url, "-p", "app", "--settle", "0", src]);
  assertEquals(f.code, 5, f.stderr);
  assertMatch(f.stderr, /keeps 976\.6 PiB in reserve \(serve --min-free\)/);
  const v = await keep(["verify", "--data", full.dataDir]);
  assertMatch(v.stdout, /blobs {5}0 \(0 B stored\)/);
});

Deno.test("a pack GC deleted never comes back under its number; the server lets go of its handle", async () => {
  // A read handle the server cached on a pack GC then deleted must not serve
  // a new pack under the same number (that restore failed with "pack 2 is
  // short" and marked good content damaged), nor hold the freed space.
  await using server = await startServer({
    args: ["--gc-grace", "0s", "--retention-every", "off"],
  });
  const src = await tempDir();
  const a = randomBytes(300_000, 1);
  const c = randomBytes(300_000, 2);
  writeTree(src, { "a.bin": a });
  await backup(server.url, "app", src);
  writeTree(src, { "a.bin": c });
  await backup(server.url, "app", src);
  const out1 = join(await tempDir(), "out");
  await keepOk(["restore", "-s", server.url, "-p", "app", out1]); // the server opens C's pack
  writeTree(src, { "a.bin": a }); // known content: no new pack
  await backup(server.url, "app", src);
  await keepOk(["prune", "-s", server.url, "-p", "app", "-k", "1", "--wait"]);
  const packs = () => [...Deno.readDirSync(join(server.dataDir, "packs"))].map((e) => e.name);
  const held = () =>
    [...Deno.readDirSync(`/proc/${server.proc.pid}/fd`)]
      .map((e) => {
        try {
          return Deno.readLinkSync(`/proc/${server.proc.pid}/fd/${e.name}`);
        } catch {
          return "";
        }
      })
      .filter((l) => l.includes("/packs/") && l.endsWith("(deleted)"));
  assertEquals(held(), [], "no handle on a deleted pack");
  const before = packs();
  writeTree(src, { "f.bin": randomBytes(200_000, 3) });
  await backup(server.url, "app", src);
  const added = packs().filter((n) => !before.includes(n));
  assertEquals(added.length, 1, `one new pack: ${packs()}`);
  const out2 = join(await tempDir(), "out");
  await keepOk(["restore", "-s", server.url, "-p", "app", out2]);
  assertSameTree(snapshot(out2), snapshot(src), "the head restores");
  const verify = await keep(["verify", "--data", server.dataDir]);
  assertEquals(verify.code, 0, verify.stdout);
});

Deno.test("prune and policy refuse what would remove more than asked: mistyped dryRun, rules of 0", async () => {
  await using server = await startServer();
  const src = await tempDir();
  for (let i = 0; i < 3; i++) {
    writeTree(src, { "f.txt": `v${i}\n` });
    await backup(server.url, "app", src);
  }
  const post = (body: unknown, path = "prune", method = "POST") =>
    fetch(`${server.url}/v1/projects/app/${path}`, { method, body: JSON.stringify(body) });
  for (
    const body of [
      { policy: { last: 1 }, dryRun: "true" },
      { policy: { last: 1 }, dry_run: true },
      { policy: { last: 0 } },
      { policy: { daily: 0 } },
      { policy: { withinMs: 0 } },
    ]
  ) {
    const r = await post(body);
    const text = await r.text();
    assertEquals(r.status, 400, `${JSON.stringify(body)}: ${text}`);
  }
  const put = await post({ policy: { hourly: 0 } }, "policy", "PUT");
  assertEquals(put.status, 400, await put.text());
  for (const flags of [["--keep-daily", "0"], ["--keep-within", "0d"], ["--keep-within", "-1d"]]) {
    const r = await keep(["prune", "-s", server.url, "-p", "app", ...flags]);
    assertEquals(r.code, 2, r.stderr);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    const s = await keep(["policy", "set", "-s", server.url, "-p", "app", ...flags]);
    assertEquals(s.code, 2, s.stderr);
  }
  assertEquals((await commits(server.url, "app")).length, 3, "nothing removed");
});
