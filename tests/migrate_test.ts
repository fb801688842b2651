/**
 * `keep migrate` between two embedded stores (the object store + PostgreSQL
 * direction, and back, is in scaleout_test.ts): every commit, token and
 * policy arrives, a kill -9 in the middle is resumed, the target verifies,
 * and bad flags or a non-empty target lose nothing.
 */

import { existsSync } from "node:fs";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals, assertMatch } from "./assert.ts";
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
  tlsAnnounced,
  token,
  writeTree,
} from "./helpers.ts";

/** Three commits of project `app` in `dataDir` (small files, large blobs, a link); their trees. */
async function history(dataDir: string, large = 2): Promise<[string, Snapshot][]> {
  await using server = await startServer({ dataDir });
  const src = await tempDir();
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  const snaps: [string, Snapshot][] = [];
  const spec: Record<string, string | Uint8Array | { link: string }> = {};
  for (let i = 0; i < 200; i++) {
    spec[`src/f${i}.c`] = `int f${i}(void) { return ${i}; }\n`.repeat(9);
  }
  for (let i = 0; i < large; i++) spec[`out/big${i}.bin`] = randomData((2 << 20) + i);
  // Over serve's --chunk-over (8 MiB): kept in chunks, a list the copy carries as rows.
  if (large > 0) spec["out/chunked.bin"] = randomData(12 << 20);
  spec["link"] = { link: "src/f1.c" };
  writeTree(src, spec);
  for (let round = 0; round < 3; round++) {
    if (round > 0) {
      writeTree(src, {
        [`src/f${round}.c`]: `changed in round ${round}\n`,
        [`new${round}.txt`]: "x",
      });
      Deno.removeSync(join(src, `src/f${100 + round}.c`));
    }
    const r = json<{ commit: { id: string } }>(
      await keepOk(["backup", "-m", `round ${round}`, "--json", src], 0, cli),
    );
    snaps.push([r.commit.id, snapshot(src)]);
  }
  await keepOk(["policy", "set", "--keep-last", "50"], 0, cli);
  return snaps;
}

/** Serves `dataDir` with tokens on and checks every commit restores as it was backed up. */
async function assertHolds(dataDir: string, secret: string, snaps: [string, Snapshot][]) {
  await using server = await startServer({ dataDir, noAuth: false });
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app", KEEP_TOKEN: secret } };
  const log = logJson<{ id: string; seq: number; message: string }>(
    await keepOk(["log", "--json"], 0, cli),
  );
  assertEquals(log.map((c) => [c.id, c.seq, c.message]).reverse(), [
    [snaps[0][0], 1, "round 0"],
    [snaps[1][0], 2, "round 1"],
    [snaps[2][0], 3, "round 2"],
  ]);
  for (const [id, snap] of snaps) {
    const dest = join(await tempDir(), "r");
    await keepOk(["restore", "--commit", id, dest], 0, cli);
    assertSameTree(snapshot(dest), snap, `commit ${id}`);
  }
  const policy = json<{ policy: { last?: number } }>(
    await keepOk(["policy", "show", "--json"], 0, cli),
  );
  assertEquals(policy.policy?.last, 50);
}

Deno.test("keep migrate copies every commit, token and policy to another data dir, verified; a second run is refused", async () => {
  const from = await tempDir("keep-data-");
  const snaps = await history(from);
  const secret = await token(from, "admin", "*");
  const to = join(await tempDir(), "copy");
  const r = json<{
    verify: { ok: boolean; blobs: number };
    rows: Record<string, number>;
    large: { copied: number };
    resumed: boolean;
  }>(await keepOk(["migrate", "--from", from, "--to", to, "--json"]));
  assert(r.verify.ok);
  assertEquals([r.rows.commits, r.rows.tokens, r.large.copied, r.resumed], [3, 1, 2, false]);
  await assertHolds(to, secret, snaps);
  // The source is untouched and still serves; the target now holds a store: refused.
  await assertHolds(from, secret, snaps);
  const again = await keep(["migrate", "--from", from, "--to", to]);
  assertEquals(again.code, 2, again.stderr);
  assertMatch(again.stderr, /^keep: Cannot migrate into .*: it already holds a store/);
});

Deno.test("keep migrate killed with -9 in the middle resumes where it was and verifies", async () => {
  const from = await tempDir("keep-data-");
  const snaps = await history(from, 24);
  const to = join(await tempDir(), "copy");
  // Killed once the packs are copied, while the large blobs (24 of 2 MiB) go.
  await killedMigrate(from, to, /^packs: /m);
  const r = json<{ verify: { ok: boolean }; resumed: boolean; packs: { present: number } }>(
    await keepOk(["migrate", "--from", from, "--to", to, "--json"]),
  );
  // The packs copied before the kill are not copied again.
  assert(r.resumed && r.verify.ok && r.packs.present > 0, JSON.stringify(r));
  await assertHolds(to, await token(to, "admin", "*"), snaps);
});

Deno.test("keep migrate refuses bad flags, a served source and a non-empty target in one line, and changes nothing", async () => {
  const from = await tempDir("keep-data-");
  const other = await tempDir("keep-data-");
  await history(from, 0);
  const otherSnaps = await history(other, 0);
  for (
    const [args, message] of [
      [["--to", other], /give --from DIR/],
      [["--from", from], /give --to DIR/],
      [["--from", from, "--to", from], /onto itself/],
      [["--from", join(from, "nope"), "--to", join(other, "x")], /no such directory/],
      [["--from", from, "--to", other], /it already holds a store/],
      [["--from", from, "--to", join(other, "x"), "--to-index", "mysql://x"], /--index mysql:/],
    ] as const
  ) {
    const r = await keep(["migrate", ...args]);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertMatch(r.stderr, message);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
  {
    await using _served = await startServer({ dataDir: from });
    const r = await keep(["migrate", "--from", from, "--to", join(other, "y")]);
    assertEquals(r.code, 2, r.stderr);
    assertMatch(r.stderr, /a keep serve runs on it/);
  }
  // The target that was refused still holds exactly its own history.
  await assertHolds(other, await token(other, "admin", "*"), otherSnaps);
});

Deno.test("keep migrate copies a store whose lost pack keep verify has marked: the damage goes along, the rest restores", async () => {
  const from = await tempDir("keep-data-");
  const snaps = await history(from, 0);
  const packs: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      if (e.isDirectory) walk(join(dir, e.name));
      else packs.push(join(dir, e.name));
    }
  };
  walk(join(from, "packs"));
  packs.sort();
  assert(packs.length > 1, packs.join(" "));
  // The last pack holds round 2's changes only: rounds 0 and 1 stay whole.
  Deno.removeSync(packs[packs.length - 1]);
  const v = await keep(["verify", "--data", from]);
  assertEquals(v.code, 4, v.stdout + v.stderr);
  const to = join(await tempDir(), "copy");
  const r = await keep(["migrate", "--from", from, "--to", to, "--json"]);
  // A faithful copy of a damaged store: copied, and its verify says what the source's says.
  assert(r.code === 0 || r.code === 4, r.stderr);
  assert(!/Cannot migrate: pack \d+ is missing/.test(r.stderr), r.stderr);
  const report = json<{ verify: { damaged: unknown[] } }>(r);
  assert(report.verify.damaged.length > 0, r.stdout);
  await using server = await startServer({ dataDir: to });
  const dest = join(await tempDir(), "r");
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  await keepOk(["restore", "--commit", snaps[0][0], dest], 0, cli);
  assertSameTree(snapshot(dest), snaps[0][1]);
});

/** Starts `keep migrate --from --to` and kills it with -9 once stderr matches `at`. */
async function killedMigrate(from: string, to: string, at: RegExp) {
  const proc = new Deno.Command(KEEP, {
    args: ["migrate", "--from", from, "--to", to],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = proc.stderr.getReader();
  let text = "";
  while (!at.test(text)) {
    const c = await reader.read();
    if (c.done) break;
    text += new TextDecoder().decode(c.value);
  }
  proc.kill("SIGKILL");
  const status = await proc.status;
  reader.releaseLock();
  await proc.stderr.cancel();
  assertEquals(status.signal, "SIGKILL", `migrate ended before the kill: ${text}`);
}

Deno.test("the target of a migration killed with -9 is not served (nor given tokens) until a run finishes it", async () => {
  const from = await tempDir("keep-data-");
  const snaps = await history(from, 24);
  const to = join(await tempDir(), "copy");
  await killedMigrate(from, to, /^packs: /m);
  // Served now, it would take backups into packs and rows the copy then overwrites.
  const serve = new Deno.Command(KEEP, {
    args: ["serve", "--data", to, "--no-auth", "--listen", "127.0.0.1:0"],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(10_000),
  }).spawn();
  const out = await serve.output();
  const stderr = new TextDecoder().decode(out.stderr);
  assertEquals(out.signal, null, "keep serve ran on a half-copied store");
  assertEquals(out.code, 2, stderr);
  assertMatch(stderr, /unfinished keep migrate/);
  const t = await keep(["token", "create", "--data", to, "--role", "admin", "--project", "*"]);
  assertEquals(t.code, 2, t.stderr);
  // Finished by a second run, it serves.
  await keepOk(["migrate", "--from", from, "--to", to]);
  await assertHolds(to, await token(to, "admin", "*"), snaps);
});

Deno.test("keep migrate copies large blobs of an old store (no generation in their name) and a lost one keep verify marked", async () => {
  const from = await tempDir("keep-data-");
  const snaps = await history(from, 2);
  const db = new DatabaseSync(join(from, "index.db"));
  const large = db
    .prepare("SELECT hash, offset FROM blobs WHERE pack IS NULL AND chunked IS NULL ORDER BY size")
    .all() as { hash: Uint8Array; offset: number }[];
  assertEquals(large.length, 2);
  const file = (hash: Uint8Array, gen: number | null) => {
    const hex = [...hash].map((b) => b.toString(16).padStart(2, "0")).join("");
    const name = gen === null ? hex : `${hex}.${gen}`;
    return join(from, "blobs", hex.slice(0, 2), hex.slice(2, 4), name);
  };
  // The first as a store made before generations names it; the second lost.
  Deno.renameSync(file(large[0].hash, large[0].offset), file(large[0].hash, null));
  db.prepare("UPDATE blobs SET offset = NULL WHERE hash = ?").run(large[0].hash);
  db.close();
  Deno.removeSync(file(large[1].hash, large[1].offset));
  assertEquals((await keep(["verify", "--data", from])).code, 4);
  const to = join(await tempDir(), "copy");
  const r = await keep(["migrate", "--from", from, "--to", to, "--json"]);
  assertEquals(r.code, 4, r.stderr);
  const report = json<{ verify: { damaged: { hash: string }[] } }>(r);
  assertEquals(report.verify.damaged.length, 1, r.stdout);
  // Copied all the same (the lost blob is damaged there too); the store opens and restores
  // every file but the lost one, and a second run says it is done.
  const again = await keep(["migrate", "--from", from, "--to", to]);
  assertMatch(again.stderr, /already holds a store/);
  await using server = await startServer({ dataDir: to });
  const dest = join(await tempDir(), "r");
  const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
  const restore = await keep(["restore", "--commit", snaps[2][0], dest], cli);
  assertEquals(restore.code, 4, restore.stderr);
  assertEquals(Deno.readFileSync(join(dest, "out/big0.bin")).length, 2 << 20);
});

Deno.test("a pack damaged in the target between two runs (same size) is found by the check, deleted, and copied again by the next run", async () => {
  const from = await tempDir("keep-data-");
  const snaps = await history(from, 24);
  const to = join(await tempDir(), "copy");
  await killedMigrate(from, to, /^packs: /m);
  const packs: string[] = [];
  for (const e of Deno.readDirSync(join(to, "packs"))) {
    if (e.isFile) packs.push(join(to, "packs", e.name));
    else {
      for (const f of Deno.readDirSync(join(to, "packs", e.name))) {
        packs.push(join(to, "packs", e.name, f.name));
      }
    }
  }
  assert(packs.length > 0);
  const bytes = Deno.readFileSync(packs[0]);
  bytes[bytes.length >> 1] ^= 0xff;
  Deno.writeFileSync(packs[0], bytes);
  const second = await keep(["migrate", "--from", from, "--to", to, "--json"]);
  assertEquals(second.code, 4, second.stderr);
  const r = json<{ finished: boolean; recopy: number }>(second);
  assert(!r.finished && r.recopy > 0, second.stdout);
  const third = json<{ verify: { ok: boolean }; finished: boolean }>(
    await keepOk(["migrate", "--from", from, "--to", to, "--json"]),
  );
  assert(third.verify.ok && third.finished);
  await assertHolds(to, await token(to, "admin", "*"), snaps);
});

Deno.test("a migration killed after its rows went in, resumed after the source dropped a row (policy cleared), verifies", async () => {
  const from = await tempDir("keep-data-");
  await history(from, 24);
  const to = join(await tempDir(), "copy");
  await killedMigrate(from, to, /^policies: /m);
  // The source goes on meanwhile (served again, say): a row the target holds is gone there.
  await keepOk(["policy", "clear", "--data", from, "--project", "app"]);
  const r = await keep(["migrate", "--from", from, "--to", to, "--json"]);
  assertEquals(r.code, 0, r.stderr);
  const report = json<{ rows: Record<string, number>; finished: boolean }>(r);
  assert(report.finished && report.rows.policies === 0, r.stdout);
});

Deno.test("a source pack damaged at its size and not marked: migrate says to run keep verify there, and after that it is done", async () => {
  const from = await tempDir("keep-data-");
  await history(from, 0);
  const packs: string[] = [];
  for (const e of Deno.readDirSync(join(from, "packs"))) {
    const p = join(from, "packs", e.name);
    if (e.isFile) packs.push(p);
    else for (const f of Deno.readDirSync(p)) packs.push(join(p, f.name));
  }
  const bytes = Deno.readFileSync(packs[0]);
  bytes[bytes.length >> 1] ^= 0xff;
  Deno.writeFileSync(packs[0], bytes);
  const to = join(await tempDir(), "copy");
  const first = await keep(["migrate", "--from", from, "--to", to]);
  assertEquals(first.code, 4, first.stderr);
  assertMatch(first.stdout, /damaged in the source too, unmarked: run keep verify --data /);
  assertEquals((await keep(["verify", "--data", from])).code, 4);
  const second = await keep(["migrate", "--from", from, "--to", to, "--json"]);
  assertEquals(second.code, 4, second.stderr);
  const r = json<{ finished: boolean; inherited: number; unmarked: number }>(second);
  assert(r.finished && r.inherited > 0 && r.unmarked === 0, second.stdout);
});

/** The CA fingerprint `keep serve --tls auto` printed, once it is up. */
async function autoFingerprint(server: { stderr(): string }): Promise<string> {
  const text = await tlsAnnounced(server);
  const m = /TLS with (?:a new CA|its CA), fingerprint sha256:([0-9a-f]{64})/.exec(text);
  assert(m, text);
  return m[1];
}

Deno.test("keep migrate carries the CA of serve --tls auto: a client pinning it backs up to the target unchanged; a target with its own CA keeps it", async () => {
  const from = await tempDir("keep-data-");
  const src = await tempDir();
  writeTree(src, { "a.txt": "over tls\n" });
  let pin = "";
  {
    await using first = await startServer({ dataDir: from, args: ["--tls", "auto"] });
    pin = await autoFingerprint(first);
    await keepOk([
      "backup",
      "-s",
      first.url,
      "-p",
      "app",
      "--settle",
      "0",
      "--fingerprint",
      pin,
      src,
    ]);
  }
  const to = join(await tempDir(), "target");
  const r = await keepOk(["migrate", "--from", from, "--to", to]);
  assertMatch(
    r.stdout,
    new RegExp(`tls: the CA of serve --tls auto copied \\(fingerprint sha256:${pin}\\)`),
  );
  assertEquals(Deno.statSync(join(to, "tls/ca-key.pem")).mode! & 0o777, 0o600);
  assertEquals(Deno.statSync(join(to, "tls/key.pem")).mode! & 0o777, 0o600);
  assertEquals(Deno.statSync(join(to, "tls")).mode! & 0o777, 0o700);
  {
    // Another name to answer to: the server certificate is issued again by the same CA.
    await using moved = await startServer({
      dataDir: to,
      args: ["--tls", "auto", "--tls-name", "backup-box"],
    });
    assertEquals(await autoFingerprint(moved), pin, "the target presents the source's CA");
    writeTree(src, { "b.txt": "after the move\n" });
    const env = { KEEP_SERVER: moved.url, KEEP_PROJECT: "app" };
    await keepOk(["backup", "--settle", "0", "--fingerprint", pin, src], 0, { env });
    const dest = join(await tempDir(), "r");
    await keepOk(["restore", "--fingerprint", pin, dest], 0, { env });
    assertSameTree(snapshot(dest), snapshot(src));
  }
  // A store without --tls auto copies nothing; a target with its own CA keeps it (and says so).
  const plain = await tempDir("keep-data-");
  {
    await using s = await startServer({ dataDir: plain });
    await keepOk(["backup", "-s", s.url, "-p", "app", "--settle", "0", src]);
  }
  const plainTo = join(await tempDir(), "t");
  const p = json<{ tls: { outcome: string; fingerprint: string | null } }>(
    await keepOk(["migrate", "--from", plain, "--to", plainTo, "--json"]),
  );
  assertEquals(p.tls, { outcome: "none", fingerprint: null });
  assert(!existsSync(join(plainTo, "tls")), "no tls dir made for a store without one");
  const own = join(await tempDir(), "own");
  Deno.mkdirSync(join(own, "tls"), { recursive: true });
  Deno.copyFileSync(join(from, "tls/ca.pem"), join(own, "tls/ca.pem"));
  const other = await tempDir("keep-data-");
  {
    await using s = await startServer({ dataDir: other, args: ["--tls", "auto"] });
    const theirs = await autoFingerprint(s);
    assert(theirs !== pin);
    await keepOk([
      "backup",
      "-s",
      s.url,
      "-p",
      "app",
      "--settle",
      "0",
      "--fingerprint",
      theirs,
      src,
    ]);
  }
  // A source whose tls/ holds a link (to a file of this host) is refused before anything is
  // copied; with the link gone, the same command copies the store and its CA.
  const secret = join(await tempDir(), "secret.txt");
  Deno.writeTextFileSync(secret, "not a certificate\n");
  Deno.renameSync(join(other, "tls/cert.pem"), join(other, "cert.pem.away"));
  Deno.symlinkSync(secret, join(other, "tls/cert.pem"));
  const linked = join(await tempDir(), "linked");
  const refused = await keep(["migrate", "--from", other, "--to", linked]);
  assertEquals(refused.code, 4, refused.stderr);
  assertMatch(refused.stderr, /^keep: Cannot copy .*tls\/cert\.pem: not a regular file/);
  assert(!existsSync(linked), "nothing made in the target");
  Deno.removeSync(join(other, "tls/cert.pem"));
  Deno.renameSync(join(other, "cert.pem.away"), join(other, "tls/cert.pem"));
  // So is a tls/ that is itself a link.
  Deno.renameSync(join(other, "tls"), join(other, "tls.real"));
  Deno.symlinkSync(join(other, "tls.real"), join(other, "tls"));
  const dirLink = await keep(["migrate", "--from", other, "--to", linked]);
  assertEquals(dirLink.code, 4, dirLink.stderr);
  assertMatch(dirLink.stderr, /^keep: Cannot copy .*tls: not a directory/);
  assert(!existsSync(linked), "nothing made in the target");
  Deno.removeSync(join(other, "tls"));
  Deno.renameSync(join(other, "tls.real"), join(other, "tls"));
  const k = await keepOk(["migrate", "--from", other, "--to", own]);
  assertMatch(
    k.stdout,
    new RegExp(`tls: the target keeps its own CA \\(fingerprint sha256:${pin}\\)`),
  );
  assertEquals(
    Deno.readTextFileSync(join(own, "tls/ca.pem")),
    Deno.readTextFileSync(join(from, "tls/ca.pem")),
  );
});
