import { assert, assertEquals, assertMatch, assertThrows } from "../../tests/assert.ts";
import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { Buffer } from "node:buffer";
import { KeepError } from "../errors.ts";
import { makeCa, makeServerCert, parseFingerprint, pemFingerprint } from "./x509.ts";

const NAMES = ["nas", "localhost", "127.0.0.1", "::1"];

function derOf(pem: string): Uint8Array {
  const b64 = pem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, "");
  return new Uint8Array(Buffer.from(b64, "base64"));
}

/** A DER walker independent of the one in x509.ts, to check the bytes written. */
interface Node {
  tag: number;
  head: number;
  contents: Uint8Array;
  kids: () => Node[];
}

function parse(der: Uint8Array, at = 0): Node & { next: number } {
  const tag = der[at];
  let len = der[at + 1];
  let start = at + 2;
  if (len & 0x80) {
    const count = len & 0x7f;
    assert(count >= 1 && count <= 4, "length of length");
    assert(der[start] !== 0, "long-form length has no leading zero");
    len = 0;
    for (let i = 0; i < count; i++) len = len * 256 + der[start + i];
    assert(len >= 0x80, "long form only when short form cannot hold the length");
    start += count;
  }
  const contents = der.subarray(start, start + len);
  assertEquals(contents.length, len, "TLV fits");
  return {
    tag,
    head: start - at,
    contents,
    next: start + len,
    kids() {
      const out: Node[] = [];
      for (let i = 0; i < contents.length;) {
        const k = parse(contents, i);
        out.push(k);
        i = k.next;
      }
      return out;
    },
  };
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

/** The certificate's TBS fields, with the version skipped. */
function tbsFields(pem: string) {
  const cert = parse(derOf(pem));
  const [tbs, sigAlg, sig] = cert.kids();
  const [version, serial, innerAlg, issuer, validity, subject, spki, exts] = tbs.kids();
  return {
    cert,
    tbs,
    sigAlg,
    sig,
    version,
    serial,
    innerAlg,
    issuer,
    validity,
    subject,
    spki,
    exts,
  };
}

/** SHA-1 of the key bits in a SubjectPublicKeyInfo: what RFC 5280 method 1 puts in the key identifier. */
function keyIdOf(x: X509Certificate): string {
  const spki = new Uint8Array(x.publicKey.export({ type: "spki", format: "der" }));
  const bits = parse(spki).kids()[1].contents.subarray(1);
  return createHash("sha1").update(bits).digest("hex");
}

function colonHex(h: string): string {
  return h.toUpperCase().match(/../g)!.join(":");
}

Deno.test("x509: node:crypto parses the CA and the server certificate and checks the chain", () => {
  const ca = makeCa({ commonName: "Keep test CA" });
  const server = makeServerCert(ca, { names: NAMES });
  const caX = new X509Certificate(ca.cert);
  const serverX = new X509Certificate(server.cert);

  assertEquals(caX.ca, true);
  assertEquals(caX.subject, "CN=Keep test CA");
  assertEquals(caX.issuer, "CN=Keep test CA");
  assert(caX.checkIssued(caX), "CA is self-issued");
  assert(caX.verify(caX.publicKey), "CA is self-signed");

  assertEquals(serverX.ca, false);
  assertEquals(serverX.subject, "CN=nas"); // first name is the default CN
  assertEquals(serverX.issuer, "CN=Keep test CA");
  assert(serverX.checkIssued(caX), "server cert is issued by the CA");
  assert(serverX.verify(caX.publicKey), "server cert is signed by the CA key");
  assert(!serverX.verify(serverX.publicKey), "and not by its own key");
  assert(serverX.checkPrivateKey(createPrivateKey(server.key)), "key matches cert");

  const san = serverX.subjectAltName ?? "";
  assertMatch(san, /DNS:nas\b/);
  assertMatch(san, /DNS:localhost\b/);
  assertMatch(san, /IP Address:127\.0\.0\.1\b/);
  assertMatch(san, /IP Address:(0:0:0:0:0:0:0:1|::1)\b/i);

  assertEquals(parseFingerprint(caX.fingerprint256), ca.fingerprint);
  assertEquals(parseFingerprint(serverX.fingerprint256), server.fingerprint);
  assertMatch(ca.key, /^-----BEGIN PRIVATE KEY-----\n/);
  assertMatch(ca.cert, /^-----BEGIN CERTIFICATE-----\n(.{1,64}\n)+-----END CERTIFICATE-----\n$/);
});

Deno.test("x509: the DER is as written in the spec: v3, minimal serial, times, algorithm, key ids", () => {
  const ca = makeCa({ commonName: "Keep test CA", now: new Date("2026-03-04T05:06:07.890Z") });
  const server = makeServerCert(ca, { names: ["nas"], now: new Date("2026-03-04T05:06:07Z") });
  for (const pem of [ca.cert, server.cert]) {
    const f = tbsFields(pem);
    assertEquals(f.cert.next, derOf(pem).length, "one whole SEQUENCE");
    assertEquals(hex(parse(f.version.contents).contents), "02", "v3");
    assertEquals(f.version.tag, 0xa0);
    // ecdsa-with-SHA256 with no parameters, the same inside and outside the TBS.
    assertEquals(hex(f.sigAlg.contents), "06082a8648ce3d040302");
    assertEquals(hex(f.innerAlg.contents), hex(f.sigAlg.contents));
    assertEquals(f.sig.contents[0], 0, "signature BIT STRING has no unused bits");
    assertEquals(f.exts.tag, 0xa3);
    const [notBefore, notAfter] = f.validity.kids();
    assertEquals(notBefore.tag, 0x17, "UTCTime");
    assertEquals(new TextDecoder().decode(notBefore.contents), "260304040607Z", "now - 1 h");
    assertEquals(notAfter.tag, 0x17);
  }
  assertEquals(
    new TextDecoder().decode(tbsFields(ca.cert).validity.kids()[1].contents),
    "460227050607Z",
  );
  assertEquals(
    new TextDecoder().decode(tbsFields(server.cert).validity.kids()[1].contents),
    "360301050607Z",
  );
  // The leaf's issuer is the CA's subject byte for byte.
  assertEquals(
    hex(tbsFields(server.cert).issuer.contents),
    hex(tbsFields(ca.cert).subject.contents),
  );
  // CN is a UTF8String.
  const cn = tbsFields(ca.cert).subject.kids()[0].kids()[0].kids();
  assertEquals(hex(cn[0].contents), "550403");
  assertEquals(cn[1].tag, 0x0c);

  // Serials: positive, minimal, at most 16 bytes. Over many certificates, so leading zero bytes and
  // a set top bit of the second byte both turn up.
  for (let i = 0; i < 64; i++) {
    const s = tbsFields(makeCa({ commonName: "s" }).cert).serial;
    assertEquals(s.tag, 0x02);
    assert(s.contents.length >= 1 && s.contents.length <= 16, `serial length ${s.contents.length}`);
    assert((s.contents[0] & 0x80) === 0, "positive");
    if (s.contents.length > 1) {
      assert(!(s.contents[0] === 0 && (s.contents[1] & 0x80) === 0), "no redundant leading zero");
    }
    assert(s.contents.some((b) => b !== 0), "non-zero");
  }
});

Deno.test("x509: extensions carry the right criticality and values", () => {
  const ca = makeCa({ commonName: "Keep test CA" });
  const server = makeServerCert(ca, { names: ["nas", "10.1.2.3", "fe80::1:2", "::ffff:1.2.3.4"] });
  const extsOf = (pem: string) => {
    const map = new Map<string, { critical: boolean; value: string }>();
    for (const ext of tbsFields(pem).exts.kids()[0].kids()) {
      const k = ext.kids();
      const critical = k.length === 3;
      if (critical) assertEquals(hex(k[1].contents), "ff");
      map.set(hex(k[0].contents), { critical, value: hex(k[k.length - 1].contents) });
    }
    return map;
  };
  const caExts = extsOf(ca.cert);
  const caKeyId = keyIdOf(new X509Certificate(ca.cert));
  assertEquals(caExts.get("551d13"), { critical: true, value: "30060101ff020100" }); // CA:TRUE pathLen 0
  assertEquals(caExts.get("551d0f"), { critical: true, value: "03020106" }); // keyCertSign, cRLSign
  assertEquals(caExts.get("551d0e"), { critical: false, value: "0414" + caKeyId });
  assertEquals(caExts.size, 3);

  const sExts = extsOf(server.cert);
  const serverKeyId = keyIdOf(new X509Certificate(server.cert));
  assertEquals(sExts.get("551d13"), { critical: true, value: "3000" }); // CA:FALSE
  assertEquals(sExts.get("551d0f"), { critical: true, value: "03020780" }); // digitalSignature
  assertEquals(sExts.get("551d25"), { critical: false, value: "300a06082b06010505070301" });
  assertEquals(sExts.get("551d0e"), { critical: false, value: "0414" + serverKeyId });
  assertEquals(sExts.get("551d23"), { critical: false, value: "30168014" + caKeyId });
  assertEquals(
    sExts.get("551d11"),
    {
      critical: false,
      value: "302f" + "82036e6173" + "87040a010203" + "8710fe800000000000000000000000010002" +
        "871000000000000000000000ffff01020304",
    },
  );
});

const hasOpenssl = (() => {
  try {
    return new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

function openssl(args: string[]): { ok: boolean; out: string } {
  const r = new Deno.Command("openssl", { args, stdout: "piped", stderr: "piped" }).outputSync();
  const text = new TextDecoder();
  return { ok: r.success, out: text.decode(r.stdout) + text.decode(r.stderr) };
}

Deno.test({
  name: "x509: openssl reads both certificates and verifies the chain",
  ignore: !hasOpenssl,
  fn() {
    const dir = Deno.makeTempDirSync({ prefix: "keep_x509_" });
    try {
      const ca = makeCa({ commonName: "Keep test CA" });
      const server = makeServerCert(ca, { names: NAMES });
      Deno.writeTextFileSync(`${dir}/ca.pem`, ca.cert);
      Deno.writeTextFileSync(`${dir}/server.pem`, server.cert);

      const caText = openssl(["x509", "-noout", "-text", "-in", `${dir}/ca.pem`]);
      assert(caText.ok, caText.out);
      assertMatch(caText.out, /CA:TRUE, pathlen:0/);
      assertMatch(caText.out, /Certificate Sign, CRL Sign/);
      assertMatch(caText.out, /Signature Algorithm: ecdsa-with-SHA256/);
      assertMatch(caText.out, /Version: 3 \(0x2\)/);
      const caKeyId = colonHex(keyIdOf(new X509Certificate(ca.cert)));
      assertMatch(caText.out, new RegExp(`Subject Key Identifier:\\s*\\n\\s*${caKeyId}\\n`));

      const sText = openssl(["x509", "-noout", "-text", "-in", `${dir}/server.pem`]);
      assert(sText.ok, sText.out);
      assertMatch(sText.out, /CA:FALSE/);
      assertMatch(sText.out, /TLS Web Server Authentication/);
      assertMatch(sText.out, /Digital Signature/);
      assertMatch(
        sText.out,
        /DNS:nas, DNS:localhost, IP Address:127\.0\.0\.1, IP Address:0:0:0:0:0:0:0:1/,
      );
      assertMatch(
        sText.out,
        new RegExp(`Authority Key Identifier:\\s*\\n\\s*(keyid:)?${caKeyId}\\n`),
      );

      const verify = openssl(["verify", "-CAfile", `${dir}/ca.pem`, `${dir}/server.pem`]);
      assert(verify.ok, verify.out);
      assertMatch(verify.out, /server\.pem: OK/);

      const fp = openssl(["x509", "-noout", "-fingerprint", "-sha256", "-in", `${dir}/server.pem`]);
      assert(fp.ok, fp.out);
      assertEquals(parseFingerprint(fp.out), server.fingerprint);

      // A second CA with the same name must not verify the first one's leaf.
      Deno.writeTextFileSync(`${dir}/other.pem`, makeCa({ commonName: "Keep test CA" }).cert);
      const wrong = openssl(["verify", "-CAfile", `${dir}/other.pem`, `${dir}/server.pem`]);
      assert(!wrong.ok, wrong.out);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

/**
 * Serves `pem` over TLS on `hostname`, fetches https://`host`/ with a client
 * trusting `trust`, and returns the body or the error. null if `hostname`
 * cannot be bound (no IPv6 on this machine).
 */
async function tlsFetch(
  pem: { cert: string; key: string },
  trust: string,
  host: string,
  hostname = "127.0.0.1",
): Promise<{ body: string } | { error: Error } | null> {
  const ac = new AbortController();
  let http: Deno.HttpServer<Deno.NetAddr>;
  try {
    http = Deno.serve(
      {
        hostname,
        port: 0,
        cert: pem.cert,
        key: pem.key,
        signal: ac.signal,
        onListen() {},
        // Refused handshakes are expected here; keep them out of the test output.
        onError: () => new Response("error", { status: 500 }),
      },
      () => new Response("ok"),
    );
  } catch (err) {
    if (hostname !== "127.0.0.1") return null; // no IPv6 here; 127.0.0.1 already tested the cert
    throw err;
  }
  const client = Deno.createHttpClient({ caCerts: [trust] });
  try {
    const res = await fetch(`https://${host}:${http.addr.port}/`, { client });
    return { body: await res.text() };
  } catch (err) {
    assert(err instanceof Error);
    return { error: err };
  } finally {
    client.close();
    ac.abort();
    await http.finished;
  }
}

/** The whole error text, causes included: rustls' reason is in the cause. */
function reason(r: { body: string } | { error: Error } | null): string {
  assert(r !== null && "error" in r, `expected the fetch to fail, got ${JSON.stringify(r)}`);
  const parts: string[] = [];
  for (let e: unknown = r.error; e instanceof Error; e = e.cause) parts.push(e.message);
  return parts.join(": ");
}

Deno.test("x509: Deno's TLS (rustls) serves the certificate and clients trust it through the CA", async () => {
  const ca = makeCa({ commonName: "Keep test CA" });
  const server = makeServerCert(ca, { names: NAMES });
  assertEquals(await tlsFetch(server, ca.cert, "127.0.0.1"), { body: "ok" });
  assertEquals(await tlsFetch(server, ca.cert, "localhost"), { body: "ok" });
  const v6 = await tlsFetch(server, ca.cert, "[::1]", "::1");
  if (v6 !== null) assertEquals(v6, { body: "ok" });

  // Another CA, even with the same name, is not trusted.
  const otherCa = makeCa({ commonName: "Keep test CA" });
  assertMatch(
    reason(await tlsFetch(server, otherCa.cert, "127.0.0.1")),
    /invalid peer certificate/,
  );
  // A name that is not in subjectAltName is refused.
  const nasOnly = makeServerCert(ca, { names: ["nas"] });
  assertMatch(reason(await tlsFetch(nasOnly, ca.cert, "127.0.0.1")), /not valid for name/);
  // Why there are two certificates: a CA:TRUE certificate cannot be the server's own, even
  // when the client trusts exactly it.
  assertMatch(reason(await tlsFetch(ca, ca.cert, "127.0.0.1")), /CaUsedAsEndEntity/);
});

Deno.test("x509: parseFingerprint normalises the usual spellings and rejects the rest", () => {
  const fp = "0123456789abcdef".repeat(4);
  const colons = colonHex(fp);
  assertEquals(parseFingerprint(fp), fp);
  assertEquals(parseFingerprint(fp.toUpperCase()), fp);
  assertEquals(parseFingerprint(colons), fp);
  assertEquals(parseFingerprint(colons.toLowerCase()), fp);
  assertEquals(parseFingerprint(`sha256:${fp}`), fp);
  assertEquals(parseFingerprint(`SHA256:${colons}`), fp);
  assertEquals(parseFingerprint(`  ${colons}\n`), fp);
  assertEquals(parseFingerprint(`sha256 Fingerprint=${colons}\n`), fp); // openssl 3
  assertEquals(parseFingerprint(`SHA256 Fingerprint=${colons}`), fp); // openssl 1.1

  assertEquals(parseFingerprint(""), null);
  assertEquals(parseFingerprint(fp.slice(2)), null); // 31 bytes
  assertEquals(parseFingerprint(fp + "00"), null); // 33 bytes
  assertEquals(parseFingerprint(fp.slice(0, 40)), null); // a SHA-1
  assertEquals(parseFingerprint(fp.slice(1) + "g"), null);
  assertEquals(parseFingerprint(colons.slice(3)), null);
  assertEquals(parseFingerprint(colons.replace(":", "")), null); // half colons
  assertEquals(parseFingerprint(colons + ":"), null);
  assertEquals(parseFingerprint(`sha1:${fp}`), null);
  assertEquals(parseFingerprint(`md5:${fp}`), null);

  const ca = makeCa({ commonName: "Keep test CA" });
  const server = makeServerCert(ca, { names: ["nas"] });
  assertEquals(pemFingerprint(ca.cert), ca.fingerprint);
  assertEquals(pemFingerprint(server.cert), server.fingerprint);
  // The first certificate of a chain file, whatever comes around it.
  assertEquals(pemFingerprint(`comment\n${server.cert}${ca.cert}`), server.fingerprint);
  assertEquals(ca.fingerprint, createHash("sha256").update(derOf(ca.cert)).digest("hex"));
  assertMatch(ca.fingerprint, /^[0-9a-f]{64}$/);
  assertThrows(() => pemFingerprint(ca.key), KeepError, /^Cannot read certificate: /);
  assertThrows(
    () => pemFingerprint("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    KeepError,
    /^Cannot read certificate: /,
  );
});

Deno.test("x509: years from 2050 on are GeneralizedTime", () => {
  const ca = makeCa({ commonName: "Keep long CA", now: new Date("2045-01-01"), days: 36500 });
  const x = new X509Certificate(ca.cert);
  assertMatch(x.validFrom, /2044 GMT$/);
  assertMatch(x.validTo, /2144 GMT$/);
  const [notBefore, notAfter] = tbsFields(ca.cert).validity.kids();
  assertEquals(notBefore.tag, 0x17);
  assertEquals(new TextDecoder().decode(notBefore.contents), "441231230000Z");
  assertEquals(notAfter.tag, 0x18);
  assertMatch(new TextDecoder().decode(notAfter.contents), /^2144\d{10}Z$/);

  const old = makeCa({ commonName: "Keep old CA", now: new Date("1950-01-01T00:30:00Z"), days: 1 });
  const [before, after] = tbsFields(old.cert).validity.kids();
  assertEquals(before.tag, 0x18, "1949 is before UTCTime's range");
  assertEquals(new TextDecoder().decode(before.contents), "19491231233000Z");
  assertEquals(after.tag, 0x17);
  assertEquals(new X509Certificate(old.cert).validFrom, "Dec 31 23:30:00 1949 GMT");
});

Deno.test("x509: bad input is refused with a usage error", () => {
  const ca = makeCa({ commonName: "Keep test CA" });
  const server = makeServerCert(ca, { names: ["nas"] });
  const usage = (fn: () => unknown, re: RegExp) => {
    const err = assertThrows(fn, KeepError, re);
    assertEquals(err.code, "usage");
  };
  usage(
    () => makeServerCert(ca, { names: [] }),
    /^Cannot issue server certificate: no names given/,
  );
  usage(() => makeServerCert(ca, { names: ["a b"] }), /neither an IP address nor a DNS name/);
  usage(() => makeServerCert(ca, { names: ["[nas]"] }), /not an IPv6 address/);
  usage(() => makeServerCert(ca, { names: ["fe80::1%eth0"] }), /zone index/);
  usage(() => makeServerCert(ca, { names: ["nas"], days: 0 }), /days must be a positive number/);
  usage(() => makeServerCert(ca, { names: ["nas"], days: 1e7 }), /after year 9999/);
  usage(() => makeCa({ commonName: "" }), /^Cannot make CA certificate: the common name is empty/);
  usage(() => makeCa({ commonName: "x", now: new Date("nope") }), /not a valid date/);
  // A leaf is not a CA, and a CA certificate needs its own key.
  usage(() => makeServerCert(server, { names: ["nas"] }), /is not a CA/);
  const other = makeCa({ commonName: "Keep test CA" });
  usage(
    () => makeServerCert({ cert: ca.cert, key: other.key }, { names: ["nas"] }),
    /CA key does not belong to the CA certificate/,
  );

  // Brackets, case, trailing dots, duplicates and international names are tidied, not refused.
  const tidy = makeServerCert(ca, {
    names: ["[::1]", "NAS.Example.", "nas.example", "*.example", "bücher.example", "::1"],
  });
  assertEquals(
    new X509Certificate(tidy.cert).subjectAltName,
    "IP Address:::1, DNS:nas.example, DNS:*.example, DNS:xn--bcher-kva.example",
  );
});
