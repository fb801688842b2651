/**
 * The main-thread half of restore's file writing: verified small files are
 * handed to the writer Worker (restore_writer.ts) in batches, with at most
 * MAX_INFLIGHT bytes not yet written, so memory stays bounded while the
 * kernel's file creation overlaps with decoding and hashing.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import type { WriteError, WriteJob } from "./restore_writer.ts";

/**
 * Hands verified small files to the writer Worker in batches, with at most
 * MAX_INFLIGHT bytes not yet written (memory stays bounded).
 */
export class FileWriter {
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
