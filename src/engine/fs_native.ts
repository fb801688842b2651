/**
 * File metadata at the precision the kernel keeps. Deno's `lstatSync` reports
 * times in milliseconds; on Linux Keep calls `statx(2)` and `utimensat(2)`
 * through FFI to read and restore nanoseconds (the struct statx layout is the
 * same on every Linux architecture). Elsewhere, or without `--allow-ffi`, it
 * falls back to Deno's calls and millisecond times.
 *
 * @module
 */

/** What kind of directory entry a path is. */
export type FileKind = "file" | "dir" | "symlink" | "other";

/** The fields of lstat that Keep uses; times in ns since the epoch. */
export interface NativeStat {
  kind: FileKind;
  size: number;
  /** Permission bits and setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  mtime: bigint;
  ctime: bigint;
  nlink: number;
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const STATX_BASIC_STATS = 0x7ff;

interface Libc {
  statx(dirfd: number, path: Uint8Array, flags: number, mask: number, buf: Uint8Array): number;
  statxAsync(
    dirfd: number,
    path: Uint8Array,
    flags: number,
    mask: number,
    buf: Uint8Array,
  ): Promise<number>;
  statfs(path: Uint8Array, buf: Uint8Array): number;
  utimensat(dirfd: number, path: Uint8Array, times: Uint8Array, flags: number): number;
  open(path: Uint8Array, flags: number, mode: number): number;
  write(fd: number, buf: Uint8Array, len: bigint): number | bigint;
  fchmod(fd: number, mode: number): number;
  futimens(fd: number, times: Uint8Array): number;
  flock(fd: number, op: number): number;
  syncfs(fd: number): number;
  close(fd: number): number;
  malloc_trim(pad: bigint): number;
  syscall(n: bigint, fd: bigint, buf: Uint8Array, len: bigint): bigint;
  __errno_location(): Deno.PointerValue;
}

let libc: Libc | null | undefined;

function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  libc = null;
  if (Deno.build.os !== "linux" || Deno.env.get("KEEP_NO_FFI") === "1") return libc;
  try {
    const lib = Deno.dlopen("libc.so.6", {
      statx: { parameters: ["i32", "buffer", "i32", "u32", "buffer"], result: "i32" },
      // The same call on a worker thread: many in flight hide a NAS's round trips.
      statxAsync: {
        name: "statx",
        parameters: ["i32", "buffer", "i32", "u32", "buffer"],
        result: "i32",
        nonblocking: true,
      },
      statfs: { parameters: ["buffer", "buffer"], result: "i32" },
      utimensat: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
      open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
      write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
      fchmod: { parameters: ["i32", "u32"], result: "i32" },
      futimens: { parameters: ["i32", "buffer"], result: "i32" },
      flock: { parameters: ["i32", "i32"], result: "i32" },
      syncfs: { parameters: ["i32"], result: "i32", nonblocking: false },
      close: { parameters: ["i32"], result: "i32" },
      malloc_trim: { parameters: ["usize"], result: "i32" },
      syscall: { parameters: ["i64", "i64", "buffer", "i64"], result: "i64" },
      __errno_location: { parameters: [], result: "pointer" },
    });
    libc = lib.symbols as unknown as Libc;
  } catch {
    libc = null;
  }
  return libc;
}

/** True when nanosecond stat and utimens are in use. */
export function hasNativeTimes(): boolean {
  return loadLibc() !== null;
}

const encoder = new TextEncoder();
const statBuf = new Uint8Array(256);
const statView = new DataView(statBuf.buffer);

let pathBuf = new Uint8Array(4096 * 3 + 1);

/**
 * The path as a NUL-terminated C string, in a reused buffer (the buffer
 * itself: C reads up to the NUL, and a view per call cost ~100 ns, a tenth of
 * a walk's statx).
 */
function cPath(path: string): Uint8Array {
  if (path.length * 3 + 1 > pathBuf.length) pathBuf = new Uint8Array(path.length * 3 + 1);
  const { written } = encoder.encodeInto(path, pathBuf);
  pathBuf[written] = 0;
  return pathBuf;
}

function kindOf(fmt: number): FileKind {
  if (fmt === S_IFREG) return "file";
  if (fmt === S_IFDIR) return "dir";
  if (fmt === S_IFLNK) return "symlink";
  return "other";
}

function ns(d: Date | null): bigint {
  return d ? BigInt(d.getTime()) * 1_000_000n : 0n;
}

function decodeStatx(v: DataView): NativeStat {
  const mode = v.getUint16(28, true);
  return {
    kind: kindOf(mode & S_IFMT),
    size: Number(v.getBigUint64(40, true)),
    mode: mode & 0o7777,
    mtime: v.getBigInt64(112, true) * 1_000_000_000n + BigInt(v.getUint32(120, true)),
    ctime: v.getBigInt64(96, true) * 1_000_000_000n + BigInt(v.getUint32(104, true)),
    nlink: v.getUint32(16, true),
  };
}

/**
 * lstat off the main thread (statx on Deno's blocking pool), so that many can
 * be in flight at once; falls back to Deno.lstat.
 */
export async function lstatNsAsync(path: string): Promise<NativeStat> {
  const c = loadLibc();
  if (c) {
    const buf = new Uint8Array(256);
    const p = encoder.encode(path + "\0");
    if (await c.statxAsync(AT_FDCWD, p, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, buf) === 0) {
      return decodeStatx(new DataView(buf.buffer));
    }
  }
  return fromFileInfo(await Deno.lstat(path));
}

/** Filesystem types (statfs f_type) whose every call is a network round trip. */
const NETWORK_FS = new Map<bigint, string>([
  [0x6969n, "nfs"],
  [0x517bn, "smb"],
  [0xfe534d42n, "smb2"],
  [0xff534d42n, "cifs"],
  [0x65735546n, "fuse"],
  [0x01021997n, "9p"],
  [0x00c36400n, "ceph"],
  [0x47504653n, "gpfs"],
  [0x0bd00bd0n, "lustre"],
]);

/** The network filesystem `path` is on ("nfs", "cifs", …), or null for local or unknown. */
export function networkFilesystem(path: string): string | null {
  const c = loadLibc();
  if (!c) return null;
  const buf = new Uint8Array(128);
  if (c.statfs(cPath(path), buf) !== 0) return null;
  return NETWORK_FS.get(new DataView(buf.buffer).getBigInt64(0, true) & 0xffffffffn) ?? null;
}

/**
 * lstat with ns times. Throws Deno.errors.* (NotFound, PermissionDenied) like
 * Deno.lstatSync does.
 */
export function lstatNs(path: string): NativeStat {
  const c = loadLibc();
  if (c) {
    const r = c.statx(AT_FDCWD, cPath(path), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, statBuf);
    if (r === 0) return decodeStatx(statView);
    // Let Deno raise the proper error class for the errno.
  }
  return fromFileInfo(Deno.lstatSync(path));
}

/**
 * An lstat result as the walk keeps it: times as seconds and nanoseconds
 * (numbers), so that a walk of 100k files allocates no BigInts (measured:
 * the BigInt arithmetic cost a fifth of the stat calls' time).
 */
export interface RawStat {
  kind: FileKind;
  size: number;
  mode: number;
  mtimeSec: number;
  mtimeNs: number;
  ctimeSec: number;
  ctimeNs: number;
}

/** A NativeStat as a RawStat. */
export function rawOf(st: NativeStat): RawStat {
  const split = (t: bigint): [number, number] => {
    const ns = ((t % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n;
    return [Number((t - ns) / 1_000_000_000n), Number(ns)];
  };
  const [mtimeSec, mtimeNs] = split(st.mtime);
  const [ctimeSec, ctimeNs] = split(st.ctime);
  return { kind: st.kind, size: st.size, mode: st.mode, mtimeSec, mtimeNs, ctimeSec, ctimeNs };
}

/** getdents64(2) on the architectures Keep lists directories with directly. */
const GETDENTS64: Record<string, bigint> = { x86_64: 217n, aarch64: 61n };
const O_RDONLY = 0;
const O_DIRECTORY = 0o200000;
const O_CLOEXEC = 0o2000000;
const ERRNO: Record<number, string> = {
  1: "operation not permitted",
  2: "no such file or directory",
  5: "input/output error",
  13: "permission denied",
  17: "file exists",
  21: "is a directory",
  27: "file too large",
  28: "no space left on device",
  30: "read-only file system",
  36: "file name too long",
  122: "disk quota exceeded",
  20: "not a directory",
  116: "stale file handle",
};

function errnoMessage(c: Libc): string {
  const p = c.__errno_location();
  const errno = p ? new Deno.UnsafePointerView(p).getInt32() : 0;
  return ERRNO[errno] ?? `errno ${errno}`;
}

/**
 * An open directory, listed and stat'ed with one getdents64 call per 64 KiB
 * of entries and a statx relative to it per entry (measured on 100k files in
 * 1,000 dirs: 50 ms to list against 110 ms with Deno.readDirSync). `open`
 * returns null where this is not available (not Linux x86_64/aarch64, no
 * FFI): the caller uses Deno's calls then.
 */
export class DirReader {
  static #buf = new Uint8Array(64 * 1024);
  static #view = new DataView(DirReader.#buf.buffer);
  static #latin1 = new TextDecoder("latin1");
  static #utf8 = new TextDecoder();
  readonly #c: Libc;
  readonly #fd: number;
  readonly #getdents: bigint;

  private constructor(c: Libc, fd: number, getdents: bigint) {
    this.#c = c;
    this.#fd = fd;
    this.#getdents = getdents;
  }

  /** Opens `path`; throws Deno.errors.* like Deno.readDirSync when it cannot. */
  static open(path: string): DirReader | null {
    const c = loadLibc();
    const getdents = GETDENTS64[Deno.build.arch];
    if (!c || getdents === undefined) return null;
    const fd = c.open(cPath(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0) {
      const why = errnoMessage(c);
      // Deno's error class for the errno, when it still fails:
      for (const _ of Deno.readDirSync(path)) break;
      throw new Error(why);
    }
    return new DirReader(c, fd, getdents);
  }

  /** The names in the directory (not "." and ".."), in the kernel's order. */
  names(): string[] {
    const buf = DirReader.#buf;
    const view = DirReader.#view;
    const out: string[] = [];
    for (;;) {
      const n = Number(this.#c.syscall(this.#getdents, BigInt(this.#fd), buf, BigInt(buf.length)));
      if (n < 0) throw new Error(errnoMessage(this.#c));
      if (n === 0) return out;
      // One decode per buffer; an ASCII name is a slice of it.
      const text = DirReader.#latin1.decode(buf.subarray(0, n));
      for (let off = 0; off < n;) {
        const start = off + 19;
        let end = start;
        let ascii = true;
        for (let b = buf[end]; b !== 0; b = buf[++end]) if (b > 127) ascii = false;
        off += view.getUint16(off + 16, true);
        if (end - start <= 2 && buf[start] === 46 && (end - start === 1 || buf[start + 1] === 46)) {
          continue; // "." and ".."
        }
        // A name that is not valid UTF-8 decodes with U+FFFD and then fails to stat.
        out.push(
          ascii ? text.slice(start, end) : DirReader.#utf8.decode(buf.subarray(start, end)),
        );
      }
    }
  }

  /** lstat of `name` in this directory; null when the call fails (see lstatNs for why). */
  stat(name: string): RawStat | null {
    if (this.#c.statx(this.#fd, cPath(name), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, statBuf)) {
      return null;
    }
    const v = statView;
    const mode = v.getUint16(28, true);
    return {
      kind: kindOf(mode & S_IFMT),
      size: v.getUint32(40, true) + v.getUint32(44, true) * 2 ** 32,
      mode: mode & 0o7777,
      mtimeSec: v.getUint32(112, true) + v.getInt32(116, true) * 2 ** 32,
      mtimeNs: v.getUint32(120, true),
      ctimeSec: v.getUint32(96, true) + v.getInt32(100, true) * 2 ** 32,
      ctimeNs: v.getUint32(104, true),
    };
  }

  close(): void {
    this.#c.close(this.#fd);
  }
}

/** Deno's own stat result (ms times) as a NativeStat. */
function fromFileInfo(st: Deno.FileInfo): NativeStat {
  return {
    kind: st.isFile ? "file" : st.isDirectory ? "dir" : st.isSymlink ? "symlink" : "other",
    size: st.size,
    mode: (st.mode ?? 0o644) & 0o7777,
    mtime: ns(st.mtime),
    ctime: ns(st.ctime),
    nlink: st.nlink ?? 1,
  };
}

const timesBuf = new Uint8Array(32);
const timesView = new DataView(timesBuf.buffer);

/**
 * Sets atime and mtime (ns) of a path without following a final symlink.
 * Falls back to Deno.utimeSync (µs precision, follows links; symlinks skipped).
 */
export function setTimesNs(path: string, mtime: bigint, isSymlink = false): void {
  const c = loadLibc();
  if (c) {
    fillTimes(mtime);
    if (c.utimensat(AT_FDCWD, cPath(path), timesBuf, AT_SYMLINK_NOFOLLOW) === 0) return;
  }
  if (isSymlink) return;
  const seconds = Number(mtime / 1000n) / 1e6;
  Deno.utimeSync(path, seconds, seconds);
}

const O_RDWR = 2;
const O_CREAT = 0o100;
const O_WRONLY = 1;
const O_EXCL = 0o200;

/** Fills timesBuf with `mtime` as both atime and mtime (struct timespec[2]). */
function fillTimes(mtime: bigint): void {
  const sec = mtime / 1_000_000_000n;
  const nsec = mtime % 1_000_000_000n;
  for (const off of [0, 16]) {
    timesView.setBigInt64(off, sec, true);
    timesView.setBigInt64(off + 8, nsec, true);
  }
}

/**
 * Creates the new file `path` (it must not exist) with `data`, permission
 * bits `mode` and mtime `mtime` (ns). Through FFI: open, write, fchmod only
 * when the umask took bits away, futimens and close on the descriptor. Deno's
 * own calls add an fchmod per file and utimensat resolves the path again (4
 * syscalls instead of 5; the time saved was within this VM's noise, see
 * docs/DESIGN.md). Throws like Deno's calls.
 */
export function createFile(
  path: string,
  data: Uint8Array,
  mode: number,
  mtime: bigint,
  umask: number,
): void {
  const c = loadLibc();
  const fd = c ? c.open(cPath(path), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0o777) : -1;
  if (fd < 0) {
    // No FFI, or the open failed: Deno's calls (and their error class and message).
    Deno.writeFileSync(path, data, { createNew: true, mode: mode & 0o777 });
    if ((mode & ~umask & 0o777) !== mode) Deno.chmodSync(path, mode);
    setTimesNs(path, mtime);
    return;
  }
  const lib = c!;
  try {
    for (let off = 0; off < data.length;) {
      const n = Number(lib.write(fd, off ? data.subarray(off) : data, BigInt(data.length - off)));
      if (n < 0) throw new Error(errnoMessage(lib));
      off += n;
    }
    if ((mode & ~umask & 0o777) !== mode && lib.fchmod(fd, mode) !== 0) {
      throw new Error(errnoMessage(lib));
    }
    fillTimes(mtime);
    if (lib.futimens(fd, timesBuf) !== 0) throw new Error(errnoMessage(lib));
  } finally {
    lib.close(fd);
  }
}
const LOCK_EX = 2;
const LOCK_NB = 4;

/**
 * Takes an exclusive advisory lock (flock) on `path` for the life of the
 * process. Returns false when another process holds it, null when locking
 * is not available here (no FFI).
 */
export function lockForLife(path: string): boolean | null {
  const c = loadLibc();
  if (!c) return null;
  const fd = c.open(cPath(path), O_RDWR | O_CREAT | O_CLOEXEC, 0o644);
  if (fd < 0) return null;
  return c.flock(fd, LOCK_EX | LOCK_NB) === 0;
}

/**
 * Flushes the filesystem holding `path` (syncfs(2)): one call that pushes
 * every dirty page of that filesystem to its server or disk, instead of an
 * fsync per file (measured: 10,000 fresh files took 4 s of fsyncs on ext4).
 * Returns false when not available here.
 */
export function syncFilesystem(path: string): boolean {
  const c = loadLibc();
  if (!c) return false;
  const fd = c.open(cPath(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) return false;
  try {
    return c.syncfs(fd) === 0;
  } finally {
    c.close(fd);
  }
}

/**
 * Hands memory that malloc holds free back to the OS (glibc malloc_trim):
 * SQLite's and the HTTP stack's freed buffers otherwise stay in the RSS of
 * a long-running server. No-op elsewhere.
 */
export function trimNativeHeap(): void {
  loadLibc()?.malloc_trim(0n);
}

/** True when `path` exists (lstat of any kind succeeds). */
export function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}
