/**
 * Odd trees a build host can hold, end to end: names that are not UTF-8,
 * far-dated files, FIFOs and symlinks where control files or data files were,
 * paths at the top of the code-point range, and a source directory given
 * through a symlink. Each must back up without failing the whole backup or
 * hanging, and restore.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { commitHeader, T0, Upload } from "./craft.ts";
import {
  json,
  KEEP,
  keepOk,
  snapshot,
  startServer,
  tempDir,
  type TestServer,
  writeTree,
} from "./helpers.ts";
import { lstatNs } from "../src/platform/fs_native.ts";

interface BackupJson {
  commit: { seq: number; counts: Record<string, number>; stats: Record<string, number> };
  incomplete: number;
  problems: { path: string; reason: string; kind: string }[];
}

/** Runs the CLI, killed after `seconds` (a hang fails the test instead of the run). */
async function keepWithin(
  seconds: number,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(KEEP, {
    args,
    env: { KEEP_SERVER: "", KEEP_PROJECT: "", KEEP_TOKEN: "" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, seconds * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const r = {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
  assert(out.signal === null, `keep ${args.join(" ")} hung (killed after ${seconds} s)`);
  return r;
}

async function sh(script: string, cwd: string): Promise<void> {
  const out = await new Deno.Command("sh", { args: ["-c", script], cwd, stderr: "piped" })
    .output();
  if (!out.success) throw new Error(`sh -c ${script}: ${new TextDecoder().decode(out.stderr)}`);
}

async function backupJson(
  server: TestServer,
  project: string,
  dir: string,
  flags: string[] = [],
  code = 0,
): Promise<BackupJson & { stderr: string }> {
  const r = await keepWithin(60, [
    "backup",
    "-s",
    server.url,
    "-p",
    project,
    "--json",
    "--settle",
    "0",
    ...flags,
    dir,
  ]);
  assertEquals(r.code, code, r.stdout + r.stderr);
  return { ...JSON.parse(r.stdout), stderr: r.stderr };
}

Deno.test("a name that is not UTF-8 beside the name it decodes to is reported alone; the rest backs up", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "a\uFFFD": "the real one\n", "b.txt": "b\n", "d/x": "x\n" });
  // "a\xff" (invalid UTF-8) decodes to the same text as "a\uFFFD"; a directory too.
  await sh("printf 'bad\\n' > \"$(printf 'a\\377')\"; mkdir \"$(printf 'd/e\\376')\"", src);
  const b = await backupJson(server, "utf", src, [], 3);
  const bad = b.problems.filter((p) => /not valid UTF-8/.test(p.reason));
  assertEquals(bad.length, 2, JSON.stringify(b.problems));
  assertEquals(b.commit.counts.files, 3);
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "utf", join(dest, "r")]);
  assertEquals(Deno.readTextFileSync(join(dest, "r", "a\uFFFD")), "the real one\n");
  assertEquals(Deno.readTextFileSync(join(dest, "r", "d/x")), "x\n");
  // Also through Deno's own listing (no getdents: the lossy names collide).
  const viaDeno = await backupJson(server, "utf2", src, ["--jobs", "4"], 3);
  assertEquals(viaDeno.commit.counts.files, 3);
  assert(viaDeno.problems.some((p) => /not valid UTF-8/.test(p.reason)));
});

Deno.test("files dated past 2262 or before 1677 back up with their mtime clamped and reported; the next backup sends nothing", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "far.txt": "future\n", "now.txt": "now\n" });
  await sh("touch -d 2300-01-01 far.txt", src);
  // tmpfs holds any 64-bit second count (ext4 clamps 1600 to 1901 itself).
  let shm: string | null = null;
  try {
    shm = Deno.makeTempDirSync({ dir: "/dev/shm", prefix: "keep-old-" });
    Deno.writeTextFileSync(join(shm, "old.txt"), "old\n");
    await sh("touch -d 1600-01-01 old.txt", shm);
    Deno.symlinkSync(shm, join(src, "shm-link")); // a symlink: stored as a link
  } catch {
    shm = null;
  }
  const first = await backupJson(server, "far", src);
  assertEquals(first.incomplete, 0);
  const adjusted = first.problems.filter((p) => p.kind === "adjusted").map((p) => p.path);
  assertEquals(adjusted, ["far.txt"]);
  assertMatch(first.problems[0].reason, /outside 1677-09-21\.\.2262-04-11/);
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "far", join(dest, "r")]);
  assertEquals(Deno.readTextFileSync(join(dest, "r", "far.txt")), "future\n");
  assertEquals(lstatNs(join(dest, "r", "far.txt")).mtime, (1n << 63n) - 1n);
  const second = await backupJson(server, "far", src);
  assertEquals(second.commit.stats.filesReceived, 0, JSON.stringify(second));
  if (shm) {
    // The tree on tmpfs itself, with a file from 1600.
    const low = await backupJson(server, "old", shm);
    assertEquals(low.problems.map((p) => p.kind), ["adjusted"]);
    const r2 = await tempDir();
    await keepOk(["restore", "-s", server.url, "-p", "old", join(r2, "r")]);
    assertEquals(Deno.readTextFileSync(join(r2, "r", "old.txt")), "old\n");
    Deno.removeSync(shm, { recursive: true });
  }
});

Deno.test("a file recorded at the earliest time (-2^63 ns) restores", async () => {
  await using server = await startServer();
  const up = new Upload().commit(commitHeader(null))
    .file("newest.txt", "y\n", { mtime: (1n << 63n) - 1n })
    .file("normal.txt", "z\n", { mtime: T0 })
    .file("oldest.txt", "x\n", { mtime: -(1n << 63n) })
    .changes([]).end().bytes();
  const res = await fetch(`${server.url}/v1/projects/t/commits`, {
    method: "POST",
    body: new Uint8Array(up),
  });
  assertEquals(res.status, 201, await res.text());
  const dest = await tempDir();
  const r = await keepWithin(30, ["restore", "-s", server.url, "-p", "t", join(dest, "r")]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(Deno.readTextFileSync(join(dest, "r", "oldest.txt")), "x\n");
  assertEquals(lstatNs(join(dest, "r", "normal.txt")).mtime, T0);
});

Deno.test("FIFOs and symlinks where control files are never block or flood the backup", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, {
    "a/file.txt": "a\n",
    "b/file.txt": "b\n",
    "c/file.txt": "c\n",
    "d/file.txt": "d\n",
  });
  await sh("mkfifo a/CACHEDIR.TAG b/.backupignore && ln -s /dev/zero c/.backupignore", src);
  Deno.symlinkSync(join(src, "a/CACHEDIR.TAG"), join(src, "d/.backupignore"));
  // Nothing is left out of the commit: an ignore file that cannot be used is
  // a warning (its rules are not applied), not an incomplete backup.
  const b = await backupJson(server, "ctl", src, [], 0);
  assertEquals(b.commit.counts.files, 4, JSON.stringify(b));
  assertEquals(b.incomplete, 0);
  const said = (path: string, kind: string, re: RegExp) =>
    assert(
      b.problems.some((p) => p.path === path && p.kind === kind && re.test(p.reason)),
      `${path}: ${kind} ${re} in ${JSON.stringify(b.problems)}`,
    );
  said("b/.backupignore", "rules", /rules are not applied: cannot read it: is not a regular file/);
  said("c/.backupignore", "rules", /rules are not applied: cannot read it: is a symlink/);
  said("d/.backupignore", "rules", /rules are not applied: cannot read it: is a symlink/);
  // The FIFO named CACHEDIR.TAG is no cache tag: a/ is backed up, the FIFO skipped.
  said("a/CACHEDIR.TAG", "skipped", /special file/);
});

Deno.test("a file swapped for a FIFO or a symlink to a FIFO during the settle window is reported, not waited on", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, { "keep.txt": "stays\n" });
  await keepOk(["backup", "-s", server.url, "-p", "swap", "--settle", "0", src]);
  // New files: candidates of the settle check (window 1 s).
  writeTree(src, { "f1": "one\n", "f2": "two\n", "fifo-target/dummy": "\n" });
  const run = keepWithin(60, [
    "backup",
    "-s",
    server.url,
    "-p",
    "swap",
    "--settle",
    "1s",
    "--json",
    src,
  ]);
  await new Promise((r) => setTimeout(r, 400));
  await sh("rm f1 && mkfifo f1 && rm f2 && mkfifo fifo-target/p && ln -s fifo-target/p f2", src);
  const r = await run;
  assert(r.code === 0 || r.code === 3, r.stderr);
  const b = JSON.parse(r.stdout) as BackupJson;
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "swap", join(dest, "r")]);
  assertEquals(Deno.readTextFileSync(join(dest, "r", "keep.txt")), "stays\n");
  // Whatever the race gave: f1 is no FIFO content, f2 at most a symlink.
  const snap = snapshot(join(dest, "r"));
  assert(!snap["f1"] || snap["f1"].type === "file", JSON.stringify(b.problems));
  assert(!snap["f2"] || snap["f2"].type !== "file" || snap["f2"].content !== undefined);
});

Deno.test("paths that start with U+10FFFF U+10FFFF are in archives and in the manifest a backup diffs against", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const top = "\u{10FFFF}\u{10FFFF}";
  writeTree(src, { [`${top}x.txt`]: "top\n", [`${top}dir/y.txt`]: "y\n", "a.txt": "a\n" });
  await keepOk(["backup", "-s", server.url, "-p", "top", "--settle", "0", src]);
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "top", join(dest, "r")]);
  assertEquals(Deno.readTextFileSync(join(dest, "r", `${top}x.txt`)), "top\n");
  assertEquals(Deno.readTextFileSync(join(dest, "r", `${top}dir/y.txt`)), "y\n");
  const again = await backupJson(server, "top", src);
  assertEquals(again.commit.stats.filesReceived, 0);
  assertEquals(again.commit.counts.unchanged, 4);
});

Deno.test("keep backup LINK backs up the directory the symlink points to, also as LINK/", async () => {
  await using server = await startServer();
  const real = await tempDir();
  writeTree(real, { "src/main.c": "int main(void) { return 0; }\n", "Makefile": "all:\n" });
  const links = await tempDir();
  const link = join(links, "build");
  Deno.symlinkSync(real, link);
  const b = json<BackupJson>(
    await keepOk(["backup", "-s", server.url, "-p", "lnk", "--settle", "0", "--json", link]),
  );
  assertEquals(b.commit.counts.files, 2);
  const b2 = json<BackupJson>(
    await keepOk([
      "backup",
      "-s",
      server.url,
      "-p",
      "lnk",
      "--settle",
      "0",
      "--json",
      link + "/",
    ]),
  );
  assertEquals(b2.commit.stats.filesReceived, 0);
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "lnk", join(dest, "r")]);
  assertEquals(
    Deno.readTextFileSync(join(dest, "r", "src/main.c")),
    "int main(void) { return 0; }\n",
  );
});

Deno.test("names that start with U+FEFF (a byte-order mark) are names like any other, next to their twins", async () => {
  await using server = await startServer();
  const src = await tempDir();
  writeTree(src, {
    "\uFEFFbom": "with a mark\n",
    "bom": "without\n",
    "\uFEFFdir/inner": "inside\n",
    "mid\uFEFFdle": "middle\n",
  });
  const b = await backupJson(server, "bom", src);
  assertEquals([b.commit.counts.files, b.incomplete, b.problems.length], [4, 0, 0]);
  const out = join(await tempDir(), "out");
  await keepOk(["restore", "-s", server.url, "-p", "bom", out]);
  assertEquals(snapshot(out), snapshot(src));
  // And the next backup finds nothing changed.
  const again = await backupJson(server, "bom", src);
  assertEquals(again.commit.stats.filesReceived, 0);
});

Deno.test("a tree under /dev/shm backs up and restores (Deno asks for all permissions there)", async () => {
  await using server = await startServer();
  const base = Deno.makeTempDirSync({ dir: "/dev/shm", prefix: "keep-shm-" });
  try {
    writeTree(join(base, "src"), { "a.txt": "in shm\n", "d/b.txt": "b\n" });
    await backupJson(server, "shm", join(base, "src"));
    await keepOk(["restore", "-s", server.url, "-p", "shm", join(base, "out")]);
    assertEquals(snapshot(join(base, "out")), snapshot(join(base, "src")));
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
});
