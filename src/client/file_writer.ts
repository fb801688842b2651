/**
 * The main-thread half of restore's file writing: verified small files are
 * handed to the writer Worker (restore_writer.ts) in batches, and the bytes of
 * large files as they arrive (renamed into place once verified), with at most
 * MAX_INFLIGHT bytes not yet written, so memory stays bounded while the
 * kernel's file creation and page-cache work overlap with decoding and hashing.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import type { LargeOp, WriteError, WriteJob } from "./restore_writer.ts";

/**
 * Hands verified small files to the writer Worker in batches, and large files
 * chunk by chunk, with at most MAX_INFLIGHT bytes not yet written (memory stays
 * bounded).
 */
export class FileWriter {
  static MAX_INFLIGHT = 8 << 20;
  static BATCH = 256;
  /** Size of the buffers large files' chunks travel in (reused once written). */
  static CHUNK = 1 << 20;
  #worker = new Worker(new URL("./restore_writer.ts", import.meta.url).href, { type: "module" });
  #batch: WriteJob[] = [];
  #batchBytes = 0;
  /** Paths of files handed over and not yet written, by message (for isPending). */
  #pending = new Set<string>();
  #sent: string[][] = [];
  #inflight = 0;
  #wake: (() => void) | null = null;
  #flushed: ((errors: WriteError[]) => void) | null = null;
  #failure: Error | null = null;
  /** Chunk buffers the worker gave back. */
  #free: ArrayBuffer[] = [];
  /** The large file's chunk being filled. */
  #chunk: Uint8Array | null = null;
  #chunkLen = 0;
  #largeTarget: string | null = null;

  constructor() {
    this.#worker.onmessage = (ev: MessageEvent) => {
      const m = ev.data as {
        done?: number;
        buffer?: ArrayBuffer;
        flushed?: boolean;
        errors?: WriteError[];
      };
      if (m.done !== undefined) {
        this.#inflight -= m.done;
        for (const path of this.#sent.shift() ?? []) this.#pending.delete(path);
        if (m.buffer && this.#free.length < 16) this.#free.push(m.buffer);
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

  #post(msg: unknown, paths: string[], bytes: number, transfer: ArrayBuffer[] = []): void {
    this.#inflight += bytes;
    this.#sent.push(paths);
    this.#worker.postMessage(msg, transfer);
  }

  #send(): void {
    if (!this.#batch.length) return;
    const transfer = this.#batch.map((j) => j.data.buffer).filter((b, i, all) =>
      all.indexOf(b) === i && b instanceof ArrayBuffer
    ) as ArrayBuffer[];
    this.#post({ files: this.#batch }, this.#batch.map((j) => j.path), this.#batchBytes, transfer);
    this.#batch = [];
    this.#batchBytes = 0;
  }

  /**
   * Starts a large file: its bytes go to `tmp` (created new, mode 0600), and
   * `target` counts as pending until endLarge.
   */
  openLarge(tmp: string, target: string): void {
    this.#send(); // files before it keep their order
    this.#largeTarget = target;
    this.#pending.add(target);
    this.#post({ large: { op: "open", tmp } satisfies LargeOp }, [], 0);
  }

  /** Appends bytes to the large file (copied: `data` may be reused when this returns). */
  writeLarge(data: Uint8Array): void {
    for (let o = 0; o < data.length;) {
      if (!this.#chunk) {
        const buf = this.#free.pop() ?? new ArrayBuffer(FileWriter.CHUNK);
        this.#chunk = new Uint8Array(buf);
        this.#chunkLen = 0;
      }
      const n = Math.min(data.length - o, this.#chunk.length - this.#chunkLen);
      this.#chunk.set(data.subarray(o, o + n), this.#chunkLen);
      this.#chunkLen += n;
      o += n;
      if (this.#chunkLen === this.#chunk.length) this.#sendChunk();
    }
  }

  #sendChunk(): void {
    const chunk = this.#chunk;
    if (!chunk || this.#chunkLen === 0) return;
    this.#chunk = null;
    const data = chunk.subarray(0, this.#chunkLen);
    this.#post(
      { large: { op: "write", data } satisfies LargeOp },
      [],
      data.length,
      [chunk.buffer as ArrayBuffer],
    );
  }

  /**
   * Ends the large file: truncated to `size`, renamed to its target with its
   * mode and mtime when `ok` (its hash matched), else removed.
   */
  endLarge(ok: boolean, size: number, mode: number, mtime: bigint): void {
    if (ok) this.#sendChunk();
    else this.#chunk = null;
    const target = this.#largeTarget;
    this.#largeTarget = null;
    const end: LargeOp = { op: "end", size, target: ok ? target : null, mode, mtime };
    this.#post({ large: end }, target === null ? [] : [target], 0);
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

  /**
   * Sends what is left and waits until every file is written; returns the
   * failures. A large file still open (a restore that stopped) is removed.
   */
  async finish(): Promise<WriteError[]> {
    this.#send();
    if (this.#largeTarget !== null) this.endLarge(false, 0, 0, 0n);
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
