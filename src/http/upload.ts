/**
 * Receiving one upload (`POST /v1/projects/:p/commits`): the body is read
 * chunk by chunk into an Ingest; a read is always pending while the ingest
 * waits on the storage (docs/DESIGN.md, "The HTTP server": awaiting other
 * I/O between body reads makes Deno's HTTP/1.1 server crawl while unread
 * body piles up). A client silent for the idle timeout is cut; time the
 * server spends waiting on its own storage (a slow or hung object store)
 * is not the client's silence: a store that does not answer fails the
 * upload as unavailable. After a failure the rest of the body is still
 * read (bounded), so the client gets the JSON error instead of a reset.
 *
 * @module
 */

import { KeepError, toKeepError } from "../errors.ts";
import { Ingest, type IngestLimits, type IngestResult } from "../server/ingest.ts";
import type { Storage } from "../server/storage/open.ts";
import { nextTurn } from "../platform/turn.ts";

/**
 * While the ingest stores batches behind the body, the event loop is let
 * turn at least this often (ms): body reads that resolve from buffered data
 * do not poll other I/O, and the pack PUTs and the index's answers wait.
 */
const TURN_EVERY_MS = 10;
/** Reads on after a failure, up to this many bytes, so the client sees the answer. */
const DRAIN_AFTER_FAILURE = 64 << 20;

/**
 * Receives `body` as the next commit of `project`.
 *
 * @example
 * ```ts
 * const { commit } = await receiveUpload(storage, "app", req.body!, { limits, idleTimeoutSec: 60 });
 * ```
 */
export async function receiveUpload(
  storage: Storage,
  project: string,
  body: ReadableStream<Uint8Array>,
  options: { limits: IngestLimits; idleTimeoutSec: number },
): Promise<IngestResult & { wireBytes: number }> {
  const ingest = await Ingest.start(storage, project, { limits: options.limits });
  const reader = body.getReader();
  let last = Date.now();
  let timedOut = false;
  let storing = false; // awaiting the ingest: the idle clock stands still
  const idleMs = options.idleTimeoutSec * 1000;
  const tick = Math.min(1000, idleMs / 4);
  let lastTick = Date.now();
  const timer = setInterval(() => {
    const now = Date.now();
    // Time this process could not run (a long synchronous step) is not the
    // client's silence: its data may be waiting in the socket.
    const stalled = now - lastTick - tick;
    lastTick = now;
    if (stalled > 100) last += stalled;
    if (storing) last = now;
    if (now - last > idleMs) {
      timedOut = true;
      reader.cancel(new KeepError("timeout", "Cannot accept upload: client idle too long"))
        .catch(() => {});
    }
  }, tick);
  const timeout = () =>
    new KeepError("timeout", `Cannot accept upload: no data for ${options.idleTimeoutSec} s`);
  const read = () =>
    reader.read().catch((err) => {
      if (timedOut) throw timeout();
      throw new KeepError(
        "invalid",
        `Cannot accept upload: connection failed (${(err as Error).message})`,
      );
    });
  try {
    let failure: KeepError | null = null;
    let drained = 0;
    let pending = read();
    let turned = performance.now();
    for (;;) {
      const r = await pending;
      last = Date.now();
      if (r.done) break;
      pending = read(); // in flight while this chunk is worked on
      pending.catch(() => {}); // surfaces when awaited
      if (failure) {
        // Keep reading to the end so the client sees the answer, but no further work.
        drained += r.value.length;
        if (failure.code !== "conflict" && drained > DRAIN_AFTER_FAILURE) break;
        continue;
      }
      try {
        ingest.push(r.value);
        if (ingest.wantsFlush) {
          storing = true;
          await ingest.flush();
        }
        if (ingest.storing && performance.now() - turned >= TURN_EVERY_MS) {
          // A read is pending meanwhile (docs/DESIGN.md, "The HTTP server").
          await nextTurn();
          turned = performance.now();
        }
      } catch (err) {
        failure = toKeepError(err, "Cannot accept upload");
        storing = true; // abort waits for the PUTs in flight
        await ingest.abort();
      } finally {
        if (storing) last = Date.now();
        storing = false;
      }
    }
    // The upload's own failure is the answer, even if the client then went quiet.
    if (failure) throw failure;
    if (timedOut) throw timeout();
    const result = await ingest.finish();
    return { ...result, wireBytes: ingest.wireBytes };
  } catch (err) {
    await ingest.abort();
    try {
      await reader.cancel();
    } catch { /* already closed */ }
    throw err;
  } finally {
    clearInterval(timer);
  }
}
