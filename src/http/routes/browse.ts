/**
 * Browsing a project (restore or admin role): a directory of a commit, the
 * differences between two commits, a path's history, and paths matching a
 * pattern across all commits. Each answers one page in JSON; `next` is the
 * cursor for the following page (`after=`).
 *
 * @module
 */

import { Hono } from "hono";
import { KeepError } from "../../errors.ts";
import { diffPage, findPaths, pageLimit, pathHistory, treePage } from "../../server/browse.ts";
import { type AppContext, type Env, need, projectParam } from "../context.ts";

/** The route group. */
export function browseRoutes(ctx: AppContext): Hono<Env> {
  const routes = new Hono<Env>();
  const { index } = ctx.storage;

  routes.get("/projects/:project/tree", async (c) => {
    const p = projectParam(c);
    need(c, "read", p);
    return c.json(
      await treePage(index, p, c.req.query("commit") ?? "latest", c.req.query("path") ?? "", {
        after: c.req.query("after"),
        limit: pageLimit("tree", c.req.query("limit")),
        sizes: c.req.query("sizes") !== "0",
      }),
    );
  });

  routes.get("/projects/:project/diff", async (c) => {
    const p = projectParam(c);
    need(c, "read", p);
    const from = c.req.query("from");
    const to = c.req.query("to");
    if (!from || !to) throw new KeepError("usage", "Cannot diff: give from=REF and to=REF");
    return c.json(
      await diffPage(index, p, from, to, {
        prefix: c.req.query("path"),
        after: c.req.query("after"),
        limit: pageLimit("diff", c.req.query("limit")),
      }),
    );
  });

  routes.get("/projects/:project/history", async (c) => {
    const p = projectParam(c);
    need(c, "read", p);
    return c.json(await pathHistory(index, p, c.req.query("path") ?? ""));
  });

  routes.get("/projects/:project/find", async (c) => {
    const p = projectParam(c);
    need(c, "read", p);
    return c.json(
      await findPaths(index, p, c.req.query("pattern") ?? "", {
        after: c.req.query("after"),
        limit: pageLimit("find", c.req.query("limit")),
      }),
    );
  });

  return routes;
}
