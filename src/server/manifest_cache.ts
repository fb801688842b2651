/**
 * The manifest on the wire: NDJSON (`{"commit": …}`, then one entry per line)
 * in Keep gzip members of whole lines, so `gunzip` reads it and the client
 * decodes it member by member, synchronously and with bounded memory.
 *
 * The head manifest is what every backup asks for; it is cached per project
 * head in `DATA/cache/` (written while it is first streamed, renamed into
 * place when complete), so a project's manifest is built once per commit.
 * Each head has two forms: the whole manifest, and the "stat" form a backup
 * diffs against, whose file lines lack the hashes (`h`, `x`): half the text,
 * a fifth of the gzip (hex hashes do not compress), and what the client
 * inflates and decodes before a no-change backup can finish. The few files
 * a backup must hash locally get their hashes with `POST …/entries`.
 *
 * @module
 */

import { join } from "node:path";
import { setImmediate } from "node:timers";
import { decodeMemberTransient, encodeMember, MemberSplitter } from "../format/gzip_member.ts";
import type { IndexStore } from "./storage/index_store.ts";
import {
  type CommitInfo,
  entriesFromLines,
  entryToJson,
  entryToStatJson,
} from "../format/manifest.ts";
import { exists } from "../platform/fs_native.ts";
import { churned, collectNow } from "../platform/memory.ts";
import { streamFrom } from "../platform/streams.ts";
import { comparePaths } from "../format/paths.ts";

const MEMBER_TARGET = 256 * 1024;
const encoder = new TextEncoder();

/** Yields the manifest of `commit` (null: a project with no commits) as gzip members. */
export async function* manifestMembers(
  index: IndexStore,
  project: string,
  commit: CommitInfo | null,
  stat = false,
): AsyncGenerator<Uint8Array> {
  // The commit line has a member of its own: the entries that follow can be
  // reused as they are by the next head's manifest (see mergedMembers).
  yield encodeMember(encoder.encode(JSON.stringify({ commit }) + "\n"), 1);
  let text = "";
  if (commit) {
    for await (const page of index.entryPages(project, commit)) {
      for (const e of page) {
        text += (stat ? entryToStatJson(e) : entryToJson(e)) + "\n";
        if (text.length >= MEMBER_TARGET) {
          yield encodeMember(encoder.encode(text), 1);
          text = "";
        }
      }
    }
  }
  if (text) yield encodeMember(encoder.encode(text), 1);
}

/** The path of a manifest line (lines start with `{"p":"…"`). */
function pathOfLine(line: string): string {
  for (let i = 6; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c === 34) return line.slice(6, i); // closing quote
    if (c === 92) break; // an escape: let JSON decode it
  }
  return (JSON.parse(line) as { p: string }).p;
}

/**
 * The manifest of `commit` built from its parent's cached manifest and the
 * paths the commit changed: the old entry lines are copied as text except
 * where a changed path replaces, adds or removes one. Much cheaper than
 * reading every row back from SQLite when few paths changed.
 */
async function* mergedMembers(
  index: IndexStore,
  project: string,
  commit: CommitInfo,
  parentFile: string,
  changed: string[],
): AsyncGenerator<Uint8Array> {
  yield encodeMember(encoder.encode(JSON.stringify({ commit }) + "\n"), 1);
  // The changed paths' lines, asked for in batches (at most 50,000 paths).
  const lines = new Map<string, string>();
  for (let i = 0; i < changed.length; i += 1000) {
    for (const e of await index.entriesAt(project, commit.seq, changed.slice(i, i + 1000))) {
      lines.set(e.path, entryToJson(e) + "\n");
    }
  }
  const lineOf = (path: string) => lines.get(path) ?? "";
  let text = "";
  let ci = 0;
  for (const lines of cachedMembers(parentFile)) {
    if (lines instanceof Uint8Array) continue; // the parent's commit line
    for (const line of lines) {
      const path = pathOfLine(line);
      while (ci < changed.length && comparePaths(changed[ci], path) < 0) {
        text += lineOf(changed[ci++]);
      }
      if (ci < changed.length && changed[ci] === path) text += lineOf(changed[ci++]);
      else text += line + "\n";
      if (text.length >= MEMBER_TARGET) {
        yield encodeMember(encoder.encode(text), 1);
        text = "";
      }
    }
  }
  while (ci < changed.length) text += lineOf(changed[ci++]);
  if (text) yield encodeMember(encoder.encode(text), 1);
}

/**
 * The manifest of a commit that changed nothing: a new commit line, then the
 * parent's entry members copied byte for byte.
 */
async function* copiedMembers(
  commit: CommitInfo,
  parentFile: string,
): AsyncGenerator<Uint8Array> {
  yield encodeMember(encoder.encode(JSON.stringify({ commit }) + "\n"), 1);
  const file = Deno.openSync(parentFile, { read: true });
  try {
    const head = new Uint8Array(24);
    let got = 0;
    while (got < head.length) {
      const n = file.readSync(head.subarray(got));
      if (!n) throw new Error("short manifest cache file");
      got += n;
    }
    // Skip the parent's commit line: its member length is in the KP field.
    const first = new DataView(head.buffer).getUint32(16, true);
    file.seekSync(first, Deno.SeekMode.Start);
    for (;;) {
      const buf = new Uint8Array(256 * 1024);
      const n = file.readSync(buf);
      if (n === null || n === 0) return;
      yield buf.subarray(0, n);
    }
  } finally {
    file.close();
  }
}

/**
 * `line` (an entry line of the whole manifest) in the stat form: without its
 * `h` and `x` fields. A path or target cannot hold `,"h":"` (its quotes are
 * escaped), so the first such text is the field; anything unexpected is
 * decoded and written again.
 */
function statLine(line: string): string {
  let i = line.indexOf(',"h":"');
  if (i >= 0) {
    if (line.charCodeAt(i + 70) !== 34) return statLineSlow(line);
    line = line.slice(0, i) + line.slice(i + 71);
  }
  i = line.indexOf(',"x":"');
  if (i >= 0) {
    if (line.charCodeAt(i + 22) !== 34) return statLineSlow(line);
    line = line.slice(0, i) + line.slice(i + 23);
  }
  return line;
}

function statLineSlow(line: string): string {
  return entryToStatJson(entriesFromLines([line])[0]);
}

/**
 * A cached manifest file read back: its first member (the commit line) as it
 * is, then each later member's entry lines. The file is opened on the first
 * item, so a generator never started holds none.
 */
function* cachedMembers(path: string): Generator<Uint8Array | string[]> {
  const file = Deno.openSync(path, { read: true });
  try {
    const split = new MemberSplitter();
    const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
    const buf = new Uint8Array(256 * 1024);
    let first = true;
    for (;;) {
      const n = file.readSync(buf);
      if (n === null || n === 0) break;
      split.push(buf.slice(0, n));
      for (let m = split.next(); m; m = split.next()) {
        if (first) {
          first = false;
          yield m.slice();
          continue;
        }
        const lines = decoder.decode(decodeMemberTransient(m)).split("\n");
        lines.pop(); // members end with a newline
        yield lines;
      }
    }
    split.end();
  } finally {
    file.close();
  }
}

/** The stat form of a whole manifest's cached file. */
async function* strippedMembers(path: string): AsyncGenerator<Uint8Array> {
  for (const lines of cachedMembers(path)) {
    if (lines instanceof Uint8Array) {
      yield lines; // the commit line, as it is
      continue;
    }
    let text = "";
    for (const line of lines) text += statLine(line) + "\n";
    yield encodeMember(encoder.encode(text), 1);
  }
}

/**
 * Head manifests cached as files.
 *
 * @example
 * ```ts
 * const cache = new ManifestCache("/srv/keep/cache");
 * return new Response(cache.stream(index, "app", head));
 * ```
 */
export class ManifestCache {
  readonly dir: string;
  #seq = 0;
  /** Builds in progress, by cache path (a stat form's build includes its whole form's). */
  #building = new Map<string, Promise<void>>();

  /**
   * The cache is derived data and its files are not fsync'd: it starts empty
   * on every server start, so a file cut short by a crash is never served.
   */
  constructor(dir: string) {
    this.dir = dir;
    this.clear();
    Deno.mkdirSync(dir, { recursive: true });
  }

  /** Removes every cached file (at start, and at a clean shutdown: it is only a cache). */
  clear(): void {
    try {
      Deno.removeSync(this.dir, { recursive: true });
    } catch { /* not there */ }
  }

  #damageEpoch = -1;

  /**
   * Drops every cached manifest when blobs were marked damaged or repaired
   * since the last call (by this process or another: the epoch is in the
   * index), since that changes entries' flags without a commit.
   */
  async revalidate(index: IndexStore): Promise<void> {
    const epoch = await index.damageEpoch();
    if (epoch === this.#damageEpoch) return;
    if (this.#damageEpoch !== -1) {
      this.clear();
      Deno.mkdirSync(this.dir, { recursive: true });
    }
    this.#damageEpoch = epoch;
  }

  /** Files of a commit's manifest start with `project~id.` ("~" is in no project id). */
  #stem(project: string, commitId: string): string {
    return `${project}~${commitId}.`;
  }

  #path(project: string, commitId: string, stat = false): string {
    return join(this.dir, `${this.#stem(project, commitId)}${stat ? "stat." : ""}ndjson.gz`);
  }

  /**
   * Builds the cache files for a new head in the background (the whole
   * manifest, then its stat form), a few members per turn of the event loop,
   * so the next backup's request is answered from a file (a 1M-file manifest
   * takes seconds to build).
   */
  prepare(
    index: IndexStore,
    project: string,
    commit: CommitInfo,
    changed: string[] | null = null,
  ): Promise<void> {
    const path = this.#path(project, commit.id);
    const statPath = this.#path(project, commit.id, true);
    const running = this.#building.get(statPath);
    if (running) return running;
    // Copies of the parent's files (no path changed) leave little garbage.
    let copy = true;
    // From the parent's cache when there is one and the change list is known.
    const parentFile = (stat: boolean) => {
      if (!changed || !commit.parent) return null;
      const file = this.#path(project, commit.parent, stat);
      return exists(file) ? file : null;
    };
    const whole = (async () => {
      if (exists(path)) return;
      Deno.mkdirSync(this.dir, { recursive: true });
      const file = parentFile(false);
      const copied = file !== null && changed!.length === 0;
      copy &&= copied;
      const members = file === null
        ? manifestMembers(index, project, commit)
        : copied
        ? copiedMembers(commit, file)
        : mergedMembers(index, project, commit, file, changed!);
      await this.#write(index, project, commit, path, members, copied);
    })();
    // The stat form comes second (a request for the whole form waits only for
    // that): a no-change commit copies its parent's stat file; otherwise the
    // whole form just written is stripped (cheaper than the index).
    const stat = (async () => {
      await whole;
      if (!exists(statPath)) {
        const file = changed?.length === 0 ? parentFile(true) : null;
        copy &&= file !== null;
        const members = file !== null ? copiedMembers(commit, file) : strippedMembers(path);
        await this.#write(index, project, commit, statPath, members, file !== null);
      }
      this.#dropOthers(project, this.#stem(project, commit.id));
    })();
    const settle = (job: Promise<void>, key: string) =>
      job.catch(() => {
        // A cache that cannot be built (disk full, directory gone, a newer head)
        // only costs speed: the manifest is then built from the index on request.
      }).finally(() => this.#building.delete(key));
    this.#building.set(path, settle(whole, path));
    const all = settle(stat, statPath).finally(() => {
      if (!copy) collectNow();
    });
    this.#building.set(statPath, all);
    return all;
  }

  /** Writes `members` to a temporary file, renamed to `path` when complete. */
  async #write(
    index: IndexStore,
    project: string,
    commit: CommitInfo,
    path: string,
    members: AsyncGenerator<Uint8Array>,
    copy: boolean,
  ): Promise<void> {
    const tmp = `${path}.${Deno.pid}.${++this.#seq}.part`;
    let out: Deno.FsFile | null = null;
    try {
      out = Deno.openSync(tmp, { write: true, createNew: true });
      let n = 0;
      for await (const m of members) {
        let o = 0;
        while (o < m.length) o += out.writeSync(m.subarray(o));
        // A copy goes by in fresh 256 KiB buffers; a build leaves ~4 bytes
        // of entry objects and strings per byte of text.
        if (copy) churned(m.length);
        else churned(m.length * 16, true);
        // Let requests in now and then; setImmediate, as a setTimeout(0)
        // after another is held back ~2 ms (a copy of a 100k-file manifest
        // took ~25 ms of such waits, which a backup right after waited for).
        if (++n % 4 === 0) await new Promise((r) => setImmediate(r));
        if ((await index.headCommit(project))?.id !== commit.id) throw new Error("superseded");
      }
      out.close();
      out = null;
      Deno.renameSync(tmp, path);
    } catch (err) {
      try {
        out?.close();
      } catch { /* closed */ }
      try {
        Deno.removeSync(tmp);
      } catch { /* gone */ }
      throw err;
    } finally {
      await members.return(undefined);
    }
  }

  /** Removes the project's cache files other than those starting with `keep`. */
  #dropOthers(project: string, keep: string): void {
    for (const e of Deno.readDirSync(this.dir)) {
      if (
        e.name.startsWith(`${project}~`) && !e.name.startsWith(keep) && !e.name.endsWith(".part")
      ) {
        try {
          Deno.removeSync(join(this.dir, e.name));
        } catch { /* gone */ }
      }
    }
  }

  /**
   * The manifest of a project's head as a stream, whole or in its stat form
   * (no hashes); from the cache when it is there.
   */
  async stream(
    index: IndexStore,
    project: string,
    commit: CommitInfo | null,
    stat = false,
  ): Promise<ReadableStream<Uint8Array>> {
    if (!commit) return streamFrom(manifestMembers(index, project, commit, stat));
    const whole = this.#path(project, commit.id);
    const path = stat ? this.#path(project, commit.id, true) : whole;
    await this.#building.get(path);
    try {
      const file = Deno.openSync(path, { read: true });
      return fileStream(file);
    } catch { /* not cached yet */ }
    // Stream it and write the cache file on the way; older heads of the project go.
    const tmp = `${path}.${Deno.pid}.${++this.#seq}.part`;
    let out: Deno.FsFile | null = null;
    try {
      out = Deno.openSync(tmp, { write: true, createNew: true });
    } catch { /* cache not writable: just stream */ }
    // The stat form from the whole one when it is cached, else from the index.
    const members = stat && exists(whole)
      ? strippedMembers(whole)
      : manifestMembers(index, project, commit, stat);
    const stem = this.#stem(project, commit.id);
    const dropTemp = () => {
      if (!out) return;
      out.close();
      out = null;
      try {
        Deno.removeSync(tmp);
      } catch { /* gone */ }
    };
    return streamFrom(members, {
      onChunk: (chunk) => {
        let o = 0;
        while (out && o < chunk.length) o += out.writeSync(chunk.subarray(o));
      },
      onEnd: () => {
        if (!out) return;
        out.close();
        out = null;
        try {
          Deno.renameSync(tmp, path);
          // Only for the head still: a slow answer for an older head must
          // not remove the newer one's files.
          index.headCommit(project).then((head) => {
            if (head?.id === commit.id) this.#dropOthers(project, stem);
          }).catch(() => {});
        } catch { /* cache gone: the answer is complete anyway */ }
      },
      onError: dropTemp,
      onCancel: dropTemp,
    });
  }
}

function fileStream(file: Deno.FsFile): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      const buf = new Uint8Array(256 * 1024);
      const n = file.readSync(buf);
      if (n === null || n === 0) {
        file.close();
        controller.close();
      } else controller.enqueue(n === buf.length ? buf : buf.subarray(0, n));
    },
    cancel() {
      file.close();
    },
  });
}
