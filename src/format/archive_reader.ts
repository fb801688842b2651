/**
 * Reading a Keep archive (uploads on the server, restore streams on the
 * client): body chunks are cut into Keep gzip members (by their KP lengths,
 * no inflating), each member is inflated and checked (CRC, lengths), and its
 * raw bytes go to a tar parser. The member a data callback is reading stays
 * available, so the server can keep a file's members as they are.
 *
 * @module
 */

import { decodeMemberTransient, MemberSplitter } from "./gzip_member.ts";
import { TarParser, type TarSink } from "./tar.ts";

/**
 * The pipeline from bytes to tar entries.
 *
 * @example
 * ```ts
 * const reader = new ArchiveReader({ entry, data, entryEnd });
 * for await (const chunk of body) reader.push(chunk);
 * reader.end();
 * ```
 */
export class ArchiveReader {
  readonly parser: TarParser;
  #split = new MemberSplitter();
  #member: Uint8Array | null = null;
  #raw: Uint8Array | null = null;
  #carried = false;
  /** Turns a member that does not decode into the error to throw (default: as is). */
  #onBadMember: (err: unknown) => Error;

  constructor(sink: TarSink, options: { onBadMember?: (err: unknown) => Error } = {}) {
    this.parser = new TarParser(sink);
    this.#onBadMember = options.onBadMember ?? ((err) => err as Error);
  }

  /**
   * Processes a chunk. Members and their decoded bytes are views valid only
   * until the next member: the sink must consume (hash, write, copy) what it
   * gets before it returns.
   */
  push(chunk: Uint8Array): void {
    this.#split.push(chunk);
    for (let m = this.#split.next(true); m; m = this.#split.next(true)) {
      let raw: Uint8Array;
      try {
        raw = decodeMemberTransient(m);
      } catch (err) {
        throw this.#onBadMember(err);
      }
      this.#member = m;
      this.#raw = raw;
      this.#carried = this.#split.lastWasCarried;
      try {
        this.parser.push(raw);
      } finally {
        this.#member = this.#raw = null;
      }
    }
  }

  /**
   * During a data callback: the member that holds exactly `data` and nothing
   * else (so it can be kept as the file's own), or null. `carried` tells that
   * the member is a view of the splitter's carry buffer (copy it to keep it).
   */
  wholeMember(data: Uint8Array): { member: Uint8Array; carried: boolean } | null {
    const raw = this.#raw;
    if (
      !raw || !this.#member || raw.length === 0 || data.length !== raw.length ||
      data.buffer !== raw.buffer || data.byteOffset !== raw.byteOffset
    ) return null;
    return { member: this.#member, carried: this.#carried };
  }

  /** Throws unless the stream ended after a whole member and a whole archive. */
  end(): void {
    this.#split.end();
    this.parser.finish();
  }
}
