/**
 * The server's handle on the collector's Worker (gc_worker.ts): the same
 * Rounds as an in-process Collector, with the work on another thread.
 *
 * @module
 */

import type { S3Blobs } from "./storage/open.ts";
import { KeepError } from "../errors.ts";
import type { GcFigures } from "../format/api.ts";
import type { Phase, Rounds } from "./gc.ts";
import type { IndexStore } from "./storage/index_store.ts";

/**
 * A collector on its own thread.
 *
 * @example
 * ```ts
 * const gc = await CollectorThread.open("/srv/keep", storage.index, { graceMs: 3600_000 });
 * await gc.start();
 * ```
 */
export class CollectorThread implements Rounds {
  #worker: Worker;
  #index: IndexStore;
  #phase: Phase = "idle";
  #figures: GcFigures | null = null;
  /** Callers of start() waiting for the round that is running or asked for. */
  #waiting: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** A round was asked for while one runs: the worker starts it after. */
  #asked: { resolve: () => void; reject: (e: Error) => void }[] = [];
  #closed = false;
  #closedSignal: (() => void) | null = null;

  private constructor(worker: Worker, index: IndexStore, log: (line: string) => void) {
    this.#worker = worker;
    this.#index = index;
    worker.onmessage = (ev: MessageEvent) => {
      const m = ev.data as Record<string, unknown>;
      if (m.log) log(m.log as string);
      else if (m.moved) {
        // Places this thread read before may be stale: archives look again.
        index.noteBlobsMoved();
        worker.postMessage({ ack: true });
      } else if (m.phase) {
        this.#phase = m.phase as Phase;
        if (m.figures) this.#figures = m.figures as GcFigures;
      } else if (m.ended) {
        const done = this.#waiting.splice(0);
        this.#index.noteBlobsMoved();
        for (const w of done) {
          if (m.error) {
            w.reject(new KeepError("internal", `Cannot finish the GC round: ${m.error}`));
          } else w.resolve();
        }
        if (this.#asked.length && !this.#closed) {
          this.#waiting = this.#asked.splice(0);
          this.#worker.postMessage({ start: true });
        }
      } else if (m.closed) this.#closedSignal?.();
    };
  }

  /** Starts the worker on `dataDir` (the store the server has open as `index`). */
  static async open(
    dataDir: string,
    index: IndexStore,
    options: {
      graceMs: number;
      /** The counter the server's connection was opened with (openLocalStorage `writers`). */
      writers: SharedArrayBuffer;
      /** Requests at work (see Inflight.work in http/context.ts): GC slows down for them. */
      work?: SharedArrayBuffer;
      batch?: number;
      busyBatch?: number;
      /** The bucket of the blobs, when in one (Storage.s3). */
      s3?: S3Blobs | null;
      log?: (line: string) => void;
    },
  ): Promise<CollectorThread> {
    const worker = new Worker(new URL("./gc_worker.ts", import.meta.url).href, { type: "module" });
    const ready = new Promise<void>((resolve, reject) => {
      worker.onmessage = (ev: MessageEvent) => {
        if (ev.data.ready) resolve();
        else if (ev.data.failed) {
          reject(new KeepError("internal", `Cannot start GC: ${ev.data.failed}`));
        }
      };
      worker.onerror = (e) => {
        e.preventDefault();
        reject(new KeepError("internal", `Cannot start GC: ${e.message}`));
      };
    });
    // Idle: big batches (fewer index pages rewritten per row); with uploads
    // in flight, small ones (an upload waits for the write lock at most that long).
    worker.postMessage({
      init: {
        dataDir,
        s3: options.s3 ?? undefined,
        graceMs: options.graceMs,
        batch: options.batch ?? 40_000,
        busyBatch: options.busyBatch ?? 4000,
        writers: options.writers,
        work: options.work ?? new SharedArrayBuffer(16),
      },
    });
    await ready;
    return new CollectorThread(worker, index, options.log ?? (() => {}));
  }

  get running(): boolean {
    return this.#phase !== "idle" || this.#waiting.length > 0;
  }

  get phase(): Phase {
    return this.#phase;
  }

  get figures(): GcFigures | null {
    return this.#figures;
  }

  markDirty(project: string): void {
    this.#worker.postMessage({ dirty: project });
  }

  start(): Promise<void> {
    if (this.#closed) return Promise.reject(new KeepError("unavailable", "Cannot collect: closed"));
    return new Promise((resolve, reject) => {
      if (this.#waiting.length === 0) {
        this.#waiting.push({ resolve, reject });
        this.#phase = "retention";
        this.#worker.postMessage({ start: true });
      } else this.#asked.push({ resolve, reject });
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new Promise<void>((r) => this.#closedSignal = r);
    this.#worker.postMessage({ close: true });
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5000))]);
    this.#worker.terminate();
    const err = new KeepError("unavailable", "Cannot finish the GC round: the server is stopping");
    for (const w of [...this.#waiting.splice(0), ...this.#asked.splice(0)]) w.reject(err);
  }
}
