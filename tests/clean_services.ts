/**
 * After a whole run (scripts/test): removes what the tests left on the
 * scale-out services, so that runs on one machine do not fill the test OSD
 * (a 20 GiB file: once full, every PUT hangs): the objects under the
 * tests' bucket prefixes (`test-…/`, tests/services.ts freshPrefix) and the
 * databases the end-to-end files made for their data dirs (`kb_…`,
 * tests/helpers.ts). Reads the services' env as `scripts/services up` wrote it.
 */

import postgres from "postgres";
import { bucketClient, type ServicesEnv } from "./services.ts";

const env = (name: keyof ServicesEnv): string => {
  const v = Deno.env.get(name);
  if (!v) throw new Error(`clean_services: ${name} is not set (source the services' env)`);
  return v;
};

const bucket = bucketClient({
  AWS_ENDPOINT_URL: env("AWS_ENDPOINT_URL"),
  AWS_REGION: env("AWS_REGION"),
  AWS_ACCESS_KEY_ID: env("AWS_ACCESS_KEY_ID"),
  AWS_SECRET_ACCESS_KEY: env("AWS_SECRET_ACCESS_KEY"),
  KEEP_S3_BUCKET: env("KEEP_S3_BUCKET"),
  KEEP_PG_URL: env("KEEP_PG_URL"),
});
let objects = 0;
for await (const page of bucket.list("test-")) {
  await bucket.deleteMany(page.map((o) => o.key));
  objects += page.length;
}
const admin = postgres(env("KEEP_PG_URL"), { max: 4, onnotice: () => {} });
let databases = 0;
try {
  const rows = await admin<{ datname: string }[]>`
    SELECT datname FROM pg_database WHERE datname ~ '^kb_[0-9a-f]{12}$'`;
  await Promise.all(rows.map(async ({ datname }) => {
    await admin.unsafe(`DROP DATABASE IF EXISTS ${datname} WITH (FORCE)`);
    databases++;
  }));
} finally {
  await admin.end();
}
console.error(`clean_services: removed ${objects} test objects and ${databases} test databases`);
