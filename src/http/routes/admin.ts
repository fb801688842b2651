/**
 * Store upkeep: retention policies and prune (admin token of the project),
 * stats, and verify of the whole store.
 *
 * @module
 */

import { Hono } from "hono";
import { KeepError } from "../../errors.ts";
import { checkProjectName, type Policy } from "../../format/api.ts";
import { pruneProject } from "../../server/gc.ts";
import { parsePolicy } from "../../server/retention.ts";
import { readStats } from "../../server/stats.ts";
import { verifyStore } from "../../server/verify.ts";
import { type AppContext, type Env, need, projectParam } from "../context.ts";
import { readJson } from "../json_body.ts";

const BODY_LIMIT = 64 << 10;

const PRUNE_FIELDS = new Set(["policy", "keepLast", "dryRun", "wait"]);

/** The route group. */
export function adminRoutes(ctx: AppContext): Hono<Env> {
  const routes = new Hono<Env>();

  // Body: {policy, dryRun, wait} (or {keepLast} for a plain keep-last).
  routes.post("/projects/:project/prune", async (c) => {
    const p = projectParam(c);
    need(c, "admin", p);
    const body = await readJson(c, BODY_LIMIT, "prune") as Record<string, unknown> | null;
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw new KeepError("invalid", "Cannot prune: body must be JSON {policy, dryRun, wait}");
    }
    // A misspelt or mistyped dryRun must not prune for real.
    for (const [k, v] of Object.entries(body)) {
      if (!PRUNE_FIELDS.has(k)) {
        throw new KeepError("invalid", `Cannot prune: unknown field ${JSON.stringify(k)}`);
      }
      if ((k === "dryRun" || k === "wait") && typeof v !== "boolean") {
        throw new KeepError("invalid", `Cannot prune: ${k} must be true or false`);
      }
    }
    let policy: Policy;
    if (body.policy !== undefined) policy = parsePolicy(body.policy);
    else if (body.keepLast !== undefined) policy = parsePolicy({ last: body.keepLast });
    else policy = await ctx.storage.index.getPolicy(p) ?? {};
    const result = await pruneProject(ctx.storage, ctx.collector, p, policy, {
      dryRun: body.dryRun === true,
      wait: body.wait === true,
    });
    return c.json({ result });
  });

  routes.get("/projects/:project/policy", async (c) => {
    const p = projectParam(c);
    need(c, "head", p);
    return c.json({ policy: await ctx.storage.index.getPolicy(p) });
  });

  routes.put("/projects/:project/policy", async (c) => {
    const p = projectParam(c);
    need(c, "admin", p);
    const body = await readJson(c, BODY_LIMIT, "set policy") as Record<string, unknown> | null;
    const policy = parsePolicy(body?.policy);
    await ctx.storage.index.setPolicy(p, policy);
    return c.json({ policy });
  });

  routes.delete("/projects/:project/policy", async (c) => {
    const p = projectParam(c);
    need(c, "admin", p);
    await ctx.storage.index.setPolicy(p, null);
    return c.json({ policy: null });
  });

  // Any token of a project sees its stats; the store's need a token for '*'.
  routes.get("/stats", async (c) => {
    const project = c.req.query("project");
    if (project !== undefined) {
      const p = checkProjectName(project);
      need(c, "head", p);
      return c.json({ stats: await readStats(ctx.storage, ctx.collector, p) });
    }
    need(c, "head");
    return c.json({ stats: await readStats(ctx.storage, ctx.collector) });
  });

  routes.post("/verify", async (c) => {
    need(c, "admin");
    return c.json({ report: await verifyStore(ctx.storage) });
  });

  return routes;
}
