/**
 * The client the CLI uses to talk to `keep serve`. Maps HTTP errors back to
 * KeepError codes and network failures to `unavailable`.
 *
 * @module
 */

import type { BackupRemote, Negotiated, Negotiation } from "../client/backup.ts";
import { NEGOTIATE_BATCH, type NegotiateAnswer } from "../format/possession.ts";
import { hexToBytes } from "../format/hex.ts";
import { KeepError } from "../errors.ts";
import { decodeMemberTransient, MemberSplitter } from "../format/gzip_member.ts";
import { type CommitInfo, entriesFromLines, type Entry, LineChunker } from "../format/manifest.ts";
import type {
  CommitNote,
  DiffPage,
  FindResult,
  HistoryResult,
  Policy,
  ProjectInfo,
  PruneResult,
  Stats,
  TreePage,
  VerifyReport,
} from "../format/api.ts";
import { Buffer } from "node:buffer";
import tls from "node:tls";
import { isIP } from "node:net";
import { parseFingerprint } from "../format/x509.ts";
import { API } from "../format/api.ts";
import { errorFromBody } from "./errors.ts";

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Paths per entries request (the server takes up to 10,000 in up to 8 MiB). */
const LOOKUP_BATCH = 5_000;
const LOOKUP_BATCH_BYTES = 4 << 20;

export interface ClientOptions {
  /** Base URL, e.g. http://127.0.0.1:8080 */
  server: string;
  token?: string;
  /** PEM file of a CA to trust (self-signed servers). */
  caFile?: string;
  /**
   * SHA-256 fingerprint of a CA certificate the server sends (keep serve
   * --tls auto prints its CA's): that certificate is then trusted.
   */
  fingerprint?: string;
}

/**
 * A connection to one server.
 *
 * @example
 * ```ts
 * const client = new KeepClient({ server: "http://127.0.0.1:8080" });
 * console.log(await client.head("app"));
 * ```
 */
export class KeepClient {
  readonly base: string;
  #token?: string;
  #http?: Deno.HttpClient;
  #fingerprint?: string;
  #pinning: Promise<void> | null = null;

  constructor(options: ClientOptions) {
    let url: URL;
    try {
      url = new URL(options.server);
    } catch {
      throw new KeepError(
        "usage",
        `Cannot use server ${JSON.stringify(options.server)}: not a URL`,
      );
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new KeepError("usage", `Cannot use server ${options.server}: use http:// or https://`);
    }
    this.base = url.origin;
    this.#token = options.token;
    if (options.caFile && options.fingerprint) {
      throw new KeepError("usage", "Cannot trust the server two ways: give --ca or --fingerprint");
    }
    if (options.caFile) {
      let pem: string;
      try {
        pem = Deno.readTextFileSync(options.caFile);
      } catch (err) {
        throw new KeepError(
          "usage",
          `Cannot read --ca ${options.caFile}: ${(err as Error).message}`,
        );
      }
      this.#http = Deno.createHttpClient({ caCerts: [pem] });
    }
    if (options.fingerprint !== undefined) {
      const fp = parseFingerprint(options.fingerprint);
      if (!fp) {
        throw new KeepError(
          "usage",
          `Cannot parse --fingerprint ${options.fingerprint}: give the SHA-256 keep serve printed (64 hex digits)`,
        );
      }
      if (url.protocol !== "https:") {
        throw new KeepError("usage", `Cannot pin a certificate of ${url.origin}: use https://`);
      }
      this.#fingerprint = fp;
    }
  }

  /**
   * Trusts the CA certificate the server sends whose SHA-256 is the pinned
   * fingerprint. The chain is read once without verification; every request
   * after is verified by Deno's TLS against that certificate alone.
   */
  async #pin(): Promise<void> {
    const url = new URL(this.base);
    const host = url.hostname.replace(/^\[|\]$/g, "");
    const chain = await peerChain(host, Number(url.port || 443)).catch((err) => {
      throw new KeepError("unavailable", `Cannot reach ${this.base}: ${(err as Error).message}`);
    });
    const match = chain.find((c) => c.fingerprint === this.#fingerprint);
    if (!match) {
      throw new KeepError(
        "unavailable",
        `Cannot trust ${this.base}: no certificate it sends has the fingerprint sha256:${this.#fingerprint} (it sends ${
          chain.map((c) => c.fingerprint.slice(0, 16) + "…").join(", ")
        }); check the one keep serve printed`,
      );
    }
    if (match === chain[0] && chain.length > 1) {
      // rustls takes only a CA as a trust anchor, not the server's own certificate.
      throw new KeepError(
        "usage",
        `Cannot pin sha256:${this.#fingerprint}: it is ${this.base}'s own certificate; pin the CA that signed it: --fingerprint sha256:${
          chain[chain.length - 1].fingerprint
        }`,
      );
    }
    this.#http = Deno.createHttpClient({ caCerts: [match.pem] });
  }

  close(): void {
    this.#http?.close();
  }

  async #fetch(path: string, init: RequestInit = {}): Promise<Response> {
    if (this.#fingerprint && !this.#http) {
      this.#pinning ??= this.#pin().finally(() => this.#pinning = null);
      await this.#pinning;
    }
    const headers = new Headers(init.headers);
    if (this.#token) headers.set("authorization", `Bearer ${this.#token}`);
    let res: Response;
    try {
      res = await fetch(`${this.base}${API}${path}`, {
        ...init,
        headers,
        ...(this.#http ? { client: this.#http } : {}),
      } as RequestInit);
    } catch (err) {
      if (err instanceof KeepError) throw err;
      const cause = (err as Error).cause;
      if (cause instanceof KeepError) throw cause;
      // Deno puts the useful part (refused, TLS, DNS) in the cause.
      const detail = cause instanceof Error ? cause.message : (err as Error).message;
      const short = detail.split("\n")[0].replace(/^error sending request for url \([^)]*\): /, "");
      throw new KeepError("unavailable", `Cannot reach ${this.base}: ${tlsAdvice(short)}`);
    }
    if (!res.ok) {
      let body: unknown = null;
      try {
        body = await res.json();
      } catch { /* not JSON */ }
      throw errorFromBody(res.status, body);
    }
    return res;
  }

  async #json<T>(path: string, init?: RequestInit): Promise<T> {
    const res = await this.#fetch(path, init);
    try {
      return await res.json() as T;
    } catch {
      throw new KeepError("unavailable", `Cannot read answer of ${this.base}: not JSON`);
    }
  }

  #p(project: string): string {
    return `/projects/${encodeURIComponent(project)}`;
  }

  async health(): Promise<{ ok: boolean; version: string }> {
    return await this.#json("/health");
  }

  /** A page of directory `path` of commit `ref` (see TreePage). */
  async tree(
    project: string,
    ref: string,
    path: string,
    options: { after?: string; limit?: number } = {},
  ): Promise<TreePage> {
    return await this.#json(`${this.#p(project)}/tree?${query({ commit: ref, path, ...options })}`);
  }

  /** A page of the differences from commit `from` to commit `to`. */
  async diff(
    project: string,
    from: string,
    to: string,
    options: { path?: string; after?: string; limit?: number } = {},
  ): Promise<DiffPage> {
    return await this.#json(`${this.#p(project)}/diff?${query({ from, to, ...options })}`);
  }

  /** Every version of `path`, newest first. */
  async history(project: string, path: string): Promise<HistoryResult> {
    return await this.#json(`${this.#p(project)}/history?${query({ path })}`);
  }

  /** A page of the paths matching `pattern` in any commit, with their versions. */
  async find(
    project: string,
    pattern: string,
    options: { after?: string; limit?: number } = {},
  ): Promise<FindResult> {
    return await this.#json(`${this.#p(project)}/find?${query({ pattern, ...options })}`);
  }

  async projects(): Promise<ProjectInfo[]> {
    return (await this.#json<{ projects: ProjectInfo[] }>("/projects")).projects;
  }

  async head(project: string): Promise<CommitInfo | null> {
    return (await this.#json<{ commit: CommitInfo | null }>(`${this.#p(project)}/head`)).commit;
  }

  /**
   * A commit's manifest: its info, then entries streamed in path order, one
   * by one (`entries`), as batches of NDJSON lines not yet decoded (`lines`),
   * or as chunks of those lines' UTF-8 bytes (`chunks`, for the backup's diff:
   * see `diffTree`). Read one of the three.
   */
  async manifest(
    project: string,
    ref = "latest",
    options: { stat?: boolean } = {},
  ): Promise<
    {
      commit: CommitInfo | null;
      /** True when the entries lack their hashes (asked for with `stat`). */
      stat: boolean;
      entries: AsyncIterable<Entry>;
      lines: AsyncIterable<string[]>;
      chunks: AsyncIterable<Uint8Array>;
    }
  > {
    const res = await this.#fetch(
      `${this.#p(project)}/manifest?commit=${encodeURIComponent(ref)}${
        options.stat ? "&fields=stat" : ""
      }`,
    );
    const stat = res.headers.get("keep-manifest-fields") === "stat";
    const reader = res.body!.getReader();
    const split = new MemberSplitter();
    const chunker = new LineChunker();
    let queue: Uint8Array[] = [];
    let done = false;
    const fill = async () => {
      while (queue.length === 0 && !done) {
        const r = await reader.read();
        if (r.done) {
          split.end();
          const rest = chunker.end();
          if (rest) queue.push(rest);
          done = true;
          break;
        }
        split.push(r.value);
        for (let m = split.next(); m; m = split.next()) {
          const whole = chunker.push(decodeMemberTransient(m));
          if (whole) queue.push(whole);
        }
      }
    };
    await fill();
    if (!queue.length) throw new KeepError("unavailable", "Cannot read manifest: empty answer");
    // The commit line; the rest of its chunk stays queued.
    let nl = queue[0].indexOf(10);
    if (nl < 0) nl = queue[0].length;
    let head: unknown;
    try {
      head = JSON.parse(utf8.decode(queue[0].subarray(0, nl)));
    } catch {
      throw new KeepError(
        "invalid",
        "Cannot read manifest: the server sent a line that is not JSON",
      );
    }
    if (nl + 1 < queue[0].length) queue[0] = queue[0].subarray(nl + 1);
    else queue.shift();
    const commit = (head as { commit: CommitInfo | null }).commit;
    async function* chunkStream(): AsyncGenerator<Uint8Array> {
      try {
        for (;;) {
          if (queue.length) {
            const batch = queue;
            queue = [];
            yield* batch;
          }
          if (done) return;
          await fill();
        }
      } finally {
        if (!done) await reader.cancel().catch(() => {});
      }
    }
    const chunks = chunkStream();
    async function* lineBatches(): AsyncGenerator<string[]> {
      for await (const chunk of chunks) {
        let text: string;
        try {
          text = utf8.decode(chunk);
        } catch {
          throw new KeepError("invalid", "Cannot read manifest: not valid UTF-8");
        }
        const lines = text.split("\n").filter((l) => l !== "");
        if (lines.length) yield lines;
      }
    }
    const lines = lineBatches();
    async function* entries(): AsyncGenerator<Entry> {
      for await (const batch of lines) yield* entriesFromLines(batch);
    }
    return { commit, stat, entries: entries(), lines, chunks };
  }

  /** The whole entries (hashes included) of `paths` in a commit; paths it lacks are left out. */
  async entries(project: string, commit: string, paths: string[]): Promise<Entry[]> {
    const out: Entry[] = [];
    // Requests of at most LOOKUP_BATCH paths and ~LOOKUP_BATCH_BYTES of JSON.
    for (let i = 0; i < paths.length;) {
      let end = i;
      let bytes = 0;
      while (end < paths.length && end - i < LOOKUP_BATCH) {
        const n = JSON.stringify(paths[end]).length * 3 + 1; // UTF-8 worst case
        if (end > i && bytes + n > LOOKUP_BATCH_BYTES) break;
        bytes += n;
        end++;
      }
      const res = await this.#fetch(`${this.#p(project)}/entries`, {
        method: "POST",
        body: JSON.stringify({ commit, paths: paths.slice(i, end) }),
        headers: { "content-type": "application/json" },
      });
      const lines = (await res.text()).split("\n").filter((l) => l !== "");
      for (const e of entriesFromLines(lines)) out.push(e);
      i = end;
    }
    return out;
  }

  /**
   * Which of `hashes` (SHA-256 hex) the store holds, each with the nonce and
   * key of the negotiation that answered it (one per NEGOTIATE_BATCH hashes),
   * and whether the store keeps big files in chunks. No hashes: one request
   * all the same, for a key and the store's chunking.
   */
  async negotiate(
    project: string,
    hashes: string[],
    options: { own?: boolean } = {},
  ): Promise<Negotiation> {
    const have = new Map<string, Negotiated>();
    const own = new Set<string>();
    let last: Negotiation | null = null;
    for (let i = 0; i === 0 || i < hashes.length; i += NEGOTIATE_BATCH) {
      const a = await this.#json<NegotiateAnswer>(`${this.#p(project)}/negotiate`, {
        method: "POST",
        body: JSON.stringify({
          hashes: hashes.slice(i, i + NEGOTIATE_BATCH),
          ...(options.own ? { own: true } : {}),
        }),
        headers: { "content-type": "application/json" },
      });
      const n: Negotiated = { nonce: a.nonce, key: hexToBytes(a.key) };
      for (const h of a.have) have.set(h, n);
      for (const h of a.own ?? []) own.add(h);
      last = { have, own, key: n, chunkOver: a.chunkOver ?? null };
    }
    return last!;
  }

  async upload(project: string, body: ReadableStream<Uint8Array>): Promise<CommitInfo> {
    const res = await this.#json<{ commit: CommitInfo }>(`${this.#p(project)}/commits`, {
      method: "POST",
      body,
      headers: { "content-type": "application/gzip" },
      duplex: "half",
    } as RequestInit);
    return res.commit;
  }

  async commits(project: string, limit = 1000): Promise<CommitInfo[]> {
    return (await this.#json<{ commits: CommitInfo[] }>(
      `${this.#p(project)}/commits?limit=${limit}`,
    )).commits;
  }

  async commit(project: string, ref: string): Promise<{ commit: CommitInfo; notes: CommitNote[] }> {
    return await this.#json(`${this.#p(project)}/commits/${encodeURIComponent(ref)}`);
  }

  /** A commit (or a path below it) as a tar.gz stream. */
  async archive(
    project: string,
    ref = "latest",
    path = "",
  ): Promise<{ commitId: string; stream: ReadableStream<Uint8Array> }> {
    const q = new URLSearchParams({ commit: ref });
    if (path) q.set("path", path);
    const res = await this.#fetch(`${this.#p(project)}/archive?${q}`);
    return { commitId: res.headers.get("keep-commit") ?? "", stream: res.body! };
  }

  /** Applies `policy` (null: the project's stored one) now; `wait` for the GC round. */
  async prune(
    project: string,
    policy: Policy | null,
    options: { dryRun?: boolean; wait?: boolean } = {},
  ): Promise<PruneResult> {
    return (await this.#json<{ result: PruneResult }>(`${this.#p(project)}/prune`, {
      method: "POST",
      body: JSON.stringify({
        ...(policy ? { policy } : {}),
        dryRun: !!options.dryRun,
        wait: !!options.wait,
      }),
      headers: { "content-type": "application/json" },
    })).result;
  }

  async policy(project: string): Promise<Policy | null> {
    return (await this.#json<{ policy: Policy | null }>(`${this.#p(project)}/policy`)).policy;
  }

  /** Stores (null: removes) the project's policy. */
  async setPolicy(project: string, policy: Policy | null): Promise<Policy | null> {
    return (await this.#json<{ policy: Policy | null }>(`${this.#p(project)}/policy`, {
      method: policy ? "PUT" : "DELETE",
      ...(policy
        ? { body: JSON.stringify({ policy }), headers: { "content-type": "application/json" } }
        : {}),
    })).policy;
  }

  async stats(project?: string): Promise<Stats> {
    const q = project === undefined ? "" : `?project=${encodeURIComponent(project)}`;
    return (await this.#json<{ stats: Stats }>(`/stats${q}`)).stats;
  }

  async verify(): Promise<VerifyReport> {
    return (await this.#json<{ report: VerifyReport }>("/verify", { method: "POST" })).report;
  }

  /** The BackupRemote for one project. */
  remote(project: string): BackupRemote {
    return {
      latest: async (stat) => {
        const m = await this.manifest(project, "latest", { stat });
        return { commit: m.commit, stat: m.stat, lines: m.chunks };
      },
      entries: (commit, paths) => this.entries(project, commit, paths),
      negotiate: (hashes, options) => this.negotiate(project, hashes, options),
      upload: (body) => this.upload(project, body),
    };
  }
}

/** A TLS failure's message with what to do about it. */
function tlsAdvice(detail: string): string {
  if (/CaUsedAsEndEntity/.test(detail)) {
    return "its certificate is a CA certificate (basicConstraints CA:TRUE, what openssl req -x509 makes by default), which TLS refuses as a server's own: run keep serve --tls auto, or make the certificate with -addext basicConstraints=critical,CA:FALSE";
  }
  if (/UnknownIssuer/.test(detail)) {
    return "its certificate is not signed by a CA this client trusts: give --ca FILE (keep serve --tls auto writes DATA/tls/ca.pem) or --fingerprint (keep serve --tls auto prints it)";
  }
  const name = /not valid for name "?([^";]+)"?/.exec(detail);
  if (name) {
    return `its certificate is not for ${
      name[1]
    }: connect by a name it holds, or add this one (keep serve --tls auto --tls-name ${name[1]})`;
  }
  return detail;
}

/** The certificates a TLS server sends (leaf first), read without verifying them. */
function peerChain(host: string, port: number): Promise<{ fingerprint: string; pem: string }[]> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      servername: isIP(host) ? undefined : host,
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("TLS handshake timed out"));
    }, 10_000);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      const out: { fingerprint: string; pem: string }[] = [];
      // deno-lint-ignore no-explicit-any
      let c: any = socket.getPeerCertificate(true);
      const seen = new Set<string>();
      while (c && c.raw && !seen.has(c.fingerprint256)) {
        seen.add(c.fingerprint256);
        // The leaf's raw comes as a plain Uint8Array, the issuers' as Buffers.
        const b64 = Buffer.from(c.raw).toString("base64").replace(/(.{64})/g, "$1\n");
        out.push({
          fingerprint: c.fingerprint256.replaceAll(":", "").toLowerCase(),
          pem: `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`,
        });
        c = c.issuerCertificate;
      }
      socket.end();
      resolve(out);
    });
    socket.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** A query string of the defined values. */
function query(values: Record<string, string | number | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(values)) if (v !== undefined) q.set(k, String(v));
  return q.toString();
}
