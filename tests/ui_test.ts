/**
 * The web UI in a real browser: Debian's chromium driven by playwright-core.
 * A restore-token session signs in, walks every page, downloads a file and a
 * folder and compares the bytes with the source tree; it sees nothing of
 * another project; backup tokens, forged and cross-site requests are refused.
 * With KEEP_SCREENSHOTS=DIR the main pages are saved there (docs/ has them).
 */

import { chromium, type Page } from "playwright-core";
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { json, keepOk, startServer, tempDir, token, writeTree } from "./helpers.ts";

const SHOTS = Deno.env.get("KEEP_SCREENSHOTS");

async function shot(page: Page, name: string): Promise<void> {
  if (SHOTS) await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

/** Project "app" (two commits) and project "other", with tokens. */
async function setup() {
  const server = await startServer({ noAuth: false });
  const admin = await token(server.dataDir, "admin", "*");
  const restoreApp = await token(server.dataDir, "restore", "app");
  const backupApp = await token(server.dataDir, "backup", "app");
  const src = await tempDir();
  const big = new Uint8Array(300_000).map((_, i) => (i * 7919) % 251);
  writeTree(src, {
    "src": { dir: true },
    "src/main.c": "int main(void) { return 0; }\n",
    "src/util.c": "int util;\n",
    "build": { dir: true },
    "build/app.bin": big,
    "build/lib": { dir: true },
    "build/lib/libx.a": "!<arch>\n",
    "README.md": "# app\n",
    "docs-link": { link: "README.md" },
  });
  const s = ["-s", server.url, "--token", admin, "--settle", "0", "--json"];
  await keepOk(["backup", ...s, "-p", "app", "-m", "first build", "-t", "ci=1", src]);
  Deno.writeTextFileSync(join(src, "src/main.c"), "int main(void) { return 1; }\n");
  Deno.removeSync(join(src, "src/util.c"));
  Deno.writeTextFileSync(join(src, "src/new.h"), "#pragma once\n");
  const two = json<{ commit: { id: string } }>(
    await keepOk(["backup", ...s, "-p", "app", "-m", "second build", src]),
  );
  const other = await tempDir();
  writeTree(other, { "secret-of-other.txt": "nobody from app sees this" });
  await keepOk(["backup", ...s, "-p", "other", "-m", "other's", other]);
  return { server, admin, restoreApp, backupApp, src, big, head: two.commit.id };
}

async function browser() {
  const b = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
  const context = await b.newContext({
    acceptDownloads: true,
    viewport: { width: 1200, height: 800 },
  });
  return {
    page: await context.newPage(),
    context,
    async [Symbol.asyncDispose]() {
      await b.close();
    },
  };
}

async function signIn(page: Page, url: string, secret: string): Promise<void> {
  await page.goto(url + "/");
  await page.fill("input[name=token]", secret);
  await page.click("#signin");
}

Deno.test("UI: a restore session walks every page and downloads a file and a folder byte for byte", async () => {
  const t = await setup();
  await using server = t.server;
  await using b = await browser();
  const { page } = b;
  const t0 = performance.now();
  await signIn(page, server.url, t.restoreApp);
  assertEquals(new URL(page.url()).pathname, "/");
  await shot(page, "ui-projects");
  // Only what the token may read: app, not other.
  const projects = await page.$$eval(
    "tr.project",
    (rows) => rows.map((r) => r.getAttribute("data-project")),
  );
  assertEquals(projects, ["app"]);
  assertMatch(await page.textContent("#projects") ?? "", /app\s+\d{4}-\d\d-\d\d .*\(\d+ s ago\)/);

  await page.click("a[href='/p/app']");
  const seqs = await page.$$eval(
    "tr.commit",
    (rows) => rows.map((r) => r.getAttribute("data-seq")),
  );
  assertEquals(seqs, ["2", "1"]);
  const timeline = await page.textContent("#timeline") ?? "";
  assertMatch(timeline, /second build/);
  assertMatch(timeline, /ci=1/);
  assertMatch(timeline, /complete/);
  await shot(page, "ui-timeline");

  // The diff of the two (the radios default to the newest two).
  await page.click("#diff");
  assertMatch(await page.textContent("#totals") ?? "", /1 added,\s+1\s+changed,\s+1 deleted/);
  const changes = await page.$$eval(
    "tr.change",
    (rows) => rows.map((r) => `${r.classList[1]} ${r.getAttribute("data-path")}`),
  );
  assertEquals(changes, ["changed src/main.c", "added src/new.h", "deleted src/util.c"]);
  await shot(page, "ui-diff");

  // The tree of the newest commit, with folder sizes; into build/.
  await page.goto(`${server.url}/p/app/tree?commit=${t.head}`);
  const root = await page.$$eval("tr.item", (rows) => rows.map((r) => r.getAttribute("data-path")));
  assertEquals(root, ["README.md", "build", "docs-link", "src"]);
  assertMatch(await page.textContent("tr.item[data-path=build]") ?? "", /293\.\d KiB\s*2 files/);
  await page.click("tr.item[data-path=build] a");
  await shot(page, "ui-tree");
  const [folder] = await Promise.all([
    page.waitForEvent("download"),
    page.click("#download-folder"),
  ]);
  const tgz = join(await tempDir(), "build.tar.gz");
  await folder.saveAs(tgz);
  const out = await tempDir();
  const tar = await new Deno.Command("tar", { args: ["-xzf", tgz, "-C", out] }).output();
  assertEquals(tar.code, 0, new TextDecoder().decode(tar.stderr));
  assertEquals(Deno.readFileSync(join(out, "build/app.bin")), t.big);
  assertEquals(Deno.readTextFileSync(join(out, "build/lib/libx.a")), "!<arch>\n");

  // A file: its page, its download, its history.
  await page.click("tr.item[data-path='build/app.bin'] a");
  assertMatch(await page.textContent("#file") ?? "", /300,?000 bytes|300000 bytes/);
  const [file] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const saved = join(await tempDir(), "app.bin");
  await file.saveAs(saved);
  assertEquals(file.suggestedFilename(), "app.bin");
  assertEquals(Deno.readFileSync(saved), t.big);
  await page.goto(`${server.url}/p/app/history?path=src/main.c`);
  assertEquals(await page.$$eval("tr.version", (r) => r.length), 2);
  await shot(page, "ui-history");

  // Search across all commits: util.c is only in #1.
  await page.goto(`${server.url}/p/app`);
  await page.fill("input[name=q]", "*.c");
  await page.click("#find");
  const found = await page.$$eval("tr.found a", (a) => a.map((x) => x.textContent));
  assertEquals(found, ["src/main.c", "src/util.c"]);
  await shot(page, "ui-find");

  // Project "other" does not exist for this session, on any page or download.
  for (
    const path of [
      "/p/other",
      "/p/other/tree",
      "/p/other/find?q=*",
      "/p/other/history?path=secret-of-other.txt",
      "/p/other/file?path=secret-of-other.txt",
      "/p/other/archive",
      "/p/other/diff?from=1&to=1",
    ]
  ) {
    const r = await page.request.get(server.url + path);
    assertEquals(r.status(), 403, path);
    assert(!(await r.text()).includes("nobody from app"), path);
  }
  const html = await page.content();
  assert(!html.includes(t.restoreApp), "the token is in no page");
  assert(!server.stderr().includes(t.restoreApp.slice(14)), "nor in the log");
  console.log(`UI walk: ${Math.round(performance.now() - t0)} ms`);
});

Deno.test("UI: backup tokens, forged sign-ins and sign-outs, revoked tokens are refused", async () => {
  const t = await setup();
  await using server = t.server;
  await using b = await browser();
  const { page } = b;
  await signIn(page, server.url, t.backupApp);
  assertMatch(await page.textContent("#error") ?? "", /backup token cannot read/);
  await signIn(page, server.url, "keep_00000000_AAAAAAAAAAAAAAAAAAAAAAAA");
  assertMatch(await page.textContent("#error") ?? "", /Unknown or revoked token/);
  // Not signed in: pages say so, API-free.
  const anon = await page.request.get(`${server.url}/p/app/tree`);
  assertEquals(anon.status(), 401);
  // A sign-in posted from another site is refused (login CSRF).
  const forged = await fetch(`${server.url}/ui/signin`, {
    method: "POST",
    headers: { origin: "http://evil.example", "content-type": "application/x-www-form-urlencoded" },
    body: `token=${t.restoreApp}`,
    redirect: "manual",
  });
  assertEquals(forged.status, 403);
  assertEquals(forged.headers.get("set-cookie"), null);
  await forged.body?.cancel();

  await signIn(page, server.url, t.admin);
  const cookies = await b.context.cookies();
  const session = cookies.find((c) => c.name === "keep_session")!;
  assertEquals([session.httpOnly, session.sameSite], [true, "Strict"]);
  const many = await tempDir();
  for (let i = 0; i < 450; i++) {
    Deno.writeTextFileSync(join(many, `f${String(i).padStart(3, "0")}`), `${i}`);
  }
  await keepOk([
    "backup",
    "-s",
    server.url,
    "--token",
    t.admin,
    "-p",
    "many",
    "--settle",
    "0",
    many,
  ]);
  await page.goto(`${server.url}/`);
  const projects = await page.$$eval(
    "tr.project",
    (rows) => rows.map((r) => r.getAttribute("data-project")),
  );
  assertEquals(projects, ["app", "many", "other"]);
  // A large directory comes in pages of 200.
  await page.goto(`${server.url}/p/many/tree`);
  const pages: string[][] = [];
  for (;;) {
    pages.push(await page.$$eval("tr.item", (r) => r.map((x) => x.getAttribute("data-path")!)));
    if (!(await page.$("#next"))) break;
    await page.click("#next");
  }
  assertEquals(pages.map((p) => p.length), [200, 200, 50]);
  assertEquals([pages[1][0], pages[2][49]], ["f200", "f449"]);
  // Sign-out without the session's CSRF value is refused; the session lives on.
  const noCsrf = await page.request.post(`${server.url}/ui/signout`, {
    headers: { origin: server.url },
    form: { csrf: "wrong" },
  });
  assertEquals(noCsrf.status(), 403);
  await page.goto(`${server.url}/p/other`);
  assertEquals(await page.$$eval("tr.commit", (r) => r.length), 1);
  // Revoking the token ends its sessions at the next request.
  const id = t.admin.split("_")[1];
  await keepOk(["token", "revoke", "--data", server.dataDir, id]);
  await page.goto(`${server.url}/p/other`);
  assertEquals(await page.textContent("h1"), "Error");
  await page.goto(`${server.url}/`);
  assert(await page.$("#signin"), "back at the sign-in page");
});
