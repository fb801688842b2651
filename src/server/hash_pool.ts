/**
 * Hashes big files from their stored chunks on up to two Workers
 * (hash_worker.ts), one file each at a time: a file sent in part is hashed
 * by the server from its chunks (server/possession.ts), ~1.7 ms per MB of
 * inflate and SHA-256 here, and an upload that edited several big files
 * would otherwise wait for them one after another on one core. This thread
 * reads the stored chunks and hands each over (transferred, not copied),
 * a few MB ahead of its worker.
 *
 * A worker that fails (it did not start, or died) is dropped and its hash
 * fails with WorkerFailure: the caller hashes on its own thread instead
 * (the pool is a speed-up, never a reason to refuse an upload).
 *
 * @module
 */

import type { HashIn, HashOut } from "./hash_worker.ts";

/** What a file's raw content hashes to. */
export interface ContentDigest {
  hash: string;
  xxh: string;
  /** The proof over the content under the key given (null: none asked). */
  mac: string | null;
}

/** Chunk `index` of a file is damaged (CRC, length, or not its row's size). */
export class ChunkFault extends Error {
  constructor(readonly index: number, message: string) {
    super(message);
  }
}

/** The pool could not hash (a worker failed, or the pool closed): hash elsewhere. */
export class WorkerFailure extends Error {}

/** Stored bytes in flight to one worker, at most. */
const AHEAD_BYTES = 8 << 20;

interface Waiter {
  resolve: (w: Worker) => void;
  reject: (err: Error) => void;
}

/**
 * Up to `threads` Workers, started on first use, ended by close().
 *
 * @example
 * ```ts
 * using pool = new HashPool(2);
 * const d = await pool.hash(sizes, (i) => readStored(i), null);
 * ```
 */
export class HashPool implements Disposable {
  #idle: Worker[] = [];
  #all: Worker[] = [];
  #waiting: Waiter[] = [];
  /** Ends each hash in progress (close() fails them). */
  #running = new Set<(err: Error) => void>();
  #nextId = 1;
  #closed = false;

  /** `workerUrl`: the worker's module (tests give a failing one). */
  constructor(
    readonly threads: number,
    readonly workerUrl: string = new URL("./hash_worker.ts", import.meta.url).href,
  ) {}

  /**
   * Hashes a file of `sizes.length` chunks; `read(i)` gives chunk i as
   * stored (a buffer of its own: it is transferred). Throws ChunkFault for a
   * damaged chunk, WorkerFailure when the pool cannot; errors of `read` pass
   * through.
   */
  async hash(
    sizes: number[],
    read: (i: number) => Promise<Uint8Array>,
    key: Uint8Array | null,
  ): Promise<ContentDigest> {
    const worker = await this.#take();
    let healthy = true;
    try {
      return await this.#run(worker, sizes, read, key);
    } catch (err) {
      if (err instanceof WorkerFailure) healthy = false;
      throw err;
    } finally {
      this.#give(worker, healthy);
    }
  }

  #run(
    worker: Worker,
    sizes: number[],
    read: (i: number) => Promise<Uint8Array>,
    key: Uint8Array | null,
  ): Promise<ContentDigest> {
    const id = this.#nextId++;
    return new Promise<ContentDigest>((resolve, reject) => {
      let ahead = 0;
      let wake: (() => void) | null = null;
      let over = false;
      const finish = (err: Error | null, d?: ContentDigest) => {
        if (over) return;
        over = true;
        this.#running.delete(finish);
        worker.onmessage = null;
        worker.onerror = null;
        wake?.();
        if (err) reject(err);
        else resolve(d!);
      };
      this.#running.add(finish);
      worker.onmessage = (ev: MessageEvent<HashOut>) => {
        const m = ev.data;
        if (m.id !== id) return;
        if (m.t === "ack") {
          ahead -= m.bytes;
          const w = wake;
          wake = null;
          w?.();
        } else if (m.t === "done") finish(null, { hash: m.hash, xxh: m.xxh, mac: m.mac });
        else if (m.t === "fault") {
          finish(
            m.damage
              ? new ChunkFault(m.index, m.message)
              : new WorkerFailure(`Cannot hash chunk ${m.index}: ${firstLine(m.message)}`),
          );
        }
      };
      worker.onerror = (ev: ErrorEvent) => {
        ev.preventDefault();
        finish(new WorkerFailure(`Cannot hash stored chunks: ${firstLine(ev.message)}`));
      };
      const post = (m: HashIn, transfer: ArrayBuffer[] = []) => worker.postMessage(m, transfer);
      (async () => {
        post({ t: "begin", id, key });
        for (let i = 0; i < sizes.length && !over; i++) {
          const stored = await read(i);
          if (over) return;
          const own = stored.byteOffset === 0 && stored.byteLength === stored.buffer.byteLength
            ? stored
            : stored.slice();
          ahead += own.length;
          post({ t: "chunk", id, index: i, stored: own, size: sizes[i] }, [
            own.buffer as ArrayBuffer,
          ]);
          while (ahead > AHEAD_BYTES && !over) await new Promise<void>((r) => wake = r);
        }
        if (!over) post({ t: "end", id });
      })().catch((err) => finish(err instanceof Error ? err : new Error(String(err))));
    });
  }

  async #take(): Promise<Worker> {
    if (this.#closed) throw new WorkerFailure("Cannot hash: the pool is closed");
    const w = this.#idle.pop();
    if (w) return w;
    if (this.#all.length < this.threads) return await this.#spawn();
    return await new Promise<Worker>((resolve, reject) => this.#waiting.push({ resolve, reject }));
  }

  #spawn(): Promise<Worker> {
    const worker = new Worker(this.workerUrl, { type: "module" });
    this.#all.push(worker);
    // Its modules load with a top-level await (xxhash-wasm): messages
    // posted before it listens can be lost, so it says when it does.
    return new Promise((resolve, reject) => {
      worker.onmessage = (ev: MessageEvent<HashOut>) => {
        if (ev.data.t === "ready") resolve(worker);
      };
      worker.onerror = (ev: ErrorEvent) => {
        ev.preventDefault();
        this.#drop(worker);
        const err = new WorkerFailure(`Cannot start a hashing worker: ${firstLine(ev.message)}`);
        // Hashes waiting for a worker would wait for one that never comes.
        for (const w of this.#waiting.splice(0)) w.reject(err);
        reject(err);
      };
    });
  }

  /** Back to the pool; a failed worker is ended, and a waiting hash gets a new one. */
  #give(w: Worker, healthy: boolean): void {
    if (!healthy || this.#closed) {
      this.#drop(w);
      const next = this.#waiting.shift();
      if (next && !this.#closed) this.#spawn().then(next.resolve, next.reject);
      else next?.reject(new WorkerFailure("Cannot hash: the pool is closed"));
      return;
    }
    const next = this.#waiting.shift();
    if (next) next.resolve(w);
    else this.#idle.push(w);
  }

  #drop(w: Worker): void {
    w.terminate();
    this.#all = this.#all.filter((x) => x !== w);
    this.#idle = this.#idle.filter((x) => x !== w);
  }

  /** Ends the workers; hashes in progress and waiting fail with WorkerFailure. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const finish of [...this.#running]) finish(new WorkerFailure("Cannot hash: pool closed"));
    for (const w of this.#waiting.splice(0)) {
      w.reject(new WorkerFailure("Cannot hash: pool closed"));
    }
    for (const w of this.#all) w.terminate();
    this.#all = [];
    this.#idle = [];
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function firstLine(s: string): string {
  // deno-lint-ignore no-control-regex -- ANSI colours Deno puts in worker errors
  return s.split("\n")[0].replace(/\x1b\[[0-9;]*m/g, "");
}
