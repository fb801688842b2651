/**
 * Flag parsing shared by the subcommands: strict `node:util` parseArgs with
 * one-line usage errors, plus the value syntaxes flags use (durations,
 * sizes, host:port, key=value) and environment fallbacks.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { KeepError } from "../errors.ts";
export { formatBytes } from "../format/units.ts";

export type FlagSpec = Record<
  string,
  { type: "string" | "boolean"; short?: string; multiple?: boolean }
>;

export interface Parsed {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/** Parses `args` against `spec`; unknown flags and missing values are usage errors. */
export function parseFlags(command: string, args: string[], spec: FlagSpec): Parsed {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: { ...spec, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Parsed["values"], positionals };
  } catch (err) {
    const msg = (err as Error).message.split("\n")[0].replace(/\. To specify.*$/, "");
    // parseArgs calls a value that starts with "-" ambiguous: say what it is.
    const ambiguous = msg.match(/^Option '(?:-\w, )?(-{1,2}[\w-]+)[^']*' argument is ambiguous/);
    if (ambiguous) {
      const flag = ambiguous[1];
      const i = args.indexOf(flag);
      const value = i >= 0 ? args[i + 1] ?? "" : "";
      throw new KeepError(
        "usage",
        /^-\d/.test(value)
          ? `Cannot use ${flag} ${value}: negative values are not allowed`
          : `Cannot parse flags of keep ${command}: ${flag} needs a value (see keep ${command} --help)`,
      );
    }
    throw new KeepError(
      "usage",
      `Cannot parse flags of keep ${command}: ${msg} (see keep ${command} --help)`,
    );
  }
}

/** A string flag, else an environment variable, else undefined. */
export function flagOrEnv(p: Parsed, flag: string, env: string): string | undefined {
  const v = p.values[flag];
  if (typeof v === "string") return v;
  const e = Deno.env.get(env);
  return e === undefined || e === "" ? undefined : e;
}

/** A required string flag (or environment variable). */
export function required(p: Parsed, command: string, flag: string, env?: string): string {
  const v = env ? flagOrEnv(p, flag, env) : p.values[flag];
  if (typeof v !== "string" || v === "") {
    throw new KeepError(
      "usage",
      `Cannot run keep ${command}: --${flag}${env ? ` (or ${env})` : ""} is required`,
    );
  }
  return v;
}

/** Exactly `n` positional arguments, named for the error message. */
export function positionals(p: Parsed, command: string, names: string[], optional = 0): string[] {
  const min = names.length - optional;
  if (p.positionals.length < min || p.positionals.length > names.length) {
    throw new KeepError(
      "usage",
      `Cannot run keep ${command}: expected ${
        names.map((n, i) => (i >= min ? `[${n}]` : n)).join(" ")
      }, got ${
        p.positionals.length ? p.positionals.map((a) => JSON.stringify(a)).join(" ") : "nothing"
      }`,
    );
  }
  return p.positionals;
}

/**
 * "2s", "500ms", "1m", "36h", "7d", "2w", "1y", "1d12h" → ms. Units: ms, s,
 * m or min (minutes), h, d, w, mo (30 d), y (365 d). `noBareM` refuses "m"
 * (restic's --keep-within reads it as months).
 */
export function parseDuration(text: string, flag: string, noBareM = false): number {
  const t = text.trim();
  const part = /(\d+(?:\.\d+)?)(ms|min|mo|s|m|h|d|w|y)?/y;
  const UNIT: Record<string, number> = {
    ms: 1,
    s: 1000,
    m: 60_000,
    min: 60_000,
    h: 3_600_000,
    d: 86_400_000,
    w: 7 * 86_400_000,
    mo: 30 * 86_400_000,
    y: 365 * 86_400_000,
  };
  let total = 0;
  let at = 0;
  let parts = 0;
  while (at < t.length) {
    part.lastIndex = at;
    const m = part.exec(t);
    if (!m) break;
    const n = Number(m[1]);
    const unit = m[2] ?? (n === 0 && parts === 0 && m[0].length === t.length ? "s" : undefined);
    if (!unit) {
      throw new KeepError(
        "usage",
        `Cannot parse --${flag} ${text}: give a unit (ms, s, min, h, d, w, mo, y)`,
      );
    }
    if (unit === "m" && noBareM) {
      throw new KeepError(
        "usage",
        `Cannot parse --${flag} ${text}: "m" is ambiguous here; write min (minutes) or mo (months)`,
      );
    }
    total += n * UNIT[unit];
    at = part.lastIndex;
    parts++;
  }
  if (parts === 0 || at !== t.length) {
    throw new KeepError(
      "usage",
      `Cannot parse --${flag} ${JSON.stringify(text)}: use e.g. 2s, 500ms, 1m, 7d, 1d12h`,
    );
  }
  return total;
}

/** "64G", "10MiB", "1500" → bytes. */
export function parseSize(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?$/i.exec(text.trim());
  if (!m) {
    throw new KeepError(
      "usage",
      `Cannot parse --${flag} ${JSON.stringify(text)}: use e.g. 512M, 64G`,
    );
  }
  const mult = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[m[2].toUpperCase()]!;
  return Math.floor(Number(m[1]) * mult);
}

/** "host:port", ":port", "[::1]:port" → parts. */
export function parseListen(text: string): { hostname: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new KeepError(
      "usage",
      `Cannot parse --listen ${JSON.stringify(text)}: use HOST:PORT, e.g. 127.0.0.1:8080`,
    );
  }
  return { hostname: m[1] ?? (m[2] || "127.0.0.1"), port };
}

/** Repeated "k=v" flags → object. */
export function parseTags(list: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of list ?? []) {
    const i = t.indexOf("=");
    if (i <= 0) {
      throw new KeepError("usage", `Cannot parse --tag ${JSON.stringify(t)}: use key=value`);
    }
    out[t.slice(0, i)] = t.slice(i + 1);
  }
  return out;
}

/** Common client flags. */
export const CLIENT_FLAGS: FlagSpec = {
  server: { type: "string", short: "s" },
  project: { type: "string", short: "p" },
  token: { type: "string" },
  ca: { type: "string" },
  fingerprint: { type: "string" },
};

export const CLIENT_HELP = `Connection (flags, or environment variables):
  -s, --server URL     server base URL            KEEP_SERVER   (default http://127.0.0.1:8080)
  -p, --project ID     project id [A-Za-z0-9._-]  KEEP_PROJECT
      --token TOKEN    bearer token               KEEP_TOKEN
      --ca FILE        PEM CA to trust (TLS)      KEEP_CA
      --fingerprint FP trust the CA certificate with this SHA-256 (keep serve --tls auto
                       prints it)                 KEEP_FINGERPRINT`;

/** Server, token and CA from flags or the environment. */
export function clientOptions(
  p: Parsed,
): { server: string; token?: string; caFile?: string; fingerprint?: string } {
  return {
    server: flagOrEnv(p, "server", "KEEP_SERVER") ?? "http://127.0.0.1:8080",
    token: flagOrEnv(p, "token", "KEEP_TOKEN"),
    caFile: flagOrEnv(p, "ca", "KEEP_CA"),
    fingerprint: flagOrEnv(p, "fingerprint", "KEEP_FINGERPRINT"),
  };
}

/** `--index postgres://…` (a URL) or `--index pg:` (the PG* variables): what PgIndex opens. */
export function parseIndexFlag(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (value === "pg:") return "";
  if (/^postgres(ql)?:\/\/./.test(value)) return value;
  throw new KeepError(
    "usage",
    `Cannot use --index ${value}: give postgres://USER@HOST:PORT/DB, or pg: for the PG* variables`,
  );
}
