/**
 * `deno task demo`: the main job on the embedded defaults. Starts `keep
 * serve` on 127.0.0.1 (a free port) with the data dir ./keep-data, backs up a
 * sample build tree, changes it, backs up again, restores both commits and
 * checks they match what was backed up. Every step is the real CLI.
 */

import { join } from "node:path";
import { lstatNs } from "../src/platform/fs_native.ts";

const root = new URL("..", import.meta.url).pathname;
const keepBin = join(root, "scripts/keep");
// KEEP_DEMO_DATA: elsewhere than ./keep-data (the test of this demo uses a temp dir).
const dataDir = Deno.env.get("KEEP_DEMO_DATA") ?? join(root, "keep-data");
const work = await Deno.makeTempDir({ prefix: "keep-demo-" });
const src = join(work, "app");

function say(line: string) {
  console.log(line);
}

async function run(args: string[], env: Record<string, string> = {}, echo = true): Promise<string> {
  if (echo) say(`\n$ keep ${args.join(" ")}`);
  const out = await new Deno.Command(keepBin, { args, env, stdout: "piped", stderr: "inherit" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  if (echo) Deno.stdout.writeSync(out.stdout);
  if (out.code !== 0) throw new Error(`keep ${args[0]} exited ${out.code}`);
  return text;
}

function write(path: string, text: string | Uint8Array) {
  Deno.mkdirSync(join(src, path, ".."), { recursive: true });
  if (typeof text === "string") Deno.writeTextFileSync(join(src, path), text);
  else Deno.writeFileSync(join(src, path), text);
}

function state(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    for (
      const e of [...Deno.readDirSync(join(dir, rel))].sort((a, b) => a.name < b.name ? -1 : 1)
    ) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const st = lstatNs(join(dir, r));
      if (st.kind === "dir") {
        out.set(r, `dir ${st.mode.toString(8)}`);
        walk(r);
      } else if (st.kind === "symlink") {
        out.set(
          r,
          `link ${Deno.readLinkSync(join(dir, r))} ${st.mtime}`,
        );
      } else {
        const data = Deno.readFileSync(join(dir, r));
        let sum = 0;
        for (const b of data) sum = (sum * 31 + b) >>> 0;
        out.set(r, `file ${st.mode.toString(8)} ${st.mtime} ${data.length} ${sum}`);
      }
    }
  };
  walk("");
  return out;
}

function compare(a: Map<string, string>, b: Map<string, string>): string[] {
  const diffs: string[] = [];
  for (const k of new Set([...a.keys(), ...b.keys()])) if (a.get(k) !== b.get(k)) diffs.push(k);
  return diffs;
}

say("keep demo: a sample build tree, two backups, two restores");
for (let i = 0; i < 40; i++) {
  write(`src/mod${i % 5}/file${i}.c`, `int f${i}(void) { return ${i}; }\n`.repeat(20));
}
write("include/app.h", "#pragma once\n");
write("docs/설명서.txt", "빌드 산출물 백업 데모\n");
write("build/app.o", crypto.getRandomValues(new Uint8Array(60000)));
write("build/CACHE/CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n");
write("build/CACHE/junk.bin", "cache junk, skipped\n");
write(".backupignore", "*.tmp\n");
write("scratch.tmp", "ignored\n");
Deno.mkdirSync(join(src, "empty"), { recursive: true });
Deno.symlinkSync("build/app.o", join(src, "app.latest"));

const server = new Deno.Command(keepBin, {
  args: ["serve", "--data", dataDir, "--listen", "127.0.0.1:0", "--no-auth"],
  stdout: "piped",
  stderr: "inherit",
}).spawn();
const reader = server.stdout.getReader();
let banner = "";
while (!banner.includes("\n")) {
  const r = await reader.read();
  if (r.done) throw new Error("keep serve did not start");
  banner += new TextDecoder().decode(r.value);
}
say(banner.trim());
const url = /listening on (\S+)/.exec(banner)![1];
const env = { KEEP_SERVER: url, KEEP_PROJECT: "demo" };

let failed = false;
try {
  await run(["backup", "--settle", "0", "-m", "first build", src], env);
  const first = state(src);
  // `--json` answers one {"keep": 1, …} object (README, "JSON output").
  const firstId = JSON.parse(await run(["log", "--json", "--limit", "1"], env, false)).commits[0]
    .id as string;

  say("\n# the build changes a file, adds one, deletes one");
  write("src/mod0/file0.c", "int f0(void) { return 42; }\n");
  write("src/mod9/new.c", "int fresh;\n");
  Deno.removeSync(join(src, "src/mod1/file1.c"));
  await run(["backup", "--settle", "0", "-m", "second build", src], env);
  const second = state(src);
  await run(["log"], env);

  for (
    const [id, expected, name] of [[firstId, first, "first"], ["latest", second, "second"]] as const
  ) {
    const dest = join(work, `restore-${name}`);
    await run(["restore", "--commit", id, dest], env);
    // The cache directory's contents and *.tmp were excluded by design.
    const want = new Map(
      [...expected].filter(([k]) => k !== "build/CACHE/junk.bin" && k !== "scratch.tmp"),
    );
    const diffs = compare(state(dest), want);
    if (diffs.length) {
      failed = true;
      say(`MISMATCH in ${name} restore: ${diffs.slice(0, 10).join(", ")}`);
    } else {say(
        `ok: the ${name} commit restored identical (${want.size} paths: bytes, modes, mtimes, links)`,
      );}
  }
  await run(["verify", "--data", dataDir]);
} finally {
  server.kill("SIGTERM");
  await server.status;
  await Deno.remove(work, { recursive: true });
}
say(failed ? "\nkeep demo: FAILED" : `\nkeep demo: done (data kept in ${dataDir})`);
Deno.exit(failed ? 1 : 0);
