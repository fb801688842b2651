/**
 * Counts requests in flight until their answer is fully sent: a streamed
 * answer (archive, manifest, blob) stays in flight until its body ends, fails
 * or is cancelled. The server's graceful stop and its idle work (the
 * compactor) read the count.
 *
 * @module
 */

import type { MiddlewareHandler } from "hono";
import type { Env, Inflight } from "../context.ts";

/** Wraps a response body so `done` runs once it is fully sent, failed or cancelled. */
function trackBody(body: ReadableStream<Uint8Array>, done: () => void): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let finished = false;
  const finish = () => {
    if (!finished) {
      finished = true;
      done();
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const r = await reader.read();
        if (r.done) {
          finish();
          controller.close();
        } else controller.enqueue(r.value);
      } catch (err) {
        finish();
        controller.error(err);
      }
    },
    cancel(reason) {
      finish();
      return reader.cancel(reason);
    },
  });
}

const WAITING = /^\/v1\/(health|stats)$|^\/v1\/projects\/[^/]+\/prune$/;

/**
 * The middleware.
 *
 * @example
 * ```ts
 * app.use("*", inflight(counter));
 * ```
 */
export function inflight(counter: Inflight): MiddlewareHandler<Env> {
  return async (c, next) => {
    counter.n++;
    counter.last = Date.now();
    // Requests that wait rather than work (health, stats, a prune waiting
    // for its GC round) do not make GC give way.
    const work = WAITING.test(c.req.path) ? undefined : counter.work;
    if (work) {
      work[1]++;
      work[0] = counter.last;
    }
    let ended = false;
    const end = () => {
      if (!ended) {
        ended = true;
        counter.n--;
        counter.last = Date.now();
        if (work) {
          work[1]--;
          work[0] = counter.last;
        }
      }
    };
    try {
      await next();
    } finally {
      // Only touch .body of streamed answers: reading it turns a fixed-length
      // body into a chunked stream in Deno.
      if (c.res.headers.get("content-type") === "application/gzip" && c.res.body) {
        c.res = new Response(trackBody(c.res.body, end), c.res);
      } else end();
    }
  };
}
