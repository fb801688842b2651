/**
 * restic as the reference: a local repository (no server), password from
 * RESTIC_PASSWORD, a cache directory inside the benchmark's temp dir so the
 * user's ~/.cache is neither used nor polluted.
 *
 * @module
 */

import { run, runTimed, type Timed } from "./measure.ts";

/**
 * One restic repository.
 *
 * @example
 * ```ts
 * const version = await Restic.version(); // null when restic is not installed
 * const r = new Restic("/tmp/b/restic-repo", "/tmp/b/restic-cache");
 * await r.init();
 * const t = await r.backup("/tmp/b/small");
 * ```
 */
export class Restic {
  readonly repo: string;
  readonly env: Record<string, string>;

  constructor(repo: string, cacheDir: string) {
    this.repo = repo;
    this.env = {
      RESTIC_PASSWORD: "keep-bench",
      RESTIC_REPOSITORY: repo,
      RESTIC_CACHE_DIR: cacheDir,
    };
  }

  /** `restic version` output, or null when restic is not on PATH. */
  static async version(): Promise<string | null> {
    try {
      return (await run("restic", ["version"])).trim();
    } catch {
      return null;
    }
  }

  /** Creates the repository (format 2 in restic ≥ 0.14: compression on, like Keep's). */
  async init(): Promise<void> {
    await run("restic", ["init"], this.env);
  }

  /** `restic backup DIR`: the first one reads everything; later ones use the parent snapshot. */
  backup(dir: string): Promise<Timed> {
    // --host fixed: restic picks the parent snapshot by host and paths.
    return runTimed("restic", ["backup", "--quiet", "--host", "keep-bench", dir], {
      env: this.env,
    });
  }

  /** `restic restore latest --target DEST` (writes DEST/<absolute source path>). */
  restore(dest: string): Promise<Timed> {
    return runTimed("restic", ["restore", "latest", "--quiet", "--target", dest], {
      env: this.env,
    });
  }
}
