/**
 * The progress line of `keep backup` and `keep restore` on a terminal:
 * phase, entries and bytes done of the total, rate and ETA, redrawn in place
 * (carriage return, erase line) at most 4 times a second, on stderr. Off when
 * stderr is not a terminal unless forced (`--progress`); `--no-progress`
 * turns it off. The line is erased before any other output and at the end,
 * so what stays on the screen is the result.
 *
 * @module
 */

import { KeepError } from "../errors.ts";
import { formatBytes } from "../format/units.ts";

/** Least time between two redraws (ms). */
const REDRAW_MS = 250;

export interface ProgressOptions {
  /** null: decide from whether stderr is a terminal. */
  force: boolean | null;
  /** Where frames go (default: stderr). */
  write?: (text: string) => void;
  now?: () => number;
  /** Terminal width (default: the console's, else 100). */
  columns?: () => number;
}

function duration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${Math.ceil(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** One command's progress line. */
export class Progress {
  readonly enabled: boolean;
  #label: string;
  #write: (text: string) => void;
  #now: () => number;
  #columns: () => number;
  #phase = "";
  #total: { entries: number; bytes: number } | null = null;
  #done = { entries: 0, bytes: 0 };
  #phaseStart = 0;
  #lastDraw = -Infinity;
  #shown = false;
  #timer: ReturnType<typeof setInterval> | undefined;
  /** Frames drawn (tests count them). */
  frames = 0;

  constructor(label: string, options: ProgressOptions) {
    this.#label = label;
    this.enabled = options.force ?? Deno.stderr.isTerminal();
    const enc = new TextEncoder();
    this.#write = options.write ?? ((t) => Deno.stderr.writeSync(enc.encode(t)));
    this.#now = options.now ?? (() => performance.now());
    this.#columns = options.columns ?? (() => {
      try {
        return Deno.consoleSize().columns;
      } catch {
        return 100;
      }
    });
  }

  /** A new phase, with what it has to do when known. */
  phase(name: string, total?: { entries: number; bytes: number }): void {
    this.#phase = name;
    this.#total = total ?? null;
    this.#done = { entries: 0, bytes: 0 };
    this.#phaseStart = this.#now();
    this.#draw();
    // A phase without updates (a long scan) still shows its time going by.
    if (this.enabled && this.#timer === undefined) {
      const timer = setInterval(() => this.#draw(), REDRAW_MS);
      Deno.unrefTimer(timer as unknown as number);
      this.#timer = timer;
    }
  }

  /** Stops redrawing and erases the line. */
  end(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.clear();
  }

  /** What the phase has done so far. */
  update(entries: number, bytes: number): void {
    this.#done = { entries, bytes };
    this.#draw();
  }

  /** Writes a line of other output without tearing the progress line. */
  note(line: string): void {
    this.clear();
    this.#write(line + "\n");
  }

  /** Erases the line (before the result is printed). */
  clear(): void {
    if (this.#shown) this.#write("\r\x1b[K");
    this.#shown = false;
  }

  /** The text of the line as it stands. */
  line(): string {
    const secs = (this.#now() - this.#phaseStart) / 1000;
    const d = this.#done;
    const t = this.#total;
    const parts = [`${this.#label}: ${this.#phase}`];
    if (t) {
      parts.push(`${d.entries}/${t.entries} files`);
      parts.push(`${formatBytes(d.bytes)}/${formatBytes(t.bytes)}`);
      parts.push(`${t.bytes ? Math.floor((d.bytes / t.bytes) * 100) : 100}%`);
    } else if (d.entries || d.bytes) {
      parts.push(`${d.entries} files`, formatBytes(d.bytes));
    }
    if (d.bytes && secs > 0) {
      const rate = d.bytes / secs;
      parts.push(`${formatBytes(Math.round(rate))}/s`);
      if (t && t.bytes > d.bytes) parts.push(`ETA ${duration((t.bytes - d.bytes) / rate)}`);
    } else parts.push(`${duration(secs)}`);
    return parts.join("  ");
  }

  #draw(): void {
    if (!this.enabled) return;
    const now = this.#now();
    if (now - this.#lastDraw < REDRAW_MS) return;
    this.#lastDraw = now;
    this.frames++;
    this.#shown = true;
    this.#write(`\r\x1b[K${this.line().slice(0, Math.max(20, this.#columns() - 1))}`);
  }
}

/** `--progress` / `--no-progress` → Progress's `force`. */
export function progressFlag(values: Record<string, unknown>): boolean | null {
  if (values.progress && values["no-progress"]) {
    throw new KeepError("usage", "Cannot use --progress and --no-progress together");
  }
  return values.progress ? true : values["no-progress"] ? false : null;
}
