/**
 * Server side of restore: a commit (or the part below a path prefix) as a
 * tar.gz stream. Each entry's header blocks are a fresh stored gzip member;
 * file data is the blob's members exactly as stored, so nothing is
 * recompressed. The pax comment of each file carries its SHA-256 for the
 * client to verify while writing.
 *
 * @module
 */

import type { BlobStore } from "./blob_store.ts";
import { encodeMember } from "./gzip_member.ts";
import type { IndexDb } from "./index_db.ts";
import type { CommitInfo, Entry } from "./manifest.ts";
import { encodeHeader, END_OF_ARCHIVE, padded, type TarHeader } from "./tar.ts";

/** The tar header Keep writes for a manifest entry. */
export function headerFor(e: Entry): TarHeader {
  const h: TarHeader = {
    path: e.path,
    type: e.type === "f" ? "file" : e.type === "d" ? "dir" : "symlink",
    size: e.type === "f" ? e.size : 0,
    mode: e.mode,
    mtime: e.mtime,
  };
  if (e.target !== undefined) h.linkname = e.target;
  const keep: Record<string, string> = {};
  if (e.hash) keep.sha256 = e.hash;
  if (e.flag) keep.flag = e.flag;
  if (Object.keys(keep).length) h.keep = keep;
  return h;
}

/**
 * Yields the archive of `commit` below `prefix` ("" for all), in chunks.
 *
 * @example
 * ```ts
 * for (const chunk of exportArchive(index, store, commit, "src")) write(chunk);
 * ```
 */
export function* exportArchive(
  index: IndexDb,
  store: BlobStore,
  commit: CommitInfo,
  prefix = "",
): Generator<Uint8Array> {
  let pad = 0;
  let batch: Uint8Array[] = [];
  let batchLen = 0;
  for (const e of index.entries(commit.project, commit, prefix)) {
    const blocks = encodeHeader(headerFor(e));
    const raw = new Uint8Array(pad + blocks.length);
    raw.set(blocks, pad);
    batch.push(encodeMember(raw, 0));
    batchLen += raw.length + 32;
    pad = 0;
    if (e.type === "f" && e.size > 0) {
      for (const chunk of store.read(e.hash!)) {
        batch.push(chunk);
        batchLen += chunk.length;
        if (batchLen >= 256 * 1024) {
          yield concat(batch, batchLen);
          batch = [];
          batchLen = 0;
        }
      }
      pad = padded(e.size) - e.size;
    }
    if (batchLen >= 256 * 1024) {
      yield concat(batch, batchLen);
      batch = [];
      batchLen = 0;
    }
  }
  const tail = new Uint8Array(pad + END_OF_ARCHIVE.length);
  batch.push(encodeMember(tail, 1));
  yield concat(batch, batchLen + tail.length);
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0) || total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
