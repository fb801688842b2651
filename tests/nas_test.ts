/**
 * Backups of trees on a NAS and right after a build: the real CLI against a
 * real server on 127.0.0.1.
 */

import { join } from "node:path";
import { lstatNs, setTimesNs } from "../src/platform/fs_native.ts";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import {
  assertSameTree,
  captureProxy,
  json,
  keepOk,
  randomData,
  snapshot,
  startServer,
  tempDir,
  type TestServer,
  writeTree,
} from "./helpers.ts";

interface BackupJson {
  commit: { id: string; counts: Record<string, number>; stats: Record<string, number> };
  hashed: number;
  incomplete: number;
  problems: { path: string; reason: string; kind: string }[];
  check: string;
}

/** Sets every file and dir below root to an mtime one minute ago (not racily clean). */
function age(root: string, seconds = 60): void {
  const t = BigInt(Date.now() - seconds * 1000) * 1_000_000n;
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      const p = join(dir, e.name);
      if (e.isDirectory) walk(p);
      if (!e.isSymlink) setTimesNs(p, t);
    }
  };
  walk(root);
  setTimesNs(root, t);
}

async function backup(
  server: TestServer,
  project: string,
  dir: string,
  flags: string[] = [],
  code = 0,
) {
  const r = await keepOk(
    ["backup", "-s", server.url, "-p", project, "--json", ...flags, dir],
    code,
  );
  return { ...json<BackupJson>(r), stderr: r.stderr };
}

async function restoreLatest(server: TestServer, project: string): Promise<string> {
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", project, dest]);
  return dest;
}

Deno.test("a same-size rewrite with its mtime put back is caught by ctime, and with --ignore-ctime by the partial hash", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "out/lib.a": "AAAAAAAA", "out/other.a": "unchanged" });
  age(src);
  await backup(server, "rw", src, ["--settle", "0"]);
  const file = join(src, "out/lib.a");
  const before = lstatNs(file).mtime;
  const rewrite = (text: string) => {
    Deno.writeTextFileSync(file, text);
    setTimesNs(file, before); // like `touch -d` or `cp -p`: same size, same mtime
  };
  rewrite("BBBBBBBB");
  const byCtime = await backup(server, "rw", src, ["--settle", "0"]);
  assertEquals(byCtime.commit.stats.filesReceived, 1);
  assertEquals(byCtime.commit.counts.changed, 1);
  assertEquals(
    Deno.readTextFileSync(join(await restoreLatest(server, "rw"), "out/lib.a")),
    "BBBBBBBB",
  );

  // Without ctime and without a content check nothing can see it ...
  rewrite("CCCCCCCC");
  const blind = await backup(server, "rw", src, [
    "--settle",
    "0",
    "--ignore-ctime",
    "--check",
    "none",
  ]);
  assertEquals(blind.commit.stats.filesReceived, 0);
  // ... so without ctime the default compares the partial hash, as --check partial does.
  const partial = await backup(server, "rw", src, ["--settle", "0", "--ignore-ctime"]);
  assertEquals(partial.commit.stats.filesReceived, 1);
  assertEquals(partial.check, "partial");
  assertEquals(
    Deno.readTextFileSync(join(await restoreLatest(server, "rw"), "out/lib.a")),
    "CCCCCCCC",
  );
  rewrite("DDDDDDDD");
  const full = await backup(server, "rw", src, [
    "--settle",
    "0",
    "--ignore-ctime",
    "--check",
    "full",
  ]);
  assertEquals(full.commit.stats.filesReceived, 1);
  assertEquals(full.hashed, 2);
  assertEquals(
    Deno.readTextFileSync(join(await restoreLatest(server, "rw"), "out/lib.a")),
    "DDDDDDDD",
  );
});

Deno.test("a chmod of 1,000 unchanged files sends metadata only, no file content", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const spec: Record<string, string> = {};
  for (let i = 0; i < 1000; i++) spec[`obj/d${i % 10}/f${i}.o`] = `object ${i}\n`.repeat(50);
  writeTree(src, spec);
  age(src);
  await backup(server, "chmod", src, ["--settle", "0"]);
  for (const p of Object.keys(spec)) Deno.chmodSync(join(src, p), 0o600);
  // The diff reads the manifest without hashes; the suspects' hashes come in one lookup.
  const proxy = captureProxy(server.url);
  let r: BackupJson;
  try {
    r = json<BackupJson>(
      await keepOk(["backup", "-s", proxy.url, "-p", "chmod", "--settle", "0", "--json", src]),
    );
  } finally {
    await proxy.close();
  }
  assertEquals(proxy.requests.filter((q) => !q.startsWith("POST /v1/projects/chmod/commits")), [
    "GET /v1/projects/chmod/manifest?commit=latest&fields=stat",
    "POST /v1/projects/chmod/entries",
  ]);
  assertEquals(r.commit.stats.filesReceived, 0);
  assertEquals(r.commit.stats.bytesReceived, 0);
  assertEquals(r.commit.counts.metadata, 1000);
  assertEquals(r.hashed, 1000);
  const dest = await restoreLatest(server, "chmod");
  assertEquals(lstatNs(join(dest, "obj/d3/f13.o")).mode, 0o600);
  assertEquals(Deno.readTextFileSync(join(dest, "obj/d3/f13.o")), spec["obj/d3/f13.o"]);
  // And the next backup sees nothing to do.
  const again = await backup(server, "chmod", src, ["--settle", "0"]);
  assertEquals(again.hashed, 0);
  assertEquals(
    again.commit.counts.unchanged,
    again.commit.counts.files + again.commit.counts.dirs,
  );
  // --check full compares every hash: it reads the whole manifest and asks for nothing more.
  const proxy2 = captureProxy(server.url);
  try {
    const full = json<BackupJson>(
      await keepOk([
        "backup",
        ...["-s", proxy2.url, "-p", "chmod", "--settle", "0", "--json", "--check", "full", src],
      ]),
    );
    assertEquals(full.hashed, 1000);
    assertEquals(full.commit.stats.filesReceived, 0);
  } finally {
    await proxy2.close();
  }
  assertEquals(proxy2.requests.filter((q) => !q.startsWith("POST /v1/projects/chmod/commits")), [
    "GET /v1/projects/chmod/manifest?commit=latest",
  ]);
});

Deno.test("a rewrite within the same second as the last backup is caught on a 1 s-granularity mtime", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "a.o": "11111111", "b.o": "22222222", "c.o": "33333333" });
  // Simulate a filesystem that keeps whole seconds (SMB/FAT/ext3): touch -d @S,
  // with S the second the backup's scan falls in or just after (a NAS clock a
  // little ahead), so every later write in that second keeps mtime S.
  // (+5: a slow CLI start on a loaded box must not begin the scan past S.)
  const S = BigInt(Math.floor(Date.now() / 1000) + 5) * 1_000_000_000n;
  for (const n of ["a.o", "b.o", "c.o"]) setTimesNs(join(src, n), S);
  await backup(server, "racy", src, ["--settle", "1s"]);
  // Same second, same size, mtime still S: only the racily-clean rule can tell.
  Deno.writeTextFileSync(join(src, "b.o"), "XXXXXXXX");
  setTimesNs(join(src, "b.o"), S);
  const r = await backup(server, "racy", src, ["--settle", "1s", "--ignore-ctime"]);
  assertEquals(r.commit.stats.filesReceived, 1);
  assertEquals(
    Deno.readTextFileSync(join(await restoreLatest(server, "racy"), "b.o")),
    "XXXXXXXX",
  );
  // With default flags too.
  Deno.writeTextFileSync(join(src, "c.o"), "YYYYYYYY");
  setTimesNs(join(src, "c.o"), S);
  const d = await backup(server, "racy", src, ["--settle", "1s"]);
  assertEquals(d.commit.stats.filesReceived, 1);
  assertEquals(
    Deno.readTextFileSync(join(await restoreLatest(server, "racy"), "c.o")),
    "YYYYYYYY",
  );
});

Deno.test("a file still being appended to is not packed half-written, is reported, and is picked up next time", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "build.log": "start\n", "app.bin": "binary" });
  age(src);
  await backup(server, "live", src, ["--settle", "0"]);
  const writer = new Deno.Command("sh", {
    args: ["-c", `while true; do echo line >> "${join(src, "build.log")}"; sleep 0.05; done`],
    stdout: "null",
    stderr: "null",
  }).spawn();
  let r: BackupJson & { stderr: string };
  try {
    await new Promise((res) => setTimeout(res, 200));
    // Appends every ~50 ms; a 1 s window leaves room for a loaded box.
    r = await backup(server, "live", src, ["--settle", "1s", "--settle-timeout", "4s"], 3);
  } finally {
    writer.kill("SIGKILL");
    await writer.status;
  }
  assertEquals(r.incomplete, 1);
  assertEquals(r.problems.map((p) => [p.path, p.kind]), [["build.log", "unsettled"]]);
  assertMatch(r.stderr, /unsettled: build\.log: still being written/);
  assertEquals(r.commit.counts.flagged, 1);
  // The commit keeps the last settled version, flagged.
  const dest = await restoreLatest(server, "live");
  assertEquals(Deno.readTextFileSync(join(dest, "build.log")), "start\n");
  const log = await keepOk(["log", "-s", server.url, "-p", "live", "--commit", r.commit.id]);
  assertMatch(log.stdout, /flagged +build\.log: unsettled: still being written/);
  // Once the writer stopped, the next backup takes the whole file.
  const final = Deno.readTextFileSync(join(src, "build.log"));
  const next = await backup(server, "live", src, ["--settle", "300ms"]);
  assertEquals(next.incomplete, 0);
  assertEquals(
    Deno.readTextFileSync(join(await restoreLatest(server, "live"), "build.log")),
    final,
  );
});

/** A DENO_DIR copy the unprivileged user can read (root's lives in /root). */
let denoDirCopy: string | null = null;
async function asNobody(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  if (!denoDirCopy) {
    const info = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json"],
      stdout: "piped",
    }).output();
    const denoDir = JSON.parse(new TextDecoder().decode(info.stdout)).denoDir as string;
    denoDirCopy = await tempDir("keep-denodir-");
    await new Deno.Command("cp", { args: ["-r", `${denoDir}/.`, denoDirCopy] }).output();
    await new Deno.Command("chmod", { args: ["-R", "a+rX", denoDirCopy] }).output();
  }
  const out = await new Deno.Command("setpriv", {
    args: [
      "--reuid=65534",
      "--regid=65534",
      "--clear-groups",
      join(Deno.cwd(), "scripts/keep"),
      ...args,
    ],
    env: { DENO_DIR: denoDirCopy, HOME: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("an unreadable file or directory is reported, makes the backup incomplete, and keeps its last good version", async () => {
  await using server = await startServer();
  const src = await tempDir();
  try {
    writeTree(src, {
      "secret.txt": "version 1\n",
      "locked/inner.txt": "inner 1\n",
      "fine.txt": "fine\n",
    });
    await new Deno.Command("chmod", { args: ["-R", "a+rX", src] }).output();
    const first = await asNobody(["backup", "-s", server.url, "-p", "perm", "--settle", "0", src]);
    assertEquals(first.code, 0, first.stderr);
    Deno.chmodSync(join(src, "secret.txt"), 0o000);
    Deno.chmodSync(join(src, "locked"), 0o000);
    Deno.writeTextFileSync(join(src, "fine.txt"), "fine 2\n");
    const second = await asNobody([
      "backup",
      "-s",
      server.url,
      "-p",
      "perm",
      "--settle",
      "0",
      "--json",
      src,
    ]);
    assertEquals(second.code, 3, second.stderr);
    assertMatch(second.stderr, /unreadable: secret\.txt: permission denied/);
    assertMatch(second.stderr, /unreadable: locked: cannot list directory: permission denied/);
    const r = JSON.parse(second.stdout) as BackupJson;
    assertEquals(r.incomplete, 2);
    assertEquals(r.commit.counts.deleted, 0);
    const dest = await restoreLatest(server, "perm");
    assertEquals(Deno.readTextFileSync(join(dest, "secret.txt")), "version 1\n");
    assertEquals(Deno.readTextFileSync(join(dest, "locked/inner.txt")), "inner 1\n");
    assertEquals(Deno.readTextFileSync(join(dest, "fine.txt")), "fine 2\n");
    const ls = await keepOk(["ls", "-l", "-s", server.url, "-p", "perm"]);
    assertMatch(ls.stdout, /secret\.txt {2}\[unreadable\]/);
    const log = await keepOk(["log", "-s", server.url, "-p", "perm"]);
    assertMatch(log.stdout, /!2/);
  } finally {
    Deno.chmodSync(join(src, "locked"), 0o755);
  }
});

Deno.test(".backupignore (nearest wins), --exclude, --include-from and CACHEDIR.TAG select what is backed up", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, {
    ".backupignore": "*.o\n/tmp/\n",
    "main.o": "o",
    "main.c": "c",
    "tmp/scratch": "s",
    "lib/tmp/kept": "k", // "/tmp/" is anchored to the root
    "lib/.backupignore": "!special.o\n*.log\n",
    "lib/special.o": "o",
    "lib/other.o": "o",
    "lib/build.log": "l",
    "lib/x.bak": "b",
    "cache/CACHEDIR.TAG": "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    "cache/blob": "big cache",
    "notcache/CACHEDIR.TAG": "not the signature\n",
    "notcache/file": "f",
  });
  const fifo = join(src, "pipe");
  await new Deno.Command("mkfifo", { args: [fifo] }).output();
  const r = await backup(server, "rules", src, ["--settle", "0", "--exclude", "*.bak"]);
  assertEquals(r.incomplete, 0);
  assertEquals(r.problems.map((p) => [p.path, p.kind]), [["pipe", "skipped"]]);
  const ls = await keepOk(["ls", "-s", server.url, "-p", "rules"]);
  assertEquals(ls.stdout.trim().split("\n"), [
    ".backupignore",
    "cache/",
    "cache/CACHEDIR.TAG",
    "lib/",
    "lib/.backupignore",
    "lib/special.o",
    "lib/tmp/",
    "lib/tmp/kept",
    "main.c",
    "notcache/",
    "notcache/CACHEDIR.TAG",
    "notcache/file",
  ]);
  // --include-from: only build products, plus the directories above them.
  const list = join(await tempDir(), "products");
  Deno.writeTextFileSync(list, "# products\n*.o\nnotcache/\n");
  await backup(server, "only", src, [
    "--settle",
    "0",
    "--include-from",
    list,
    "--no-exclude-caches",
  ]);
  const only = await keepOk(["ls", "-s", server.url, "-p", "only"]);
  assertEquals(only.stdout.trim().split("\n"), [
    "lib/",
    "lib/special.o",
    "notcache/",
    "notcache/CACHEDIR.TAG",
    "notcache/file",
  ]);
});

Deno.test("long Korean names, emoji, symlinks and hard links round-trip; GNU tar lists the upload", async () => {
  await using server = await startServer();
  const proxy = captureProxy(server.url);
  const src = await tempDir();
  try {
    const korean = "가".repeat(64) + "나다.txt"; // 3 bytes a syllable: 200 bytes
    assertEquals(new TextEncoder().encode(korean).length, 202);
    const deep = Array.from({ length: 12 }, (_, i) => `디렉터리${i}`).join("/");
    writeTree(src, {
      [korean]: "한국어 내용\n",
      [`${deep}/🎉 party.txt`]: "🎉\n",
      "bin/tool": "#!/bin/sh\necho hi\n",
      "latest": { link: korean },
      "abs-link": { link: "/usr/bin/env" },
    });
    Deno.chmodSync(join(src, "bin/tool"), 0o755);
    Deno.linkSync(join(src, "bin/tool"), join(src, "bin/tool-hardlink"));
    const expected = snapshot(src, { dirTimes: true });
    await keepOk(["backup", "-s", proxy.url, "-p", "names", "--settle", "0", src]);
    const dest = await restoreLatest(server, "names");
    assertSameTree(snapshot(dest, { dirTimes: true }), expected);
    assertEquals(lstatNs(join(dest, "bin/tool-hardlink")).nlink, 1);

    const file = join(await tempDir(), "upload.tar.gz");
    Deno.writeFileSync(file, proxy.uploads[0]);
    const out = await new Deno.Command("tar", {
      args: ["--full-time", "-tzvf", file],
      stdout: "piped",
      stderr: "piped",
      env: { TZ: "UTC", LC_ALL: "C.UTF-8" },
    }).output();
    assertEquals(new TextDecoder().decode(out.stderr), "");
    const listing = new TextDecoder().decode(out.stdout);
    const mtime = new Date(Number(lstatNs(join(src, "bin/tool")).mtime / 1_000_000n)).toISOString()
      .slice(0, 19).replace("T", " ");
    assertMatch(listing, new RegExp(`-rwxr-xr-x 0/0 +18 ${mtime}\\.\\d+ +bin/tool\\n`));
    assert(listing.includes(` ${korean}\n`), listing);
    assert(listing.includes(`${deep}/🎉 party.txt`), listing);
    assert(listing.includes(`latest -> ${korean}`), listing);
  } finally {
    await proxy.close();
  }
});

Deno.test("a file name that is not UTF-8 is reported, not mangled", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "ok.txt": "ok" });
  await new Deno.Command("python3", {
    args: ["-c", `open(b"${src}/bad\\xff\\xfename.txt", "w").write("x")`],
  })
    .output();
  const r = await backup(server, "bytes", src, ["--settle", "0"], 3);
  assertEquals(r.incomplete, 1);
  assertMatch(r.stderr, /unreadable: .*not valid UTF-8/);
  const ls = await keepOk(["ls", "-s", server.url, "-p", "bytes"]);
  assertEquals(ls.stdout.trim(), "ok.txt");
});

Deno.test("an 8 GiB sparse file round-trips (pax size), and comes back sparse", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const big = join(src, "disk.img");
  const size = 8 * 1024 ** 3 + 12345;
  const marks = [0, 4 * 1024 ** 3 + 7, size - 5000];
  const payload = randomData(5000);
  {
    using f = Deno.openSync(big, { write: true, create: true });
    for (const at of marks) {
      f.seekSync(at, Deno.SeekMode.Start);
      f.writeSync(payload);
    }
    f.truncateSync(size);
  }
  writeTree(src, { "small.txt": "small" });
  const r = await backup(server, "huge", src, ["--settle", "0"]);
  assertEquals(r.commit.counts.bytes, size + 5);
  // Deflate cannot beat ~1:100 on zeros (258-byte matches); that is the cost of a hole.
  assert(r.commit.stats.newBlobBytes < size / 50, `stored ${r.commit.stats.newBlobBytes} bytes`);
  const dest = await restoreLatest(server, "huge");
  const st = Deno.statSync(join(dest, "disk.img"));
  assertEquals(st.size, size);
  assert(
    st.blocks! * 512 < 64 * 1024 ** 2,
    `restored file uses ${st.blocks! * 512} bytes: not sparse`,
  );
  using g = Deno.openSync(join(dest, "disk.img"));
  for (const at of marks) {
    const buf = new Uint8Array(5000);
    g.seekSync(at, Deno.SeekMode.Start);
    let got = 0;
    while (got < buf.length) got += g.readSync(buf.subarray(got))!;
    assertEquals(buf, payload);
  }
});

Deno.test("ten thousand freshly written files settle together, in about one window", async () => {
  await using server = await startServer();
  const src = await tempDir();
  for (let d = 0; d < 100; d++) {
    Deno.mkdirSync(join(src, `o${d}`));
    for (let f = 0; f < 100; f++) {
      Deno.writeTextFileSync(join(src, `o${d}`, `${f}.o`), `${d}.${f}`);
    }
  }
  // Just written, and young for certain when the scan first looks: their mtime a minute
  // ahead (a NAS clock ahead of this host). With mtimes of now and a 500 ms window, writing
  // them and starting the CLI on a loaded box took longer than the window: all were old
  // enough at the first look, and none waited. Each must be watched, all in one window.
  age(src, -60);
  // --no-sync: this is about the windows; a syncfs may wait for other tests' writes.
  const r = await backup(server, "settle", src, ["--settle", "1s", "--no-sync"]);
  assertEquals(r.commit.counts.files, 10_000);
  assertEquals(r.incomplete, 0);
  const waited = (r as unknown as { settleMs: number }).settleMs;
  assert(waited >= 1000, `did not wait: ${waited} ms`);
  // One window per file would be 10,000 × 1 s; one for all, ~1 s (8 s: a loaded box).
  assert(waited < 8000, `waited ${waited} ms: not one window for all files`);
});
