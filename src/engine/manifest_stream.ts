/**
 * The manifest on the wire: NDJSON (`{"commit": …}`, then one entry per line)
 * in Keep gzip members of whole lines, so `gunzip` reads it and the client
 * decodes it member by member, synchronously and with bounded memory.
 *
 * The head manifest is what every backup asks for; it is cached per project
 * head in `DATA/cache/` (written while it is first streamed, renamed into
 * place when complete), so a project's manifest is built once per commit.
 *
 * @module
 */

import { join } from "node:path";
import { encodeMember } from "./gzip_member.ts";
import type { IndexDb } from "./index_db.ts";
import { type CommitInfo, entryToJson } from "./manifest.ts";

const MEMBER_TARGET = 256 * 1024;
const encoder = new TextEncoder();

/** Yields the manifest of `commit` (null: a project with no commits) as gzip members. */
export function* manifestMembers(
  index: IndexDb,
  project: string,
  commit: CommitInfo | null,
): Generator<Uint8Array> {
  let text = JSON.stringify({ commit }) + "\n";
  if (commit) {
    for (const e of index.entries(project, commit)) {
      text += entryToJson(e) + "\n";
      if (text.length >= MEMBER_TARGET) {
        yield encodeMember(encoder.encode(text), 1);
        text = "";
      }
    }
  }
  if (text) yield encodeMember(encoder.encode(text), 1);
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

  constructor(dir: string) {
    this.dir = dir;
    Deno.mkdirSync(dir, { recursive: true });
  }

  #path(projectId: number, commit: CommitInfo): string {
    return join(this.dir, `${projectId}-${commit.seq}-${commit.id}.ndjson.gz`);
  }

  /** The manifest of a project's head as a stream; from the cache when it is there. */
  stream(index: IndexDb, project: string, commit: CommitInfo | null): ReadableStream<Uint8Array> {
    const pid = index.projectId(project);
    if (!commit || pid === null) return fromGenerator(manifestMembers(index, project, commit));
    const path = this.#path(pid, commit);
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
    const gen = manifestMembers(index, project, commit);
    const dir = this.dir;
    return new ReadableStream<Uint8Array>({
      pull(controller) {
        try {
          const r = gen.next();
          if (r.done) {
            if (out) {
              out.close();
              out = null;
              Deno.renameSync(tmp, path);
              for (const e of Deno.readDirSync(dir)) {
                if (
                  e.name.startsWith(`${pid}-`) && join(dir, e.name) !== path &&
                  !e.name.endsWith(".part")
                ) {
                  try {
                    Deno.removeSync(join(dir, e.name));
                  } catch { /* gone */ }
                }
              }
            }
            controller.close();
            return;
          }
          if (out) {
            let o = 0;
            while (o < r.value.length) o += out.writeSync(r.value.subarray(o));
          }
          controller.enqueue(r.value);
        } catch (err) {
          controller.error(err);
        }
      },
      cancel() {
        gen.return(undefined);
        if (out) {
          out.close();
          out = null;
          try {
            Deno.removeSync(tmp);
          } catch { /* gone */ }
        }
      },
    });
  }
}

function fromGenerator(gen: Generator<Uint8Array>): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      const r = gen.next();
      if (r.done) controller.close();
      else controller.enqueue(r.value);
    },
  });
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
