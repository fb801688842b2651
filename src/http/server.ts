/**
 * `keep serve` underneath: opens a data directory (index, blobs, tokens),
 * listens with Deno.serve, and shuts down gracefully (in-flight requests
 * finish; uploads that cannot finish are aborted and leave no commit).
 *
 * @module
 */

import { join } from "node:path";
import { KeepError } from "../errors.ts";
import { lockForLife } from "../platform/fs_native.ts";
import { possessionKeys } from "../server/possession.ts";
import { Compactor } from "../server/compactor.ts";
import { Collector, type Rounds, roundWanted } from "../server/gc.ts";
import { CollectorThread } from "../server/gc_thread.ts";
import { DEFAULT_LIMITS, type IngestLimits } from "../server/ingest.ts";
import { ManifestCache } from "../server/manifest_cache.ts";
import { openLocalStorage, type S3Blobs, type Storage } from "../server/storage/open.ts";
import { PgIndex } from "../server/storage/pg_index.ts";
import { TokenStore } from "../server/tokens.ts";
import { createApp, metricsResponse } from "./app.ts";
import { Metrics } from "./metrics.ts";

export interface ServeOptions {
  dataDir: string;
  /** Keep the blobs in this bucket (the index stays in dataDir). */
  s3?: S3Blobs;
  /**
   * The index in PostgreSQL (a URL, or "" for the PG* variables), maybe
   * shared with other servers: GC rounds and recompression then run on
   * this thread (their SQL is asynchronous), one server at a time.
   */
  pg?: string;
  /** PostgreSQL: an upload whose server stopped refreshing it expires after this (ms). */
  uploadTimeoutMs?: number;
  /** An object-store request not done (sent and answered) in this long is tried again, then unavailable (ms). */
  s3TimeoutMs?: number;
  /** PostgreSQL: a database not answering this long counts as unavailable; the pool connects again (ms). */
  indexTimeoutMs?: number;
  hostname: string;
  port: number;
  /** Serve without tokens; refused unless hostname is loopback. */
  noAuth?: boolean;
  cert?: string;
  key?: string;
  limits?: IngestLimits;
  idleTimeoutSec?: number;
  /** Recompress blobs at rest after this long without requests (0: never). */
  compactIdleMs?: number;
  /** Start a retention and GC round this often (ms; 0: only when asked). Default 1 h. */
  gcEveryMs?: number;
  /** How long unreferenced blobs and emptied packs wait before they go (ms). Default 1 h. */
  gcGraceMs?: number;
  log?: (line: string) => void;
  signal?: AbortSignal;
  /** The web UI at / (default on); a project without a complete commit for staleAfterMs is stale. */
  ui?: boolean;
  staleAfterMs?: number;
  /** Also serve /metrics, without tokens, on this address (e.g. 127.0.0.1:9108). */
  metricsListen?: { hostname: string; port: number };
}

export interface RunningServer {
  url: string;
  /** The --metrics-listen address's URL, when there is one. */
  metricsUrl: string | null;
  /** Where the blobs are (the data dir, or s3://BUCKET/PREFIX). */
  blobs: string;
  port: number;
  finished: Promise<void>;
  close(): Promise<void>;
  /** Closes the store at once (before a forced exit). */
  closeIndex(): Promise<void>;
  /** Requests whose handler or response body is still running. */
  inflight(): number;
}

/** True for addresses that never leave the machine. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" ||
    /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** Opens `dataDir` (creating it) and starts serving. */
export async function startServer(options: ServeOptions): Promise<RunningServer> {
  if (options.noAuth && !isLoopback(options.hostname)) {
    throw new KeepError(
      "usage",
      `Cannot serve without tokens on ${options.hostname}: --no-auth needs a loopback address`,
    );
  }
  if (!!options.cert !== !!options.key) {
    throw new KeepError("usage", "Cannot serve TLS: give both --cert and --key");
  }
  Deno.mkdirSync(options.dataDir, { recursive: true });
  if (lockForLife(join(options.dataDir, "serve.lock")) === false) {
    throw new KeepError(
      "unavailable",
      `Cannot serve ${options.dataDir}: another keep serve is using it`,
    );
  }
  // Writers of this connection and of GC's (a worker) meet in this counter:
  // GC gives way whenever one of ours waits for the write lock.
  const writers = new SharedArrayBuffer(8);
  const storage = await openLocalStorage(options.dataDir, {
    create: true,
    owner: true,
    writers: { buffer: writers, yielding: false },
    s3: options.s3,
    pg: options.pg,
    uploadTimeoutMs: options.uploadTimeoutMs,
    s3TimeoutMs: options.s3TimeoutMs,
    indexTimeoutMs: options.indexTimeoutMs,
    onIndexReset: (message) => options.log?.(message),
  });
  // Proofs of possession: every server on this index derives the same keys.
  possessionKeys.useSecret(await storage.index.sharedSecret("possession"));
  const tokens = options.noAuth ? null : new TokenStore(storage.index);
  const log = options.log ?? (() => {});
  if (tokens && await tokens.active() === 0) {
    log(
      `no tokens yet: create one with  keep token create --data ${options.dataDir} --role admin --project '*' --name admin`,
    );
  }
  // What requests do, shared with GC's thread (it slows down while they work).
  const work = new Float64Array(new SharedArrayBuffer(16));
  const inflight = { n: 0, last: Date.now(), work };
  const manifests = new ManifestCache(join(options.dataDir, "cache"));
  // Retention and GC on their own thread: their transactions never hold this one.
  const collector: Rounds = storage.index instanceof PgIndex
    ? sharedCollector(storage, storage.index, {
      graceMs: options.gcGraceMs ?? 3600_000,
      busy: () => inflight.n > 0,
      log,
    })
    : CollectorThread.open(options.dataDir, storage, {
      graceMs: options.gcGraceMs ?? 3600_000,
      s3: storage.s3,
      writers,
      work: work.buffer as SharedArrayBuffer,
      log,
    });
  const metrics = new Metrics();
  const app = createApp({
    metrics,
    ...(options.ui === false
      ? {}
      : { ui: { staleAfterMs: options.staleAfterMs ?? 2 * 86400_000 } }),
    collector,
    manifests,
    inflight,
    storage,
    uploads: { active: 0 },
    tokens,
    limits: options.limits ?? DEFAULT_LIMITS,
    idleTimeoutSec: options.idleTimeoutSec ?? 60,
    log,
  });
  const tls = options.cert
    ? { cert: Deno.readTextFileSync(options.cert), key: Deno.readTextFileSync(options.key!) }
    : {};
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname: options.hostname,
      port: options.port,
      ...tls,
      signal: options.signal,
      onListen: () => {},
      onError: (err) => {
        log(`error: ${(err as Error)?.stack ?? err}`);
        return new Response(
          JSON.stringify({ error: { code: "internal", message: "Cannot serve request" } }),
          {
            status: 500,
            headers: { "content-type": "application/json" },
          },
        );
      },
    }, app.fetch);
  } catch (err) {
    await collector.close();
    await storage.close();
    if (err instanceof Deno.errors.AddrInUse) {
      throw new KeepError(
        "unavailable",
        `Cannot listen on ${options.hostname}:${options.port}: address in use`,
      );
    }
    throw err;
  }
  const port = server.addr.port;
  // /metrics alone, without tokens, for a scraper on another address.
  let metricsServer: Deno.HttpServer<Deno.NetAddr> | null = null;
  if (options.metricsListen) {
    const ctx = { storage } as Parameters<typeof metricsResponse>[1];
    try {
      metricsServer = Deno.serve(
        {
          ...options.metricsListen,
          signal: options.signal,
          onListen: () => {},
        },
        (req) =>
          new URL(req.url).pathname === "/metrics"
            ? metricsResponse(metrics, ctx)
            : new Response("only /metrics here\n", { status: 404 }),
      );
    } catch (err) {
      await server.shutdown();
      await collector.close();
      await storage.close();
      throw new KeepError(
        "unavailable",
        `Cannot listen on ${options.metricsListen.hostname}:${options.metricsListen.port} (--metrics-listen): ${
          (err as Error).message
        }`,
      );
    }
  }
  const scheme = options.cert ? "https" : "http";
  const host = options.hostname.includes(":") ? `[${options.hostname}]` : options.hostname;
  // Recompression at rest, only once no request has been seen for a while.
  const compactor = options.compactIdleMs ? new Compactor(storage, { log }) : null;
  // Several servers on one index: one recompresses at a time.
  const compactLease = storage.index instanceof PgIndex ? storage.index.lease("compact") : null;
  let compactTimer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  const tick = async () => {
    if (!compactor || stopped) return;
    const idle = inflight.n === 0 && Date.now() - inflight.last >= options.compactIdleMs!;
    let more = true;
    if (idle) {
      try {
        if (compactLease && !await compactLease.acquire()) more = false;
        else {
          more = await compactor.step(50);
          if (!more) await compactLease?.release();
        }
      } catch (err) {
        log(`compaction stopped: ${(err as Error).message}`);
        await compactor.close().catch(() => {});
        return;
      }
    }
    if (!stopped) compactTimer = setTimeout(tick, !idle ? 1000 : more ? 0 : 30_000);
  };
  if (compactor) compactTimer = setTimeout(tick, 1000);
  // Retention and GC: a round soon after start, then every gcEveryMs; the
  // collector works in short slices with pauses, requests or not.
  const every = options.gcEveryMs ?? 3600_000;
  let gcTimer: ReturnType<typeof setTimeout> | undefined;
  const round = () => {
    if (stopped) return;
    // Only when there is something to do: otherwise no worker is started.
    // Servers sharing an index take turns: a round another ended within
    // half the period is this one's too.
    const shared = storage.index instanceof PgIndex;
    const due = async () =>
      await roundWanted(storage.index) &&
      (!shared || Date.now() - (await storage.index.meta("gc_last_run") ?? 0) >= every / 2);
    due().then((wanted) => wanted ? collector.start() : undefined)
      .catch(() => {}).finally(() => {
        if (!stopped) gcTimer = setTimeout(round, every);
      });
  };
  if (every > 0) gcTimer = setTimeout(round, Math.min(every, 10_000));
  const stopWork = async () => {
    stopped = true;
    clearTimeout(compactTimer);
    clearTimeout(gcTimer);
    await compactor?.close().catch(() => {});
    await collector.close().catch(() => {});
  };
  const finished = server.finished.then(async () => {
    await metricsServer?.shutdown();
    await stopWork();
    manifests.clear();
    await storage.close();
  });
  return {
    url: `${scheme}://${host}:${port}`,
    metricsUrl: metricsServer
      ? `http://${
        options.metricsListen!.hostname.includes(":")
          ? `[${options.metricsListen!.hostname}]`
          : options.metricsListen!.hostname
      }:${metricsServer.addr.port}`
      : null,
    blobs: storage.blobs.where,
    port,
    finished,
    close: async () => {
      await server.shutdown();
      await finished;
    },
    inflight: () => inflight.n,
    closeIndex: async () => {
      await stopWork();
      try {
        await storage.close();
      } catch { /* already closed */ }
    },
  };
}

/**
 * The collector of a server on a shared PostgreSQL index: on this thread
 * (its statements are asynchronous, so requests go on between them), its
 * rounds under the index's "gc" lease, so one server collects at a time.
 */
function sharedCollector(
  storage: Storage,
  index: PgIndex,
  options: { graceMs: number; busy: () => boolean; log: (line: string) => void },
): Rounds {
  return new Collector(storage, {
    graceMs: options.graceMs,
    // Short slices and small batches: each statement is a round trip, and
    // registrations of uploads wait for a marking batch (PgIndex).
    batch: 8000,
    busyBatch: 2000,
    busyPause: 1,
    sliceMs: 50,
    pauseMs: 5,
    busy: options.busy,
    lease: index.lease("gc"),
    log: options.log,
    // Readers here look places up again; other servers' at their next heartbeat.
    beforeDelete: () => {
      index.noteBlobsMoved();
      storage.blobs.dropCached();
      return Promise.resolve();
    },
  });
}
