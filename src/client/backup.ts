/**
 * One backup, end to end on the client: scan → fetch the parent manifest →
 * diff → hash suspects → settle → pack and upload. A 409 (another backup
 * landed first) re-runs fetch, diff and upload against the new head, reusing
 * the scan. Nothing unreadable or unsettled ever becomes a deletion: paths
 * the parent had are kept (flagged) and reported.
 *
 * @module
 */

import { createHash } from "node:crypto";
import {
  type CheckMode,
  type DiffPlan,
  diffTree,
  type ManifestBatch,
  type Suspect,
} from "./diff.ts";
import { KeepError } from "../errors.ts";
import { lstatNs, networkFilesystem, TreeFile } from "../platform/fs_native.ts";
import { collectNow } from "../platform/memory.ts";
import {
  type ChangeRecord,
  type CommitInfo,
  type Entry,
  HAVE_CHUNKS_MAX,
  UPLOAD_CHUNKS_MAX,
  type UploadHeader,
} from "../format/manifest.ts";
import { type CompressMode, type PackStats, packUpload, type Partial } from "./upload.ts";
import { CDC_SIZES, CHUNKED_FILE_MIN, type ChunkRef } from "../format/fastcdc.ts";
import { partialHashOfFile } from "../format/partial_hash.ts";
import { Proof } from "../format/possession.ts";
import { isIncomplete, type Problem, reasonOf } from "./problem.ts";
import { type ScanEntry, type ScanResult, type ScanTable, scanTree } from "./scan.ts";
import { settleFiles } from "./settle.ts";
import { readAsScanned } from "./read_stable.ts";
import { cutFiles } from "./chunk_pool.ts";

/** What the backup needs from the server. */
export interface BackupRemote {
  /**
   * The head commit and its manifest: batches of NDJSON lines, in path order.
   * With `stat`, the server may leave out the files' hashes (and says so).
   */
  latest(
    stat?: boolean,
  ): Promise<{ commit: CommitInfo | null; stat?: boolean; lines: AsyncIterable<ManifestBatch> }>;
  /** The whole entries of `paths` in commit `commit` (paths it lacks are left out). */
  entries?(commit: string, paths: string[]): Promise<Entry[]>;
  /**
   * Which of these contents (SHA-256 hex) the store holds, each with the key
   * its proof of possession is made with (format/possession.ts).
   */
  negotiate?(hashes: string[], options?: { own?: boolean }): Promise<Negotiation>;
  /** Sends an upload; resolves to the new commit, rejects with KeepError (conflict on 409). */
  upload(body: ReadableStream<Uint8Array>): Promise<CommitInfo>;
}

/** A negotiation's answer for one content the store holds. */
export interface Negotiated {
  nonce: string;
  key: Uint8Array;
}

/** What a negotiation found out. */
export interface Negotiation {
  /** The asked contents the store holds. */
  have: Map<string, Negotiated>;
  /** Asked with `own`: those that are chunks of files the project has (no proof needed). */
  own: Set<string>;
  /** A key (with its nonce) for proofs of this upload. */
  key: Negotiated;
  /** Files over this size are kept in chunks by the store (null: whole). */
  chunkOver: number | null;
}

/**
 * Files from this size up are hashed and negotiated before the upload: the
 * hash costs ~0.7 ms per MB here, sending costs the client's deflate and the
 * wire (~7–10 ms per MB). Smaller files are negotiated only when a probe of
 * NEGOTIATE_PROBE of them finds most of them in the store (a copied or
 * renamed tree): on a first backup of new small files the probe is all it
 * costs (docs/DESIGN.md, "Negotiate before push"). Big files likewise, with
 * their own probe (NEGOTIATE_BIG_BYTES).
 */
export const NEGOTIATE_MIN = 64 << 10;
export const NEGOTIATE_PROBE = 64;
/**
 * Big files are all hashed when they are at most this many bytes together,
 * else when one of the NEGOTIATE_BIG_PROBE smallest is in the store: a first
 * backup of new artifacts pays only for hashing those (measured: hashing all
 * of the bench's 1.29 GB took ~0.9 s of client CPU on a 7–9 s backup).
 */
export const NEGOTIATE_BIG_BYTES = 64 << 20;
export const NEGOTIATE_BIG_PROBE = 2;

export interface BackupOptions {
  /** Ask the server which contents it holds before sending them (default true). */
  negotiate?: boolean;
  message?: string;
  tags?: Record<string, string>;
  host?: string;
  exclude?: string[];
  include?: string[];
  excludeCaches?: boolean;
  /** Scan parallelism (see scanTree). */
  jobs?: number;
  /**
   * Content check of files whose size and mtime match. `auto` (default):
   * none where ctime can be trusted to catch a rewrite that put the mtime
   * back, `partial` where it cannot (see ctimeDistrust).
   */
  check?: CheckMode | "auto";
  /** Compare ctime (default true). */
  ctime?: boolean;
  /** Settle window, ms (default 2000; 0 = off). */
  settleMs?: number;
  /** Longest wait for files to settle, ms (default 5 windows). */
  settleMaxMs?: number;
  sync?: boolean;
  compress?: CompressMode;
  /** Attempts when another backup lands first (default 5). */
  attempts?: number;
  signal?: AbortSignal;
  onProblem?: (p: Problem) => void;
  /** Progress: phase name, a short detail, and what the phase has to do when known. */
  onPhase?: (phase: string, detail: string, total?: { entries: number; bytes: number }) => void;
  onProgress?: (stats: PackStats) => void;
}

export interface BackupResult {
  commit: CommitInfo;
  /** Entries the scan found (after rules). */
  scanned: number;
  added: number;
  changed: number;
  deleted: number;
  unchanged: number;
  /** Files whose metadata alone was recorded (content identical). */
  metadata: number;
  /** Suspect files hashed locally. */
  hashed: number;
  /** Files the server had: recorded with a proof of possession, not sent; and their bytes. */
  proven: number;
  provenBytes: number;
  problems: Problem[];
  /** Problems that make the backup incomplete. */
  incomplete: number;
  bytesRead: number;
  wireBytes: number;
  settleMs: number;
  attempts: number;
  seconds: number;
  /** The content check used, and why `auto` chose it (null when ctime was trusted or a mode was asked for). */
  check: CheckMode;
  checkReason: string | null;
}

/** Filesystems whose ctime need not move when content does (FUSE: sshfs, …; SMB/CIFS; 9p). */
const CTIME_UNTRUSTED_FS = new Set(["fuse", "smb", "smb2", "cifs", "9p"]);

/**
 * Why the tree's ctime cannot be trusted to catch a same-size rewrite whose
 * mtime was put back (touch -d, cp -p, tar -x), or null when it can: the
 * filesystem is one whose ctime may be synthesized (sshfs reports mtime as
 * ctime), or every file's ctime equals its mtime while mtimes are whole
 * seconds (a filesystem without a ctime of its own; on ext4 or XFS a build's
 * files also have ctime = mtime, but to the ns).
 */
export function ctimeDistrust(
  scan: { filesystem: string | null; files: number; ctimeIsMtime: number; granularity: bigint },
  useCtime = true,
): string | null {
  if (!useCtime) return "--ignore-ctime";
  if (scan.filesystem && CTIME_UNTRUSTED_FS.has(scan.filesystem)) {
    return `ctime on a ${scan.filesystem} mount need not follow content changes`;
  }
  if (
    scan.files > 0 && scan.ctimeIsMtime === scan.files && scan.granularity >= 1_000_000_000n
  ) {
    return "every file's ctime equals its mtime, in whole seconds";
  }
  return null;
}

/** Mount points inside the tree on filesystems whose ctime cannot be trusted. */
export function distrustedMounts(
  scan: { mounts: { path: string; filesystem: string | null }[] },
): string[] {
  return scan.mounts.filter((m) => m.filesystem !== null && CTIME_UNTRUSTED_FS.has(m.filesystem))
    .map((m) => m.path);
}

function sha256File(path: string): { hash: string; moved: boolean } {
  const before = lstatNs(path);
  const f = TreeFile.open(path);
  const h = createHash("sha256");
  try {
    const buf = new Uint8Array(1 << 20);
    for (;;) {
      const n = f.readSync(buf);
      if (n === null || n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    f.close();
  }
  const after = lstatNs(path);
  return {
    hash: h.digest("hex"),
    moved: before.size !== after.size || before.mtime !== after.mtime ||
      before.ctime !== after.ctime,
  };
}

/**
 * Backs up `root` through `remote`.
 *
 * @example
 * ```ts
 * const result = await runBackup("/nas/build/app", remote, { message: "nightly" });
 * console.log(result.commit.id);
 * ```
 */
export function runBackup(
  root: string,
  remote: BackupRemote,
  options: BackupOptions = {},
): Promise<BackupResult> {
  return new Backup(root, remote, options).run();
}

/** What one attempt (diff, settle, upload against one head) produced. */
interface Attempt {
  commit: CommitInfo;
  hashed: number;
  proven: { files: number; bytes: number };
  stats: PackStats;
}

/**
 * One backup: the scan is made once; each attempt diffs it against the
 * current head, settles what it sends and uploads. A 409 (another backup
 * landed first) starts another attempt.
 */
class Backup {
  readonly #root: string;
  readonly #remote: BackupRemote;
  readonly #options: BackupOptions;
  readonly #started = performance.now();
  readonly #problems: Problem[] = [];
  /** The content check asked for (`auto` decides after the scan). */
  readonly #requested: CheckMode | "auto";
  #early: Promise<Prefetched> | null = null;
  #settleTook = 0;
  /**
   * Paths seen settled by earlier attempts; a set is built only when a retry
   * needs it (100k paths in a Map cost ~3 MB on every first backup).
   */
  #settledBefore: string[][] = [];
  /** Mount points below which files get the partial check (see distrustedMounts). */
  #partialBelow: string[] = [];

  constructor(root: string, remote: BackupRemote, options: BackupOptions) {
    this.#root = root;
    this.#remote = remote;
    this.#options = options;
    this.#requested = options.check ?? "auto";
  }

  #report(p: Problem): void {
    this.#problems.push(p);
    this.#options.onProblem?.(p);
  }

  #phase(phase: string, detail: string, total?: { entries: number; bytes: number }): void {
    this.#options.onPhase?.(phase, detail, total);
  }

  /** The head's manifest, read ahead (see PREFETCH_BYTES). */
  #ask(stat: boolean): Promise<Prefetched> {
    const p = this.#remote.latest(stat).then((l) => ({
      commit: l.commit,
      stat: l.stat ?? false,
      lines: prefetch(l.lines, PREFETCH_BYTES),
    }));
    p.catch(() => {}); // awaited later; a failure surfaces there
    return p;
  }

  #dropEarly(): void {
    this.#early?.then((l) => l.lines.cancel()).catch(() => {});
    this.#early = null;
  }

  async run(): Promise<BackupResult> {
    const o = this.#options;
    this.#phase("scan", this.#root);
    // The parent manifest is requested before the walk: on a NAS, where the
    // walk waits on the network, it downloads meanwhile (up to PREFETCH_BYTES).
    // Without a content check, the diff needs no hashes: the stat form of the
    // manifest (a fifth of the bytes), then the hashes of the suspects alone.
    // `auto` on a filesystem known to fake ctime will check: the whole form.
    const fsDistrust = this.#requested === "auto" &&
      ctimeDistrust(
          { filesystem: networkFilesystem(this.#root), files: 0, ctimeIsMtime: 0, granularity: 1n },
          o.ctime ?? true,
        ) !== null;
    const wantStat = (this.#requested === "none" || (this.#requested === "auto" && !fsDistrust)) &&
      this.#remote.entries !== undefined;
    this.#early = this.#ask(wantStat);
    let scan: ScanResult;
    try {
      scan = await scanTree(this.#root, {
        jobs: o.jobs,
        exclude: o.exclude,
        include: o.include,
        excludeCaches: o.excludeCaches,
        onProblem: (p) => this.#report(p),
      });
    } catch (err) {
      this.#dropEarly();
      throw err;
    }
    const checkReason = this.#requested === "auto" ? ctimeDistrust(scan, o.ctime ?? true) : null;
    const check: CheckMode = this.#requested === "auto"
      ? (checkReason ? "partial" : "none")
      : this.#requested;
    // Mounts inside the tree whose ctime cannot be trusted (an sshfs mount in
    // a local tree): their files get the partial check, the rest does not.
    this.#partialBelow = this.#requested === "auto" && check === "none"
      ? distrustedMounts(scan)
      : [];
    const stat = check === "none" && this.#remote.entries !== undefined;
    if (!stat && wantStat) {
      // The walk showed ctime cannot be trusted: the hashes are needed after all.
      this.#dropEarly();
      this.#early = this.#ask(false);
    }
    const maxAttempts = o.attempts ?? 5;
    for (let attempt = 1;; attempt++) {
      let done: Attempt;
      try {
        done = await this.#attempt(scan, check, stat, attempt < maxAttempts);
      } catch (err) {
        if (err instanceof KeepError && err.code === "conflict" && attempt < maxAttempts) {
          // The server says why: another backup landed first, or content
          // it counted on is gone or damaged (sent again this time).
          this.#phase("retry", `${err.message}; diffing again (attempt ${attempt + 1})`);
          continue;
        }
        throw err;
      }
      const commit = done.commit;
      return {
        commit,
        scanned: scan.entries.length,
        added: commit.counts.added,
        changed: commit.counts.changed,
        deleted: commit.counts.deleted,
        unchanged: commit.counts.unchanged,
        metadata: commit.counts.metadata,
        hashed: done.hashed,
        proven: done.proven.files,
        provenBytes: done.proven.bytes,
        problems: this.#problems,
        incomplete: this.#problems.filter(isIncomplete).length,
        bytesRead: done.stats.bytesRead,
        wireBytes: done.stats.wireBytes,
        settleMs: this.#settleTook,
        attempts: attempt,
        seconds: Math.round(performance.now() - this.#started) / 1000,
        check: this.#partialBelow.length ? "partial" : check,
        checkReason: checkReason ??
          (this.#partialBelow.length
            ? `ctime on the mounts at ${
              this.#partialBelow.join(", ")
            } need not follow content changes (files below them)`
            : null),
      };
    }
  }

  /**
   * Diffs the scan against the head, settles and uploads. The problems of an
   * attempt are reported only when its commit landed (a retry finds its own).
   */
  async #attempt(
    scan: ScanResult,
    check: CheckMode,
    stat: boolean,
    mayRetry: boolean,
  ): Promise<Attempt> {
    const o = this.#options;
    const problems: Problem[] = [];
    const note = (p: Problem) => problems.push(p);
    this.#phase("fetch", this.#early ? "reading the latest manifest" : "latest manifest");
    // A request made before a long walk may have failed (a server restart): asked again then.
    const latest = this.#early
      ? await this.#early.catch(() => this.#ask(stat))
      : await this.#ask(stat);
    this.#early = null;
    this.#phase("diff", `${scan.entries.length} scanned entries against the parent`);
    const parent = latest.commit;
    const granularity = scan.granularity;
    const settleNs = BigInt(Math.round((o.settleMs ?? 2000) * 1e6));
    const plan = await diffTree(scan.entries, latest.lines, {
      ctime: o.ctime ?? true,
      granularity,
      parentScanTime: parent ? BigInt(parent.scanTime) : undefined,
      racyMargin: granularity > settleNs ? granularity : settleNs,
      check,
      partialBelow: this.#partialBelow,
      unreadable: scan.problems.filter((p) => p.kind === "unreadable").map((p) => p.path),
    });
    const changes: ChangeRecord[] = plan.deleted.map((p) => ({ op: "del" as const, p }));
    for (const p of plan.unreadableKnown) {
      const why = scan.problems.find((q) => q.path === p)?.reason ?? "unreadable";
      changes.push({ op: "keep", p, flag: "unreadable", reason: why });
    }
    this.#phase("hash", `${plan.suspects.length} suspect files`);
    if (latest.stat && parent && plan.suspects.length) {
      await fillHashes(this.#remote, parent.id, plan.suspects);
    }
    const send = this.#resolveSuspects(plan, changes, note);
    const settledSend = await this.#settle(send, plan, changes, note, mayRetry);
    const { send: finalSend, proven, partial } = await this.#negotiate(
      settledSend,
      changes,
      plan.changedPaths,
    );
    const header: UploadHeader = {
      format: 1,
      parent: parent?.id ?? null,
      message: o.message ?? "",
      tags: o.tags ?? {},
      host: o.host ?? Deno.hostname(),
      source: this.#root,
      scanTime: scan.startedNs.toString(),
      granularity: granularity.toString(),
      bytes: sentBytes(finalSend, partial),
    };
    this.#phase("upload", `${finalSend.length} entries`, {
      entries: finalSend.length,
      bytes: header.bytes ?? 0,
    });
    // The walk's and the diff's garbage goes before the upload's buffers come.
    if (finalSend.length > 10_000) collectNow();
    const { stream, stats } = packUpload({
      root: this.#root,
      header,
      send: finalSend,
      changes,
      compress: o.compress,
      signal: o.signal,
      onProblem: note,
      inParent: (path) => plan.changedPaths.has(path),
      partial,
      onProgress: o.onProgress,
    });
    const commit = await this.#remote.upload(stream);
    for (const p of problems) this.#report(p);
    return { commit, hashed: plan.suspects.length, proven, stats };
  }

  /**
   * Asks the server which of the files to send it already holds (by SHA-256,
   * see NEGOTIATE_MIN), and records those with a proof of possession instead
   * of their bytes. A file that moved while hashed, or could not be read, is
   * left to the upload (which handles both). Big files the store keeps in
   * chunks are negotiated by chunk when their path is in the parent (an
   * earlier version likely shares most chunks) or when the store was found
   * to hold big files of this backup: the upload sends only their missing
   * chunks (see #negotiateChunks).
   */
  async #negotiate(
    send: ScanTable,
    changes: ChangeRecord[],
    changed: Set<string>,
  ): Promise<{ send: ScanTable; proven: { files: number; bytes: number }; partial: Partial }> {
    const none = { send, proven: { files: 0, bytes: 0 }, partial: new Map() };
    const remote = this.#remote;
    if (!remote.negotiate || this.#options.negotiate === false) return none;
    let answer: Negotiation | null = null;
    const ask = async (hashes: string[]) => answer = await remote.negotiate!(hashes);
    // Changed files past the chunking threshold go by chunk (if the store chunks).
    const byChunk = new Set<number>();
    for (let k = 0; k < send.length; k++) {
      if (send.type(k) === "f" && send.size(k) > CHUNKED_FILE_MIN && changed.has(send.path(k))) {
        byChunk.add(k);
      }
    }
    let chunkOver: number | null = null;
    if (byChunk.size) {
      chunkOver = (await ask([])).chunkOver;
      for (const k of byChunk) if (!byChunkSize(send.size(k), chunkOver)) byChunk.delete(k);
    }
    const big: number[] = [];
    const small: number[] = [];
    for (let k = 0; k < send.length; k++) {
      if (send.type(k) !== "f" || send.size(k) === 0 || byChunk.has(k)) continue;
      (send.size(k) >= NEGOTIATE_MIN ? big : small).push(k);
    }
    const hashes = new Map<number, string>();
    const hashAll = (rows: number[]) => {
      for (const k of rows) {
        if (hashes.has(k)) continue;
        const h = createHash("sha256");
        if (readStable(this.#root, send, k, (b) => h.update(b))) hashes.set(k, h.digest("hex"));
      }
    };
    // A class of files is hashed whole only when it pays: all of it when it
    // is cheap to hash, else when a probe of it finds the store has some.
    const probeFinds = async (probe: number[]) => {
      hashAll(probe);
      const asked = probe.filter((k) => hashes.has(k));
      if (!asked.length) return 0;
      const had = await ask(asked.map((k) => hashes.get(k)!));
      return asked.filter((k) => had.have.has(hashes.get(k)!)).length;
    };
    let bigWanted = true;
    let bigFound = false;
    let bigBytes = 0;
    for (const k of big) bigBytes += send.size(k);
    if (big.length > NEGOTIATE_BIG_PROBE && bigBytes > NEGOTIATE_BIG_BYTES) {
      // The smallest big files are the probe: on a first backup of new
      // artifacts they are all it costs.
      const probe = [...big].sort((a, b) => send.size(a) - send.size(b))
        .slice(0, NEGOTIATE_BIG_PROBE);
      this.#phase("negotiate", `probing ${probe.length} of ${big.length} big files`);
      bigWanted = bigFound = await probeFinds(probe) > 0;
    }
    let smallWanted = true;
    if (small.length > NEGOTIATE_PROBE) {
      // A probe spread over the small files: worth hashing them all only when
      // the store has most of them.
      const step = small.length / NEGOTIATE_PROBE;
      const probe = Array.from({ length: NEGOTIATE_PROBE }, (_, i) => small[Math.floor(i * step)]);
      this.#phase("negotiate", `probing ${probe.length} of ${small.length} small files`);
      smallWanted = await probeFinds(probe) * 2 >= NEGOTIATE_PROBE;
    }
    const candidates = [...(bigWanted ? big : []), ...(smallWanted ? small : [])]
      .sort((a, b) => a - b);
    const proven = new Set<number>();
    let bytes = 0;
    if (candidates.length) {
      this.#phase("negotiate", `hashing ${candidates.length} files`);
      hashAll(candidates);
    }
    const hashed = candidates.filter((k) => hashes.has(k));
    if (hashed.length) {
      const had = await ask(hashed.map((k) => hashes.get(k)!));
      for (const k of hashed) {
        const hash = hashes.get(k)!;
        const n = had.have.get(hash);
        if (!n) continue;
        if (send.size(k) > CHUNKED_FILE_MIN) bigFound = true;
        const proof = new Proof(n.key);
        if (!readStable(this.#root, send, k, (b) => proof.update(b))) continue;
        changes.push({
          op: "have",
          e: { ...send.get(k), hash },
          n: n.nonce,
          proof: proof.digest(),
        });
        proven.add(k);
        bytes += send.size(k);
      }
    }
    // The store holds big files of this backup (a copied tree, an artifact
    // built again): the other big files may share chunks with them too.
    if (bigFound) {
      chunkOver ??= (answer ?? await ask([])).chunkOver;
      for (const k of big) {
        if (!proven.has(k) && byChunkSize(send.size(k), chunkOver)) byChunk.add(k);
      }
    }
    const partial = byChunk.size
      ? await this.#negotiateChunks(send, [...byChunk], (answer ?? await ask([])).key)
      : new Map();
    for (const p of partial.values()) bytes += p.heldBytes;
    if (!proven.size && !partial.size) return none;
    return {
      send: proven.size ? send.filter((k) => !proven.has(k)) : send,
      proven: { files: proven.size + partial.size, bytes },
      partial,
    };
  }

  /**
   * Reads each of `rows`' files once, cutting it into chunks as the upload of
   * a big file does (FastCDC) and hashing each chunk, then asks which of the
   * chunks the store holds. The upload sends only the others and names the
   * file in a `have` record (client/upload.ts); the server hashes the file
   * from its chunks. Chunks of files the project has need no proof; a file
   * that names others (a copy of another project's) is read again for a
   * proof of possession. Files that share no chunk, moved, or could not be
   * read are sent as usual.
   */
  async #negotiateChunks(send: ScanTable, rows: number[], key: Negotiated): Promise<Partial> {
    const out: Partial = new Map();
    const cut = new Map<number, ChunkRef[]>();
    const all = new Set<string>();
    let total = 0;
    for (const k of rows) total += send.size(k);
    this.#phase("negotiate", `cutting ${rows.length} big files into chunks (${total} bytes)`);
    const lists = await cutFiles(rows.map((k) => ({
      abs: `${this.#root}/${send.path(k)}`,
      size: send.size(k),
      mtime: send.mtime(k),
      ctime: send.ctime(k),
    })));
    rows.forEach((k, i) => {
      const chunks = lists[i];
      // Unreadable or moved, or more chunks than a `have` record may list
      // (a file of ~125 GB): sent whole.
      if (!chunks || chunks.length > HAVE_CHUNKS_MAX) return;
      cut.set(k, chunks);
      for (const c of chunks) all.add(c.hash);
    });
    if (!all.size) return out;
    const had = await this.#remote.negotiate!([...all], { own: true });
    // The records of one upload list at most UPLOAD_CHUNKS_MAX chunks (~1M,
    // ~1 TB of big files at ~1 MiB a chunk): past it, files are sent whole.
    let listed = 0;
    for (const [k, chunks] of cut) {
      const held = new Set<string>();
      let heldBytes = 0;
      let foreign = false;
      for (const c of chunks) {
        if (had.have.has(c.hash) && !held.has(c.hash)) {
          held.add(c.hash);
          heldBytes += c.size;
          if (!had.own.has(c.hash)) foreign = true;
        }
      }
      if (!held.size || listed + chunks.length > UPLOAD_CHUNKS_MAX) continue;
      listed += chunks.length;
      let proof: { nonce: string; proof: string } | null = null;
      if (foreign) {
        const p = new Proof(key.key);
        if (!readStable(this.#root, send, k, (b) => p.update(b))) continue;
        proof = { nonce: key.nonce, proof: p.digest() };
      }
      out.set(send.path(k), { chunks, held, heldBytes, proof });
    }
    return out;
  }

  /**
   * Suspects are hashed locally: unchanged, metadata only, or sent whole.
   * Returns what to send, in path order.
   */
  #resolveSuspects(
    plan: DiffPlan,
    changes: ChangeRecord[],
    note: (p: Problem) => void,
  ): ScanTable {
    const extraSend: ScanEntry[] = [];
    for (const s of plan.suspects) {
      const decision = resolveSuspect(this.#root, s);
      if (decision.kind === "unchanged") plan.unchanged++;
      else if (decision.kind === "meta") {
        changes.push({ op: "meta", e: { ...s.entry, hash: s.prev.hash, xxh: s.prev.xxh } });
      } else if (decision.kind === "send") {
        extraSend.push(s.entry);
        plan.changed++;
      } else {
        note({ path: s.entry.path, reason: decision.reason, kind: "unreadable" });
        changes.push({ op: "keep", p: s.entry.path, flag: "unreadable", reason: decision.reason });
      }
    }
    // Suspects whose content differs join the sent entries, in path order.
    for (const e of extraSend) plan.changedPaths.add(e.path);
    return extraSend.length ? plan.send.mergedWith(extraSend) : plan.send;
  }

  /**
   * Waits for the files to send to settle (only those an earlier attempt did
   * not see settled); those that never do keep their last version.
   */
  async #settle(
    send: ScanTable,
    plan: DiffPlan,
    changes: ChangeRecord[],
    note: (p: Problem) => void,
    mayRetry: boolean,
  ): Promise<ScanTable> {
    const o = this.#options;
    const settleMs = o.settleMs ?? 2000;
    const done = this.#settledBefore.length ? new Set(this.#settledBefore.flat()) : null;
    const candidates: number[] = [];
    if (settleMs > 0) {
      for (let k = 0; k < send.length; k++) {
        if (send.type(k) === "f" && !done?.has(send.path(k))) candidates.push(k);
      }
    }
    if (candidates.length) this.#phase("settle", `${candidates.length} files`);
    const settled = await settleFiles(this.#root, send, candidates, {
      windowMs: settleMs,
      maxWaitMs: o.settleMaxMs,
      sync: o.sync,
      signal: o.signal,
      onWait: (n) => this.#phase("settle", `waiting for ${n} files still being written`),
    });
    this.#settleTook += settled.waitedMs;
    if (mayRetry) {
      this.#settledBefore = [...this.#settledBefore, settled.settled.map((k) => send.path(k))];
    }
    const unsettledRows = new Set(settled.unsettled.map((u) => u.index));
    for (const u of settled.unsettled) {
      note({ path: u.path, reason: u.reason, kind: "unsettled" });
      if (plan.changedPaths.has(u.path)) {
        changes.push({ op: "keep", p: u.path, flag: "unsettled", reason: u.reason });
      }
    }
    return unsettledRows.size ? send.filter((k) => !unsettledRows.has(k)) : send;
  }
}

/**
 * Gives suspects from a stat-form manifest their previous hashes, asked of
 * the server. A suspect the answer lacks keeps none, and is sent whole.
 */
async function fillHashes(remote: BackupRemote, commit: string, suspects: Suspect[]) {
  const files = suspects.filter((s) => s.prev.type === "f" && s.prev.hash === undefined);
  if (!remote.entries) return;
  // A batch at a time: after a chmod -R every file is a suspect, and the
  // answers are applied and dropped as they come.
  for (let i = 0; i < files.length; i += HASH_BATCH) {
    const batch = files.slice(i, i + HASH_BATCH);
    let found: Entry[];
    try {
      found = await remote.entries(commit, batch.map((s) => s.prev.path));
    } catch (err) {
      // The head moved on (a backup token may read only the head's entries) or
      // the commit was pruned: the suspects are sent whole (the server still
      // lands the upload on the new head as the tree scanned here).
      if (err instanceof KeepError && (err.code === "forbidden" || err.code === "not_found")) {
        return;
      }
      throw err;
    }
    const byPath = new Map(found.map((e) => [e.path, e]));
    for (const s of batch) {
      const e = byPath.get(s.prev.path);
      // Only the hashes are taken: the rest of the line came with the manifest.
      if (e && e.type === "f" && e.size === s.prev.size && e.mtime === s.prev.mtime) {
        s.prev.hash = e.hash;
        s.prev.xxh = e.xxh;
      }
    }
  }
}

/** Suspects whose previous hashes are asked for in one request. */
const HASH_BATCH = 5_000;

interface Prefetched {
  commit: CommitInfo | null;
  stat: boolean;
  lines: AsyncIterable<ManifestBatch> & { cancel(): Promise<void> };
}

/**
 * Manifest text read ahead while the scan runs (~4 MB, ~20,000 lines): on a
 * NAS, where the walk waits on the network, the start of the download
 * overlaps it; more would hold memory for little (the rest of a 100k-line
 * manifest takes tens of ms on a LAN).
 */
const PREFETCH_BYTES = 4 << 20;

/** A batch's size in bytes (decoded lines: ~200 bytes each). */
function weight(batch: ManifestBatch): number {
  return batch instanceof Uint8Array ? batch.length : batch.length * 200;
}

/**
 * Reads batches of `src` ahead of the consumer, in the background, until
 * `max` bytes wait. `cancel()` stops reading and releases the source.
 */
function prefetch(
  src: AsyncIterable<ManifestBatch>,
  max: number,
): AsyncIterable<ManifestBatch> & { cancel(): Promise<void> } {
  type T = ManifestBatch;
  const it = src[Symbol.asyncIterator]();
  const queue: T[] = [];
  let waiting = 0;
  let done = false;
  let failed: { error: unknown } | null = null;
  let cancelled = false;
  let wakeConsumer = null as (() => void) | null;
  let wakePump = null as (() => void) | null;
  const pump = (async () => {
    try {
      while (!cancelled) {
        if (waiting >= max) {
          await new Promise<void>((r) => wakePump = r);
          continue;
        }
        const r = await it.next();
        if (r.done) break;
        queue.push(r.value);
        waiting += weight(r.value);
        wakeConsumer?.();
      }
    } catch (error) {
      failed = { error };
    } finally {
      done = true;
      wakeConsumer?.();
    }
  })();
  const cancel = async () => {
    cancelled = true;
    wakePump?.();
    await pump;
    await it.return?.();
  };
  return {
    cancel,
    async *[Symbol.asyncIterator](): AsyncGenerator<T> {
      try {
        for (;;) {
          const batch = queue.shift();
          if (batch) {
            waiting -= weight(batch);
            wakePump?.();
            wakePump = null;
            yield batch;
            continue;
          }
          if (done) {
            if (failed) throw (failed as { error: unknown }).error;
            return;
          }
          await new Promise<void>((r) => wakeConsumer = r);
          wakeConsumer = null;
        }
      } finally {
        if (!done) await cancel();
      }
    },
  };
}

type Decision =
  | { kind: "unchanged" }
  | { kind: "meta" }
  | { kind: "send" }
  | { kind: "unreadable"; reason: string };

function resolveSuspect(root: string, s: Suspect): Decision {
  const abs = `${root}/${s.entry.path}`;
  const metaSame = s.entry.mode === s.prev.mode && s.entry.ctime === s.prev.ctime &&
    s.entry.mtime === s.prev.mtime &&
    !s.prev.flag;
  try {
    if (s.reason === "partial" && s.prev.xxh) {
      const f = TreeFile.open(abs);
      let x: string;
      try {
        x = partialHashOfFile(f, s.entry.size);
      } finally {
        f.close();
      }
      return x === s.prev.xxh ? { kind: "unchanged" } : { kind: "send" };
    }
    if (!s.prev.hash) return { kind: "send" };
    const { hash, moved } = sha256File(abs);
    if (moved || hash !== s.prev.hash) return { kind: "send" };
    return metaSame ? { kind: "unchanged" } : { kind: "meta" };
  } catch (err) {
    return { kind: "unreadable", reason: reasonOf(err) };
  }
}

/**
 * Reads row `k`'s file whole into `sink`; false when it is unreadable or not
 * as scanned (size, mtime, ctime) before or after the read.
 */
function readStable(
  root: string,
  t: ScanTable,
  k: number,
  sink: (bytes: Uint8Array) => void,
): boolean {
  return readAsScanned(`${root}/${t.path(k)}`, t.size(k), t.mtime(k), t.ctime(k), sink);
}

/**
 * Whether a file of `size` goes by chunks to a store that chunks files over
 * `chunkOver` (null: none): over that and the chunking threshold, and not
 * past what one `have` record can list even at the max chunk size (whole).
 */
function byChunkSize(size: number, chunkOver: number | null): boolean {
  return chunkOver !== null && size > Math.max(chunkOver, CHUNKED_FILE_MIN) &&
    size <= HAVE_CHUNKS_MAX * CDC_SIZES.max;
}

/**
 * Raw bytes of the files in `t` (what the server checks a quota against): of
 * a file sent in part, only the chunks the store lacks.
 */
function sentBytes(t: ScanTable, partial: Partial): number {
  let n = 0;
  for (let i = 0; i < t.length; i++) {
    if (t.type(i) !== "f") continue;
    const part = partial.get(t.path(i));
    if (!part) n += t.size(i);
    else for (const c of part.chunks) if (!part.held.has(c.hash)) n += c.size;
  }
  return n;
}
