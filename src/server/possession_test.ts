import { Buffer } from "node:buffer";
import { assertEquals, assertThrows } from "../../tests/assert.ts";
import { KeepError } from "../errors.ts";
import { parseChangeRecord } from "../format/manifest.ts";
import { NONCE_TTL_MS, PossessionKeys } from "./possession.ts";

Deno.test("PossessionKeys.keyFor gives the issued key back for its project only, until it expires", () => {
  let now = 1_800_000_000_000;
  const keys = new PossessionKeys(new Uint8Array(32).fill(7), () => now);
  const { nonce, key } = keys.issue("app");
  assertEquals(keys.keyFor("app", nonce), key);
  assertEquals(keys.keyFor("other", nonce).length, 32);
  assertEquals(Buffer.compare(keys.keyFor("other", nonce), key) !== 0, true);
  // Another process (another secret) has other keys for the same nonce.
  const restarted = new PossessionKeys(new Uint8Array(32).fill(8), () => now);
  assertEquals(Buffer.compare(restarted.keyFor("app", nonce), key) !== 0, true);
  now += NONCE_TTL_MS + 1;
  const err = assertThrows(() => keys.keyFor("app", nonce), KeepError);
  assertEquals(err.code, "conflict");
  for (const bad of ["", "x", "zzzzzzzzzzzzz.00", `${nonce}0`]) {
    assertThrows(() => keys.keyFor("app", bad), KeepError, /is expired or not from this store/);
  }
});

Deno.test("parseChangeRecord reads have records and refuses them without hash, nonce or proof", () => {
  const e = { p: "a.bin", t: "f", s: 5, m: 420, mt: "1", ct: "1", h: "ab".repeat(32) };
  const r = parseChangeRecord(JSON.stringify({ op: "have", e, n: "k.1", proof: "c".repeat(32) }));
  assertEquals(r.op, "have");
  for (
    const bad of [
      { op: "have", e: { ...e, h: undefined }, n: "k", proof: "c".repeat(32) },
      { op: "have", e: { ...e, s: 0 }, n: "k", proof: "c".repeat(32) },
      { op: "have", e: { ...e, t: "d", s: 0, h: undefined }, n: "k", proof: "c".repeat(32) },
      { op: "have", e, proof: "c".repeat(32) },
      { op: "have", e, n: "k", proof: "C".repeat(32) },
      { op: "have", e, n: "k", proof: "c".repeat(64) },
    ]
  ) {
    assertThrows(() => parseChangeRecord(JSON.stringify(bad)), KeepError, /^Cannot read upload/);
  }
});
