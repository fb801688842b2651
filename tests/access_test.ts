/**
 * Access control end to end: tokens scoped to projects and roles (stored
 * hashed, revocable), TLS with given certificates and with `--tls auto`, and
 * project ids checked on every route.
 */

import { Buffer } from "node:buffer";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import postgres from "postgres";
import {
  keep,
  keepOk,
  pgUrlOf,
  startServer,
  tempDir,
  tlsAnnounced,
  token,
  writeTree,
} from "./helpers.ts";

/** SHA-256 of "hello\n". */
const HELLO_HASH = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

Deno.test("serve needs a token on every route unless --no-auth, which is refused off loopback", async () => {
  const refused = await keep([
    "serve",
    "--data",
    await tempDir(),
    "--listen",
    "0.0.0.0:0",
    "--no-auth",
  ]);
  assertEquals(refused.code, 2);
  assertMatch(
    refused.stderr,
    /^keep: Cannot serve without tokens on 0\.0\.0\.0: --no-auth needs a loopback address\n$/,
  );

  await using server = await startServer({ noAuth: false });
  assertMatch(server.stderr(), /no tokens yet: create one with {2}keep token create --data /);
  const routes: [string, string][] = [
    ["GET", "/v1/health"],
    ["GET", "/v1/projects"],
    ["GET", "/v1/projects/app/head"],
    ["GET", "/v1/projects/app/manifest"],
    ["GET", "/v1/projects/app/commits"],
    ["GET", "/v1/projects/app/commits/latest"],
    ["POST", "/v1/projects/app/commits"],
    ["POST", "/v1/projects/app/entries"],
    ["GET", "/v1/projects/app/archive"],
    ["GET", `/v1/projects/app/blobs/${"0".repeat(64)}`],
    ["POST", "/v1/verify"],
  ];
  for (const [method, path] of routes) {
    for (const auth of [undefined, "Bearer nonsense", `Bearer keep_00000000_${"A".repeat(32)}`]) {
      const res = await fetch(server.url + path, {
        method,
        headers: auth ? { authorization: auth } : {},
        body: method === "POST" ? "x" : undefined,
      });
      assertEquals(res.status, 401, `${method} ${path} with ${auth}`);
      const body = await res.json();
      assertEquals(body.error.code, "unauthorized");
      assertMatch(body.error.message, /^Cannot authenticate/);
    }
  }
  const cli = await keep(["log", "-s", server.url, "-p", "app"]);
  assertEquals(cli.code, 6);
  assertMatch(cli.stderr, /^keep: Cannot authenticate: send Authorization: Bearer <token>\n$/);
});

Deno.test("roles: backup appends, restore reads, admin does all; tokens are scoped to projects on every route", async () => {
  await using server = await startServer({ noAuth: false });
  const src = await tempDir();
  writeTree(src, { "a.txt": "hello\n", "dir/b.txt": "b\n" });
  const backupA = await token(server.dataDir, "backup", "A");
  const restoreA = await token(server.dataDir, "restore", "A");
  const admin = await token(server.dataDir, "admin");
  const backupB = await token(server.dataDir, "backup", "B");
  const env = (t: string, project = "A") => ({
    KEEP_SERVER: server.url,
    KEEP_PROJECT: project,
    KEEP_TOKEN: t,
  });

  await keepOk(["backup", "--settle", "0", src], 0, { env: env(backupA) });
  await keepOk(["backup", "--settle", "0", src], 0, { env: env(backupB, "B") });
  // backup is append-only: no reading of old content, no verify.
  await keepOk(["ls"], 0, { env: env(backupA) }); // the latest manifest: what a backup diffs against
  for (const args of [["log"], ["ls", "--commit", "#1"], ["restore", await tempDir()]]) {
    const r = await keep(args, { env: env(backupA) });
    assertEquals(r.code, 6, `${args[0]}: ${r.stderr}`);
    assertMatch(r.stderr, /Cannot allow this: token [0-9a-f]{8} has role backup/);
  }
  // It may look up its head's entries (hashes for the files it must hash), not older ones.
  const lookup = async (t: string, commit: string) =>
    await fetch(`${server.url}/v1/projects/A/entries`, {
      method: "POST",
      headers: { authorization: `Bearer ${t}`, "content-type": "application/json" },
      body: JSON.stringify({ commit, paths: ["a.txt", "missing", "../x"] }),
    });
  await keepOk(["backup", "--settle", "0", "-m", "second", src], 0, { env: env(backupA) });
  const ids = (await (await fetch(`${server.url}/v1/projects/A/commits`, {
    headers: { authorization: `Bearer ${admin}` },
  })).json()).commits.map((c: { id: string }) => c.id);
  const own = await lookup(backupA, ids[0]);
  assertEquals(own.status, 200);
  const found = (await own.text()).trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(found.map((e) => [e.p, e.h]), [["a.txt", HELLO_HASH]]);
  const older = await lookup(backupA, ids[1]);
  assertEquals(older.status, 403);
  assertMatch((await older.json()).error.message, /has role backup/);
  assertEquals((await lookup(restoreA, ids[1])).status, 200);
  // restore reads but cannot append.
  await keepOk(["log"], 0, { env: env(restoreA) });
  const dest = await tempDir();
  await keepOk(["restore", dest], 0, { env: env(restoreA) });
  assertEquals(Deno.readTextFileSync(join(dest, "dir/b.txt")), "b\n");
  const denied = await keep(["backup", "--settle", "0", src], { env: env(restoreA) });
  assertEquals(denied.code, 6);
  assertMatch(denied.stderr, /has role restore/);
  // verify over HTTP: admin only.
  const v = await keep(["verify", "-s", server.url], { env: { KEEP_TOKEN: restoreA } });
  assertEquals(v.code, 6);
  const ok = await keepOk(["verify", "-s", server.url, "--json"], 0, {
    env: { KEEP_TOKEN: admin },
  });
  assertEquals(JSON.parse(ok.stdout).ok, true);

  // A token for project A gets 403 on project B, on every project route.
  const head = await (await fetch(`${server.url}/v1/projects/B/head`, {
    headers: { authorization: `Bearer ${admin}` },
  }))
    .json();
  const blob = HELLO_HASH;
  const routes: [string, string][] = [
    ["GET", "/v1/projects/B/head"],
    ["GET", "/v1/projects/B/manifest"],
    ["GET", "/v1/projects/B/manifest?commit=latest"],
    ["GET", "/v1/projects/B/commits"],
    ["GET", `/v1/projects/B/commits/${head.commit.id}`],
    ["POST", "/v1/projects/B/commits"],
    ["POST", "/v1/projects/B/entries"],
    ["GET", "/v1/projects/B/archive"],
    ["GET", `/v1/projects/B/blobs/${blob}`],
  ];
  for (const t of [backupA, restoreA]) {
    for (const [method, path] of routes) {
      const res = await fetch(server.url + path, {
        method,
        headers: { authorization: `Bearer ${t}` },
        body: method === "POST" ? "x" : undefined,
      });
      const body = await res.json();
      assertEquals(res.status, 403, `${method} ${path}: ${JSON.stringify(body)}`);
      assertEquals(body.error.code, "forbidden");
    }
  }
  // The project list shows only what the token may see.
  const list = await (await fetch(`${server.url}/v1/projects`, {
    headers: { authorization: `Bearer ${restoreA}` },
  }))
    .json();
  assertEquals(list.projects.map((p: { name: string }) => p.name), ["A"]);
  const blobRes = await fetch(`${server.url}/v1/projects/A/blobs/${blob}`, {
    headers: { authorization: `Bearer ${restoreA}` },
  });
  assertEquals(blobRes.status, 200);
  assertEquals(
    new TextDecoder().decode(
      new Uint8Array(
        await new Response(blobRes.body!.pipeThrough(new DecompressionStream("gzip")))
          .arrayBuffer(),
      ),
    ),
    "hello\n",
  );
});

Deno.test("tokens are stored hashed, listed without secrets, and stop working when revoked", async () => {
  await using server = await startServer({ noAuth: false });
  const t = await token(server.dataDir, "restore", "app");
  const id = t.split("_")[1];
  // "keep_" + 8 hex id + "_" = 14 characters; the secret itself may contain "_".
  const secret = new TextEncoder().encode(t.slice(14));
  const pg = pgUrlOf(server.dataDir);
  if (pg) {
    // On PostgreSQL: no column of any token row holds the secret.
    const sql = postgres(pg, { max: 1, onnotice: () => {} });
    try {
      const rows = await sql`SELECT * FROM tokens`;
      assertEquals(rows.length, 1);
      const text = JSON.stringify(rows, (_, v) => v instanceof Uint8Array ? [...v] : v);
      assert(!text.includes(t.slice(14)), "secret stored in clear");
    } finally {
      await sql.end();
    }
  } else {
    const db = Deno.readFileSync(join(server.dataDir, "index.db"));
    const wal = (() => {
      try {
        return Deno.readFileSync(join(server.dataDir, "index.db-wal"));
      } catch {
        return new Uint8Array();
      }
    })();
    for (const bytes of [db, wal]) {
      assert(!Buffer.from(bytes).includes(Buffer.from(secret)), "secret stored in clear");
    }
  }
  const list = await keepOk(["token", "list", "--data", server.dataDir]);
  assertMatch(list.stdout, new RegExp(`^${id}  restore  app`));
  assert(!list.stdout.includes(t.slice(14)));
  const before = await fetch(`${server.url}/v1/projects/app/head`, {
    headers: { authorization: `Bearer ${t}` },
  });
  assertEquals(before.status, 200);
  await before.body?.cancel();
  await keepOk(["token", "revoke", "--data", server.dataDir, id]);
  const after = await fetch(`${server.url}/v1/projects/app/head`, {
    headers: { authorization: `Bearer ${t}` },
  });
  assertEquals(after.status, 401);
  await after.body?.cancel();
  const again = await keep(["token", "revoke", "--data", server.dataDir, id]);
  assertEquals(again.code, 1);
  assertMatch(again.stderr, /Cannot revoke token .*: no such active token/);
  const badRole = await keep([
    "token",
    "create",
    "--data",
    server.dataDir,
    "--role",
    "root",
    "--project",
    "x",
  ]);
  assertEquals(badRole.code, 2);
});

Deno.test("project ids are validated on every route and in the CLI", async () => {
  await using server = await startServer();
  for (const bad of ["a%2Fb", "a b", "x%2Fy", "é", "a".repeat(129)]) {
    for (const path of ["head", "manifest", "commits", "archive"]) {
      const res = await fetch(`${server.url}/v1/projects/${bad}/${path}`);
      assertEquals(res.status, 400, `${bad} ${path}`);
      const body = await res.json();
      assertEquals(body.error.code, "invalid");
      assertMatch(body.error.message, /^Cannot use project id/);
    }
  }
  const r = await keep(["log", "-s", server.url, "-p", "../etc"]);
  assertEquals(r.code, 1);
  assertMatch(
    r.stderr,
    /^keep: Cannot use project id "\.\.\/etc": use 1-128 of A-Z a-z 0-9 \. _ -\n$/,
  );
});

Deno.test("TLS: serve --cert/--key, clients trust it with --ca and refuse it without", async () => {
  const dir = await tempDir();
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  const ca = join(dir, "ca.pem");
  const sh = `set -e; cd ${dir}
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=keep-test-ca \
      -keyout ca.key -out ca.pem
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out srv.csr
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
    openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out cert.pem`;
  const gen = await new Deno.Command("sh", { args: ["-c", sh], stdout: "null", stderr: "piped" })
    .output();
  assertEquals(gen.code, 0, new TextDecoder().decode(gen.stderr));
  await using server = await startServer({ args: ["--cert", cert, "--key", key] });
  const src = await tempDir();
  assertMatch(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  writeTree(src, { "x.txt": "tls\n" });
  const env = { KEEP_SERVER: server.url, KEEP_PROJECT: "tls" };
  const untrusted = await keep(["backup", "--settle", "0", src], { env });
  assertEquals(untrusted.code, 5);
  assertMatch(untrusted.stderr, /^keep: Cannot reach https:\/\/127\.0\.0\.1:\d+: .*certificate/i);
  await keepOk(["backup", "--settle", "0", "--ca", ca, src], 0, { env });
  const dest = await tempDir();
  await keepOk(["restore", dest], 0, { env: { ...env, KEEP_CA: ca } });
  assertEquals(Deno.readTextFileSync(join(dest, "x.txt")), "tls\n");
  const half = await keep([
    "serve",
    "--data",
    await tempDir(),
    "--listen",
    "127.0.0.1:0",
    "--cert",
    cert,
  ]);
  assertEquals(half.code, 2);
  assertMatch(half.stderr, /Cannot serve TLS: give both --cert and --key/);
});

Deno.test("a store-wide verify needs an admin token for every project", async () => {
  await using server = await startServer({ noAuth: false });
  const scoped = await token(server.dataDir, "admin", "A");
  const all = await token(server.dataDir, "admin", "*");
  const src = await tempDir();
  writeTree(src, { "a.txt": "a\n" });
  await keepOk(["backup", "-s", server.url, "-p", "A", "--settle", "0", "--token", scoped, src]);
  const res = await fetch(`${server.url}/v1/verify`, {
    method: "POST",
    headers: { authorization: `Bearer ${scoped}` },
  });
  assertEquals(res.status, 403);
  const body = await res.json();
  assertMatch(
    body.error.message,
    /^Cannot allow this: it concerns every project, and token \S+ is scoped to A/,
  );
  const cli = await keep(["verify", "-s", server.url, "--token", scoped]);
  assertEquals(cli.code, 6, cli.stderr);
  const ok = await keepOk(["verify", "-s", server.url, "--token", all]);
  assertMatch(ok.stdout, /keep verify: OK/);
});

Deno.test("TLS auto: serve makes its own CA on first start; clients pin it by --ca or --fingerprint", async () => {
  const dataDir = await tempDir("keep-data-");
  const first = await startServer({ dataDir, args: ["--tls", "auto", "--tls-name", "nas"] });
  const src = await tempDir();
  writeTree(src, { "x.txt": "tls auto\n" });
  let fingerprint = "";
  try {
    assertMatch(first.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    // The fingerprint is printed once the server is up.
    const m = /TLS with a new CA, fingerprint sha256:([0-9a-f]{64})/.exec(
      await tlsAnnounced(first),
    );
    assert(m, first.stderr());
    fingerprint = m[1];
    const env = { KEEP_SERVER: first.url, KEEP_PROJECT: "tls" };
    const untrusted = await keep(["backup", "--settle", "0", src], { env });
    assertEquals(untrusted.code, 5);
    assertMatch(untrusted.stderr, /not signed by a CA this client trusts: give --ca FILE/);
    await keepOk(["backup", "--settle", "0", "--fingerprint", `sha256:${fingerprint}`, src], 0, {
      env,
    });
    await keepOk(["backup", "--settle", "0", "--ca", join(dataDir, "tls/ca.pem"), src], 0, { env });
    const wrong = await keep(["backup", "--settle", "0", "--fingerprint", "ab".repeat(32), src], {
      env,
    });
    assertEquals(wrong.code, 5);
    assertMatch(wrong.stderr, /no certificate it sends has the fingerprint sha256:abab/);
    const bad = await keep(["backup", "--settle", "0", "--fingerprint", "xyz", src], { env });
    assertEquals(bad.code, 2);
  } finally {
    await first.stop();
  }
  // A restart keeps the CA: the same fingerprint still works.
  await using again = await startServer({ dataDir, args: ["--tls", "auto", "--tls-name", "nas"] });
  assertMatch(
    await tlsAnnounced(again),
    new RegExp(`TLS with its CA, fingerprint sha256:${fingerprint}`),
  );
  const dest = await tempDir();
  await keepOk(["restore", "-s", again.url, "-p", "tls", "--fingerprint", fingerprint, dest]);
  assertEquals(Deno.readTextFileSync(join(dest, "x.txt")), "tls auto\n");
  // Pinning the server's own certificate instead of its CA: a clear refusal.
  const leafPem =
    Deno.readTextFileSync(join(dataDir, "tls/cert.pem")).split("-----END CERTIFICATE-----")[0] +
    "-----END CERTIFICATE-----\n";
  const leaf = new X509Certificate(leafPem).fingerprint256.replaceAll(":", "").toLowerCase();
  const pinLeaf = await keep(["ls", "-s", again.url, "-p", "tls", "--fingerprint", leaf]);
  assertEquals(pinLeaf.code, 2, pinLeaf.stderr);
  assertMatch(
    pinLeaf.stderr,
    new RegExp(`own certificate; pin the CA that signed it: --fingerprint sha256:${fingerprint}`),
  );
  await again.stop();
  // The CA key moved offline: serving goes on with the certificate issued...
  Deno.renameSync(join(dataDir, "tls/ca-key.pem"), join(dataDir, "ca-key.offline"));
  {
    await using third = await startServer({
      dataDir,
      args: ["--tls", "auto", "--tls-name", "nas"],
    });
    await keepOk(["ls", "-s", third.url, "-p", "tls", "--fingerprint", fingerprint]);
  }
  // ...but a new name needs a new certificate: refused, the CA is not replaced.
  const refused = await keep([
    "serve",
    "--data",
    dataDir,
    "--listen",
    "127.0.0.1:0",
    "--no-auth",
    "--tls",
    "auto",
    "--tls-name",
    "other",
  ]);
  assertEquals(refused.code, 5, refused.stderr);
  assertMatch(refused.stderr, /ca-key\.pem is missing; put the CA key back/);
  assertEquals(
    new X509Certificate(Deno.readTextFileSync(join(dataDir, "tls/ca.pem"))).fingerprint256
      .replaceAll(":", "").toLowerCase(),
    fingerprint,
  );
});

Deno.test("TLS with the certificate a new user makes first (openssl req -x509): serve warns and clients say what to do", async () => {
  const dir = await tempDir();
  const gen = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      "/CN=nas",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
      "-keyout",
      join(dir, "key.pem"),
      "-out",
      join(dir, "cert.pem"),
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assertEquals(gen.code, 0, new TextDecoder().decode(gen.stderr));
  await using server = await startServer({
    args: ["--cert", join(dir, "cert.pem"), "--key", join(dir, "key.pem")],
  });
  assertMatch(
    server.stderr(),
    /warning: .*cert\.pem: it is a CA certificate \(basicConstraints CA:TRUE/,
  );
  const src = await tempDir();
  writeTree(src, { "x.txt": "x\n" });
  const r = await keep([
    "backup",
    "-s",
    server.url,
    "-p",
    "p",
    "--settle",
    "0",
    "--ca",
    join(dir, "cert.pem"),
    src,
  ]);
  assertEquals(r.code, 5);
  assertMatch(
    r.stderr,
    /its certificate is a CA certificate .*run keep serve --tls auto, or make the certificate with -addext basicConstraints=critical,CA:FALSE/,
  );
});

Deno.test("TLS with a self-signed CA:FALSE certificate (what the warning advises): clients pin it by --fingerprint", async () => {
  const dir = await tempDir();
  const gen = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      "/CN=nas",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-keyout",
      join(dir, "key.pem"),
      "-out",
      join(dir, "cert.pem"),
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assertEquals(gen.code, 0, new TextDecoder().decode(gen.stderr));
  await using server = await startServer({
    args: ["--cert", join(dir, "cert.pem"), "--key", join(dir, "key.pem")],
  });
  const fp = new X509Certificate(Deno.readTextFileSync(join(dir, "cert.pem"))).fingerprint256
    .replaceAll(":", "").toLowerCase();
  const src = await tempDir();
  writeTree(src, { "x.txt": "x\n" });
  await keepOk(["backup", "-s", server.url, "-p", "p", "--settle", "0", "--fingerprint", fp, src]);
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "p", "--fingerprint", `sha256:${fp}`, dest]);
  assertEquals(Deno.readTextFileSync(join(dest, "x.txt")), "x\n");
});
