import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals } from "../../tests/assert.ts";
import { noise } from "../../tests/craft.ts";
import { scopedTempDir, writeTree } from "../../tests/helpers.ts";
import { KeepError } from "../errors.ts";
import { ArchiveReader } from "../format/archive_reader.ts";
import {
  type ChangeRecord,
  type CommitInfo,
  type Entry,
  entryToJson,
  entryToStatJson,
  entryTypeOf,
  parseChangeRecord,
  parseUploadHeader,
  type UploadHeader,
} from "../format/manifest.ts";
import { comparePaths } from "../format/paths.ts";
import type { TarHeader } from "../format/tar.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import { lstatNs } from "../platform/fs_native.ts";
import { type BackupRemote, runBackup } from "./backup.ts";

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** An upload as the fake server read it (through ArchiveReader, as the real one does). */
interface Received {
  header: UploadHeader;
  sent: { h: TarHeader; data: Uint8Array }[];
  changes: ChangeRecord[];
}

async function receive(body: ReadableStream<Uint8Array>): Promise<Received> {
  const sent: Received["sent"] = [];
  const controls = new Map<string, string>();
  let cur: { h: TarHeader; parts: Uint8Array[] } | null = null;
  const reader = new ArchiveReader({
    entry: (h) => cur = { h, parts: [] },
    data: (d) => cur!.parts.push(d.slice()),
    entryEnd: () => {
      const data = concatBytes(cur!.parts);
      const control = cur!.h.keep?.control;
      if (control) controls.set(control, new TextDecoder().decode(data));
      else sent.push({ h: cur!.h, data });
    },
  });
  for await (const chunk of body) reader.push(chunk);
  reader.end();
  const lines = (controls.get("changes") ?? "").split("\n").filter((l) => l);
  return {
    header: parseUploadHeader(controls.get("commit")!),
    sent,
    changes: lines.map(parseChangeRecord),
  };
}

/**
 * A server in memory: a head commit and its manifest; uploads are read,
 * recorded and applied. `onUpload` may answer "conflict" (a 409) instead.
 */
class FakeRemote implements BackupRemote {
  head: CommitInfo | null = null;
  manifest: Entry[] = [];
  received: Received[] = [];
  lookups: string[][] = [];
  /** What `entries` answers for a path (default: the manifest's entry). */
  lookup = (path: string): Entry | undefined => this.manifest.find((e) => e.path === path);
  onUpload: (r: Received, n: number) => "conflict" | void = () => {};

  latest(stat?: boolean) {
    const line = stat ? entryToStatJson : entryToJson;
    const lines = this.manifest.map(line);
    return Promise.resolve({
      commit: this.head,
      stat: stat ?? false,
      lines: (async function* () {
        if (lines.length) yield lines;
      })(),
    });
  }

  entries(_commit: string, paths: string[]): Promise<Entry[]> {
    this.lookups.push(paths);
    return Promise.resolve(paths.flatMap((p) => this.lookup(p) ?? []));
  }

  async upload(body: ReadableStream<Uint8Array>): Promise<CommitInfo> {
    const r = await receive(body);
    this.received.push(r);
    if (this.onUpload(r, this.received.length) === "conflict") {
      throw new KeepError("conflict", "Cannot commit: another backup landed first");
    }
    if (r.header.parent !== (this.head?.id ?? null)) throw new Error("fake: parent is not head");
    return this.land(r);
  }

  /** Applies an upload to the manifest and makes it the head. */
  land(r: Received, extra: Entry[] = []): CommitInfo {
    const byPath = new Map(this.manifest.map((e) => [e.path, e]));
    for (const { h, data } of r.sent) {
      const e: Entry = {
        path: h.path,
        type: entryTypeOf(h.type),
        size: h.size,
        mode: h.mode & 0o7777,
        mtime: h.mtime,
        ctime: h.ctime ?? 0n,
      };
      if (h.type === "file") e.hash = sha256(data);
      if (h.linkname) e.target = h.linkname;
      byPath.set(e.path, e);
    }
    for (const c of r.changes) {
      if (c.op === "del") byPath.delete(c.p);
      if (c.op === "meta") byPath.set(c.e.path, c.e);
    }
    for (const e of extra) byPath.set(e.path, e);
    this.manifest = [...byPath.values()].sort((a, b) => comparePaths(a.path, b.path));
    const seq = (this.head?.seq ?? 0) + 1;
    this.head = {
      ...r.header,
      id: `c0mm17${String(seq).padStart(10, "0")}`,
      project: "app",
      seq,
      time: new Date().toISOString(),
      // The backup reports these; the tests look at what was sent instead.
      counts: {
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
        added: 0,
        changed: 0,
        deleted: 0,
        metadata: 0,
        unchanged: 0,
        flagged: 0,
      },
      stats: {
        filesReceived: 0,
        bytesReceived: 0,
        wireBytes: 0,
        newBlobs: 0,
        newBlobBytes: 0,
        seconds: 0,
      },
    };
    return this.head;
  }
}

/** A tree whose times are an hour old (no file is racily clean or still settling). */
function oldTree(root: string): void {
  writeTree(root, {
    "a.txt": "alpha\n",
    "big.bin": noise(9 << 20, 1), // over 8 MiB: streamed, not read whole
    "dir/b.bin": noise(100_000, 2),
    "dir/sub/empty": "",
    "link": { link: "a.txt" },
  });
  const old = new Date(Date.now() - 3600_000);
  for (const p of ["a.txt", "big.bin", "dir/b.bin", "dir/sub/empty", "dir/sub", "dir"]) {
    Deno.utimeSync(join(root, p), old, old);
  }
}

const OPTIONS = { settleMs: 0, host: "test-host", message: "m" };

Deno.test("runBackup sends every entry of a first backup, in path order, with its content", async () => {
  using src = scopedTempDir("keep-backup-");
  oldTree(src.path);
  const remote = new FakeRemote();
  const r = await runBackup(src.path, remote, { ...OPTIONS, message: "first" });
  assertEquals(r.attempts, 1);
  assertEquals(r.commit.id, remote.head!.id);
  assertEquals(remote.received.length, 1);
  const [up] = remote.received;
  assertEquals([up.header.parent, up.header.message, up.header.host], [null, "first", "test-host"]);
  assertEquals(up.header.source, src.path);
  assertEquals(up.sent.map((s) => [s.h.path, s.h.type]), [
    ["a.txt", "file"],
    ["big.bin", "file"],
    ["dir", "dir"],
    ["dir/b.bin", "file"],
    ["dir/sub", "dir"],
    ["dir/sub/empty", "file"],
    ["link", "symlink"],
  ]);
  for (const s of up.sent) {
    if (s.h.type === "file") assertEquals(s.data, Deno.readFileSync(join(src.path, s.h.path)));
    const st = lstatNs(join(src.path, s.h.path));
    assertEquals(
      [s.h.mode & 0o7777, s.h.mtime, s.h.ctime],
      [st.mode, st.mtime, st.ctime],
      s.h.path,
    );
  }
  assertEquals(up.sent[6].h.linkname, "a.txt");
  assertEquals(up.changes, []);
  assertEquals(remote.lookups, [], "nothing to hash: no lookups");
});

Deno.test("runBackup after a 409 diffs again against the new head and succeeds on the second attempt", async () => {
  using src = scopedTempDir("keep-backup-");
  oldTree(src.path);
  const remote = new FakeRemote();
  // Another host lands first: the same tree, plus a file this host does not have.
  const theirs: Entry = {
    path: "theirs.txt",
    type: "f",
    size: 1,
    mode: 0o644,
    mtime: 1n,
    ctime: 1n,
  };
  theirs.hash = sha256(new Uint8Array([0x74]));
  remote.onUpload = (up, n) => {
    if (n > 1) return;
    remote.land(up, [theirs]);
    return "conflict";
  };
  const r = await runBackup(src.path, remote, OPTIONS);
  assertEquals(r.attempts, 2);
  const [first, second] = remote.received;
  assertEquals(first.header.parent, null);
  assertEquals(second.header.parent, "c0mm170000000001");
  // The second attempt sends nothing the new head has, and deletes what the scan lacks.
  assertEquals(second.sent.map((s) => s.h.path), []);
  assertEquals(second.changes, [{ op: "del", p: "theirs.txt" }]);
  assertEquals(r.commit.seq, 2);
  assertEquals(remote.manifest.map((e) => e.path).includes("theirs.txt"), false);
});

Deno.test("runBackup records a del for each path the latest manifest lists and the scan lacks", async () => {
  using src = scopedTempDir("keep-backup-");
  oldTree(src.path);
  const remote = new FakeRemote();
  await runBackup(src.path, remote, OPTIONS);
  Deno.removeSync(join(src.path, "dir/sub"), { recursive: true });
  Deno.removeSync(join(src.path, "link"));
  const r = await runBackup(src.path, remote, OPTIONS);
  const up = remote.received[1];
  assertEquals(up.header.parent, "c0mm170000000001");
  // Removing dir/sub moved dir's mtime: its header is sent again, nothing else.
  assertEquals(up.sent.map((s) => s.h.path), ["dir"]);
  assertEquals(up.changes, [
    { op: "del", p: "dir/sub" },
    { op: "del", p: "dir/sub/empty" },
    { op: "del", p: "link" },
  ]);
  assertEquals(r.attempts, 1);
});

Deno.test("runBackup records a ctime-only change as metadata with the hashes entries() answers", async () => {
  using src = scopedTempDir("keep-backup-");
  oldTree(src.path);
  const remote = new FakeRemote();
  await runBackup(src.path, remote, OPTIONS);
  const before = remote.manifest.find((e) => e.path === "a.txt")!.ctime;
  // Same content and mtime, a new ctime: suspects, whose previous hashes are asked for.
  for (const p of ["a.txt", "dir/b.bin"]) Deno.chmodSync(join(src.path, p), 0o644);
  // The server's hash of dir/b.bin is not that of its content: that one is sent whole.
  const real = remote.lookup;
  remote.lookup = (p) => {
    const e = real(p);
    return e && p === "dir/b.bin" ? { ...e, hash: "00".repeat(32) } : e;
  };
  const r = await runBackup(src.path, remote, OPTIONS);
  assertEquals(remote.lookups, [["a.txt", "dir/b.bin"]]);
  assertEquals(r.hashed, 2);
  const up = remote.received[1];
  assertEquals(up.sent.map((s) => s.h.path), ["dir/b.bin"]);
  assertEquals(up.changes.length, 1);
  const meta = up.changes[0];
  assert(meta.op === "meta", `a meta record, not ${meta.op}`);
  assertEquals([meta.e.path, meta.e.hash], ["a.txt", sha256(new TextEncoder().encode("alpha\n"))]);
  assertEquals(meta.e.ctime, lstatNs(join(src.path, "a.txt")).ctime, "the new ctime");
  assert(meta.e.ctime !== before, "the ctime moved");
});
