import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../../tests/assert.ts";
import { scopedTempDir } from "../../tests/helpers.ts";
import { lstatNs } from "../platform/fs_native.ts";
import { ScanTable } from "./scan.ts";
import { settleFiles } from "./settle.ts";

/** Writes `names` under `root` (unless `existing`) and scans them as a backup would. */
function scanned(root: string, names: string[], existing = false): ScanTable {
  if (!existing) {
    for (const name of names) {
      Deno.writeTextFileSync(join(root, name), `${name}\n`);
    }
  }
  return ScanTable.of(names.map((path) => {
    const st = lstatNs(join(root, path));
    return { path, type: "f", size: st.size, mode: st.mode, mtime: st.mtime, ctime: st.ctime };
  }));
}

const all = (t: ScanTable) => Array.from({ length: t.length }, (_, i) => i);

Deno.test("settleFiles settles fresh files that do not move within about one window", async () => {
  using dir = scopedTempDir("keep-settle-");
  const files = scanned(dir.path, ["a", "b", "c"]);
  const waits: number[] = [];
  // A window long enough that a loaded box's stall between writing the
  // files and the first look does not let them age past it.
  const r = await settleFiles(dir.path, files, all(files), {
    windowMs: 1500,
    // No syncfs first: on a loaded box it can take longer than the window (this is about the window).
    sync: false,
    onWait: (n) => waits.push(n),
  });
  assertEquals(r.settled.sort(), [0, 1, 2]);
  assertEquals(r.unsettled, []);
  assertEquals(
    waits,
    [3],
    `all three observed together, for one window (waits ${waits}, ${r.waitedMs} ms)`,
  );
  // The upper bound is loose: a loaded 2-core CI box stalls timers by hundreds of ms.
  assert(r.waitedMs >= 1000 && r.waitedMs < 6000, `waited ${r.waitedMs} ms`);
});

Deno.test("settleFiles settles files older than the window without waiting", async () => {
  using dir = scopedTempDir("keep-settle-");
  const old = new Date(Date.now() - 60_000);
  for (const name of ["a", "b"]) {
    Deno.writeTextFileSync(join(dir.path, name), name);
    Deno.utimeSync(join(dir.path, name), old, old);
  }
  const files = scanned(dir.path, ["a", "b"], true);
  // A long window, so "without waiting" stays clear of timer stalls on a loaded machine.
  const r = await settleFiles(dir.path, files, [0, 1], { windowMs: 3000, sync: false });
  assertEquals([r.settled, r.unsettled], [[0, 1], []]);
  assert(r.waitedMs < 1500, `waited ${r.waitedMs} ms`);
});

Deno.test("settleFiles reports a file appended to every 50 ms until after maxWaitMs as unsettled", async () => {
  using dir = scopedTempDir("keep-settle-");
  const files = scanned(dir.path, ["growing.log", "still.txt"]);
  const growing = join(dir.path, "growing.log");
  const timer = setInterval(() => Deno.writeTextFileSync(growing, "more\n", { append: true }), 50);
  let r;
  try {
    // A window of 8 appends: a stalled timer on a loaded machine does not let the file settle.
    r = await settleFiles(dir.path, files, [0, 1], { windowMs: 400, maxWaitMs: 1200, sync: false });
  } finally {
    clearInterval(timer);
  }
  assertEquals(r.settled, [1]);
  assertEquals(r.unsettled.map((u) => [u.index, u.path]), [[0, "growing.log"]]);
  assertMatch(r.unsettled[0].reason, /^still being written after \d+\.\d s$/);
  assert(r.waitedMs >= 1200 && r.waitedMs < 4000, `waited ${r.waitedMs} ms`);
  // Only settled rows take a fresh stat: the unsettled file's row still holds the scan's.
  assertEquals(files.size(0), "growing.log\n".length);
});

Deno.test("settleFiles hands back a file deleted during the window as settled, for the pack step to report", async () => {
  using dir = scopedTempDir("keep-settle-");
  const files = scanned(dir.path, ["gone.txt", "kept.txt"]);
  setTimeout(() => Deno.removeSync(join(dir.path, "gone.txt")), 50);
  const r = await settleFiles(dir.path, files, [0, 1], { windowMs: 200, sync: false });
  // Not lost and not waited for: the upload finds it missing and reports it.
  assertEquals(r.settled.sort(), [0, 1]);
  assertEquals(r.unsettled, []);
  assert(r.waitedMs < 3000, `waited ${r.waitedMs} ms`);
});
