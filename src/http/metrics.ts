/**
 * `GET /metrics` in the Prometheus text format (version 0.0.4): what this
 * process counted (requests by route and status, bytes in and out, commits,
 * upload durations) and what the store holds, read from the index at each
 * scrape (blobs, stored bytes, GC runs and bytes freed, forgotten commits,
 * and per project its last commit and last complete commit, so an alert can
 * fire when builds stop backing up). Store-wide figures come from the index,
 * so work done by another process on the same data dir (`keep prune --data`)
 * counts too.
 *
 * @module
 */

import type { MiddlewareHandler } from "hono";
import type { IndexStore } from "../server/storage/index_store.ts";
import type { Env } from "./context.ts";
import { OBJECT_REQUESTS } from "../server/storage/s3_client.ts";
import { DB_STATEMENTS } from "../server/storage/pg_index.ts";

/** Upper bounds (s) of the upload duration histogram's buckets. */
const UPLOAD_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

/** A label value, escaped as the text format wants it. */
function label(v: string): string {
  return v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

/** Counters of one server process. */
export class Metrics {
  readonly started = Date.now();
  #requests = new Map<string, { method: string; route: string; status: number; n: number }>();
  uploadBytes = 0;
  downloadBytes = 0;
  commits = 0;
  #uploadBuckets = new Array(UPLOAD_BUCKETS.length).fill(0);
  #uploadCount = 0;
  #uploadSum = 0;

  /** One answered request; `route` is the route's pattern (never its values). */
  request(method: string, route: string, status: number): void {
    const key = `${method} ${route} ${status}`;
    const r = this.#requests.get(key);
    if (r) r.n++;
    else this.#requests.set(key, { method, route, status, n: 1 });
  }

  /** An accepted upload: its bytes on the wire and how long it took. */
  upload(wireBytes: number, seconds: number): void {
    this.uploadBytes += wireBytes;
    this.commits++;
    this.#uploadCount++;
    this.#uploadSum += seconds;
    for (let i = 0; i < UPLOAD_BUCKETS.length; i++) {
      if (seconds <= UPLOAD_BUCKETS[i]) this.#uploadBuckets[i]++;
    }
  }

  /** The text exposition. */
  async render(index: IndexStore): Promise<string> {
    const out: string[] = [];
    const metric = (name: string, type: string, help: string, samples: string[]) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...samples);
    };
    metric(
      "keep_http_requests_total",
      "counter",
      "HTTP requests answered, by method, route and status.",
      [...this.#requests.values()].map((r) =>
        `keep_http_requests_total{method="${r.method}",route="${
          label(r.route)
        }",status="${r.status}"} ${r.n}`
      ),
    );
    metric("keep_upload_bytes_total", "counter", "Bytes of accepted uploads (on the wire).", [
      `keep_upload_bytes_total ${this.uploadBytes}`,
    ]);
    metric(
      "keep_download_bytes_total",
      "counter",
      "Bytes of content sent (archives, blobs, manifests, UI downloads).",
      [`keep_download_bytes_total ${this.downloadBytes}`],
    );
    metric("keep_commits_received_total", "counter", "Commits this process recorded.", [
      `keep_commits_received_total ${this.commits}`,
    ]);
    // #uploadBuckets are cumulative already (an upload counts in every bucket it fits).
    const buckets = UPLOAD_BUCKETS.map((b, i) =>
      `keep_upload_duration_seconds_bucket{le="${b}"} ${this.#uploadBuckets[i]}`
    );
    metric("keep_upload_duration_seconds", "histogram", "Time from upload start to commit.", [
      ...buckets,
      `keep_upload_duration_seconds_bucket{le="+Inf"} ${this.#uploadCount}`,
      `keep_upload_duration_seconds_sum ${this.#uploadSum}`,
      `keep_upload_duration_seconds_count ${this.#uploadCount}`,
    ]);
    metric(
      "keep_object_requests_total",
      "counter",
      "Requests sent to the object store (--blobs s3://…), by kind; retries not counted.",
      [...OBJECT_REQUESTS].sort().map(([op, n]) => `keep_object_requests_total{op="${op}"} ${n}`),
    );
    metric(
      "keep_db_statements_total",
      "counter",
      "Statements sent to PostgreSQL (--index postgres://…).",
      [`keep_db_statements_total ${DB_STATEMENTS.n}`],
    );
    const counts = await index.counts();
    const meta = async (k: string) => (await index.meta(k)) ?? 0;
    metric("keep_blobs", "gauge", "Blobs in the store.", [`keep_blobs ${counts.blobs}`]);
    metric("keep_stored_bytes", "gauge", "Bytes the blobs take in the store.", [
      `keep_stored_bytes ${counts.storedBytes}`,
    ]);
    metric("keep_gc_runs_total", "counter", "Retention and GC rounds finished (any process).", [
      `keep_gc_runs_total ${await meta("gc_runs")}`,
    ]);
    metric("keep_gc_freed_bytes_total", "counter", "Net bytes GC freed (any process).", [
      `keep_gc_freed_bytes_total ${await meta("gc_bytes_freed")}`,
    ]);
    metric(
      "keep_commits_forgotten_total",
      "counter",
      "Commits retention forgot (policies and keep prune, any process).",
      [`keep_commits_forgotten_total ${await meta("commits_forgotten")}`],
    );
    const lastRun = await meta("gc_last_run");
    metric("keep_gc_last_run_timestamp_seconds", "gauge", "When the last GC round ended.", [
      `keep_gc_last_run_timestamp_seconds ${lastRun / 1000}`,
    ]);
    const projects = await index.listProjects();
    const per = (
      name: string,
      help: string,
      value: (p: typeof projects[number]) => number | null,
    ) =>
      metric(
        name,
        "gauge",
        help,
        projects.flatMap((p) => {
          const v = value(p);
          return v === null ? [] : [`${name}{project="${label(p.name)}"} ${v}`];
        }),
      );
    const seconds = (iso: string | null | undefined) => iso ? Date.parse(iso) / 1000 : null;
    per("keep_project_commits", "Live commits of the project.", (p) => p.commits);
    per(
      "keep_project_last_commit_timestamp_seconds",
      "When the project's newest commit was made.",
      (p) => seconds(p.head?.time),
    );
    per(
      "keep_project_last_complete_commit_timestamp_seconds",
      "When the project's newest complete commit (no flagged paths) was made.",
      (p) => seconds(p.lastComplete),
    );
    per(
      "keep_project_head_bytes",
      "Bytes of the files of the newest commit.",
      (p) => p.head ? p.head.counts.bytes : null,
    );
    metric("keep_process_start_time_seconds", "gauge", "When this server started.", [
      `keep_process_start_time_seconds ${this.started / 1000}`,
    ]);
    return out.join("\n") + "\n";
  }
}

/** Counts every request by its route pattern and status, and the content bytes sent. */
export function countRequests(metrics: Metrics): MiddlewareHandler<Env> {
  return async (c, next) => {
    try {
      await next();
    } finally {
      const route = c.req.routePath === "*" || !c.req.routePath ? "unmatched" : c.req.routePath;
      metrics.request(c.req.method, route, c.res.status);
      const type = c.res.headers.get("content-type") ?? "";
      // The type first: touching .body turns a fixed-length answer into a
      // chunked stream in Deno, and a stream is not sent while the request's
      // body is unread (a cut upload's 408 never arrived).
      if ((type === "application/gzip" || type === "application/octet-stream") && c.res.body) {
        c.res = new Response(
          c.res.body.pipeThrough(
            new TransformStream<Uint8Array, Uint8Array>({
              transform(chunk, controller) {
                metrics.downloadBytes += chunk.length;
                controller.enqueue(chunk);
              },
            }),
          ),
          c.res,
        );
      }
    }
  };
}
