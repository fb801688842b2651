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
import type { Storage } from "./storage/open.ts";

/**
 * A collector on its own thread.
 *
 * @example
 * ```ts
 * const gc = CollectorThread.open("/srv/keep", storage, { graceMs: 3600_000, writers });
 * await gc.start();
 * ```
 */
export class CollectorThread implements Rounds {
  #dataDir: string;
  #storage: Storage;
  #options: ThreadOptions;
  #log: (line: string) => void;
  /** The worker of the round that runs; null between rounds (its memory is given back). */
  #worker: Worker | null = null;
  /** A worker being shut down after its round. */
  #retiring: Promise<void> = Promise.resolve();
  #phase: Phase = "idle";
  #figures: GcFigures | null = null;
  /** Callers of start() waiting for the round that is running or asked for. */
  #waiting: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** A round was asked for while one runs: the worker starts it after. */
  #asked: { resolve: () => void; reject: (e: Error) => void }[] = [];
  #closed = false;

  private constructor(dataDir: string, storage: Storage, options: ThreadOptions) {
    this.#dataDir = dataDir;
    this.#storage = storage;
    this.#options = options;
    this.#log = options.log ?? (() => {});
  }

  /**
   * A collector for the store in `dataDir` (the one the server has open as
   * `storage`). Its worker starts with a round and ends after it: between
   * rounds the thread costs nothing (~20 MB of RSS while it lives).
   */
  static open(dataDir: string, storage: Storage, options: ThreadOptions): CollectorThread {
    return new CollectorThread(dataDir, storage, options);
  }

  /** Starts a worker and waits until it has the store open. */
  async #spawn(): Promise<Worker> {
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
        dataDir: this.#dataDir,
        s3: this.#options.s3 ?? undefined,
        graceMs: this.#options.graceMs,
        batch: this.#options.batch ?? 40_000,
        busyBatch: this.#options.busyBatch ?? 4000,
        writers: this.#options.writers,
        work: this.#options.work ?? new SharedArrayBuffer(16),
      },
    });
    try {
      await ready;
    } catch (err) {
      worker.terminate();
      throw err;
    }
    worker.onmessage = (ev: MessageEvent) => this.#onMessage(worker, ev.data);
    return worker;
  }

  /**
   * Places this thread read before may be stale: archives look again; open
   * handles of packs about to be deleted are let go.
   */
  #moved(): void {
    this.#storage.index.noteBlobsMoved();
    this.#storage.blobs.dropCached();
  }

  #onMessage(worker: Worker, m: Record<string, unknown>): void {
    if (m.log) this.#log(m.log as string);
    else if (m.moved) {
      this.#moved();
      worker.postMessage({ ack: true });
    } else if (m.phase) {
      this.#phase = m.phase as Phase;
      if (m.figures) this.#figures = m.figures as GcFigures;
    } else if (m.ended) {
      this.#moved();
      this.#phase = "idle";
      const done = this.#waiting.splice(0);
      for (const w of done) {
        if (m.error) w.reject(new KeepError("internal", `Cannot finish the GC round: ${m.error}`));
        else w.resolve();
      }
      if (this.#asked.length && !this.#closed) {
        this.#waiting = this.#asked.splice(0);
        this.#phase = "retention";
        worker.postMessage({ start: true });
      } else this.#retire(worker);
    }
  }

  /** Ends a worker whose round is over. */
  #retire(worker: Worker): void {
    if (this.#worker === worker) this.#worker = null;
    this.#retiring = this.#retiring.then(() => stopWorker(worker, () => this.#moved()));
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
    // A new worker finds such projects by itself (gcBacklog); one that runs
    // is told, for the round asked after its own.
    this.#worker?.postMessage({ dirty: project });
  }

  start(): Promise<void> {
    if (this.#closed) return Promise.reject(new KeepError("unavailable", "Cannot collect: closed"));
    return new Promise((resolve, reject) => {
      if (this.#waiting.length > 0) {
        this.#asked.push({ resolve, reject });
        return;
      }
      this.#waiting.push({ resolve, reject });
      this.#phase = "retention";
      (async () => {
        await this.#retiring;
        if (this.#closed) throw new KeepError("unavailable", "Cannot collect: closed");
        const worker = await this.#spawn();
        if (this.#closed) {
          await stopWorker(worker, () => this.#moved());
          throw new KeepError("unavailable", "Cannot collect: closed");
        }
        this.#worker = worker;
        worker.postMessage({ start: true });
      })().catch((err) => {
        this.#phase = "idle";
        this.#log(`gc: ${(err as Error).message}`);
        for (const w of [...this.#waiting.splice(0), ...this.#asked.splice(0)]) w.reject(err);
      });
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const worker = this.#worker;
    this.#worker = null;
    if (worker) await stopWorker(worker, () => this.#moved());
    await this.#retiring;
    const err = new KeepError("unavailable", "Cannot finish the GC round: the server is stopping");
    for (const w of [...this.#waiting.splice(0), ...this.#asked.splice(0)]) w.reject(err);
  }
}

/** Options of a collector thread. */
export interface ThreadOptions {
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
}

/**
 * Asks a worker to close its store (its round stops at a step's end), then
 * ends it; `moved` is told of blobs it moves meanwhile, as in a round.
 */
async function stopWorker(worker: Worker, moved: () => void): Promise<void> {
  const closed = new Promise<void>((resolve) => {
    worker.onmessage = (ev: MessageEvent) => {
      if (ev.data.closed) resolve();
      else if (ev.data.moved) {
        moved();
        worker.postMessage({ ack: true });
      }
    };
  });
  worker.postMessage({ close: true });
  await Promise.race([closed, new Promise((r) => setTimeout(r, 5000))]);
  worker.terminate();
}
