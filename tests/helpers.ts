/**
 * End-to-end test helpers: a real `keep serve` on 127.0.0.1 (free port),
 * the real CLI (scripts/keep), trees on disk and their comparison.
 */

import { assertEquals } from "./assert.ts";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { lstatNs } from "../src/platform/fs_native.ts";
import { openLocalStorage, type Storage } from "../src/server/storage/open.ts";
import postgres from "postgres";
import { freshPrefix, services } from "./services.ts";

export const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
export const KEEP = join(ROOT, "scripts/keep");

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI. */
export async function keep(
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {},
): Promise<Run> {
  const out = await new Deno.Command(KEEP, {
    args,
    env: {
      KEEP_SERVER: "",
      KEEP_PROJECT: "",
      KEEP_TOKEN: "",
      KEEP_DATA: "",
      ...scaleoutEnv,
      ...opts.env,
    },
    cwd: opts.cwd,
    stdout: "piped",
    stderr: "piped",
    // Killed (SIGTERM) once this long passed: for a test of what must not hang.
    signal: opts.timeoutMs ? AbortSignal.timeout(opts.timeoutMs) : undefined,
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** Runs the CLI and fails the test unless it exits with `code`. */
export async function keepOk(
  args: string[],
  code = 0,
  opts: { env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<Run> {
  const r = await keep(args, opts);
  if (r.code !== code) {
    throw new Error(
      `keep ${
        args.join(" ")
      } exited ${r.code}, expected ${code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`,
    );
  }
  return r;
}

/**
 * A running `keep serve`. `stop` ends it (once; later calls return the same
 * exit code); `await using server = await startServer()` stops it with
 * SIGTERM when the scope ends.
 */
export interface TestServer extends AsyncDisposable {
  url: string;
  dataDir: string;
  proc: Deno.ChildProcess;
  stderr: () => string;
  stop(signal?: Deno.Signal): Promise<number>;
}

/**
 * The backend test servers use: `KEEP_TEST_BACKEND=scaleout` runs every
 * server of a test file on Ceph RGW + PostgreSQL (scripts/services), each
 * data dir with its own bucket prefix and database (scripts/test runs the
 * end-to-end files so too); otherwise the embedded store.
 */
export const BACKEND = Deno.env.get("KEEP_TEST_BACKEND") === "scaleout" ? "scaleout" : "embedded";

/** The services' settings (AWS_* keys, endpoint) every CLI run gets on the scale-out backend. */
let scaleoutEnv: Record<string, string> = {};

/** Per data dir: the scale-out flags its servers get (the same on a restart) and its database. */
const scaleoutStores = new Map<
  string,
  { args: string[]; env: Record<string, string>; pg: string }
>();

async function scaleoutStore(dataDir: string) {
  let s = scaleoutStores.get(dataDir);
  if (!s) {
    const env = await services();
    scaleoutEnv = { ...env };
    const name = `kb_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    const admin = postgres(env.KEEP_PG_URL, { max: 1, onnotice: () => {} });
    try {
      await admin.unsafe(`CREATE DATABASE ${name}`);
    } finally {
      await admin.end();
    }
    const pg = env.KEEP_PG_URL.replace(/\/[^/]*$/, `/${name}`);
    s = {
      args: ["--blobs", `s3://${env.KEEP_S3_BUCKET}/${freshPrefix("e2e")}`, "--index", pg],
      env: { ...env },
      pg,
    };
    scaleoutStores.set(dataDir, s);
  }
  return s;
}

/** The database of `dataDir`'s index on the scale-out backend (undefined on the embedded one). */
export function pgUrlOf(dataDir: string): string | undefined {
  return scaleoutStores.get(dataDir)?.pg;
}

/**
 * The stderr of a `keep serve --tls auto` once it printed its CA's fingerprint
 * (it does so once it is up; given up after 5 s, for the caller's match to fail).
 */
export async function tlsAnnounced(server: { stderr(): string }): Promise<string> {
  for (let i = 0; i < 100 && !/fingerprint sha256:/.test(server.stderr()); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  return server.stderr();
}

/** Starts `keep serve` on a free loopback port. */
export async function startServer(
  opts: { dataDir?: string; args?: string[]; noAuth?: boolean; env?: Record<string, string> } = {},
): Promise<TestServer> {
  const dataDir = opts.dataDir ?? await tempDir("keep-data-");
  const args = ["serve", "--data", dataDir, "--listen", "127.0.0.1:0", ...(opts.args ?? [])];
  let env = opts.env;
  if (BACKEND === "scaleout" && !args.includes("--blobs") && !args.includes("--index")) {
    const s = await scaleoutStore(dataDir);
    args.push(...s.args);
    env = { ...s.env, ...opts.env };
  }
  // Background recompression changes packs on its own schedule: off unless a test asks.
  if (!args.includes("--compact-idle")) args.push("--compact-idle", "off");
  // Likewise retention and GC rounds.
  if (!args.includes("--retention-every")) args.push("--retention-every", "off");
  if (opts.noAuth ?? true) args.push("--no-auth");
  const proc = new Deno.Command(KEEP, { args, stdout: "piped", stderr: "piped", env }).spawn();
  let errText = "";
  (async () => {
    const dec = new TextDecoder();
    for await (const chunk of proc.stderr) errText += dec.decode(chunk);
  })();
  const reader = proc.stdout.getReader();
  let text = "";
  const dec = new TextDecoder();
  while (!text.includes("\n")) {
    const r = await reader.read();
    if (r.done) throw new Error(`keep serve exited before listening: ${errText}`);
    text += dec.decode(r.value);
  }
  (async () => {
    try {
      while (!(await reader.read()).done) { /* drain */ }
    } catch { /* closed */ }
  })();
  const m = /listening on (\S+)/.exec(text);
  if (!m) throw new Error(`unexpected serve output: ${text}`);
  let stopped: Promise<number> | null = null;
  const stop = (signal: Deno.Signal = "SIGTERM") => {
    if (!stopped) {
      try {
        proc.kill(signal);
      } catch { /* already gone */ }
      stopped = proc.status.then((s) => s.code);
    }
    return stopped;
  };
  return {
    url: m[1],
    dataDir,
    proc,
    stderr: () => errText,
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}

/** Writes a tree: path → string/bytes (file), {dir}, {link}. */
export type Spec = Record<string, string | Uint8Array | { dir: true } | { link: string }>;

export function writeTree(root: string, spec: Spec): void {
  for (const [path, v] of Object.entries(spec)) {
    const abs = join(root, path);
    Deno.mkdirSync(join(abs, ".."), { recursive: true });
    if (typeof v === "string") Deno.writeTextFileSync(abs, v);
    else if (v instanceof Uint8Array) Deno.writeFileSync(abs, v);
    else if ("dir" in v) Deno.mkdirSync(abs, { recursive: true });
    else Deno.symlinkSync(v.link, abs);
  }
}

/** What a tree holds: path → type, mode, mtime (ns), content (size:sha256) or link target. */
export interface Snapshot {
  [path: string]: {
    type: string;
    mode?: number;
    mtime?: string;
    content?: string;
    target?: string;
  };
}

/** Records a tree's state (files' content as base64; dirs' mtime optional). */
export function snapshot(root: string, opts: { dirTimes?: boolean } = {}): Snapshot {
  const out: Snapshot = {};
  const walk = (rel: string) => {
    const abs = rel ? join(root, rel) : root;
    const names = [...Deno.readDirSync(abs)].map((e) => e.name).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatNs(join(root, r));
      if (st.kind === "dir") {
        out[r] = {
          type: "dir",
          mode: st.mode,
          ...(opts.dirTimes ? { mtime: st.mtime.toString() } : {}),
        };
        walk(r);
      } else if (st.kind === "symlink") {
        out[r] = {
          type: "symlink",
          target: Deno.readLinkSync(join(root, r)),
          mtime: st.mtime.toString(),
        };
      } else {
        const data = Deno.readFileSync(join(root, r));
        const hash = createHash("sha256").update(data).digest("hex");
        out[r] = {
          type: "file",
          mode: st.mode,
          mtime: st.mtime.toString(),
          content: `${data.length}:${hash}`,
        };
      }
    }
  };
  walk("");
  return out;
}

/** Asserts two snapshots are equal, with a readable diff of paths. */
export function assertSameTree(actual: Snapshot, expected: Snapshot, what = "tree"): void {
  const a = Object.keys(actual).sort();
  const e = Object.keys(expected).sort();
  assertEquals(a, e, `${what}: paths differ`);
  for (const k of e) assertEquals(actual[k], expected[k], `${what}: ${k} differs`);
}

// Temp dirs go when the test run ends: a full run made ~300 of them (GBs,
// 100k-file trees and stores) and left them all.
const made: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const dir of made) {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* still mounted (tmpfs tests unmount first) or already gone */ }
  }
});

export async function tempDir(prefix = "keep-test-"): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  made.push(dir);
  return dir;
}

/** A temp dir removed when its scope ends: `using dir = scopedTempDir(); dir.path`. */
export function scopedTempDir(prefix = "keep-test-"): { path: string } & Disposable {
  const path = Deno.makeTempDirSync({ prefix });
  return {
    path,
    [Symbol.dispose]() {
      try {
        Deno.removeSync(path, { recursive: true });
      } catch { /* already gone */ }
    },
  };
}

/** Creates a token with `keep token create` and returns its secret. */
export async function token(dataDir: string, role: string, ...projects: string[]): Promise<string> {
  const r = await keepOk([
    "token",
    "create",
    "--data",
    dataDir,
    "--role",
    role,
    ...projects.flatMap((p) => ["--project", p]),
    ...(BACKEND === "scaleout" ? ["--index", (await scaleoutStore(dataDir)).pg] : []),
  ]);
  const t = r.stdout.trim();
  if (!/^keep_[0-9a-f]{8}_[A-Za-z0-9_-]+$/.test(t)) throw new Error(`unexpected token ${t}`);
  return t;
}

/** Parses the JSON printed by `--json`: one object, `{"keep": 1, …}`. */
export function json<T = Record<string, unknown>>(r: Run): T {
  const o = JSON.parse(r.stdout);
  if (o === null || typeof o !== "object" || o.keep !== 1) {
    throw new Error(`--json printed no {"keep": 1, …} object: ${r.stdout.slice(0, 200)}`);
  }
  return o as T;
}

/** The commits of `keep log --json` (`{"keep": 1, "commits": […]}`), newest first. */
export function logJson<T = { id: string; seq: number }>(r: Run): T[] {
  return json<{ commits: T[] }>(r).commits;
}

/**
 * A loopback proxy that forwards to `target`, saves each upload body (POST
 * …/commits) and lists the requests ("GET /v1/…?…").
 */
export function captureProxy(
  target: string,
): {
  url: string;
  uploads: Uint8Array[];
  requests: string[];
  /** Bytes of every request body (uploads, negotiations, lookups). */
  sent: { bytes: number };
  close(): Promise<void>;
} {
  const uploads: Uint8Array[] = [];
  const sent = { bytes: 0 };
  const requests: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const u = new URL(req.url);
    requests.push(`${req.method} ${u.pathname}${u.search}`);
    let body: BodyInit | null = null;
    if (req.method === "POST") {
      const bytes = new Uint8Array(await req.arrayBuffer());
      sent.bytes += bytes.length;
      if (u.pathname.endsWith("/commits")) uploads.push(bytes);
      body = bytes;
    }
    const res = await fetch(target + u.pathname + u.search, {
      method: req.method,
      headers: req.headers,
      body,
    });
    return new Response(res.body, { status: res.status, headers: res.headers });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    uploads,
    requests,
    sent,
    close: () => server.shutdown(),
  };
}

/** n random bytes (any n). */
export function randomData(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) {
    crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65536)));
  }
  return out;
}

/** A store opened in a temp dir (as serve opens it), closed and removed when the scope ends. */
export async function scopedStore(
  prefix = "keep-store-",
): Promise<{ storage: Storage; dir: string } & AsyncDisposable> {
  const tmp = scopedTempDir(prefix);
  const storage = await openLocalStorage(tmp.path, { create: true, owner: true });
  return {
    storage,
    dir: tmp.path,
    async [Symbol.asyncDispose]() {
      await storage.close();
      tmp[Symbol.dispose]();
    },
  };
}
