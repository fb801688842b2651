/**
 * Hex text and bytes, both ways, without a string per byte on the hot path
 * (content hashes travel as hex on the wire and as bytes in the index).
 *
 * @module
 */

const HEX_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) {
  HEX_VALUE["0123456789abcdef".charCodeAt(i)] = i;
  HEX_VALUE["0123456789ABCDEF".charCodeAt(i)] = i;
}

/**
 * Lower- or upper-case hex to bytes (callers validate the text first).
 *
 * @example
 * ```ts
 * hexToBytes("00ff"); // Uint8Array [0, 255]
 * ```
 */
export function hexToBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length >> 1);
  for (let i = 0, j = 0; i < out.length; i++, j += 2) {
    out[i] = (HEX_VALUE[hex.charCodeAt(j) & 127] << 4) | HEX_VALUE[hex.charCodeAt(j + 1) & 127];
  }
  return out;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/**
 * Bytes to lower-case hex.
 *
 * @example
 * ```ts
 * bytesToHex(new Uint8Array([0, 255])); // "00ff"
 * ```
 */
export function bytesToHex(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += HEX[b[i]];
  return s;
}
