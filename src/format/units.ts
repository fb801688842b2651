/**
 * Sizes and durations as people write and read them, for messages on both
 * sides of the wire.
 *
 * @module
 */

/** Human-readable bytes: "512 B", "3.25 MiB", "12.0 GiB". */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
