/**
 * A project's commits: the upload that adds one, the list, and one commit
 * with the paths it kept flagged.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { Hono } from "hono";
import { KeepError } from "../../errors.ts";
import { collectNow } from "../../platform/memory.ts";
import { type AppContext, type Env, need, projectParam } from "../context.ts";
import { receiveUpload } from "../upload.ts";
import { readJson } from "../json_body.ts";
import { NEGOTIATE_BATCH, type NegotiateAnswer } from "../../format/possession.ts";
import { hexToBytes } from "../../format/hex.ts";
import { chunkThreshold } from "../../server/ingest.ts";
import { possessionKeys } from "../../server/possession.ts";

/** The route group. */
export function commitRoutes(ctx: AppContext): Hono<Env> {
  const routes = new Hono<Env>();
  const { index } = ctx.storage;

  // Before an upload: which of these contents (SHA-256, hex) the store holds,
  // and the key the upload's proofs of possession use (server/possession.ts).
  routes.post("/projects/:project/negotiate", async (c) => {
    const p = projectParam(c);
    need(c, "append", p);
    const body = await readJson(c, NEGOTIATE_BATCH * 70 + 4096, "negotiate") as {
      hashes?: unknown;
      own?: unknown;
    };
    const hashes = body?.hashes;
    if (
      !Array.isArray(hashes) || hashes.length > NEGOTIATE_BATCH ||
      !hashes.every((h) => typeof h === "string" && /^[0-9a-f]{64}$/.test(h)) ||
      (body.own !== undefined && typeof body.own !== "boolean")
    ) {
      throw new KeepError(
        "invalid",
        `Cannot negotiate: body must be JSON {hashes: [SHA-256 hex], own?: boolean}, at most ${NEGOTIATE_BATCH} hashes`,
      );
    }
    const known = hashes.length
      ? await index.knownBlobs((hashes as string[]).map(hexToBytes))
      : new Set<string>();
    const have = (hashes as string[]).filter((h) => known.has(h));
    const own = body.own && have.length && index.projectChunks
      ? await index.projectChunks(p, have.map(hexToBytes))
      : null;
    const { nonce, key } = possessionKeys.issue(p);
    const answer: NegotiateAnswer = {
      nonce,
      key: Buffer.from(key).toString("hex"),
      have,
      ...(body.own ? { own: have.filter((h) => own?.has(h)) } : {}),
      chunkOver: chunkThreshold(index, ctx.limits),
    };
    return c.json(answer);
  });

  routes.post("/projects/:project/commits", async (c) => {
    const p = projectParam(c);
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
    ctx.uploads.active++;
    try {
      const { commit, changedPaths } = await receiveUpload(ctx.storage, p, body, ctx);
      // A big upload's garbage goes before the manifest build adds its own;
      // a small one's is not worth a full GC before the answer (~20 ms).
      if (commit.stats.wireBytes > 16 << 20) collectNow();
      ctx.metrics?.upload(commit.stats.wireBytes, commit.stats.seconds);
      ctx.manifests.prepare(index, p, commit, changedPaths).catch(() => {});
      ctx.log?.(
        `commit ${p} ${commit.id} #${commit.seq}: +${commit.counts.added} ~${commit.counts.changed} -${commit.counts.deleted} ${commit.stats.wireBytes} B in ${commit.stats.seconds} s`,
      );
      return c.json({ commit }, 201);
    } finally {
      ctx.uploads.active--;
    }
  });

  routes.get("/projects/:project/commits", async (c) => {
    const p = projectParam(c);
    need(c, "read", p);
    const limit = Math.min(Math.max(Number(c.req.query("limit") ?? 1000) || 1000, 1), 100000);
    return c.json({ commits: await index.listCommits(p, limit) });
  });

  routes.get("/projects/:project/commits/:ref", async (c) => {
    const p = projectParam(c);
    need(c, "read", p);
    const commit = await index.resolveCommit(p, c.req.param("ref"));
    return c.json({ commit, notes: await index.commitNotes(p, commit.seq) });
  });

  return routes;
}
