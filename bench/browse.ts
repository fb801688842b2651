/**
 * The browsing figures of `deno task bench` (run inside the retention step,
 * on its project of 100,000 files × 1,000 commits, before the prune): `find`,
 * `history`, `diff` of the first and last commit and of two neighbours, and
 * directory listings, each as the server answers it over HTTP on loopback
 * (median of 5: what a user waits for minus the CLI's start-up) and once as
 * the real CLI's wall time.
 *
 * @module
 */

import { runTimed } from "./measure.ts";

export interface BrowseFigures {
  /** Median ms of each HTTP call. */
  findOneMs: number;
  findDirMs: number;
  historyMs: number;
  /** Every page of the diff of #1 and the newest commit. */
  diffWholeMs: number;
  diffItems: number;
  /** Every page of the diff of two older commits (a tenth and nine tenths in; neither the head). */
  diffOldMs: number;
  diffOldItems: number;
  diffAdjacentMs: number;
  /** Two neighbours in the middle of the history (neither the head). */
  diffOldAdjacentMs: number;
  rootHeadMs: number;
  rootFirstMs: number;
  dirMs: number;
  historyVersions: number;
  /** The CLI, once each (wall seconds, start-up included). */
  cli: { find: number; history: number; diff: number };
}

async function median(n: number, f: () => Promise<unknown>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await f();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(n / 2)];
}

/** Measures against a running server (no tokens) whose project `project` has `commits` commits. */
export async function benchBrowse(
  url: string,
  keepBin: string,
  project: string,
  commits: number,
  files: number,
): Promise<BrowseFigures> {
  const get = async (path: string) => {
    const res = await fetch(`${url}/v1/projects/${project}/${path}`);
    if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
    return await res.json();
  };
  const dirs = Math.ceil(files / 100);
  const some = 4242 % files;
  const somePath = `d${String(some % dirs).padStart(4, "0")}/f${some}.o`;
  // Every page of a diff, as `keep diff` reads it; returns the number of items.
  const wholeDiff = async (from: number, to: number) => {
    let items = 0;
    let after = "";
    for (;;) {
      const page = await get(
        `diff?from=%23${from}&to=%23${to}&limit=10000&after=${encodeURIComponent(after)}`,
      );
      items += page.items.length;
      if (!page.next) return items;
      after = page.next;
    }
  };
  let diffItems = 0;
  let diffOldItems = 0;
  const tenth = Math.max(1, Math.round(commits / 10));
  const mid = Math.max(1, Math.floor(commits / 2));
  let versions = 0;
  const figures: Omit<BrowseFigures, "cli"> = {
    findOneMs: await median(5, () => get(`find?pattern=f${some}.o`)),
    findDirMs: await median(5, () => get(`find?pattern=d0042/*`)),
    historyMs: await median(5, async () => {
      versions = (await get(`history?path=${encodeURIComponent(somePath)}`)).versions.length;
    }),
    diffWholeMs: await median(3, async () => diffItems = await wholeDiff(1, commits)),
    diffItems: 0,
    diffOldMs: await median(3, async () => {
      diffOldItems = await wholeDiff(tenth, commits - tenth);
    }),
    diffOldItems: 0,
    diffAdjacentMs: await median(5, () => get(`diff?from=%23${commits - 1}&to=%23${commits}`)),
    diffOldAdjacentMs: await median(5, () => get(`diff?from=%23${mid}&to=%23${mid + 1}`)),
    rootHeadMs: await median(5, () => get(`tree?commit=latest`)),
    rootFirstMs: await median(5, () => get(`tree?commit=%231`)),
    dirMs: await median(5, () => get(`tree?commit=latest&path=d0042`)),
    historyVersions: 0,
  };
  figures.diffItems = diffItems;
  figures.diffOldItems = diffOldItems;
  figures.historyVersions = versions;
  const cli = async (args: string[]) => {
    const t = await runTimed(keepBin, [args[0], "-s", url, "-p", project, ...args.slice(1)], {
      capture: true,
    });
    if (t.code !== 0) throw new Error(`keep ${args.join(" ")} exited ${t.code}`);
    return t.seconds;
  };
  return {
    ...figures,
    cli: {
      find: await cli(["find", `f${some}.o`]),
      history: await cli(["history", somePath]),
      diff: await cli(["diff", "#1", `#${commits}`]),
    },
  };
}
