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

/** `ls -l`'s mode column: "drwxr-xr-x", "-rw-r--r--", "lrwxrwxrwx". */
export function modeString(type: string, mode: number): string {
  const t = type === "d" ? "d" : type === "l" ? "l" : "-";
  const rwx = (m: number) => `${m & 4 ? "r" : "-"}${m & 2 ? "w" : "-"}${m & 1 ? "x" : "-"}`;
  return t + rwx(mode >> 6) + rwx(mode >> 3) + rwx(mode);
}

/** A time in ns since the epoch (bigint or decimal string) as "2026-01-31 12:00:00" (UTC). */
export function nsToIso(ns: bigint | string): string {
  return new Date(Number(BigInt(ns) / 1_000_000n)).toISOString().slice(0, 19).replace("T", " ");
}

/** A signed byte delta: "+1.50 KiB", "-3 B", "0 B". */
export function formatDelta(n: number): string {
  return n > 0 ? `+${formatBytes(n)}` : n < 0 ? `-${formatBytes(-n)}` : "0 B";
}
