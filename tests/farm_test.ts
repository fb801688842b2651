/**
 * A build farm: many hosts back up one project at the same moment (a CI
 * matrix sharing a project id). Every backup must land, in a chain, each
 * commit exactly the tree its host scanned.
 */

import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import {
  assertSameTree,
  json,
  keep,
  keepOk,
  logJson,
  snapshot,
  startServer,
  tempDir,
  writeTree,
} from "./helpers.ts";

const HOSTS = 20;

type LogJson = { id: string; seq: number; parent: string | null; host: string }[];

Deno.test("twenty hosts back up one project at once: all land, in a chain, each commit its host's tree", async () => {
  await using server = await startServer();
  const base: Record<string, string> = {};
  for (let i = 0; i < 40; i++) base[`src/file${i}.c`] = `int f${i}(void) { return ${i}; }\n`;
  base["shared.txt"] = "base\n";
  const seed = await tempDir();
  writeTree(seed, base);
  const s = ["-s", server.url, "-p", "farm", "--settle", "0"];
  await keepOk(["backup", ...s, "--host", "seed", seed]);

  // Each host: the base, its own file, its own version of shared.txt, one base file deleted.
  const trees: string[] = [];
  for (let h = 0; h < HOSTS; h++) {
    const dir = await tempDir(`keep-host${h}-`);
    const spec: Record<string, string> = { ...base };
    delete spec[`src/file${h}.c`];
    spec[`hosts/h${h}.txt`] = `built on host ${h}\n`;
    spec["shared.txt"] = `host ${h} was here\n`;
    writeTree(dir, spec);
    trees.push(dir);
  }
  const runs = await Promise.all(
    trees.map((dir, h) => keep(["backup", ...s, "--host", `h${h}`, "--json", dir])),
  );
  for (const [h, r] of runs.entries()) assertEquals(r.code, 0, `host ${h}: ${r.stderr}`);
  const attempts = runs.map((r) => json<{ attempts: number }>(r).attempts);
  assert(attempts.every((a) => a === 1), `every host landed on its first attempt: ${attempts}`);

  const log = logJson<LogJson[number]>(
    await keepOk(["log", "-s", server.url, "-p", "farm", "-n", "100", "--json"]),
  );
  const commits = [...log].sort((a, b) => a.seq - b.seq);
  assertEquals(commits.length, HOSTS + 1);
  for (let i = 1; i < commits.length; i++) {
    assertEquals(commits[i].seq, i + 1);
    assertEquals(commits[i].parent, commits[i - 1].id, `commit #${i + 1} follows #${i}`);
  }
  assertEquals(new Set(commits.slice(1).map((c) => c.host)).size, HOSTS, "one commit per host");

  // Each commit holds exactly the tree its host scanned, whatever landed before it.
  for (const c of commits.slice(1)) {
    const h = Number(c.host.slice(1));
    const out = join(await tempDir(), "out");
    await keepOk(["restore", "-s", server.url, "-p", "farm", "-c", c.id, out]);
    assertSameTree(snapshot(out), snapshot(trees[h]), `commit of host ${h}`);
  }
  const verify = await keep(["verify", "--data", server.dataDir]);
  assertEquals(verify.code, 0, verify.stdout + verify.stderr);
});

Deno.test("two first backups of one new project at once: both land, each commit its own tree", async () => {
  await using server = await startServer();
  const a = await tempDir();
  const b = await tempDir();
  writeTree(a, { "a.txt": "from a\n", "common/x.h": "x\n" });
  writeTree(b, { "b.txt": "from b\n", "common/y.h": "y\n" });
  const s = ["-s", server.url, "-p", "fresh", "--settle", "0", "--json"];
  const [ra, rb] = await Promise.all([keep(["backup", ...s, a]), keep(["backup", ...s, b])]);
  assertEquals([ra.code, rb.code], [0, 0], ra.stderr + rb.stderr);
  for (const [r, dir] of [[ra, a], [rb, b]] as const) {
    const id = json<{ commit: { id: string } }>(r).commit.id;
    const out = join(await tempDir(), "out");
    await keepOk(["restore", "-s", server.url, "-p", "fresh", "-c", id, out]);
    assertSameTree(snapshot(out), snapshot(dir));
  }
});
