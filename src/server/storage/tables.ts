/**
 * The durable tables of an index, as both backends (SQLite, PostgreSQL)
 * hold them with the same names and columns: what `keep migrate` copies row
 * by row. Staging tables, uploads in flight and sessions are not durable
 * state of a store and are not listed.
 *
 * Values cross between the two as `CellValue`: integers as bigint (an mtime
 * in ns does not fit a double), bytes as Uint8Array, text as string, NULL
 * as null. `store_meta.value` is a double in PostgreSQL and an integer in
 * SQLite: numbers of that column pass as number.
 *
 * @module
 */

/** One table: its columns in order, the primary key's first `key` columns. */
export interface TableSpec {
  name: string;
  columns: string[];
  /** How many leading columns form the primary key (rows are dumped in its order). */
  key: number;
  /** Columns that are bytes (bytea / BLOB). */
  bytes?: string[];
  /** Columns that are text. */
  text?: string[];
  /** Columns that are floating point numbers (the rest are integers). */
  real?: string[];
}

export type CellValue = string | bigint | number | Uint8Array | null;

const VERSION = ["type", "size", "mode", "mtime", "ctime", "hash", "target", "xxh", "flag"];
const VERSION_TEXT = ["path", "type", "target", "flag"];

/**
 * In the order a copy writes them: blob and pack rows before the versions
 * and commits that name them.
 */
export const DURABLE_TABLES: TableSpec[] = [
  { name: "packs", columns: ["id", "created", "sealed", "dead"], key: 1 },
  {
    name: "blobs",
    columns: [
      "id",
      "hash",
      "size",
      "stored",
      "xxh",
      "pack",
      "offset",
      "level",
      "damaged",
      "orphan",
      "chunked",
    ],
    key: 1,
    bytes: ["hash", "xxh"],
    text: ["damaged"],
  },
  // A big file kept in chunks: its chunks in order (the file's blob row is `chunked`).
  { name: "chunks", columns: ["file", "seq", "chunk"], key: 2, bytes: ["file", "chunk"] },
  { name: "projects", columns: ["id", "name", "head", "created"], key: 1, text: ["name"] },
  {
    name: "history",
    columns: ["project", "path", "first", "last", ...VERSION],
    key: 3,
    bytes: ["hash", "xxh"],
    text: VERSION_TEXT,
  },
  {
    name: "current",
    columns: ["project", "path", "first", ...VERSION],
    key: 2,
    bytes: ["hash", "xxh"],
    text: VERSION_TEXT,
  },
  { name: "paths", columns: ["project", "path"], key: 2, text: ["path"] },
  {
    name: "notes",
    columns: ["project", "seq", "path", "flag", "reason"],
    key: 3,
    text: ["path", "flag", "reason"],
  },
  {
    name: "commits",
    columns: [
      "project",
      "seq",
      "id",
      "parent",
      "time",
      "message",
      "tags",
      "host",
      "source",
      "scan_time",
      "granularity",
      "counts",
      "stats",
      "forgotten",
    ],
    key: 2,
    text: ["id", "parent", "message", "tags", "host", "source", "counts", "stats"],
  },
  {
    name: "policies",
    columns: ["project", "policy", "updated"],
    key: 1,
    text: ["project", "policy"],
  },
  { name: "store_meta", columns: ["key", "value"], key: 1, text: ["key"], real: ["value"] },
  {
    name: "tokens",
    columns: ["id", "hash", "name", "role", "projects", "created", "revoked"],
    key: 1,
    bytes: ["hash"],
    text: ["id", "name", "role", "projects"],
  },
];

/** The spec of `name`; throws for a table that is not durable state. */
export function tableSpec(name: string): TableSpec {
  const t = DURABLE_TABLES.find((t) => t.name === name);
  if (!t) throw new Error(`not a durable table: ${name}`);
  return t;
}

/** A cell as the neutral form: integers as bigint, bytes as Uint8Array. */
export function neutralCell(spec: TableSpec, column: string, v: unknown): CellValue {
  if (v === null || v === undefined) return null;
  if (spec.bytes?.includes(column)) {
    return v instanceof Uint8Array ? new Uint8Array(v) : new Uint8Array(v as ArrayBuffer);
  }
  if (spec.text?.includes(column)) return String(v);
  if (spec.real?.includes(column)) return Number(v);
  return typeof v === "bigint" ? v : BigInt(v as string | number);
}
