/**
 * Compression on data no one here made, end to end with default flags: object
 * files compiled now by the machine's gcc, members of its static C library
 * and its shared libraries; uploads whose members straddle tar headers (the
 * server re-encodes those bytes itself) must never leave a corrupt blob that
 * dedup would hand to another project; a damaged blob is repaired by the
 * next backup of its content.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { commitHeader, noise, rechunk, Upload } from "./craft.ts";
import {
  assertSameTree,
  json,
  keep,
  keepOk,
  snapshot,
  startServer,
  tempDir,
  token,
  writeTree,
} from "./helpers.ts";
import { rng } from "./seeded.ts";

function have(cmd: string): boolean {
  try {
    return new Deno.Command(cmd, { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/** A C translation unit of about `functions` functions, varied by `seed`. */
function cSource(seed: number, functions: number): string {
  const r = rng(seed);
  let s = "#include <stdio.h>\n#include <string.h>\n#include <stdlib.h>\n#include <math.h>\n";
  for (let i = 0; i < functions; i++) {
    const n = 1 + r(60);
    s += `struct s${seed}_${i} { int a; char b[${n}]; double c; long d[${1 + r(8)}]; };\n`;
    s += `static const char *msg${i} = "unit ${seed} function ${i}: ${"x".repeat(r(40))}";\n`;
    s += `int f${seed}_${i}(int x, const char *p) {\n  struct s${seed}_${i} v;\n`;
    s += `  memset(&v, 0, sizeof v);\n  v.a = x * ${1 + r(9999)};\n`;
    s += `  snprintf(v.b, sizeof v.b, "%s-%d", p ? p : msg${i}, x);\n`;
    s += `  v.c = sqrt((double)(x & 0xffff)) * ${r(1000)}.5;\n`;
    s += `  switch (x % ${2 + r(6)}) {\n`;
    for (let k = 0; k < 2 + r(5); k++) s += `  case ${k}: v.a += ${r(100000)}; break;\n`;
    s += `  default: v.a ^= (int)strlen(v.b);\n  }\n  return v.a + (int)v.c;\n}\n`;
  }
  return s;
}

async function run(cmd: string, args: string[], cwd: string): Promise<void> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/**
 * A build tree as a compiler leaves it: generated C sources, their objects at
 * -O0 -g, -O2 -g and -O2 -g -flto (some over 1 MiB), members of libc.a, and shared
 * libraries.
 */
async function buildTree(root: string): Promise<{ objects: number; big: number }> {
  assert(
    have("gcc") && have("ar"),
    "this test needs gcc and ar (binutils) to make real object files: apt-get install gcc",
  );
  const src = join(root, "src");
  Deno.mkdirSync(src, { recursive: true });
  const units: { name: string; flags: string[] }[] = [];
  for (let i = 0; i < 200; i++) {
    // Units 64 to 191 are skipped but for the big ones: more small objects of
    // the same kinds cost compile time (~0.2 s each) and add nothing.
    if (i >= 64 && i < 192 && i % 70 !== 0) continue;
    // Three units of ~1000 functions make objects over 1 MiB at -O0 -g (~2 s
    // each; -O2 would take ~10 s); eight are built with -flto as redis builds
    // its objects (their compressed LTO sections sit near the 10% rule); the
    // rest alternate -O0 -g and -O2 -g.
    const big = i % 70 === 0;
    const lto = i >= 192;
    const name = `u${i}.c`;
    const functions = big ? 1000 : lto ? 700 + (i - 192) * 23 : 3 + (i * 7) % 18;
    Deno.writeTextFileSync(join(src, name), cSource(i, functions));
    units.push({
      name,
      flags: lto ? ["-O2", "-g", "-flto"] : big || i % 2 === 0 ? ["-O0", "-g"] : ["-O2", "-g"],
    });
  }
  // Two compilers at a time, many units per process (a spawn per unit costs more).
  const kinds = [...new Set(units.map((u) => u.flags.join(" ")))];
  const batches: { name: string; flags: string[] }[][] = [];
  for (const k of kinds) {
    const same = units.filter((u) => u.flags.join(" ") === k);
    // The -flto units are the slow ones (~1.5 s each): half on each lane.
    const per = k.includes("-flto") ? 4 : 12;
    for (let i = 0; i < same.length; i += per) batches.push(same.slice(i, i + per));
  }
  const lanes = [0, 1].map((lane) => batches.filter((_, i) => i % 2 === lane));
  await Promise.all(lanes.map(async (lane) => {
    for (const b of lane) await run("gcc", ["-c", ...b[0].flags, ...b.map((u) => u.name)], src);
  }));
  // Members of the system's static C library, as an archive build would hold them.
  const libc = ["/usr/lib/x86_64-linux-gnu/libc.a", "/usr/lib/aarch64-linux-gnu/libc.a"]
    .find((p) => {
      try {
        return Deno.statSync(p).isFile;
      } catch {
        return false;
      }
    });
  assert(libc, "this test needs the static C library (libc.a, from libc6-dev)");
  const arDir = join(root, "ar");
  Deno.mkdirSync(arDir);
  await run("ar", ["x", libc], arDir);
  const members = [...Deno.readDirSync(arDir)].map((e) => e.name).sort();
  for (const [i, m] of members.entries()) if (i % 8 !== 0) Deno.removeSync(join(arDir, m));
  // Shared libraries, as an install step copies them.
  const libDir = join(root, "lib");
  Deno.mkdirSync(libDir);
  let libs = 0;
  for (const dir of ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]) {
    let names: string[] = [];
    try {
      names = [...Deno.readDirSync(dir)].filter((e) => e.isFile && /\.so\.\d/.test(e.name))
        .map((e) => e.name).sort();
    } catch {
      continue;
    }
    for (const n of names) {
      const size = Deno.statSync(join(dir, n)).size;
      if (size > 6 << 20 || libs >= 40) continue;
      Deno.copyFileSync(join(dir, n), join(libDir, n));
      libs++;
    }
  }
  assert(libs >= 10, `only ${libs} shared libraries found to copy`);
  let objects = 0;
  let big = 0;
  for (const e of Deno.readDirSync(src)) {
    if (!e.name.endsWith(".o")) continue;
    objects++;
    if (Deno.statSync(join(src, e.name)).size > 1 << 20) big++;
  }
  assertEquals(objects, units.length, "every unit compiled");
  assert(big >= 2, `only ${big} objects over 1 MiB`);
  return { objects, big };
}

Deno.test("a real build tree (gcc objects, libc.a members, shared libraries) backs up with default flags and restores byte for byte", async () => {
  await using server = await startServer();
  const tree = await tempDir();
  await buildTree(tree);
  const expected = snapshot(tree);
  const b = await keepOk(["backup", "-s", server.url, "-p", "build", "--settle", "0", tree]);
  assertMatch(b.stdout, /commit [0-9a-f]{16} \(#1\)/);
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "build", join(dest, "r")]);
  assertSameTree(snapshot(join(dest, "r")), expected);
  const v = json<{ ok: boolean; damaged: unknown[] }>(
    await keepOk(["verify", "--data", server.dataDir, "--json"]),
  );
  assertEquals([v.ok, v.damaged.length], [true, 0]);
});

/** Text with a region after it that deflates badly: the kind of file the 10% rule gives up on. */
function nearThreshold(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  const words = ["static", "int", "return", "buffer", "(void)", "{", "}", ";\n"];
  const out = noise(n, seed);
  let i = 0;
  while (i < 4000) {
    const w = words[r(words.length)] + " ";
    for (let k = 0; k < w.length && i < 4000; k++) out[i++] = w.charCodeAt(k);
  }
  return out;
}

const LICENSE = new TextEncoder().encode(
  "Permission is hereby granted, free of charge, to any person obtaining a copy of this " +
    'software and associated documentation files (the "Software"), to deal in the Software ' +
    "without restriction, including without limitation the rights to use, copy, modify, merge, " +
    "publish, distribute, sublicense, and/or sell copies of the Software.\n".repeat(8),
);

Deno.test("content the server re-encodes is checked first: a crafted upload cannot poison another project through dedup", async () => {
  await using server = await startServer({ noAuth: false });
  const admin = await token(server.dataDir, "admin", "*");
  const evil = await token(server.dataDir, "backup", "EVIL");
  // EVIL's upload: files whose members straddle the tar headers, so the server
  // encodes their data itself; first a file the 10% rule gives up on, then a
  // guessable text (a license) that other projects hold too.
  const files: [string, Uint8Array][] = [];
  for (let i = 0; i < 12; i++) {
    files.push([`a${String(i).padStart(2, "0")}.bin`, nearThreshold(40_000 + i * 9000, i + 1)]);
  }
  files.push(["zz-LICENSE", LICENSE]);
  const up = new Upload().commit(commitHeader(null));
  for (const [p, d] of files) up.file(p, d);
  const body = rechunk(up.changes([]).end().bytes(), 256 << 10);
  const res = await fetch(`${server.url}/v1/projects/EVIL/commits`, {
    method: "POST",
    headers: { authorization: `Bearer ${evil}` },
    body: new Uint8Array(body),
  });
  assertEquals(res.status, 201, await res.text());
  // VIC backs up the same text with the real client: stored content is reused.
  const vic = await tempDir();
  writeTree(vic, { "LICENSE": LICENSE, "src/main.c": "int main(void) { return 0; }\n" });
  const expected = snapshot(vic);
  const env = { KEEP_TOKEN: admin };
  await keepOk(["backup", "-s", server.url, "-p", "VIC", "--settle", "0", vic], 0, { env });
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "VIC", join(dest, "r")], 0, { env });
  assertSameTree(snapshot(join(dest, "r")), expected);
  // EVIL's own files came through whole too.
  await keepOk(["restore", "-s", server.url, "-p", "EVIL", join(dest, "e")], 0, { env });
  for (const [p, d] of files) assertEquals(Deno.readFileSync(join(dest, "e", p)), d, p);
  const v = json<{ ok: boolean }>(await keepOk(["verify", "--data", server.dataDir, "--json"]));
  assert(v.ok, "verify is clean");
});

Deno.test("a damaged blob is marked by verify and repaired by the next backup of its content", async () => {
  await using server = await startServer();
  const src = await tempDir();
  const big = noise(3 << 20, 5); // a file blob of its own (over 1 MiB)
  writeTree(src, { "big.bin": big, "small.txt": "small and sound\n" });
  await keepOk(["backup", "-s", server.url, "-p", "app", "--settle", "0", src]);
  // Damage the stored file blob on disk (bit rot, a bad disk).
  const blobs: string[] = [];
  const walk = (d: string) => {
    for (const e of Deno.readDirSync(d)) {
      if (e.isDirectory) walk(join(d, e.name));
      else blobs.push(join(d, e.name));
    }
  };
  walk(join(server.dataDir, "blobs"));
  assertEquals(blobs.length, 1);
  {
    using f = Deno.openSync(blobs[0], { read: true, write: true });
    f.seekSync(1 << 20, Deno.SeekMode.Start);
    f.writeSync(new Uint8Array(64).fill(0xaa));
  }
  const bad = await keep(["verify", "--data", server.dataDir]);
  assertEquals(bad.code, 4, bad.stdout + bad.stderr);
  assertMatch(bad.stdout, /damaged/);
  assertMatch(bad.stdout, /app:big\.bin/);
  // The next backup of the unchanged tree sends that file again, and the store is whole.
  const b = json<{ changed: number; commit: { stats: { newBlobs: number } } }>(
    await keepOk(["backup", "-s", server.url, "-p", "app", "--settle", "0", "--json", src]),
  );
  assertEquals(b.commit.stats.newBlobs, 1, JSON.stringify(b));
  const v = json<{ ok: boolean }>(await keepOk(["verify", "--data", server.dataDir, "--json"]));
  assert(v.ok, "verify is clean after the repair");
  const dest = await tempDir();
  await keepOk(["restore", "-s", server.url, "-p", "app", "--commit", "#1", join(dest, "r")]);
  assertEquals(Deno.readFileSync(join(dest, "r", "big.bin")), big);
});
