/**
 * From generators to web streams: the one adapter the server's streamed
 * answers (manifests, archives, blobs) and the cache writer use. The stream
 * pulls one item per `pull`, so a slow reader holds the generator back.
 *
 * @module
 */

/** What a stream made by `streamFrom` reports. */
export interface StreamHooks {
  /** Each chunk, before the reader gets it. */
  onChunk?(chunk: Uint8Array): void;
  /** The source ended (not called when it failed or was cancelled). */
  onEnd?(): void;
  /** The source threw; the stream errors with the same error. */
  onError?(err: unknown): void;
  /** The reader cancelled. */
  onCancel?(): void;
}

/**
 * A ReadableStream over a sync or async iterable of chunks.
 *
 * @example
 * ```ts
 * return new Response(streamFrom(manifestMembers(index, "app", head)));
 * ```
 */
export function streamFrom(
  source: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  hooks: StreamHooks = {},
): ReadableStream<Uint8Array> {
  const it: Iterator<Uint8Array> | AsyncIterator<Uint8Array> = Symbol.asyncIterator in source
    ? (source as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]()
    : (source as Iterable<Uint8Array>)[Symbol.iterator]();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const r = await it.next();
        if (r.done) {
          hooks.onEnd?.();
          controller.close();
        } else {
          hooks.onChunk?.(r.value);
          controller.enqueue(r.value);
        }
      } catch (err) {
        hooks.onError?.(err);
        controller.error(err);
      }
    },
    async cancel() {
      hooks.onCancel?.();
      await it.return?.(undefined);
    },
  });
}
