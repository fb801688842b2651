/**
 * PUT and GET throughput of one S3 store by object size, through Keep's own
 * client (src/server/storage/s3_client.ts): what the pack size and the
 * multipart part size were chosen by (docs/DESIGN.md). Needs the env of
 * `scripts/services up` (or any AWS_* for a bucket KEEP_S3_BUCKET).
 *
 *   . .scratch/services/env && ./scripts/deno run -A bench/s3_objects.ts
 */
import { S3Client } from "../src/server/storage/s3_client.ts";

const env = (k: string) => {
  const v = Deno.env.get(k);
  if (!v) throw new Error(`Cannot run: ${k} is not set (source .scratch/services/env)`);
  return v;
};
const s3 = new S3Client({
  endpoint: env("AWS_ENDPOINT_URL"),
  region: Deno.env.get("AWS_REGION") ?? "us-east-1",
  accessKey: env("AWS_ACCESS_KEY_ID"),
  secretKey: env("AWS_SECRET_ACCESS_KEY"),
  bucket: env("KEEP_S3_BUCKET"),
});
const prefix = `bench-${Date.now()}/`;
const total = Number(Deno.args[0] ?? 256) << 20;
const sizes = [256 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20];
console.log(`size      PUT MB/s  GET MB/s  range GET 64 KiB (ms)  (${total >> 20} MiB each)`);
for (const size of sizes) {
  const body = crypto.getRandomValues(new Uint8Array(65536));
  const data = new Uint8Array(size);
  for (let o = 0; o < size; o += 65536) data.set(body.subarray(0, Math.min(65536, size - o)), o);
  const n = Math.max(2, Math.round(total / size));
  let t = performance.now();
  for (let i = 0; i < n; i++) await s3.put(`${prefix}${size}/${i}`, data, { ifNoneMatch: true });
  const put = (n * size) / 1e6 / ((performance.now() - t) / 1000);
  t = performance.now();
  for (let i = 0; i < n; i++) await (await s3.get(`${prefix}${size}/${i}`))!.arrayBuffer();
  const get = (n * size) / 1e6 / ((performance.now() - t) / 1000);
  t = performance.now();
  for (let i = 0; i < 20; i++) {
    await (await s3.get(`${prefix}${size}/0`, {
      start: (i * 4096) % (size - 65536 + 1),
      end: (i * 4096) % (size - 65536 + 1) + 65536,
    }))!.arrayBuffer();
  }
  const range = (performance.now() - t) / 20;
  console.log(
    `${(size / 1048576).toFixed(2).padStart(6)} MiB ${put.toFixed(0).padStart(8)} ${
      get.toFixed(0).padStart(9)
    } ${range.toFixed(1).padStart(12)}`,
  );
  const keys: string[] = [];
  for await (const page of s3.list(`${prefix}${size}/`)) keys.push(...page.map((o) => o.key));
  await s3.deleteMany(keys);
}
