/**
 * `keep stats`: what the store and its projects hold, read from the index
 * (and the collector's figures).
 *
 * @module
 */

import type { ProjectStats, Stats } from "../format/api.ts";
import type { Rounds } from "./gc.ts";
import type { Storage } from "./storage/open.ts";

/** Stats of one project (`project`) or of the store and every project. */
export async function readStats(
  storage: Storage,
  collector: Rounds | null,
  project?: string,
): Promise<Stats> {
  const { index, blobs } = storage;
  const all = await index.listProjects();
  const chosen = project === undefined ? all : all.filter((p) => p.name === project);
  const projects: ProjectStats[] = [];
  for (const p of chosen) {
    const usage = await index.projectUsage(p.name);
    projects.push({
      name: p.name,
      commits: p.commits,
      latest: p.head
        ? {
          id: p.head.id,
          time: p.head.time,
          files: p.head.counts.files,
          bytes: p.head.counts.bytes,
        }
        : null,
      storedBytes: usage.storedBytes,
      exclusiveBytes: usage.exclusiveBytes,
      policy: await index.getPolicy(p.name),
    });
  }
  if (project !== undefined) return { store: null, projects };
  const counts = await index.counts();
  const logical = await index.logicalBytes();
  const lastRun = await index.meta("gc_last_run");
  return {
    store: {
      projects: all.length,
      blobs: counts.blobs,
      storedBytes: counts.storedBytes,
      logicalBytes: logical,
      dedupRatio: counts.storedBytes > 0
        ? Math.round(logical / counts.storedBytes * 100) / 100
        : null,
      freeBytes: await blobs.freeBytes(),
      pendingOrphans: await index.pendingOrphans(),
      lastRun: lastRun === null ? null : new Date(lastRun).toISOString(),
      lastFreedBytes: await index.meta("gc_last_freed"),
      running: collector?.running ? { phase: collector.phase, figures: collector.figures! } : null,
    },
    projects,
  };
}
