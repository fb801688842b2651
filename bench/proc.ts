/**
 * Memory and CPU of a running process from /proc, for the server (which
 * lives across many steps, so /usr/bin/time cannot measure it per step).
 *
 * Deno 2.9 lets only --allow-all read or write /proc, and `deno task bench`
 * runs with named permissions, so /proc is reached through small
 * subprocesses: `cat` at the step's edges, and for time series a bash loop
 * of builtins only (no process per sample to disturb the 2-core box).
 *
 * @module
 */

/** One memory sample: milliseconds since the watch began, resident KiB. */
export interface RssSample {
  ms: number;
  rssKib: number;
}

/** What a process used between begin() and end(). */
export interface ProcUsage {
  /** Peak resident set in KiB during the step. */
  peakKib: number;
  /** "hwm": exact, VmHWM after a reset; "sampled": max of VmRSS samples (may miss short peaks). */
  method: "hwm" | "sampled";
  /** CPU (user + system) seconds spent during the step. */
  cpuSeconds: number;
  /** The VmRSS samples, when requested (to show memory stays flat over a long upload). */
  samples: RssSample[];
}

const CLK_TCK = 100; // Linux USER_HZ; /proc/<pid>/stat counts in these ticks on every common build
const decoder = new TextDecoder();

// Prints "EPOCHREALTIME VmRSS-KiB" every $2 seconds while pid $1 lives. Builtins only:
// `read -t` on a pipe we also hold open for writing never gets data, so it is a sleep.
const SAMPLER = `
pid=$1; every=$2
exec 3<> <(:)
while [ -e /proc/$pid ]; do
  while read -r key value _; do
    if [ "$key" = VmRSS: ]; then echo "$EPOCHREALTIME $value"; break; fi
  done < /proc/$pid/status 2>/dev/null
  read -t "$every" -u 3 _
done`;

/** Reads /proc files through `cat` (see the module note on permissions). */
export async function readProc(...paths: string[]): Promise<string | null> {
  const out = await new Deno.Command("cat", {
    args: paths,
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  return out.code === 0 ? decoder.decode(out.stdout) : null;
}

/**
 * Watches one pid over a step.
 *
 * VmHWM is the peak since the process started, so for a long-running server
 * it would report the worst step so far. Writing 5 to /proc/<pid>/clear_refs
 * resets it to the current RSS (Linux ≥ 4.0, same user): then VmHWM after the
 * step is that step's exact peak. If the reset is refused, the watch falls
 * back to the maximum of VmRSS samples taken every `intervalMs`.
 *
 * @example
 * ```ts
 * const w = new ProcWatch(server.pid);
 * await w.begin();
 * await runStep();
 * const { peakKib, cpuSeconds } = await w.end();
 * ```
 */
export class ProcWatch {
  readonly pid: number;
  readonly intervalMs: number;
  #cpu0 = 0;
  #hwmReset = false;
  #sampler: { child: Deno.ChildProcess; done: Promise<RssSample[]> } | null = null;

  constructor(pid: number, intervalMs = 50) {
    this.pid = pid;
    this.intervalMs = intervalMs;
  }

  /** VmRSS and VmHWM (KiB) and CPU seconds so far, or null when the process is gone. */
  async snapshot(): Promise<{ rssKib: number; hwmKib: number; cpuSeconds: number } | null> {
    const text = await readProc(`/proc/${this.pid}/status`, `/proc/${this.pid}/stat`);
    if (text === null) return null;
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(text)?.[1]);
    // stat is the last line; the command name (field 2) may hold spaces, so split after ")".
    const stat = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return {
      rssKib: field("VmRSS"),
      hwmKib: field("VmHWM"),
      cpuSeconds: (Number(stat[11]) + Number(stat[12])) / CLK_TCK, // fields 14 utime, 15 stime
    };
  }

  /**
   * Starts a step: resets the peak and notes the CPU so far. Samples VmRSS
   * over time when `timeline` is set, or when the peak cannot be reset.
   */
  async begin(timeline = false): Promise<void> {
    const reset = await new Deno.Command("sh", {
      args: ["-c", 'echo 5 > "/proc/$1/clear_refs"', "sh", String(this.pid)],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    this.#hwmReset = reset.code === 0;
    this.#cpu0 = (await this.snapshot())?.cpuSeconds ?? NaN;
    this.#sampler = timeline || !this.#hwmReset ? this.#startSampler() : null;
  }

  /** Ends the step and returns its peak memory and CPU. */
  async end(): Promise<ProcUsage> {
    const snap = await this.snapshot();
    let samples: RssSample[] = [];
    if (this.#sampler) {
      try {
        this.#sampler.child.kill("SIGTERM");
      } catch { /* ended with the process */ }
      samples = await this.#sampler.done;
      this.#sampler = null;
    }
    const sampledMax = Math.max(0, snap?.rssKib ?? 0, ...samples.map((s) => s.rssKib));
    const exact = this.#hwmReset && snap !== null;
    return {
      peakKib: exact ? Math.max(snap.hwmKib, sampledMax) : sampledMax,
      method: exact ? "hwm" : "sampled",
      cpuSeconds: (snap?.cpuSeconds ?? NaN) - this.#cpu0,
      samples,
    };
  }

  #startSampler(): { child: Deno.ChildProcess; done: Promise<RssSample[]> } {
    const child = new Deno.Command("bash", {
      args: ["-c", SAMPLER, "sampler", String(this.pid), (this.intervalMs / 1000).toFixed(3)],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const done = (async () => {
      const text = decoder.decode((await child.output()).stdout);
      const rows = text.split("\n").filter(Boolean).map((l) => l.split(" ").map(Number));
      const t0 = rows.length ? rows[0][0] : 0;
      return rows.map(([t, kib]) => ({ ms: (t - t0) * 1000, rssKib: kib }));
    })();
    return { child, done };
  }
}
