/**
 * Makes the certificates for `keep serve --tls auto`: a private CA and a
 * server certificate signed by it, both EC P-256 with ecdsa-with-SHA256, as
 * PEM. The DER is written by hand and signed with node:crypto, so no openssl
 * binary is needed at runtime.
 *
 * Why two certificates and not one self-signed one: rustls, the TLS stack
 * Deno uses, refuses a certificate with basicConstraints CA:TRUE as a
 * server's own certificate ("CaUsedAsEndEntity"), and CA:TRUE is what
 * `openssl req -x509` makes by default. So Keep makes a CA, which clients
 * trust (or pin by fingerprint), and a CA:FALSE leaf that the server
 * presents.
 *
 * Only the few DER shapes these two certificates need are written; the
 * reader below understands just enough to take the subject, key and key
 * identifier back out of a CA certificate.
 *
 * @module
 */

import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
} from "node:crypto";
import { isIP } from "node:net";
import { domainToASCII } from "node:url";
import { Buffer } from "node:buffer";
import { concatBytes } from "../platform/concat_bytes.ts";
import { KeepError } from "../errors.ts";

/** A certificate and its private key, both PEM. */
export interface Pem {
  /** PEM "CERTIFICATE". */
  cert: string;
  /** PEM PKCS#8 "PRIVATE KEY". */
  key: string;
}

/** A certificate just made, with the SHA-256 of its DER (lowercase hex, no colons). */
export interface IssuedCert extends Pem {
  fingerprint: string;
}

const CA_DAYS = 7300;
const SERVER_DAYS = 3650;
/** notBefore is backdated so a client whose clock is a little behind still accepts it. */
const BACKDATE_MS = 60 * 60 * 1000;

// ---------------------------------------------------------------- DER writer

const utf8 = new TextEncoder();

/** One tag-length-value; the length in DER's shortest form. */
function tlv(tag: number, ...contents: Uint8Array[]): Uint8Array {
  const body = concatBytes(contents);
  const n = body.length;
  let head: number[];
  if (n < 0x80) head = [tag, n];
  else {
    const len: number[] = [];
    for (let v = n; v > 0; v = Math.floor(v / 256)) len.unshift(v & 0xff);
    head = [tag, 0x80 | len.length, ...len];
  }
  return concatBytes([new Uint8Array(head), body]);
}

/** A non-negative INTEGER from big-endian bytes: no redundant leading zeros, a 0x00 if the top bit is set. */
function integer(bytes: Uint8Array | number): Uint8Array {
  let b = typeof bytes === "number" ? new Uint8Array([bytes]) : bytes;
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  b = b.subarray(i);
  if (b.length === 0) b = new Uint8Array([0]);
  return b[0] & 0x80 ? tlv(0x02, new Uint8Array([0]), b) : tlv(0x02, b);
}

/** An OBJECT IDENTIFIER from its dotted form. */
function oid(dotted: string): Uint8Array {
  const arcs = dotted.split(".").map(Number);
  const out: number[] = [];
  const values = [arcs[0] * 40 + arcs[1], ...arcs.slice(2)];
  for (const v of values) {
    // Base 128, high bit set on every byte but the last.
    const bytes = [v & 0x7f];
    for (let rest = Math.floor(v / 128); rest > 0; rest = Math.floor(rest / 128)) {
      bytes.unshift(0x80 | (rest & 0x7f));
    }
    out.push(...bytes);
  }
  return tlv(0x06, new Uint8Array(out));
}

const seq = (...items: Uint8Array[]) => tlv(0x30, ...items);
const set = (...items: Uint8Array[]) => tlv(0x31, ...items);
const octetString = (bytes: Uint8Array) => tlv(0x04, bytes);
const bitString = (bytes: Uint8Array, unusedBits = 0) =>
  tlv(0x03, new Uint8Array([unusedBits]), bytes);
const TRUE = tlv(0x01, new Uint8Array([0xff]));
/** [n] EXPLICIT: a constructed context tag around a whole TLV. */
const explicit = (n: number, inner: Uint8Array) => tlv(0xa0 | n, inner);
/** [n] IMPLICIT of a primitive type: the context tag replaces the type's own. */
const implicit = (n: number, contents: Uint8Array) => tlv(0x80 | n, contents);

/** A NamedBitList BIT STRING (keyUsage): bit 0 is the top bit, trailing zero bits dropped as DER wants. */
function namedBits(bits: number[]): Uint8Array {
  const last = Math.max(...bits);
  const bytes = new Uint8Array(Math.floor(last / 8) + 1);
  for (const b of bits) bytes[b >> 3] |= 0x80 >> (b & 7);
  return bitString(bytes, 7 - (last & 7));
}

/** UTCTime for 1950–2049 and GeneralizedTime otherwise, as RFC 5280 §4.1.2.5 requires. */
function time(date: Date): Uint8Array {
  const year = date.getUTCFullYear();
  const two = (n: number) => String(n).padStart(2, "0");
  const rest = two(date.getUTCMonth() + 1) + two(date.getUTCDate()) + two(date.getUTCHours()) +
    two(date.getUTCMinutes()) + two(date.getUTCSeconds()) + "Z";
  if (year >= 1950 && year <= 2049) return tlv(0x17, utf8.encode(two(year % 100) + rest));
  return tlv(0x18, utf8.encode(String(year).padStart(4, "0") + rest));
}

// ---------------------------------------------------------------- DER reader

interface Tlv {
  tag: number;
  /** Where the tag byte is. */
  offset: number;
  /** Where the contents start. */
  start: number;
  /** Where the contents end (and the next TLV starts). */
  end: number;
}

function malformed(): never {
  throw new KeepError("invalid", "Cannot read certificate: the DER is malformed");
}

function readTlv(der: Uint8Array, offset: number, limit = der.length): Tlv {
  if (offset + 2 > limit) malformed();
  const tag = der[offset];
  let len = der[offset + 1];
  let start = offset + 2;
  if (len & 0x80) {
    const count = len & 0x7f;
    if (count === 0 || count > 4 || start + count > limit) malformed();
    len = 0;
    for (let i = 0; i < count; i++) len = len * 256 + der[start + i];
    start += count;
  }
  if (start + len > limit) malformed();
  return { tag, offset, start, end: start + len };
}

function children(der: Uint8Array, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let at = parent.start; at < parent.end;) {
    const t = readTlv(der, at, parent.end);
    out.push(t);
    at = t.end;
  }
  return out;
}

const bytesOf = (der: Uint8Array, t: Tlv) => der.subarray(t.offset, t.end);
const contentsOf = (der: Uint8Array, t: Tlv) => der.subarray(t.start, t.end);
const sameBytes = (a: Uint8Array, b: Uint8Array) =>
  a.length === b.length && a.every((v, i) => v === b[i]);

/** The key bytes inside a SubjectPublicKeyInfo's BIT STRING (without the unused-bits byte). */
function publicKeyBits(spki: Uint8Array): Uint8Array {
  const outer = readTlv(spki, 0);
  const [, key] = children(spki, outer);
  if (!key || key.tag !== 0x03) malformed();
  return spki.subarray(key.start + 1, key.end);
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits. */
function keyIdentifier(spki: Uint8Array): Uint8Array {
  return createHash("sha1").update(publicKeyBits(spki)).digest();
}

// ---------------------------------------------------------------- certificates

const OID = {
  ecdsaWithSha256: oid("1.2.840.10045.4.3.2"),
  commonName: oid("2.5.4.3"),
  subjectKeyIdentifier: oid("2.5.29.14"),
  keyUsage: oid("2.5.29.15"),
  subjectAltName: oid("2.5.29.17"),
  basicConstraints: oid("2.5.29.19"),
  authorityKeyIdentifier: oid("2.5.29.35"),
  extKeyUsage: oid("2.5.29.37"),
  serverAuth: oid("1.3.6.1.5.5.7.3.1"),
};

// keyUsage bit numbers (RFC 5280 §4.2.1.3).
const DIGITAL_SIGNATURE = 0;
const KEY_CERT_SIGN = 5;
const CRL_SIGN = 6;

/** A Name holding only a CN, as UTF8String. */
function name(commonName: string): Uint8Array {
  return seq(set(seq(OID.commonName, tlv(0x0c, utf8.encode(commonName)))));
}

function extension(id: Uint8Array, critical: boolean, value: Uint8Array): Uint8Array {
  return critical ? seq(id, TRUE, octetString(value)) : seq(id, octetString(value));
}

/** Random, positive, at most 16 bytes; never zero. */
function serialNumber(): Uint8Array {
  const bytes = new Uint8Array(randomBytes(16));
  bytes[0] &= 0x7f;
  if (bytes.every((b) => b === 0)) bytes[15] = 1;
  return integer(bytes);
}

function validity(action: string, now: Date, days: number): Uint8Array {
  if (!Number.isFinite(now.getTime())) {
    throw new KeepError("usage", `Cannot ${action}: the start time is not a valid date`);
  }
  if (!Number.isFinite(days) || days <= 0) {
    throw new KeepError("usage", `Cannot ${action}: days must be a positive number, not ${days}`);
  }
  const notBefore = new Date(now.getTime() - BACKDATE_MS);
  const notAfter = new Date(now.getTime() + days * 86_400_000);
  // GeneralizedTime has four year digits; an invalid Date means days overflowed.
  if (!Number.isFinite(notAfter.getTime()) || notAfter.getUTCFullYear() > 9999) {
    throw new KeepError("usage", `Cannot ${action}: the certificate would expire after year 9999`);
  }
  if (notBefore.getUTCFullYear() < 0) {
    throw new KeepError("usage", `Cannot ${action}: the start time is before year 0`);
  }
  return seq(time(notBefore), time(notAfter));
}

function pem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64");
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

function fingerprintOf(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("hex");
}

/** Builds the TBSCertificate, signs it with `signer` and wraps it as a Certificate. */
function issue(parts: {
  issuer: Uint8Array;
  subject: Uint8Array;
  validity: Uint8Array;
  spki: Uint8Array;
  extensions: Uint8Array[];
  signer: KeyObject;
  key: KeyObject;
}): IssuedCert {
  const algorithm = seq(OID.ecdsaWithSha256); // RFC 5758: no parameters, not even NULL
  const tbs = seq(
    explicit(0, integer(2)), // v3
    serialNumber(),
    algorithm,
    parts.issuer,
    parts.validity,
    parts.subject,
    parts.spki,
    explicit(3, seq(...parts.extensions)),
  );
  // node:crypto signs EC keys with a DER Ecdsa-Sig-Value by default, which is what X.509 wants.
  const signature = new Uint8Array(sign("sha256", tbs, parts.signer));
  const der = seq(tbs, algorithm, bitString(signature));
  return {
    cert: pem("CERTIFICATE", der),
    key: parts.key.export({ type: "pkcs8", format: "pem" }) as string,
    fingerprint: fingerprintOf(der),
  };
}

function newKeyPair(): { spki: Uint8Array; privateKey: KeyObject } {
  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  return { spki: new Uint8Array(publicKey.export({ type: "spki", format: "der" })), privateKey };
}

/**
 * A self-signed CA certificate (EC P-256, ecdsa-with-SHA256): basicConstraints
 * critical CA:TRUE pathLen 0, keyUsage critical keyCertSign+cRLSign,
 * subjectKeyIdentifier. pathLen 0 because it only ever signs leaves.
 *
 * @example
 * ```ts
 * const ca = makeCa({ commonName: "Keep CA nas" });
 * Deno.writeTextFileSync("ca.pem", ca.cert);
 * console.log(ca.fingerprint); // 64 hex digits, for clients to pin
 * ```
 */
export function makeCa(options: { commonName: string; days?: number; now?: Date }): IssuedCert {
  const action = "make CA certificate";
  if (!options.commonName) {
    throw new KeepError("usage", `Cannot ${action}: the common name is empty`);
  }
  const { spki, privateKey } = newKeyPair();
  const subject = name(options.commonName);
  return issue({
    issuer: subject,
    subject,
    validity: validity(action, options.now ?? new Date(), options.days ?? CA_DAYS),
    spki,
    extensions: [
      extension(OID.basicConstraints, true, seq(TRUE, integer(0))),
      extension(OID.keyUsage, true, namedBits([KEY_CERT_SIGN, CRL_SIGN])),
      extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spki))),
    ],
    signer: privateKey,
    key: privateKey,
  });
}

/** The one GeneralName for a host: iPAddress [7] for IPv4/IPv6, dNSName [2] otherwise. */
function generalName(action: string, host: string): Uint8Array {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  const family = isIP(bare);
  if (family === 4) return implicit(7, new Uint8Array(bare.split(".").map(Number)));
  if (family === 6) {
    if (bare.includes("%")) {
      throw new KeepError(
        "usage",
        `Cannot ${action}: ${host} has a zone index; give the address without %…`,
      );
    }
    return implicit(7, ipv6Bytes(bare));
  }
  if (bare !== host) {
    throw new KeepError("usage", `Cannot ${action}: ${host} is not an IPv6 address`);
  }
  // dNSName is IA5String, so international names go in as their xn-- form; a
  // trailing dot is dropped because webpki accepts it only on the client's side.
  const punycoded = /^[\x21-\x7e]*$/.test(host) ? host.toLowerCase() : domainToASCII(host);
  const dns = punycoded.replace(/\.$/, "");
  if (!/^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*$/.test(dns)) {
    throw new KeepError(
      "usage",
      `Cannot ${action}: "${host}" is neither an IP address nor a DNS name`,
    );
  }
  return implicit(2, utf8.encode(dns));
}

/** The 16 bytes of an IPv6 address that `isIP` already accepted. */
function ipv6Bytes(text: string): Uint8Array {
  // A dotted IPv4 tail ("::ffff:1.2.3.4") is the last two groups.
  const dotted = text.match(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number);
    text = text.slice(0, dotted.index) + ((a << 8) | b).toString(16) + ":" +
      ((c << 8) | d).toString(16);
  }
  const [left, right] = text.split("::");
  const groupsOf = (s: string | undefined) => (s ? s.split(":") : []);
  const head = groupsOf(left);
  const tail = groupsOf(right);
  const groups = right === undefined
    ? head
    : [...head, ...Array(8 - head.length - tail.length).fill("0"), ...tail];
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  });
  return out;
}

/** The DER of the first CERTIFICATE block in a PEM text. */
function firstCertDer(text: string): Uint8Array {
  const m = text.match(
    /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*)-----END CERTIFICATE-----/,
  );
  if (!m) throw new KeepError("invalid", "Cannot read certificate: no PEM CERTIFICATE block found");
  const der = new Uint8Array(Buffer.from(m[1].replace(/\s+/g, ""), "base64"));
  // Buffer's base64 decoder skips junk, so check the result is one whole SEQUENCE.
  const outer = readTlv(der, 0);
  if (outer.tag !== 0x30 || outer.end !== der.length) malformed();
  return der;
}

/** What a server certificate needs from its CA: subject, key identifier, and the key itself. */
function readCa(
  action: string,
  ca: Pem,
): { subject: Uint8Array; keyId: Uint8Array; key: KeyObject } {
  const der = firstCertDer(ca.cert);
  const [tbs] = children(der, readTlv(der, 0));
  if (!tbs || tbs.tag !== 0x30) malformed();
  const fields = children(der, tbs);
  const v = fields[0]?.tag === 0xa0 ? 1 : 0; // version is DEFAULT v1, so may be absent
  const subject = fields[v + 4];
  const spki = fields[v + 5];
  if (!subject || !spki || subject.tag !== 0x30 || spki.tag !== 0x30) malformed();
  const spkiDer = bytesOf(der, spki);

  let keyId: Uint8Array | undefined;
  let isCa = false;
  const exts = fields.find((f) => f.tag === 0xa3);
  if (exts) {
    const [list] = children(der, exts);
    for (const ext of list ? children(der, list) : []) {
      const parts = children(der, ext);
      if (parts.length < 2) malformed();
      const id = bytesOf(der, parts[0]);
      const value = parts[parts.length - 1];
      if (sameBytes(id, OID.subjectKeyIdentifier)) {
        const inner = readTlv(der, value.start, value.end);
        keyId = contentsOf(der, inner);
      } else if (sameBytes(id, OID.basicConstraints)) {
        const bc = readTlv(der, value.start, value.end);
        const [first] = children(der, bc);
        isCa = first?.tag === 0x01 && der[first.start] !== 0;
      }
    }
  }
  if (!isCa) {
    throw new KeepError(
      "usage",
      `Cannot ${action}: the given certificate is not a CA (no CA:TRUE)`,
    );
  }

  let key: KeyObject;
  try {
    key = createPrivateKey(ca.key);
  } catch (err) {
    throw new KeepError("invalid", `Cannot ${action}: the CA key is not a PEM private key`, {
      cause: err,
    });
  }
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    // The signature algorithm written is ecdsa-with-SHA256, which only an EC key can make.
    throw new KeepError("usage", `Cannot ${action}: the CA key is not an EC P-256 key`);
  }
  const publicDer = new Uint8Array(createPublicKey(key).export({ type: "spki", format: "der" }));
  if (!sameBytes(publicDer, spkiDer)) {
    throw new KeepError(
      "usage",
      `Cannot ${action}: the CA key does not belong to the CA certificate`,
    );
  }
  return { subject: bytesOf(der, subject), keyId: keyId ?? keyIdentifier(spkiDer), key };
}

/**
 * A server certificate signed by `ca`: basicConstraints critical CA:FALSE
 * (empty SEQUENCE), keyUsage critical digitalSignature, extKeyUsage
 * serverAuth, subjectAltName with every name (IP addresses, v4 and v6, as
 * iPAddress; anything else as dNSName), subjectKeyIdentifier and
 * authorityKeyIdentifier (keyid of the CA). The common name defaults to the
 * first name; clients match on subjectAltName only.
 *
 * @example
 * ```ts
 * const ca = makeCa({ commonName: "Keep CA" });
 * const server = makeServerCert(ca, { names: ["nas", "localhost", "127.0.0.1", "::1"] });
 * Deno.serve({ cert: server.cert, key: server.key }, () => new Response("ok"));
 * ```
 */
export function makeServerCert(
  ca: Pem,
  options: { names: string[]; commonName?: string; days?: number; now?: Date },
): IssuedCert {
  const action = "issue server certificate";
  if (options.names.length === 0) {
    throw new KeepError(
      "usage",
      `Cannot ${action}: no names given (need at least one host name or IP address)`,
    );
  }
  const altNames: Uint8Array[] = [];
  for (const host of options.names) {
    const gn = generalName(action, host);
    if (!altNames.some((seen) => sameBytes(seen, gn))) altNames.push(gn);
  }
  const commonName = options.commonName ?? options.names[0];
  if (!commonName) throw new KeepError("usage", `Cannot ${action}: the common name is empty`);
  const validityDer = validity(action, options.now ?? new Date(), options.days ?? SERVER_DAYS);
  const issuer = readCa(action, ca);
  const { spki, privateKey } = newKeyPair();
  return issue({
    issuer: issuer.subject, // copied byte for byte, so chain building matches it exactly
    subject: name(commonName),
    validity: validityDer,
    spki,
    extensions: [
      extension(OID.basicConstraints, true, seq()), // cA DEFAULT FALSE, so DER leaves it out
      extension(OID.keyUsage, true, namedBits([DIGITAL_SIGNATURE])),
      extension(OID.extKeyUsage, false, seq(OID.serverAuth)),
      extension(OID.subjectAltName, false, seq(...altNames)),
      extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spki))),
      extension(OID.authorityKeyIdentifier, false, seq(implicit(0, issuer.keyId))),
    ],
    signer: issuer.key,
    key: privateKey,
  });
}

/**
 * SHA-256 fingerprint (lowercase hex, no colons) of the first certificate in
 * a PEM text.
 *
 * @example
 * ```ts
 * pemFingerprint(Deno.readTextFileSync("ca.pem")); // "3f1a…" (64 hex digits)
 * ```
 */
export function pemFingerprint(pem: string): string {
  return fingerprintOf(firstCertDer(pem));
}

/**
 * Normalises a user-given fingerprint: accepts "AB:CD:…", "abcd…", an
 * optional "sha256:" / "SHA256:" prefix, and the "sha256 Fingerprint=…" line
 * `openssl x509 -fingerprint -sha256` prints; returns 64 lowercase hex or
 * null if not a SHA-256 fingerprint.
 *
 * @example
 * ```ts
 * parseFingerprint("SHA256:AB:CD:…"); // "abcd…"
 * parseFingerprint("abc"); // null
 * ```
 */
export function parseFingerprint(text: string): string | null {
  const body = text.trim().replace(/^sha-?256(:|\s+fingerprint=)\s*/i, "");
  // Either bare hex or colon-separated pairs, not a mix, so a mistyped one is not half-accepted.
  const hex = /^[0-9a-f]{64}$/i.test(body)
    ? body
    : /^[0-9a-f]{2}(:[0-9a-f]{2}){31}$/i.test(body)
    ? body.replaceAll(":", "")
    : null;
  return hex === null ? null : hex.toLowerCase();
}
