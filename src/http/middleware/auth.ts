/**
 * Bearer-token authentication for every route under /v1: the token's access
 * goes into the context (`c.get("access")`), routes authorize it. Without a
 * token store (`serve --no-auth`, loopback only) every request has full
 * access.
 *
 * @module
 */

import type { MiddlewareHandler } from "hono";
import { KeepError } from "../../errors.ts";
import type { TokenStore } from "../../server/tokens.ts";
import type { Env } from "../context.ts";

/**
 * The middleware.
 *
 * @example
 * ```ts
 * v1.use("*", auth(tokens));
 * ```
 */
export function auth(tokens: TokenStore | null): MiddlewareHandler<Env> {
  return async (c, next) => {
    if (tokens === null) {
      c.set("access", null);
      return await next();
    }
    const m = /^Bearer\s+(\S+)$/i.exec(c.req.header("authorization") ?? "");
    if (!m) {
      throw new KeepError(
        "unauthorized",
        "Cannot authenticate: send Authorization: Bearer <token>",
      );
    }
    c.set("access", await tokens.check(m[1]));
    await next();
  };
}
