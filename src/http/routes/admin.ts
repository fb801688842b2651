/**
 * Store upkeep by an admin token: prune a project's old commits, verify the
 * whole store.
 *
 * @module
 */

import { Hono } from "hono";
import { KeepError } from "../../errors.ts";
import { pruneProject } from "../../server/prune.ts";
import { verifyStore } from "../../server/verify.ts";
import { type AppContext, type Env, need, projectParam } from "../context.ts";

/** The route group. */
export function adminRoutes(ctx: AppContext): Hono<Env> {
  const routes = new Hono<Env>();

  routes.post("/projects/:project/prune", async (c) => {
    const p = projectParam(c);
    need(c, "admin", p);
    let body: { keepLast?: unknown; dryRun?: unknown };
    try {
      body = await c.req.json();
    } catch {
      throw new KeepError("invalid", "Cannot prune: body must be JSON {keepLast, dryRun}");
    }
    if (ctx.uploads.active > 0 && !body.dryRun) {
      throw new KeepError(
        "unavailable",
        `Cannot prune now: ${ctx.uploads.active} uploads in progress; try again`,
      );
    }
    const result = await pruneProject(ctx.storage, p, Number(body.keepLast), {
      dryRun: !!body.dryRun,
    });
    return c.json({ result });
  });

  routes.post("/verify", async (c) => {
    need(c, "admin");
    return c.json({ report: await verifyStore(ctx.storage) });
  });

  return routes;
}
