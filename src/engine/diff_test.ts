import { assertEquals } from "../../tests/assert.ts";
import { diffTree } from "./diff.ts";
import type { Entry } from "./manifest.ts";
import type { ScanEntry } from "./scan.ts";

const S = 1_700_000_000_000_000_000n; // a whole second, as on a tree with fixed mtimes

Deno.test("diffTree compares ctime exactly, whatever the mtime granularity", async () => {
  const prev: Entry = {
    path: "lib.a",
    type: "f",
    size: 8,
    mode: 0o644,
    mtime: S,
    ctime: S + 100n,
    hash: "0".repeat(64),
  };
  // Rebuilt with the same size and its mtime put back: only ctime moved, by less than the tick.
  const now: ScanEntry = {
    path: "lib.a",
    type: "f",
    size: 8,
    mode: 0o644,
    mtime: S,
    ctime: S + 200n,
  };
  const plan = await diffTree([now], [prev], { granularity: 1_000_000_000n });
  assertEquals(plan.suspects.map((s) => [s.entry.path, s.reason]), [["lib.a", "ctime"]]);
  assertEquals(plan.unchanged, 0);
  const same = await diffTree([{ ...now, ctime: prev.ctime }], [prev], {
    granularity: 1_000_000_000n,
  });
  assertEquals([same.unchanged, same.suspects.length], [1, 0]);
});
