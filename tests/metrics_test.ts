/**
 * /metrics, scraped from a real server and parsed by the Prometheus
 * project's own Python client (`text_string_to_metric_families`), which
 * refuses what the text format does not allow.
 */

import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { keepOk, startServer, tempDir, token, writeTree } from "./helpers.ts";

/** name{labels} → value, as the official parser reads the exposition. */
async function parse(text: string): Promise<Map<string, number>> {
  const script = `
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}={v}' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))`;
  const p = new Deno.Command("/usr/bin/python3", {
    args: ["-c", script],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(text));
  await w.close();
  const r = await p.output();
  if (r.code !== 0) throw new Error(`parser refused: ${new TextDecoder().decode(r.stderr)}`);
  return new Map(Object.entries(JSON.parse(new TextDecoder().decode(r.stdout))));
}

Deno.test("/metrics: requests, bytes, commits, upload histogram, store, GC and per-project last commits", async () => {
  // The main listener needs an admin token; --metrics-listen serves without one.
  await using server = await startServer({
    noAuth: false,
    args: ["--metrics-listen", "127.0.0.1:0"],
  });
  const admin = await token(server.dataDir, "admin", "*");
  const restore = await token(server.dataDir, "restore", "app");
  const src = await tempDir();
  writeTree(src, { "a.txt": "alpha\n", "d": { dir: true }, "d/b": "beta" });
  const s = ["-s", server.url, "--token", admin, "-p", "app"];
  const t0 = Date.now() / 1000;
  await keepOk(["backup", ...s, "--settle", "0", src]);
  Deno.writeTextFileSync(join(src, "a.txt"), "alpha two\n");
  await keepOk(["backup", ...s, "--settle", "0", src]);
  await keepOk(["restore", ...s, await tempDir()]);
  await keepOk(["prune", ...s, "--keep-last", "1", "--wait"]);

  const denied = await fetch(`${server.url}/metrics`, {
    headers: { authorization: `Bearer ${restore}` },
  });
  assertEquals(denied.status, 403);
  await denied.body?.cancel();
  const anon = await fetch(`${server.url}/metrics`);
  assertEquals(anon.status, 401);
  await anon.body?.cancel();

  const res = await fetch(`${server.url}/metrics`, {
    headers: { authorization: `Bearer ${admin}` },
  });
  assertEquals(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const m = await parse(await res.text());
  const get = (k: string) => {
    const v = m.get(k);
    if (v === undefined) throw new Error(`no sample ${k} in ${[...m.keys()].join(" ")}`);
    return v;
  };
  assertEquals(
    get("keep_http_requests_total{method=POST,route=/v1/projects/:project/commits,status=201}"),
    2,
  );
  assertEquals(get("keep_http_requests_total{method=GET,route=/metrics,status=403}"), 1);
  assertEquals(get("keep_commits_received_total"), 2);
  assertEquals(get("keep_upload_duration_seconds_count"), 2);
  assertEquals(get("keep_upload_duration_seconds_bucket{le=+Inf}"), 2);
  assert(get("keep_upload_bytes_total") > 0);
  assert(get("keep_download_bytes_total") > 0, "the restore's archive was counted");
  assertEquals(get("keep_gc_runs_total"), 1);
  assertEquals(get("keep_commits_forgotten_total"), 1);
  assert(get("keep_blobs") >= 2);
  assert(get("keep_stored_bytes") > 0);
  assertEquals(get("keep_project_commits{project=app}"), 1);
  const last = get("keep_project_last_commit_timestamp_seconds{project=app}");
  assert(last >= Math.floor(t0) && last <= Date.now() / 1000 + 1, `last commit at ${last}`);
  assertEquals(get("keep_project_last_complete_commit_timestamp_seconds{project=app}"), last);

  // The separate listener: no token needed, the same figures.
  const url = /metrics on (\S+)/.exec(server.stderr())?.[1];
  assert(url, server.stderr());
  const plain = await parse(await (await fetch(url)).text());
  assertEquals(plain.get("keep_project_commits{project=app}"), 1);
  assertEquals(plain.get("keep_commits_received_total"), 2);
  const other = await fetch(url.replace("/metrics", "/v1/projects"));
  assertEquals(other.status, 404, "only /metrics there");
  await other.body?.cancel();
});
