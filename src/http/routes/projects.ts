/**
 * What every backup reads: the projects a token may see, a project's head,
 * its manifest (whole or in the stat form a backup diffs against), and the
 * whole entries of some paths (the hashes a backup needs for the few files
 * it hashes locally).
 *
 * @module
 */

import { Hono } from "hono";
import { KeepError } from "../../errors.ts";
import { entryToJson } from "../../format/manifest.ts";
import { pathProblem } from "../../format/paths.ts";
import { manifestMembers } from "../../server/manifest_cache.ts";
import { authorize } from "../../server/tokens.ts";
import { streamFrom } from "../../platform/streams.ts";
import { type AppContext, type Env, need, projectParam } from "../context.ts";
import { readJson } from "../json_body.ts";

/**
 * Paths per `POST …/entries` request, and its body's limit (the client sends
 * up to 5,000 paths in up to ~4 MiB; a longer list is split).
 */
const MAX_LOOKUP_PATHS = 10_000;
const MAX_LOOKUP_BODY = 8 << 20;

/** The route group. */
export function projectRoutes(ctx: AppContext): Hono<Env> {
  const routes = new Hono<Env>();
  const { index } = ctx.storage;

  routes.get("/projects", async (c) => {
    const access = c.get("access");
    const visible = (await index.listProjects()).filter((p) => {
      try {
        authorize(access, "head", p.name);
        return true;
      } catch {
        return false;
      }
    });
    return c.json({ projects: visible });
  });

  routes.get("/projects/:project/head", async (c) => {
    const p = projectParam(c);
    need(c, "head", p);
    return c.json({ commit: await index.headCommit(p) });
  });

  routes.get("/projects/:project/manifest", async (c) => {
    const p = projectParam(c);
    const ref = c.req.query("commit") ?? "latest";
    need(c, ref === "latest" ? "head" : "read", p);
    const fields = c.req.query("fields") ?? "all";
    if (fields !== "all" && fields !== "stat") {
      throw new KeepError("usage", `Cannot send manifest: unknown fields ${fields} (all or stat)`);
    }
    const stat = fields === "stat";
    const commit = ref === "latest" ? await index.headCommit(p) : await index.resolveCommit(p, ref);
    let body: ReadableStream<Uint8Array>;
    if (ref === "latest") {
      await ctx.manifests.revalidate(index);
      body = await ctx.manifests.stream(index, p, commit, stat);
    } else body = streamFrom(manifestMembers(index, p, commit, stat));
    return new Response(body, {
      headers: {
        "content-type": "application/gzip",
        "keep-commit": commit?.id ?? "",
        "keep-manifest-fields": fields,
      },
    });
  });

  // One lookup at a time: each holds its body and parsed list (up to ~8 MiB
  // and its strings) until answered.
  let lookupQueue = Promise.resolve();
  routes.post("/projects/:project/entries", async (c) => {
    const p = projectParam(c);
    need(c, "head", p);
    const turn = lookupQueue;
    let done!: () => void;
    lookupQueue = new Promise<void>((r) => done = r);
    await turn;
    try {
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
      if ((await index.headCommit(p))?.id !== ref) need(c, "read", p);
      const commit = await index.resolveCommit(p, ref);
      const wanted = (paths as string[]).filter((path) => !pathProblem(path));
      let text = "";
      for (const e of await index.entriesAt(p, commit.seq, wanted)) text += entryToJson(e) + "\n";
      return new Response(text, { headers: { "content-type": "application/x-ndjson" } });
    } finally {
      done();
    }
  });

  return routes;
}
