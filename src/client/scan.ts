/**
 * The client's walk of a backup source. Algorithm: depth-first over
 * directories, one thread of synchronous calls: on Linux getdents64 and a
 * statx relative to the directory per entry, through FFI (ns times; see
 * platform/fs_native.ts DirReader), elsewhere `readDirSync` and lstat: the
 * fastest measured on 2 cores (async stat pools, a walk on a Worker and two
 * walker threads were slower or no faster: docs/DESIGN.md).
 * Rules are applied while walking so excluded trees are never entered:
 * `.backupignore` files (gitignore syntax, any directory, deeper files win),
 * `--exclude` patterns (always exclude), CACHEDIR.TAG directories (kept with
 * their tag, contents skipped), then `--include-from` patterns (only matching
 * paths and their parents). Symlinks are recorded, never followed. FIFOs,
 * sockets and devices are skipped with a note. Anything that cannot be read
 * is reported through `onProblem` and listed, never dropped silently.
 *
 * @module
 */

import type { Ignore } from "ignore";
import {
  DirReader,
  lstatNs,
  lstatNsAsync,
  type NativeStat,
  networkFilesystem,
  rawOf,
  type RawStat,
  TreeFile,
} from "../platform/fs_native.ts";
import { comparePaths, MAX_PATH_BYTES, pathProblem, sortPaths } from "../format/paths.ts";
import { type Problem, reasonOf } from "./problem.ts";

/** One path found by the scan. */
export interface ScanEntry {
  path: string;
  type: "f" | "d" | "l";
  size: number;
  mode: number;
  mtime: bigint;
  ctime: bigint;
  target?: string;
}

/** What to take. */
export interface ScanOptions {
  /** gitignore-style patterns that always exclude. */
  exclude?: string[];
  /** When set, only paths matching these patterns (and their parents) are taken. */
  include?: string[];
  /** Skip the contents of directories tagged with CACHEDIR.TAG (default true). */
  excludeCaches?: boolean;
  /** Name of per-directory ignore files (default .backupignore). */
  ignoreFile?: string;
  /** Directory listings and lstats in flight at once (default: 16 on NFS/SMB/FUSE, else 1). */
  jobs?: number;
  onProblem?: (p: Problem) => void;
}

/** The scan of one tree. */
export interface ScanResult {
  entries: ScanTable;
  problems: Problem[];
  /** Directories that could not be listed: their previous contents are kept. */
  unreadableDirs: string[];
  /** When the scan started, ns since the epoch (client clock). */
  startedNs: bigint;
  /** Detected mtime granularity, ns. */
  granularity: bigint;
  /** Regular files seen, and how many had a ctime equal to their mtime. */
  files: number;
  ctimeIsMtime: number;
  /** The network filesystem the tree is on ("nfs", "fuse", …), or null. */
  filesystem: string | null;
  /** Directories inside the tree where another filesystem is mounted, with its network type. */
  mounts: { path: string; filesystem: string | null }[];
}

const CACHEDIR_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55";

/** True when `dir` holds a regular file CACHEDIR.TAG that starts with the signature. */
function isCacheDir(dir: string): boolean {
  try {
    // Never a FIFO or a symlink (TreeFile): a read that blocks hangs the backup.
    const f = TreeFile.open(`${dir}/CACHEDIR.TAG`);
    try {
      const buf = new Uint8Array(CACHEDIR_SIGNATURE.length);
      let got = 0;
      while (got < buf.length) {
        const n = f.readSync(buf.subarray(got));
        if (!n) break;
        got += n;
      }
      return new TextDecoder().decode(buf.subarray(0, got)) === CACHEDIR_SIGNATURE;
    } finally {
      f.close();
    }
  } catch {
    return false;
  }
}

/** Largest `.backupignore` read (a symlink to /dev/zero must not fill memory). */
const MAX_IGNORE_FILE = 1 << 20;

interface Level {
  /** Path of the directory holding the ignore file, "" for the root. */
  base: string;
  rules: Ignore;
}

/** A counting semaphore: at most `n` tasks at once. */
class Limiter {
  #free: number;
  #waiting: (() => void)[] = [];
  constructor(n: number) {
    this.#free = n;
  }
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#free === 0) await new Promise<void>((r) => this.#waiting.push(r));
    else this.#free--;
    try {
      return await task();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}

type IgnoreFactory = () => Ignore;
let ignoreLib: Promise<IgnoreFactory> | null = null;

/**
 * The gitignore matcher, loaded on first use: it is a CommonJS package, and
 * loading it cost ~25 ms of every backup's start (a third of a backup of an
 * empty tree) while most trees have no rules.
 */
function loadIgnore(): Promise<IgnoreFactory> {
  ignoreLib ??= import("ignore").then((m) => m.default as unknown as IgnoreFactory);
  return ignoreLib;
}

/** Receives the walk's entries. */
interface Sink {
  entry(rel: string, type: "f" | "d" | "l", st: RawStat, target: string | undefined): void;
}

/** What a walk found besides its entries. */
interface WalkSummary {
  problems: Problem[];
  unreadableDirs: string[];
  startedNs: bigint;
  granularity: bigint;
  files: number;
  ctimeIsMtime: number;
  /** Directories inside the tree where another filesystem is mounted, with its network type. */
  mounts: { path: string; filesystem: string | null }[];
}

/**
 * Walks `root` and returns every entry to consider, sorted by path.
 *
 * `jobs` bounds the parallelism: with 1 everything is synchronous (fastest on
 * a local disk: no thread hand-offs); with more, directory listings and lstat
 * calls run on Deno's blocking pool, up to `jobs` at once, which hides the
 * round trip every call costs on NFS/SMB. The default picks 16 on a network
 * filesystem (statfs type) and 1 elsewhere.
 */
export async function scanTree(root: string, options: ScanOptions = {}): Promise<ScanResult> {
  const filesystem = networkFilesystem(root);
  const jobs = Math.max(1, options.jobs ?? (filesystem ? 16 : 1));
  const table = new ScanTable();
  const summary = await walkTree(root, { ...options, jobs }, table);
  // Sequential walks emit in path order already; parallel ones interleave directories.
  let entries = table;
  if (jobs > 1) {
    const order = Array.from({ length: table.length }, (_, i) => i);
    order.sort((a, b) => comparePaths(table.path(a), table.path(b)));
    entries = table.select(order);
  }
  return await finish(entries, summary, options, filesystem);
}

/** Drops what lies in unreadable directories and applies --include-from. */
async function finish(
  entries: ScanTable,
  summary: WalkSummary,
  options: ScanOptions,
  filesystem: string | null,
): Promise<ScanResult> {
  // A directory that could not be listed is kept as it was (with its
  // contents) through the parent commit, not half-recorded here.
  const failed = new Set(summary.unreadableDirs);
  let result = failed.size ? entries.filter((i) => !failed.has(entries.path(i))) : entries;
  if (options.include?.length) result = applyInclude(result, options.include, await loadIgnore());
  return { entries: result, ...summary, filesystem };
}

/**
 * `dir/name` as one flat string: a `+` or template concatenation is kept as
 * a rope of two 32-byte nodes holding on to its parts, for as long as the
 * path lives (measured on a 1M-file walk: 56 MB of ropes); `join` writes the
 * characters out.
 */
function joinPath(dir: string, name: string): string {
  return [dir, name].join("/");
}

const TYPE_CODES = { f: 0, d: 1, l: 2 } as const;
const TYPES = ["f", "d", "l"] as const;

/**
 * A scan's entries, column by column: about 90 bytes per entry against ~180
 * as ScanEntry objects (a million-file tree is walked into ~80 MB). Entries
 * are materialised (`get`) only where one is kept: to be sent or hashed.
 */
export class ScanTable implements Sink {
  #n = 0;
  #paths: string[] = [];
  #types = new Uint8Array(1024);
  #sizes = new Float64Array(1024);
  #modes = new Uint16Array(1024);
  // Times as seconds and ns: the diff compares them without BigInts.
  #mtimeSec = new Float64Array(1024);
  #mtimeNs = new Uint32Array(1024);
  #ctimeSec = new Float64Array(1024);
  #ctimeNs = new Uint32Array(1024);
  #targets = new Map<number, string>();

  /** A table of `entries` (in the order given). */
  static of(entries: ScanEntry[]): ScanTable {
    const t = new ScanTable();
    for (const e of entries) t.push(e.path, e.type, e.size, e.mode, e.mtime, e.ctime, e.target);
    return t;
  }

  get length(): number {
    return this.#n;
  }

  path(i: number): string {
    return this.#paths[i];
  }
  type(i: number): ScanEntry["type"] {
    return TYPES[this.#types[i]];
  }
  size(i: number): number {
    return this.#sizes[i];
  }
  mode(i: number): number {
    return this.#modes[i];
  }
  mtime(i: number): bigint {
    return BigInt(this.#mtimeSec[i]) * 1_000_000_000n + BigInt(this.#mtimeNs[i]);
  }
  ctime(i: number): bigint {
    return BigInt(this.#ctimeSec[i]) * 1_000_000_000n + BigInt(this.#ctimeNs[i]);
  }
  /** mtime's whole seconds (floored) and the ns within them. */
  mtimeSec(i: number): number {
    return this.#mtimeSec[i];
  }
  mtimeNs(i: number): number {
    return this.#mtimeNs[i];
  }
  ctimeSec(i: number): number {
    return this.#ctimeSec[i];
  }
  ctimeNs(i: number): number {
    return this.#ctimeNs[i];
  }
  target(i: number): string | undefined {
    return this.#targets.get(i);
  }

  /** Entry `i` as an object of its own. */
  get(i: number): ScanEntry {
    const e: ScanEntry = {
      path: this.#paths[i],
      type: TYPES[this.#types[i]],
      size: this.#sizes[i],
      mode: this.#modes[i],
      mtime: this.mtime(i),
      ctime: this.ctime(i),
    };
    const target = this.#targets.get(i);
    if (target !== undefined) e.target = target;
    return e;
  }

  toArray(): ScanEntry[] {
    return Array.from({ length: this.#n }, (_, i) => this.get(i));
  }

  /** The entries as objects, each made when reached (none are kept). */
  *[Symbol.iterator](): Iterator<ScanEntry> {
    for (let i = 0; i < this.#n; i++) yield this.get(i);
  }

  /** Gives entry `i` a fresh stat's size, mode and times. */
  setStat(i: number, st: NativeStat): void {
    const r = rawOf(st);
    this.#sizes[i] = r.size;
    this.#modes[i] = r.mode;
    this.#mtimeSec[i] = r.mtimeSec;
    this.#mtimeNs[i] = r.mtimeNs;
    this.#ctimeSec[i] = r.ctimeSec;
    this.#ctimeNs[i] = r.ctimeNs;
  }

  /** This table's entries and `more`'s (both in path order, no path in both), in path order. */
  mergedWith(more: ScanEntry[]): ScanTable {
    const t = new ScanTable();
    let j = 0;
    for (let i = 0; i < this.#n; i++) {
      const path = this.#paths[i];
      for (; j < more.length && comparePaths(more[j].path, path) < 0; j++) t.#push(more[j]);
      t.#copyRow(this, i);
    }
    for (; j < more.length; j++) t.#push(more[j]);
    return t;
  }

  /** Appends row `i` of `from`. */
  #copyRow(from: ScanTable, i: number): void {
    this.#add(
      from.#paths[i],
      from.#types[i],
      from.#sizes[i],
      from.#modes[i],
      from.#mtimeSec[i],
      from.#mtimeNs[i],
      from.#ctimeSec[i],
      from.#ctimeNs[i],
      from.#targets.get(i),
    );
  }

  #push(e: ScanEntry): void {
    this.push(e.path, e.type, e.size, e.mode, e.mtime, e.ctime, e.target);
  }

  /** The entries at `indices`, in that order. */
  select(indices: ArrayLike<number>): ScanTable {
    const t = new ScanTable();
    for (let k = 0; k < indices.length; k++) t.#copyRow(this, indices[k]);
    return t;
  }

  /** The entries whose index passes `keep`. */
  filter(keep: (i: number) => boolean): ScanTable {
    const indices: number[] = [];
    for (let i = 0; i < this.#n; i++) if (keep(i)) indices.push(i);
    return indices.length === this.#n ? this : this.select(indices);
  }

  /** Sink: appends what the walk found. */
  entry(path: string, type: "f" | "d" | "l", st: RawStat, target: string | undefined): void {
    this.#add(
      path,
      TYPE_CODES[type],
      st.size,
      st.mode,
      st.mtimeSec,
      st.mtimeNs,
      st.ctimeSec,
      st.ctimeNs,
      target,
    );
  }

  push(
    path: string,
    type: ScanEntry["type"],
    size: number,
    mode: number,
    mtime: bigint,
    ctime: bigint,
    target?: string,
  ): void {
    const st = rawOf({ kind: "file", size, mode, mtime, ctime, nlink: 1, dev: 0 });
    this.entry(path, type, st, target);
  }

  #add(
    path: string,
    type: number,
    size: number,
    mode: number,
    mtimeSec: number,
    mtimeNs: number,
    ctimeSec: number,
    ctimeNs: number,
    target: string | undefined,
  ): void {
    const i = this.#n++;
    if (i === this.#types.length) this.#grow();
    this.#paths.push(path);
    this.#types[i] = type;
    this.#sizes[i] = size;
    this.#modes[i] = mode;
    this.#mtimeSec[i] = mtimeSec;
    this.#mtimeNs[i] = mtimeNs;
    this.#ctimeSec[i] = ctimeSec;
    this.#ctimeNs[i] = ctimeNs;
    if (target !== undefined) this.#targets.set(i, target);
  }

  #grow(): void {
    const n = this.#types.length * 2;
    const more = <T extends { set(a: T): void }>(a: T, make: (n: number) => T): T => {
      const b = make(n);
      b.set(a);
      return b;
    };
    this.#types = more(this.#types, (k) => new Uint8Array(k));
    this.#sizes = more(this.#sizes, (k) => new Float64Array(k));
    this.#modes = more(this.#modes, (k) => new Uint16Array(k));
    this.#mtimeSec = more(this.#mtimeSec, (k) => new Float64Array(k));
    this.#mtimeNs = more(this.#mtimeNs, (k) => new Uint32Array(k));
    this.#ctimeSec = more(this.#ctimeSec, (k) => new Float64Array(k));
    this.#ctimeNs = more(this.#ctimeNs, (k) => new Uint32Array(k));
  }
}

/**
 * The walk itself. With `jobs` 1 it emits entries in path order (UTF-8 byte
 * order): within a directory, a subdirectory's contents sort as if named
 * `name/`, which need not follow `name` directly ("a", "a-b", "a/x").
 */
async function walkTree(
  root: string,
  options: ScanOptions & { jobs: number },
  sink: Sink,
): Promise<WalkSummary> {
  const rootStat = lstatNs(root);
  if (rootStat.kind !== "dir") throw new Deno.errors.NotADirectory(`${root} is not a directory`);
  const exclude = options.exclude?.length ? (await loadIgnore())().add(options.exclude) : null;
  const walker = new TreeWalker(root, options, sink, exclude);
  await walker.walk("", []);
  return walker.summary();
}

/** One directory's entries that are taken, in name order (see TreeWalker.#take). */
interface Taken {
  names: string[];
  types: ("f" | "d" | "l")[];
  stats: RawStat[];
  targets: (string | undefined)[];
  subdirs: string[];
}

/** The state of one walk: its rules, what it found besides entries, and its counters. */
class TreeWalker {
  readonly #root: string;
  readonly #sink: Sink;
  readonly #jobs: number;
  readonly #limiter: Limiter;
  readonly #ignoreFile: string;
  readonly #excludeCaches: boolean;
  readonly #exclude: Ignore | null;
  readonly #onProblem?: (p: Problem) => void;
  readonly #startedNs = BigInt(Date.now()) * 1_000_000n;
  readonly #problems: Problem[] = [];
  readonly #unreadableDirs: string[] = [];
  #minGranularity = 2_000_000_000;
  #sawFile = false;
  #files = 0;
  #ctimeIsMtime = 0;
  #mounts: { path: string; filesystem: string | null }[] = [];

  constructor(
    root: string,
    options: ScanOptions & { jobs: number },
    sink: Sink,
    exclude: Ignore | null,
  ) {
    this.#root = root;
    this.#sink = sink;
    this.#jobs = options.jobs;
    this.#limiter = new Limiter(options.jobs);
    this.#ignoreFile = options.ignoreFile ?? ".backupignore";
    this.#excludeCaches = options.excludeCaches ?? true;
    this.#exclude = exclude;
    this.#onProblem = options.onProblem;
  }

  summary(): WalkSummary {
    return {
      problems: this.#problems,
      unreadableDirs: this.#unreadableDirs,
      startedNs: this.#startedNs,
      granularity: this.#sawFile ? BigInt(this.#minGranularity) : 1_000_000_000n,
      files: this.#files,
      ctimeIsMtime: this.#ctimeIsMtime,
      mounts: this.#mounts,
    };
  }

  #problem(p: Problem): void {
    this.#problems.push(p);
    this.#onProblem?.(p);
  }

  /** The coarsest granularity an mtime (seconds floored, ns) is consistent with. */
  #noteGranularity(sec: number, ns: number): void {
    this.#sawFile = true;
    if (this.#minGranularity === 1) return;
    let g = 2_000_000_000;
    if (sec % 2 !== 0) g = 1_000_000_000;
    if (ns !== 0) g = 1_000_000;
    if (ns % 1_000_000 !== 0) g = 1_000;
    if (ns % 1_000 !== 0) g = 1;
    if (g < this.#minGranularity) this.#minGranularity = g;
  }

  #ignored(levels: Level[], rel: string, isDir: boolean): boolean {
    const test = isDir ? rel + "/" : rel;
    if (this.#exclude && this.#exclude.ignores(test)) return true;
    let out = false;
    for (const l of levels) {
      const sub = l.base === "" ? test : test.slice(l.base.length + 1);
      const r = l.rules.test(sub);
      if (r.ignored) out = true;
      else if (r.unignored) out = false;
    }
    return out;
  }

  async #list(dirAbs: string): Promise<string[]> {
    const names: string[] = [];
    if (this.#jobs === 1) {
      for (const d of Deno.readDirSync(dirAbs)) names.push(d.name);
    } else {
      await this.#limiter.run(async () => {
        for await (const d of Deno.readDir(dirAbs)) names.push(d.name);
      });
    }
    return names;
  }

  async #statAll(
    dirAbs: string,
    dir: DirReader | null,
    names: string[],
  ): Promise<(RawStat | Error)[]> {
    // A failed call is made again through Deno for its error class and message.
    if (dir) return names.map((n) => dir.stat(n) ?? lstatOrError(`${dirAbs}/${n}`));
    if (this.#jobs === 1) return names.map((n) => lstatOrError(`${dirAbs}/${n}`));
    return await Promise.all(
      names.map((n) =>
        this.#limiter.run(() => lstatNsAsync(`${dirAbs}/${n}`)).then(rawOf, (err) => err as Error)
      ),
    );
  }

  /** The sorted names of a directory (and its reader, on a local disk), or null if unreadable. */
  async #names(
    dirRel: string,
    dirAbs: string,
  ): Promise<{ names: string[]; dir: DirReader | null } | null> {
    // On a local disk: getdents64 and statx relative to the directory.
    let dir: DirReader | null = null;
    try {
      if (this.#jobs === 1) dir = DirReader.open(dirAbs);
      let names = dir ? dir.names() : await this.#list(dirAbs);
      sortPaths(names);
      for (const bad of dir?.invalid ?? []) {
        this.#problem({
          path: dirRel === "" ? bad : `${dirRel}/${bad}`,
          reason: "cannot back up this name: it is not valid UTF-8",
          kind: "unreadable",
        });
      }
      if (!dir) names = dropLossyDuplicates(names, dirRel, (p) => this.#problem(p));
      return { names, dir };
    } catch (err) {
      dir?.close();
      if (dirRel === "") throw err;
      this.#unreadableDirs.push(dirRel);
      this.#problem({
        path: dirRel,
        reason: `cannot list directory: ${reasonOf(err)}`,
        kind: "unreadable",
      });
      return null;
    }
  }

  /** The rules below `dirRel`: those above it, and its own ignore file if it has one. */
  async #rules(dirRel: string, dirAbs: string, names: string[], levels: Level[]): Promise<Level[]> {
    if (!names.includes(this.#ignoreFile)) return levels;
    try {
      const text = new TextDecoder("utf-8", { fatal: true }).decode(
        TreeFile.readSmall(`${dirAbs}/${this.#ignoreFile}`, MAX_IGNORE_FILE),
      );
      const ignore = await loadIgnore();
      return [...levels, { base: dirRel, rules: ignore().add(text) }];
    } catch (err) {
      this.#problem({
        path: dirRel ? `${dirRel}/${this.#ignoreFile}` : this.#ignoreFile,
        reason: `its rules are not applied: cannot read it: ${reasonOf(err)}`,
        kind: "rules",
      });
      return levels;
    }
  }

  /** Stats a directory's names and keeps those the rules take, reporting the others. */
  async #take(
    dirRel: string,
    dirAbs: string,
    dir: DirReader | null,
    names: string[],
    here: Level[],
  ): Promise<Taken> {
    // The OS guarantees a name has no "/" or NUL, is not "." or "..", and fits
    // NAME_MAX; what is left to check is the path's length.
    const wanted: string[] = [];
    for (const name of names) {
      const rel = dirRel === "" ? name : `${dirRel}/${name}`;
      const bad = rel.length * 3 > MAX_PATH_BYTES ? pathProblem(rel) : null;
      if (bad) {
        this.#problem({
          path: rel,
          reason: `cannot back up this name: ${bad}`,
          kind: "unreadable",
        });
      } else wanted.push(name);
    }
    let stats;
    try {
      stats = await this.#statAll(dirAbs, dir, wanted);
    } finally {
      dir?.close();
    }
    const taken: Taken = { names: [], types: [], stats: [], targets: [], subdirs: [] };
    for (let i = 0; i < wanted.length; i++) {
      const name = wanted[i];
      const rel = dirRel === "" ? name : `${dirRel}/${name}`;
      const st = stats[i];
      if (st instanceof Error) {
        const reason = name.includes("\uFFFD") ? "file name is not valid UTF-8" : reasonOf(st);
        this.#problem({ path: rel, reason: `cannot stat: ${reason}`, kind: "unreadable" });
        continue;
      }
      if (st.kind === "other") {
        if (!this.#ignored(here, rel, false)) {
          this.#problem({
            path: rel,
            reason: "special file (FIFO, socket or device) skipped",
            kind: "skipped",
          });
        }
        continue;
      }
      const isDir = st.kind === "dir";
      if (this.#ignored(here, rel, isDir)) continue;
      let target: string | undefined;
      if (st.kind === "symlink") {
        try {
          target = Deno.readLinkSync(`${dirAbs}/${name}`);
        } catch (err) {
          this.#problem({
            path: rel,
            reason: `cannot read link: ${reasonOf(err)}`,
            kind: "unreadable",
          });
          continue;
        }
        if (target === "") {
          this.#problem({
            path: rel,
            reason: "symlink with an empty target skipped",
            kind: "skipped",
          });
          continue;
        }
      }
      if (st.clamped) {
        this.#problem({
          path: rel,
          reason:
            "its mtime is outside 1677-09-21..2262-04-11 UTC, the range Keep records: recorded as the nearest end of it",
          kind: "adjusted",
        });
      }
      if (st.kind === "file") {
        this.#noteGranularity(st.mtimeSec, st.mtimeNs);
        this.#files++;
        if (st.ctimeSec === st.mtimeSec && st.ctimeNs === st.mtimeNs) this.#ctimeIsMtime++;
      } else st.size = 0;
      taken.names.push(name);
      taken.types.push(isDir ? "d" : st.kind === "symlink" ? "l" : "f");
      taken.stats.push(st);
      taken.targets.push(target);
      if (isDir) taken.subdirs.push(name);
    }
    return taken;
  }

  /**
   * Walks a directory (on device `dev`; -1: look it up) and, concurrently
   * when jobs > 1, those below it.
   */
  async walk(dirRel: string, levels: Level[], dev = -1): Promise<void> {
    const dirAbs = dirRel === "" ? this.#root : `${this.#root}/${dirRel}`;
    if (dev === -1) {
      try {
        dev = lstatNs(dirAbs).dev;
      } catch { /* reported when listed */ }
    }
    const listed = await this.#names(dirRel, dirAbs);
    if (!listed) return;
    let names = listed.names;
    const here = await this.#rules(dirRel, dirAbs, names, levels);
    if (this.#excludeCaches && names.includes("CACHEDIR.TAG") && isCacheDir(dirAbs)) {
      names = ["CACHEDIR.TAG"];
    }
    const t = await this.#take(dirRel, dirAbs, listed.dir, names, here);
    const emit = (j: number) => {
      const name = t.names[j];
      this.#sink.entry(
        dirRel === "" ? name : joinPath(dirRel, name),
        t.types[j],
        t.stats[j],
        t.targets[j],
      );
    };
    const below = (name: string) => dirRel === "" ? name : `${dirRel}/${name}`;
    // A subdirectory on another device is a mount point: its filesystem may
    // need a content check the tree's root does not (see ctimeDistrust).
    const devs = new Map<string, number>();
    for (let j = 0; j < t.names.length; j++) {
      if (t.types[j] !== "d") continue;
      const d = t.stats[j].dev;
      devs.set(t.names[j], d);
      if (d !== dev && dev !== -1) {
        this.#mounts.push({
          path: below(t.names[j]),
          filesystem: networkFilesystem(`${dirAbs}/${t.names[j]}`),
        });
      }
    }
    if (this.#jobs > 1) {
      for (let j = 0; j < t.names.length; j++) emit(j);
      await Promise.all(t.subdirs.map((d) => this.walk(below(d), here, devs.get(d) ?? -1)));
      return;
    }
    // In path order: the contents of subdirectory `x` sort as "x/".
    const keys = sortPaths(t.subdirs.map((d) => d + "/"));
    let j = 0;
    for (const key of keys) {
      while (j < t.names.length && comparePaths(t.names[j], key) < 0) emit(j++);
      const name = key.slice(0, -1);
      await this.walk(below(name), here, devs.get(name) ?? -1);
    }
    while (j < t.names.length) emit(j++);
  }
}

/** lstat, or the error it threw (a walk reports it beside the path). */
function lstatOrError(path: string): RawStat | Error {
  try {
    return rawOf(lstatNs(path));
  } catch (err) {
    return err as Error;
  }
}

/**
 * Names listed through Deno (no getdents) arrive decoded with U+FFFD for
 * bytes that are not UTF-8, so an invalid name can equal a real one ("a\xff"
 * and "a\uFFFD"). One of each equal run is kept (a stat by that name finds
 * the file whose name really is that text); the others are reported.
 */
function dropLossyDuplicates(
  sorted: string[],
  dirRel: string,
  problem: (p: Problem) => void,
): string[] {
  const out: string[] = [];
  for (let i = 0; i < sorted.length; i++) {
    if (i > 0 && sorted[i] === sorted[i - 1]) {
      problem({
        path: dirRel === "" ? sorted[i] : `${dirRel}/${sorted[i]}`,
        reason: "cannot back up a name here: it is not valid UTF-8 and reads as another name",
        kind: "unreadable",
      });
    } else out.push(sorted[i]);
  }
  return out;
}

/** Keeps entries matching the include patterns, everything below matching dirs, and their parents. */
function applyInclude(entries: ScanTable, patterns: string[], ignore: IgnoreFactory): ScanTable {
  const rules = ignore().add(patterns);
  const keep = new Set<string>();
  let under: string | null = null;
  for (let i = 0; i < entries.length; i++) {
    const path = entries.path(i);
    const isDir = entries.type(i) === "d";
    if (under !== null && path.startsWith(under + "/")) {
      keep.add(path);
      continue;
    }
    under = null;
    if (rules.ignores(isDir ? path + "/" : path)) {
      keep.add(path);
      if (isDir) under = path;
      for (let k = path.lastIndexOf("/"); k > 0; k = path.lastIndexOf("/", k - 1)) {
        keep.add(path.slice(0, k));
      }
    }
  }
  return entries.filter((i) => keep.has(entries.path(i)));
}
