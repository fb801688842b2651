/**
 * Collects bytes into fixed-size blocks: one allocation per block instead
 * of one per small piece, and blocks of the size the transport likes (see
 * client/upload.ts and server/archive.ts for the sizes and why).
 *
 * @module
 */

/**
 * A writer of fixed-size blocks.
 *
 * @example
 * ```ts
 * const out = new BlockWriter(65000);
 * out.write(bytes);
 * for (const block of out.take()) send(block);
 * ```
 */
export class BlockWriter {
  readonly size: number;
  #block: Uint8Array;
  #fill = 0;
  #ready: Uint8Array[] = [];

  constructor(size: number) {
    this.size = size;
    this.#block = new Uint8Array(size);
  }

  /** Copies `b` in (a bound function: usable as a writeMember sink). */
  write = (b: Uint8Array): void => {
    let i = 0;
    while (i < b.length) {
      const n = Math.min(b.length - i, this.size - this.#fill);
      this.#block.set(n === b.length ? b : b.subarray(i, i + n), this.#fill);
      this.#fill += n;
      i += n;
      if (this.#fill === this.size) {
        this.#ready.push(this.#block);
        this.#block = new Uint8Array(this.size);
        this.#fill = 0;
      }
    }
  };

  /** Ends the current, partial block. */
  flush(): void {
    if (this.#fill) this.#ready.push(this.#block.slice(0, this.#fill));
    this.#fill = 0;
  }

  /** Full blocks waiting. */
  get ready(): number {
    return this.#ready.length;
  }

  /** The full blocks so far (the caller owns them). */
  take(): Uint8Array[] {
    const r = this.#ready;
    this.#ready = [];
    return r;
  }
}
