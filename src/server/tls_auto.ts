/**
 * `keep serve --tls auto`: the server's own private CA and certificate, made
 * on first start in `DATA/tls/` and reused after. The CA (`ca.pem`) is what
 * clients trust (`--ca`) or pin (`--fingerprint`); the server presents a
 * CA:FALSE certificate signed by it (`cert.pem`, the chain: server
 * certificate then CA) for every name it should answer to. When those names
 * change (another `--listen` or `--tls-name`), only the server certificate is
 * issued again: clients keep trusting the same CA.
 *
 * @module
 */

import { join } from "node:path";
import { X509Certificate } from "node:crypto";
import { KeepError } from "../errors.ts";
import { makeCa, makeServerCert, pemFingerprint } from "../format/x509.ts";

/** Where the files of an automatic TLS set-up are, and the CA's fingerprint. */
export interface AutoTls {
  caFile: string;
  certFile: string;
  keyFile: string;
  /** SHA-256 of the CA certificate's DER, lowercase hex. */
  fingerprint: string;
  /** The names the server certificate holds. */
  names: string[];
  /** True when this call made the CA (first start). */
  createdCa: boolean;
}

/**
 * The names a server listening on `hostname` should have in its
 * certificate: that address, or, for a wildcard (0.0.0.0, ::), this host's
 * name, localhost and every address of its interfaces; plus `extra`.
 */
export function namesFor(hostname: string, extra: string[] = []): string[] {
  const names = new Set<string>();
  if (hostname === "0.0.0.0" || hostname === "::" || hostname === "[::]") {
    names.add("localhost");
    names.add("127.0.0.1");
    names.add("::1");
    try {
      names.add(Deno.hostname());
    } catch { /* no permission: the others suffice */ }
    try {
      for (const i of Deno.networkInterfaces()) names.add(i.address.replace(/%.*$/, ""));
    } catch { /* as above */ }
  } else {
    names.add(hostname.replace(/^\[|\]$/g, ""));
    if (hostname === "127.0.0.1" || hostname === "localhost") names.add("localhost");
  }
  for (const n of extra) names.add(n);
  // Link-local IPv6 addresses need a zone, which certificates cannot hold.
  return [...names].filter((n) => !/^fe80:/i.test(n)).sort();
}

/** A file's text; null when it does not exist (unavailable when it cannot be read). */
function readText(file: string): string | null {
  try {
    return Deno.readTextFileSync(file);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw new KeepError("unavailable", `Cannot read ${file}: ${(err as Error).message}`);
  }
}

function writeSecret(path: string, text: string): void {
  Deno.writeTextFileSync(path, text, { mode: 0o600 });
  Deno.chmodSync(path, 0o600);
}

/**
 * Makes or reuses the CA and server certificate under `dataDir/tls/` for
 * `names`.
 *
 * @example
 * ```ts
 * const tls = ensureAutoTls("/srv/keep", namesFor("0.0.0.0", ["nas"]));
 * console.log(tls.fingerprint);
 * ```
 */
export function ensureAutoTls(dataDir: string, names: string[]): AutoTls {
  const dir = join(dataDir, "tls");
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caFile = join(dir, "ca.pem");
  const caKeyFile = join(dir, "ca-key.pem");
  const certFile = join(dir, "cert.pem");
  const keyFile = join(dir, "key.pem");
  const namesFile = join(dir, "names.json");
  let createdCa = false;
  let ca: { cert: string; key: string | null };
  const caCert = readText(caFile);
  if (caCert !== null) {
    // The key may be kept offline: the CA's certificate stays what clients trust.
    ca = { cert: caCert, key: readText(caKeyFile) };
  } else {
    const made = makeCa({ commonName: `Keep CA ${Deno.hostname()}` });
    ca = { cert: made.cert, key: made.key };
    writeSecret(caKeyFile, made.key);
    Deno.writeTextFileSync(caFile, made.cert);
    createdCa = true;
  }
  let issued: string[] = [];
  try {
    issued = JSON.parse(Deno.readTextFileSync(namesFile));
  } catch { /* none yet */ }
  let current = false;
  try {
    Deno.statSync(certFile);
    Deno.statSync(keyFile);
    const leaf = new X509Certificate(Deno.readTextFileSync(certFile));
    current = !createdCa && JSON.stringify(issued) === JSON.stringify(names) &&
      new Date(leaf.validTo).getTime() > Date.now() + 30 * 86400_000;
  } catch { /* missing or unreadable: issue again */ }
  if (!current) {
    if (ca.key === null) {
      throw new KeepError(
        "unavailable",
        `Cannot issue a server certificate for ${
          names.join(", ")
        }: ${caKeyFile} is missing; put the CA key back (clients trust that CA), or remove ${caFile} too to make a new CA that every client must then trust`,
      );
    }
    const leaf = makeServerCert({ cert: ca.cert, key: ca.key }, { names, commonName: names[0] });
    writeSecret(keyFile, leaf.key);
    Deno.writeTextFileSync(certFile, leaf.cert + ca.cert);
    Deno.writeTextFileSync(namesFile, JSON.stringify(names));
  }
  return { caFile, certFile, keyFile, fingerprint: pemFingerprint(ca.cert), names, createdCa };
}

/**
 * Why a certificate given with `--cert` will be refused by Keep's clients,
 * or null: rustls refuses a CA certificate (basicConstraints CA:TRUE, what
 * `openssl req -x509` makes by default) as a server's own certificate.
 */
export function certProblem(pem: string): string | null {
  let x: X509Certificate;
  try {
    x = new X509Certificate(pem);
  } catch (err) {
    return `it is not a PEM certificate (${(err as Error).message})`;
  }
  if (x.ca) {
    return "it is a CA certificate (basicConstraints CA:TRUE, what openssl req -x509 makes by default), which TLS clients refuse as a server's own certificate (CaUsedAsEndEntity): use --tls auto, or make it with -addext basicConstraints=critical,CA:FALSE";
  }
  return null;
}

/** What writeAutoTls did, or why a migration did not call it. */
export interface TlsCopy {
  /**
   * copied (or already there); none: the source has no CA; kept: the target
   * has another CA; left: not copied (the target has no data dir, or the
   * migration did not finish: its next run copies it).
   */
  outcome: "copied" | "none" | "kept" | "left";
  /** The fingerprint of the CA concerned: the target's for kept, else the source's. */
  fingerprint: string | null;
}

/** The `--tls auto` files of a data dir, read and checked (writeAutoTls writes them). */
export interface AutoTlsFiles {
  /** File name in DIR/tls/ → its text; ca.pem is always there. */
  files: Map<string, string>;
  fingerprint: string;
}

/** The files of DATA/tls/, and whether each is a secret (mode 0600); ca.pem is written last. */
const SETUP_FILES: [string, boolean][] = [
  ["ca-key.pem", true],
  ["key.pem", true],
  ["cert.pem", false],
  ["names.json", false],
  ["ca.pem", false],
];

/**
 * Reads the `--tls auto` set-up of data dir `dataDir` (null when it has no
 * CA). Each file must be a regular file (not a link, a pipe or a device) of
 * PEM text, or JSON for names.json: a hostile or damaged source cannot make
 * a migration copy another file of this host into the target.
 */
export function readAutoTls(dataDir: string): AutoTlsFiles | null {
  const dir = join(dataDir, "tls");
  try {
    if (!Deno.lstatSync(dir).isDirectory) {
      throw new KeepError("integrity", `Cannot copy ${dir}: not a directory (a link?)`);
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    if (err instanceof KeepError) throw err;
    throw new KeepError("unavailable", `Cannot read ${dir}: ${(err as Error).message}`);
  }
  const files = new Map<string, string>();
  for (const [name] of SETUP_FILES) {
    const file = join(dir, name);
    let st: Deno.FileInfo;
    try {
      st = Deno.lstatSync(file);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) continue;
      throw new KeepError("unavailable", `Cannot read ${file}: ${(err as Error).message}`);
    }
    if (!st.isFile || st.size > 1 << 20) {
      throw new KeepError(
        "integrity",
        `Cannot copy ${file}: not a regular file of at most 1 MiB (a link, a device or damage)`,
      );
    }
    const text = readText(file);
    if (text === null) {
      throw new KeepError("unavailable", `Cannot read ${file}: it went while being copied`);
    }
    const ok = name === "names.json"
      ? (() => {
        try {
          return Array.isArray(JSON.parse(text));
        } catch {
          return false;
        }
      })()
      : /^-----BEGIN [A-Z ]+-----\r?\n/.test(text);
    if (!ok) {
      throw new KeepError(
        "integrity",
        `Cannot copy ${file}: not ${name === "names.json" ? "a JSON list" : "PEM text"}`,
      );
    }
    files.set(name, text);
  }
  const ca = files.get("ca.pem");
  if (ca === undefined) return null;
  return { files, fingerprint: pemFingerprint(ca) };
}

/**
 * Writes a set-up read by readAutoTls into data dir `toDir` (a migration's
 * target), so that a server there presents the CA clients already trust or
 * pin. A target with a CA of its own keeps it. Each file is written to a
 * temp file, synced and renamed into place (a link in the target is
 * replaced, never written through), keys with mode 0600 in a 0700 dir, and
 * the CA certificate last: a copy cut short is made again by the next run.
 *
 * @example
 * ```ts
 * const tls = readAutoTls("/srv/keep");
 * if (tls) writeAutoTls(tls, "/srv/keep-node1");
 * ```
 */
export function writeAutoTls(tls: AutoTlsFiles, toDir: string): TlsCopy {
  const to = join(toDir, "tls");
  let dirSt: Deno.FileInfo | null = null;
  try {
    dirSt = Deno.lstatSync(to);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new KeepError("unavailable", `Cannot read ${to}: ${(err as Error).message}`);
    }
  }
  if (dirSt && !dirSt.isDirectory) {
    throw new KeepError("usage", `Cannot copy the TLS set-up into ${to}: it is not a directory`);
  }
  let theirs: string | null = null;
  try {
    if (Deno.lstatSync(join(to, "ca.pem")).isFile) {
      theirs = Deno.readTextFileSync(join(to, "ca.pem"));
    }
  } catch { /* none */ }
  const ca = tls.files.get("ca.pem")!;
  if (theirs !== null && theirs !== ca) {
    return { outcome: "kept", fingerprint: pemFingerprint(theirs) };
  }
  try {
    Deno.mkdirSync(to, { recursive: true, mode: 0o700 });
    Deno.chmodSync(to, 0o700);
    for (const [name, secret] of SETUP_FILES) {
      const text = tls.files.get(name);
      if (text === undefined) continue;
      const tmp = join(to, `.${name}.${crypto.randomUUID()}.tmp`);
      try {
        const f = Deno.openSync(tmp, { write: true, createNew: true, mode: 0o600 });
        try {
          const bytes = new TextEncoder().encode(text);
          for (let o = 0; o < bytes.length;) o += f.writeSync(bytes.subarray(o));
          f.syncSync();
        } finally {
          f.close();
        }
        Deno.chmodSync(tmp, secret ? 0o600 : 0o644);
        Deno.renameSync(tmp, join(to, name));
      } catch (err) {
        try {
          Deno.removeSync(tmp);
        } catch { /* never made, or renamed */ }
        throw err;
      }
    }
  } catch (err) {
    if (err instanceof KeepError) throw err;
    throw new KeepError(
      "unavailable",
      `Cannot copy the TLS set-up into ${to}: ${(err as Error).message}`,
    );
  }
  return { outcome: "copied", fingerprint: tls.fingerprint };
}
