/**
 * The README's first command, `./scripts/deno task demo`, as a user runs
 * it: a server, two backups, two restores compared. It broke once without a
 * test noticing (its reading of `log --json` outlived the JSON envelope).
 */

import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { ROOT, tempDir } from "./helpers.ts";

Deno.test("the README's demo runs to its end on an embedded store", async () => {
  const data = join(await tempDir(), "keep-data");
  const out = await new Deno.Command(join(ROOT, "scripts/deno"), {
    args: ["task", "demo"],
    cwd: ROOT,
    env: { KEEP_DEMO_DATA: data, KEEP_SERVER: "", KEEP_PROJECT: "", KEEP_TOKEN: "" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, text.slice(-2000));
  assert(text.includes("keep demo: done"), text.slice(-2000));
  assert(Deno.statSync(join(data, "index.db")).isFile);
});
