/**
 * Content out: a commit (or a subtree) as a tar.gz stream for restore, and
 * one blob's stored members.
 *
 * @module
 */

import { Hono } from "hono";
import { KeepError } from "../../errors.ts";
import { hexToBytes } from "../../format/hex.ts";
import { normalisePrefix } from "../../format/paths.ts";
import { churned } from "../../platform/memory.ts";
import { streamFrom } from "../../platform/streams.ts";
import { checkArchivePath, exportArchive } from "../../server/archive.ts";
import { type AppContext, type Env, need, projectParam } from "../context.ts";
import { contentPieces } from "../../server/content_pieces.ts";

/** The route group. */
export function contentRoutes(ctx: AppContext): Hono<Env> {
  const routes = new Hono<Env>();
  const { index } = ctx.storage;

  routes.get("/projects/:project/archive", async (c) => {
    const p = projectParam(c);
    need(c, "read", p);
    const commit = await index.resolveCommit(p, c.req.query("commit") ?? "latest");
    const prefix = normalisePrefix(c.req.query("path") ?? "");
    await checkArchivePath(ctx.storage, commit, prefix);
    const stream = streamFrom(exportArchive(ctx.storage, commit, prefix), {
      onError: (err) => ctx.log?.(`error: archive ${p} ${commit.id}: ${(err as Error).message}`),
    });
    return new Response(stream, {
      headers: { "content-type": "application/gzip", "keep-commit": commit.id },
    });
  });

  routes.get("/projects/:project/blobs/:hash", async (c) => {
    const p = projectParam(c);
    need(c, "read", p);
    const hash = c.req.param("hash");
    if (!/^[0-9a-f]{64}$/.test(hash)) {
      throw new KeepError("invalid", "Cannot fetch blob: hash must be 64 hex digits");
    }
    const place = await index.projectHasHash(p, hexToBytes(hash))
      ? await index.blobPlace(hash)
      : null;
    if (!place) {
      throw new KeepError(
        "not_found",
        `Cannot fetch blob ${hash}: project ${p} has no such content`,
      );
    }
    const pieces = await contentPieces(ctx.storage, hash, place);
    return new Response(
      streamFrom(copies(pieces), {
        onChunk: (b) => churned(b.length),
        onError: (err) => ctx.log?.(`error: blob ${p} ${hash}: ${(err as Error).message}`),
      }),
      { headers: { "content-type": "application/gzip" } },
    );
  });

  return routes;
}

/** Pieces are views of a reused buffer: each copied before it is queued. */
async function* copies(pieces: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  for await (const piece of pieces) yield piece.slice();
}
