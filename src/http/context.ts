/**
 * What the routes share: the open store, the manifest cache, limits, tokens,
 * and the counters the server's shutdown and prune look at. One value per
 * server, handed to every route group.
 *
 * @module
 */

import type { Context } from "hono";
import { checkProjectName } from "../format/api.ts";
import type { Rounds } from "../server/gc.ts";
import type { Metrics } from "./metrics.ts";
import type { UiOptions } from "./ui/routes.ts";
import type { IngestLimits } from "../server/ingest.ts";
import type { ManifestCache } from "../server/manifest_cache.ts";
import type { Storage } from "../server/storage/open.ts";
import { type Access, authorize, type Need, type TokenStore } from "../server/tokens.ts";

/** Requests in flight, until their response body is done (for a graceful stop and idle work). */
export interface Inflight {
  n: number;
  /** When the last request started or ended (ms since the epoch). */
  last: number;
  /**
   * Shared with GC's thread, for the requests that do work (not health
   * checks): [0] when one last started or ended (ms), [1] how many are in
   * flight. GC slows down while there are (see server/gc.ts, busy).
   */
  work?: Float64Array;
}

/** What the routes need. */
export interface AppContext {
  storage: Storage;
  /** Cache of head manifests. */
  manifests: ManifestCache;
  limits: IngestLimits;
  /** null: --no-auth (loopback only). */
  tokens: TokenStore | null;
  /** Seconds an upload may stay silent before it is cut. */
  idleTimeoutSec: number;
  log?: (line: string) => void;
  inflight?: Inflight;
  /** Uploads being received. */
  uploads: { active: number };
  /** Retention and GC rounds (null: none in this process, e.g. tests of routes). */
  collector: Rounds | null;
  /** This process's counters for /metrics (none: no /metrics, no counting). */
  metrics?: Metrics;
  /** The web UI at / (none: no UI). */
  ui?: UiOptions;
}

/** Hono's per-request variables: the checked token (null without auth). */
export type Env = { Variables: { access: Access | null } };

/** Throws unless the request's token may do `what` (on `project`). */
export function need(c: Context<Env>, what: Need, project?: string): void {
  authorize(c.get("access"), what, project);
}

/** The `:project` parameter, checked. */
export function projectParam(c: Context<Env>): string {
  return checkProjectName(c.req.param("project") ?? "");
}
