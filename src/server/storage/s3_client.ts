/**
 * A small S3 client: AWS Signature Version 4 on node:crypto, requests with
 * `fetch`, path-style addressing (`ENDPOINT/BUCKET/KEY`), and only the calls
 * every S3-compatible store has: PutObject, GetObject (with Range),
 * HeadObject, ListObjectsV2, DeleteObjects and multipart uploads.
 *
 * Why not `@aws-sdk/client-s3`: under Deno it goes through node:http, needs
 * its default checksums turned off for Ceph RGW and a Node stream for
 * bodies; this is ~300 lines with no dependency, and measured as fast
 * against RGW here (docs/DESIGN.md, "Blobs in an object store"). Deno's
 * `fetch` sends a stream body chunked, which RGW refuses (411), so every
 * body here is a buffer: callers bound them (a pack, a multipart part).
 *
 * Failures: no answer, or a 5xx after retries → KeepError "unavailable"
 * (the store is down: clients exit 5, HTTP 503); other statuses are
 * returned to the caller as S3Error with the store's code. A request not
 * sent and answered within the timeout counts as no answer; a streamed
 * body read through `bodyPieces` that stops coming for as long is
 * "unavailable" too (a store that hangs in the middle of an answer), and
 * so is a 2xx answer that cannot be read right (a listing, DeleteResult or
 * CompleteMultipartUploadResult cut short or malformed, a range not the
 * one asked for): never keys, bytes or success made up from it. Redirects
 * are not followed (a 3xx is an S3Error).
 *
 * @module
 */

import { createHash, createHmac } from "node:crypto";
import { KeepError } from "../../errors.ts";

/** Where and as whom to reach a bucket. */
export interface S3Options {
  /** `http(s)://host:port` of the store. */
  endpoint: string;
  region: string;
  accessKey: string;
  secretKey: string;
  bucket: string;
  /** Attempts for a request that got no answer or a 5xx (default 3). */
  attempts?: number;
  /**
   * How long a request may take, sent and answered (a streamed body: to its
   * headers), and a body read with `bodyPieces` wait for its next bytes
   * (default 60 s).
   */
  timeoutMs?: number;
}

/** A non-2xx answer the caller may handle (404 NoSuchKey, 412 PreconditionFailed, …). */
export class S3Error extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = "S3Error";
    this.status = status;
    this.code = code;
  }
}

/** An object as listed. */
export interface S3Object {
  key: string;
  size: number;
  /** Last modified, ms since the epoch. */
  modified: number;
  /** The ETag without quotes (HeadObject only; a single PUT's is the body's MD5 on S3 and RGW). */
  etag?: string;
}

const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const RETRY_DELAYS = [200, 1000, 2000];

function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

function hmac(key: Uint8Array | string, data: string): Uint8Array {
  return createHmac("sha256", key).update(data).digest();
}

/** RFC 3986 encoding as SigV4 wants it; `/` kept in paths. */
function uriEncode(s: string, keepSlash: boolean): string {
  let out = "";
  for (const b of new TextEncoder().encode(s)) {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9\-._~]/.test(c) || (keepSlash && c === "/")) out += c;
    else out += "%" + b.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

const ENTITIES: Record<string, string> = { lt: "<", gt: ">", quot: '"', apos: "'", amp: "&" };

/**
 * XML character data: the five named entities and character references
 * (`&#x41;`, `&#65;`: stores write control characters so) resolved, CDATA
 * sections taken as written; null when an `&` starts no such entity (the
 * answer is not XML this reads right).
 */
function xmlText(s: string): string | null {
  let bad = false;
  const text = (t: string) =>
    t.replace(/&(?:#x([0-9A-Fa-f]{1,6})|#([0-9]{1,7})|([a-z]+));|&/g, (all, hex, num, name) => {
      if (name !== undefined && Object.hasOwn(ENTITIES, name)) return ENTITIES[name];
      const cp = hex !== undefined ? parseInt(hex, 16) : num !== undefined ? Number(num) : -1;
      if (cp > 0 && cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff)) return String.fromCodePoint(cp);
      bad = true;
      return all;
    });
  const out = s.split(/(<!\[CDATA\[[\s\S]*?\]\]>)/)
    .map((part, i) => i % 2 ? part.slice(9, -3) : text(part))
    .join("");
  return bad ? null : out;
}

function xmlEscape(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * The text of the first `<name>` element (`<name/>`: ""); null when there
 * is none, or it holds elements or text that xmlText cannot read.
 */
function tag(xml: string, name: string): string | null {
  const m = new RegExp(
    `<${name}>((?:[^<]|<!\\[CDATA\\[[\\s\\S]*?\\]\\]>)*)</${name}>|<${name}/>`,
  ).exec(xml);
  if (!m) return null;
  return m[1] === undefined ? "" : xmlText(m[1]);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * One bucket of an S3-compatible store.
 *
 * @example
 * ```ts
 * const s3 = new S3Client({ endpoint, region: "us-east-1", accessKey, secretKey, bucket: "keep" });
 * await s3.put("a/b", new TextEncoder().encode("hello"), { ifNoneMatch: true });
 * const bytes = await s3.getBytes("a/b", 0, 5);
 * ```
 */
/** What one request sends besides its method and key. */
export interface RequestOptions {
  query?: Record<string, string>;
  body?: Uint8Array;
  headers?: Record<string, string>;
  /** Statuses returned to the caller instead of thrown. */
  accept?: number[];
  /**
   * A 2xx answer's body is the caller's to stream (only the headers are
   * timed: see bodyPieces); otherwise every answer is read whole under the
   * request's timer, so a store that stops in the middle is no answer.
   */
  stream?: boolean;
}

/** Statuses whose Response cannot carry a body. */
const NULL_BODY = new Set([204, 205, 304]);

/**
 * Requests this process sent to object stores, by kind (get, put, head,
 * list, delete, delete-objects, multipart-…; retries not counted): what
 * /metrics reports as keep_object_requests_total.
 */
export const OBJECT_REQUESTS = new Map<string, number>();

export class S3Client {
  readonly bucket: string;
  readonly endpoint: string;
  #o: S3Options;
  #host: string;
  #base: string;
  #keyCache: { date: string; key: Uint8Array } | null = null;

  constructor(options: S3Options) {
    this.#o = options;
    this.bucket = options.bucket;
    const url = new URL(options.endpoint);
    this.endpoint = url.origin;
    this.#host = url.host;
    this.#base = url.origin;
  }

  /** How long a request may take, or a streamed body wait for its next bytes (ms). */
  get timeoutMs(): number {
    return this.#o.timeoutMs ?? 60_000;
  }

  /**
   * An answer's body, piece by piece; when the store sends nothing for
   * `timeoutMs` while a piece is awaited, the body is cancelled and this
   * throws "unavailable" (not a body cut short: nothing is wrong with what
   * is stored). Time the caller spends between pieces is not counted.
   */
  async *bodyPieces(body: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
    const reader = body.getReader();
    const ms = this.timeoutMs;
    let silent = false;
    try {
      for (;;) {
        // Armed only while a read waits: a caller that holds a piece is not the store.
        const timer = setTimeout(() => {
          silent = true;
          reader.cancel().catch(() => {});
        }, ms);
        let r: ReadableStreamReadResult<Uint8Array>;
        try {
          r = await reader.read();
        } finally {
          clearTimeout(timer);
        }
        if (silent) {
          throw new KeepError(
            "unavailable",
            `Cannot reach the object store at ${this.endpoint}: it sent nothing for ${
              ms / 1000
            } s in the middle of an answer`,
          );
        }
        if (r.done) return;
        yield r.value;
      }
    } finally {
      reader.releaseLock();
      await body.cancel().catch(() => {});
    }
  }

  /** Signs and sends one request, with retries when there is no answer or a 5xx. */
  request(method: string, key: string, opts: RequestOptions = {}): Promise<Response> {
    return this.#send(method, key, opts).then(({ res, bytes }) =>
      bytes === null ? res : new Response(NULL_BODY.has(res.status) ? null : bytes, {
        status: res.status,
        headers: res.headers,
      })
    );
  }

  /** #request, counted in OBJECT_REQUESTS by kind. */
  #send(
    method: string,
    key: string,
    opts: RequestOptions,
  ): Promise<{ res: Response; bytes: Uint8Array<ArrayBuffer> | null }> {
    const q = opts.query ?? {};
    const op = "list-type" in q
      ? "list"
      : "delete" in q
      ? "delete-objects"
      : "uploads" in q || "uploadId" in q
      ? `multipart-${method.toLowerCase()}`
      : method.toLowerCase();
    OBJECT_REQUESTS.set(op, (OBJECT_REQUESTS.get(op) ?? 0) + 1);
    return this.#request(method, key, opts);
  }

  /**
   * GetObject of bytes [start, end) read whole within the timeout (a store
   * that stalls in the middle counts as no answer: tried again, then
   * "unavailable"); null when the key does not exist, empty past its end,
   * shorter than asked where the object ends. An answer that is not the
   * range asked for (a 200 of the whole object, another range, a body of
   * another length) is "unavailable", never bytes.
   */
  async getRange(key: string, range: { start: number; end: number }): Promise<Uint8Array | null> {
    const { res, bytes } = await this.#send("GET", key, {
      headers: { range: `bytes=${range.start}-${range.end - 1}` },
      accept: [404, 416],
    });
    if (res.status === 404) return null;
    if (res.status === 416) return new Uint8Array(0);
    const m = /^bytes (\d+)-(\d+)\//.exec(res.headers.get("content-range") ?? "");
    const first = m ? Number(m[1]) : -1;
    const last = m ? Number(m[2]) : -1;
    if (
      res.status !== 206 || first !== range.start || last >= range.end || last < first ||
      bytes!.length !== last - first + 1
    ) {
      throw new KeepError(
        "unavailable",
        `Cannot read s3://${this.bucket}/${key}: asked for bytes ${range.start}-${
          range.end - 1
        }, the store answered ${res.status} ${
          res.headers.get("content-range") ?? "(no range)"
        } with ${bytes!.length} bytes`,
      );
    }
    return bytes;
  }

  /** GetObject of a small object read whole (as getRange); null when it does not exist. */
  async getSmall(key: string): Promise<Uint8Array | null> {
    const { res, bytes } = await this.#send("GET", key, { accept: [404] });
    return res.status === 404 ? null : bytes;
  }

  /** The answer, and its body read whole (null: the caller streams it). */
  async #request(
    method: string,
    key: string,
    opts: RequestOptions,
  ): Promise<{ res: Response; bytes: Uint8Array<ArrayBuffer> | null }> {
    if (!this.#o.accessKey || !this.#o.secretKey) {
      throw new KeepError(
        "usage",
        `Cannot reach s3://${this.bucket}: no keys (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)`,
      );
    }
    // fetch resolves "." and ".." segments (and their %2E forms): it would
    // send another path than the one signed, naming another key.
    if (`${this.bucket}/${key}`.split("/").some((s) => s === "." || s === "..")) {
      throw new KeepError(
        "usage",
        `Cannot address s3://${this.bucket}/${key}: a "." or ".." segment cannot be sent as it is`,
      );
    }
    const attempts = this.#o.attempts ?? 3;
    let lastProblem = "";
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) await sleep(RETRY_DELAYS[Math.min(attempt - 1, RETRY_DELAYS.length - 1)]);
      const { url, headers } = this.#sign(method, key, opts.query ?? {}, opts.body, opts.headers);
      let res: Response;
      let bytes: Uint8Array<ArrayBuffer> | null = null;
      // A store that accepts connections but does not answer counts as down:
      // one timer for sending the request and reading the answer (a
      // streamed 2xx body only to its headers: see bodyPieces).
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), this.timeoutMs);
      try {
        res = await fetch(url, {
          method,
          headers,
          body: opts.body as Uint8Array<ArrayBuffer>,
          signal: abort.signal,
          // A redirect followed would re-send a signed request elsewhere, a
          // 303 as a GET whose 200 would read as the PUT's: a 3xx is an S3Error.
          redirect: "manual",
        });
        if (!(opts.stream && res.status >= 200 && res.status < 300)) {
          bytes = new Uint8Array(await res.arrayBuffer());
        }
      } catch (err) {
        lastProblem = abort.signal.aborted ? "no answer in time" : (err as Error).message;
        continue;
      } finally {
        clearTimeout(timer);
      }
      const text = () => new TextDecoder().decode(bytes ?? new Uint8Array(0));
      if (res.status >= 500) {
        lastProblem = `HTTP ${res.status} ${tag(text(), "Code") ?? ""}`.trim();
        continue;
      }
      if ((res.status >= 200 && res.status < 300) || opts.accept?.includes(res.status)) {
        return { res, bytes };
      }
      const body = text();
      const code = tag(body, "Code") ?? `HTTP ${res.status}`;
      throw new S3Error(
        res.status,
        code,
        `${method} s3://${this.bucket}/${key}: ${code}${
          tag(body, "Message") ? ` (${tag(body, "Message")})` : ""
        }`,
      );
    }
    throw new KeepError(
      "unavailable",
      `Cannot reach the object store at ${this.endpoint}: ${lastProblem}`,
    );
  }

  #signingKey(date: string): Uint8Array {
    if (this.#keyCache?.date === date) return this.#keyCache.key;
    const k = hmac(
      hmac(hmac(hmac(`AWS4${this.#o.secretKey}`, date), this.#o.region), "s3"),
      "aws4_request",
    );
    this.#keyCache = { date, key: k };
    return k;
  }

  #sign(
    method: string,
    key: string,
    query: Record<string, string>,
    body: Uint8Array | undefined,
    extra: Record<string, string> = {},
  ): { url: string; headers: Record<string, string> } {
    const now = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
    const date = now.slice(0, 8);
    const path = `/${uriEncode(this.bucket, false)}${key ? "/" + uriEncode(key, true) : ""}`;
    // Sorted once encoded, as SigV4 says ("a%2F" before "a.").
    const qs = Object.keys(query).map((k) => [uriEncode(k, false), uriEncode(query[k], false)])
      .sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
      .map(([k, v]) => `${k}=${v}`).join("&");
    const payload = body ? sha256Hex(body) : EMPTY_SHA256;
    const headers: Record<string, string> = {
      ...extra,
      "x-amz-content-sha256": payload,
      "x-amz-date": now,
    };
    const signed: [string, string][] = [
      ["host", this.#host],
      ["x-amz-content-sha256", payload],
      ["x-amz-date", now],
    ];
    const canonical = [
      method,
      path,
      qs,
      signed.map(([k, v]) => `${k}:${v}\n`).join(""),
      signed.map(([k]) => k).join(";"),
      payload,
    ].join("\n");
    const scope = `${date}/${this.#o.region}/s3/aws4_request`;
    const toSign = ["AWS4-HMAC-SHA256", now, scope, sha256Hex(canonical)].join("\n");
    const signature = createHmac("sha256", this.#signingKey(date)).update(toSign).digest("hex");
    headers.authorization = `AWS4-HMAC-SHA256 Credential=${this.#o.accessKey}/${scope}, ` +
      `SignedHeaders=${signed.map(([k]) => k).join(";")}, Signature=${signature}`;
    return { url: `${this.#base}${path}${qs ? "?" + qs : ""}`, headers };
  }

  /** PutObject; `ifNoneMatch`: refused (S3Error 412) when the key exists. */
  async put(key: string, body: Uint8Array, opts: { ifNoneMatch?: boolean } = {}): Promise<void> {
    const res = await this.request("PUT", key, {
      body,
      headers: opts.ifNoneMatch ? { "if-none-match": "*" } : {},
    });
    await res.body?.cancel();
  }

  /**
   * GetObject of bytes [start, end), its body streamed (read it with
   * bodyPieces); null when the key does not exist.
   */
  async get(key: string, range?: { start: number; end: number }): Promise<Response | null> {
    const res = await this.request("GET", key, {
      headers: range ? { range: `bytes=${range.start}-${range.end - 1}` } : {},
      accept: [404, 416],
      stream: true,
    });
    if (res.status === 404) {
      await res.body?.cancel();
      return null;
    }
    return res;
  }

  /** HeadObject: size and time, or null when the key does not exist. */
  async head(key: string): Promise<S3Object | null> {
    const res = await this.request("HEAD", key, { accept: [404] });
    await res.body?.cancel();
    if (res.status === 404) return null;
    return {
      key,
      size: Number(res.headers.get("content-length") ?? 0),
      modified: Date.parse(res.headers.get("last-modified") ?? "") || 0,
      etag: (res.headers.get("etag") ?? "").replaceAll('"', ""),
    };
  }

  /** ListObjectsV2 of every key under `prefix`, a page (up to 1,000) at a time. */
  async *list(prefix: string): AsyncGenerator<S3Object[]> {
    let token: string | null = null;
    for (;;) {
      const query: Record<string, string> = { "list-type": "2", prefix, "max-keys": "1000" };
      if (token) query["continuation-token"] = token;
      const xml = await (await this.request("GET", "", { query })).text();
      // A listing read wrong is worse than none: a key missing from it, or
      // listed as written at 0, is a blob GC may take for an old stray.
      const bad = (why: string) =>
        new KeepError(
          "unavailable",
          `Cannot list s3://${this.bucket}/${prefix}: the store's answer ${why}`,
        );
      if (!/<ListBucketResult[\s>]/.test(xml) || !/<\/ListBucketResult>\s*$/.test(xml)) {
        throw bad("is not a whole ListBucketResult");
      }
      const page: S3Object[] = [];
      for (const m of xml.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)) {
        const key = tag(m[1], "Key");
        const size = tag(m[1], "Size");
        const modified = Date.parse(tag(m[1], "LastModified") ?? "");
        if (key === null || !/^\d+$/.test(size ?? "") || !Number.isFinite(modified)) {
          throw bad(`has an object without a readable Key, Size and LastModified (${key ?? "?"})`);
        }
        page.push({ key, size: Number(size), modified });
      }
      if (page.length !== (xml.match(/<Contents>/g)?.length ?? 0)) {
        throw bad("has a Contents element cut short");
      }
      const truncated = tag(xml, "IsTruncated");
      if (truncated !== "true" && truncated !== "false") {
        throw bad("has no IsTruncated true or false");
      }
      token = truncated === "true" ? tag(xml, "NextContinuationToken") : null;
      if (truncated === "true" && !token) throw bad("is truncated with no NextContinuationToken");
      yield page;
      if (!token) return;
    }
  }

  /** DeleteObjects (up to 1,000 keys); keys already gone are no error. */
  async deleteMany(keys: string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += 1000) {
      const xml = `<Delete><Quiet>true</Quiet>${
        keys.slice(i, i + 1000).map((k) => `<Object><Key>${xmlEscape(k)}</Key></Object>`).join(
          "",
        )
      }</Delete>`;
      const body = new TextEncoder().encode(xml);
      const md5 = createHash("md5").update(body).digest("base64");
      const text = await (await this.request("POST", "", {
        query: { delete: "" },
        body,
        headers: { "content-md5": md5, "content-type": "application/xml" },
      })).text();
      const err = /<Error>([\s\S]*?)<\/Error>/.exec(text);
      if (err) {
        throw new S3Error(
          500,
          tag(err[1], "Code") ?? "DeleteError",
          `Cannot delete ${tag(err[1], "Key")}: ${tag(err[1], "Message") ?? tag(err[1], "Code")}`,
        );
      }
      // Quiet: a whole DeleteResult with no Error is the only word that all went.
      if (!/<DeleteResult\b[^>]*\/>|<\/DeleteResult>\s*$/.test(text)) {
        const n = Math.min(1000, keys.length - i);
        throw new KeepError(
          "unavailable",
          `Cannot delete ${keys[i]}${n > 1 ? ` and ${n - 1} more` : ""}: ` +
            `the store's answer is not a whole DeleteResult`,
        );
      }
    }
  }

  /** CreateMultipartUpload: the upload id. */
  async createMultipart(key: string): Promise<string> {
    const xml = await (await this.request("POST", key, { query: { uploads: "" } })).text();
    const id = tag(xml, "UploadId");
    if (!id) throw new KeepError("unavailable", `Cannot start a multipart upload of ${key}`);
    return id;
  }

  /** UploadPart (parts are numbered from 1): its ETag. */
  async uploadPart(key: string, uploadId: string, part: number, body: Uint8Array): Promise<string> {
    const res = await this.request("PUT", key, {
      query: { partNumber: String(part), uploadId },
      body,
    });
    await res.body?.cancel();
    return res.headers.get("etag") ?? "";
  }

  async completeMultipart(key: string, uploadId: string, etags: string[]): Promise<void> {
    const xml = `<CompleteMultipartUpload>${
      etags.map((e, i) =>
        `<Part><PartNumber>${i + 1}</PartNumber><ETag>${xmlEscape(e)}</ETag></Part>`
      )
        .join("")
    }</CompleteMultipartUpload>`;
    const text = await (await this.request("POST", key, {
      query: { uploadId },
      body: new TextEncoder().encode(xml),
      headers: { "content-type": "application/xml" },
    })).text();
    // S3 may answer 200 with an error in the body.
    if (/<Error>/.test(text)) {
      const code = tag(text, "Code") ?? "InternalError";
      const message = tag(text, "Message");
      throw new S3Error(
        500,
        code,
        `Cannot complete ${key}: ${code}${message ? ` (${message})` : ""}`,
      );
    }
    // Nor is an answer cut short a completed upload.
    if (!/<\/CompleteMultipartUploadResult>\s*$/.test(text)) {
      throw new KeepError(
        "unavailable",
        `Cannot complete ${key}: the store's answer is not a whole CompleteMultipartUploadResult`,
      );
    }
  }

  async abortMultipart(key: string, uploadId: string): Promise<void> {
    const res = await this.request("DELETE", key, { query: { uploadId }, accept: [404] });
    await res.body?.cancel();
  }
}
