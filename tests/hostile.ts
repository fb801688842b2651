/**
 * Shared parts of the hostile-upload tests (tests/hostile_*_test.ts):
 * crafted bodies (tests/craft.ts) POSTed to a real `keep serve`. Every case
 * starts from one good commit made by the real CLI and asserts that the
 * server answers the expected 4xx with a JSON `{error: {code, message}}`
 * whose message starts with "Cannot", and that nothing changed: same head,
 * no new commit in `keep log`, no file left in DATA/tmp/, `keep verify` OK,
 * and a following normal `keep backup` works.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { bytesOf, commitHeader, Upload } from "./craft.ts";
import {
  json,
  keep,
  keepOk,
  logJson,
  type Spec,
  startServer,
  tempDir,
  type TestServer,
  writeTree,
} from "./helpers.ts";

export const P = "app";
export const MiB = 1 << 20;

/** The tree of the good first commit every case starts from. */
export const BASE: Spec = {
  "README.md": "hello\n",
  "dir/file.txt": "content\n",
  "dir/sub/deep.txt": "deep\n",
  "lnk": { link: "dir" },
};

export interface CommitJson {
  id: string;
  seq: number;
  parent: string | null;
}

/** One case's server and its good first commit; `await using` stops the server (stopOrKill). */
export interface Ctx extends AsyncDisposable {
  server: TestServer;
  url: string;
  env: Record<string, string>;
  src: string;
  /** The good commit made first: the head to protect. */
  head: CommitJson;
}

export function sha256(data: string | Uint8Array): string {
  return createHash("sha256").update(bytesOf(data)).digest("hex");
}

export function commitsUrl(c: Ctx, project = P): string {
  return `${c.url}/v1/projects/${project}/commits`;
}

/** A fresh upload on top of the head, commit header already in. */
export function onHead(c: Ctx, level = 1): Upload {
  return new Upload(level).commit(commitHeader(c.head.id));
}

export interface Answer {
  status: number;
  contentType: string;
  text: string;
  body: unknown;
}

export async function answer(res: Response): Promise<Answer> {
  const text = await res.text();
  let body: unknown = undefined;
  try {
    body = JSON.parse(text);
  } catch { /* checked by the caller */ }
  return { status: res.status, contentType: res.headers.get("content-type") ?? "", text, body };
}

export async function post(
  url: string,
  body: Uint8Array | ReadableStream<Uint8Array>,
  init: RequestInit = {},
): Promise<Answer> {
  let res: Response;
  try {
    res = await fetch(url, {
      method: "POST",
      body: body instanceof Uint8Array ? new Uint8Array(body) : body,
      headers: { "content-type": "application/gzip" },
      signal: AbortSignal.timeout(20_000),
      ...init,
    });
  } catch (err) {
    throw new Error(`POST ${url}: no HTTP answer (${err})`);
  }
  return await answer(res);
}

/** Asserts an answer is the JSON error `code` with status `status`. */
export function assertError(
  a: Answer,
  status: number,
  code: string,
  msg?: RegExp,
  what = "",
): void {
  const ctx = `${what}: HTTP ${a.status} ${a.text.slice(0, 300)}`;
  assertEquals(a.status, status, `${ctx}: status`);
  assertMatch(a.contentType, /^application\/json/, `${ctx}: content-type`);
  const err = (a.body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  assert(err && typeof err === "object", `${ctx}: body is not {error: {...}}`);
  assertEquals(Object.keys(a.body as object), ["error"], `${ctx}: body keys`);
  assertEquals(err.code, code, `${ctx}: code`);
  assert(typeof err.message === "string", `${ctx}: message is not a string`);
  assertMatch(err.message, /^Cannot /, `${ctx}: message`);
  assert(!err.message.includes("\n"), `${ctx}: message is not one line`);
  if (msg) assertMatch(err.message, msg, `${ctx}: message`);
}

export async function getJson(url: string): Promise<Answer> {
  return await answer(await fetch(url, { signal: AbortSignal.timeout(10_000) }));
}

/** The project's head commit id, through the API. */
export async function headId(c: Ctx, project = P): Promise<string | null> {
  const a = await getJson(`${c.url}/v1/projects/${project}/head`);
  assertEquals(a.status, 200, `GET head: ${a.text}`);
  return (a.body as { commit: CommitJson | null }).commit?.id ?? null;
}

export async function assertHeadUnchanged(c: Ctx, what: string): Promise<void> {
  assertEquals(await headId(c), c.head.id, `${what}: head moved`);
}

export function tmpFiles(c: Ctx): string[] {
  try {
    return [...Deno.readDirSync(join(c.server.dataDir, "tmp"))].map((e) => e.name);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
}

/** Asserts DATA/tmp/ is empty (waiting a little for a handler still unwinding). */
export async function assertTmpEmpty(c: Ctx, what: string, waitMs = 2000): Promise<void> {
  const until = Date.now() + waitMs;
  let left = tmpFiles(c);
  while (left.length && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 50));
    left = tmpFiles(c);
  }
  assertEquals(left, [], `${what}: files left in ${c.server.dataDir}/tmp`);
}

/**
 * POSTs a hostile body and checks the refusal: status, JSON error, code,
 * message; then that the head did not move and tmp/ is empty.
 */
export async function refuse(
  c: Ctx,
  what: string,
  body: Upload | Uint8Array,
  status: number,
  code: string,
  msg?: RegExp,
  project = P,
): Promise<Answer> {
  const bytes = body instanceof Upload ? body.bytes() : body;
  const a = await post(commitsUrl(c, project), bytes);
  assertError(a, status, code, msg, what);
  await assertHeadUnchanged(c, what);
  await assertTmpEmpty(c, what);
  return a;
}

/** The checks every case ends with: nothing of the hostile uploads remains, the server works. */
export async function assertUnharmed(c: Ctx): Promise<void> {
  await assertHeadUnchanged(c, "after the case");
  const log = logJson<CommitJson>(await keepOk(["log", "--json"], 0, { env: c.env }));
  assertEquals(log.map((x) => x.id), [c.head.id], "keep log shows a new commit");
  await assertTmpEmpty(c, "after the case");
  // verify opens the store, which clears tmp/: it runs after the tmp/ check.
  const v = await keep(["verify", "--data", c.server.dataDir]);
  assertEquals(v.code, 0, `keep verify failed:\n${v.stdout}${v.stderr}`);
  assertMatch(v.stdout, /keep verify: OK/);
  Deno.writeTextFileSync(join(c.src, "after.txt"), "after the hostile uploads\n");
  const b = json<{ commit: CommitJson }>(
    await keepOk(["backup", "--settle", "0", "--json", "-m", "after", c.src], 0, { env: c.env }),
  );
  assertEquals(b.commit.parent, c.head.id, "the next backup's parent");
  assertEquals(b.commit.seq, c.head.seq + 1, "the next backup's seq");
  assertEquals(await headId(c), b.commit.id, "head after the next backup");
}

/** A server with BASE backed up as its first commit. */
export async function setUp(args: string[] = []): Promise<Ctx> {
  const server = await startServer({ args });
  try {
    const src = await tempDir();
    writeTree(src, BASE);
    const env = { KEEP_SERVER: server.url, KEEP_PROJECT: P };
    const b = json<{ commit: CommitJson }>(
      await keepOk(["backup", "--settle", "0", "--json", "-m", "base", src], 0, { env }),
    );
    const c: Ctx = {
      server,
      url: server.url,
      env,
      src,
      head: b.commit,
      [Symbol.asyncDispose]() {
        return stopOrKill(this.server);
      },
    };
    return c;
  } catch (err) {
    await server.stop();
    throw err;
  }
}

/** Stops a server; kills it (and fails) when SIGTERM does not end it within 5 s. */
async function stopOrKill(server: TestServer): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const code = await Promise.race([
    server.stop(),
    new Promise<"hung">((r) => timer = setTimeout(() => r("hung"), 5000)),
  ]);
  clearTimeout(timer);
  if (code === "hung") {
    server.proc.kill("SIGKILL");
    await server.proc.status;
    throw new Error("keep serve did not exit within 5 s of SIGTERM (killed)");
  }
}

/** One hostile case: a server with a good commit, the case, then the common checks. */
export function hostile(
  name: string,
  fn: (c: Ctx) => Promise<void>,
  opts: { args?: string[] } = {},
): void {
  Deno.test({
    name,
    async fn() {
      await using c = await setUp(opts.args);
      await fn(c);
      await assertUnharmed(c);
    },
  });
}
