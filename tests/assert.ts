/**
 * The few assertions the tests use (jsr:@std/assert is not reachable here),
 * on top of node:assert.
 */

import nodeAssert from "node:assert/strict";

export function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg);
}

export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg);
}

export function assertMatch(actual: string, re: RegExp, msg?: string): void {
  nodeAssert.match(actual, re, msg);
}

/** Asserts `fn` throws an instance of `cls` whose message matches `re`; returns the error. */
export function assertThrows<E extends Error>(
  fn: () => unknown,
  cls: new (...a: never[]) => E,
  re?: RegExp,
): E {
  try {
    fn();
  } catch (err) {
    nodeAssert.ok(err instanceof cls, `expected ${cls.name}, got ${err}`);
    if (re) nodeAssert.match((err as Error).message, re);
    return err as E;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${cls.name} to be thrown` });
}

export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  cls: new (...a: never[]) => E,
  re?: RegExp,
): Promise<E> {
  try {
    await fn();
  } catch (err) {
    nodeAssert.ok(err instanceof cls, `expected ${cls.name}, got ${err}`);
    if (re) nodeAssert.match((err as Error).message, re);
    return err as E;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${cls.name} to be rejected` });
}
