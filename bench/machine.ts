/**
 * The machine a result was measured on: numbers from another box (cores,
 * disk, kernel) are not comparable, so every results file names its own.
 *
 * @module
 */

import { readProc } from "./proc.ts";

/** Hardware and software a run used. */
export interface MachineInfo {
  date: string;
  nproc: number;
  memory: string;
  cpu: string;
  kernel: string;
  deno: string;
  /** Filesystem type of the benchmark's temp dir (ext4, tmpfs, overlay…). */
  filesystem: string;
  tools: Record<string, string>;
  /** /proc/loadavg's first three fields at the start and the end of the run. */
  loadStart: string;
  loadEnd: string;
}

/** The 1, 5 and 15 minute load averages ("0.12 0.30 0.25"). */
export async function loadAverage(): Promise<string> {
  return ((await readProc("/proc/loadavg")) ?? "").split(" ").slice(0, 3).join(" ");
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    // Some tools (older pigz) print their version on stderr.
    const text = new TextDecoder().decode(out.stdout.length ? out.stdout : out.stderr);
    return text.split("\n")[0].trim();
  } catch {
    return "not installed";
  }
}

/**
 * Collects {@link MachineInfo} from /proc and the tools' --version.
 *
 * @example
 * ```ts
 * const m = await machineInfo("/tmp/keep-bench-x");
 * console.log(`${m.nproc} × ${m.cpu}`);
 * ```
 */
export async function machineInfo(dir: string): Promise<MachineInfo> {
  const cpuinfo = (await readProc("/proc/cpuinfo")) ?? "";
  const meminfo = (await readProc("/proc/meminfo")) ?? "";
  const memKib = Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    nproc: Number((await firstLine("nproc", [])) || navigator.hardwareConcurrency),
    memory: `${(memKib / 1024 / 1024).toFixed(1)} GiB`,
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? "unknown",
    kernel: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    filesystem: (await firstLine("findmnt", ["-n", "-o", "FSTYPE,SOURCE", "-T", dir])).replace(
      /\s+/,
      " on ",
    ),
    loadStart: await loadAverage(),
    loadEnd: "",
    tools: {
      tar: await firstLine("tar", ["--version"]),
      pigz: await firstLine("pigz", ["--version"]),
      restic: await firstLine("restic", ["version"]),
      curl: (await firstLine("curl", ["--version"])).split(" ").slice(0, 2).join(" "),
    },
  };
}
