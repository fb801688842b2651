/**
 * Opening a store: the index and the blob store of one data directory (the
 * embedded default), as the server, verify, prune and token commands use it.
 *
 * @module
 */

import { join } from "node:path";
import { KeepError } from "../../errors.ts";
import type { BlobStore } from "./blob_store.ts";
import type { IndexStore } from "./index_store.ts";
import { LocalBlobStore } from "./local_blobs.ts";
import { SqliteIndex } from "./sqlite_index.ts";

/** An open store: its two halves. */
export interface Storage {
  index: IndexStore;
  blobs: BlobStore;
  /** Where it is, for messages. */
  where: string;
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
  } = {},
): Promise<Storage> {
  const path = join(dataDir, "index.db");
  if (!options.create) {
    try {
      Deno.statSync(path);
    } catch {
      throw new KeepError("usage", `Cannot open ${dataDir}: no index.db there`);
    }
  } else Deno.mkdirSync(dataDir, { recursive: true });
  const index = SqliteIndex.open(path, { cacheMiB: options.cacheMiB });
  if (options.writers) index.shareWriters(options.writers.buffer, options.writers.yielding);
  const blobs = LocalBlobStore.open(dataDir);
  if (options.owner) {
    await blobs.cleanTemp();
    await index.sealAllPacks();
    await index.forgetUploads();
  }
  return {
    index,
    blobs,
    where: dataDir,
    close: async () => {
      await blobs.close();
      await index.close();
    },
  };
}
