/**
 * Picks FastCDC's sizes by measurement (issue 18, part 2): generates the bench's
 * large dataset, cuts every file, applies the bench's edits inside big files
 * (DatasetBuilder.mutateLarge) and cuts again, and reports for several
 * average sizes how many chunks and bytes are new after the edits (what a
 * chunked store would add, before compression) and the chunker's speed.
 *
 *   deno run -A bench/chunking.ts [--dir /tmp] [--rounds 1]
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type CdcSizes, FastCdc } from "../src/format/fastcdc.ts";
import { DatasetBuilder, type Tree } from "./datasets.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { dir: { type: "string", default: "/tmp" }, rounds: { type: "string", default: "1" } },
});
const KiB = 1024;
const MiB = 1 << 20;
const CANDIDATES: CdcSizes[] = [
  { min: 64 * KiB, avg: 256 * KiB, max: 1 * MiB },
  { min: 128 * KiB, avg: 512 * KiB, max: 2 * MiB },
  { min: 256 * KiB, avg: 1 * MiB, max: 4 * MiB },
  { min: 512 * KiB, avg: 2 * MiB, max: 8 * MiB },
];

/** Chunk hashes (and sizes) of every file of the tree under `sizes`; seconds spent cutting. */
function chunksOf(tree: Tree, sizes: CdcSizes): { chunks: Map<string, number>; seconds: number } {
  const chunks = new Map<string, number>();
  let seconds = 0;
  const buf = new Uint8Array(4 * MiB);
  for (const f of tree.files) {
    const file = Deno.openSync(join(tree.root, f.path));
    const cdc = new FastCdc(sizes);
    let pending: Uint8Array[] = [];
    let start = 0;
    const emit = (end: number, pos: number, piece: Uint8Array, off: number) => {
      // The chunk is what is pending plus piece[off .. end - pos].
      const h = createHash("sha256");
      for (const p of pending) h.update(p);
      h.update(piece.subarray(off, end - pos));
      chunks.set(h.digest("hex"), end - start);
      pending = [];
      start = end;
    };
    for (;;) {
      const n = file.readSync(buf);
      if (!n) break;
      const piece = buf.subarray(0, n);
      const pos = cdc.position;
      const t = performance.now();
      const cuts = cdc.push(piece);
      seconds += (performance.now() - t) / 1000;
      let off = 0;
      for (const c of cuts) {
        emit(c, pos, piece, off);
        off = c - pos;
      }
      pending.push(piece.slice(off));
    }
    for (const c of cdc.end()) {
      const h = createHash("sha256");
      for (const p of pending) h.update(p);
      chunks.set(h.digest("hex"), c - start);
    }
    file.close();
  }
  return { chunks, seconds };
}

const root = Deno.makeTempDirSync({ dir: values.dir, prefix: "keep-chunking-" });
try {
  const builder = new DatasetBuilder(1);
  const tree = builder.large(join(root, "large"));
  console.log(`large: ${tree.files.length} files, ${(tree.bytes / 1e6).toFixed(1)} MB`);
  const before = CANDIDATES.map((s) => chunksOf(tree, s));
  let written = 0;
  for (let r = 1; r <= Number(values.rounds); r++) {
    written += builder.mutateLarge(tree, r).bytesWritten;
  }
  console.log(`edits: ${(written / 1e6).toFixed(1)} MB of new bytes in 4 files`);
  console.log("| min / avg / max | chunks | new chunks | new bytes | cut MB/s |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  CANDIDATES.forEach((s, i) => {
    const after = chunksOf(tree, s);
    let n = 0;
    let bytes = 0;
    for (const [h, size] of after.chunks) {
      if (!before[i].chunks.has(h)) {
        n++;
        bytes += size;
      }
    }
    const k = (x: number) => x >= MiB ? `${x / MiB} MiB` : `${x / KiB} KiB`;
    console.log(
      `| ${k(s.min)} / ${k(s.avg)} / ${k(s.max)} | ${after.chunks.size} | ${n} | ${
        (bytes / 1e6).toFixed(1)
      } MB | ${(tree.bytes / 1e6 / after.seconds).toFixed(0)} |`,
    );
  });
} finally {
  Deno.removeSync(root, { recursive: true });
}
