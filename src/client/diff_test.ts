import { assert, assertEquals } from "../../tests/assert.ts";
import { rng } from "../../tests/seeded.ts";
import { comparePaths } from "../format/paths.ts";
import { type DiffPlan, diffTree } from "./diff.ts";
import { type Entry, entryToJson } from "../format/manifest.ts";
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
  const plan = await diffTree([now], [[entryToJson(prev)]], { granularity: 1_000_000_000n });
  assertEquals(plan.suspects.map((s) => [s.entry.path, s.reason]), [["lib.a", "ctime"]]);
  assertEquals(plan.unchanged, 0);
  const same = await diffTree([{ ...now, ctime: prev.ctime }], [[entryToJson(prev)]], {
    granularity: 1_000_000_000n,
  });
  assertEquals([same.unchanged, same.suspects.length], [1, 0]);
});

Deno.test("diffTree's undecoded fast path classifies exactly as decoding every line", async () => {
  // A seeded mix of every kind of difference the rules look at.
  const rand = rng(7);
  const names = ["a", 'q"uote', "back\\slash", "tab\there", "é", "😀", "a-b", "a.b", "sp ace"];
  const prevs: Entry[] = [];
  const scan: ScanEntry[] = [];
  // Times around the epoch and whole seconds too: the fast path splits them into s and ns.
  const bases = [S, S, S, 0n, 5n, 999_999_999n, 1_000_000_000n, -1_500_000_000n];
  for (let i = 0; i < 3000; i++) {
    const path = `d${i % 7}/${names[i % names.length]}${i}`;
    const type = (["f", "f", "f", "d", "l"] as const)[rand(5)];
    const base = bases[rand(bases.length)];
    const prev: Entry = {
      path,
      type,
      size: type === "f" ? rand(3) * 1000 + (i % 2 ? 1e12 : 0) : 0,
      mode: 0o644,
      mtime: base + BigInt(rand(5)) * 1_000_000_000n + BigInt(rand(2) * 123),
      ctime: base + BigInt(rand(5)) * 1_000_000_000n,
    };
    if (type === "f") prev.hash = "ab".repeat(32);
    if (type === "l") prev.target = rand(2) ? "t" : 'q"t';
    if (rand(20) === 0) prev.flag = "unreadable";
    const now: ScanEntry = { ...prev };
    delete (now as Partial<Entry>).hash;
    delete (now as Partial<Entry>).flag;
    switch (rand(10)) {
      case 0:
        now.size += 1;
        break;
      case 1:
        now.mode = 0o755;
        break;
      case 2:
        now.mtime += 1n;
        break;
      case 3:
        now.ctime += 5n;
        break;
      case 4:
        if (now.type === "l") now.target = "other";
        break;
      case 5:
        now.mtime -= 1_000_000_000n;
        break;
      case 6:
        now.ctime += 999_999_999n;
        break;
    }
    if (rand(15) !== 0) prevs.push(prev); // else: added
    if (rand(15) !== 0) scan.push(now); // else: deleted
  }
  const byPath = (a: { path: string }, b: { path: string }) => comparePaths(a.path, b.path);
  prevs.sort(byPath);
  scan.sort(byPath);
  const lines = prevs.map(entryToJson);
  const batches = [lines.slice(0, 1000), lines.slice(1000)];
  const enc = new TextEncoder();
  const byteBatches = [
    enc.encode(lines.slice(0, 1000).join("\n") + "\n\n"),
    enc.encode(lines.slice(1000).join("\n")),
  ];
  for (const parentScanTime of [undefined, S + 3_000_000_000n, 1_000_000_000n, 3_500_000_000n]) {
    const options = { granularity: 1n, parentScanTime, racyMargin: 2_000_000_000n };
    const fast = await diffTree(scan, batches, options);
    const slow = await diffTree(scan, batches, { ...options, fastPath: false });
    // (send is a table: compared as the entries it holds)
    const plain = (p: DiffPlan) => ({ ...p, undecoded: 0, send: p.send.toArray() });
    assertEquals(plain(fast), plain(slow));
    assertEquals(slow.undecoded, 0);
    // The same lines as bytes (a batch boundary inside no line, one last line unterminated).
    const bytes = await diffTree(scan, byteBatches, options);
    assertEquals(plain(bytes), plain(slow));
    // Decoded lines and bytes go through the same byte comparison; non-ASCII paths and times
    // before 1970 + 1 s are always decoded.
    assertEquals(bytes.undecoded, fast.undecoded);
    const counts = [fast.undecoded, fast.unchanged, fast.suspects.length, fast.send.length];
    assert(
      fast.undecoded > 50 && fast.suspects.length > 100 && fast.send.length > 300,
      `${counts}`,
    );
  }
});
