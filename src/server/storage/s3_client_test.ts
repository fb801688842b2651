/**
 * Unit tests of S3Client. Signing is checked two ways: a reference SigV4
 * written out here (node:crypto HMAC chain, its own RFC 3986 encoder) is
 * first held to the vectors AWS publishes, then a scripted HTTP peer on
 * 127.0.0.1 checks every request the client sends against that reference,
 * from the bytes on the wire, as a store would. Two of AWS's S3 examples
 * (GET ?lifecycle, GET ?max-keys=2&prefix=J) use only the headers this
 * client signs, so those are driven through the client itself (fixed clock,
 * the request captured before it leaves).
 */

import { createHash, createHmac } from "node:crypto";
import { KeepError } from "../../errors.ts";
import { assert, assertEquals, assertMatch, assertRejects } from "../../../tests/assert.ts";
import { OBJECT_REQUESTS, S3Client, S3Error, type S3Options } from "./s3_client.ts";

// ---------------------------------------------------------------------------
// Reference SigV4, independent of the client's code.

const ACCESS = "AKIAIOSFODNN7EXAMPLE";
/** The secret of AWS's S3 examples (the IAM signing-key example has "+" where this has "/"). */
const SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

function refSigningKey(secret: string, date: string, region: string, service: string): Buffer {
  const kDate = createHmac("sha256", "AWS4" + secret).update(date).digest();
  const kRegion = createHmac("sha256", kDate).update(region).digest();
  const kService = createHmac("sha256", kRegion).update(service).digest();
  return createHmac("sha256", kService).update("aws4_request").digest();
}

/** RFC 3986 encoding of one component (encodeURIComponent leaves !'()* alone). */
function rfc3986(s: string): string {
  return encodeURIComponent(s).replace(
    /[!'()*]/g,
    (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase(),
  );
}

interface RefRequest {
  method: string;
  /** Decoded path, e.g. "/test$file.text". */
  path: string;
  /** Decoded query parameters. */
  query: [string, string][];
  /** The headers to sign, any case. */
  headers: Record<string, string>;
  payloadHash: string;
  amzDate: string;
  region: string;
}

function refCanonicalRequest(r: RefRequest): string {
  const path = r.path.split("/").map(rfc3986).join("/");
  const query = r.query.map(([k, v]) => [rfc3986(k), rfc3986(v)])
    .sort(([a, av], [b, bv]) => a < b ? -1 : a > b ? 1 : av < bv ? -1 : av > bv ? 1 : 0)
    .map(([k, v]) => `${k}=${v}`).join("&");
  const lower = new Map(
    Object.entries(r.headers).map(([k, v]) => [k.toLowerCase(), v.trim().replace(/\s+/g, " ")]),
  );
  const names = [...lower.keys()].sort();
  return [
    r.method,
    path,
    query,
    names.map((n) => `${n}:${lower.get(n)}\n`).join(""),
    names.join(";"),
    r.payloadHash,
  ].join("\n");
}

function refStringToSign(r: RefRequest, service = "s3"): string {
  const scope = `${r.amzDate.slice(0, 8)}/${r.region}/${service}/aws4_request`;
  return ["AWS4-HMAC-SHA256", r.amzDate, scope, sha256Hex(refCanonicalRequest(r))].join("\n");
}

function refSignature(r: RefRequest, secret: string): string {
  const key = refSigningKey(secret, r.amzDate.slice(0, 8), r.region, "s3");
  return createHmac("sha256", key).update(refStringToSign(r)).digest("hex");
}

// ---------------------------------------------------------------------------
// A scripted peer: answers as the test says and checks each request's signature.

interface Seen {
  method: string;
  /** The request target's path as sent (still percent-encoded). */
  path: string;
  /** The query string as sent, without "?". */
  query: string;
  headers: Headers;
  body: Uint8Array;
  /** "ok", or why the Authorization header does not sign this request. */
  auth: string;
}

type Script = (req: Seen, n: number, closing: Promise<void>) => Response | Promise<Response>;

interface Peer extends AsyncDisposable {
  endpoint: string;
  seen: Seen[];
}

const REGION = "eu-test-1";
const BUCKET = "bkt";

/** What a store would conclude from the wire: "ok" or the mismatch. */
function checkAuth(s: Seen, secret = SECRET): string {
  const m =
    /^AWS4-HMAC-SHA256 Credential=([^/,]+)\/(\d{8})\/([^/,]+)\/s3\/aws4_request, SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$/
      .exec(s.headers.get("authorization") ?? "");
  if (!m) return `no SigV4 Authorization header: ${s.headers.get("authorization")}`;
  const [, access, date, region, signedList, signature] = m;
  const amzDate = s.headers.get("x-amz-date") ?? "";
  if (access !== ACCESS) return `access key ${access}`;
  if (region !== REGION) return `region ${region}`;
  if (!/^\d{8}T\d{6}Z$/.test(amzDate) || !amzDate.startsWith(date)) {
    return `x-amz-date ${amzDate} does not match the scope's ${date}`;
  }
  if (
    Math.abs(
      Date.parse(amzDate.replace(/^(....)(..)(..)T(..)(..)(..)Z$/, "$1-$2-$3T$4:$5:$6Z")) -
        Date.now(),
    ) > 60_000
  ) {
    return `x-amz-date ${amzDate} is not now`;
  }
  const payloadHash = s.headers.get("x-amz-content-sha256") ?? "";
  if (payloadHash !== sha256Hex(s.body)) return "x-amz-content-sha256 is not the body's SHA-256";
  const names = signedList.split(";");
  for (const n of ["host", "x-amz-date", "x-amz-content-sha256"]) {
    if (!names.includes(n)) return `${n} is not signed`;
  }
  const headers: Record<string, string> = {};
  for (const n of names) headers[n] = s.headers.get(n) ?? "";
  const dec = decodeURIComponent;
  const ref: RefRequest = {
    method: s.method,
    path: s.path.split("/").map(dec).join("/"),
    query: s.query === "" ? [] : s.query.split("&").map((p) => {
      const i = p.indexOf("=");
      return i < 0 ? [dec(p), ""] : [dec(p.slice(0, i)), dec(p.slice(i + 1))];
    }),
    headers,
    payloadHash,
    amzDate,
    region,
  };
  const want = refSignature(ref, secret);
  if (names.join(";") !== [...names].sort().join(";")) return "SignedHeaders are not sorted";
  return signature === want
    ? "ok"
    : `signature ${signature}, expected ${want} for:\n${refCanonicalRequest(ref)}`;
}

function servePeer(script: Script): Peer {
  const seen: Seen[] = [];
  let release!: () => void;
  const closing = new Promise<void>((r) => release = r);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (req) => {
      const target = req.url.slice(new URL(req.url).origin.length);
      const q = target.indexOf("?");
      const s: Seen = {
        method: req.method,
        path: q < 0 ? target : target.slice(0, q),
        query: q < 0 ? "" : target.slice(q + 1),
        headers: req.headers,
        body: new Uint8Array(await req.arrayBuffer()),
        auth: "",
      };
      s.auth = checkAuth(s);
      seen.push(s);
      return await script(s, seen.length - 1, closing);
    },
  );
  return {
    endpoint: `http://127.0.0.1:${server.addr.port}`,
    seen,
    async [Symbol.asyncDispose]() {
      release();
      await server.shutdown();
    },
  };
}

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/**
 * A TCP peer for what an HTTP server will not do: hold a request
 * unanswered, or cut a body short. `onConn` gets the connection once the
 * request's head is read; the connection closes when it returns.
 */
function rawPeer(
  onConn: (conn: Deno.Conn, closing: Promise<void>) => Promise<void>,
): Peer & { connections: () => number } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let release!: () => void;
  const closing = new Promise<void>((r) => release = r);
  const open = new Set<Deno.Conn>();
  const handlers: Promise<void>[] = [];
  let count = 0;
  const serve = async (conn: Deno.Conn) => {
    open.add(conn);
    try {
      let head = "";
      const buf = new Uint8Array(4096);
      while (!head.includes("\r\n\r\n")) {
        const n = await conn.read(buf);
        if (n === null) return;
        head += dec(buf.subarray(0, n));
      }
      count++;
      await onConn(conn, closing);
    } catch {
      /* the client went away */
    } finally {
      open.delete(conn);
      try {
        conn.close();
      } catch { /* closed */ }
    }
  };
  const accepting = (async () => {
    for await (const conn of listener) handlers.push(serve(conn));
  })();
  return {
    endpoint: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    seen: [],
    connections: () => count,
    async [Symbol.asyncDispose]() {
      release();
      listener.close();
      await accepting.catch(() => {});
      for (const c of open) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await Promise.all(handlers);
    },
  };
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let at = 0; at < data.length;) at += await conn.write(data.subarray(at));
}

function client(endpoint: string, more: Partial<S3Options> = {}): S3Client {
  return new S3Client({
    endpoint,
    region: REGION,
    accessKey: ACCESS,
    secretKey: SECRET,
    bucket: BUCKET,
    ...more,
  });
}

function assertSigned(peer: Peer): void {
  assert(peer.seen.length > 0, "the peer saw no request");
  for (const s of peer.seen) assertEquals(s.auth, "ok", `${s.method} ${s.path}?${s.query}`);
}

const xml = (body: string, status = 200) =>
  new Response(body, { status, headers: { "content-type": "application/xml" } });

function contents(key: string, size = 1, modified = "2024-01-02T03:04:05.000Z"): string {
  return `<Contents><Key>${key}</Key><LastModified>${modified}</LastModified>` +
    `<ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag><Size>${size}</Size>` +
    `<StorageClass>STANDARD</StorageClass></Contents>`;
}

function listXml(items: string[], truncated = false, token?: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n` +
    `<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>${BUCKET}</Name>` +
    `<Prefix>p/</Prefix><KeyCount>${items.length}</KeyCount><MaxKeys>1000</MaxKeys>` +
    `<IsTruncated>${truncated}</IsTruncated>` +
    (token ? `<NextContinuationToken>${token}</NextContinuationToken>` : "") +
    items.join("") + `</ListBucketResult>`;
}

function errorXml(code: string, message: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code>` +
    `<Message>${message}</Message><RequestId>tx1</RequestId></Error>`;
}

/** XML character data as a store reads it (this test's own decoder). */
function xmlDecode(s: string): string {
  return s.replace(
    /&(#x[0-9a-fA-F]+|#\d+|lt|gt|amp|quot|apos);/g,
    (_, e: string) =>
      e[0] === "#"
        ? String.fromCodePoint(e[1] === "x" ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10))
        : { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" }[e]!,
  );
}

async function allPages(
  c: S3Client,
  prefix: string,
): Promise<{ key: string; size: number; modified: number }[][]> {
  const pages = [];
  for await (const page of c.list(prefix)) pages.push(page);
  return pages;
}

// ---------------------------------------------------------------------------
// 1. Signature Version 4

Deno.test("reference SigV4 reproduces AWS's published signing key and S3 example signatures", () => {
  // "Examples of how to derive a signing key for Signature Version 4" (IAM).
  assertEquals(
    refSigningKey("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
      .toString("hex"),
    "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d",
  );
  // "Signature Calculations for the Authorization Header: Transferring
  // Payload in a Single Chunk": the canonical request of GET Object, as the
  // page prints it, and the hashes and signatures it gives.
  const host = "examplebucket.s3.amazonaws.com";
  const amzDate = "20130524T000000Z";
  const getObject: RefRequest = {
    method: "GET",
    path: "/test.txt",
    query: [],
    headers: {
      Host: host,
      Range: "bytes=0-9",
      "x-amz-content-sha256": EMPTY_SHA256,
      "x-amz-date": amzDate,
    },
    payloadHash: EMPTY_SHA256,
    amzDate,
    region: "us-east-1",
  };
  assertEquals(
    refCanonicalRequest(getObject),
    "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n" +
      `x-amz-content-sha256:${EMPTY_SHA256}\nx-amz-date:20130524T000000Z\n\n` +
      `host;range;x-amz-content-sha256;x-amz-date\n${EMPTY_SHA256}`,
  );
  assertEquals(
    refStringToSign(getObject),
    "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n" +
      "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972",
  );
  assertEquals(
    refSignature(getObject, SECRET),
    "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
  );

  const payload = sha256Hex("Welcome to Amazon S3.");
  assertEquals(payload, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  const putObject: RefRequest = {
    method: "PUT",
    path: "/test$file.text",
    query: [],
    headers: {
      Host: host,
      Date: "Fri, 24 May 2013 00:00:00 GMT",
      "x-amz-date": amzDate,
      "x-amz-storage-class": "REDUCED_REDUNDANCY",
      "x-amz-content-sha256": payload,
    },
    payloadHash: payload,
    amzDate,
    region: "us-east-1",
  };
  assertMatch(refCanonicalRequest(putObject), /^PUT\n\/test%24file\.text\n\ndate:/);
  assertEquals(
    sha256Hex(refCanonicalRequest(putObject)),
    "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d",
  );
  assertEquals(
    refSignature(putObject, SECRET),
    "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
  );

  const bucketGet = (query: [string, string][]): RefRequest => ({
    method: "GET",
    path: "/",
    query,
    headers: { Host: host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amzDate },
    payloadHash: EMPTY_SHA256,
    amzDate,
    region: "us-east-1",
  });
  assertEquals(
    sha256Hex(refCanonicalRequest(bucketGet([["lifecycle", ""]]))),
    "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca",
  );
  assertEquals(
    refSignature(bucketGet([["lifecycle", ""]]), SECRET),
    "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
  );
  // Given out of order: the canonical query is sorted.
  const list = bucketGet([["prefix", "J"], ["max-keys", "2"]]);
  assertMatch(refCanonicalRequest(list), /^GET\n\/\nmax-keys=2&prefix=J\n/);
  assertEquals(
    sha256Hex(refCanonicalRequest(list)),
    "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7",
  );
  assertEquals(
    refSignature(list, SECRET),
    "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
  );
});

Deno.test("S3Client signs AWS's GET ?lifecycle and GET ?max-keys=2&prefix=J examples to their published signatures", async () => {
  // Both examples sign exactly host, x-amz-content-sha256 and x-amz-date,
  // as this client does; an empty bucket name makes its path-style path
  // "/", the examples' virtual-host path. The clock is fixed at the
  // examples' time and the request is captured instead of sent.
  const RealDate = globalThis.Date;
  const realFetch = globalThis.fetch;
  const sent: { url: string; method: string; headers: Headers }[] = [];
  let clock = "2013-05-24T00:00:00Z";
  class FixedDate extends RealDate {
    constructor(value?: string | number | Date) {
      super(value ?? clock);
    }
  }
  globalThis.Date = FixedDate as DateConstructor;
  globalThis.fetch = ((input: RequestInfo | URL, init?: RequestInit) => {
    sent.push({
      url: String(input),
      method: init?.method ?? "GET",
      headers: new Headers(init?.headers),
    });
    return Promise.resolve(new Response("<ok/>"));
  }) as typeof fetch;
  try {
    const c = new S3Client({
      endpoint: "https://examplebucket.s3.amazonaws.com",
      region: "us-east-1",
      accessKey: ACCESS,
      secretKey: SECRET,
      bucket: "",
    });
    await (await c.request("GET", "", { query: { lifecycle: "" } })).text();
    await (await c.request("GET", "", { query: { prefix: "J", "max-keys": "2" } })).text();
    // A day later: a new signing key, not the cached one.
    clock = "2013-05-25T00:00:01Z";
    await (await c.request("GET", "", { query: { lifecycle: "" } })).text();
  } finally {
    globalThis.Date = RealDate;
    globalThis.fetch = realFetch;
  }
  const nextDay = sent.pop()!;
  assertEquals(sent.map((s) => `${s.method} ${s.url}`), [
    "GET https://examplebucket.s3.amazonaws.com/?lifecycle=",
    "GET https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J",
  ]);
  const expected = [
    "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
    "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
  ];
  for (const [i, s] of sent.entries()) {
    assertEquals(s.headers.get("x-amz-date"), "20130524T000000Z");
    assertEquals(s.headers.get("x-amz-content-sha256"), EMPTY_SHA256);
    assertEquals(
      s.headers.get("authorization"),
      "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, " +
        `SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=${expected[i]}`,
    );
  }
  const amzDate = "20130525T000001Z";
  assertEquals(nextDay.headers.get("x-amz-date"), amzDate);
  const want = refSignature({
    method: "GET",
    path: "/",
    query: [["lifecycle", ""]],
    headers: {
      host: "examplebucket.s3.amazonaws.com",
      "x-amz-content-sha256": EMPTY_SHA256,
      "x-amz-date": amzDate,
    },
    payloadHash: EMPTY_SHA256,
    amzDate,
    region: "us-east-1",
  }, SECRET);
  assertMatch(
    nextDay.headers.get("authorization")!,
    new RegExp(`Credential=${ACCESS}/20130525/us-east-1/s3/aws4_request, .*Signature=${want}$`),
  );
});

Deno.test("S3Client signs PUT, GET, HEAD, POST and DELETE so that a verifying peer accepts them", async () => {
  await using peer = servePeer((s) => {
    if (s.method === "HEAD") return new Response(null, { headers: { "content-length": "5" } });
    if (s.method === "POST") {
      return xml(
        "<InitiateMultipartUploadResult><UploadId>u1</UploadId></InitiateMultipartUploadResult>",
      );
    }
    if (s.method === "DELETE") return new Response(null, { status: 204 });
    return new Response(s.method === "GET" ? "hello" : null);
  });
  const c = client(peer.endpoint);
  await c.put("dir/a.bin", enc("hello"));
  assertEquals(dec((await c.getSmall("dir/a.bin"))!), "hello");
  assertEquals((await c.head("dir/a.bin"))?.size, 5);
  assertEquals(await c.createMultipart("dir/b.bin"), "u1");
  await c.abortMultipart("dir/b.bin", "u1");
  assertEquals(peer.seen.map((s) => `${s.method} ${s.path}?${s.query}`), [
    "PUT /bkt/dir/a.bin?",
    "GET /bkt/dir/a.bin?",
    "HEAD /bkt/dir/a.bin?",
    "POST /bkt/dir/b.bin?uploads=",
    "DELETE /bkt/dir/b.bin?uploadId=u1",
  ]);
  assertSigned(peer);
  const put = peer.seen[0];
  assertEquals(dec(put.body), "hello");
  assertEquals(put.headers.get("x-amz-content-sha256"), sha256Hex("hello"));
  assertEquals(peer.seen[1].headers.get("x-amz-content-sha256"), EMPTY_SHA256);
  assertMatch(
    put.headers.get("authorization")!,
    new RegExp(`Credential=${ACCESS}/\\d{8}/${REGION}/s3/aws4_request, `),
  );
});

Deno.test("the verifying peer refuses a request signed with another secret (the check can fail)", async () => {
  await using peer = servePeer(() => new Response(null));
  await client(peer.endpoint, { secretKey: "not-the-secret" }).put("k", enc("x"));
  assertEquals(peer.seen.length, 1);
  assertMatch(peer.seen[0].auth, /^signature [0-9a-f]{64}, expected [0-9a-f]{64}/);
  assertEquals(checkAuth(peer.seen[0], "not-the-secret"), "ok");
});

// ---------------------------------------------------------------------------
// 2. Key and query encoding

Deno.test("S3Client sends keys percent-encoded per RFC 3986, '/' kept, and signs them as sent", async () => {
  await using peer = servePeer(() => new Response(null));
  const c = client(peer.endpoint);
  const cases: [string, string][] = [
    ["a b", "/bkt/a%20b"],
    ["a+b", "/bkt/a%2Bb"],
    ["tilde~-_.ok", "/bkt/tilde~-_.ok"],
    ["100%", "/bkt/100%25"],
    ["%41", "/bkt/%2541"],
    ["star*", "/bkt/star%2A"],
    ["k=v&w", "/bkt/k%3Dv%26w"],
    ["dir/sub//x/", "/bkt/dir/sub//x/"],
    ["é日本🎉", "/bkt/%C3%A9%E6%97%A5%E6%9C%AC%F0%9F%8E%89"],
    ["q?h#f", "/bkt/q%3Fh%23f"],
    ["!'()$,;:@[]", "/bkt/%21%27%28%29%24%2C%3B%3A%40%5B%5D"],
    ['<"\\^`{|}>', "/bkt/%3C%22%5C%5E%60%7B%7C%7D%3E"],
    ["a..b/.hidden/...", "/bkt/a..b/.hidden/..."],
  ];
  for (const [key] of cases) await c.put(key, enc(key));
  assertEquals(peer.seen.map((s) => s.path), cases.map(([, wire]) => wire));
  assertSigned(peer);
  for (const [i, [key]] of cases.entries()) {
    assertEquals(decodeURIComponent(peer.seen[i].path.slice("/bkt/".length)), key);
    assertEquals(dec(peer.seen[i].body), key);
  }
});

Deno.test("S3Client refuses a key with a '.' or '..' segment instead of sending another path than it signed", async () => {
  // fetch resolves dot segments ("/bkt/a/../b" goes out as "/bkt/b"), so
  // such a key can be neither sent nor signed as it is.
  await using peer = servePeer(() => new Response(null));
  const c = client(peer.endpoint);
  for (const key of ["a/../b", "../x", "./x", "x/.", "x/..", "a/./b"]) {
    await assertRejects(() => c.put(key, enc("x")), KeepError, /segment/);
  }
  await assertRejects(() => c.getSmall("p/../keep-store.json"), KeepError, /segment/);
  assertEquals(peer.seen.length, 0);
});

Deno.test("S3Client.list sends prefix and continuation token encoded, sorted and signed", async () => {
  const prefix = "dir with space/+plus/é*~";
  await using peer = servePeer((_, n) =>
    xml(n === 0 ? listXml([contents("k1")], true, "1/a+b=c==&amp;x") : listXml([contents("k2")]))
  );
  const pages = await allPages(client(peer.endpoint), prefix);
  assertEquals(pages.map((p) => p.map((o) => o.key)), [["k1"], ["k2"]]);
  const wirePrefix = "prefix=dir%20with%20space%2F%2Bplus%2F%C3%A9%2A~";
  assertEquals(peer.seen.map((s) => `${s.method} ${s.path}?${s.query}`), [
    `GET /bkt?list-type=2&max-keys=1000&${wirePrefix}`,
    `GET /bkt?continuation-token=1%2Fa%2Bb%3Dc%3D%3D%26x&list-type=2&max-keys=1000&${wirePrefix}`,
  ]);
  assertSigned(peer);
});

Deno.test("S3Client.request sorts query parameters after encoding them, as SigV4 says", async () => {
  // Raw, "a." sorts before "a/"; encoded, "a%2F" sorts before "a.".
  await using peer = servePeer(() => new Response(null));
  await client(peer.endpoint).request("GET", "k", {
    query: { "a.": "1", "a/": "2", "a~": "3", A: "x y" },
  });
  assertEquals(peer.seen[0].query, "A=x%20y&a%2F=2&a.=1&a~=3");
  assertSigned(peer);
});

// ---------------------------------------------------------------------------
// 3. XML answers

Deno.test("S3Client.list follows NextContinuationToken and decodes entity-escaped keys", async () => {
  await using peer = servePeer((_, n) =>
    xml(
      n === 0
        ? listXml(
          [
            contents("p/a&amp;b", 10, "2024-01-02T03:04:05.000Z"),
            contents("p/&lt;x&gt;", 0),
            contents("p/&#x41;&#66;", 3),
            contents("p/q&quot;&apos;", 4),
            contents("p/&amp;lt;", 5),
            contents("p/&#x1F389;", 6),
          ],
          true,
          "t1",
        )
        : listXml([contents("p/z", 12345678901, "2023-12-31T23:59:59Z")]),
    )
  );
  const pages = await allPages(client(peer.endpoint), "p/");
  assertEquals(pages, [
    [
      { key: "p/a&b", size: 10, modified: Date.UTC(2024, 0, 2, 3, 4, 5) },
      { key: "p/<x>", size: 0, modified: Date.UTC(2024, 0, 2, 3, 4, 5) },
      { key: "p/AB", size: 3, modified: Date.UTC(2024, 0, 2, 3, 4, 5) },
      { key: "p/q\"'", size: 4, modified: Date.UTC(2024, 0, 2, 3, 4, 5) },
      { key: "p/&lt;", size: 5, modified: Date.UTC(2024, 0, 2, 3, 4, 5) },
      { key: "p/🎉", size: 6, modified: Date.UTC(2024, 0, 2, 3, 4, 5) },
    ],
    [{ key: "p/z", size: 12345678901, modified: Date.UTC(2023, 11, 31, 23, 59, 59) }],
  ]);
  assertEquals(peer.seen.length, 2);
  assertMatch(peer.seen[1].query, /^continuation-token=t1&/);
});

Deno.test("S3Client.list yields one empty page for an empty result", async () => {
  await using peer = servePeer(() =>
    xml(
      `<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
        `<Name>bkt</Name><Prefix/><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>` +
        `<IsTruncated>false</IsTruncated></ListBucketResult>\n`,
    )
  );
  assertEquals(await allPages(client(peer.endpoint), ""), [[]]);
  assertEquals(peer.seen.length, 1);
});

Deno.test("S3Client.list reads keys in CDATA sections as written", async () => {
  await using peer = servePeer(() =>
    xml(listXml([contents("<![CDATA[p/a&b<c>]]>"), contents("p/x<![CDATA[&amp;]]>&amp;y")]))
  );
  const [page] = await allPages(client(peer.endpoint), "p/");
  assertEquals(page.map((o) => o.key), ["p/a&b<c>", "p/x&amp;&y"]);
});

Deno.test("S3Client.list refuses truncated, incomplete or odd listings instead of yielding wrong keys", async () => {
  const whole = listXml([contents("p/a")]);
  const notWhole = /is not a whole ListBucketResult$/;
  const unreadable = /has an object without a readable Key, Size and LastModified/;
  const cases: [string, string, RegExp][] = [
    ["cut inside Contents", whole.slice(0, whole.indexOf("<Size>")), notWhole],
    ["cut after Contents", whole.slice(0, whole.indexOf("</ListBucketResult>")), notWhole],
    ["empty body", "", notWhole],
    ["an Error in a 200", errorXml("InternalError", "We encountered an internal error"), notWhole],
    ["HTML", "<html><body>Gateway</body></html>", notWhole],
    [
      "Contents never closed",
      listXml(["<Contents><Key>p/a</Key>"]),
      /has a Contents element cut short$/,
    ],
    [
      "no Key",
      listXml([
        "<Contents><Size>1</Size><LastModified>2024-01-02T03:04:05Z</LastModified></Contents>",
      ]),
      unreadable,
    ],
    [
      "no Size",
      listXml([
        "<Contents><Key>p/a</Key><LastModified>2024-01-02T03:04:05Z</LastModified></Contents>",
      ]),
      unreadable,
    ],
    ["Size not a number", listXml([contents("p/a").replace("<Size>1<", "<Size>1e3<")]), unreadable],
    ["no LastModified", listXml(["<Contents><Key>p/a</Key><Size>1</Size></Contents>"]), unreadable],
    ["LastModified not a time", listXml([contents("p/a", 1, "yesterday")]), unreadable],
    ["unknown entity in Key", listXml([contents("p/a&nbsp;b")]), unreadable],
    ["Object.prototype name as entity", listXml([contents("p/a&constructor;b")]), unreadable],
    ["bare & in Key", listXml([contents("p/a&b")]), unreadable],
    ["character reference to no character", listXml([contents("p/a&#xD800;&#0;")]), unreadable],
    ["element inside Key", listXml([contents("p/<b>x</b>")]), unreadable],
    [
      "IsTruncated without a token",
      listXml([contents("p/a")], true),
      /is truncated with no NextContinuationToken$/,
    ],
    ["no IsTruncated", whole.replace("<IsTruncated>false</IsTruncated>", ""), /has no IsTruncated/],
    [
      "IsTruncated neither true nor false",
      whole.replace(">false<", ">maybe<"),
      /has no IsTruncated/,
    ],
  ];
  await using peer = servePeer((_, n) => xml(cases[n][1]));
  const c = client(peer.endpoint, { attempts: 1 });
  for (const [what, , reason] of cases) {
    const err = await assertRejects(
      () => allPages(c, "p/"),
      KeepError,
      /^Cannot list s3:\/\/bkt\/p\/: the store's answer /,
    );
    assertEquals(err.code, "unavailable", what);
    assertMatch(err.message, reason, what);
  }
  assertEquals(peer.seen.length, cases.length);
});

Deno.test("S3Client turns an error answer into S3Error with the store's Code and Message", async () => {
  await using peer = servePeer((_, n) =>
    [
      () => xml(errorXml("NoSuchBucket", "The specified bucket does not exist"), 404),
      () => xml(errorXml("AccessDenied", "Access &lt;Denied&gt; &amp; logged"), 403),
      () => new Response(null, { status: 400 }),
      () => xml("<Error><Code>Half", 409),
    ][n]()
  );
  const c = client(peer.endpoint);
  const e1 = await assertRejects(() => allPages(c, "p/"), S3Error);
  assertEquals([e1.status, e1.code], [404, "NoSuchBucket"]);
  assertEquals(e1.message, "GET s3://bkt/: NoSuchBucket (The specified bucket does not exist)");
  const e2 = await assertRejects(() => c.put("k", enc("x")), S3Error);
  assertEquals([e2.status, e2.code, e2.message], [
    403,
    "AccessDenied",
    "PUT s3://bkt/k: AccessDenied (Access <Denied> & logged)",
  ]);
  const e3 = await assertRejects(() => c.head("k"), S3Error);
  assertEquals([e3.status, e3.code], [400, "HTTP 400"]);
  const e4 = await assertRejects(() => c.getSmall("k"), S3Error);
  assertEquals([e4.status, e4.code, e4.message], [409, "HTTP 409", "GET s3://bkt/k: HTTP 409"]);
  assertEquals(peer.seen.length, 4, "4xx answers are not retried");
});

Deno.test("S3Client multipart: UploadId read and carried encoded, parts' ETags sent back escaped", async () => {
  await using peer = servePeer((s) => {
    if (s.method === "POST" && s.query === "uploads=") {
      return xml(
        `<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult><Bucket>bkt</Bucket>` +
          `<Key>big</Key><UploadId>2~x&amp;y/z+=</UploadId></InitiateMultipartUploadResult>`,
      );
    }
    if (s.method === "PUT") {
      const part = /partNumber=(\d+)/.exec(s.query)![1];
      return new Response(null, { headers: { etag: `"etag-${part}&"` } });
    }
    if (s.method === "POST") {
      return xml(
        `<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult><Location>x</Location>` +
          `<Bucket>bkt</Bucket><Key>big</Key><ETag>"e-2"</ETag></CompleteMultipartUploadResult>`,
      );
    }
    return new Response(null, { status: 204 });
  });
  const c = client(peer.endpoint);
  const id = await c.createMultipart("big");
  assertEquals(id, "2~x&y/z+=");
  const etags = [
    await c.uploadPart("big", id, 1, enc("one")),
    await c.uploadPart("big", id, 2, enc("two")),
  ];
  assertEquals(etags, ['"etag-1&"', '"etag-2&"']);
  await c.completeMultipart("big", id, etags);
  await c.abortMultipart("big", id);
  const wireId = "uploadId=2~x%26y%2Fz%2B%3D";
  assertEquals(peer.seen.map((s) => `${s.method} ${s.path}?${s.query}`), [
    "POST /bkt/big?uploads=",
    `PUT /bkt/big?partNumber=1&${wireId}`,
    `PUT /bkt/big?partNumber=2&${wireId}`,
    `POST /bkt/big?${wireId}`,
    `DELETE /bkt/big?${wireId}`,
  ]);
  assertSigned(peer);
  assertEquals(dec(peer.seen[2].body), "two");
  const complete = dec(peer.seen[3].body);
  assertEquals(peer.seen[3].headers.get("content-type"), "application/xml");
  const parts = [
    ...complete.matchAll(/<Part><PartNumber>(\d+)<\/PartNumber><ETag>([^<]*)<\/ETag><\/Part>/g),
  ]
    .map((m) => [Number(m[1]), xmlDecode(m[2])]);
  assertEquals(parts, [[1, '"etag-1&"'], [2, '"etag-2&"']]);
  assertMatch(complete, /^<CompleteMultipartUpload><Part>.*<\/Part><\/CompleteMultipartUpload>$/);
});

Deno.test("S3Client.createMultipart without a whole UploadId is unavailable", async () => {
  const answers = [
    "<InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>big</Key></InitiateMultipartUploadResult>",
    "<InitiateMultipartUploadResult><UploadId>abc",
    "<InitiateMultipartUploadResult><UploadId></UploadId></InitiateMultipartUploadResult>",
  ];
  await using peer = servePeer((_, n) => xml(answers[n]));
  const c = client(peer.endpoint);
  for (const _ of answers) {
    const err = await assertRejects(
      () => c.createMultipart("big"),
      KeepError,
      /multipart upload of big/,
    );
    assertEquals(err.code, "unavailable");
  }
});

Deno.test("S3Client.completeMultipart throws on an Error inside a 200 answer, or a 200 that is not a result", async () => {
  // AWS: CompleteMultipartUpload may answer 200, then whitespace, then an
  // Error once the work failed.
  const answers = [
    `<?xml version="1.0" encoding="UTF-8"?>\n\n   \n<Error><Code>InternalError</Code>` +
    `<Message>We encountered an internal error. Please try again.</Message></Error>`,
    "",
    "<CompleteMultipartUploadResult><Location>x</Location>",
    `  \n<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
    `<Bucket>bkt</Bucket><Key>big</Key><ETag>"e-1"</ETag></CompleteMultipartUploadResult>`,
  ];
  await using peer = servePeer((_, n) => xml(answers[n]));
  const c = client(peer.endpoint);
  const e1 = await assertRejects(() => c.completeMultipart("big", "u", ['"e"']), S3Error);
  assertEquals(e1.code, "InternalError");
  assertMatch(e1.message, /^Cannot complete big: InternalError \(We encountered an internal error/);
  for (const _ of [1, 2]) {
    const err = await assertRejects(
      () => c.completeMultipart("big", "u", ['"e"']),
      KeepError,
      /^Cannot complete big: /,
    );
    assertEquals(err.code, "unavailable");
  }
  await c.completeMultipart("big", "u", ['"e"']);
  assertEquals(peer.seen.length, answers.length);
});

Deno.test("S3Client.deleteMany sends a Quiet Delete of escaped keys with its Content-MD5", async () => {
  await using peer = servePeer(() =>
    xml(`<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult></DeleteResult>`)
  );
  const keys = ["a&b", "<c>", `"q'`, "é 日", "p/x.pack"];
  await client(peer.endpoint).deleteMany(keys);
  assertEquals(peer.seen.length, 1);
  const s = peer.seen[0];
  assertEquals(`${s.method} ${s.path}?${s.query}`, "POST /bkt?delete=");
  assertSigned(peer);
  assertEquals(s.headers.get("content-md5"), createHash("md5").update(s.body).digest("base64"));
  assertEquals(s.headers.get("content-type"), "application/xml");
  const body = dec(s.body);
  assertMatch(
    body,
    /^<Delete><Quiet>true<\/Quiet>(<Object><Key>[^<]*<\/Key><\/Object>)+<\/Delete>$/,
  );
  assertEquals([...body.matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => xmlDecode(m[1])), keys);
});

Deno.test("S3Client.deleteMany throws the first per-key Error of a DeleteResult", async () => {
  await using peer = servePeer(() =>
    xml(
      `<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult><Deleted><Key>ok</Key></Deleted>` +
        `<Error><Key>a&amp;b</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>` +
        `<Error><Key>c</Key><Code>InternalError</Code><Message>later</Message></Error></DeleteResult>`,
    )
  );
  const err = await assertRejects(
    () => client(peer.endpoint).deleteMany(["ok", "a&b", "c"]),
    S3Error,
  );
  assertEquals([err.code, err.message], ["AccessDenied", "Cannot delete a&b: Access Denied"]);
});

Deno.test("S3Client.deleteMany sends more than 1,000 keys in requests of 1,000", async () => {
  await using peer = servePeer(() => xml("<DeleteResult/>"));
  const keys = Array.from({ length: 1001 }, (_, i) => `k/${i}`);
  await client(peer.endpoint).deleteMany(keys);
  const sent = peer.seen.map((s) =>
    [...dec(s.body).matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => m[1])
  );
  assertEquals(sent.map((k) => k.length), [1000, 1]);
  assertEquals(sent.flat(), keys);
  assertSigned(peer);
});

Deno.test("S3Client.deleteMany refuses a 200 that is not a whole DeleteResult", async () => {
  const answers = ["", "<DeleteResult><Deleted><Key>a</Key></Del", "<html>proxy</html>"];
  await using peer = servePeer((_, n) => xml(answers[n]));
  const c = client(peer.endpoint);
  for (const _ of answers) {
    const err = await assertRejects(() => c.deleteMany(["a"]), KeepError, /^Cannot delete a: /);
    assertEquals(err.code, "unavailable");
  }
});

Deno.test("S3Client follows no redirect: a 3xx is an S3Error and nothing is sent elsewhere", async () => {
  // Followed, a 303 turns the PUT into a GET of the Location whose 200
  // would read as "stored".
  await using peer = servePeer((s) =>
    s.path === "/elsewhere"
      ? new Response("fine")
      : new Response(errorXml("TemporaryRedirect", "Please re-send"), {
        status: s.method === "PUT" ? 303 : 307,
        headers: { location: "/elsewhere" },
      })
  );
  const c = client(peer.endpoint);
  const e1 = await assertRejects(() => c.put("k", enc("data")), S3Error);
  assertEquals([e1.status, e1.code], [303, "TemporaryRedirect"]);
  const e2 = await assertRejects(() => c.getSmall("k"), S3Error);
  assertEquals(e2.status, 307);
  assertEquals(peer.seen.map((s) => `${s.method} ${s.path}`), ["PUT /bkt/k", "GET /bkt/k"]);
});

// ---------------------------------------------------------------------------
// 4. Retries, timeouts, status mapping

Deno.test("S3Client retries a 5xx, 3 attempts by default, then throws unavailable with the store's code", async () => {
  await using peer = servePeer(() => xml(errorXml("SlowDown", "Reduce your request rate"), 503));
  const c = client(peer.endpoint);
  const t0 = performance.now();
  const err = await assertRejects(() => c.put("k", enc("payload")), KeepError);
  assertEquals(err.code, "unavailable");
  assertEquals(err.message, `Cannot reach the object store at ${peer.endpoint}: HTTP 503 SlowDown`);
  assertEquals(peer.seen.length, 3);
  assert(performance.now() - t0 >= 1100, "the retries wait 200 ms, then 1 s");
  for (const s of peer.seen) assertEquals(dec(s.body), "payload");
  assertSigned(peer);
});

Deno.test("S3Client retries after a 500 and returns the later answer", async () => {
  await using peer = servePeer((_, n) =>
    n === 0 ? xml(errorXml("InternalError", "x"), 500) : new Response("body")
  );
  const bytes = await client(peer.endpoint).getSmall("k");
  assertEquals(dec(bytes!), "body");
  assertEquals(peer.seen.length, 2);
});

Deno.test("S3Client does not retry a 4xx: 412 for If-None-Match, 403, 404 unless accepted", async () => {
  await using peer = servePeer((s) =>
    s.method === "PUT"
      ? xml(
        errorXml(
          "PreconditionFailed",
          "At least one of the pre-conditions you specified did not hold",
        ),
        412,
      )
      : s.method === "DELETE"
      ? xml(errorXml("AccessDenied", "no"), 403)
      : xml(errorXml("NoSuchKey", "none"), 404)
  );
  const c = client(peer.endpoint);
  const e1 = await assertRejects(() => c.put("k", enc("x"), { ifNoneMatch: true }), S3Error);
  assertEquals([e1.status, e1.code], [412, "PreconditionFailed"]);
  assertEquals(peer.seen[0].headers.get("if-none-match"), "*");
  const e2 = await assertRejects(() => c.abortMultipart("k", "u"), S3Error);
  assertEquals([e2.status, e2.code], [403, "AccessDenied"]);
  assertEquals(await c.getSmall("k"), null);
  assertEquals(await c.get("k"), null);
  assertEquals(await c.head("k"), null);
  const e3 = await assertRejects(() => c.request("GET", "k"), S3Error);
  assertEquals([e3.status, e3.code], [404, "NoSuchKey"]);
  await assertRejects(() => c.put("k2", enc("x")), S3Error, /PreconditionFailed/);
  assertEquals(peer.seen[6].headers.get("if-none-match"), null);
  assertEquals(peer.seen.length, 7);
});

Deno.test("S3Client cuts a peer that accepts and never answers at timeoutMs, then unavailable", async () => {
  await using peer = rawPeer((_, closing) => closing);
  const c = client(peer.endpoint, { attempts: 2, timeoutMs: 300 });
  const t0 = performance.now();
  const err = await assertRejects(() => c.put("k", enc("x")), KeepError, /no answer in time$/);
  const took = performance.now() - t0;
  assertEquals(err.code, "unavailable");
  assertEquals(peer.connections(), 2);
  assert(took >= 750 && took < 3000, `took ${took} ms (2 × 300 ms + 200 ms between)`);
  // A streamed GET is timed to its headers.
  const t1 = performance.now();
  await assertRejects(
    () => client(peer.endpoint, { attempts: 1, timeoutMs: 300 }).get("k"),
    KeepError,
    /no answer in time/,
  );
  assert(performance.now() - t1 < 2000);
});

Deno.test("S3Client.getSmall counts a body that stalls in the middle as no answer, retried", async () => {
  await using peer = rawPeer(async (conn, closing) => {
    await writeAll(conn, enc("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"));
    await closing;
  });
  const c = client(peer.endpoint, { attempts: 2, timeoutMs: 300 });
  const err = await assertRejects(() => c.getSmall("k"), KeepError, /no answer in time$/);
  assertEquals(err.code, "unavailable");
  assertEquals(peer.connections(), 2);
});

Deno.test("S3Client retries a body cut short, then throws unavailable", async () => {
  await using peer = rawPeer(async (conn) => {
    await writeAll(
      conn,
      enc(
        "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-99/200\r\ncontent-length: 100\r\n\r\n0123456789",
      ),
    );
  });
  const c = client(peer.endpoint, { attempts: 2, timeoutMs: 2000 });
  const err = await assertRejects(() => c.getRange("k", { start: 0, end: 100 }), KeepError);
  assertEquals(err.code, "unavailable");
  assertMatch(err.message, /^Cannot reach the object store at /);
  assertEquals(peer.connections(), 2);
});

Deno.test("S3Client gives up as unavailable when nothing listens", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const c = client(`http://127.0.0.1:${port}`, { attempts: 2 });
  const err = await assertRejects(
    () => c.head("k"),
    KeepError,
    /^Cannot reach the object store at http:\/\/127\.0\.0\.1:/,
  );
  assertEquals(err.code, "unavailable");
});

Deno.test("S3Client without keys throws usage and sends nothing", async () => {
  await using peer = servePeer(() => new Response(null));
  const err = await assertRejects(
    () => client(peer.endpoint, { secretKey: "" }).put("k", enc("x")),
    KeepError,
    /no keys/,
  );
  assertEquals(err.code, "usage");
  assertEquals(peer.seen.length, 0);
});

Deno.test("S3Client.bodyPieces cuts a streamed body that stalls at timeoutMs", async () => {
  await using peer = servePeer((_, __, closing) =>
    new Response(
      new ReadableStream<Uint8Array>({
        start(ctl) {
          ctl.enqueue(enc("0123456789"));
        },
        async pull() {
          await closing;
        },
      }),
      { headers: { "content-length": "100" } },
    )
  );
  const c = client(peer.endpoint, { timeoutMs: 300 });
  const res = await c.get("big");
  assert(res !== null);
  const got: string[] = [];
  const t0 = performance.now();
  const err = await assertRejects(
    async () => {
      for await (const piece of c.bodyPieces(res.body!)) got.push(dec(piece));
    },
    KeepError,
    /sent nothing for 0\.3 s in the middle of an answer/,
  );
  assertEquals(err.code, "unavailable");
  assertEquals(got.join(""), "0123456789");
  const took = performance.now() - t0;
  assert(took >= 250 && took < 2000, `took ${took} ms`);
});

Deno.test("S3Client.bodyPieces does not count the caller's time between pieces", async () => {
  await using peer = servePeer(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        async start(ctl) {
          ctl.enqueue(enc("first."));
          await new Promise((r) => setTimeout(r, 30));
          ctl.enqueue(enc("second."));
          ctl.close();
        },
      }),
    )
  );
  const c = client(peer.endpoint, { timeoutMs: 200 });
  const res = (await c.get("big"))!;
  let got = "";
  for await (const piece of c.bodyPieces(res.body!)) {
    got += dec(piece);
    await new Promise((r) => setTimeout(r, 450));
  }
  assertEquals(got, "first.second.");
});

Deno.test("OBJECT_REQUESTS counts requests by kind, retries not counted", async () => {
  await using peer = servePeer((s, n) => {
    if (n === 0) return new Response(null, { status: 503 });
    if (s.query.startsWith("list-type")) return xml(listXml([]));
    if (s.query === "delete=") return xml("<DeleteResult/>");
    if (s.query === "uploads=") {
      return xml(
        "<InitiateMultipartUploadResult><UploadId>u</UploadId></InitiateMultipartUploadResult>",
      );
    }
    return new Response(null);
  });
  const c = client(peer.endpoint);
  const before = new Map(OBJECT_REQUESTS);
  await c.put("k", enc("x"));
  await c.head("k");
  await allPages(c, "p/");
  await c.deleteMany(["k"]);
  await c.createMultipart("m");
  await c.uploadPart("m", "u", 1, enc("x"));
  await c.abortMultipart("m", "u");
  const delta = Object.fromEntries(
    [...OBJECT_REQUESTS].map(([k, v]) => [k, v - (before.get(k) ?? 0)]).filter(([, v]) => v !== 0),
  );
  assertEquals(delta, {
    put: 1,
    head: 1,
    list: 1,
    "delete-objects": 1,
    "multipart-post": 1,
    "multipart-put": 1,
    "multipart-delete": 1,
  });
  assertEquals(peer.seen.length, 8);
});

// ---------------------------------------------------------------------------
// 5. Range reads

Deno.test("S3Client.getRange asks for bytes=start-(end-1) and returns the 206 body, shorter at the object's end", async () => {
  const object = enc("abcdefghijklmnopqrstuvwxy"); // 25 bytes
  await using peer = servePeer((s) => {
    const [, a, b] = /^bytes=(\d+)-(\d+)$/.exec(s.headers.get("range") ?? "")!.map(Number);
    const last = Math.min(b, object.length - 1);
    return new Response(object.slice(a, last + 1), {
      status: 206,
      headers: { "content-range": `bytes ${a}-${last}/${object.length}` },
    });
  });
  const c = client(peer.endpoint);
  assertEquals(dec((await c.getRange("p/1.pack", { start: 10, end: 20 }))!), "klmnopqrst");
  assertEquals(dec((await c.getRange("p/1.pack", { start: 20, end: 40 }))!), "uvwxy");
  assertEquals(peer.seen.map((s) => s.headers.get("range")), ["bytes=10-19", "bytes=20-39"]);
  assertSigned(peer);
});

Deno.test("S3Client.getRange gives null for a missing key and empty bytes past the end (416)", async () => {
  await using peer = servePeer((_, n) =>
    n === 0
      ? xml(errorXml("NoSuchKey", "none"), 404)
      : xml(errorXml("InvalidRange", "The requested range is not satisfiable"), 416)
  );
  const c = client(peer.endpoint);
  assertEquals(await c.getRange("k", { start: 0, end: 10 }), null);
  assertEquals(await c.getRange("k", { start: 100, end: 110 }), new Uint8Array(0));
});

Deno.test("S3Client.getRange refuses a 200, another range or a body of another length, untried again", async () => {
  const cases: [string, () => Response][] = [
    ["200 with the whole object", () => new Response("0123456789abcdefghij")],
    ["206 of another start", () => range206("bytes 11-20/100", "bcdefghijk")],
    ["206 past the end asked", () => range206("bytes 10-20/100", "abcdefghijk")],
    ["206 shorter than its Content-Range", () => range206("bytes 10-19/100", "abcdefgh")],
    ["206 without Content-Range", () => new Response("abcdefghij", { status: 206 })],
    ["206 with a garbled Content-Range", () => range206("bytes */100", "abcdefghij")],
  ];
  await using peer = servePeer((_, n) => cases[n][1]());
  const c = client(peer.endpoint);
  for (const [what] of cases) {
    const err = await assertRejects(
      () => c.getRange("p/1.pack", { start: 10, end: 20 }),
      KeepError,
      /^Cannot read s3:\/\/bkt\/p\/1\.pack: asked for bytes 10-19, the store answered /,
    );
    assertEquals(err.code, "unavailable", what);
  }
  assertEquals(peer.seen.length, cases.length);
});

function range206(contentRange: string, body: string): Response {
  return new Response(body, { status: 206, headers: { "content-range": contentRange } });
}

Deno.test("S3Client.get sends its Range header, streams the answer, and gives null for a missing key", async () => {
  await using peer = servePeer((s) =>
    s.path.endsWith("/gone")
      ? xml(errorXml("NoSuchKey", "none"), 404)
      : range206("bytes 5-9/10", "56789")
  );
  const c = client(peer.endpoint);
  const res = await c.get("obj", { start: 5, end: 10 });
  assertEquals(res?.status, 206);
  assertEquals(await res!.text(), "56789");
  assertEquals(await c.get("gone"), null);
  assertEquals(peer.seen.map((s) => s.headers.get("range")), ["bytes=5-9", null]);
});

Deno.test("S3Client.head reads size, time and ETag", async () => {
  await using peer = servePeer(() =>
    new Response(null, {
      headers: {
        "content-length": "1234",
        "last-modified": "Wed, 21 Oct 2015 07:28:00 GMT",
        etag: '"9b2cf535f27731c974343645a3985328"',
      },
    })
  );
  assertEquals(await client(peer.endpoint).head("k"), {
    key: "k",
    size: 1234,
    modified: Date.UTC(2015, 9, 21, 7, 28, 0),
    etag: "9b2cf535f27731c974343645a3985328",
  });
  assertEquals(peer.seen[0].method, "HEAD");
});
