/**
 * The HTTP API, versioned under /v1 (README.md "API" has the table). The app
 * is put together here: in-flight tracking and token checks as middleware,
 * then one route group per concern (projects and manifests, commits,
 * content, upkeep). Routes are thin: they check access, call the server and
 * map KeepError codes to statuses with a JSON body `{error: {code, message}}`.
 *
 * @module
 */

import { Hono } from "hono";
import { KeepError, toKeepError } from "../errors.ts";
import { API, VERSION } from "../format/api.ts";
import type { AppContext, Env } from "./context.ts";
import { errorResponse } from "./errors.ts";
import { auth } from "./middleware/auth.ts";
import { inflight } from "./middleware/inflight.ts";
import { adminRoutes } from "./routes/admin.ts";
import { browseRoutes } from "./routes/browse.ts";
import { countRequests, type Metrics } from "./metrics.ts";
import { uiRoutes } from "./ui/routes.ts";
import { authorize } from "../server/tokens.ts";
import { commitRoutes } from "./routes/commits.ts";
import { contentRoutes } from "./routes/content.ts";
import { projectRoutes } from "./routes/projects.ts";

export type { AppContext } from "./context.ts";

/**
 * Builds the Hono app.
 *
 * @example
 * ```ts
 * Deno.serve(createApp(ctx).fetch);
 * ```
 */
export function createApp(ctx: AppContext): Hono<Env> {
  const app = new Hono<Env>();
  if (ctx.inflight) app.use("*", inflight(ctx.inflight));
  const metrics = ctx.metrics;
  if (metrics) {
    app.use("*", countRequests(metrics));
    // An admin token for every project (or a separate --metrics-listen without tokens).
    app.get("/metrics", async (c) => {
      if (ctx.tokens) {
        const m = /^Bearer\s+(\S+)$/i.exec(c.req.header("authorization") ?? "");
        if (!m) throw new KeepError("unauthorized", "Cannot show metrics: send an admin token");
        authorize(await ctx.tokens.check(m[1]), "admin");
      }
      return metricsResponse(metrics, ctx);
    });
  }
  app.onError((err, c) => {
    const k = toKeepError(err, "Cannot serve request");
    if (k.code === "internal") {
      ctx.log?.(`error: ${c.req.method} ${c.req.path}: ${(err as Error)?.stack ?? err}`);
    }
    return errorResponse(k);
  });
  app.notFound((c) =>
    errorResponse(
      new KeepError("not_found", `Cannot ${c.req.method} ${c.req.path}: no such route`),
    )
  );
  const v1 = app.basePath(API);
  v1.use("*", auth(ctx.tokens));
  v1.get("/health", (c) => c.json({ ok: true, version: VERSION }));
  v1.route("/", projectRoutes(ctx));
  v1.route("/", commitRoutes(ctx));
  v1.route("/", contentRoutes(ctx));
  v1.route("/", adminRoutes(ctx));
  v1.route("/", browseRoutes(ctx));
  if (ctx.ui) app.route("/", uiRoutes(ctx, ctx.ui));
  return app;
}

/** The text exposition of `metrics`. */
export async function metricsResponse(metrics: Metrics, ctx: AppContext): Promise<Response> {
  return new Response(await metrics.render(ctx.storage.index), {
    headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
  });
}
