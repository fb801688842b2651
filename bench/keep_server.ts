/**
 * A real `keep serve` on 127.0.0.1 for the benchmark: a free port, no auth,
 * its own data directory, its stderr (one line per commit) in a log file so
 * it does not interleave with the progress lines.
 *
 * @module
 */

import { ProcWatch } from "./proc.ts";

/**
 * One running server process.
 *
 * @example
 * ```ts
 * const server = await KeepServer.start("scripts/keep", "/tmp/b/keep-data", "/tmp/b/serve.log");
 * server.watch.begin();
 * // ... keep backup -s server.url ...
 * const usage = server.watch.end();
 * await server.stop();
 * ```
 */
export class KeepServer {
  readonly url: string;
  readonly pid: number;
  readonly dataDir: string;
  /** Per-step memory and CPU of the server process. */
  readonly watch: ProcWatch;
  #child: Deno.ChildProcess;
  #drained: Promise<void>;

  private constructor(
    child: Deno.ChildProcess,
    url: string,
    dataDir: string,
    drained: Promise<void>,
  ) {
    this.#child = child;
    this.url = url;
    this.pid = child.pid;
    this.dataDir = dataDir;
    this.watch = new ProcWatch(child.pid);
    this.#drained = drained;
  }

  /**
   * Starts `keepBin serve` and waits for its first stdout line
   * (`keep serve: listening on URL (data DIR)`). scripts/keep execs down to
   * the deno binary, so the child's pid is the server process itself.
   */
  static async start(
    keepBin: string,
    dataDir: string,
    logFile: string,
    extraArgs: string[] = [],
  ): Promise<KeepServer> {
    const child = new Deno.Command(keepBin, {
      args: ["serve", "--data", dataDir, "--listen", "127.0.0.1:0", "--no-auth", ...extraArgs],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const log = await Deno.open(logFile, { write: true, create: true, append: true });
    const logged = child.stderr.pipeTo(log.writable).catch(() => {});
    const reader = child.stdout.getReader();
    const decoder = new TextDecoder();
    let banner = "";
    while (!banner.includes("\n")) {
      const r = await reader.read();
      if (r.done) {
        await child.status;
        throw new Error(`keep serve did not start (see ${logFile})`);
      }
      banner += decoder.decode(r.value, { stream: true });
    }
    const url = /listening on (\S+)/.exec(banner)?.[1];
    if (!url) throw new Error(`keep serve printed an unexpected first line: ${banner.trim()}`);
    // Keep draining stdout: a full pipe would block the server on its next write.
    const drained = (async () => {
      try {
        while (!(await reader.read()).done) { /* discard */ }
      } catch { /* closed */ }
    })();
    return new KeepServer(child, url, dataDir, Promise.all([logged, drained]).then(() => {}));
  }

  /** SIGTERM (in-flight requests finish, the index is closed and checkpointed), then waits. */
  async stop(): Promise<void> {
    try {
      this.#child.kill("SIGTERM");
    } catch { /* already gone */ }
    const status = await this.#child.status;
    await this.#drained;
    if (!status.success && status.signal === null) {
      throw new Error(`keep serve exited ${status.code} on SIGTERM`);
    }
  }
}
