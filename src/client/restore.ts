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

import { createHash, type Hash } from "node:crypto";
import { KeepError } from "../errors.ts";
import { ArchiveReader } from "../format/archive_reader.ts";
import { comparePaths, parentOf, pathProblem } from "../format/paths.ts";
import type { TarHeader } from "../format/tar.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import { lstatNs, setTimesNs } from "../platform/fs_native.ts";
import { churned } from "../platform/memory.ts";
import { FileWriter } from "./file_writer.ts";
import type { Problem } from "./problem.ts";

export interface RestoreOptions {
  /** Allow a non-empty destination: existing files are replaced. */
  overwrite?: boolean;
  signal?: AbortSignal;
  onProblem?: (p: Problem) => void;
  onProgress?: (r: RestoreResult) => void;
}

export interface RestoreResult {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  /** Files whose content did not match their hash (not written). */
  hashErrors: number;
  problems: Problem[];
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
export function restoreArchive(
  stream: ReadableStream<Uint8Array>,
  dest: string,
  options: RestoreOptions = {},
): Promise<RestoreResult> {
  return new Restorer(dest, options).run(stream);
}

/** The file being received: its header, expected hash, and bytes (memory or a temp file). */
interface Receiving {
  h: TarHeader;
  expect: string;
  sha: Hash;
  parts: Uint8Array[];
  /** Written through a temp file by the writer (not held in parts). */
  large: boolean;
  tmp: string;
}

/**
 * One restore: a tar sink (entries, data, ends) that checks every path
 * before anything is created, then writes what it verified.
 */
class Restorer {
  readonly #dest: string;
  readonly #options: RestoreOptions;
  readonly #overwrite: boolean;
  readonly #result: RestoreResult = {
    files: 0,
    dirs: 0,
    symlinks: 0,
    bytes: 0,
    hashErrors: 0,
    problems: [],
  };
  /** Directories this restore made or found real (never a symlink). */
  readonly #realDirs = new Set<string>([""]);
  readonly #dirMeta: { path: string; mode: number; mtime: bigint }[] = [];
  readonly #writer = new FileWriter();
  #lastPath = "";
  #tmpSeq = 0;
  #cur: TarHeader | null = null;
  #file: Receiving | null = null;
  /** The body of the server's error entry, while it is read. */
  #errorBody: Uint8Array[] | null = null;

  constructor(dest: string, options: RestoreOptions) {
    this.#dest = dest;
    this.#options = options;
    this.#overwrite = options.overwrite ?? false;
  }

  async run(stream: ReadableStream<Uint8Array>): Promise<RestoreResult> {
    const reader = new ArchiveReader({
      entry: (h) => this.#onEntry(h),
      data: (c) => this.#onData(c),
      entryEnd: () => this.#onEntryEnd(),
    }, {
      // Stored content that does not decode: damage, not a bad request.
      onBadMember: (err) =>
        new KeepError(
          "integrity",
          `Cannot restore ${this.#cur?.path ?? (this.#lastPath || "the archive")}: ${
            (err as Error).message.replace(/^Cannot read archive: /, "")
          }`,
        ),
    });
    const body = stream.getReader();
    try {
      for (let r = await readBody(body); !r.done; r = await readBody(body)) {
        if (this.#options.signal?.aborted) throw this.#options.signal.reason;
        reader.push(r.value);
        churned(r.value.length * 2);
        this.#options.onProgress?.(this.#result);
        await this.#writer.ready();
      }
      reader.end();
      for (const e of await this.#writer.finish()) {
        throw new KeepError(
          "io",
          `Cannot restore ${e.path.slice(this.#dest.length + 1)}: ${e.message}`,
        );
      }
    } catch (err) {
      // What was verified before the failure is still written, then the failure is reported.
      try {
        await this.#writer.finish();
      } catch { /* the original error matters more */ }
      throw err;
    } finally {
      body.releaseLock();
      this.#writer.close();
      this.#dropTemp();
    }
    // Directories last, deepest first, so their mtimes stay put.
    for (let i = this.#dirMeta.length - 1; i >= 0; i--) {
      const d = this.#dirMeta[i];
      Deno.chmodSync(this.#abs(d.path), d.mode);
      setTimesNs(this.#abs(d.path), d.mtime);
    }
    return this.#result;
  }

  #abs(rel: string): string {
    return `${this.#dest}/${rel}`;
  }

  #problem(path: string, reason: string): void {
    const p: Problem = { path, reason, kind: "damaged" };
    this.#result.problems.push(p);
    this.#options.onProblem?.(p);
  }

  /** Makes sure `rel` is a real directory of this restore (creating it and its parents). */
  #ensureDir(rel: string): void {
    if (this.#realDirs.has(rel)) return;
    // A file of this archive still queued for the writer is not on disk yet.
    if (this.#writer.isPending(this.#abs(rel))) {
      throw new KeepError(
        "invalid",
        `Cannot restore below ${rel}: the archive has it as a file, not a directory`,
      );
    }
    this.#ensureDir(parentOf(rel));
    let st;
    try {
      st = lstatNs(this.#abs(rel));
    } catch {
      Deno.mkdirSync(this.#abs(rel), { mode: 0o755 });
      this.#realDirs.add(rel);
      return;
    }
    if (st.kind !== "dir") {
      throw new KeepError(
        "invalid",
        `Cannot restore below ${rel}: it is a ${st.kind}, not a directory`,
      );
    }
    this.#realDirs.add(rel);
  }

  /** Removes whatever non-directory is at rel (overwrite mode); says whether a directory is there. */
  #clear(rel: string): "none" | "dir" {
    // DEST was empty and entries come strictly ordered: nothing can be in the
    // way (and creating with createNew/mkdir would fail loudly if it were).
    if (!this.#overwrite) return "none";
    let st;
    try {
      st = lstatNs(this.#abs(rel));
    } catch {
      return "none";
    }
    if (st.kind === "dir") return "dir";
    Deno.removeSync(this.#abs(rel));
    return "none";
  }

  #onEntry(h: TarHeader): void {
    if (h.keep?.control === "error" && h.type === "file" && h.size <= 65536) {
      this.#errorBody = [];
      return;
    }
    const bad = pathProblem(h.path);
    if (bad) {
      throw new KeepError(
        "invalid",
        `Cannot restore ${JSON.stringify(h.path)}: unsafe path (${bad})`,
      );
    }
    if (comparePaths(this.#lastPath, h.path) >= 0) {
      throw new KeepError(
        "invalid",
        `Cannot restore ${JSON.stringify(h.path)}: entries out of order or repeated`,
      );
    }
    this.#lastPath = h.path;
    this.#ensureDir(parentOf(h.path));
    this.#cur = h;
    if (h.type === "dir") {
      if (this.#clear(h.path) === "none") Deno.mkdirSync(this.#abs(h.path), { mode: 0o700 });
      this.#realDirs.add(h.path);
      this.#dirMeta.push({ path: h.path, mode: h.mode, mtime: h.mtime });
      this.#result.dirs++;
      return;
    }
    if (this.#clear(h.path) === "dir") {
      throw new KeepError("invalid", `Cannot restore ${h.path}: a directory is in the way`);
    }
    if (h.type === "symlink") {
      Deno.symlinkSync(h.linkname!, this.#abs(h.path));
      setTimesNs(this.#abs(h.path), h.mtime, true);
      this.#result.symlinks++;
      return;
    }
    const expect = h.keep?.sha256 ?? "";
    if (!/^[0-9a-f]{64}$/.test(expect)) {
      throw new KeepError("invalid", `Cannot restore ${h.path}: no content hash`);
    }
    let tmp = "";
    if (h.size > SMALL) {
      // Large files go through a temp file beside their target, renamed once
      // verified; the writer Worker does the writing (the kernel's page-cache
      // work overlaps with receiving, inflating and hashing here).
      const dir = parentOf(h.path);
      tmp = this.#abs(`${dir ? dir + "/" : ""}.keep-restore-${Deno.pid}-${++this.#tmpSeq}.part`);
      this.#writer.openLarge(tmp, this.#abs(h.path));
    }
    this.#file = { h, expect, sha: createHash("sha256"), parts: [], large: tmp !== "", tmp };
  }

  #onData(chunk: Uint8Array): void {
    if (this.#errorBody) {
      this.#errorBody.push(chunk.slice());
      return;
    }
    const f = this.#file!;
    f.sha.update(chunk);
    if (f.large) this.#writer.writeLarge(chunk);
    else f.parts.push(chunk.slice());
    this.#result.bytes += chunk.length;
  }

  #onEntryEnd(): void {
    if (this.#errorBody) throw serverError(concatBytes(this.#errorBody));
    const h = this.#cur!;
    this.#cur = null;
    if (h.type !== "file") return;
    const f = this.#file!;
    this.#file = null;
    const got = f.sha.digest("hex");
    const target = this.#abs(h.path);
    if (got !== f.expect) {
      if (f.large) this.#writer.endLarge(false, h.size, h.mode, h.mtime);
      this.#result.hashErrors++;
      this.#problem(
        h.path,
        `content hash mismatch (got ${got.slice(0, 12)}…, expected ${
          f.expect.slice(0, 12)
        }…): not written`,
      );
      return;
    }
    this.#result.files++;
    if (!f.large) {
      // Verified: the writer creates it (with its mode and mtime) off this thread.
      const data = f.parts.length === 1 ? f.parts[0] : concatBytes(f.parts);
      this.#writer.add({ path: target, data, mode: h.mode, mtime: h.mtime });
      return;
    }
    // Verified: the writer renames it into place with its mode and mtime.
    this.#writer.endLarge(true, h.size, h.mode, h.mtime);
  }

  /**
   * A large file cut short by a failure: the writer's finish() removed its
   * temp file; this is for a writer that failed itself.
   */
  #dropTemp(): void {
    const f = this.#file;
    if (!f?.large) return;
    this.#file = null;
    try {
      Deno.removeSync(f.tmp);
    } catch { /* already gone */ }
  }
}

/** One read of the archive body; a broken connection is `unavailable`, not bad data. */
async function readBody(
  body: ReadableStreamDefaultReader<Uint8Array>,
): Promise<ReadableStreamReadResult<Uint8Array>> {
  try {
    return await body.read();
  } catch (err) {
    if (err instanceof KeepError) throw err;
    throw new KeepError(
      "unavailable",
      `Cannot restore: the connection to the server broke (${(err as Error).message})`,
    );
  }
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
