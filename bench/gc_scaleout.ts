/**
 * A GC round's cost on the two indexes, blobs in one S3 store: a project of
 * N small files backed up twice with every file changed, then `keep prune
 * --keep-last 1 --wait` (N versions and N blobs to remove). Reports the
 * round's phases and, sampled every 20 ms while it runs, how long the
 * server takes to answer a commit listing (on PostgreSQL the collector runs
 * on the server's own thread). Needs the env of `scripts/services up`.
 *
 *   . .scratch/services/env && ./scripts/deno run -A bench/gc_scaleout.ts [N]
 */
import postgres from "postgres";
import { join } from "node:path";
import { keepOk, startServer, tempDir } from "../tests/helpers.ts";

const env = Deno.env.toObject();
for (const k of ["AWS_ENDPOINT_URL", "KEEP_S3_BUCKET", "KEEP_PG_URL"]) {
  if (!env[k]) throw new Error(`Cannot run: ${k} is not set (source .scratch/services/env)`);
}
const n = Number(Deno.args[0] ?? 20_000);

function writeFiles(dir: string, round: number): void {
  for (let i = 0; i < n; i++) {
    const d = join(dir, `d${i % 100}`);
    if (i < 100) Deno.mkdirSync(d, { recursive: true });
    Deno.writeTextFileSync(join(d, `f${i}.txt`), `file ${i} round ${round}\n`.repeat(40 + i % 80));
  }
}

async function run(kind: "sqlite" | "postgres"): Promise<void> {
  const prefix = `bench-gc-${kind}-${Date.now()}/`;
  const admin = postgres(env.KEEP_PG_URL, { max: 1, onnotice: () => {} });
  const dbName = `kb_${crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
  const args = ["--blobs", `s3://${env.KEEP_S3_BUCKET}/${prefix}`, "--gc-grace", "0s"];
  if (kind === "postgres") {
    await admin.unsafe(`CREATE DATABASE ${dbName}`);
    args.push("--index", env.KEEP_PG_URL.replace(/\/[^/]*$/, `/${dbName}`));
  }
  const server = await startServer({ args, env });
  try {
    const src = await tempDir();
    const cli = { env: { KEEP_SERVER: server.url, KEEP_PROJECT: "app" } };
    for (let round = 0; round < 2; round++) {
      writeFiles(src, round);
      const t = performance.now();
      await keepOk(["backup", "--settle", "0", src], 0, cli);
      console.log(`${kind}: backup ${round + 1}: ${((performance.now() - t) / 1000).toFixed(2)} s`);
    }
    let sampling = true;
    const latencies: number[] = [];
    const sampler = (async () => {
      while (sampling) {
        const t = performance.now();
        const res = await fetch(`${server.url}/v1/projects/app/commits`);
        await res.body?.cancel();
        latencies.push(performance.now() - t);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const t = performance.now();
    const out = await keepOk(["prune", "--keep-last", "1", "--wait", "--json"], 0, cli);
    const wall = performance.now() - t;
    sampling = false;
    await sampler;
    const gc = JSON.parse(out.stdout).data?.gc ?? JSON.parse(out.stdout).gc;
    latencies.sort((a, b) => a - b);
    const q = (p: number) =>
      latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
    console.log(
      `${kind}: prune + round ${
        (wall / 1000).toFixed(2)
      } s; versions ${gc.versionsRemoved}, swept ${gc.blobsSwept}, packs deleted ${gc.packsDeleted}; longest step ${gc.longestStepMs} ms`,
    );
    console.log(
      `${kind}: phases (ms) ${
        Object.entries(gc.phaseMs as Record<string, number>).map(([k, v]) =>
          `${k} ${Math.round(v)}`
        )
          .join(", ")
      }`,
    );
    console.log(
      `${kind}: commit listing during the round: ${latencies.length} samples, median ${
        q(0.5).toFixed(1)
      } ms, p95 ${q(0.95).toFixed(1)} ms, max ${q(1).toFixed(1)} ms`,
    );
  } finally {
    await server.stop();
    if (kind === "postgres") {
      await admin.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => {});
    }
    await admin.end();
  }
}

await run("sqlite");
await run("postgres");
