/**
 * File contents for the datasets: compressible text (C-like source and prose
 * from a seeded vocabulary) and incompressible random bytes. Build trees hold
 * both kinds (sources, logs vs. objects, archives), and a backup tool's speed
 * depends on the mix: compressing text costs CPU, random data only I/O.
 *
 * @module
 */

import { Prng } from "./prng.ts";

const C_TYPES = ["int", "char *", "size_t", "uint32_t", "void", "struct node *", "double", "bool"];
const C_OPS = ["+", "-", "*", "&", "|", "^", "<<", ">>"];
const encoder = new TextEncoder();

/**
 * Generates file contents of an exact length from a seeded vocabulary.
 *
 * Text is assembled from a pool of pre-built lines (C-like source or prose
 * over the vocabulary), picked with a skew towards the first ones: real text
 * repeats its common lines and words, and copying encoded lines is an order
 * of magnitude faster than building strings per file. The defaults (500
 * words, 1,000 lines per pool, skew 2) were tuned so gzip -1 gives ~0.33 on
 * a long text stream, and the tar | pigz -1 of the datasets (half text, half
 * random) lands at ~0.6–0.64, the ratio the spec asks for.
 *
 * @example
 * ```ts
 * const gen = new ContentGen(1);
 * const src = gen.text(new Prng(7), 4096); // 4096 bytes of C-like text or prose
 * ```
 */
export class ContentGen {
  readonly vocabulary: string[];
  #code: Uint8Array[] = [];
  #prose: Uint8Array[] = [];
  #skew: number;

  /**
   * Builds the vocabulary and the line pools from `seed` (the same seed gives
   * the same bytes). `skew` > 1 favours the first lines more (more compressible).
   */
  constructor(seed: number, options: { words?: number; lines?: number; skew?: number } = {}) {
    const rng = new Prng(seed ^ 0x5eed);
    const syll = ["ka", "lo", "mi", "ne", "ru", "ta", "po", "se", "di", "fu", "ge", "ha", "jo"];
    const cons = "bcdfghklmnprstvwz";
    const seen = new Set<string>();
    while (seen.size < (options.words ?? 500)) {
      let w = "";
      const parts = rng.int(1, 4);
      for (let i = 0; i < parts; i++) {
        w += rng.float() < 0.6 ? rng.pick(syll) : cons[rng.int(0, cons.length - 1)] + "e";
      }
      if (rng.float() < 0.15) w += "_" + rng.pick(syll);
      seen.add(w);
    }
    this.vocabulary = [...seen];
    this.#skew = options.skew ?? 2;
    const lines = options.lines ?? 1000;
    for (let i = 0; i < lines; i++) {
      this.#code.push(encoder.encode(this.#codeLine(rng) + "\n"));
      this.#prose.push(encoder.encode(this.#proseLine(rng) + "\n"));
    }
  }

  /** A word, common ones far more often (index skewed towards 0). */
  word(rng: Prng): string {
    const u = rng.float();
    return this.vocabulary[Math.floor(u * u * u * this.vocabulary.length)];
  }

  /** Exactly `size` bytes of ASCII text: C-like source or prose, chosen by `rng`. */
  text(rng: Prng, size: number): Uint8Array {
    const pool = rng.float() < 0.6 ? this.#code : this.#prose;
    const out = new Uint8Array(size);
    const n = pool.length;
    for (let pos = 0; pos < size;) {
      const line = pool[Math.floor(Math.pow(rng.float(), this.#skew) * n)];
      const take = Math.min(line.length, size - pos);
      out.set(take === line.length ? line : line.subarray(0, take), pos);
      pos += take;
    }
    return out;
  }

  /** `size` random bytes. */
  random(rng: Prng, size: number): Uint8Array {
    return rng.bytes(size);
  }

  #codeLine(rng: Prng): string {
    const w = () => this.word(rng);
    const indent = "    ".repeat(rng.int(0, 3));
    switch (rng.int(0, 9)) {
      case 0:
        return `${indent}${rng.pick(C_TYPES)} ${w()}_${w()} = ${w()}(${w()}, ${rng.int(0, 999)});`;
      case 1:
        return `${indent}if (${w()}->${w()} ${rng.pick(["<", ">", "==", "!="])} ${
          rng.int(0, 255)
        }) {`;
      case 2:
        return `${indent}return ${w()} ${rng.pick(C_OPS)} ${w()};`;
      case 3:
        return `${indent}}`;
      case 4:
        return `${indent}/* ${w()} ${w()} ${w()} ${w()} ${w()} */`;
      case 5:
        return `#include <${w()}/${w()}.h>`;
      case 6:
        return `static ${rng.pick(C_TYPES)} ${w()}_${w()}(${rng.pick(C_TYPES)} ${w()}) {`;
      case 7:
        return `${indent}${w()}[${rng.int(0, 63)}] = ${w()}.${w()};`;
      case 8:
        return "";
      default:
        return `${indent}for (${w()} = 0; ${w()} < ${rng.int(1, 4096)}; ${w()}++) ${w()}();`;
    }
  }

  #proseLine(rng: Prng): string {
    const n = rng.int(6, 16);
    const words: string[] = [];
    for (let i = 0; i < n; i++) words.push(this.word(rng));
    return words.join(" ") + rng.pick([".", ",", ";", ":", "."]);
  }
}
