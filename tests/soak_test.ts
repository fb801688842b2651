/**
 * Soak: clients back up changing trees in a loop (adds, edits, deletes,
 * renames, the same content in several projects, two hosts on one project)
 * while the server applies retention policies and collects garbage over and
 * over, and prunes come in by hand. Then every kept commit must restore byte
 * for byte, verify must be clean, and the store must hold little more than
 * the kept commits need. The second run kills the server with SIGKILL at
 * random moments and restarts it on the same directory.
 */

import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import {
  assertSameTree,
  keep,
  keepOk,
  logJson,
  type Snapshot,
  snapshot,
  startServer,
  tempDir,
  type TestServer,
} from "./helpers.ts";
import { randomBytes, rng } from "./seeded.ts";

/** Each soak's length: 30 s in the suite, longer with KEEP_SOAK_SECONDS (at least 10). */
const SOAK_MS = Number(Deno.env.get("KEEP_SOAK_SECONDS") || 30) * 1000;
if (!(SOAK_MS > 0) || !Number.isFinite(SOAK_MS)) {
  throw new Error("KEEP_SOAK_SECONDS must be a positive number of seconds");
}

interface Client {
  project: string;
  host: string;
  dir: string;
  /** Snapshots of the trees this client's successful backups recorded, by commit id. */
  recorded: Map<string, Snapshot>;
}

/** Changes a tree a little: adds, edits, deletes, renames; some content shared with every client. */
function mutate(dir: string, rand: (n: number) => number, round: number): void {
  const files: string[] = [];
  const walk = (rel: string) => {
    for (const e of Deno.readDirSync(join(dir, rel))) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) walk(r);
      else files.push(r);
    }
  };
  walk("");
  const ops = 1 + rand(6);
  for (let i = 0; i < ops; i++) {
    const op = rand(5);
    if (op === 0 || files.length < 5) {
      // Add: small, big (a large blob), or a library every client has.
      const kind = rand(4);
      const sub = `d${rand(4)}`;
      Deno.mkdirSync(join(dir, sub), { recursive: true });
      const name = `${sub}/f${round}-${i}-${rand(1000)}`;
      const data = kind === 0
        ? randomBytes(1_200_000 + rand(400_000), rand(1 << 30))
        : kind === 1
        ? randomBytes(64 * 1024, 7 + rand(3)) // shared across clients
        : randomBytes(100 + rand(20_000), rand(1 << 30));
      Deno.writeFileSync(join(dir, name), data);
    } else if (op === 1) {
      const f = files[rand(files.length)];
      Deno.writeFileSync(join(dir, f), randomBytes(50 + rand(30_000), rand(1 << 30)));
    } else if (op === 2) {
      const f = files.splice(rand(files.length), 1)[0];
      Deno.removeSync(join(dir, f));
    } else if (op === 3) {
      const f = files.splice(rand(files.length), 1)[0];
      const to = `d${rand(4)}/moved-${round}-${i}`;
      Deno.mkdirSync(join(dir, to, ".."), { recursive: true });
      Deno.renameSync(join(dir, f), join(dir, to));
    } else {
      // Same size, new content, new mtime: a rebuild.
      const f = files[rand(files.length)];
      const size = Deno.statSync(join(dir, f)).size;
      Deno.writeFileSync(join(dir, f), randomBytes(size, rand(1 << 30)));
    }
  }
}

async function soak(name: string, seed: number, killing: boolean): Promise<void> {
  const dataDir = await tempDir("keep-soak-");
  const gcArgs = ["--retention-every", "1s", "--gc-grace", "0s", "--min-free", "0"];
  let server: TestServer = await startServer({ dataDir, args: gcArgs });
  const port = new URL(server.url).port;
  const url = server.url;
  const restart = async () => {
    server = await startServer({ dataDir, args: [...gcArgs, "--listen", `127.0.0.1:${port}`] });
  };
  const rand = rng(seed);
  // Policies: the server applies them every second.
  await keepOk(["policy", "set", "-s", url, "-p", "alpha", "--keep-last", "3"]);
  await keepOk([
    "policy",
    "set",
    "-s",
    url,
    "-p",
    "beta",
    "--keep-last",
    "2",
    "--keep-tag",
    "keep=yes",
  ]);
  await keepOk(["policy", "set", "-s", url, "-p", "farm", "--keep-last", "4"]);
  const clients: Client[] = [];
  for (const [project, host] of [["alpha", "a"], ["beta", "b"], ["farm", "f1"], ["farm", "f2"]]) {
    const dir = await tempDir(`keep-soak-${host}-`);
    Deno.mkdirSync(join(dir, "d0"));
    Deno.writeFileSync(join(dir, "d0/base"), randomBytes(3000, seed + host.length));
    clients.push({ project, host, dir, recorded: new Map() });
  }
  const until = Date.now() + SOAK_MS;
  let backups = 0;
  let failed = 0;
  const loop = async (c: Client, k: number) => {
    const r = rng(seed * 31 + k);
    for (let round = 0; Date.now() < until; round++) {
      mutate(c.dir, r, round);
      const snap = snapshot(c.dir);
      const tag = c.project === "beta" && r(5) === 0 ? ["--tag", "keep=yes"] : [];
      const b = await keep([
        "backup",
        "-s",
        url,
        "-p",
        c.project,
        "--host",
        c.host,
        "--settle",
        "0",
        "--json",
        ...tag,
        c.dir,
      ]);
      if (b.code === 0) {
        c.recorded.set((JSON.parse(b.stdout) as { commit: { id: string } }).commit.id, snap);
        backups++;
      } else {
        // Only while the server is down (killed): anything else is a failure.
        assert(killing, `${name}: backup of ${c.project} failed: ${b.stderr}`);
        failed++;
        await new Promise((res) => setTimeout(res, 200));
      }
    }
  };
  const pruner = async () => {
    while (Date.now() < until) {
      await new Promise((res) => setTimeout(res, 2000 + rand(3000)));
      const project = ["alpha", "beta", "farm"][rand(3)];
      const p = await keep([
        "prune",
        "-s",
        url,
        "-p",
        project,
        "--keep-last",
        String(2 + rand(3)),
        "--wait",
      ]);
      assert(p.code === 0 || killing, `${name}: prune failed: ${p.stderr}`);
    }
  };
  let kills = 0;
  const killer = async () => {
    while (killing && Date.now() < until - 3000) {
      await new Promise((res) => setTimeout(res, 1500 + rand(3500)));
      await server.stop("SIGKILL");
      kills++;
      await restart();
    }
  };
  await Promise.all([...clients.map(loop), pruner(), killer()]);
  assert(!killing || kills > 0, `${name}: the soak ended before the server was killed once`);

  // One last round by hand, then check everything.
  for (const project of ["alpha", "beta", "farm"]) {
    await keepOk(["prune", "-s", url, "-p", project, "--wait"]);
  }
  const verify = await keep(["verify", "--data", dataDir]);
  assertEquals(verify.code, 0, `${name}: verify: ${verify.stdout}${verify.stderr}`);
  let restored = 0;
  let unknown = 0;
  const needed = new Map<string, number>(); // content → size, over every kept commit
  for (const project of ["alpha", "beta", "farm"]) {
    const log = logJson<{ id: string; tags: Record<string, string> }>(
      await keepOk(["log", "-s", url, "-p", project, "-n", "1000", "--json"]),
    );
    const limit = project === "beta" ? 2 : project === "farm" ? 4 : 3;
    assert(log.length >= 1, `${project} has commits`);
    assert(
      log.filter((c) => c.tags.keep !== "yes").length <= limit,
      `${name}: ${project} keeps at most ${limit} untagged commits (${log.length})`,
    );
    for (const c of log) {
      const snap = clients.find((k) => k.project === project && k.recorded.has(c.id))?.recorded.get(
        c.id,
      );
      if (!snap) {
        // Committed while its client lost the answer (the server was killed).
        assert(killing, `${name}: ${project} commit ${c.id} was made by no client`);
        unknown++;
        continue;
      }
      const out = join(await tempDir(), "out");
      await keepOk(["restore", "-s", url, "-p", project, "-c", c.id, out]);
      assertSameTree(snapshot(out), snap, `${name}: ${project} ${c.id}`);
      Deno.removeSync(out, { recursive: true });
      restored++;
      for (const e of Object.values(snap)) {
        if (e.content) needed.set(e.content, Number(e.content.split(":")[0]));
      }
    }
  }
  // The store holds little more than what the kept commits need (random
  // content: no compression; packs may keep up to half their size dead).
  const need = [...needed.values()].reduce((a, b) => a + b, 0);
  const du = (dir: string): number => {
    let n = 0;
    for (const e of Deno.readDirSync(dir)) {
      const p = join(dir, e.name);
      n += e.isDirectory ? du(p) : Deno.statSync(p).size;
    }
    return n;
  };
  const held = du(join(dataDir, "packs")) + du(join(dataDir, "blobs"));
  console.log(
    `${name}: ${backups} backups (${failed} failed while down), ${kills} kills, ${restored} commits restored (${unknown} unknown), store ${held} bytes for ${need} needed`,
  );
  assert(restored >= 6, `${name}: enough commits checked (${restored})`);
  assert(held <= need * 2 + (2 << 20), `${name}: store ${held} bytes for ${need} needed`);
  await server.stop();
}

Deno.test("soak: backups, retention and GC at once; every kept commit restores, verify is clean", async () => {
  await soak("soak", 1234, false);
});

Deno.test("soak with kill -9: the server dies at random moments and restarts; nothing kept is lost", async () => {
  await soak("soak-kill", 4321, true);
});
