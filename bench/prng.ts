/**
 * A small seeded PRNG (xoshiro128**, seeded through splitmix32) so every
 * dataset is the same bytes on every run and machine: Math.random() cannot be
 * seeded, and crypto.getRandomValues() is not reproducible.
 *
 * @module
 */

/**
 * Deterministic 32-bit generator with the helpers the dataset builders need.
 *
 * @example
 * ```ts
 * const rng = new Prng(42);
 * const size = rng.int(1024, 16384);
 * const bytes = rng.bytes(size);
 * ```
 */
export class Prng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  /** Seeds the four state words from one number (splitmix32 spreads close seeds apart). */
  constructor(seed: number) {
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#a = next();
    this.#b = next();
    this.#c = next();
    this.#d = next() | 1; // an all-zero state would stay zero forever
  }

  /** Next unsigned 32-bit value. */
  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.#b, 5), 7), 9) >>> 0;
    const t = this.#b << 9;
    this.#c ^= this.#a;
    this.#d ^= this.#b;
    this.#b ^= this.#c;
    this.#a ^= this.#d;
    this.#c ^= t;
    this.#d = rotl(this.#d, 11);
    return result;
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  /** Uniform integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  /** One element of `items`. */
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.float() * items.length)];
  }

  /** A child generator: lets each file or step draw its own stream without shifting the others. */
  fork(salt: number): Prng {
    return new Prng((this.u32() ^ Math.imul(salt, 0x27d4eb2d)) >>> 0);
  }

  /** Fills `out` with random bytes: the hot loop of the random half, so the step is inlined. */
  fill(out: Uint8Array): Uint8Array {
    const words = out.length >>> 2;
    let a = this.#a, b = this.#b, c = this.#c, d = this.#d;
    // Uint32Array needs 4-byte alignment; fresh buffers always are, subarrays may not be.
    const aligned = (out.byteOffset & 3) === 0;
    const w = aligned ? new Uint32Array(out.buffer, out.byteOffset, words) : null;
    for (let i = 0; i < words; i++) {
      const x = Math.imul(b, 5);
      const v = Math.imul((x << 7) | (x >>> 25), 9);
      const t = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= t;
      d = (d << 11) | (d >>> 21);
      if (w) w[i] = v;
      else {
        out[i * 4] = v;
        out[i * 4 + 1] = v >>> 8;
        out[i * 4 + 2] = v >>> 16;
        out[i * 4 + 3] = v >>> 24;
      }
    }
    this.#a = a >>> 0;
    this.#b = b >>> 0;
    this.#c = c >>> 0;
    this.#d = d >>> 0;
    for (let i = words * 4; i < out.length; i++) out[i] = this.u32() & 0xff;
    return out;
  }

  /** `n` fresh random bytes. */
  bytes(n: number): Uint8Array {
    return this.fill(new Uint8Array(n));
  }

  /** Picks `k` distinct elements of `pool` (partial Fisher–Yates on a copy). */
  sample(pool: number[], k: number): number[] {
    const a = pool.slice();
    const m = Math.min(k, a.length);
    for (let i = 0; i < m; i++) {
      const j = i + Math.floor(this.float() * (a.length - i));
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a.slice(0, m);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
