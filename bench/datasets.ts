/**
 * The benchmark's datasets, generated from a seed so two runs (or two
 * machines) measure the same bytes: `small` (many small files, the typical
 * build tree), `large` (a few big files), a mutation round on `small`, and
 * the two slow extras (`million`: a 1M-file tree for the manifest; `huge`:
 * one multi-GiB file for the server's memory during a long upload).
 *
 * @module
 */

import { join } from "node:path";
import { ContentGen } from "./content.ts";
import { Prng } from "./prng.ts";

/** One generated file, tracked so mutations and restore checks need no re-walk. */
export interface FileRec {
  /** Path relative to the tree's root. */
  path: string;
  size: number;
  /** Compressible text (true) or random bytes. */
  text: boolean;
}

/** A generated directory tree. */
export interface Tree {
  /** Absolute path of the tree (the directory that is backed up). */
  root: string;
  files: FileRec[];
  /** Leaf directories (relative), where files live. */
  dirs: string[];
  /** Directories in the tree, leaves and their parents (not counting the root). */
  dirCount: number;
  /** Sum of file sizes. */
  bytes: number;
  /** Next number for a new file name (mutation adds files). */
  nextId: number;
}

/** What one mutation round did. */
export interface MutationStats {
  changed: number;
  added: number;
  deleted: number;
  /** Bytes written (changed + added files): what a backup of the round has to send. */
  bytesWritten: number;
}

const MiB = 1 << 20;
const CHUNK = 8 * MiB;

/**
 * Builds the datasets from one seed.
 *
 * @example
 * ```ts
 * const b = new DatasetBuilder(1);
 * const tree = b.small("/tmp/bench/small", 100_000);
 * const m = b.mutate(tree, 1); // 1 % changed, 0.5 % added, 0.5 % deleted
 * ```
 */
export class DatasetBuilder {
  readonly seed: number;
  readonly content: ContentGen;

  /** `seed` fixes every byte, name and size the builder produces. */
  constructor(seed: number) {
    this.seed = seed;
    this.content = new ContentGen(seed);
  }

  /**
   * `files` files of 1–16 KiB, about 100 per leaf directory (100,000 files →
   * ~1,000 dirs, 32 × 31 leaves), half text (.c/.h/.txt), half random (.o/.bin).
   */
  small(root: string, files: number): Tree {
    const rng = new Prng(this.seed * 1000 + 1);
    const leaves = Math.max(1, Math.round(files / 100));
    const top = Math.ceil(Math.sqrt(leaves));
    const dirs: string[] = [];
    for (let t = 0; dirs.length < leaves; t++) {
      for (let s = 0; s < top - 1 && dirs.length < leaves; s++) {
        dirs.push(`m${pad(t, 2)}/s${pad(s, 2)}`);
      }
    }
    const tops = new Set(dirs.map((d) => d.split("/")[0]));
    for (const d of dirs) Deno.mkdirSync(join(root, d), { recursive: true });
    const tree: Tree = {
      root,
      files: [],
      dirs,
      dirCount: dirs.length + tops.size,
      bytes: 0,
      nextId: 0,
    };
    for (let i = 0; i < files; i++) this.#addSmallFile(tree, rng);
    return tree;
  }

  /** Applies one seeded mutation round: 1 % of files rewritten, 0.5 % added, 0.5 % deleted. */
  mutate(tree: Tree, round: number): MutationStats {
    const rng = new Prng(this.seed * 1000 + 100 + round);
    const n = tree.files.length;
    const changeN = Math.max(1, Math.round(n * 0.01));
    const addN = Math.max(1, Math.round(n * 0.005));
    const delN = Math.max(1, Math.round(n * 0.005));
    const picked = rng.sample([...Array(n).keys()], changeN + delN);
    let bytesWritten = 0;
    for (const i of picked.slice(0, changeN)) {
      // A rewrite keeps the file's kind (a recompiled .o stays binary) but not its size.
      const f = tree.files[i];
      const size = rng.int(1024, 16 * 1024);
      const data = f.text ? this.content.text(rng, size) : this.content.random(rng, size);
      Deno.writeFileSync(join(tree.root, f.path), data);
      tree.bytes += size - f.size;
      f.size = size;
      bytesWritten += size;
    }
    const dead = new Set(picked.slice(changeN));
    for (const i of dead) {
      Deno.removeSync(join(tree.root, tree.files[i].path));
      tree.bytes -= tree.files[i].size;
    }
    tree.files = tree.files.filter((_, i) => !dead.has(i));
    for (let i = 0; i < addN; i++) bytesWritten += this.#addSmallFile(tree, rng).size;
    return { changed: changeN, added: addN, deleted: delN, bytesWritten };
  }

  /**
   * A round of edits inside big files, of the kinds a build makes to its
   * artifacts: in four of the files (rotating with the round) 2 MiB rewritten
   * in place at a third of the file, 8 MiB appended, 64 KiB inserted in the
   * middle (the file rewritten), 512 KiB rewritten at the front. The files
   * keep their kind (text or random). `bytesWritten` counts the new bytes.
   */
  mutateLarge(tree: Tree, round: number): MutationStats {
    const rng = new Prng(this.seed * 1000 + 200 + round);
    const n = tree.files.length;
    let bytesWritten = 0;
    const fresh = (f: FileRec, size: number) =>
      f.text ? this.content.text(rng, size) : rng.fill(new Uint8Array(size));
    for (let k = 0; k < Math.min(4, n); k++) {
      const f = tree.files[(round + k) % n];
      const path = join(tree.root, f.path);
      if (k === 1) {
        const data = fresh(f, 8 * MiB);
        const h = Deno.openSync(path, { append: true });
        for (let o = 0; o < data.length;) o += h.writeSync(data.subarray(o));
        h.close();
        f.size += data.length;
        tree.bytes += data.length;
        bytesWritten += data.length;
      } else if (k === 2) {
        const old = Deno.readFileSync(path);
        const at = Math.floor(old.length / 2);
        const ins = fresh(f, 64 * 1024);
        const out = new Uint8Array(old.length + ins.length);
        out.set(old.subarray(0, at));
        out.set(ins, at);
        out.set(old.subarray(at), at + ins.length);
        Deno.writeFileSync(path, out);
        f.size += ins.length;
        tree.bytes += ins.length;
        bytesWritten += ins.length;
      } else {
        const size = k === 0 ? 2 * MiB : 512 * 1024;
        const at = k === 0 ? Math.floor(f.size / 3) : 0;
        const data = fresh(f, Math.min(size, f.size - at));
        const h = Deno.openSync(path, { write: true });
        h.seekSync(at, Deno.SeekMode.Start);
        for (let o = 0; o < data.length;) o += h.writeSync(data.subarray(o));
        h.close();
        bytesWritten += data.length;
      }
    }
    return { changed: Math.min(4, n), added: 0, deleted: 0, bytesWritten };
  }

  /** `count` files of `minMiB`–`maxMiB` MiB; even ones text, odd ones random. */
  large(root: string, count = 8, minMiB = 64, maxMiB = 256): Tree {
    const rng = new Prng(this.seed * 1000 + 2);
    Deno.mkdirSync(root, { recursive: true });
    const tree: Tree = { root, files: [], dirs: [""], dirCount: 0, bytes: 0, nextId: count };
    for (let i = 0; i < count; i++) {
      const size = rng.int(minMiB * MiB, maxMiB * MiB);
      const text = i % 2 === 0;
      const path = text ? `trace-${i}.log` : `image-${i}.bin`;
      this.#writeStreamed(join(root, path), size, text, rng.fork(i));
      tree.files.push({ path, size, text });
      tree.bytes += size;
    }
    return tree;
  }

  /** `n` tiny distinct files (a few bytes each), 1,000 per directory: the manifest benchmark. */
  million(root: string, n: number): Tree {
    const enc = new TextEncoder();
    const tree: Tree = { root, files: [], dirs: [], dirCount: 0, bytes: 0, nextId: n };
    for (let i = 0; i < n; i++) {
      if (i % 1000 === 0) {
        const d = `d${pad(Math.floor(i / 1000), 4)}`;
        Deno.mkdirSync(join(root, d), { recursive: true });
        tree.dirs.push(d);
      }
      const path = `${tree.dirs[tree.dirs.length - 1]}/f${i}`;
      const data = enc.encode(`${this.seed}:${i}\n`);
      Deno.writeFileSync(join(root, path), data);
      // Not kept in tree.files: a million records would cost the benchmark more memory than Keep.
      tree.bytes += data.length;
    }
    tree.dirCount = tree.dirs.length;
    return tree;
  }

  /** One random (incompressible) file of `bytes` bytes, so the upload really is that large. */
  huge(root: string, bytes: number): Tree {
    Deno.mkdirSync(root, { recursive: true });
    const path = "huge.bin";
    this.#writeStreamed(join(root, path), bytes, false, new Prng(this.seed * 1000 + 4));
    return {
      root,
      files: [{ path, size: bytes, text: false }],
      dirs: [""],
      dirCount: 0,
      bytes,
      nextId: 1,
    };
  }

  #addSmallFile(tree: Tree, rng: Prng): FileRec {
    const id = tree.nextId++;
    const dir = rng.pick(tree.dirs);
    const size = rng.int(1024, 16 * 1024);
    const text = rng.float() < 0.5;
    const ext = text ? rng.pick(["c", "c", "h", "txt"]) : rng.pick(["o", "o", "bin"]);
    const rec: FileRec = { path: `${dir}/f${pad(id, 6)}.${ext}`, size, text };
    const data = text ? this.content.text(rng, size) : this.content.random(rng, size);
    Deno.writeFileSync(join(tree.root, rec.path), data);
    tree.files.push(rec);
    tree.bytes += size;
    return rec;
  }

  #writeStreamed(path: string, size: number, text: boolean, rng: Prng): void {
    const f = Deno.openSync(path, { write: true, create: true, truncate: true });
    try {
      const buf = new Uint8Array(CHUNK);
      for (let done = 0; done < size;) {
        const n = Math.min(CHUNK, size - done);
        const data = text ? this.content.text(rng, n) : rng.fill(buf.subarray(0, n));
        for (let off = 0; off < n;) off += f.writeSync(data.subarray(off, n));
        done += n;
      }
    } finally {
      f.close();
    }
  }
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, "0");
}
