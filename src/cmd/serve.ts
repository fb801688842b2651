import { resolve } from "node:path";
import { KeepError } from "../errors.ts";
import { DEFAULT_LIMITS } from "../server/ingest.ts";
import { certProblem, ensureAutoTls, namesFor } from "../server/tls_auto.ts";
import { startServer } from "../http/server.ts";
import { type Command, note, out } from "./command.ts";
import { JSON_VERSION } from "../format/api.ts";
import {
  flagOrEnv,
  parseDuration,
  parseFlags,
  parseIndexFlag,
  parseListen,
  parseSize,
  positionals,
} from "./flags.ts";
import { s3Flags } from "./store_flags.ts";

/** How long a shutdown waits for in-flight requests. */
const GRACE_MS = 10_000;

export const serveCommand: Command = {
  name: "serve",
  summary: "run the server: stores commits and blobs in a data directory",
  help: `Usage: keep serve [--data DIR] [--listen HOST:PORT] [options]

Runs the Keep server. Creates DIR on first run: DIR/index.db (SQLite, WAL),
DIR/blobs/ (large blobs), DIR/tmp/ (uploads in progress). Stops cleanly on
SIGINT or SIGTERM: in-flight requests get 10 s to finish (a second signal
ends them at once); uploads cut short leave no commit.

Options:
  -d, --data DIR          data directory (default ./keep-data; env KEEP_DATA)
  -l, --listen HOST:PORT  address (default 127.0.0.1:8080; port 0 picks a free one)
      --no-auth           no tokens (only allowed on a loopback address)
      --tls auto          serve HTTPS with Keep's own CA and certificate, made in DIR/tls/
                          on first start; prints the CA's fingerprint for clients
                          (--fingerprint) and its file (--ca DIR/tls/ca.pem)
      --tls-name NAME     a host name clients use, added to that certificate (repeatable)
      --cert FILE --key FILE  serve HTTPS with this PEM certificate (chain) and key
      --max-upload SIZE   largest upload, raw file bytes, counting the files it names
                          by chunks (default 1T)
      --idle-timeout DUR  cut uploads silent for this long (default 60s)
      --compact-idle DUR  recompress stored blobs (deflate 6; uploads arrive at level 1)
                          once no request came for this long (default 10s; off = never)
      --retention-every DUR  apply each project's retention policy (keep policy set) and
                          collect garbage this often (default 1h; off = only keep prune)
      --gc-grace DUR      unreferenced blobs and emptied packs wait this long before they
                          are deleted: longer than any restore or request (default 1h)
      --min-free SIZE     refuse uploads that would leave less free space in DIR
                          (default 1G; 0 = no reserve)
      --chunk-over SIZE   store files over this size as content-defined chunks, each
                          deduplicated on its own (default 8M; off = whole files)
      --stale-after DUR   the web UI marks a project stale when its newest complete
                          commit is older than this (default 2d)
      --no-ui             no web UI at / (the API and /metrics stay)
      --metrics-listen HOST:PORT  also serve /metrics without tokens on this address
                          (on the main address /metrics needs an admin token for '*')
      --json              the first stdout line is {"keep":1, "listening", "metrics", "data"}

Blobs in an S3-compatible object store (AWS S3, Ceph RGW, MinIO, ...; the
index stays in DIR, which remembers the bucket in DIR/blobs.json):
      --blobs s3://BUCKET/PREFIX  keep blob bytes there (the bucket must exist; one
                          data directory per prefix); later commands on DIR find it
      --s3-endpoint URL   the store (env AWS_ENDPOINT_URL; default https://s3.REGION.amazonaws.com)
      --s3-region R       signing region (env AWS_REGION; default us-east-1)
      --s3-access-key K, --s3-secret-key S  keys (env AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY;
                          the environment keeps them out of ps)
      --s3-timeout DUR    a request to the store not done in this long (sent and answered;
                          a pack is up to ~8 MiB, a part 16 MiB) is tried again (3 tries),
                          then the store counts as unavailable; so does a large object's
                          answer that stops coming for this long (default 60s; 1s to 1h)
  With --blobs, --compact-idle defaults to off (each step would write a small object).

The index in PostgreSQL (several servers may share it and one bucket prefix;
everything works as on the embedded index: backup, restore, browsing, the web
UI, verify, stats, quotas, tokens, retention, GC and recompression):
      --index postgres://USER[:PASS]@HOST[:PORT]/DB  (or --index pg: with the PG* variables)
                          DIR then holds no index.db (the cache and tmp/ only)
      --upload-timeout DUR  this server refreshes its uploads' registrations every third
                          of DUR; one not refreshed for DUR (its server died) no longer
                          holds back retention and GC (default 1m)
      --index-timeout DUR  the database pinged every few seconds and not answering for
                          DUR (stopped, black-holed, failed over) counts as down: the
                          server drops its connections (requests waiting on them get
                          503) and connects again; PostgreSQL rolls back a transaction
                          of a server cut off from it after DUR idle (default 30s; 1s to 10m)
  One server at a time runs a GC round (or recompresses): the others wait their turn.
  While the store does not answer, requests that need it get 503 (clients exit 5);
  the server needs no restart when it is back.

Retention and GC run while backups upload and restores stream: nothing is
refused or waits for them (README, "Retention").

Every route needs a bearer token (keep token create) unless --no-auth. The web
UI at http(s)://HOST:PORT/ signs in with a restore or admin token.`,
  async run(args) {
    const p = parseFlags("serve", args, {
      data: { type: "string", short: "d" },
      listen: { type: "string", short: "l" },
      "no-auth": { type: "boolean" },
      cert: { type: "string" },
      key: { type: "string" },
      tls: { type: "string" },
      "tls-name": { type: "string", multiple: true },
      "max-upload": { type: "string" },
      "idle-timeout": { type: "string" },
      "compact-idle": { type: "string" },
      "retention-every": { type: "string" },
      "gc-grace": { type: "string" },
      "upload-timeout": { type: "string" },
      "min-free": { type: "string" },
      "chunk-over": { type: "string" },
      "stale-after": { type: "string" },
      "metrics-listen": { type: "string" },
      "no-ui": { type: "boolean" },
      json: { type: "boolean" },
      blobs: { type: "string" },
      index: { type: "string" },
      "s3-endpoint": { type: "string" },
      "s3-region": { type: "string" },
      "s3-access-key": { type: "string" },
      "s3-secret-key": { type: "string" },
      "s3-timeout": { type: "string" },
      "index-timeout": { type: "string" },
    });
    positionals(p, "serve", []);
    const dataDir = resolve(flagOrEnv(p, "data", "KEEP_DATA") ?? "keep-data");
    const { hostname, port } = parseListen((p.values.listen as string) ?? "127.0.0.1:8080");
    const maxUpload = p.values["max-upload"]
      ? parseSize(p.values["max-upload"] as string, "max-upload")
      : undefined;
    const idle = p.values["idle-timeout"]
      ? parseDuration(p.values["idle-timeout"] as string, "idle-timeout")
      : 60_000;
    const s3 = s3Flags(p);
    const s3TimeoutMs = p.values["s3-timeout"]
      ? parseDuration(p.values["s3-timeout"] as string, "s3-timeout")
      : undefined;
    if (s3TimeoutMs !== undefined && (s3TimeoutMs < 1000 || s3TimeoutMs > 3_600_000)) {
      throw new KeepError(
        "usage",
        `Cannot use --s3-timeout ${p.values["s3-timeout"]}: give 1s to 1h`,
      );
    }
    const indexTimeoutMs = p.values["index-timeout"]
      ? parseDuration(p.values["index-timeout"] as string, "index-timeout")
      : undefined;
    if (indexTimeoutMs !== undefined && (indexTimeoutMs < 1000 || indexTimeoutMs > 600_000)) {
      throw new KeepError(
        "usage",
        `Cannot use --index-timeout ${p.values["index-timeout"]}: give 1s to 10m`,
      );
    }
    if (indexTimeoutMs !== undefined && p.values.index === undefined) {
      throw new KeepError("usage", "Cannot use --index-timeout without --index");
    }
    const compactRaw = (p.values["compact-idle"] as string | undefined) ?? (s3 ? "off" : "10s");
    const compactIdleMs = compactRaw === "off" ? 0 : parseDuration(compactRaw, "compact-idle");
    const everyRaw = (p.values["retention-every"] as string | undefined) ?? "1h";
    const gcEveryMs = everyRaw === "off" ? 0 : parseDuration(everyRaw, "retention-every");
    if (everyRaw !== "off" && gcEveryMs < 1000) {
      throw new KeepError(
        "usage",
        `Cannot use --retention-every ${everyRaw}: at least 1s (or off)`,
      );
    }
    const gcGraceMs = parseDuration(
      (p.values["gc-grace"] as string | undefined) ?? "1h",
      "gc-grace",
    );
    const uploadTimeoutMs = p.values["upload-timeout"]
      ? parseDuration(p.values["upload-timeout"] as string, "upload-timeout")
      : undefined;
    if (uploadTimeoutMs !== undefined && uploadTimeoutMs < 300) {
      throw new KeepError("usage", "Cannot use --upload-timeout below 300ms");
    }
    const staleAfterMs = parseDuration(
      (p.values["stale-after"] as string | undefined) ?? "2d",
      "stale-after",
    );
    const metricsListen = p.values["metrics-listen"]
      ? parseListen(p.values["metrics-listen"] as string)
      : undefined;
    const minFreeBytes = parseSize(
      (p.values["min-free"] as string | undefined) ?? "1G",
      "min-free",
    );
    const chunkOver = (p.values["chunk-over"] as string | undefined) === "off"
      ? null
      : parseSize((p.values["chunk-over"] as string | undefined) ?? "8M", "chunk-over");
    let cert = p.values.cert as string | undefined;
    let key = p.values.key as string | undefined;
    const tlsMode = p.values.tls as string | undefined;
    if (tlsMode !== undefined && tlsMode !== "auto") {
      throw new KeepError("usage", `Cannot parse --tls ${tlsMode}: the only mode is auto`);
    }
    if (tlsMode && (cert || key)) {
      throw new KeepError("usage", "Cannot serve TLS: give --tls auto or --cert/--key, not both");
    }
    if (p.values["tls-name"] && !tlsMode) {
      throw new KeepError("usage", "Cannot use --tls-name without --tls auto");
    }
    if (tlsMode) {
      Deno.mkdirSync(dataDir, { recursive: true });
      const auto = ensureAutoTls(
        dataDir,
        namesFor(hostname, (p.values["tls-name"] as string[] | undefined) ?? []),
      );
      cert = auto.certFile;
      key = auto.keyFile;
      note(
        `keep serve: TLS with ${
          auto.createdCa ? "a new" : "its"
        } CA, fingerprint sha256:${auto.fingerprint}`,
      );
      note(
        `keep serve: clients: --fingerprint sha256:${auto.fingerprint}, or --ca ${auto.caFile} (certificate for ${
          auto.names.join(", ")
        })`,
      );
    } else if (cert) {
      let problem: string | null = null;
      try {
        problem = certProblem(Deno.readTextFileSync(cert));
      } catch (err) {
        throw new KeepError("usage", `Cannot read --cert ${cert}: ${(err as Error).message}`);
      }
      if (problem) note(`keep serve: warning: ${cert}: ${problem}`);
    }
    const controller = new AbortController();
    const pg = parseIndexFlag(p.values.index as string | undefined);
    const server = await startServer({
      dataDir,
      s3,
      pg,
      uploadTimeoutMs,
      s3TimeoutMs,
      indexTimeoutMs,
      hostname,
      port,
      noAuth: !!p.values["no-auth"],
      cert,
      key,
      limits: {
        ...DEFAULT_LIMITS,
        ...(maxUpload ? { maxUploadBytes: maxUpload } : {}),
        minFreeBytes,
        chunkOverBytes: chunkOver,
      },
      idleTimeoutSec: Math.max(idle / 1000, 0.5),
      compactIdleMs,
      gcEveryMs,
      gcGraceMs,
      log: (line) => note(`keep serve: ${line}`),
      signal: controller.signal,
      ui: !p.values["no-ui"],
      staleAfterMs,
      metricsListen,
    });
    // The first stdout line is machine-read by tests and scripts.
    if (p.values.json) {
      out(JSON.stringify({
        keep: JSON_VERSION,
        listening: server.url,
        metrics: server.metricsUrl,
        data: dataDir,
        blobs: server.blobs,
      }));
    } else {
      out(
        `keep serve: listening on ${server.url} (data ${dataDir}${
          server.blobs === dataDir ? "" : `, blobs ${server.blobs}`
        })`,
      );
      if (server.metricsUrl) note(`keep serve: metrics on ${server.metricsUrl}/metrics`);
    }
    // Graceful: stop accepting, let requests in flight finish (their response
    // bodies included) for up to GRACE_MS. A connection whose request already
    // got its answer (e.g. a stalled upload cut by --idle-timeout) cannot be
    // dropped through Deno.serve; it must not hold the process, so once
    // nothing is in flight the process ends without waiting for it.
    let stopping = 0;
    let force = false;
    let signalled: () => void = () => {};
    const firstSignal = new Promise<void>((r) => signalled = r);
    const stop = () => {
      if (stopping) {
        force = true; // a second signal: now
        return;
      }
      stopping = Date.now();
      signalled();
      note(`keep serve: shutting down (requests in flight get ${GRACE_MS / 1000} s)`);
      server.close();
    };
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
    let finished = false;
    server.finished.then(() => finished = true);
    await Promise.race([server.finished, firstSignal]);
    while (!finished) {
      await new Promise((r) => setTimeout(r, 100));
      const late = Date.now() - stopping > GRACE_MS;
      if (force || late || server.inflight() === 0) {
        if (!finished && server.inflight() > 0) {
          note(`keep serve: ${server.inflight()} requests still open; closing them`);
        }
        break;
      }
    }
    await server.closeIndex();
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
    return 0;
  },
};
