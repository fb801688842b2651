/**
 * The rule of each folder of src/, checked on the imports themselves (see
 * docs/DESIGN.md, "Layout of the code"): the client and the server halves
 * never import each other, formats and platform glue import neither, and
 * only main.ts reaches the commands.
 */

import { join, relative } from "node:path";
import { assertEquals } from "./assert.ts";
import { ROOT } from "./helpers.ts";

/** Every non-test source file under src/, as a path relative to src/. */
function sources(dir = join(ROOT, "src")): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const abs = join(dir, e.name);
    if (e.isDirectory) out.push(...sources(abs));
    else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) {
      out.push(relative(join(ROOT, "src"), abs));
    }
  }
  return out.sort();
}

/** The files of src/ that `file` imports (static, dynamic, Worker URLs). */
function importsOf(file: string): string[] {
  const text = Deno.readTextFileSync(join(ROOT, "src", file));
  const out: string[] = [];
  const re = /(?:from\s*|import\s*\(\s*|import\s+|new URL\(\s*)["'](\.{1,2}\/[^"']+)["']/g;
  for (const m of text.matchAll(re)) {
    out.push(relative(join(ROOT, "src"), join(ROOT, "src", file, "..", m[1])));
  }
  return out;
}

/** The folder rule a file lives under: the first segment ("client", "server", …). */
function room(path: string): string {
  return path.includes("/") ? path.slice(0, path.indexOf("/")) : path;
}

/** What each room may import (rooms, or single files by path). */
const ALLOWED: Record<string, string[]> = {
  "errors.ts": [],
  platform: ["platform", "errors.ts"],
  format: ["format", "platform", "errors.ts"],
  client: ["client", "format", "platform", "errors.ts"],
  server: ["server", "format", "platform", "errors.ts"],
  http: ["http", "client", "server", "format", "platform", "errors.ts"],
  cmd: ["cmd", "http", "client", "server", "format", "platform", "errors.ts"],
  "main.ts": ["cmd", "format", "platform", "errors.ts"],
};

/** Files of http/ that belong to one half only. */
const HALF: Record<string, string> = { "http/client.ts": "client" };

Deno.test("each folder of src/ imports only what its rule allows", () => {
  const broken: string[] = [];
  const files = sources();
  for (const file of files) {
    const from = room(file);
    const allowed = ALLOWED[from];
    if (!allowed) {
      broken.push(`${file}: a folder or file with no rule (add it to ALLOWED and DESIGN.md)`);
      continue;
    }
    for (const target of importsOf(file)) {
      const to = room(target);
      if (!allowed.includes(to)) broken.push(`${file} imports ${target} (${from} -> ${to})`);
      // The client's HTTP side knows nothing of the server, and the reverse.
      const half = HALF[file];
      if (half === "client" && to === "server") broken.push(`${file} imports ${target}`);
      if (from === "http" && !half && to === "client") broken.push(`${file} imports ${target}`);
    }
  }
  assertEquals(broken, []);
  // The check reads real imports (a rule on an empty list would prove nothing).
  assertEquals(importsOf("client/backup.ts").some((t) => t.startsWith("client/")), true);
  assertEquals(files.some((f) => f.startsWith("server/storage/")), true);
});
