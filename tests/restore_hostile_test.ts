/**
 * Restore never trusts the server. A fake server answers with crafted
 * archives; the real CLI must refuse to write outside DEST or through a
 * symlink, and must check every hash.
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { encodeMember, MAX_MEMBER_RAW } from "../src/format/gzip_member.ts";
import { encodeHeader, END_OF_ARCHIVE, padded, type TarHeader } from "../src/format/tar.ts";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { keep, tempDir } from "./helpers.ts";

type Item = { h: TarHeader; data?: string; hash?: string };

function archive(items: Item[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let pad = 0;
  for (const { h, data, hash } of items) {
    const bytes = new TextEncoder().encode(data ?? "");
    if (h.type === "file") {
      h.size = bytes.length;
      h.keep = { sha256: hash ?? createHash("sha256").update(bytes).digest("hex") };
    }
    const blocks = encodeHeader(h);
    const raw = new Uint8Array(pad + blocks.length);
    raw.set(blocks, pad);
    parts.push(encodeMember(raw, 1));
    for (let o = 0; o < bytes.length; o += MAX_MEMBER_RAW) {
      parts.push(encodeMember(bytes.subarray(o, o + MAX_MEMBER_RAW), 1));
    }
    pad = padded(bytes.length) - bytes.length;
  }
  parts.push(encodeMember(new Uint8Array(pad + END_OF_ARCHIVE.length), 1));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const f = (path: string, data: string, hash?: string): Item => ({
  h: { path, type: "file", size: 0, mode: 0o644, mtime: 1_700_000_000_000_000_000n },
  data,
  hash,
});
const d = (path: string): Item => ({
  h: { path, type: "dir", size: 0, mode: 0o755, mtime: 1_700_000_000_000_000_000n },
});
const l = (path: string, target: string): Item => ({
  h: {
    path,
    type: "symlink",
    size: 0,
    mode: 0o777,
    mtime: 1_700_000_000_000_000_000n,
    linkname: target,
  },
});

/**
 * Serves `body` as the archive of any commit, and commit info (id
 * feedfacefeedface) with `items`' counts; `archiveCommit` is the commit the
 * archive says it is (null: no keep-commit header). `await using` closes it.
 */
function fakeServer(
  body: Uint8Array,
  items: Item[] = [],
  archiveCommit: string | null = "feedfacefeedface",
): { url: string; close(): Promise<void> } & AsyncDisposable {
  const count = (t: string) => items.filter((i) => i.h.type === t).length;
  const counts = { files: count("file"), dirs: count("dir"), symlinks: count("symlink") };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const path = new URL(req.url).pathname;
    if (path.endsWith("/archive")) {
      const headers: Record<string, string> = { "content-type": "application/gzip" };
      if (archiveCommit) headers["keep-commit"] = archiveCommit;
      return new Response(body as Uint8Array<ArrayBuffer>, { headers });
    }
    if (/\/commits\/[^/]+$/.test(path)) {
      return Response.json({ commit: { id: "feedfacefeedface", counts }, notes: [] });
    }
    return Response.json({ error: { code: "not_found", message: "Cannot find it" } }, {
      status: 404,
    });
  });
  const close = () => server.shutdown();
  return { url: `http://127.0.0.1:${server.addr.port}`, close, [Symbol.asyncDispose]: close };
}

async function restoreFrom(items: Item[]) {
  await using server = fakeServer(archive(items), items);
  const root = await tempDir();
  const dest = join(root, "dest");
  const r = await keep(["restore", "-s", server.url, "-p", "evil", dest]);
  return { ...r, root, dest };
}

function listAll(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of Deno.readDirSync(join(dir, rel))) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(r);
      if (e.isDirectory) walk(r);
    }
  };
  walk("");
  return out.sort();
}

Deno.test("restore refuses paths with .. or a leading / from a hostile server", async () => {
  for (const bad of ["../escape.txt", "a/../../escape.txt", "/tmp/keep-escape-abs.txt"]) {
    const r = await restoreFrom([d("a"), f(bad, "pwned")]);
    assertEquals(r.code, 1, r.stderr);
    assertMatch(r.stderr, /^keep: Cannot restore ".*": unsafe path/);
    assertEquals(listAll(r.root), ["dest", "dest/a"]);
  }
  assert(!(await exists("/tmp/keep-escape-abs.txt")));
});

Deno.test("restore refuses to write through a symlink it created or found", async () => {
  const outside = await tempDir();
  const r = await restoreFrom([l("link", outside), f("link/owned.txt", "pwned")]);
  assertEquals(r.code, 1, r.stderr);
  assertMatch(r.stderr, /^keep: Cannot restore below link: it is a symlink, not a directory/);
  assertEquals(listAll(outside), []);
  // A symlink entry that points outside is itself fine (it is data), a file replacing it is not followed.
  const r2 = await restoreFrom([l("abs", "/etc/passwd"), f("data.txt", "ok")]);
  assertEquals(r2.code, 0, r2.stderr);
  assertEquals(Deno.readLinkSync(join(r2.dest, "abs")), "/etc/passwd");
});

Deno.test("restore checks every hash: a mismatching file is not written, the rest are, exit 4", async () => {
  // Large files (over 1 MiB) go through a temp file beside their target, renamed once verified.
  const big = "x".repeat(3 * MAX_MEMBER_RAW + 7);
  const r = await restoreFrom([
    f("a-good.txt", "good"),
    f("b-bad.txt", "tampered", "0".repeat(64)),
    f("c-big-bad.bin", big, createHash("sha256").update(big + "!").digest("hex")),
    f("d-big-good.bin", big),
    f("e-last.txt", "last"),
  ]);
  assertEquals(r.code, 4, r.stderr);
  assertMatch(r.stderr, /keep restore: b-bad\.txt: content hash mismatch .*not written/);
  assertMatch(r.stderr, /keep restore: c-big-bad\.bin: content hash mismatch .*not written/);
  assertMatch(r.stdout, /: 3 files, .*\n {2}INTEGRITY 2 files failed their hash check/);
  // Nothing else is left: no temp file of the refused large one.
  assertEquals(listAll(r.dest), ["a-good.txt", "d-big-good.bin", "e-last.txt"]);
  assertEquals(Deno.readTextFileSync(join(r.dest, "d-big-good.bin")), big);
});

Deno.test("restore refuses duplicate or unordered entries and a truncated stream", async () => {
  const dup = await restoreFrom([f("a.txt", "1"), f("a.txt", "2")]);
  assertEquals(dup.code, 1);
  assertMatch(dup.stderr, /entries out of order or repeated/);
  assertEquals(Deno.readTextFileSync(join(dup.dest, "a.txt")), "1");
  const body = archive([f("a.txt", "1"), f("b.txt", "2")]);
  await using server = fakeServer(body.subarray(0, body.length - 20));
  const dest = join(await tempDir(), "dest");
  const r = await keep(["restore", "-s", server.url, "-p", "evil", dest]);
  assertEquals(r.code, 1);
  assertMatch(r.stderr, /^keep: Cannot read archive: truncated/);
});

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.lstat(p);
    return true;
  } catch {
    return false;
  }
}

Deno.test("restore reports exit 4 when a whole-commit restore comes back short of the commit's counts", async () => {
  const items = [f("a.txt", "a"), f("b.txt", "b")];
  // The archive leaves b.txt out; the commit says it has two files.
  await using server = fakeServer(archive(items.slice(0, 1)), items);
  const dest = join(await tempDir(), "dest");
  const r = await keep(["restore", "-s", server.url, "-p", "evil", dest]);
  assertEquals(r.code, 4, r.stderr);
  assertMatch(
    r.stderr,
    /Cannot confirm the restore is complete: restored 1 files, 0 dirs, 0 symlinks; the commit has 2, 0, 0/,
  );
});

Deno.test("restore knows what it expects before it writes: an archive of no named commit is refused", async () => {
  const items = [f("a.txt", "a")];
  for (const named of [null, "0123456789abcdef"]) {
    await using server = fakeServer(archive(items), items, named);
    const dest = join(await tempDir(), "dest");
    const r = await keep(["restore", "-s", server.url, "-p", "evil", dest]);
    assertEquals(r.code, 4, r.stderr);
    assertMatch(
      r.stderr,
      /^keep: Cannot restore commit feedfacefeedface: the server's archive is of (no named commit|0123456789abcdef)\n$/,
    );
    assertEquals(listAll(dest), []);
  }
});

Deno.test("restore refuses an entry below one of the archive's own files before creating anything in its place", async () => {
  const r = await restoreFrom([f("a", "i am a file"), f("a/b", "child")]);
  assertEquals(r.code, 1, r.stderr);
  assertMatch(
    r.stderr,
    /^keep: Cannot restore below a: the archive has it as a file, not a directory\n$/,
  );
  // The file is there, as a file; no directory was made in its place.
  assertEquals(Deno.readTextFileSync(join(r.dest, "a")), "i am a file");
});
