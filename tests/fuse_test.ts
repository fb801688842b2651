/**
 * A real FUSE mount: sshfs to an sshd on 127.0.0.1 (free port, throwaway
 * keys), both started here. There mtimes are whole seconds and ctime only
 * mirrors mtime, so a same-size rewrite whose mtime is put back is invisible
 * to size + mtime + ctime; the default backup must notice that it cannot
 * trust ctime there and compare content instead.
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { json, KEEP, keepOk, startServer, tempDir } from "./helpers.ts";

function need(cmd: string, args: string[], pkg: string): void {
  let ok = false;
  try {
    ok = new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).outputSync().code !== 127;
  } catch {
    ok = false;
  }
  assert(ok, `this test needs ${cmd} (apt-get install ${pkg}); scripts/test installs it`);
}

async function sh(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
) {
  const out = await new Deno.Command(cmd, { args, ...opts, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed: ${text.trim()}`);
  return text;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

interface Mount {
  dir: string;
  remote: string;
  close(): Promise<void>;
}

/** sshd on a free loopback port and an sshfs mount of `remote` through it. */
async function sshfsMount(): Promise<Mount> {
  need("/usr/sbin/sshd", ["-V"], "openssh-server");
  need("sshfs", ["--version"], "sshfs");
  need("ssh-keygen", ["-?"], "openssh-client");
  const fuse = new Deno.Command("test", { args: ["-c", "/dev/fuse"] }).outputSync().success;
  assert(fuse, "this test needs /dev/fuse (FUSE) to mount sshfs");
  const t = await tempDir("keep-sshfs-");
  await sh("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(t, "host")]);
  await sh("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(t, "user")]);
  Deno.copyFileSync(join(t, "user.pub"), join(t, "authorized_keys"));
  Deno.chmodSync(join(t, "authorized_keys"), 0o600);
  Deno.mkdirSync("/run/sshd", { recursive: true });
  const port = freePort();
  const me = Deno.env.get("USER") ?? new TextDecoder().decode(
    new Deno.Command("id", { args: ["-un"], stdout: "piped" }).outputSync().stdout,
  ).trim();
  Deno.writeTextFileSync(
    join(t, "sshd_config"),
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${join(t, "host")}`,
      `AuthorizedKeysFile ${join(t, "authorized_keys")}`,
      "PermitRootLogin prohibit-password",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      "StrictModes no",
      `PidFile ${join(t, "sshd.pid")}`,
      "Subsystem sftp internal-sftp",
      "",
    ].join("\n"),
  );
  await sh("/usr/sbin/sshd", ["-f", join(t, "sshd_config"), "-E", join(t, "sshd.log")]);
  const remote = join(t, "remote");
  const dir = join(t, "mnt");
  Deno.mkdirSync(remote);
  Deno.mkdirSync(dir);
  const opts = [
    `IdentityFile=${join(t, "user")}`,
    "StrictHostKeyChecking=no",
    "UserKnownHostsFile=/dev/null",
    "BatchMode=yes",
  ].join(",");
  let mounted = false;
  for (let i = 0; i < 50 && !mounted; i++) {
    try {
      await sh("sshfs", ["-p", String(port), "-o", opts, `${me}@127.0.0.1:${remote}`, dir]);
      mounted = true;
    } catch (err) {
      if (i === 49) throw err;
      await new Promise((r) => setTimeout(r, 100)); // sshd still starting
    }
  }
  return {
    dir,
    remote,
    async close() {
      await sh("fusermount", ["-u", dir]).catch(() => sh("umount", ["-l", dir]));
      try {
        Deno.kill(Number(Deno.readTextFileSync(join(t, "sshd.pid")).trim()), "SIGTERM");
      } catch { /* gone */ }
    },
  };
}

const MAKEFILE = `CC ?= cc
prog: main.o util.o
\t$(CC) -o prog main.o util.o
%.o: %.c
\t$(CC) -O1 -c -o $@ $<
backup: prog
\t$(KEEP) backup --project fuse .
.PHONY: backup
`;

Deno.test("on an sshfs mount the default backup sees a same-size rewrite whose mtime was put back", async () => {
  need("make", ["--version"], "make");
  need("cc", ["--version"], "gcc");
  await using server = await startServer();
  const mount = await sshfsMount();
  try {
    const d = mount.dir;
    Deno.writeTextFileSync(join(d, "Makefile"), MAKEFILE);
    Deno.writeTextFileSync(
      join(d, "main.c"),
      '#include <stdio.h>\nint answer(void);\nint main(void) { printf("%d\\n", answer()); return 0; }\n',
    );
    const util = "int answer(void) { return 41; }\n";
    Deno.writeTextFileSync(join(d, "util.c"), util);
    // An old source file (not "racily clean": far from any scan's time).
    const old = new Date(Date.now() - 3600_000);
    Deno.utimeSync(join(d, "util.c"), old, old);
    const env = { KEEP: KEEP, KEEP_SERVER: server.url };
    const first = await sh("make", ["backup"], { cwd: d, env });
    assertMatch(first, /commit [0-9a-f]{16} \(#1\)/);
    // The summary says why it compares content here.
    assertMatch(first, /check {5}partial: ctime on a fuse mount/);
    // Same size, mtime put back: only the content differs.
    const st = Deno.statSync(join(d, "util.c"));
    const rewritten = util.replace("41", "42");
    assertEquals(rewritten.length, util.length);
    Deno.writeTextFileSync(join(d, "util.c"), rewritten);
    Deno.utimeSync(join(d, "util.c"), st.atime!, st.mtime!);
    const after = Deno.statSync(join(d, "util.c"));
    assertEquals([after.size, after.mtime?.getTime()], [st.size, st.mtime?.getTime()]);
    const second = json<{ changed: number; check: string; commit: { seq: number } }>(
      await keepOk(["backup", "-s", server.url, "-p", "fuse", "--json", d]),
    );
    assertEquals([second.commit.seq, second.changed, second.check], [2, 1, "partial"]);
    const dest = await tempDir();
    await keepOk(["restore", "-s", server.url, "-p", "fuse", join(dest, "r")]);
    assertEquals(Deno.readTextFileSync(join(dest, "r", "util.c")), rewritten);
    assert(Deno.statSync(join(dest, "r", "prog")).isFile, "the built program is in the commit");
  } finally {
    await mount.close();
  }
});

Deno.test("an sshfs mount inside a local tree: its files get the content check, the local ones do not", async () => {
  await using server = await startServer();
  const mount = await sshfsMount();
  const tree = await tempDir();
  const inside = join(tree, "remote");
  Deno.mkdirSync(inside);
  Deno.writeTextFileSync(join(tree, "local.txt"), "local 1\n");
  try {
    // Bind the sshfs mount into the local tree.
    await sh("mount", ["--bind", mount.dir, inside]);
    try {
      const old = new Date(Date.now() - 3600_000);
      Deno.writeTextFileSync(join(inside, "s.txt"), "version 1\n");
      Deno.utimeSync(join(inside, "s.txt"), old, old);
      const first = json<{ check: string; checkReason: string }>(
        await keepOk(["backup", "-s", server.url, "-p", "mix", "--settle", "0", "--json", tree]),
      );
      assertEquals(first.check, "partial");
      assertMatch(first.checkReason, /mounts at remote/);
      // Same size, mtime put back, on the mount: only the content differs.
      const st = Deno.statSync(join(inside, "s.txt"));
      Deno.writeTextFileSync(join(inside, "s.txt"), "version 2\n");
      Deno.utimeSync(join(inside, "s.txt"), st.atime!, st.mtime!);
      const second = json<{ changed: number; hashed: number }>(
        await keepOk(["backup", "-s", server.url, "-p", "mix", "--settle", "0", "--json", tree]),
      );
      assertEquals(second.changed, 1);
      const dest = await tempDir();
      await keepOk(["restore", "-s", server.url, "-p", "mix", join(dest, "r")]);
      assertEquals(Deno.readTextFileSync(join(dest, "r", "remote", "s.txt")), "version 2\n");
    } finally {
      await sh("umount", [inside]).catch(() => sh("umount", ["-l", inside]));
    }
  } finally {
    await mount.close();
  }
});
