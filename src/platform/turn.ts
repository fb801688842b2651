/**
 * Gives the event loop a turn: timers and other I/O run before the caller
 * goes on. For long work whose awaits resolve at once (synchronous reads,
 * buffered body reads), which would otherwise keep other requests waiting.
 *
 * @module
 */

/** Resolves after one pass of the event loop (a 0 ms timer). */
export function nextTurn(): Promise<void> {
  return new Promise((r) => setTimeout(r, 0));
}
