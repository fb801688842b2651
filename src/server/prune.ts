/**
 * `keep prune`: forgets old commits of a project and frees content no
 * commit needs any more. Algorithm: remove commits with seq <= head - N and
 * their notes; drop history rows whose validity range [first, last) ends at
 * or before the oldest kept commit (last <= cutoff + 1); then delete every
 * blob that no `current` or `history` row of any project refers to (inline
 * rows in one transaction, then their files). Must not run while uploads
 * are in flight (an upload may already count on a blob); the server checks.
 *
 * @module
 */

import { type BlobStore, PackWriter } from "./storage/local_blobs.ts";
import { KeepError } from "../errors.ts";
import type { PruneResult } from "../format/api.ts";
import { bytesToHex, type IndexDb } from "./storage/sqlite_index.ts";

/** Keeps the newest `keepLast` commits of `project`. */
export function pruneProject(
  index: IndexDb,
  store: BlobStore,
  project: string,
  keepLast: number,
  options: { dryRun?: boolean } = {},
): PruneResult {
  if (!Number.isInteger(keepLast) || keepLast < 1) {
    throw new KeepError("usage", "Cannot prune: --keep-last must be a whole number of at least 1");
  }
  const pid = index.projectId(project);
  const head = index.headCommit(project);
  if (pid === null || !head) {
    throw new KeepError("not_found", `Cannot prune ${project}: it has no commits`);
  }
  const cutoff = head.seq - keepLast;
  const db = index.db;
  const n = (sql: string, ...args: (number | string)[]) =>
    Number((db.prepare(sql).get(...args) as { n: number }).n);
  const result: PruneResult = {
    project,
    commitsRemoved: Math.max(
      0,
      n("SELECT count(*) AS n FROM commits WHERE project = ? AND seq <= ?", pid, cutoff),
    ),
    commitsKept: n("SELECT count(*) AS n FROM commits WHERE project = ? AND seq > ?", pid, cutoff),
    versionsRemoved: n(
      "SELECT count(*) AS n FROM history WHERE project = ? AND last <= ?",
      pid,
      cutoff + 1,
    ),
    blobsRemoved: 0,
    bytesFreed: 0,
    dryRun: !!options.dryRun,
  };
  if (options.dryRun || cutoff < 1) return result;
  const files: string[] = [];
  index.transaction(() => {
    db.prepare("DELETE FROM commits WHERE project = ? AND seq <= ?").run(pid, cutoff);
    db.prepare("DELETE FROM notes WHERE project = ? AND seq <= ?").run(pid, cutoff);
    db.prepare("DELETE FROM history WHERE project = ? AND last <= ?").run(pid, cutoff + 1);
    const dead = `FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.hash = b.hash)
      AND NOT EXISTS (SELECT 1 FROM history h WHERE h.hash = b.hash)`;
    const stats = db.prepare(`SELECT count(*) AS n, coalesce(sum(stored), 0) AS bytes ${dead}`)
      .get() as {
        n: number;
        bytes: number;
      };
    result.blobsRemoved = Number(stats.n);
    result.bytesFreed = Number(stats.bytes);
    for (
      const r of db.prepare(`SELECT hash ${dead} AND pack IS NULL`).all() as { hash: Uint8Array }[]
    ) {
      files.push(store.pathOf(bytesToHex(r.hash)));
    }
    db.prepare(`DELETE FROM blobs WHERE id IN (SELECT id ${dead})`).run();
  }, true);
  index.blobEpoch++; // places read before (a restore in progress) are stale
  for (const f of files) {
    try {
      Deno.removeSync(f);
    } catch { /* already gone: verify would have reported it */ }
  }
  repack(index, store);
  return result;
}

/**
 * Rewrites pack files that are mostly dead space: live blobs are copied to a
 * new pack (fsync'd before the rows move), then the old file is removed.
 * Only sealed packs: one a writer (an upload, the compactor) still has open
 * may hold bytes its rows do not point at yet, and would be written to after
 * its deletion.
 */
export function repack(index: IndexDb, store: BlobStore): void {
  const db = index.db;
  const packs = db.prepare(
    `SELECT p.id AS id, coalesce((SELECT sum(stored) FROM blobs b WHERE b.pack = p.id), 0) AS live
     FROM packs p WHERE p.sealed IS NOT NULL`,
  ).all() as { id: number; live: number }[];
  for (const p of packs) {
    const path = store.packPath(Number(p.id));
    let size = 0;
    try {
      size = Deno.statSync(path).size;
    } catch { /* missing: nothing to reclaim */ }
    if (Number(p.live) > size / 2) continue;
    const blobs = db.prepare("SELECT id, hash FROM blobs WHERE pack = ? ORDER BY offset").all(
      p.id,
    ) as {
      id: number;
      hash: Uint8Array;
    }[];
    const writer = new PackWriter(store);
    const moved: { id: number; pack: number; offset: number }[] = [];
    for (const b of blobs) {
      const parts = [...store.read(bytesToHex(b.hash))];
      const data = parts.length === 1 ? parts[0] : new Uint8Array(parts.flatMap((x) => [...x]));
      moved.push({ id: Number(b.id), ...writer.add(data) });
    }
    writer.close();
    index.transaction(() => {
      const upd = db.prepare("UPDATE blobs SET pack = ?, offset = ? WHERE id = ?");
      for (const m of moved) upd.run(m.pack, m.offset, m.id);
      db.prepare("DELETE FROM packs WHERE id = ?").run(p.id);
    }, true);
    index.blobEpoch++;
    store.closeReaders();
    try {
      Deno.removeSync(path);
    } catch { /* already gone */ }
  }
}
