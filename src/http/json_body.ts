/**
 * Small JSON request bodies, read with a limit enforced on the bytes that
 * arrive (a declared Content-Length is only a first check: chunked bodies
 * declare none).
 *
 * @module
 */

import type { Context } from "hono";
import { KeepError } from "../errors.ts";
import { concatBytes } from "../platform/concat_bytes.ts";

/**
 * A JSON request body of at most `limit` bytes; `what` names the action in
 * the error ("Cannot look up entries: …").
 */
export async function readJson(c: Context, limit: number, what: string): Promise<unknown> {
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
