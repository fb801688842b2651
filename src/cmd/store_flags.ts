/**
 * Flags that say where a store is, for the commands that open one on a
 * server's side (serve, migrate): a bucket for the blobs and its keys.
 * Apart from flags.ts so that client commands do not load the S3 code.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import type { S3Blobs } from "../server/storage/open.ts";
import { parseS3Url } from "../server/storage/s3_blobs.ts";
import { flagOrEnv, type Parsed } from "./flags.ts";

/**
 * The bucket `--blobs s3://…` (or another flag's) and the --s3-* flags (or
 * AWS_* variables) name; undefined without that flag.
 */
export function s3Flags(p: Parsed, flag = "blobs"): S3Blobs | undefined {
  const url = p.values[flag] as string | undefined;
  const others = ["s3-endpoint", "s3-region", "s3-access-key", "s3-secret-key"]
    .filter((f) => p.values[f] !== undefined);
  if (url === undefined) {
    if (others.length) {
      throw new KeepError(
        "usage",
        `Cannot use --${others[0]} without --${flag} s3://BUCKET/PREFIX`,
      );
    }
    return undefined;
  }
  const loc = parseS3Url(url);
  if (!loc) {
    throw new KeepError("usage", `Cannot use --${flag} ${url}: give s3://BUCKET/PREFIX`);
  }
  const region = flagOrEnv(p, "s3-region", "AWS_REGION") ?? "us-east-1";
  const endpoint = flagOrEnv(p, "s3-endpoint", "AWS_ENDPOINT_URL") ??
    `https://s3.${region}.amazonaws.com`;
  let parsed: URL;
  try {
    parsed = new URL(endpoint);
  } catch {
    throw new KeepError("usage", `Cannot use --s3-endpoint ${endpoint}: not a URL`);
  }
  if (!/^https?:$/.test(parsed.protocol) || (parsed.pathname !== "/" && parsed.pathname !== "")) {
    throw new KeepError(
      "usage",
      `Cannot use --s3-endpoint ${endpoint}: give http(s)://HOST[:PORT] (path-style addressing)`,
    );
  }
  const accessKey = flagOrEnv(p, "s3-access-key", "AWS_ACCESS_KEY_ID");
  const secretKey = flagOrEnv(p, "s3-secret-key", "AWS_SECRET_ACCESS_KEY");
  if (!accessKey || !secretKey) {
    throw new KeepError(
      "usage",
      `Cannot use --${flag} ${url}: no keys (--s3-access-key and --s3-secret-key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)`,
    );
  }
  return { ...loc, endpoint: parsed.origin, region, accessKey, secretKey };
}
