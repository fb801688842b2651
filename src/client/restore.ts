/**
 * Client side of restore: materialises a tar.gz stream from the server into
 * a directory. Every path is checked before anything is written: it must be a
 * clean relative path, and each of its parents a real directory this restore
 * made or found (never a symlink), so no entry can write outside DEST.
 * Files are verified against their SHA-256 before they appear under their
 * name (small ones in memory, large ones through a temp file renamed into
 * place); a mismatch is reported and the file is not written. Modes and
 * mtimes (ns where the platform allows) are applied, directories last.
 *
 * Damage is reported as integrity (exit 4) with the path it hit: a member
 * that does not decode, and the server's `.keep-error.json` control entry
 * (a blob it could not read). A hostile archive that puts entries below one
 * of its own files is refused before anything is created in that file's place.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash, type Hash } from "node:crypto";
import { concatBytes } from "../platform/concat_bytes.ts";
import { KeepError } from "../errors.ts";
import { lstatNs, setTimesNs } from "../platform/fs_native.ts";
import { decodeMemberTransient, MemberSplitter } from "../format/gzip_member.ts";
import { churned } from "../platform/memory.ts";
import { comparePaths, parentOf, pathProblem } from "../format/paths.ts";
import type { WriteError, WriteJob } from "./restore_writer.ts";
import { type TarHeader, TarParser } from "../format/tar.ts";

export interface RestoreOptions {
  /** Allow a non-empty destination: existing files are replaced. */
  overwrite?: boolean;
  signal?: AbortSignal;
  onProblem?: (p: { path: string; reason: string }) => void;
  onProgress?: (r: RestoreResult) => void;
}

export interface RestoreResult {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  /** Files whose content did not match their hash (not written). */
  hashErrors: number;
  problems: { path: string; reason: string }[];
}

const SMALL = 1 << 20;

/** Throws usage unless `dest` is missing or empty (or overwrite is set); creates it. */
export function prepareDestination(dest: string, overwrite: boolean): void {
  let st;
  try {
    st = Deno.lstatSync(dest);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
    Deno.mkdirSync(dest, { recursive: true });
    return;
  }
  if (!st.isDirectory) {
    throw new KeepError("usage", `Cannot restore into ${dest}: it is not a directory`);
  }
  if (!overwrite) {
    for (const _ of Deno.readDirSync(dest)) {
      throw new KeepError(
        "usage",
        `Cannot restore into ${dest}: it is not empty (use --overwrite to replace files)`,
      );
    }
  }
}

/**
 * Restores an archive stream into `dest` (which must exist).
 *
 * @example
 * ```ts
 * prepareDestination("/tmp/out", false);
 * const r = await restoreArchive(response.body!, "/tmp/out");
 * ```
 */
export async function restoreArchive(
  stream: ReadableStream<Uint8Array>,
  dest: string,
  options: RestoreOptions = {},
): Promise<RestoreResult> {
  const result: RestoreResult = {
    files: 0,
    dirs: 0,
    symlinks: 0,
    bytes: 0,
    hashErrors: 0,
    problems: [],
  };
  const overwrite = options.overwrite ?? false;
  const realDirs = new Set<string>([""]);
  const dirMeta: { path: string; mode: number; mtime: bigint }[] = [];
  const abs = (rel: string) => `${dest}/${rel}`;
  const problem = (path: string, reason: string) => {
    result.problems.push({ path, reason });
    options.onProblem?.({ path, reason });
  };

  const ensureDir = (rel: string): void => {
    if (realDirs.has(rel)) return;
    // A file of this archive still queued for the writer is not on disk yet.
    if (writer.isPending(abs(rel))) {
      throw new KeepError(
        "invalid",
        `Cannot restore below ${rel}: the archive has it as a file, not a directory`,
      );
    }
    ensureDir(parentOf(rel));
    let st;
    try {
      st = lstatNs(abs(rel));
    } catch {
      Deno.mkdirSync(abs(rel), { mode: 0o755 });
      realDirs.add(rel);
      return;
    }
    if (st.kind !== "dir") {
      throw new KeepError(
        "invalid",
        `Cannot restore below ${rel}: it is a ${st.kind}, not a directory`,
      );
    }
    realDirs.add(rel);
  };

  /** Removes whatever non-directory is at rel (overwrite mode). */
  const clear = (rel: string): "none" | "dir" => {
    // DEST was empty and entries come strictly ordered: nothing can be in the
    // way (and creating with createNew/mkdir would fail loudly if it were).
    if (!overwrite) return "none";
    let st;
    try {
      st = lstatNs(abs(rel));
    } catch {
      return "none";
    }
    if (st.kind === "dir") return "dir";
    if (!overwrite) throw new KeepError("invalid", `Cannot restore ${rel}: it already exists`);
    Deno.removeSync(abs(rel));
    return "none";
  };

  let cur: TarHeader | null = null;
  let expect = "";
  let sha: Hash | null = null;
  let parts: Uint8Array[] = [];
  let file: Deno.FsFile | null = null;
  let tmp = "";
  let lastPath = "";
  let tmpSeq = 0;
  /** The body of the server's error entry, while it is read. */
  let errorBody: Uint8Array[] | null = null;

  const parser = new TarParser({
    entry(h) {
      if (h.keep?.control === "error" && h.type === "file" && h.size <= 65536) {
        errorBody = [];
        return;
      }
      const bad = pathProblem(h.path);
      if (bad) {
        throw new KeepError(
          "invalid",
          `Cannot restore ${JSON.stringify(h.path)}: unsafe path (${bad})`,
        );
      }
      if (comparePaths(lastPath, h.path) >= 0) {
        throw new KeepError(
          "invalid",
          `Cannot restore ${JSON.stringify(h.path)}: entries out of order or repeated`,
        );
      }
      lastPath = h.path;
      ensureDir(parentOf(h.path));
      cur = h;
      if (h.type === "dir") {
        if (clear(h.path) === "none") Deno.mkdirSync(abs(h.path), { mode: 0o700 });
        realDirs.add(h.path);
        dirMeta.push({ path: h.path, mode: h.mode, mtime: h.mtime });
        result.dirs++;
        return;
      }
      if (clear(h.path) === "dir") {
        throw new KeepError("invalid", `Cannot restore ${h.path}: a directory is in the way`);
      }
      if (h.type === "symlink") {
        Deno.symlinkSync(h.linkname!, abs(h.path));
        setTimesNs(abs(h.path), h.mtime, true);
        result.symlinks++;
        return;
      }
      expect = h.keep?.sha256 ?? "";
      if (!/^[0-9a-f]{64}$/.test(expect)) {
        throw new KeepError("invalid", `Cannot restore ${h.path}: no content hash`);
      }
      sha = createHash("sha256");
      parts = [];
      if (h.size > SMALL) {
        tmp = abs(
          `${
            parentOf(h.path) ? parentOf(h.path) + "/" : ""
          }.keep-restore-${Deno.pid}-${++tmpSeq}.part`,
        );
        file = Deno.openSync(tmp, { write: true, createNew: true, mode: 0o600 });
      }
    },
    data(chunk) {
      if (errorBody) {
        errorBody.push(chunk.slice());
        return;
      }
      sha!.update(chunk);
      if (file) {
        if (isZero(chunk)) {
          // Leave a hole: sparse files come back sparse (truncate sets the size at the end).
          file.seekSync(chunk.length, Deno.SeekMode.Current);
        } else {
          let o = 0;
          while (o < chunk.length) o += file.writeSync(chunk.subarray(o));
        }
      } else {
        parts.push(chunk.slice());
      }
      result.bytes += chunk.length;
    },
    entryEnd() {
      if (errorBody) throw serverError(concatBytes(errorBody));
      const h = cur!;
      cur = null;
      if (h.type !== "file") return;
      const got = sha!.digest("hex");
      sha = null;
      const target = abs(h.path);
      if (got !== expect) {
        if (file) {
          file.close();
          file = null;
          Deno.removeSync(tmp);
        }
        result.hashErrors++;
        problem(
          h.path,
          `content hash mismatch (got ${got.slice(0, 12)}…, expected ${
            expect.slice(0, 12)
          }…): not written`,
        );
        return;
      }
      if (file) {
        file.truncateSync(h.size);
        file.close();
        file = null;
        Deno.renameSync(tmp, target);
      } else {
        // Verified: the writer creates it (with its mode and mtime) off this thread.
        const data = parts.length === 1 ? parts[0] : concatBytes(parts);
        parts = [];
        writer.add({ path: target, data, mode: h.mode, mtime: h.mtime });
        result.files++;
        return;
      }
      parts = [];
      Deno.chmodSync(target, h.mode);
      setTimesNs(target, h.mtime);
      result.files++;
    },
  });

  const split = new MemberSplitter();
  const writer = new FileWriter();
  const reader = stream.getReader();
  const next = async () => {
    try {
      return await reader.read();
    } catch (err) {
      if (err instanceof KeepError) throw err;
      throw new KeepError(
        "unavailable",
        `Cannot restore: the connection to the server broke (${(err as Error).message})`,
      );
    }
  };
  try {
    for (let r = await next(); !r.done; r = await next()) {
      const chunk = r.value;
      if (options.signal?.aborted) throw options.signal.reason;
      split.push(chunk);
      // Views valid until the next member: the parser's sink hashes and
      // writes or copies every piece at once.
      for (let m = split.next(true); m; m = split.next(true)) {
        let raw: Uint8Array;
        try {
          raw = decodeMemberTransient(m);
        } catch (err) {
          // Stored content that does not decode: damage, not a bad request.
          const where = cur ? (cur as TarHeader).path : lastPath || "the archive";
          throw new KeepError(
            "integrity",
            `Cannot restore ${where}: ${
              (err as Error).message.replace(/^Cannot read archive: /, "")
            }`,
          );
        }
        parser.push(raw);
      }
      churned(chunk.length * 2);
      options.onProgress?.(result);
      await writer.ready();
    }
    split.end();
    parser.finish();
    for (const e of await writer.finish()) {
      throw new KeepError("io", `Cannot restore ${e.path.slice(dest.length + 1)}: ${e.message}`);
    }
  } catch (err) {
    // What was verified before the failure is still written, then the failure is reported.
    try {
      await writer.finish();
    } catch { /* the original error matters more */ }
    throw err;
  } finally {
    reader.releaseLock();
    writer.close();
    if (file) {
      (file as Deno.FsFile).close();
      try {
        Deno.removeSync(tmp);
      } catch { /* already gone */ }
    }
  }
  // Directories last, deepest first, so their mtimes stay put.
  for (let i = dirMeta.length - 1; i >= 0; i--) {
    const d = dirMeta[i];
    Deno.chmodSync(abs(d.path), d.mode);
    setTimesNs(abs(d.path), d.mtime);
  }
  return result;
}

/** The server's error entry as an integrity error naming the path. */
function serverError(body: Uint8Array): KeepError {
  try {
    const e = JSON.parse(new TextDecoder().decode(body)) as { path?: unknown; message?: unknown };
    if (typeof e.path === "string" && typeof e.message === "string") {
      return new KeepError(
        "integrity",
        `Cannot restore ${e.path}: the server cannot read its content (${
          e.message.replace(/^Cannot /, "cannot ")
        }); the files before it were restored`,
      );
    }
  } catch { /* below */ }
  return new KeepError("integrity", "Cannot restore: the server ended the archive with an error");
}

/**
 * Hands verified small files to the writer Worker in batches, with at most
 * MAX_INFLIGHT bytes not yet written (memory stays bounded).
 */
class FileWriter {
  static MAX_INFLIGHT = 8 << 20;
  static BATCH = 256;
  #worker = new Worker(new URL("./restore_writer.ts", import.meta.url).href, { type: "module" });
  #batch: WriteJob[] = [];
  #batchBytes = 0;
  /** Paths of files handed over and not yet written, by batch (for isPending). */
  #pending = new Set<string>();
  #sent: string[][] = [];
  #inflight = 0;
  #wake: (() => void) | null = null;
  #flushed: ((errors: WriteError[]) => void) | null = null;
  #failure: Error | null = null;

  constructor() {
    this.#worker.onmessage = (ev: MessageEvent) => {
      const m = ev.data as { done?: number; flushed?: boolean; errors?: WriteError[] };
      if (m.done !== undefined) {
        this.#inflight -= m.done;
        for (const path of this.#sent.shift() ?? []) this.#pending.delete(path);
        this.#wake?.();
      }
      if (m.flushed) this.#flushed?.(m.errors ?? []);
    };
    this.#worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      this.#failure = new KeepError("internal", `Cannot write files: ${ev.message}`);
      this.#wake?.();
      this.#flushed?.([]);
    };
  }

  add(job: WriteJob): void {
    this.#batch.push(job);
    this.#pending.add(job.path);
    this.#batchBytes += job.data.length;
    if (this.#batch.length >= FileWriter.BATCH || this.#batchBytes >= 4 << 20) this.#send();
  }

  #send(): void {
    if (!this.#batch.length) return;
    this.#inflight += this.#batchBytes;
    const transfer = this.#batch.map((j) => j.data.buffer).filter((b, i, all) =>
      all.indexOf(b) === i && b instanceof ArrayBuffer
    ) as ArrayBuffer[];
    this.#sent.push(this.#batch.map((j) => j.path));
    this.#worker.postMessage({ files: this.#batch }, transfer);
    this.#batch = [];
    this.#batchBytes = 0;
  }

  /** True while the file at `path` is handed over but not written yet. */
  isPending(path: string): boolean {
    return this.#pending.has(path);
  }

  /** Waits while too much is waiting to be written. */
  async ready(): Promise<void> {
    while (this.#inflight > FileWriter.MAX_INFLIGHT && !this.#failure) {
      await new Promise<void>((r) => this.#wake = r);
      this.#wake = null;
    }
    if (this.#failure) throw this.#failure;
  }

  /** Sends what is left and waits until every file is written; returns the failures. */
  async finish(): Promise<WriteError[]> {
    this.#send();
    const done = new Promise<WriteError[]>((r) => this.#flushed = r);
    this.#worker.postMessage({ flush: true });
    const errors = await done;
    if (this.#failure) throw this.#failure;
    return errors;
  }

  close(): void {
    this.#worker.terminate();
  }
}

const ZEROS = Buffer.alloc(1 << 20);

function isZero(chunk: Uint8Array): boolean {
  if (chunk.length < 4096 || chunk.length > ZEROS.length) return false;
  return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length).equals(
    ZEROS.subarray(0, chunk.length),
  );
}
