/**
 * Opening a store: the index and the blob store of one data directory (the
 * embedded default), as the server, verify, prune and token commands use it.
 * The blobs may live in a bucket instead (`keep serve --blobs s3://…`):
 * the data directory then records where in `blobs.json` (never the keys),
 * so every later open, by any command, finds the same bucket, and the
 * bucket records in `PREFIX/keep-store.json` which index owns it, so two
 * indexes never write pack numbers into one prefix (servers sharing one
 * PostgreSQL index share its id, and so the prefix).
 *
 * @module
 */

import { join } from "node:path";
import { KeepError } from "../../errors.ts";
import type { BlobStore, PackSink } from "./blob_store.ts";
import type { IndexStore } from "./index_store.ts";
import { LocalBlobStore } from "./local_blobs.ts";
import { S3BlobStore, type S3Location } from "./s3_blobs.ts";
import { S3Error } from "./s3_client.ts";
import { SqliteIndex } from "./sqlite_index.ts";
import { PgIndex } from "./pg_index.ts";

/** Blobs in a bucket: where, and the keys (from flags or AWS_* variables). */
export interface S3Blobs extends S3Location {
  accessKey?: string;
  secretKey?: string;
}

/** What DIR/blobs.json says. */
interface BlobsRecord extends S3Location {
  kind: "s3";
  /** This index's id, also in the bucket's keep-store.json. */
  store: string;
}

function readRecord(dataDir: string): BlobsRecord | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(join(dataDir, "blobs.json"));
  } catch {
    return null;
  }
  try {
    const r = JSON.parse(text) as BlobsRecord;
    if (r.kind !== "s3" || typeof r.bucket !== "string" || typeof r.store !== "string") {
      throw new Error("not a blobs record");
    }
    return r;
  } catch (err) {
    throw new KeepError(
      "invalid",
      `Cannot read ${join(dataDir, "blobs.json")}: ${(err as Error).message}`,
    );
  }
}

function writeRecord(dataDir: string, r: BlobsRecord): void {
  const path = join(dataDir, "blobs.json");
  Deno.writeTextFileSync(`${path}.tmp`, JSON.stringify(r, null, 2) + "\n");
  Deno.renameSync(`${path}.tmp`, path);
}

/** The bucket store `r` names, keys from `given` or the environment. */
function openS3(
  dataDir: string,
  r: BlobsRecord,
  given?: S3Blobs,
  timeoutMs?: number,
): S3BlobStore {
  const accessKey = given?.accessKey ?? Deno.env.get("AWS_ACCESS_KEY_ID");
  const secretKey = given?.secretKey ?? Deno.env.get("AWS_SECRET_ACCESS_KEY");
  // Without keys the store opens (token and policy commands never read blobs); its first request fails.
  return new S3BlobStore(
    {
      endpoint: r.endpoint,
      region: r.region,
      bucket: r.bucket,
      accessKey: accessKey ?? "",
      secretKey: secretKey ?? "",
      timeoutMs: timeoutMs,
    },
    r.prefix,
    join(dataDir, "tmp"),
  );
}

/**
 * Claims the bucket prefix for this index (first open) or checks that it is
 * this index's; the first request to the store, so bad keys, a missing
 * bucket or a store that is down show here, at start.
 */
async function claimBucket(blobs: S3BlobStore, r: BlobsRecord): Promise<void> {
  const key = `${blobs.prefix}keep-store.json`;
  const where = `s3://${r.bucket}/${r.prefix}`;
  try {
    for (let i = 0; i < 2; i++) {
      const bytes = await blobs.client.getSmall(key);
      if (bytes) {
        const owner = (() => {
          try {
            return JSON.parse(new TextDecoder().decode(bytes)) as { store?: string };
          } catch {
            return {};
          }
        })();
        if (owner.store !== r.store) {
          throw new KeepError(
            "usage",
            `Cannot use ${where}: it holds the blobs of another Keep index (${owner.store}); give each data directory its own prefix`,
          );
        }
        return;
      }
      const body = new TextEncoder().encode(
        JSON.stringify({ store: r.store, created: new Date().toISOString() }) + "\n",
      );
      try {
        await blobs.client.put(key, body, { ifNoneMatch: true });
        return;
      } catch (err) {
        if (!(err instanceof S3Error && err.status === 412)) throw err;
      }
    }
  } catch (err) {
    if (err instanceof S3Error) {
      throw new KeepError(
        err.status === 403 || err.status === 404 ? "usage" : "unavailable",
        `Cannot use ${where} at ${r.endpoint}: ${err.code}${
          err.code === "NoSuchBucket" ? " (create the bucket first)" : ""
        }`,
      );
    }
    throw err;
  }
}

/** A postgres:// URL without its password ("" stays: the PG* variables). */
function withoutPassword(url: string): string {
  return url.replace(/^(postgres(?:ql)?:\/\/[^:/@]+):[^@]*@/, "$1@");
}

/** The index URL DIR/index.json records, or undefined (older dirs recorded none). */
function recordedIndex(path: string): string | undefined {
  try {
    const r = JSON.parse(Deno.readTextFileSync(path)) as { url?: unknown };
    return typeof r.url === "string" ? r.url : undefined;
  } catch {
    return undefined;
  }
}

/** An open store: its two halves. */
export interface Storage {
  index: IndexStore;
  blobs: BlobStore;
  /** Where it is, for messages. */
  where: string;
  /** The bucket of its blobs, when they are in one (for another thread that opens it again). */
  s3: S3Blobs | null;
  close(): Promise<void>;
}

/**
 * Opens (creating when `create`) the store in `dataDir`. `owner` is for the
 * one process that holds the data-dir lock (the server): it removes temp
 * files and seals packs a crash left open.
 *
 * @example
 * ```ts
 * const storage = await openLocalStorage("/srv/keep", { create: false });
 * const head = await storage.index.headCommit("app");
 * await storage.close();
 * ```
 */
export async function openLocalStorage(
  dataDir: string,
  options: {
    create?: boolean;
    owner?: boolean;
    cacheMiB?: number;
    /** Share a writers counter with another thread's connection (SqliteIndex.shareWriters). */
    writers?: { buffer: SharedArrayBuffer; yielding: boolean };
    /** Keep (or find) the blobs in this bucket; default: where DIR/blobs.json says, else DIR. */
    s3?: S3Blobs;
    /**
     * The index in PostgreSQL: a `postgres://` URL, or "" for the PG*
     * variables; DIR then keeps no index.db (it records the choice in
     * index.json, so that opening it without this option is refused).
     */
    pg?: string;
    /** PostgreSQL: when an upload whose server stopped refreshing it expires (PgIndex.open). */
    uploadTimeoutMs?: number;
    /** An object-store request not done (sent and answered) in this long is tried again, then unavailable (default 60 s). */
    s3TimeoutMs?: number;
    /** PostgreSQL: a database not answering this long counts as unavailable; connect again (PgIndex.open). */
    indexTimeoutMs?: number;
    /** PostgreSQL: called with a line when that happened. */
    onIndexReset?: (message: string) => void;
    /** Open the target of an unfinished `keep migrate` (only migrate itself does). */
    migrating?: boolean;
    /**
     * No server may run on it meanwhile (keep migrate): a PostgreSQL index is
     * locked against every node (which takes the lock shared as `owner`).
     */
    exclusive?: boolean;
  } = {},
): Promise<Storage> {
  const path = join(dataDir, "index.db");
  const pgMark = join(dataDir, "index.json");
  let existed = true;
  try {
    Deno.statSync(path);
  } catch {
    existed = false;
  }
  const pgDir = (() => {
    try {
      Deno.statSync(pgMark);
      return true;
    } catch {
      return false;
    }
  })();
  if (options.pg !== undefined && existed) {
    throw new KeepError(
      "usage",
      `Cannot use a PostgreSQL index with ${dataDir}: it has its own index.db`,
    );
  }
  let pg = options.pg;
  if (pg === undefined && pgDir) {
    // The database the dir's server used, as index.json names it (no password:
    // that comes from PGPASSWORD or ~/.pgpass), so `keep verify --data DIR` etc. reach it.
    pg = recordedIndex(pgMark);
    if (pg === undefined) {
      throw new KeepError(
        "usage",
        `Cannot open ${dataDir}: its index is in PostgreSQL (give --index, as keep serve had it)`,
      );
    }
  }
  if (!options.create && !existed && pg === undefined) {
    throw new KeepError("usage", `Cannot open ${dataDir}: no index.db there`);
  }
  Deno.mkdirSync(dataDir, { recursive: true });
  let record = readRecord(dataDir);
  const s3 = options.s3;
  if (s3 && record && (record.bucket !== s3.bucket || record.prefix !== s3.prefix)) {
    throw new KeepError(
      "usage",
      `Cannot use s3://${s3.bucket}/${s3.prefix}: ${dataDir} keeps its blobs in s3://${record.bucket}/${record.prefix}`,
    );
  }
  let index: IndexStore;
  if (pg !== undefined) {
    index = await PgIndex.open(pg, {
      uploadTimeoutMs: options.uploadTimeoutMs,
      timeoutMs: options.indexTimeoutMs,
      onReset: options.onIndexReset,
    });
    if (options.pg !== undefined && (!pgDir || recordedIndex(pgMark) !== withoutPassword(pg))) {
      const url = withoutPassword(pg);
      Deno.writeTextFileSync(pgMark, JSON.stringify({ kind: "postgres", url }) + "\n");
    }
  } else index = SqliteIndex.open(path, { cacheMiB: options.cacheMiB });
  if (index instanceof PgIndex && (options.owner || options.exclusive)) {
    const free = await index.holdStoreLock(!!options.exclusive).catch(async (err) => {
      await index.close();
      throw err;
    });
    if (!free) {
      await index.close();
      throw new KeepError(
        "usage",
        options.exclusive
          ? `Cannot migrate ${dataDir}: a keep serve runs on it (on its PostgreSQL index; stop every node first)`
          : `Cannot open ${dataDir}: a keep migrate runs on its PostgreSQL index`,
      );
    }
  }
  if (!options.migrating) {
    // Half a copy: serving it (or adding tokens) would write rows and packs
    // that the copy's next run overwrites, or that make it never compare equal.
    const mark = await index.meta("migrating").catch(async (err) => {
      await index.close();
      throw err;
    });
    if (mark !== null && mark > 0) {
      await index.close();
      throw new KeepError(
        "usage",
        `Cannot open ${dataDir}: it is the target of an unfinished keep migrate (run that again to finish it)`,
      );
    }
  }
  let blobs: BlobStore;
  try {
    if (s3 && !record) {
      if (existed && (await index.counts()).blobs > 0) {
        throw new KeepError(
          "usage",
          `Cannot use s3://${s3.bucket}/${s3.prefix}: ${dataDir} already keeps its blobs in the directory itself`,
        );
      }
      record = {
        kind: "s3",
        bucket: s3.bucket,
        prefix: s3.prefix,
        endpoint: s3.endpoint,
        region: s3.region,
        // Servers sharing a PostgreSQL index share its prefix: the index's id.
        store: index instanceof PgIndex ? await index.storeId() : crypto.randomUUID(),
      };
      writeRecord(dataDir, record);
    } else if (s3 && record && (s3.endpoint !== record.endpoint || s3.region !== record.region)) {
      // The same bucket reached another way (a new address): remembered for later opens.
      record = { ...record, endpoint: s3.endpoint, region: s3.region };
      writeRecord(dataDir, record);
    }
    if (record) {
      const store = openS3(dataDir, record, s3, options.s3TimeoutMs);
      if (options.owner) await claimBucket(store, record);
      blobs = store;
    } else blobs = LocalBlobStore.open(dataDir);
  } catch (err) {
    await index.close();
    throw err;
  }
  if (options.writers && index instanceof SqliteIndex) {
    index.shareWriters(options.writers.buffer, options.writers.yielding);
  }
  if (options.owner) {
    await blobs.cleanTemp();
    await index.sealAllPacks();
    await index.forgetUploads();
  }
  return {
    index,
    blobs,
    where: dataDir,
    s3: record ? { ...record, accessKey: s3?.accessKey, secretKey: s3?.secretKey } : null,
    close: async () => {
      await blobs.close();
      await index.close();
    },
  };
}

/** Closes a pack sink and records the pack sealed (even when the close failed: nothing more goes in). */
export async function closeAndSeal(storage: Storage, sink: PackSink): Promise<void> {
  try {
    await sink.close();
  } finally {
    await storage.index.sealPack(sink.pack);
  }
}
