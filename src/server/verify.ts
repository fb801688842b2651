/**
 * `keep verify`: checks a store end to end. Algorithm: the index's own
 * integrity check; every blob re-read, its members inflated and CRC-checked,
 * its size and SHA-256 compared with its key; every content hash that any
 * commit refers to present in the store; blobs no commit refers to, large
 * blobs with no index row and packs the index does not know reported as
 * orphans (harmless leftovers of interrupted uploads; GC removes them).
 *
 * A blob that fails is marked damaged (IndexStore.markDamaged): the next
 * upload of its content replaces it, and the head entries that use it are
 * flagged so the next backup of those files sends them whole.
 *
 * @module
 */

import { createHash } from "node:crypto";
import type { VerifyReport } from "../format/api.ts";
import { bytesToHex, hexToBytes } from "../format/hex.ts";
import type { BlobPlace } from "./storage/blob_store.ts";
import type { Storage } from "./storage/open.ts";
import { contentPieces, forEachRaw } from "./content_pieces.ts";

export interface VerifyOptions {
  /** Skip re-hashing blob contents (structure checks only). */
  quick?: boolean;
  /** Do not mark damaged blobs (a read-only look). */
  readOnly?: boolean;
  onProgress?: (checked: number, total: number) => void;
}

/**
 * Re-reads a blob: cuts and inflates every member, checks CRCs, size and
 * SHA-256. Returns a problem description or null when it is sound.
 */
export async function checkBlob(
  storage: Storage,
  hashHex: string,
  place: BlobPlace,
): Promise<string | null> {
  try {
    const h = createHash("sha256");
    const total = await forEachRaw(
      await contentPieces(storage, hashHex, place),
      (raw) => h.update(raw),
    );
    if (total !== place.size) return `size ${total}, expected ${place.size}`;
    const got = h.digest("hex");
    return got === hashHex ? null : `content hash is ${got}`;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/** Verifies the whole store. */
export async function verifyStore(
  storage: Storage,
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const started = performance.now();
  const { index, blobs } = storage;
  // What earlier reads kept (open pack files, cached ranges) would hide
  // objects deleted or rewritten behind the server's back.
  blobs.dropCached();
  const counts = await index.counts();
  const report: VerifyReport = {
    ok: false,
    integrity: await index.checkIntegrity(),
    ...counts,
    damaged: [],
    marked: 0,
    affected: [],
    missing: [],
    orphanBlobs: 0,
    orphanFiles: [],
    packs: 0,
    packSlack: 0,
    orphanPacks: [],
    seconds: 0,
  };
  const largeBlobs = new Set<string>();
  const packSizes = new Map<number, number | null>();
  const packSize = async (pack: number) => {
    if (!packSizes.has(pack)) packSizes.set(pack, await blobs.packSize(pack));
    return packSizes.get(pack)!;
  };
  const used = new Map<number, number>();
  let after = 0;
  let checked = 0;
  // A running server goes on answering (and receiving uploads) meanwhile.
  let ran = performance.now();
  const pause = async () => {
    if (performance.now() - ran < 20) return;
    await new Promise((r) => setTimeout(r, 1));
    ran = performance.now();
  };
  for (;;) {
    const rows = await index.blobsPage(after, 1000);
    if (rows.length === 0) break;
    for (const r of rows) {
      await pause();
      const hex = bytesToHex(r.hash);
      if (r.chunked) { /* bytes of its own: none (its chunks are rows of their own) */ }
      else if (r.pack === null) largeBlobs.add(`${hex}.${r.offset}`);
      else used.set(r.pack, (used.get(r.pack) ?? 0) + r.stored);
      let problem: string | null;
      // A chunked file is read through its list: every chunk there, its content the file's.
      if (!options.quick) problem = await checkBlob(storage, hex, r);
      else if (r.chunked) problem = null;
      else if (r.pack === null) {
        const size = await blobs.largeSize(hex, r.offset);
        problem = size === null ? "blob file is missing" : null;
      } else {
        // Quick: the pack must be there and long enough to hold the blob.
        const size = await packSize(r.pack);
        problem = size === null
          ? `pack ${r.pack} is missing`
          : r.offset! + r.stored > size
          ? `pack ${r.pack} is short`
          : null;
      }
      if (problem) {
        report.damaged.push({ hash: hex, problem });
        if (!options.readOnly && await index.markDamaged(r.hash, problem)) report.marked++;
      }
      checked++;
    }
    after = rows[rows.length - 1].id;
    options.onProgress?.(checked, report.blobs);
  }
  report.missing = await index.missingContent(1000);
  for (const d of report.damaged.slice(0, 1000)) {
    if (report.affected.length >= 1000) break;
    for (const a of await index.headEntriesUsing(hexToBytes(d.hash), 100)) {
      report.affected.push({ ...a, hash: d.hash });
    }
  }
  report.orphanBlobs = await index.orphanBlobCount();
  // Large blobs the index does not know (a crash between rename and insert).
  for await (const o of blobs.listLarge()) {
    if (!largeBlobs.has(`${o.hash}.${o.gen}`)) report.orphanFiles.push(o.name);
  }
  // Packs: each one the index knows present; bytes beyond what rows use are slack.
  const known = await index.knownPacks();
  for await (const p of blobs.listPacks()) {
    if (!("pack" in p) || !known.has(p.pack)) {
      report.orphanPacks.push("pack" in p ? `${p.pack}.pack` : p.name);
      continue;
    }
    report.packs++;
    report.packSlack += Math.max(0, p.size - (used.get(p.pack) ?? 0));
  }
  report.ok = report.integrity === "ok" && report.damaged.length === 0 &&
    report.missing.length === 0;
  report.seconds = Math.round(performance.now() - started) / 1000;
  return report;
}
