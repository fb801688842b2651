/**
 * The progress line of backup and restore: what a person sees in a real
 * terminal (tmux), that it redraws at most 4 times a second, and that it is
 * silent when stderr is not a terminal unless forced.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { KEEP, keep, keepOk, randomData, startServer, tempDir } from "./helpers.ts";
import { Progress } from "../src/cmd/progress.ts";

/** A TCP proxy that passes client → server bytes at about `bytesPerSec`. */
function slowProxy(port: number, bytesPerSec: number): { port: number; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  (async () => {
    for await (const client of listener) {
      conns.push(client);
      (async () => {
        const server = await Deno.connect({ hostname: "127.0.0.1", port });
        conns.push(server);
        const down = server.readable.pipeTo(client.writable).catch(() => {});
        const buf = new Uint8Array(16 * 1024);
        try {
          for (;;) {
            const n = await client.read(buf);
            if (n === null) break;
            await server.write(buf.subarray(0, n));
            await new Promise((r) => setTimeout(r, (n / bytesPerSec) * 1000));
          }
        } catch { /* closed */ }
        await down;
      })();
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

/** Carriage return, erase line: how each frame starts. */
const ERASE = "\r\x1b[K";

async function tmux(...args: string[]): Promise<string> {
  const r = await new Deno.Command("tmux", { args, stdout: "piped", stderr: "piped" }).output();
  return new TextDecoder().decode(r.stdout);
}

Deno.test("Progress redraws at most 4 times a second and shows files, bytes, rate and ETA", () => {
  let now = 0;
  const frames: string[] = [];
  const p = new Progress("keep backup", {
    force: true,
    now: () => now,
    write: (t) => frames.push(t),
    columns: () => 200,
  });
  p.phase("upload", { entries: 100, bytes: 100 << 20 });
  for (let i = 1; i <= 100; i++) {
    now = i * 20; // 100 updates in 2 s
    p.update(i, i << 20);
  }
  p.end();
  assert(p.frames <= 2 * 4 + 1, `${p.frames} frames in 2 s`);
  const draws = frames.filter((f) => f.startsWith(ERASE) && f.length > ERASE.length);
  assertEquals(draws.length, p.frames);
  assertMatch(
    draws[draws.length - 2].replace(ERASE, ""),
    /^keep backup: upload {2}\d+\/100 files {2}[\d.]+ MiB\/100\.0 MiB {2}\d+% {2}[\d.]+ MiB\/s {2}ETA \d+s$/,
  );
  assertEquals(frames.at(-1), ERASE, "the line is erased at the end");
});

Deno.test("backup and restore show progress in a terminal (tmux), none when piped unless --progress", async () => {
  await using server = await startServer();
  const src = await tempDir();
  for (let i = 0; i < 40; i++) Deno.writeFileSync(join(src, `blob${i}.bin`), randomData(1 << 20));
  const proxy = slowProxy(Number(new URL(server.url).port), 8 << 20);
  const session = `keep-progress-${Deno.pid}`;
  try {
    const url = `http://127.0.0.1:${proxy.port}`;
    const done = join(await tempDir(), "done");
    const cmd =
      `${KEEP} backup -s ${url} -p tty --settle 0 ${src}; echo "EXIT=$?" > ${done}; sleep 120`;
    await tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "20", cmd);
    const seen: string[] = [];
    const t0 = Date.now();
    let screen = "";
    while (Date.now() - t0 < 120_000) {
      screen = await tmux("capture-pane", "-p", "-t", session);
      const line = screen.split("\n").find((l) => l.startsWith("keep backup: upload"));
      if (line && !seen.includes(line)) seen.push(line);
      try {
        if (Deno.readTextFileSync(done).trim() === "EXIT=0") break;
      } catch { /* still running */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    screen = await tmux("capture-pane", "-p", "-t", session);
    assert(seen.length >= 2, `progress seen while uploading: ${JSON.stringify(seen)}`);
    assert(seen.some((l) => / ETA \d+s$/.test(l)), `an ETA mid-way: ${JSON.stringify(seen)}`);
    for (const l of seen) {
      assertMatch(
        l,
        /^keep backup: upload {2}\d+\/40 files {2}[\d.]+ (B|KiB|MiB)\/40\.0 MiB {2}\d+% {2}([\d.]+ (B|KiB|MiB)\/s( {2}ETA \d+s)?|\d+s)$/,
      );
    }
    // What stays on the screen is the result, not a progress line.
    assertMatch(screen, /keep backup: tty commit [0-9a-f]{16} \(#1\)/);
    assert(!/ETA|upload {2}\d/.test(screen), screen);
  } finally {
    await tmux("kill-session", "-t", session);
    proxy.close();
  }

  // Piped: silent by default; --progress forces it (still on stderr only).
  const dest = await tempDir();
  const quiet = await keepOk(["restore", "-s", server.url, "-p", "tty", dest]);
  assert(!quiet.stderr.includes("\r"), quiet.stderr);
  const dest2 = await tempDir();
  const t1 = performance.now();
  const loud = await keepOk(["restore", "-s", server.url, "-p", "tty", "--progress", dest2]);
  const secs = (performance.now() - t1) / 1000;
  assert(loud.stderr.includes(`${ERASE}keep restore: restore  `), loud.stderr);
  assertMatch(loud.stderr.split(ERASE)[1], /^keep restore: restore {2}\d+\/40 files/);
  const frames = loud.stderr.split(ERASE).filter((f) => f !== "").length;
  assert(frames <= Math.ceil(secs * 4) + 1, `${frames} frames in ${secs} s`);
  assert(!loud.stdout.includes("\r"), "stdout has the result only");
  const both = await keep(["restore", "--progress", "--no-progress", "-s", server.url, "x"]);
  assertEquals(both.code, 2);
});
