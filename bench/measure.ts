/**
 * Runs one command and measures it: wall time here, CPU and peak RSS from
 * GNU time (`/usr/bin/time`), which reads them from wait4() after the exit,
 * so nothing is missed between samples and every child counts.
 *
 * @module
 */

import { ProcWatch } from "./proc.ts";

/** Options for {@link runTimed}. */
export interface RunOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Keep stdout (e.g. `keep backup --json`); otherwise it goes to /dev/null. */
  capture?: boolean;
  /** Exit codes that count as success (default [0]). */
  okCodes?: number[];
}

/** One measured run. */
export interface Timed {
  /** Wall-clock seconds, spawn to exit. */
  seconds: number;
  /** CPU seconds (user + system) of the command and its children; NaN without GNU time. */
  cpuSeconds: number;
  /** Peak resident set of the largest process, KiB. */
  maxRssKib: number;
  code: number;
  stdout: string;
  stderr: string;
}

const TIME = "/usr/bin/time";
let timeAvailable: boolean | undefined;
const decoder = new TextDecoder();

/** True when GNU time is installed (checked once). */
export function hasGnuTime(): boolean {
  if (timeAvailable === undefined) {
    try {
      timeAvailable = Deno.statSync(TIME).isFile;
    } catch {
      timeAvailable = false;
    }
  }
  return timeAvailable;
}

/**
 * Runs `cmd args` to completion; throws (with the stderr tail) unless the
 * exit code is in `okCodes`.
 *
 * Without /usr/bin/time the peak RSS is sampled from /proc every 10 ms
 * (the direct child only), and CPU is reported as NaN.
 *
 * @example
 * ```ts
 * const t = await runTimed("find", [dir, "-printf", "%s %T@ %p\\n"]);
 * console.log(t.seconds, t.maxRssKib);
 * ```
 */
export async function runTimed(
  cmd: string,
  args: string[],
  options: RunOptions = {},
): Promise<Timed> {
  const gnu = hasGnuTime();
  const timeFile = gnu ? await Deno.makeTempFile({ prefix: "keep-bench-time-" }) : "";
  const argv = gnu ? ["-f", "%U %S %M", "-o", timeFile, cmd, ...args] : args;
  const started = performance.now();
  const child = new Deno.Command(gnu ? TIME : cmd, {
    args: argv,
    env: options.env,
    cwd: options.cwd,
    stdin: "null",
    stdout: options.capture ? "piped" : "null",
    stderr: "piped",
  }).spawn();
  // Without GNU time: sample the child's VmRSS (it is gone before a final read could happen).
  const watch = gnu ? null : new ProcWatch(child.pid, 10);
  await watch?.begin(true);
  const out = await child.output();
  const seconds = (performance.now() - started) / 1000;
  const usage = await watch?.end();
  let cpuSeconds = NaN;
  let maxRssKib = usage?.peakKib ?? NaN;
  if (gnu) {
    // GNU time writes "Command exited with non-zero status N" first when it fails.
    const lines = (await Deno.readTextFile(timeFile)).trim().split("\n");
    await Deno.remove(timeFile);
    const [u, s, m] = lines[lines.length - 1].split(" ").map(Number);
    cpuSeconds = u + s;
    maxRssKib = m;
  }
  const result: Timed = {
    seconds,
    cpuSeconds,
    maxRssKib,
    code: out.code,
    stdout: options.capture ? decoder.decode(out.stdout) : "",
    stderr: decoder.decode(out.stderr),
  };
  if (!(options.okCodes ?? [0]).includes(out.code)) {
    const tail = result.stderr.trim().split("\n").slice(-8).join("\n  ");
    throw new Error(`${cmd} ${args.join(" ")} exited ${out.code}:\n  ${tail}`);
  }
  return result;
}

/** Runs a command untimed (setup and cleanup: sync, rm -rf, du); returns its stdout. */
export async function run(
  cmd: string,
  args: string[],
  env?: Record<string, string>,
): Promise<string> {
  const out = await new Deno.Command(cmd, {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (out.code !== 0) {
    throw new Error(
      `${cmd} ${args.join(" ")} exited ${out.code}: ${decoder.decode(out.stderr).trim()}`,
    );
  }
  return decoder.decode(out.stdout);
}
