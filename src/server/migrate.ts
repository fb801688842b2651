/**
 * `keep migrate`: copies a whole store, with its history, from one backend
 * to another (a data dir to an object store + PostgreSQL, and back).
 *
 * Both backends hold the same things under the same names: packs by number
 * and large blobs by hash (blob_store.ts), and the same tables (tables.ts).
 * So a copy is byte for byte, never a re-encoding or a replay of commits:
 *
 * 1. objects first: every pack a blob row names, then every large blob
 *    (a large blob gets a new generation in the target; its row is told);
 * 2. then the rows, table by table in key order, blob and pack rows before
 *    the versions and commits that name them: a row is written only after
 *    every object it names is durable in the target;
 * 3. then the target's id counters are moved past everything copied, and
 * 4. the copy is verified: every table compared row by row with the source,
 *    every blob of the target re-read and re-hashed (verifyStore).
 *
 * Resumable: the target is marked (store_meta `migrating`) before the first
 * byte; a second run on a marked target skips the objects already there at
 * their size and loads every row again (the earlier run's are removed first).
 * An unmarked target must be empty; a marked one is opened by nothing but
 * migrate (open.ts).
 * Neither store may be served meanwhile (the caller holds the data-dir locks;
 * stop the servers of a PostgreSQL index).
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import { bytesToHex } from "../format/hex.ts";
import type { VerifyReport } from "../format/api.ts";
import type { Storage } from "./storage/open.ts";
import { type CellValue, DURABLE_TABLES, type TableSpec } from "./storage/tables.ts";
import { checkBlob, verifyStore } from "./verify.ts";

/** Rows per page read from the source and written to the target. */
const ROWS = 5000;

export interface MigrateReport {
  packs: { copied: number; present: number; bytes: number };
  large: { copied: number; present: number; bytes: number };
  rows: Record<string, number>;
  resumed: boolean;
  /**
   * The copy is done (a later run is refused): every row equal and every blob
   * sound, but for blobs the source had marked damaged (`inherited`).
   */
  finished: boolean;
  /** Damaged blobs of the target that the source had marked damaged too. */
  inherited: number;
  /** Objects of the target that did not verify, deleted: the next run copies them again. */
  recopy: number;
  /**
   * Blobs damaged in the source too, and not marked there: copying again
   * cannot help (keep verify on the source marks them; the next run is done).
   */
  unmarked: number;
  verify: VerifyReport;
}

/** What `migrate` says as it goes (one line each, for a person). */
export type Progress = (line: string) => void;

const MARK = "migrating";

/** True when the target holds nothing yet (no project, blob, token or policy). */
async function isEmpty(target: Storage): Promise<boolean> {
  for (const t of ["projects", "blobs", "tokens", "policies", "packs"]) {
    if ((await target.index.dumpRows(t, null, 1)).length > 0) return false;
  }
  return true;
}

/** Every row of `table` in key order, a page at a time. */
async function* rowsOf(storage: Storage, t: TableSpec): AsyncGenerator<CellValue[][]> {
  let after: CellValue[] | null = null;
  for (;;) {
    const rows = await storage.index.dumpRows(t.name, after, ROWS);
    if (rows.length === 0) return;
    // The consumer may change the page: what the next page needs is taken first.
    const last = rows[rows.length - 1].slice(0, t.key);
    const full = rows.length === ROWS;
    yield rows;
    if (!full) return;
    after = last;
  }
}

const BLOBS = DURABLE_TABLES.find((t) => t.name === "blobs")!;
const col = (name: string) => BLOBS.columns.indexOf(name);
const HASH = col("hash");
const PACK = col("pack");
const OFFSET = col("offset");
const STORED = col("stored");
const SIZE = col("size");
const CHUNKED = col("chunked");

/** A blob row of a big file kept in chunks (0 or NULL: a blob of its own). */
function isChunked(r: CellValue[]): boolean {
  return r[CHUNKED] !== null && Number(r[CHUNKED]) !== 0;
}
const DAMAGED = col("damaged");

/**
 * Copies every pack a blob row names and every large blob; returns the large
 * blobs' generations in the target, and fills `damaged` with the blobs the
 * source has marked damaged.
 */
async function copyObjects(
  source: Storage,
  target: Storage,
  report: MigrateReport,
  progress: Progress,
  damaged: Set<string>,
): Promise<Map<string, number | null>> {
  const packs = new Set<number>();
  // Packs with a blob keep verify has not marked damaged: the rest may be gone.
  const sound = new Set<number>();
  const large: {
    hash: string;
    gen: number | null;
    stored: number;
    size: number;
    damaged: boolean;
  }[] = [];
  for await (const rows of rowsOf(source, BLOBS)) {
    for (const r of rows) {
      if (r[DAMAGED] !== null) damaged.add(bytesToHex(r[HASH] as Uint8Array));
      if (isChunked(r)) {
        // A big file kept in chunks: a list (the chunks table, copied as rows), no object of its own.
      } else if (r[PACK] !== null) {
        packs.add(Number(r[PACK]));
        if (r[DAMAGED] === null) sound.add(Number(r[PACK]));
      } else {
        large.push({
          hash: bytesToHex(r[HASH] as Uint8Array),
          gen: r[OFFSET] === null ? null : Number(r[OFFSET]),
          stored: Number(r[STORED]),
          size: Number(r[SIZE]),
          damaged: r[DAMAGED] !== null,
        });
      }
    }
  }
  let done = 0;
  for (const pack of [...packs].sort((a, b) => a - b)) {
    const size = await source.blobs.packSize(pack);
    if (size === null && !sound.has(pack)) {
      // Lost, and known to be (keep verify marked every blob in it): the copy
      // holds the same damage, which its verify reports.
      progress(`pack ${pack}: missing from the source, its blobs marked damaged there`);
      continue;
    }
    if (size === null) {
      throw new KeepError(
        "integrity",
        `Cannot migrate: pack ${pack} is missing from ${source.blobs.where} (run keep verify there)`,
      );
    }
    const there = await target.blobs.packSize(pack);
    if (there === size) report.packs.present++;
    else {
      if (there !== null) await target.blobs.deletePack(pack); // cut short by an earlier run
      const sink = target.blobs.openPack(pack);
      try {
        const place = { size, stored: size, pack, offset: 0 };
        for await (const piece of await source.blobs.pieces("", place)) sink.add(piece);
        await sink.close();
      } catch (err) {
        await sink.abort().catch(() => {});
        throw err;
      }
      report.packs.copied++;
      report.packs.bytes += size;
    }
    if (++done % 100 === 0) progress(`packs: ${done} of ${packs.size}`);
  }
  progress(`packs: ${packs.size} (${report.packs.copied} copied, ${report.packs.present} there)`);
  // Large blobs the target already has (an earlier run): by hash, any generation of the right size.
  const present = new Map<string, (number | null)[]>();
  for await (const o of target.blobs.listLarge()) {
    if (!o.hash) continue;
    present.set(o.hash, [...(present.get(o.hash) ?? []), o.gen]);
  }
  const gens = new Map<string, number | null>();
  done = 0;
  for (const b of large) {
    let gen: number | null | undefined;
    for (const g of present.get(b.hash) ?? []) {
      if ((await target.blobs.largeSize(b.hash, g)) === b.stored) gen = g;
    }
    if (gen !== undefined && gen !== null) {
      report.large.present++;
    } else if (b.damaged && (await source.blobs.largeSize(b.hash, b.gen)) === null) {
      // Lost, and known to be (see the packs above): its row goes as it is.
      progress(`large blob ${b.hash}: missing from the source, marked damaged there`);
      gen = b.gen;
    } else {
      const sink = target.blobs.openLarge();
      try {
        const place = { size: b.size, stored: b.stored, pack: null, offset: b.gen };
        for await (const piece of await source.blobs.pieces(b.hash, place)) {
          sink.write(piece.slice());
          if (sink.pending > 8 << 20) await sink.drain();
        }
        await sink.drain();
        sink.complete?.(b.hash);
        gen = await sink.finish(b.hash);
      } catch (err) {
        await sink.abort().catch(() => {});
        throw err;
      }
      report.large.copied++;
      report.large.bytes += b.stored;
    }
    gens.set(b.hash, gen);
    if (++done % 100 === 0) progress(`large blobs: ${done} of ${large.length}`);
  }
  progress(
    `large blobs: ${large.length} (${report.large.copied} copied, ${report.large.present} there)`,
  );
  return gens;
}

/** A blob row with its large blob's generation in the target. */
function withGen(r: CellValue[], gens: Map<string, number | null>): CellValue[] {
  if (r[PACK] !== null || isChunked(r)) return r;
  const gen = gens.get(bytesToHex(r[HASH] as Uint8Array));
  if (gen === undefined) {
    throw new KeepError("internal", "Cannot migrate: a large blob row appeared during the copy");
  }
  const out = r.slice();
  out[OFFSET] = gen === null ? null : BigInt(gen);
  return out;
}

/**
 * store_meta keys that are not copied as values: the copy's own mark, and
 * SQLite's pack counter (PostgreSQL keeps it in a sequence and never reads
 * nor moves that row: a copied value goes stale there, and a copy back would
 * then never compare equal). The target's counter is moved past the
 * source's instead (afterLoad) and checked to be at least there.
 */
const NOT_COPIED = new Set([MARK, "pack_seq"]);

/** Rows of durable state (the copy's own mark and the pack counter are not). */
function durable(t: TableSpec, rows: CellValue[][]): CellValue[][] {
  return t.name === "store_meta" ? rows.filter((r) => !NOT_COPIED.has(r[0] as string)) : rows;
}

function sameCell(a: CellValue, b: CellValue): boolean {
  if (a instanceof Uint8Array && b instanceof Uint8Array) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }
  if (typeof a === "number" || typeof b === "number") return Number(a) === Number(b);
  return a === b;
}

/** Every value of the source's store_meta is in the target (which may have keys of its own). */
async function compareMeta(source: Storage, target: Storage, t: TableSpec) {
  const theirs = new Map<string, CellValue>();
  for await (const page of rowsOf(target, t)) {
    for (const r of page) theirs.set(r[0] as string, r[1]);
  }
  for await (const page of rowsOf(source, t)) {
    for (const r of durable(t, page)) {
      const key = r[0] as string;
      // The pack counter only moves on: afterLoad may have put it past the source's.
      const ok = key === "pack_seq"
        ? theirs.has(key) && Number(theirs.get(key)) >= Number(r[1])
        : theirs.has(key) && sameCell(r[1], theirs.get(key)!);
      if (!ok) {
        throw new KeepError(
          "integrity",
          `Cannot finish the migration: store_meta ${
            r[0]
          } differs in the target; run keep migrate again`,
        );
      }
    }
  }
}

/** Every table of the target equals the source's, row by row (large blobs' generations aside). */
async function compareTables(
  source: Storage,
  target: Storage,
  gens: Map<string, number | null>,
) {
  for (const t of DURABLE_TABLES) {
    if (t.name === "store_meta") {
      await compareMeta(source, target, t);
      continue;
    }
    const theirs = rowsOf(target, t);
    let buffered: CellValue[][] = [];
    let at = 0;
    let n = 0;
    const next = async (): Promise<CellValue[] | null> => {
      while (at === buffered.length) {
        const r = await theirs.next();
        if (r.done) return null;
        buffered = durable(t, r.value);
        at = 0;
      }
      return buffered[at++];
    };
    for await (const page of rowsOf(source, t)) {
      for (let r of durable(t, page)) {
        if (t === BLOBS) r = withGen(r, gens);
        const o = await next();
        n++;
        if (!o || r.some((v, i) => !sameCell(v, o[i]))) {
          throw new KeepError(
            "integrity",
            `Cannot finish the migration: row ${n} of ${t.name} differs in the target (${
              o ? "changed" : "missing"
            }); was the source served meanwhile? Run keep migrate again`,
          );
        }
      }
    }
    if (await next()) {
      throw new KeepError(
        "integrity",
        `Cannot finish the migration: the target's ${t.name} has rows the source lacks`,
      );
    }
  }
}

/**
 * Copies `source` into `target` (see the module doc). Throws usage when the
 * target holds another store; the report's `verify` is the target's.
 */
export async function migrate(
  source: Storage,
  target: Storage,
  progress: Progress = () => {},
  /** Runs once the copy verified, before the target counts as finished (a failure leaves it unfinished). */
  beforeFinish: () => void | Promise<void> = () => {},
): Promise<MigrateReport> {
  const report: MigrateReport = {
    packs: { copied: 0, present: 0, bytes: 0 },
    large: { copied: 0, present: 0, bytes: 0 },
    rows: {},
    resumed: false,
    finished: false,
    inherited: 0,
    recopy: 0,
    unmarked: 0,
    verify: undefined as unknown as VerifyReport,
  };
  const mark = await target.index.meta(MARK);
  if (mark !== null && mark > 0) report.resumed = true;
  else if (mark === 0 || !(await isEmpty(target))) {
    throw new KeepError(
      "usage",
      `Cannot migrate into ${target.where}: it already holds a store (migrate into an empty one)`,
    );
  }
  await target.index.setMeta(MARK, Date.now());
  const damaged = new Set<string>();
  const gens = await copyObjects(source, target, report, progress, damaged);
  if (report.resumed) {
    // An earlier run's rows: the source may have dropped some since (served
    // again meanwhile), and an upsert by key never removes them.
    for (const t of DURABLE_TABLES) {
      if (t.name !== "store_meta") await target.index.clearRows(t.name);
    }
  }
  for (const t of DURABLE_TABLES) {
    let n = 0;
    for await (const page of rowsOf(source, t)) {
      const rows = durable(t, page).map((r) => t === BLOBS ? withGen(r, gens) : r);
      if (rows.length) await target.index.loadRows(t.name, rows);
      n += rows.length;
    }
    report.rows[t.name] = n;
    progress(`${t.name}: ${n} rows`);
  }
  const packSeq = await source.index.highestPack();
  await target.index.afterLoad(packSeq);
  if ((await target.index.highestPack()) < packSeq) {
    throw new KeepError(
      "integrity",
      `Cannot finish the migration: the target's pack counter is below the source's (${packSeq})`,
    );
  }
  progress("comparing every row with the source");
  await compareTables(source, target, gens);
  progress("re-reading every blob of the target");
  report.verify = await verifyStore(target, { readOnly: true });
  const copyDamage = report.verify.damaged.filter((d) => !damaged.has(d.hash));
  report.inherited = report.verify.damaged.length - copyDamage.length;
  // Damaged in the copy only: a next run would find the object there at its
  // size and keep it. Deleted, it is copied again.
  for (const d of copyDamage) {
    const theirs = await source.index.blobPlace(d.hash);
    if (theirs && (await checkBlob(source, d.hash, theirs)) !== null) {
      report.unmarked++;
      continue;
    }
    const place = await target.index.blobPlace(d.hash);
    // A chunked file has no object of its own: its damaged chunks are listed themselves.
    if (!place || place.chunked) continue;
    if (place.pack !== null) await target.blobs.deletePack(place.pack).catch(() => {});
    else await target.blobs.deleteLarge(d.hash, place.offset).catch(() => {});
    report.recopy++;
  }
  report.finished = report.verify.integrity === "ok" && copyDamage.length === 0;
  if (report.finished) {
    await beforeFinish();
    await target.index.setMeta(MARK, 0);
  }
  return report;
}
