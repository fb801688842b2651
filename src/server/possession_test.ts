import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { assertEquals, assertRejects, assertThrows } from "../../tests/assert.ts";
import { commitHeader, Upload } from "../../tests/craft.ts";
import { scopedStore } from "../../tests/helpers.ts";
import { KeepError } from "../errors.ts";
import { parseChangeRecord } from "../format/manifest.ts";
import { Ingest } from "./ingest.ts";
import { checkChunkedPossession, NONCE_TTL_MS, PossessionKeys } from "./possession.ts";

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

Deno.test("checkChunkedPossession reads a list of 8,193 chunks window by window: the content they make, its size, and refusals", async () => {
  await using s = await scopedStore("keep-possession-");
  const part = new TextEncoder().encode("0123456789abcdef".repeat(64)); // 1 KiB, stored in a pack
  const ing = await Ingest.start(s.storage, "app");
  ing.push(new Upload().commit(commitHeader(null)).file("part", part).changes().end().bytes());
  await ing.finish();
  const hex = createHash("sha256").update(part).digest("hex");
  const n = 2 * 4096 + 1; // past two windows
  const packed = new Uint8Array(32 * n);
  for (let i = 0; i < n; i++) packed.set(Buffer.from(hex, "hex"), i * 32);
  const whole = createHash("sha256");
  for (let i = 0; i < n; i++) whole.update(part);
  const want = whole.digest("hex");
  const got = await checkChunkedPossession(s.storage, "f", null, n * part.length, null, packed);
  assertEquals(got.hash, want);
  assertEquals(got.stored, n * (await s.storage.index.blobPlace(hex))!.stored);
  assertEquals(
    (await checkChunkedPossession(s.storage, "f", want, n * part.length, null, packed)).hash,
    want,
  );
  for (
    const [size, claim, why] of [
      [n * part.length + 1, null, /its chunks hold \d+ bytes, not \d+/],
      [n * part.length - 1, null, /its chunks hold more than \d+ bytes/],
      [n * part.length, "ab".repeat(32), /its chunks do not make the content abababababab/],
    ] as const
  ) {
    await assertRejects(
      () => checkChunkedPossession(s.storage, "f", claim, size, null, packed),
      KeepError,
      why,
    );
  }
});
