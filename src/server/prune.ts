/**
 * `keep prune`: forgets old commits of a project and frees content no
 * commit needs any more. Algorithm: the index removes commits with seq <=
 * head - N, their notes, the versions only they used and the blob rows no
 * version refers to (one transaction); then the large blobs it names are
 * deleted and packs that became mostly dead are rewritten (`repack`). Must
 * not run while uploads are in flight (an upload may already count on a
 * blob); the server checks.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import type { PruneResult } from "../format/api.ts";
import { bytesToHex } from "../format/hex.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import type { Storage } from "./storage/open.ts";

/** Keeps the newest `keepLast` commits of `project`. */
export async function pruneProject(
  storage: Storage,
  project: string,
  keepLast: number,
  options: { dryRun?: boolean } = {},
): Promise<PruneResult> {
  if (!Number.isInteger(keepLast) || keepLast < 1) {
    throw new KeepError("usage", "Cannot prune: --keep-last must be a whole number of at least 1");
  }
  const { result, deadLarge } = await storage.index.prune(project, keepLast, !!options.dryRun);
  if (result.dryRun) return result;
  for (const hex of deadLarge) await storage.blobs.deleteLarge(hex);
  await repack(storage);
  return result;
}

/**
 * Rewrites pack files that are mostly dead space: live blobs are copied to a
 * new pack (durable before the rows move), then the old one is deleted.
 * Only sealed packs (IndexStore.packUsage): one a writer (an upload, the
 * compactor) still has open may hold bytes its rows do not point at yet, and
 * would be written to after its deletion.
 */
export async function repack(storage: Storage): Promise<void> {
  const { index, blobs } = storage;
  for (const p of await index.packUsage()) {
    const size = await blobs.packSize(p.pack) ?? 0;
    if (p.live > size / 2) continue;
    const rows = await index.blobsInPack(p.pack);
    const moved: { id: number; pack: number; offset: number }[] = [];
    if (rows.length) {
      const pack = await index.newPack();
      const sink = blobs.openPack(pack);
      try {
        for (const r of rows) {
          const parts: Uint8Array[] = [];
          for await (const piece of await blobs.pieces(bytesToHex(r.hash), r)) {
            parts.push(piece.slice());
          }
          moved.push({ id: r.id, pack, offset: sink.add(concatBytes(parts)) });
        }
        await sink.close();
      } finally {
        await index.sealPack(pack);
      }
    }
    await index.replacePack(p.pack, moved);
    await blobs.deletePack(p.pack);
  }
}
