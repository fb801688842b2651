/**
 * `deno task bench-capacity`: the per-operation costs of the scale-out
 * backend, measured, for the capacity estimate in docs/DESIGN.md ("Scaling
 * out: capacity"). One `keep serve` on Ceph RGW + PostgreSQL
 * (scripts/services); a tree of --files small files (bench/datasets.ts);
 * for each step (first backup, no-change backup, a backup after 1% changed,
 * 0.5% added and 0.5% deleted, a restore) it prints the statements the server
 * sent to PostgreSQL, the rows each table of the index gained or lost, the
 * object store requests by kind and the
 * bytes uploaded; then the index's bytes per file version.
 *
 *   ./scripts/deno task bench-capacity [--files 20000]
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { DatasetBuilder } from "./datasets.ts";
import { KeepServer } from "./keep_server.ts";
import { runTimed } from "./measure.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const KEEP = join(ROOT, "scripts/keep");
const args = parseArgs({ args: Deno.args, options: { files: { type: "string" } } });
const files = Number(args.values.files ?? 20_000);
if (!Number.isInteger(files) || files < 100) {
  console.error("bench-capacity: --files needs an integer of at least 100");
  Deno.exit(2);
}

const up = await new Deno.Command(join(ROOT, "scripts/services"), {
  args: ["up"],
  stdout: "piped",
  stderr: "inherit",
}).output();
if (up.code !== 0) Deno.exit(1);
const env: Record<string, string> = {};
for (const m of new TextDecoder().decode(up.stdout).matchAll(/^export (\w+)=(.*)$/gm)) {
  env[m[1]] = m[2];
  Deno.env.set(m[1], m[2]);
}

const work = await Deno.makeTempDir({ prefix: "keep-capacity-" });
const db = `capacity_${crypto.randomUUID().slice(0, 8)}`;
const admin = postgres(env.KEEP_PG_URL, { max: 1, onnotice: () => {} });
await admin.unsafe(`CREATE DATABASE ${db}`);
const pgUrl = new URL(env.KEEP_PG_URL);
pgUrl.pathname = `/${db}`;
const dbSql = postgres(pgUrl.toString(), { max: 1, onnotice: () => {} });
const server = await KeepServer.start(KEEP, join(work, "node"), join(work, "serve.log"), [
  "--compact-idle",
  "off",
  "--blobs",
  `s3://${env.KEEP_S3_BUCKET}/capacity-${Date.now().toString(36)}/`,
  "--index",
  pgUrl.toString(),
]);

/** The counters that matter, from /metrics and pg_stat_database. */
async function sample(): Promise<Record<string, number>> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^keep_object_requests_total\{op="([^"]+)"\} (\d+)$/gm)) {
    out[`s3 ${m[1]}`] = Number(m[2]);
  }
  out["db statements"] = Number(/^keep_db_statements_total (\d+)$/m.exec(text)?.[1] ?? NaN);
  out["bytes uploaded"] = Number(/^keep_upload_bytes_total (\d+)$/m.exec(text)?.[1] ?? 0);
  // Rows the index holds, by table (pg_stat_database's counters lag behind
  // pooled connections by up to 10 s: counted directly instead).
  for (const t of ["commits", "current", "history", "paths", "blobs", "packs", "notes"]) {
    const [r] = await dbSql.unsafe(`SELECT count(*) AS n FROM ${t}`);
    out[`rows in ${t}`] = Number(r.n);
  }
  return out;
}

const tree = new DatasetBuilder(1).small(join(work, "tree"), files);
const results: { step: string; seconds: number; delta: Record<string, number> }[] = [];
async function step(name: string, args: string[]) {
  const before = await sample();
  const t = await runTimed(KEEP, args, { capture: true });
  if (t.code !== 0) throw new Error(`${name}: keep exited ${t.code}: ${t.stderr}`);
  const after = await sample();
  const delta: Record<string, number> = {};
  for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
    delta[k] = (after[k] ?? 0) - (before[k] ?? 0);
  }
  // What sampling itself costs (a /metrics scrape reads the index) is not the step's.
  for (const k of Object.keys(baseline)) delta[k] -= baseline[k];
  results.push({ step: name, seconds: t.seconds, delta });
  console.error(`capacity: ${name}: ${t.seconds.toFixed(2)} s`);
}

// The cost of sampling alone (two samples with nothing between them; the least of three).
const baseline: Record<string, number> = {};
for (let i = 0; i < 3; i++) {
  const a = await sample();
  const b = await sample();
  for (const k of Object.keys(b)) {
    const d = b[k] - (a[k] ?? 0);
    baseline[k] = i === 0 ? d : Math.min(baseline[k], d);
  }
}

const backup = ["backup", "-s", server.url, "-p", "cap", "--settle", "0", "--json", tree.root];
try {
  await step("first backup", backup);
  await step("no-change backup", backup);
  const m = new DatasetBuilder(1).mutate(tree, 1);
  await step(`backup after ${m.changed} changed, ${m.added} added, ${m.deleted} deleted`, backup);
  await step("restore", ["restore", "-s", server.url, "-p", "cap", join(work, "restored")]);
  const [size] = await dbSql`
    SELECT (SELECT count(*) FROM history) + (SELECT count(*) FROM current) AS versions,
      (SELECT count(*) FROM blobs) AS blobs,
      pg_total_relation_size('history') + pg_total_relation_size('current') +
      pg_total_relation_size('paths') AS version_bytes,
      pg_total_relation_size('blobs') AS blob_bytes,
      pg_database_size(current_database()) AS db_bytes`;
  const keys = [...new Set(results.flatMap((r) => Object.keys(r.delta)))].sort();
  console.log(`files: ${files}, ${tree.bytes} bytes\n`);
  console.log(`| per step | ${results.map((r) => r.step).join(" | ")} |`);
  console.log(`| --- | ${results.map(() => "---:").join(" | ")} |`);
  console.log(`| seconds | ${results.map((r) => r.seconds.toFixed(2)).join(" | ")} |`);
  for (const k of keys) {
    console.log(`| ${k} | ${results.map((r) => r.delta[k] ?? 0).join(" | ")} |`);
  }
  console.log(
    `\nindex: ${size.versions} file versions in ${size.version_bytes} bytes (${
      (Number(size.version_bytes) / Number(size.versions)).toFixed(0)
    } B each, with indexes); ${size.blobs} blob rows in ${size.blob_bytes} bytes (${
      (Number(size.blob_bytes) / Number(size.blobs)).toFixed(0)
    } B each); database ${size.db_bytes} bytes`,
  );
} finally {
  await server.stop();
  await dbSql.end();
  await admin.unsafe(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch(() => {});
  await admin.end();
  await Deno.remove(work, { recursive: true });
}
