/**
 * Repair of damaged blobs when the file was flagged meanwhile, and a server
 * that stays responsive (uploads not cut) while verify reads the store.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { commitHeader, noise, Upload } from "./craft.ts";
import {
  json,
  keep,
  keepOk,
  logJson,
  startServer,
  tempDir,
  type TestServer,
  writeTree,
} from "./helpers.ts";

/** Damages the one large blob file of the store. */
function damageLargeBlob(dataDir: string): void {
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of Deno.readDirSync(d)) {
      if (e.isDirectory) walk(join(d, e.name));
      else files.push(join(d, e.name));
    }
  };
  walk(join(dataDir, "blobs"));
  assertEquals(files.length, 1);
  using f = Deno.openSync(files[0], { read: true, write: true });
  f.seekSync(1 << 20, Deno.SeekMode.Start);
  f.writeSync(new Uint8Array(64).fill(0x55));
}

/** An upload on the head that keeps `path` as it was, flagged unreadable (what a backup does when it cannot read it). */
async function backupWithUnreadable(
  server: TestServer,
  project: string,
  path: string,
): Promise<void> {
  const head = (logJson(
    await keepOk(["log", "-s", server.url, "-p", project, "--json"]),
  ))[0].id;
  const body = new Upload().commit(commitHeader(head)).changes([
    { op: "keep", p: path, flag: "unreadable", reason: "permission denied" },
  ]).end().bytes();
  const res = await fetch(`${server.url}/v1/projects/${project}/commits`, {
    method: "POST",
    body: new Uint8Array(body),
  });
  assertEquals(res.status, 201, await res.text());
}

for (const when of ["after", "before"] as const) {
  Deno.test(`a damaged blob is repaired by the next readable backup, also when the file was unreadable ${when} verify marked it`, async () => {
    await using server = await startServer();
    const src = await tempDir();
    const big = noise(3 << 20, 11);
    writeTree(src, { "big.bin": big, "small.txt": "s\n" });
    await keepOk(["backup", "-s", server.url, "-p", "app", "--settle", "0", src]);
    damageLargeBlob(server.dataDir);
    if (when === "before") await backupWithUnreadable(server, "app", "big.bin");
    assertEquals((await keep(["verify", "--data", server.dataDir])).code, 4);
    if (when === "after") await backupWithUnreadable(server, "app", "big.bin");
    // Readable again: the backup must send it whole, though its hash matches.
    const b = json<{ commit: { stats: { newBlobs: number; filesReceived: number } } }>(
      await keepOk(["backup", "-s", server.url, "-p", "app", "--settle", "0", "--json", src]),
    );
    assertEquals(b.commit.stats.newBlobs, 1, JSON.stringify(b.commit.stats));
    const v = await keep(["verify", "--data", server.dataDir]);
    assertEquals(v.code, 0, v.stdout);
    const out = join(await tempDir(), "out");
    await keepOk(["restore", "-s", server.url, "-p", "app", out]);
    assertEquals(Deno.readFileSync(join(out, "big.bin")), big);
  });
}

Deno.test("an upload that pauses is not cut while verify reads the whole store", async () => {
  await using server = await startServer({ args: ["--idle-timeout", "2s"] });
  // Enough blobs that reading them all takes seconds.
  const src = await tempDir();
  const spec: Record<string, Uint8Array> = {};
  for (let i = 0; i < 15_000; i++) spec[`d${i % 100}/f${i}`] = noise(200 + (i % 50), i);
  writeTree(src, spec);
  await keepOk(["backup", "-s", server.url, "-p", "many", "--settle", "0", src]);
  // An upload that sends a part every 150 ms (well under the 2 s idle timeout, on a loaded box too).
  const parts = new Upload().commit(commitHeader(null)).file("a.txt", "a").file("b.txt", "b")
    .changes().end().parts;
  const body = new ReadableStream<Uint8Array>({
    async start(ctl) {
      for (const p of parts) {
        for (let i = 0; i < p.bytes.length; i += 64) {
          ctl.enqueue(p.bytes.slice(i, i + 64));
          await new Promise((r) => setTimeout(r, 150));
        }
      }
      ctl.close();
    },
  });
  const upload = fetch(`${server.url}/v1/projects/slow/commits`, {
    method: "POST",
    body,
    // deno-lint-ignore no-explicit-any
    ...({ duplex: "half" } as any),
  });
  await new Promise((r) => setTimeout(r, 300));
  const started = performance.now();
  const verify = await fetch(`${server.url}/v1/verify`, { method: "POST" });
  assertEquals(verify.status, 200, await verify.text());
  const verifyMs = performance.now() - started;
  const res = await upload;
  const text = await res.text();
  assertEquals(res.status, 201, `upload during a ${verifyMs.toFixed(0)} ms verify: ${text}`);
  assertMatch(text, /"seq":1/);
  assert(verifyMs > 0);
});
