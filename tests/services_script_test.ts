/**
 * scripts/services' ownership checks without the services themselves: a
 * state dir whose pid files name processes that are not its daemons (pids
 * reused after a reboot or a kill -9) is down, even when something else
 * answers on its ports.
 */

import { join } from "node:path";
import { assertEquals, assertMatch } from "./assert.ts";
import { tempDir } from "./helpers.ts";

const SCRIPT = join(new URL("..", import.meta.url).pathname, "scripts/services");

Deno.test("scripts/services status: a stale pid file naming another live process is not our radosgw", async () => {
  const state = await tempDir("keep-services-");
  // Another program answers HTTP on the port this state dir's radosgw had.
  await using http = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("not radosgw"),
  );
  Deno.mkdirSync(join(state, "ceph/run"), { recursive: true });
  Deno.writeTextFileSync(
    join(state, "ceph/ceph.conf"),
    `[client.rgw.a]\nrgw frontends = beast endpoint=127.0.0.1:${http.addr.port}\n`,
  );
  // And the pid radosgw had is some other process's now.
  const other = new Deno.Command("sleep", { args: ["60"] }).spawn();
  try {
    Deno.writeTextFileSync(join(state, "ceph/run/client.rgw.a.pid"), `${other.pid}\n`);
    const out = await new Deno.Command(SCRIPT, {
      args: ["status"],
      env: { KEEP_SERVICES: state },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assertMatch(text, /^radosgw: down$/m);
    assertEquals(out.code, 1, text);
  } finally {
    other.kill();
    await other.status;
  }
});
