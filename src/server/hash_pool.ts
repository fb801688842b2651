/**
 * Hashes big files from their stored chunks on up to two Workers
 * (hash_worker.ts), one file each at a time: a file sent in part is hashed
 * by the server from its chunks (server/possession.ts), ~1.7 ms per MB of
 * inflate and SHA-256 here, and an upload that edited several big files
 * would otherwise wait for them one after another on one core. This thread
 * reads the stored chunks and hands each over (transferred, not copied),
 * a few MB ahead of its worker.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
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

/** Stored bytes in flight to one worker, at most. */
const AHEAD_BYTES = 8 << 20;

/**
 * Up to `threads` Workers, started on first use, ended by close().
 *
 * @example
 * ```ts
 * using pool = new HashPool(2);
 * const d = await pool.hash(sizes.length, (i) => readStored(i), sizes, null);
 * ```
 */
export class HashPool implements Disposable {
  #idle: Worker[] = [];
  #all: Worker[] = [];
  #waiting: ((w: Worker) => void)[] = [];
  #nextId = 1;
  #closed = false;

  constructor(readonly threads: number) {}

  /**
   * Hashes a file of `sizes.length` chunks; `read(i)` gives chunk i as
   * stored (a buffer of its own: it is transferred). Throws ChunkFault for a
   * damaged chunk; errors of `read` pass through.
   */
  async hash(
    sizes: number[],
    read: (i: number) => Promise<Uint8Array>,
    key: Uint8Array | null,
  ): Promise<ContentDigest> {
    const worker = await this.#take();
    try {
      return await this.#run(worker, sizes, read, key);
    } finally {
      this.#give(worker);
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
        worker.onmessage = null;
        worker.onerror = null;
        wake?.();
        if (err) reject(err);
        else resolve(d!);
      };
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
              : new Error(`Cannot hash chunk ${m.index}: ${m.message}`),
          );
        }
      };
      worker.onerror = (ev: ErrorEvent) => {
        ev.preventDefault();
        finish(new Error(`Cannot hash stored chunks: ${ev.message}`));
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

  #take(): Promise<Worker> {
    if (this.#closed) throw new KeepError("unavailable", "Cannot hash: the server is closing");
    const w = this.#idle.pop();
    if (w) return Promise.resolve(w);
    if (this.#all.length < this.threads) {
      const worker = new Worker(new URL("./hash_worker.ts", import.meta.url).href, {
        type: "module",
      });
      this.#all.push(worker);
      // Its modules load with a top-level await (xxhash-wasm): messages
      // posted before it listens can be lost, so it says when it does.
      return new Promise((resolve, reject) => {
        worker.onmessage = (ev: MessageEvent<HashOut>) => {
          if (ev.data.t === "ready") resolve(worker);
        };
        worker.onerror = (ev: ErrorEvent) => {
          ev.preventDefault();
          worker.terminate();
          this.#all = this.#all.filter((w) => w !== worker);
          reject(new Error(`Cannot start a hashing worker: ${ev.message}`));
        };
      });
    }
    return new Promise((r) => this.#waiting.push(r));
  }

  #give(w: Worker): void {
    const next = this.#waiting.shift();
    if (next) next(w);
    else this.#idle.push(w);
  }

  /** Ends the workers (a hash in progress fails). */
  close(): void {
    this.#closed = true;
    for (const w of this.#all) w.terminate();
    this.#all = [];
    this.#idle = [];
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
