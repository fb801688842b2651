/**
 * Retention and garbage collection, in bounded steps a running server
 * interleaves with its requests: no step holds the index for long, none
 * waits for uploads to end, and an upload never waits for a step.
 *
 * A round goes through these phases, each a batch at a time:
 *
 * 1. retention: each project with a policy (retention.ts) forgets the
 *    commits the policy does not keep (IndexStore.forgetCommits never takes
 *    the head, nor the parent an upload in flight builds on);
 * 2. history: versions no remaining commit uses are removed, in the projects
 *    that lost commits;
 * 3. mark: every blob row no version refers to is marked with the time
 *    (and a marked row that is referred to again is unmarked);
 * 4. sweep: rows marked before the cutoff, and still unreferenced, go; the
 *    objects of large ones are deleted; a chunked file's list goes with its
 *    row, and the chunks no other list holds are marked (a later round's);
 * 5. evacuate: a sealed pack whose live bytes are at most half its size has
 *    its live blobs copied (checked, made durable) to a new pack, the rows
 *    moved, and is then marked dead;
 * 6. delete: dead packs older than the grace are deleted;
 * 7. strays: large objects no row names (a crash between writing one and
 *    recording it), older than the cutoff, are deleted.
 *
 * The cutoff is the earlier of now minus the grace and the start of the
 * oldest upload in flight. Why no upload can lose content:
 *
 * - an upload counts on content it does not send only through
 *   IndexStore.knownBlobs, which unmarks a marked row first; marked again
 *   later, the row is marked after the upload began, so no sweep takes it
 *   before the upload ends (and its commit then refers to it);
 * - a large object is never written under a name that existed: each write
 *   is a new generation (blob_store.ts), so a delete cannot hit a new copy;
 * - pack rows only move to bytes already durable, guarded by where they
 *   were; a pack is deleted only after the grace, so a reader that looked
 *   its place up just before the move still finds the bytes;
 * - an upload whose content went anyway (it would be a bug here) is
 *   refused at commit with a conflict, and the client backs up again.
 *
 * The grace also covers readers: a restore of a commit being forgotten has
 * that long to read its blobs.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { KeepError } from "../errors.ts";
import type { GcFigures, Policy, PruneResult } from "../format/api.ts";
import { decodeMember, MemberSplitter } from "../format/gzip_member.ts";
import { bytesToHex } from "../format/hex.ts";
import type { CommitInfo } from "../format/manifest.ts";
import { concatBytes } from "../platform/concat_bytes.ts";
import { checkPolicy, type Decision, hasRules, planRetention } from "./retention.ts";
import type { LargeObject, PackSink } from "./storage/blob_store.ts";
import type { BlobRow, IndexStore } from "./storage/index_store.ts";
import { closeAndSeal, type Storage } from "./storage/open.ts";

/** Rows per index call by default: each call is one short transaction. */
const BATCH = 2000;
/** Blobs copied per evacuation call. */
const COPY_BATCH = 200;
/** ...where each copy is a pack of its own (BlobStore.flushEndsPack). */
const COPY_BATCH_ONCE = 4000;
/** How often the mark phase looks at every blob, not only the candidates. */
const FULL_MARK_EVERY_MS = 24 * 3600_000;

export type Phase =
  | "idle"
  | "retention"
  | "history"
  | "mark"
  | "sweep"
  | "evacuate"
  | "delete"
  | "strays";

export interface CollectorOptions {
  /** How long unreferenced rows and emptied packs wait before they go (ms). */
  graceMs: number;
  /** A round works in slices of about this long (ms)... */
  sliceMs?: number;
  /** ...with this pause between them, so requests go on (ms). */
  pauseMs?: number;
  /** Rows per index call (default 2000). */
  batch?: number;
  /**
   * Rows per index call while uploads are in flight (default: batch). A
   * bigger batch rewrites fewer index pages per row, but holds the index's
   * write lock longer: uploads would wait for it.
   */
  busyBatch?: number;
  /**
   * While uploads are in flight, pause this many times as long as each
   * slice worked (default 0): backups get the disk and the CPU first, and GC
   * still moves on under a build farm's constant load.
   */
  busyPause?: number;
  /** Besides uploads in flight, what else makes the server busy (requests at work). */
  busy?: () => boolean;
  /**
   * Called after rows moved or went and before bytes are deleted: readers
   * elsewhere (another thread's connection) must know places changed.
   */
  beforeDelete?: () => Promise<void>;
  /** Called when a round enters a phase (and when it ends: "idle"). */
  onPhase?: (phase: Phase, figures: GcFigures | null) => void;
  now?: () => number;
  log?: (line: string) => void;
  /**
   * Where several servers share one index: the lease a round must hold
   * (PgIndex.lease). A round waits for it (another server's round runs),
   * renews it at each step, and stops when it lost it.
   */
  lease?: { acquire(): Promise<boolean>; release(): Promise<void> };
}

/** Commits of a project, all of them, newest first. */
async function allCommits(storage: Storage, project: string): Promise<CommitInfo[]> {
  const out: CommitInfo[] = [];
  let before: number | undefined;
  for (;;) {
    const page = await storage.index.listCommits(project, 1000, before);
    out.push(...page);
    if (page.length < 1000) return out;
    before = page[page.length - 1].seq;
  }
}

/**
 * True when a scheduled round has something to do: a policy to apply, work
 * the index records as left (gcBacklog), or the daily full mark is due. A
 * store without policies or pruning never starts the collector's thread.
 */
export async function roundWanted(index: IndexStore, now = Date.now()): Promise<boolean> {
  if ((await index.listPolicies()).some((p) => hasRules(p.policy))) return true;
  const b = await index.gcBacklog();
  if (b.projects.length > 0 || b.deadPacks > 0 || b.marked > 0) return true;
  return now - (await index.meta("gc_full_mark") ?? 0) > FULL_MARK_EVERY_MS;
}

/**
 * Applies `policy` to `project`: forgets the commits it does not keep
 * (unless `dryRun`). Returns every commit's verdict, newest first.
 */
export async function applyPolicy(
  storage: Storage,
  project: string,
  policy: Policy,
  dryRun = false,
): Promise<{ decisions: Decision[]; forgotten: number }> {
  checkPolicy(policy);
  const decisions = planRetention(await allCommits(storage, project), policy);
  if (dryRun || !hasRules(policy)) return { decisions, forgotten: 0 };
  const remove = decisions.filter((d) => !d.keep).map((d) => d.commit.seq);
  const forgotten = remove.length
    ? await storage.index.forgetCommits(project, remove, Date.now())
    : 0;
  if (forgotten) {
    // A store-wide counter (any process: serve's rounds, keep prune --data): /metrics shows it.
    const index = storage.index;
    await index.setMeta(
      "commits_forgotten",
      (await index.meta("commits_forgotten") ?? 0) + forgotten,
    );
  }
  return { decisions, forgotten };
}

/** What the server and keep prune need of a collector (here, or in a worker: gc_thread.ts). */
export interface Rounds {
  /** Starts a round (or another after the running one); resolves when it ended. */
  start(): Promise<void>;
  markDirty(project: string): void;
  readonly running: boolean;
  readonly phase: Phase;
  readonly figures: GcFigures | null;
  close(): Promise<void>;
}

/**
 * Runs rounds of retention and GC, a slice at a time, by itself once
 * started.
 *
 * @example
 * ```ts
 * const gc = new Collector(storage, { graceMs: 3600_000 });
 * await gc.start(); // a whole round
 * console.log(gc.figures);
 * ```
 */
export class Collector implements Rounds {
  #storage: Storage;
  #graceMs: number;
  #sliceMs: number;
  #pauseMs: number;
  #batch: number;
  #idleBatch: number;
  #busyBatch: number;
  #busyPause: number;
  #busy = false;
  #busyHint: () => boolean;
  #beforeDelete: () => Promise<void>;
  #onPhase: (phase: Phase, figures: GcFigures | null) => void;
  #now: () => number;
  #log: (line: string) => void;
  #phase: Phase = "idle";
  #round: GcFigures | null = null;
  #last: GcFigures | null = null;
  /** Projects whose history may hold versions no commit uses (all of them at first). */
  #dirty: Set<string> | null = null;
  #queue: string[] = [];
  /** The phase has read what it works through (policies, packs). */
  #loaded = false;
  #project: string | null = null;
  #cursor: { path: string; first: number } | null = null;
  #afterId = 0;
  #cutoff = 0;
  /** This round's mark is a pass over every blob (see the mark phase). */
  #full = false;
  #packs: number[] = [];
  #skip = new Set<number>();
  #sink: PackSink | null = null;
  #strays: AsyncIterator<LargeObject> | null = null;
  /** Resolved when the running round ends. */
  #waiters: (() => void)[] = [];
  /** Resolved when a round that starts after the running one ends. */
  #later: (() => void)[] = [];
  #driving = false;
  #closed = false;
  #error: unknown = null;
  #lease: CollectorOptions["lease"] | null;
  #leased = false;

  constructor(storage: Storage, options: CollectorOptions) {
    this.#storage = storage;
    this.#graceMs = options.graceMs;
    this.#sliceMs = options.sliceMs ?? 20;
    this.#pauseMs = options.pauseMs ?? 5;
    this.#idleBatch = options.batch ?? BATCH;
    this.#busyBatch = options.busyBatch ?? this.#idleBatch;
    this.#busyPause = options.busyPause ?? 0;
    this.#busyHint = options.busy ?? (() => false);
    this.#batch = this.#idleBatch;
    this.#beforeDelete = options.beforeDelete ?? (() => Promise.resolve());
    this.#onPhase = options.onPhase ?? (() => {});
    this.#now = options.now ?? Date.now;
    this.#log = options.log ?? (() => {});
    this.#lease = options.lease ?? null;
  }

  /** The phase the current round is in ("idle" between rounds). */
  get phase(): Phase {
    return this.#phase;
  }

  /** The round running, else the last one finished (null before the first). */
  get figures(): GcFigures | null {
    return this.#round ?? this.#last;
  }

  /** A project lost commits outside a round (keep prune): its history is cleaned next round. */
  markDirty(project: string): void {
    this.#dirty?.add(project);
  }

  /**
   * Starts a round (when one is running: another after it) and drives it in
   * slices; resolves when the round that began at or after this call ends.
   * Rejects when a step failed (the round is then abandoned).
   */
  start(): Promise<void> {
    if (this.#closed) return Promise.reject(new KeepError("unavailable", "Cannot collect: closed"));
    const done = new Promise<void>((resolve, reject) => {
      const settle = () => this.#error ? reject(this.#error) : resolve();
      (this.#phase === "idle" ? this.#waiters : this.#later).push(settle);
    });
    if (this.#phase === "idle") this.#begin();
    if (!this.#driving) void this.#drive();
    return done;
  }

  async #drive(): Promise<void> {
    this.#driving = true;
    try {
      while (!this.#closed && this.#phase !== "idle") {
        const t = performance.now();
        try {
          await this.step(this.#sliceMs);
        } catch (err) {
          this.#log(`gc: round stopped: ${(err as Error).message}`);
          this.#error = err;
          await this.#closeSink().catch(() => {});
          this.#strays = null;
          await this.#end();
          this.#error = null;
        }
        const pause = this.#busy
          ? Math.max(this.#pauseMs, (performance.now() - t) * this.#busyPause)
          : this.#pauseMs;
        if (this.running) await new Promise((r) => setTimeout(r, pause));
      }
    } finally {
      this.#driving = false;
    }
  }

  #begin(): void {
    {
      this.#round = {
        started: this.#now(),
        finished: null,
        commitsForgotten: 0,
        versionsRemoved: 0,
        blobsMarked: 0,
        blobsSwept: 0,
        sweptBytes: 0,
        packsEvacuated: 0,
        bytesCopied: 0,
        packsDeleted: 0,
        bytesDeleted: 0,
        straysDeleted: 0,
        damaged: 0,
        phaseMs: {},
        longestStepMs: 0,
      };
      this.#next("retention");
    }
  }

  /** True while a round is running. */
  get running(): boolean {
    return this.#phase !== "idle";
  }

  /**
   * Works for about `budgetMs` (at least one batch); resolves to true while
   * the round has more to do.
   */
  async step(budgetMs: number): Promise<boolean> {
    const until = performance.now() + budgetMs;
    do {
      if (this.#phase === "idle") return false;
      const phase = this.#phase;
      const r = this.#round!;
      const t = performance.now();
      await this.#unit();
      const ms = performance.now() - t;
      r.phaseMs[phase] = (r.phaseMs[phase] ?? 0) + ms;
      if (ms > r.longestStepMs) r.longestStepMs = Math.round(ms * 10) / 10;
    } while (performance.now() < until);
    return this.running;
  }

  /** Stops mid-round, leaving everything consistent (the next round starts over). */
  async close(): Promise<void> {
    this.#closed = true;
    while (this.#driving) await new Promise((r) => setTimeout(r, 5));
    await this.#closeSink();
    await this.#strays?.return?.();
    this.#strays = null;
    if (this.#phase !== "idle") {
      this.#error = new KeepError(
        "unavailable",
        "Cannot finish the GC round: the server is stopping",
      );
      await this.#end();
    }
    await this.#releaseLease();
  }

  async #releaseLease(): Promise<void> {
    if (!this.#leased) return;
    this.#leased = false;
    await this.#lease?.release().catch(() => {}); // it expires anyway
  }

  // One bounded piece of the current phase.
  async #unit(): Promise<void> {
    const { index, blobs } = this.#storage;
    const r = this.#round!;
    if (this.#lease) {
      if (!await this.#lease.acquire()) {
        if (this.#leased) {
          this.#leased = false;
          throw new KeepError(
            "unavailable",
            "Cannot go on with the GC round: another server took over its lease",
          );
        }
        // Another server's round runs: this one starts after it.
        await new Promise((resolve) => setTimeout(resolve, 250));
        return;
      }
      this.#leased = true;
    }
    if (this.#busyBatch !== this.#idleBatch || this.#busyPause > 0) {
      this.#busy = this.#busyHint() || await index.oldestUploadStart() !== null;
      this.#batch = this.#busy ? this.#busyBatch : this.#idleBatch;
    }
    switch (this.#phase) {
      case "retention": {
        if (!this.#loaded) {
          this.#queue = (await index.listPolicies()).map((p) => p.project);
          if (this.#dirty === null || this.#lease) {
            // A new collector (a restart, a worker per round), or one of
            // several servers (another forgot commits): the projects whose
            // forgotten commits still wait for their history's cleaning.
            this.#dirty = new Set([...this.#dirty ?? [], ...(await index.gcBacklog()).projects]);
          }
          this.#loaded = true;
        }
        const project = this.#queue.shift();
        if (project === undefined) return this.#next("history");
        const policy = await index.getPolicy(project);
        if (!policy || !hasRules(policy)) return;
        const { forgotten } = await applyPolicy(this.#storage, project, policy);
        if (forgotten) {
          r.commitsForgotten += forgotten;
          this.#dirty!.add(project);
          this.#log(`retention: ${project}: forgot ${forgotten} commits`);
        }
        return;
      }
      case "history": {
        if (!this.#loaded) {
          // Commits forgotten within the grace keep their versions (a restore
          // may be reading them); their projects stay dirty for a later round.
          this.#queue = [...this.#dirty!];
          this.#dirty!.clear();
          this.#cutoff = this.#now() - this.#graceMs + 1;
          this.#loaded = true;
        }
        if (this.#project === null) {
          const next = this.#queue.shift();
          if (next === undefined) return this.#next("mark");
          this.#project = next;
          this.#cursor = null;
        }
        const { next, removed, marked } = await index.cleanHistory(
          this.#project,
          this.#cursor,
          this.#batch,
          this.#cutoff,
          this.#now(),
        );
        r.versionsRemoved += removed;
        r.blobsMarked += marked;
        this.#cursor = next;
        if (!next) {
          const { waiting } = await index.purgeForgotten(this.#project, this.#cutoff);
          if (waiting > 0) this.#dirty!.add(this.#project);
          this.#project = null;
        }
        return;
      }
      case "mark": {
        if (!this.#loaded) {
          // The blobs whose versions went were marked with them (history); a
          // pass over every blob, daily, finds the others (failed uploads').
          const last = await index.meta("gc_full_mark") ?? 0;
          this.#full = this.#now() - last > FULL_MARK_EVERY_MS;
          this.#loaded = true;
        }
        if (this.#full) {
          const { lastId, marked } = await index.gcMark(this.#afterId, this.#batch, this.#now());
          r.blobsMarked += marked;
          if (lastId !== null) {
            this.#afterId = lastId;
            return;
          }
          await index.setMeta("gc_full_mark", this.#now());
        }
        this.#cutoff = await this.#sweepCutoff();
        return this.#next("sweep");
      }
      case "sweep": {
        // An upload that began meanwhile moves the cutoff back (it may count on a row).
        this.#cutoff = Math.min(this.#cutoff, await this.#sweepCutoff());
        const { swept, sweptBytes, marked, large, lastId } = await index.gcSweep(
          this.#afterId,
          this.#cutoff,
          this.#batch,
          this.#now(),
        );
        r.blobsSwept += swept;
        r.blobsMarked += marked;
        r.sweptBytes += sweptBytes;
        if (large.length) await this.#beforeDelete();
        for (const row of large) {
          const hex = bytesToHex(row.hash);
          r.bytesDeleted += await blobs.largeSize(hex, row.offset) ?? 0;
          await blobs.deleteLarge(hex, row.offset);
        }
        if (lastId === null) return this.#next("evacuate");
        this.#afterId = lastId;
        return;
      }
      case "evacuate": {
        if (!this.#loaded) {
          this.#loaded = true;
          for (const p of await index.packUsage()) {
            const size = await blobs.packSize(p.pack) ?? 0;
            if (p.live <= size / 2) this.#packs.push(p.pack);
          }
        }
        const pack = this.#packs[0];
        if (pack === undefined) {
          await this.#closeSink();
          return this.#next("delete");
        }
        if (!await this.#evacuate(pack)) {
          this.#packs.shift();
          this.#skip.clear();
        }
        return;
      }
      case "delete": {
        const dead = await index.deadPacks(this.#now() - this.#graceMs + 1);
        if (dead.length && !this.#loaded) {
          await this.#beforeDelete();
          this.#loaded = true;
        }
        for (const pack of dead.slice(0, 100)) {
          r.bytesDeleted += await blobs.packSize(pack) ?? 0;
          await blobs.deletePack(pack);
          await index.forgetPack(pack);
          r.packsDeleted++;
        }
        if (dead.length <= 100) return this.#next("strays");
        return;
      }
      case "strays": {
        this.#strays ??= blobs.listLarge()[Symbol.asyncIterator]();
        const cutoff = await this.#sweepCutoff();
        for (let i = 0; i < 500; i++) {
          const o = await this.#strays.next();
          if (o.done) {
            this.#strays = null;
            return await this.#end();
          }
          const { hash, gen, modified } = o.value;
          if (!hash) continue; // not a blob's name: verify reports it
          const place = await index.blobPlace(hash);
          if (place && place.pack === null && place.offset === gen) continue;
          if (modified >= cutoff - 1000) continue;
          r.bytesDeleted += await blobs.largeSize(hash, gen) ?? 0;
          await blobs.deleteLarge(hash, gen);
          r.straysDeleted++;
        }
        return;
      }
    }
  }

  /** Copies a batch of a pack's live blobs out; false once the pack is empty (marked dead). */
  async #evacuate(pack: number): Promise<boolean> {
    const { index, blobs } = this.#storage;
    const r = this.#round!;
    // Where a flush ends the pack (object stores), one copy is one pack: make it big.
    const batch = blobs.flushEndsPack ? COPY_BATCH_ONCE : COPY_BATCH;
    const rows = (await index.blobsInPack(pack, batch + this.#skip.size))
      .filter((row) => !this.#skip.has(row.id));
    if (rows.length === 0) {
      if (this.#skip.size === 0) {
        await index.markPackDead(pack, this.#now());
        r.packsEvacuated++;
      }
      return false;
    }
    this.#sink ??= blobs.openPack(await index.newPack());
    const moves: { row: BlobRow; pack: number; offset: number }[] = [];
    for (const row of rows.slice(0, batch)) {
      const hex = bytesToHex(row.hash);
      let stored: Uint8Array;
      try {
        const parts: Uint8Array[] = [];
        for await (const piece of await blobs.pieces(hex, row)) parts.push(piece.slice());
        stored = concatBytes(parts);
      } catch (err) {
        // Unreadable (pack short or gone): left where it is, the pack stays.
        this.#skip.add(row.id);
        if (await index.markDamaged(row.hash, (err as Error).message)) {
          r.damaged++;
          this.#log(`gc: blob ${hex} cannot be read (${(err as Error).message}): marked damaged`);
        }
        continue;
      }
      // Copied as they are either way; damaged bytes are marked, not hidden.
      const problem = contentProblem(stored, row);
      if (problem && await index.markDamaged(row.hash, problem)) {
        r.damaged++;
        this.#log(
          `gc: blob ${hex} is damaged (${problem}): marked; the next backup of that content repairs it`,
        );
      }
      moves.push({ row, pack: this.#sink.pack, offset: this.#sink.add(stored) });
      r.bytesCopied += stored.length;
    }
    await this.#sink.flush();
    await index.relocateBlobs(moves);
    if (this.#sink.size >= 64 << 20 || blobs.flushEndsPack) await this.#closeSink();
    return true;
  }

  /**
   * Rows marked (objects written) before this may go: at least the grace
   * ago (inclusive), and strictly before the oldest upload in flight began
   * (it may count on what was marked at that very millisecond).
   */
  async #sweepCutoff(): Promise<number> {
    const oldest = await this.#storage.index.oldestUploadStart();
    return Math.min(this.#now() - this.#graceMs + 1, oldest ?? Infinity);
  }

  async #closeSink(): Promise<void> {
    const sink = this.#sink;
    this.#sink = null;
    if (sink) await closeAndSeal(this.#storage, sink);
  }

  #next(phase: Phase): void {
    this.#phase = phase;
    this.#onPhase(phase, this.#round);
    this.#loaded = false;
    this.#project = null;
    this.#cursor = null;
    this.#afterId = 0;
    this.#packs = [];
    this.#skip.clear();
  }

  async #end(): Promise<void> {
    const r = this.#round!;
    r.finished = this.#now();
    this.#last = r;
    this.#round = null;
    this.#phase = "idle";
    this.#onPhase("idle", r);
    const index = this.#storage.index;
    await this.#releaseLease();
    if (!this.#error) {
      await index.setMeta("gc_last_run", r.finished);
      await index.setMeta("gc_runs", (await index.meta("gc_runs") ?? 0) + 1);
      await index.setMeta("gc_last_freed", r.bytesDeleted - r.bytesCopied);
      await index.setMeta(
        "gc_bytes_freed",
        (await index.meta("gc_bytes_freed") ?? 0) + r.bytesDeleted - r.bytesCopied,
      );
    }
    for (const w of this.#waiters.splice(0)) w();
    // Rounds asked for while this one ran.
    if (this.#later.length && !this.#closed) {
      this.#waiters = this.#later.splice(0);
      this.#begin();
    }
  }
}

/** Why stored bytes are not the content the row promises, or null. */
function contentProblem(stored: Uint8Array, row: BlobRow): string | null {
  try {
    const split = new MemberSplitter();
    const hash = createHash("sha256");
    let size = 0;
    split.push(stored);
    for (let m = split.next(); m; m = split.next()) {
      const raw = decodeMember(m);
      size += raw.length;
      hash.update(raw);
    }
    split.end();
    if (size !== row.size || hash.digest("hex") !== bytesToHex(row.hash)) {
      return `stored bytes decode to other content (${size} bytes)`;
    }
    return null;
  } catch (err) {
    return `stored bytes do not decode: ${(err as Error).message}`;
  }
}

/**
 * `keep prune`: applies a policy to one project now (or says what it
 * would do), then runs a GC round when `wait` (else the server's next
 * round frees the space).
 */
export async function pruneProject(
  storage: Storage,
  collector: Rounds | null,
  project: string,
  policy: Policy,
  options: { dryRun?: boolean; wait?: boolean } = {},
): Promise<PruneResult> {
  if (!hasRules(policy)) {
    throw new KeepError(
      "usage",
      "Cannot prune: give a rule (--keep-last, --keep-daily, ... or --keep-within, --keep-tag)",
    );
  }
  if (!await storage.index.headCommit(project)) {
    throw new KeepError("not_found", `Cannot prune: no project ${project}`);
  }
  const { decisions, forgotten } = await applyPolicy(storage, project, policy, options.dryRun);
  const result: PruneResult = {
    project,
    dryRun: !!options.dryRun,
    commitsKept: decisions.filter((d) => d.keep).length,
    commitsRemoved: options.dryRun ? decisions.filter((d) => !d.keep).length : forgotten,
    decisions: decisions.map((d) => ({
      id: d.commit.id,
      seq: d.commit.seq,
      time: d.commit.time,
      keep: d.keep,
      reasons: d.reasons,
      incomplete: d.incomplete,
    })),
    gc: null,
  };
  if (options.dryRun || !collector) return result;
  collector.markDirty(project);
  const round = collector.start();
  if (options.wait) {
    await round;
    result.gc = collector.figures;
  } else round.catch(() => {}); // logged by the collector
  return result;
}
