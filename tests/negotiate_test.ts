/**
 * Negotiate before push (issue 18, part 1), end to end with the real CLI and
 * server: content the store holds is recorded with a proof of possession
 * instead of being sent, and a client that knows only a hash cannot get the
 * content into its project.
 */

import { Buffer } from "node:buffer";
import { createHmac } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { commitHeader, gunzip, noise, T0, Upload } from "./craft.ts";
import {
  assertSameTree,
  captureProxy,
  json,
  keep,
  keepOk,
  snapshot,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";
import { assertError, commitsUrl, hostile, onHead, P, post, refuse, sha256 } from "./hostile.ts";
import { CDC_SIZES, ChunkHasher } from "../src/format/fastcdc.ts";
import { HAVE_CHUNKS_MAX, UPLOAD_CHUNKS_MAX } from "../src/format/manifest.ts";

interface BackupJson {
  commit: { id: string; seq: number; counts: { added: number } };
  wireBytes: number;
  proven: number;
  provenBytes: number;
}

/** A build-tree-like mix: many small files (text and binary), a few big ones. */
function buildTree(root: string): number {
  let bytes = 0;
  const spec: Record<string, string | Uint8Array> = {};
  for (let i = 0; i < 300; i++) {
    const n = 1024 + ((i * 7919) % 15000);
    const data = i % 2
      ? noise(n, i + 1)
      : new TextEncoder().encode(`int f${i}(void);\n`.repeat(n / 16));
    spec[`obj/d${i % 10}/f${i}.${i % 2 ? "o" : "c"}`] = data;
    bytes += data.length;
  }
  for (let i = 0; i < 4; i++) {
    const data = noise((2 + i) << 20, 100 + i);
    spec[`lib/big${i}.so`] = data;
    bytes += data.length;
  }
  writeTree(root, spec);
  return bytes;
}

/** One backup through the capturing proxy: its JSON and the body bytes it sent. */
async function backupVia(
  proxy: ReturnType<typeof captureProxy>,
  project: string,
  dir: string,
): Promise<{ r: BackupJson; sent: number }> {
  const before = proxy.sent.bytes;
  const r = json<BackupJson>(
    await keepOk(["backup", "--project", project, "--settle", "0", "--json", dir], 0, {
      env: { KEEP_SERVER: proxy.url },
    }),
  );
  return { r, sent: proxy.sent.bytes - before };
}

Deno.test("negotiate: a tree copied to a second project, or renamed in one, sends under 1% of its bytes", async () => {
  await using server = await startServer();
  const proxy = captureProxy(server.url);
  try {
    const src = await tempDir();
    const bytes = buildTree(join(src, "tree"));
    const env = { KEEP_SERVER: proxy.url };
    const backup = (project: string, dir: string) => backupVia(proxy, project, dir);
    const first = await backup("a", src);
    assert(first.sent > bytes / 2, `the first backup sends the content (${first.sent} B)`);
    assertEquals(first.r.proven, 0);

    // The same tree in another project: only names, metadata and proofs go.
    const copy = await backup("b", src);
    assert(
      copy.sent < bytes / 100,
      `copy sent ${copy.sent} B of ${bytes} B (${(copy.sent / bytes * 100).toFixed(2)}%)`,
    );
    assertEquals(copy.r.proven, 304);
    assertEquals(copy.r.provenBytes, bytes);
    const out = join(await tempDir(), "b");
    await keepOk(["restore", "--project", "b", out], 0, { env });
    assertSameTree(snapshot(out), snapshot(src), "project b restored");

    // Renamed inside project a: the new paths are proven, the old ones deleted.
    Deno.renameSync(join(src, "tree"), join(src, "renamed"));
    const moved = await backup("a", src);
    assert(moved.sent < bytes / 100, `rename sent ${moved.sent} B of ${bytes} B`);
    assertEquals(moved.r.proven, 304);
    const out2 = join(await tempDir(), "a");
    await keepOk(["restore", "--project", "a", out2], 0, { env });
    assertSameTree(snapshot(out2), snapshot(src), "project a restored after the rename");
    const v = await keep(["verify", "--data", server.dataDir]);
    assertEquals(v.code, 0, v.stdout + v.stderr);
  } finally {
    await proxy.close();
  }
});

Deno.test("negotiate: artifacts built again for another project, one big file edited, send only that file's changed chunks (with a proof: the chunks are not the project's)", async () => {
  await using server = await startServer();
  const proxy = captureProxy(server.url);
  try {
    const a = await tempDir();
    // Real bytes where the machine has them: system libraries back to back.
    const libs = systemBytes(24 << 20);
    const spec: Record<string, Uint8Array> = { "lib/libbig.so": libs };
    for (let i = 0; i < 3; i++) spec[`lib/other${i}.so`] = noise(12 << 20, 200 + i);
    writeTree(a, spec);
    const env = { KEEP_SERVER: proxy.url };
    const backup = (project: string, dir: string) => backupVia(proxy, project, dir);
    await backup("a", a);
    // Project b: the same build but for one edit inside the big library.
    const b = await tempDir();
    const edited = libs.slice();
    edited.set(noise(4096, 300), 10 << 20);
    writeTree(b, { ...spec, "lib/libbig.so": edited });
    const copy = await backup("b", b);
    assert(copy.sent < 3_000_000, `b sent ${copy.sent} B`);
    assertEquals(copy.r.proven, 4, "3 files whole, one in part");
    const upload = proxy.uploads[proxy.uploads.length - 1];
    const text = new TextDecoder().decode(gunzip(upload));
    assertMatch(text, /\.keep-chunk\/lib\/libbig\.so@\d+/);
    assertMatch(
      text,
      /"op":"have","e":\{"p":"lib\/libbig\.so"[^\n]*"n":"[^"]+","proof":"[0-9a-f]{32}","c":\[/,
    );
    const out = join(await tempDir(), "b");
    await keepOk(["restore", "--project", "b", out], 0, { env });
    assertSameTree(snapshot(out), snapshot(b), "project b restored");
    const v = await keep(["verify", "--data", server.dataDir]);
    assertEquals(v.code, 0, v.stdout + v.stderr);
  } finally {
    await proxy.close();
  }
});

/** `n` bytes of the machine's own shared libraries (real compiled code), noise when too few. */
function systemBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  let at = 0;
  for (const dir of ["/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/bin"]) {
    let names: string[] = [];
    try {
      names = [...Deno.readDirSync(dir)].filter((e) => e.isFile).map((e) => e.name).sort();
    } catch {
      continue;
    }
    for (const name of names) {
      if (at >= n) return out;
      try {
        const data = Deno.readFileSync(join(dir, name));
        out.set(data.subarray(0, n - at), at);
        at += Math.min(data.length, n - at);
      } catch { /* unreadable: next */ }
    }
  }
  if (at < n) out.set(noise(n - at, 9), at);
  return out;
}

Deno.test("negotiate: a first backup of new small files hashes only a probe of them", async () => {
  await using server = await startServer();
  const proxy = captureProxy(server.url);
  try {
    const src = await tempDir();
    const spec: Record<string, Uint8Array> = {};
    for (let i = 0; i < 500; i++) spec[`f${i}`] = noise(2000, i + 1);
    writeTree(src, spec);
    const r = json<BackupJson>(
      await keepOk(["backup", "-p", "a", "--settle", "0", "--json", src], 0, {
        env: { KEEP_SERVER: proxy.url },
      }),
    );
    assertEquals(r.proven, 0);
    assertEquals(r.commit.counts.added, 500);
    // One negotiation: the probe, which found nothing; no second round for all of them.
    assertEquals(proxy.requests.filter((q) => q.includes("/negotiate")).length, 1);
  } finally {
    await proxy.close();
  }
});

Deno.test("negotiate: big files are all hashed only when a probe of the smallest finds one in the store", async () => {
  await using server = await startServer();
  const proxy = captureProxy(server.url);
  try {
    const src = await tempDir();
    // 72 MiB together: over NEGOTIATE_BIG_BYTES, so a probe decides.
    writeTree(src, {
      "a.bin": noise(24 << 20, 1),
      "b.bin": noise(24 << 20, 2),
      "c.bin": noise(24 << 20, 3),
    });
    const env = { KEEP_SERVER: proxy.url };
    const nego = () => proxy.requests.filter((q) => q.includes("/negotiate")).length;
    const first = json<BackupJson>(
      await keepOk(["backup", "-p", "a", "--settle", "0", "--json", src], 0, { env }),
    );
    assertEquals([first.proven, nego()], [0, 1], "new artifacts: the probe only");
    const copy = json<BackupJson>(
      await keepOk(["backup", "-p", "b", "--settle", "0", "--json", src], 0, { env }),
    );
    assertEquals([copy.proven, nego()], [3, 3], "a copy: the probe found them, all negotiated");
    assert(copy.wireBytes < 100_000, `copy sent ${copy.wireBytes} B`);
  } finally {
    await proxy.close();
  }
});

// ---- hostile clients -------------------------------------------------------

const SECRET = noise(300_000, 77);
const SECRET_HASH = sha256(SECRET);

/** Puts SECRET into project "victim" (a real backup) and returns nothing else. */
async function victimHolds(url: string): Promise<void> {
  const dir = await tempDir();
  Deno.writeFileSync(join(dir, "secret.key"), SECRET);
  await keepOk(["backup", "-p", "victim", "--settle", "0", dir], 0, {
    env: { KEEP_SERVER: url },
  });
}

async function negotiate(
  url: string,
  project: string,
  hashes: string[],
): Promise<{ nonce: string; key: string; have: string[] }> {
  const res = await fetch(`${url}/v1/projects/${project}/negotiate`, {
    method: "POST",
    body: JSON.stringify({ hashes }),
    headers: { "content-type": "application/json" },
  });
  assertEquals(res.status, 200);
  return await res.json();
}

function proofOf(keyHex: string, data: Uint8Array): string {
  return createHmac("sha256", Buffer.from(keyHex, "hex")).update(data).digest("hex").slice(0, 32);
}

function haveRecord(path: string, hash: string, size: number, n: string, proof: string) {
  return {
    op: "have",
    e: { p: path, t: "f", s: size, m: 0o644, mt: String(T0), ct: String(T0), h: hash },
    n,
    proof,
  };
}

hostile(
  "negotiate: a client that knows only a hash cannot get the content into its project",
  async (c) => {
    await victimHolds(c.url);
    const a = await negotiate(c.url, P, [SECRET_HASH]);
    // The store says it holds the content (dedup across projects is the point) ...
    assertEquals(a.have, [SECRET_HASH]);
    const upload = (proof: string, n = a.nonce) =>
      onHead(c).changes([haveRecord("stolen.key", SECRET_HASH, SECRET.length, n, proof)]).end();
    // ... but every proof that is not over the content is refused, nothing recorded.
    const guesses: [string, string][] = [
      ["zeros", "0".repeat(32)],
      ["the hash itself", SECRET_HASH.slice(0, 32)],
      ["a keyed hash of the hash", proofOf(a.key, Buffer.from(SECRET_HASH, "hex"))],
      ["a keyed hash of the hash's hex", proofOf(a.key, new TextEncoder().encode(SECRET_HASH))],
      ["the content but its last byte", proofOf(a.key, SECRET.subarray(0, SECRET.length - 1))],
    ];
    for (const [what, proof] of guesses) {
      await refuse(
        c,
        `proof: ${what}`,
        upload(proof),
        403,
        "forbidden",
        /^Cannot record "stolen\.key": its proof of possession does not match/,
      );
    }
    // A name with a newline stays on the message's one line.
    await refuse(
      c,
      "a name with a newline",
      onHead(c).changes([
        haveRecord("stolen\nkey", SECRET_HASH, SECRET.length, a.nonce, "0".repeat(32)),
      ]).end(),
      403,
      "forbidden",
      /^Cannot record "stolen\\nkey": its proof of possession does not match[^\n]*$/,
    );
    // A forged nonce: no key of this server.
    await refuse(
      c,
      "forged nonce",
      upload(proofOf(a.key, SECRET), "zz.00000000000000000000000000000000"),
      409,
      "conflict",
      /negotiation .* is expired or not from this store/,
    );
    // A real proof made under another project's key does not carry over.
    const other = await negotiate(c.url, "other", [SECRET_HASH]);
    await refuse(
      c,
      "another project's nonce",
      upload(proofOf(other.key, SECRET), other.nonce),
      403,
      "forbidden",
      /proof of possession does not match/,
    );
    // And the old way stays shut: a metadata record naming content the project lacks.
    await refuse(
      c,
      "meta record of the hash",
      onHead(c).changes([{
        op: "meta",
        e: {
          p: "stolen.key",
          t: "f",
          s: SECRET.length,
          m: 0o644,
          mt: String(T0),
          ct: String(T0),
          h: SECRET_HASH,
        },
      }]).end(),
      400,
      "invalid",
    );
    const ls = await keepOk(["ls", "--json"], 0, { env: c.env });
    assert(!ls.stdout.includes("stolen.key"), "stolen.key is in the project");
  },
);

hostile(
  "negotiate: the crafted upload with the right proof is accepted (the refusals above are about the proof)",
  async (c) => {
    await victimHolds(c.url);
    const a = await negotiate(c.url, "rightful", [SECRET_HASH]);
    const body = new Upload(1).commit(commitHeader(null)).changes([
      haveRecord("mine.key", SECRET_HASH, SECRET.length, a.nonce, proofOf(a.key, SECRET)),
    ]).end();
    const r = await post(commitsUrl(c, "rightful"), body.bytes());
    assertEquals(r.status, 201, r.text);
    const out = join(await tempDir(), "r");
    await keepOk(["restore", "-p", "rightful", out], 0, { env: c.env });
    assertEquals(Deno.readFileSync(join(out, "mine.key")), SECRET);
    // A negotiation body that is not a list of hashes is refused.
    const bad = await post(
      `${c.url}/v1/projects/${P}/negotiate`,
      new TextEncoder().encode('{"hashes":["x"]}'),
      {
        headers: { "content-type": "application/json" },
      },
    );
    assertError(bad, 400, "invalid", /^Cannot negotiate: body must be JSON/);
    assertMatch(r.text, /"commit"/);
  },
);

// ---- files sent in part: their chunks -------------------------------------

/** A big file (kept in chunks) of project "victim" with a secret 4 KiB inside; its chunks. */
async function victimBig(url: string): Promise<{ data: Uint8Array; chunks: string[] }> {
  const data = noise(12 << 20, 91);
  data.set(noise(4096, 92), 5 << 20); // the secret part
  const dir = await tempDir();
  Deno.writeFileSync(join(dir, "big.bin"), data);
  await keepOk(["backup", "-p", "victim", "--settle", "0", dir], 0, {
    env: { KEEP_SERVER: url },
  });
  const chunks: string[] = [];
  const cut = new ChunkHasher((h) => chunks.push(h));
  cut.push(data);
  cut.end();
  return { data, chunks };
}

function chunkHave(path: string, data: Uint8Array, n: string, proof: string, c: string[]) {
  return { ...haveRecord(path, sha256(data), data.length, n, proof), c };
}

hostile(
  "negotiate: a client that knows a big file's chunk hashes, or all of it but a secret part, cannot get it into its project",
  async (c) => {
    const v = await victimBig(c.url);
    const a = await negotiate(c.url, P, v.chunks);
    assertEquals(a.have.length, v.chunks.length, "the store holds every chunk of the file");
    const stolen = (proof: string, list = v.chunks, data = v.data, up = onHead(c)) =>
      up.changes([chunkHave("stolen.bin", data, a.nonce, proof, list)]).end();
    // Knowing every chunk's hash and the file's is not knowing the content.
    for (
      const [what, proof] of [
        ["zeros", "0".repeat(32)],
        [
          "a keyed hash of the chunk list",
          proofOf(a.key, new TextEncoder().encode(v.chunks.join(""))),
        ],
        [
          "the content but its secret",
          proofOf(a.key, v.data.slice().fill(0, 5 << 20, (5 << 20) + 4096)),
        ],
      ]
    ) {
      await refuse(
        c,
        `chunk proof: ${what}`,
        stolen(proof),
        403,
        "forbidden",
        /its proof of possession does not match/,
      );
    }
    // Knowing all but the secret: the chunk holding it is replaced by one of the
    // attacker's (sent, so stored), the file's hash claimed all the same.
    const guess = v.data.slice().fill(0, 5 << 20, (5 << 20) + 4096);
    const guessed: string[] = [];
    const guessedBytes: Uint8Array[] = [];
    const cut = new ChunkHasher((h, _n, bytes) => {
      guessed.push(h);
      guessedBytes.push(bytes!.slice());
    }, true);
    cut.push(guess);
    cut.end();
    const odd = guessed.findIndex((h, i) => h !== v.chunks[i]);
    assert(odd >= 0, "the guess differs in a chunk");
    await refuse(
      c,
      "a chunk swapped for the attacker's",
      stolen(
        proofOf(a.key, guess),
        guessed,
        v.data,
        onHead(c).control(`.keep-chunk/stolen.bin@${odd}`, "chunk", guessedBytes[odd]),
      ),
      403,
      "forbidden",
      /its chunks do not make the content/,
    );
    // A chunk the store does not hold (and the upload did not send): 409, back up again.
    const absent = [...v.chunks];
    absent[1] = sha256("never stored");
    await refuse(
      c,
      "a chunk not stored",
      stolen(proofOf(a.key, v.data), absent),
      409,
      "conflict",
      /no longer has its content/,
    );
    // A chunked file's hash named as a chunk.
    await refuse(
      c,
      "a chunked file as a chunk",
      onHead(c).changes([
        chunkHave("stolen.bin", v.data, a.nonce, proofOf(a.key, v.data), [sha256(v.data)]),
      ]).end(),
      403,
      "forbidden",
      /is a chunked file, not a chunk/,
    );
    // Chunk entries over a chunk's bound, empty, and lists too long for the size.
    await refuse(
      c,
      "a chunk entry of 4 MiB",
      onHead(c).control(".keep-chunk/x@0", "chunk", noise(4 << 20, 5)).changes([]).end(),
      400,
      "invalid",
      /a chunk is a file of 1 to/,
    );
    await refuse(
      c,
      "an empty chunk entry",
      onHead(c).control(".keep-chunk/x@0", "chunk", new Uint8Array(0)).changes([]).end(),
      400,
      "invalid",
      /a chunk is a file of 1 to/,
    );
    await refuse(
      c,
      "a list longer than the size allows",
      stolen(
        proofOf(a.key, v.data),
        Array(97).fill(v.chunks[0]), /* 12 MiB / 128 KiB = 96 at most */
      ),
      400,
      "invalid",
      /names its chunks wrongly/,
    );
    // No proof at all: only chunks of the project's own files may go without one.
    await refuse(
      c,
      "another project's chunks without a proof",
      onHead(c).changes([{
        op: "have",
        e: haveRecord("stolen.bin", sha256(v.data), v.data.length, "", "").e,
        c: v.chunks,
      }]).end(),
      409,
      "conflict",
      /is not one of app's \(any more\) and comes without a proof of possession/,
    );
    const ls = await keepOk(["ls", "--json"], 0, { env: c.env });
    assert(!ls.stdout.includes("stolen.bin"), "stolen.bin is in the project");
  },
);

hostile(
  "negotiate: a big file sent in part with the right proof is accepted and restores (the refusals above are about the proof)",
  async (c) => {
    const v = await victimBig(c.url);
    const a = await negotiate(c.url, "rightful", v.chunks);
    // The rightful owner changed one chunk's worth: sends it, names the rest.
    const mine = v.data.slice();
    mine.set(noise(1000, 93), 9 << 20);
    const list: string[] = [];
    const sent: [number, Uint8Array][] = [];
    let at = 0;
    const cut = new ChunkHasher((h, n, bytes) => {
      list.push(h);
      if (!a.have.includes(h)) sent.push([at, bytes!.slice()]);
      at += n;
    }, true);
    cut.push(mine);
    cut.end();
    assert(sent.length >= 1 && sent.length <= 3, `${sent.length} chunks to send`);
    let up = new Upload(1).commit(commitHeader(null));
    for (const [off, bytes] of sent) up = up.control(`.keep-chunk/mine.bin@${off}`, "chunk", bytes);
    const body = up.changes([chunkHave("mine.bin", mine, a.nonce, proofOf(a.key, mine), list)])
      .end();
    const r = await post(commitsUrl(c, "rightful"), body.bytes());
    assertEquals(r.status, 201, r.text);
    const out = join(await tempDir(), "r");
    await keepOk(["restore", "-p", "rightful", out], 0, { env: c.env });
    assertEquals(sha256(Deno.readFileSync(join(out, "mine.bin"))), sha256(mine));
    // Now the chunks are the project's own: the next edit names them with no proof.
    const own = await fetch(`${c.url}/v1/projects/rightful/negotiate`, {
      method: "POST",
      body: JSON.stringify({ hashes: list, own: true }),
      headers: { "content-type": "application/json" },
    }).then((r) => r.json()) as { have: string[]; own: string[] };
    assertEquals(own.own.length, own.have.length, "every held chunk is rightful's own");
    const theirs = await fetch(`${c.url}/v1/projects/${P}/negotiate`, {
      method: "POST",
      body: JSON.stringify({ hashes: list, own: true }),
      headers: { "content-type": "application/json" },
    }).then((r) => r.json()) as { have: string[]; own: string[] };
    assertEquals([theirs.have.length > 0, theirs.own], [true, []], "none is app's");
    const next = mine.slice();
    next.set(noise(3000, 94), 2 << 20);
    const list2: string[] = [];
    let up2 = new Upload(1).commit(
      commitHeader((JSON.parse(r.text) as { commit: { id: string } }).commit.id),
    );
    let at2 = 0;
    const cut2 = new ChunkHasher((h, n, bytes) => {
      list2.push(h);
      if (!own.own.includes(h)) {
        up2 = up2.control(`.keep-chunk/mine.bin@${at2}`, "chunk", bytes!.slice());
      }
      at2 += n;
    }, true);
    cut2.push(next);
    cut2.end();
    const e = haveRecord("mine.bin", "", next.length, "", "").e as Record<string, unknown>;
    delete e.h; // the server hashes the file from its chunks
    const r2 = await post(
      commitsUrl(c, "rightful"),
      up2.changes([{ op: "have", e, c: list2 }]).end().bytes(),
    );
    assertEquals(r2.status, 201, r2.text);
    const out2 = join(await tempDir(), "r2");
    await keepOk(["restore", "-p", "rightful", out2], 0, { env: c.env });
    assertEquals(sha256(Deno.readFileSync(join(out2, "mine.bin"))), sha256(next));
    const v2 = await keepOk(["verify", "--data", c.server.dataDir]);
    assertMatch(v2.stdout, /keep verify: OK/);
  },
);

hostile(
  "negotiate: a store serving with --chunk-over off answers no chunking and takes no chunk entries and no file named by chunks (409: the client asks again)",
  async (c) => {
    const res = await fetch(`${c.url}/v1/projects/${P}/negotiate`, {
      method: "POST",
      body: JSON.stringify({ hashes: [] }),
      headers: { "content-type": "application/json" },
    });
    assertEquals((await res.json()).chunkOver, null, "the answer says big files stay whole");
    const data = noise(9 << 20, 95);
    const chunks: string[] = [];
    const bytes: Uint8Array[] = [];
    const cut = new ChunkHasher((h, _n, b) => {
      chunks.push(h);
      bytes.push(b!.slice());
    }, true);
    cut.push(data);
    cut.end();
    await refuse(
      c,
      "a chunk entry",
      onHead(c).control(".keep-chunk/x.bin@0", "chunk", bytes[0]).changes([]).end(),
      409,
      "conflict",
      /this store keeps big files whole; back up again to send them without chunk entries/,
    );
    const e = haveRecord("x.bin", "", data.length, "", "").e as Record<string, unknown>;
    delete e.h;
    await refuse(
      c,
      "a file named by chunks",
      onHead(c).changes([{ op: "have", e, c: chunks }]).end(),
      409,
      "conflict",
      /Cannot record "x\.bin": this store keeps big files whole, not as chunks; back up again/,
    );
  },
  { args: ["--chunk-over", "off"] },
);

hostile(
  "negotiate: a tiny upload naming one chunk many times cannot make the server hash more than --max-upload",
  async (c) => {
    const v = await victimBig(c.url);
    // The victim's first chunk, listed as often as a 20 MB file allows:
    // a few KB on the wire, 20 MB for the server to read and hash.
    const e = haveRecord("x.bin", "", 20_000_000, "", "").e as Record<string, unknown>;
    delete e.h;
    await refuse(
      c,
      "a chunk list over the upload limit",
      onHead(c).changes([{ op: "have", e, c: Array(150).fill(v.chunks[0]) }]).end(),
      413,
      "too_large",
      /files named by their chunks exceed the limit of 16777216 bytes/,
    );
  },
  { args: ["--max-upload", "16M"] },
);

hostile(
  "negotiate: the have records of one upload list at most UPLOAD_CHUNKS_MAX chunks in all (the server holds every list)",
  async (c) => {
    const v = await victimBig(c.url);
    // Five records of the most chunks one may list: each line fits, their sum does not.
    const records = [0, 1, 2, 3, 4].map((i) => {
      const e = haveRecord(`x${i}.bin`, "", HAVE_CHUNKS_MAX * CDC_SIZES.min, "", "").e as Record<
        string,
        unknown
      >;
      delete e.h;
      return { op: "have", e, c: Array(HAVE_CHUNKS_MAX).fill(v.chunks[0]) };
    });
    assert(5 * HAVE_CHUNKS_MAX > UPLOAD_CHUNKS_MAX);
    await refuse(
      c,
      "five full chunk lists",
      onHead(c).changes(records).end(),
      413,
      "too_large",
      new RegExp(`its have records list more than ${UPLOAD_CHUNKS_MAX} chunks in all`),
    );
  },
);
