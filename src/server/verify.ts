/**
 * `keep verify`: checks a data directory end to end. Algorithm: SQLite
 * `quick_check`; every blob re-read, its members inflated and CRC-checked,
 * its size and SHA-256 compared with its key; every content hash that any
 * commit refers to present in the store; blobs no commit refers to and files
 * under blobs/ with no index row reported as orphans (harmless leftovers of
 * interrupted uploads; `prune` removes them).
 *
 * A blob that fails is marked damaged (see IndexDb.markDamaged): the next
 * upload of its content replaces it, and the head entries that use it are
 * flagged so the next backup of those files sends them whole.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import type { BlobStore } from "./storage/local_blobs.ts";
import { exists } from "../platform/fs_native.ts";
import type { VerifyReport } from "../format/api.ts";
import { bytesToHex, hexToBytes, type IndexDb } from "./storage/sqlite_index.ts";

export interface VerifyOptions {
  /** Skip re-hashing blob contents (structure checks only). */
  quick?: boolean;
  /** Do not mark damaged blobs (a read-only look). */
  readOnly?: boolean;
  onProgress?: (checked: number, total: number) => void;
}

/** Verifies the whole store. */
export function verifyStore(
  index: IndexDb,
  store: BlobStore,
  options: VerifyOptions = {},
): VerifyReport {
  const started = performance.now();
  const db = index.db;
  const integrity = (db.prepare("PRAGMA quick_check").all() as { quick_check: string }[])
    .map((r) => r.quick_check).join("; ");
  const count = (sql: string) => Number((db.prepare(sql).get() as { n: number }).n);
  const report: VerifyReport = {
    ok: false,
    integrity,
    projects: count("SELECT count(*) AS n FROM projects"),
    commits: count("SELECT count(*) AS n FROM commits"),
    blobs: count("SELECT count(*) AS n FROM blobs"),
    storedBytes: count("SELECT coalesce(sum(stored), 0) AS n FROM blobs"),
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
  const hasher = () => createHash("sha256");
  let after = 0;
  let checked = 0;
  const page = db.prepare(
    "SELECT id, hash, size, stored, pack, offset FROM blobs WHERE id > ? ORDER BY id LIMIT 1000",
  );
  const fileBlobs = new Set<string>();
  const packSizes = new Map<number, number | null>();
  for (;;) {
    const rows = page.all(after) as {
      id: number;
      hash: Uint8Array;
      size: number;
      stored: number;
      pack: number | null;
      offset: number | null;
    }[];
    if (rows.length === 0) break;
    for (const r of rows) {
      const hex = bytesToHex(r.hash);
      if (r.pack === null) fileBlobs.add(hex);
      let problem: string | null;
      if (!options.quick) problem = store.check(hex, Number(r.size), hasher);
      else if (r.pack === null) problem = exists(store.pathOf(hex)) ? null : "blob file is missing";
      else {
        // Quick: the pack must be there and long enough to hold the blob.
        const size = packSize(store, Number(r.pack), packSizes);
        problem = size === null
          ? `pack ${r.pack} is missing`
          : Number(r.offset) + Number(r.stored) > size
          ? `pack ${r.pack} is short`
          : null;
      }
      if (problem) {
        report.damaged.push({ hash: hex, problem });
        if (!options.readOnly && index.markDamaged(r.hash, problem)) report.marked++;
      }
      checked++;
    }
    after = rows[rows.length - 1].id;
    options.onProgress?.(checked, report.blobs);
  }
  const missingSql = (table: string) =>
    `SELECT p.name AS project, t.path AS path, t.hash AS hash FROM ${table} t JOIN projects p ON p.id = t.project
     WHERE t.hash IS NOT NULL AND t.size > 0 AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = t.hash) LIMIT 1000`;
  for (const table of ["current", "history"]) {
    for (
      const r of db.prepare(missingSql(table)).all() as {
        project: string;
        path: string;
        hash: Uint8Array;
      }[]
    ) {
      report.missing.push({ project: r.project, path: r.path, hash: bytesToHex(r.hash) });
    }
  }
  for (const d of report.damaged.slice(0, 1000)) {
    if (report.affected.length >= 1000) break;
    for (
      const r of db.prepare(
        `SELECT p.name AS project, c.path AS path FROM current c JOIN projects p ON p.id = c.project
         WHERE c.hash = ? LIMIT 100`,
      ).all(hexToBytes(d.hash)) as { project: string; path: string }[]
    ) report.affected.push({ project: r.project, path: r.path, hash: d.hash });
  }
  report.orphanBlobs = count(
    `SELECT count(*) AS n FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = b.hash)
     AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = b.hash)`,
  );
  // Files under blobs/ that the index does not know (a crash between rename and insert).
  for (const a of safeDir(store.dir)) {
    for (const b of safeDir(join(store.dir, a))) {
      for (const f of safeDir(join(store.dir, a, b))) {
        if (!fileBlobs.has(f)) report.orphanFiles.push(join(a, b, f));
      }
    }
  }
  // Pack files: each referenced one present; bytes beyond what rows use are slack.
  const used = new Map<number, number>();
  for (
    const r of db.prepare(
      "SELECT pack, sum(stored) AS n FROM blobs WHERE pack IS NOT NULL GROUP BY pack",
    ).all() as {
      pack: number;
      n: number;
    }[]
  ) used.set(Number(r.pack), Number(r.n));
  const known = new Set(
    (db.prepare("SELECT id FROM packs").all() as { id: number }[]).map((r) => Number(r.id)),
  );
  for (const name of safeDir(store.packDir)) {
    const m = /^(\d+)\.pack$/.exec(name);
    if (!m || !known.has(Number(m[1]))) {
      report.orphanPacks.push(name);
      continue;
    }
    report.packs++;
    let size = 0;
    try {
      size = Deno.statSync(join(store.packDir, name)).size;
    } catch { /* vanished: blobs in it are reported as damaged */ }
    report.packSlack += Math.max(0, size - (used.get(Number(m[1])) ?? 0));
  }
  report.ok = integrity === "ok" && report.damaged.length === 0 && report.missing.length === 0;
  report.seconds = Math.round(performance.now() - started) / 1000;
  return report;
}

function packSize(
  store: BlobStore,
  pack: number,
  cache: Map<number, number | null>,
): number | null {
  if (!cache.has(pack)) {
    try {
      cache.set(pack, Deno.statSync(store.packPath(pack)).size);
    } catch {
      cache.set(pack, null);
    }
  }
  return cache.get(pack)!;
}

function safeDir(path: string): string[] {
  try {
    return [...Deno.readDirSync(path)].map((e) => e.name);
  } catch {
    return [];
  }
}
