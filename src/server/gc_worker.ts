/**
 * The collector's thread: a Worker that opens the store again (its own
 * SQLite connection, its own blob store) and runs Collector rounds there,
 * so their transactions and file work never hold the server's event loop.
 * The protocol with gc_thread.ts:
 *
 * - in: `{init: {dataDir, s3, graceMs, batch}}`, `{start}`, `{dirty: project}`, `{close}`,
 *   `{ack}` (the server noted that blobs moved);
 * - out: `{ready}` or `{failed}` after init, `{phase, figures}` as a round
 *   goes, `{ended, error?}` per round, `{moved}` before bytes are deleted
 *   (answered by `{ack}`), `{closed}`.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { Collector } from "./gc.ts";
import { openLocalStorage, type S3Blobs, type Storage } from "./storage/open.ts";

let storage: Storage | null = null;
let collector: Collector | null = null;
let acked: (() => void) | null = null;

self.onmessage = async (ev: MessageEvent) => {
  const m = ev.data as Record<string, unknown>;
  try {
    if (m.init) {
      const o = m.init as {
        dataDir: string;
        s3?: S3Blobs;
        graceMs: number;
        batch: number;
        busyBatch: number;
        writers: SharedArrayBuffer;
        work: SharedArrayBuffer;
      };
      const work = new Float64Array(o.work);
      // This connection gives way to the server's writers (see SqliteIndex.shareWriters).
      storage = await openLocalStorage(o.dataDir, {
        cacheMiB: 8,
        s3: o.s3,
        writers: { buffer: o.writers, yielding: true },
      });
      collector = new Collector(storage, {
        graceMs: o.graceMs,
        batch: o.batch,
        busyBatch: o.busyBatch,
        // Off the server's thread: long slices, short pauses (other writers get the lock).
        sliceMs: 200,
        pauseMs: 3,
        busyPause: 4,
        // Requests at work now or half a second ago (a backup between its calls).
        busy: () => work[1] > 0 || Date.now() - work[0] < 500,
        log: (line) => self.postMessage({ log: line }),
        onPhase: (phase, figures) => self.postMessage({ phase, figures }),
        beforeDelete: () =>
          new Promise<void>((resolve) => {
            acked = resolve;
            self.postMessage({ moved: true });
          }),
      });
      self.postMessage({ ready: true });
    } else if (m.ack) {
      const a = acked;
      acked = null;
      a?.();
    } else if (m.dirty) collector?.markDirty(m.dirty as string);
    else if (m.start) {
      collector!.start().then(
        () => self.postMessage({ ended: true }),
        (err) => self.postMessage({ ended: true, error: (err as Error).message }),
      );
    } else if (m.close) {
      await collector?.close();
      await storage?.close();
      self.postMessage({ closed: true });
      self.close();
    }
  } catch (err) {
    self.postMessage({ failed: (err as Error).message });
  }
};
