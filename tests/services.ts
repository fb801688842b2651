/**
 * The scale-out services for tests that need them: `scripts/services up`
 * once per test process (the script itself serializes parallel callers and
 * returns at once when they run), its env parsed. Only test files that call
 * `services()` wait for Ceph and PostgreSQL; scripts/test stops them after
 * the run when the run started them.
 */

import { join } from "node:path";
import { S3Client } from "../src/server/storage/s3_client.ts";

// Not helpers.ts's ROOT: helpers.ts imports this module (KEEP_TEST_BACKEND=scaleout).
const SCRIPT = join(new URL("..", import.meta.url).pathname, "scripts/services");

/** What `scripts/services up` wrote to its env file. */
export interface ServicesEnv {
  AWS_ENDPOINT_URL: string;
  AWS_REGION: string;
  AWS_ACCESS_KEY_ID: string;
  AWS_SECRET_ACCESS_KEY: string;
  KEEP_S3_BUCKET: string;
  KEEP_PG_URL: string;
}

let started: Promise<ServicesEnv> | null = null;

async function run(...args: string[]): Promise<string> {
  const out = await new Deno.Command(SCRIPT, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (out.code !== 0) {
    throw new Error(
      `scripts/services ${args.join(" ")} failed (${out.code}): ${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
  return text;
}

/** Starts the services (once per process) and returns their env. */
export function services(): Promise<ServicesEnv> {
  started ??= run("up").then((text) => {
    const env: Record<string, string> = {};
    for (const m of text.matchAll(/^export (\w+)=(.*)$/gm)) env[m[1]] = m[2];
    return env as unknown as ServicesEnv;
  });
  return started;
}

/** Stops radosgw alone (an object store outage); `restartRgw` ends it. */
export async function stopRgw(): Promise<void> {
  await run("down", "rgw");
}

/** Stops all of Ceph: radosgw, the OSD and the monitor (`restartCeph` starts them again). */
export async function stopCeph(): Promise<void> {
  await run("down", "ceph");
}

export async function restartRgw(): Promise<void> {
  started = null;
  await services();
}

/** Stops PostgreSQL alone (a database outage); `services()` after `restart` starts it again. */
export async function stopPg(): Promise<void> {
  await run("down", "pg");
}

export const restartPg = restartRgw;
export const restartCeph = restartRgw;

/** A client on the services' bucket, for tests that reach behind the server. */
export function bucketClient(env: ServicesEnv): S3Client {
  return new S3Client({
    endpoint: env.AWS_ENDPOINT_URL,
    region: env.AWS_REGION,
    accessKey: env.AWS_ACCESS_KEY_ID,
    secretKey: env.AWS_SECRET_ACCESS_KEY,
    bucket: env.KEEP_S3_BUCKET,
    attempts: 1,
  });
}

/** A fresh prefix: each test its own store in the one bucket. */
export function freshPrefix(what: string): string {
  return `test-${what}-${Date.now().toString(36)}-${crypto.randomUUID().slice(0, 8)}/`;
}
