/**
 * The Worker half of hashing big files from their stored chunks (see
 * hash_pool.ts): takes one file's chunks as stored (gzip members), inflates
 * them (CRC and length checked) and hashes the raw content: SHA-256, the
 * partial hash, and a proof of possession when a key came. Messages in:
 * `HashIn`; out: `HashOut`. One file at a time; after a fault the file's
 * later chunks are ignored until the next `begin`.
 *
 * @module
 */

import { createHash, type Hash } from "node:crypto";
import { KeepError } from "../errors.ts";
import { decodeMemberTransient, MemberSplitter } from "../format/gzip_member.ts";
import { PartialHasher } from "../format/partial_hash.ts";
import { Proof } from "../format/possession.ts";

export type HashIn =
  | { t: "begin"; id: number; key: Uint8Array | null }
  /** One chunk as stored, and its raw size. */
  | { t: "chunk"; id: number; index: number; stored: Uint8Array; size: number }
  | { t: "end"; id: number };

export type HashOut =
  /** Posted once the worker listens (messages before it may be lost). */
  | { t: "ready"; id: 0 }
  | { t: "ack"; id: number; bytes: number }
  | { t: "done"; id: number; hash: string; xxh: string; mac: string | null }
  /** Chunk `index` is damaged (or not what its row says), or hashing it failed (`damage` false). */
  | { t: "fault"; id: number; index: number; message: string; damage: boolean };

const scope = self as unknown as {
  onmessage: ((ev: MessageEvent<HashIn>) => void) | null;
  postMessage(m: HashOut): void;
};

let file: { id: number; sha: Hash; xxh: PartialHasher; mac: Proof | null } | null = null;

scope.onmessage = (ev) => {
  const m = ev.data;
  if (m.t === "begin") {
    file = {
      id: m.id,
      sha: createHash("sha256"),
      xxh: new PartialHasher(),
      mac: m.key ? new Proof(m.key) : null,
    };
    return;
  }
  if (!file || file.id !== m.id) return; // after a fault
  if (m.t === "end") {
    scope.postMessage({
      t: "done",
      id: m.id,
      hash: file.sha.digest("hex"),
      xxh: file.xxh.digest(),
      mac: file.mac?.digest() ?? null,
    });
    file = null;
    return;
  }
  try {
    const split = new MemberSplitter();
    split.push(m.stored);
    let total = 0;
    for (let member = split.next(); member; member = split.next()) {
      const raw = decodeMemberTransient(member);
      total += raw.length;
      file.sha.update(raw);
      file.xxh.update(raw);
      file.mac?.update(raw);
    }
    split.end();
    if (total !== m.size) {
      throw new KeepError("integrity", `chunk holds ${total} bytes, not ${m.size}`);
    }
    scope.postMessage({ t: "ack", id: m.id, bytes: m.stored.length });
  } catch (err) {
    file = null;
    scope.postMessage({
      t: "fault",
      id: m.id,
      index: m.index,
      message: err instanceof Error ? err.message : String(err),
      damage: err instanceof KeepError && (err.code === "integrity" || err.code === "invalid"),
    });
  }
};

scope.postMessage({ t: "ready", id: 0 });
