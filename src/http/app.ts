/**
 * The HTTP API, versioned under /v1. Routes are thin: they check access,
 * call the engine and map KeepError codes to statuses with a JSON body
 * `{error: {code, message}}`. See README.md "API" for the table.
 *
 * @module
 */

import { Hono } from "hono";
import type { Context } from "hono";
import { type BlobStore } from "../server/storage/local_blobs.ts";
import { KeepError, toKeepError } from "../errors.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import { exportArchive } from "../server/archive.ts";
import { Ingest, type IngestLimits } from "../server/ingest.ts";
import { hexToBytes, type IndexDb } from "../server/storage/sqlite_index.ts";
import { type ManifestCache, manifestMembers } from "../server/manifest_cache.ts";
import { churned, collectNow } from "../platform/memory.ts";
import { entryToJson } from "../format/manifest.ts";
import { normalisePrefix, pathProblem } from "../format/paths.ts";
import { pruneProject } from "../server/prune.ts";
import { verifyStore } from "../server/verify.ts";
import { type Access, authorize, type Need, type TokenStore } from "../server/tokens.ts";
import { checkProjectName, VERSION } from "../format/api.ts";
import { HTTP_STATUS } from "./errors.ts";

/**
 * Paths per `POST …/entries` request, and its body's limit (the client sends
 * up to 5,000 paths in up to ~4 MiB; a longer list is split).
 */
export const MAX_LOOKUP_PATHS = 10_000;
const MAX_LOOKUP_BODY = 8 << 20;

/** A JSON request body of at most `limit` bytes. */
async function readJson(c: Context, limit: number, what: string): Promise<unknown> {
  const declared = Number(c.req.header("content-length") ?? 0);
  if (declared > limit) {
    throw new KeepError("too_large", `Cannot ${what}: body of ${declared} bytes is over the limit`);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const body = c.req.raw.body;
  if (body) {
    for await (const chunk of body) {
      size += chunk.length;
      if (size > limit) {
        throw new KeepError("too_large", `Cannot ${what}: body over ${limit} bytes`);
      }
      chunks.push(chunk);
    }
  }
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(concatBytes(chunks)));
  } catch {
    throw new KeepError("invalid", `Cannot ${what}: the body is not JSON`);
  }
}

/** What the routes need. */
export interface AppContext {
  index: IndexDb;
  store: BlobStore;
  /** Cache of head manifests. */
  manifests: ManifestCache;
  limits: IngestLimits;
  /** null: --no-auth (loopback only). */
  tokens: TokenStore | null;
  /** Seconds an upload may stay silent before it is cut. */
  idleTimeoutSec: number;
  log?: (line: string) => void;
  /** Counts requests in flight, until their response body is done (for shutdown). */
  inflight?: { n: number; last: number };
}

/** Wraps a response body so `done` runs once it is fully sent, failed or cancelled. */
function trackBody(body: ReadableStream<Uint8Array>, done: () => void): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let finished = false;
  const finish = () => {
    if (!finished) {
      finished = true;
      done();
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const r = await reader.read();
        if (r.done) {
          finish();
          controller.close();
        } else controller.enqueue(r.value);
      } catch (err) {
        finish();
        controller.error(err);
      }
    },
    cancel(reason) {
      finish();
      return reader.cancel(reason);
    },
  });
}

type Env = { Variables: { access: Access | null } };

function errorResponse(c: Context, err: KeepError): Response {
  return c.json({ error: { code: err.code, message: err.message } }, HTTP_STATUS[err.code] as 400);
}

/** Builds the Hono app. */
export function createApp(ctx: AppContext): Hono<Env> {
  const app = new Hono<Env>();
  const { index, store } = ctx;
  let activeUploads = 0;

  if (ctx.inflight) {
    const inflight = ctx.inflight;
    app.use("*", async (c, next) => {
      inflight.n++;
      inflight.last = Date.now();
      let ended = false;
      const end = () => {
        if (!ended) {
          ended = true;
          inflight.n--;
          inflight.last = Date.now();
        }
      };
      try {
        await next();
      } finally {
        // Streamed answers (archives, manifests, blobs) stay in flight until sent.
        // (Only touch .body of those: reading it turns a fixed-length body into a
        // chunked stream in Deno.)
        if (c.res.headers.get("content-type") === "application/gzip" && c.res.body) {
          c.res = new Response(trackBody(c.res.body, end), c.res);
        } else end();
      }
    });
  }

  app.onError((err, c) => {
    const k = toKeepError(err, "Cannot serve request");
    if (k.code === "internal") {
      ctx.log?.(`error: ${c.req.method} ${c.req.path}: ${(err as Error)?.stack ?? err}`);
    }
    return errorResponse(c, k);
  });
  app.notFound((c) =>
    errorResponse(
      c,
      new KeepError("not_found", `Cannot ${c.req.method} ${c.req.path}: no such route`),
    )
  );

  app.use("/v1/*", async (c, next) => {
    if (ctx.tokens === null) {
      c.set("access", null);
      return await next();
    }
    const h = c.req.header("authorization") ?? "";
    const m = /^Bearer\s+(\S+)$/i.exec(h);
    if (!m) {
      throw new KeepError(
        "unauthorized",
        "Cannot authenticate: send Authorization: Bearer <token>",
      );
    }
    c.set("access", ctx.tokens.check(m[1]));
    await next();
  });

  const need = (c: Context<Env>, what: Need, project?: string) =>
    authorize(c.get("access"), what, project);
  const project = (c: Context<Env>) => checkProjectName(c.req.param("project") ?? "");

  app.get("/v1/health", (c) => c.json({ ok: true, version: VERSION }));

  app.get("/v1/projects", (c) => {
    const access = c.get("access");
    const all = index.listProjects();
    const visible = all.filter((p) => {
      try {
        authorize(access, "head", p.name);
        return true;
      } catch {
        return false;
      }
    });
    return c.json({ projects: visible });
  });

  app.get("/v1/projects/:project/head", (c) => {
    const p = project(c);
    need(c, "head", p);
    return c.json({ commit: index.headCommit(p) });
  });

  app.get("/v1/projects/:project/manifest", async (c) => {
    const p = project(c);
    const ref = c.req.query("commit") ?? "latest";
    need(c, ref === "latest" ? "head" : "read", p);
    const fields = c.req.query("fields") ?? "all";
    if (fields !== "all" && fields !== "stat") {
      throw new KeepError("usage", `Cannot send manifest: unknown fields ${fields} (all or stat)`);
    }
    const stat = fields === "stat";
    const commit = ref === "latest" ? index.headCommit(p) : index.resolveCommit(p, ref);
    if (ref === "latest") ctx.manifests.revalidate(index);
    const body = ref === "latest"
      ? await ctx.manifests.stream(index, p, commit, stat)
      : new ReadableStream<Uint8Array>({
        start() {},
        pull: (() => {
          const gen = manifestMembers(index, p, commit, stat);
          return (controller: ReadableStreamDefaultController<Uint8Array>) => {
            const r = gen.next();
            if (r.done) controller.close();
            else controller.enqueue(r.value);
          };
        })(),
      });
    return new Response(body, {
      headers: {
        "content-type": "application/gzip",
        "keep-commit": commit?.id ?? "",
        "keep-manifest-fields": fields,
      },
    });
  });

  // Whole entries of some paths of a commit: the hashes a backup that read
  // the stat form needs for the few files it hashes locally.
  app.post("/v1/projects/:project/entries", async (c) => {
    const p = project(c);
    need(c, "head", p);
    // One lookup at a time: each holds its body and parsed list (up to ~8 MiB
    // and its strings) until answered.
    const turn = lookupQueue;
    let done!: () => void;
    lookupQueue = new Promise<void>((r) => done = r);
    await turn;
    try {
      return await lookup(c, p);
    } finally {
      done();
    }
  });

  const lookup = async (c: Context<Env>, p: string): Promise<Response> => {
    const body = await readJson(c, MAX_LOOKUP_BODY, "look up entries") as {
      commit?: unknown;
      paths?: unknown;
    };
    const { commit: ref, paths } = body ?? {};
    if (
      typeof ref !== "string" || !Array.isArray(paths) ||
      !paths.every((x) => typeof x === "string")
    ) {
      throw new KeepError(
        "invalid",
        "Cannot look up entries: body must be JSON {commit, paths: [string]}",
      );
    }
    if (paths.length > MAX_LOOKUP_PATHS) {
      throw new KeepError(
        "too_large",
        `Cannot look up entries: ${paths.length} paths, at most ${MAX_LOOKUP_PATHS} per request`,
      );
    }
    // A backup token may read its head's entries, like the head's manifest.
    if (index.headCommit(p)?.id !== ref) need(c, "read", p);
    const commit = index.resolveCommit(p, ref);
    const pid = index.projectId(p)!;
    let text = "";
    for (const path of paths as string[]) {
      const e = pathProblem(path) ? null : index.entryAt(pid, commit.seq, path);
      if (e) text += entryToJson(e) + "\n";
    }
    return new Response(text, { headers: { "content-type": "application/x-ndjson" } });
  };
  let lookupQueue = Promise.resolve();

  app.get("/v1/projects/:project/commits", (c) => {
    const p = project(c);
    need(c, "read", p);
    const limit = Math.min(Math.max(Number(c.req.query("limit") ?? 1000) || 1000, 1), 100000);
    return c.json({ commits: index.listCommits(p, limit) });
  });

  app.get("/v1/projects/:project/commits/:ref", (c) => {
    const p = project(c);
    need(c, "read", p);
    const commit = index.resolveCommit(p, c.req.param("ref"));
    return c.json({ commit, notes: index.commitNotes(p, commit.seq) });
  });

  app.post("/v1/projects/:project/commits", async (c) => {
    const p = project(c);
    need(c, "append", p);
    const body = c.req.raw.body;
    if (!body) throw new KeepError("invalid", "Cannot accept upload: empty body");
    const declared = Number(c.req.header("content-length") ?? "0");
    if (declared > ctx.limits.maxUploadBytes + (1 << 20)) {
      throw new KeepError(
        "too_large",
        `Cannot accept upload: body of ${declared} bytes is over the limit`,
      );
    }
    const ingest = new Ingest(index, store, p, { limits: ctx.limits });
    activeUploads++;
    const reader = body.getReader();
    let last = Date.now();
    let timedOut = false;
    const timer = setInterval(() => {
      if (Date.now() - last > ctx.idleTimeoutSec * 1000) {
        timedOut = true;
        reader.cancel(new KeepError("timeout", "Cannot accept upload: client idle too long")).catch(
          () => {},
        );
      }
    }, Math.min(1000, ctx.idleTimeoutSec * 250));
    try {
      let failure: KeepError | null = null;
      for (;;) {
        let r: ReadableStreamReadResult<Uint8Array>;
        try {
          r = await reader.read();
        } catch (err) {
          if (timedOut) {
            throw new KeepError(
              "timeout",
              `Cannot accept upload: no data for ${ctx.idleTimeoutSec} s`,
            );
          }
          throw new KeepError(
            "invalid",
            `Cannot accept upload: connection failed (${(err as Error).message})`,
          );
        }
        last = Date.now();
        if (r.done) break;
        if (failure) {
          // Keep reading to the end so the client sees the answer, but no further work.
          if (failure.code !== "conflict" && ingest.wireBytes > 64 << 20) break;
          ingest.wireBytes += r.value.length;
          continue;
        }
        try {
          ingest.push(r.value);
        } catch (err) {
          failure = toKeepError(err, "Cannot accept upload");
          ingest.abort();
        }
      }
      if (timedOut) {
        throw new KeepError("timeout", `Cannot accept upload: no data for ${ctx.idleTimeoutSec} s`);
      }
      if (failure) throw failure;
      const commit = ingest.finish();
      // A big upload's garbage goes before the manifest build adds its own;
      // a small one's is not worth a full GC before the answer (~20 ms).
      if (commit.stats.wireBytes > 16 << 20) collectNow();
      ctx.manifests.prepare(index, p, commit, ingest.changedPaths).catch(() => {});
      ctx.log?.(
        `commit ${p} ${commit.id} #${commit.seq}: +${commit.counts.added} ~${commit.counts.changed} -${commit.counts.deleted} ${commit.stats.wireBytes} B in ${commit.stats.seconds} s`,
      );
      return c.json({ commit }, 201);
    } catch (err) {
      ingest.abort();
      try {
        await reader.cancel();
      } catch { /* already closed */ }
      throw err;
    } finally {
      clearInterval(timer);
      activeUploads--;
    }
  });

  app.post("/v1/projects/:project/prune", async (c) => {
    const p = project(c);
    need(c, "admin", p);
    let body: { keepLast?: unknown; dryRun?: unknown };
    try {
      body = await c.req.json();
    } catch {
      throw new KeepError("invalid", "Cannot prune: body must be JSON {keepLast, dryRun}");
    }
    if (activeUploads > 0 && !body.dryRun) {
      throw new KeepError(
        "unavailable",
        `Cannot prune now: ${activeUploads} uploads in progress; try again`,
      );
    }
    return c.json({
      result: pruneProject(index, store, p, Number(body.keepLast), { dryRun: !!body.dryRun }),
    });
  });

  app.get("/v1/projects/:project/archive", (c) => {
    const p = project(c);
    need(c, "read", p);
    const commit = index.resolveCommit(p, c.req.query("commit") ?? "latest");
    const prefix = normalisePrefix(c.req.query("path") ?? "");
    if (prefix !== "" && !index.entries(p, commit, prefix).next().value) {
      throw new KeepError("not_found", `Cannot restore ${prefix}: not in commit ${commit.id}`);
    }
    const gen = exportArchive(index, store, commit, prefix);
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        try {
          const r = gen.next();
          if (r.done) controller.close();
          else controller.enqueue(r.value);
        } catch (err) {
          ctx.log?.(`error: archive ${p} ${commit.id}: ${(err as Error).message}`);
          controller.error(err);
        }
      },
      cancel() {
        gen.return(undefined);
      },
    });
    return new Response(stream, {
      headers: { "content-type": "application/gzip", "keep-commit": commit.id },
    });
  });

  app.get("/v1/projects/:project/blobs/:hash", (c) => {
    const p = project(c);
    need(c, "read", p);
    const hash = c.req.param("hash");
    if (!/^[0-9a-f]{64}$/.test(hash)) {
      throw new KeepError("invalid", "Cannot fetch blob: hash must be 64 hex digits");
    }
    const pid = index.projectId(p);
    if (pid === null || !index.projectHasHash(pid, hexToBytes(hash))) {
      throw new KeepError(
        "not_found",
        `Cannot fetch blob ${hash}: project ${p} has no such content`,
      );
    }
    const gen = store.read(hash);
    return new Response(
      new ReadableStream<Uint8Array>({
        pull(controller) {
          const r = gen.next();
          if (r.done) controller.close();
          else {
            churned(r.value.length); // fresh 1 MiB buffers: see memory.ts
            controller.enqueue(r.value);
          }
        },
      }),
      { headers: { "content-type": "application/gzip" } },
    );
  });

  app.post("/v1/verify", (c) => {
    need(c, "admin");
    return c.json({ report: verifyStore(index, store) });
  });

  return app;
}
