/**
 * The web UI on `keep serve`'s own listener: `/` (projects), `/p/:project`
 * (timeline) and below it tree, diff, history, find, and downloads of a file
 * or of a folder (tar.gz, streamed). Everything it needs is in this module
 * and pages.ts (no CDN, no build step).
 *
 * Access: signing in (POST /ui/signin, the token in the form body) makes a
 * session (session.ts); the token never goes into a URL, a log line or a
 * page. Backup tokens are refused (they cannot read). Each page authorizes
 * its project like the API does (`read`), so a session of a token for
 * project A gets 403 on everything of project B, and the projects list shows
 * only what the token may read. CSRF: the cookie is SameSite=Strict and
 * HttpOnly, POSTs must come from this origin (Origin, Sec-Fetch-Site) and
 * sign-out carries the session's CSRF value; GETs change nothing. Pages send
 * a CSP without scripts and may not be framed.
 *
 * @module
 */

import { Hono } from "hono";
import type { Context, MiddlewareHandler } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import { createHash } from "node:crypto";
import { KeepError, toKeepError } from "../../errors.ts";
import { addTotals, noTotals, type ProjectInfo } from "../../format/api.ts";
import { checkProjectName } from "../../format/api.ts";
import { decodeMember, MemberSplitter } from "../../format/gzip_member.ts";
import { normalisePrefix } from "../../format/paths.ts";
import { streamFrom } from "../../platform/streams.ts";
import { checkArchivePath, exportArchive } from "../../server/archive.ts";
import {
  diffPage,
  findPaths,
  PAGE_LIMITS,
  pathHistory,
  treePage as loadTree,
} from "../../server/browse.ts";
import { type Access, accessOf, authorize } from "../../server/tokens.ts";
import type { Storage } from "../../server/storage/open.ts";
import type { AppContext, Env } from "../context.ts";
import { HTTP_STATUS } from "../errors.ts";
import {
  diffPageView,
  document,
  errorPage,
  findPage,
  historyPage,
  layout,
  projectsPage,
  signInPage,
  STYLE,
  timelinePage,
  treePage,
} from "./pages.ts";
import { type Session, SessionStore } from "./session.ts";
import { contentPieces } from "../../server/content_pieces.ts";

const COOKIE = "keep_session";
/** Commits per timeline page. */
const TIMELINE_PAGE = 50;

/** What the UI's routes know about the request. */
type UiEnv = {
  Variables: Env["Variables"] & { session: Session | null; sessionId: string | undefined };
};

const HEADERS: Record<string, string> = {
  "content-security-policy":
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  // Not no-referrer: with it Chromium sends "Origin: null" on the page's own form posts.
  "referrer-policy": "same-origin",
  "cache-control": "no-store",
};

/** The UI's options. */
export interface UiOptions {
  /** A project with no complete commit for this long is marked stale (ms). */
  staleAfterMs: number;
  sessions?: SessionStore;
}

/** True when a POST comes from a page of this very origin. */
function sameOrigin(c: Context): boolean {
  const site = c.req.header("sec-fetch-site");
  if (site !== undefined) return site === "same-origin";
  const origin = c.req.header("origin");
  if (!origin) return false;
  try {
    return new URL(origin).host === c.req.header("host");
  } catch {
    return false;
  }
}

/** The route group (mounted at `/`). */
export function uiRoutes(ctx: AppContext, options: UiOptions): Hono<UiEnv> {
  const ui = new Hono<UiEnv>();
  const sessions = options.sessions ?? new SessionStore(ctx.storage.index);
  const { index } = ctx.storage;
  const who = (c: Context<UiEnv>) => {
    const s = c.get("session");
    const a = c.get("access");
    return s
      ? { label: a ? `${a.name} (${a.role}, ${a.projects.join(", ")})` : "no auth", csrf: s.csrf }
      : null;
  };
  const page = (
    c: Context<UiEnv>,
    title: string,
    body: Parameters<typeof layout>[1],
    status = 200,
  ) => document(layout(title, body, who(c))).then((d) => c.html(d, status as 200));

  // Only the UI's own paths: a "*" here would wrap every /v1 route too
  // (mounted at /), and its errors would go through this group's onError.
  const secure: MiddlewareHandler<UiEnv> = async (c, next) => {
    await next();
    for (const [k, v] of Object.entries(HEADERS)) c.res.headers.set(k, v);
  };
  for (const path of ["/", "/ui/*", "/p/*"]) ui.use(path, secure);
  ui.onError((err, c) => {
    const k = toKeepError(err, "Cannot show page");
    if (k.code === "internal") {
      ctx.log?.(`error: UI ${c.req.method} ${c.req.path}: ${(err as Error)?.stack ?? err}`);
    }
    const status = HTTP_STATUS[k.code] ?? 500;
    return document(layout("Error", errorPage(status, k.message), who(c as Context<UiEnv>)))
      .then((d) => c.html(d, status as 500));
  });

  ui.get("/ui/style.css", (c) => c.body(STYLE, 200, { "content-type": "text/css; charset=utf-8" }));

  // The session (or none) of every other page.
  const session: MiddlewareHandler<UiEnv> = async (c, next) => {
    const id = getCookie(c, COOKIE);
    let s = await sessions.get(id);
    let access: Access | null = null;
    if (s && ctx.tokens !== null) {
      access = s.tokenId ? await accessOf(index, s.tokenId) : null;
      if (!access || access.role === "backup") {
        await sessions.delete(id);
        s = null;
      }
    }
    c.set("session", s);
    c.set("sessionId", s ? id : undefined);
    c.set("access", access);
    await next();
  };
  ui.use("/", session);
  ui.use("/ui/*", session);
  ui.use("/p/*", session);

  /** Without a session: the sign-in page (a server without tokens makes one at once). */
  const signedIn = async (c: Context<UiEnv>): Promise<boolean> => {
    if (c.get("session")) return true;
    if (ctx.tokens === null) {
      const { id, session } = await sessions.create(null);
      setSessionCookie(c, id);
      c.set("session", session);
      return true;
    }
    return false;
  };
  const setSessionCookie = (c: Context<UiEnv>, id: string) =>
    setCookie(c, COOKIE, id, {
      httpOnly: true,
      sameSite: "Strict",
      secure: new URL(c.req.url).protocol === "https:",
      path: "/",
    });

  ui.get("/", async (c) => {
    if (!await signedIn(c)) return page(c, "Sign in", signInPage());
    const access = c.get("access");
    const visible = (await index.listProjects()).filter((p: ProjectInfo) => {
      try {
        authorize(access, "read", p.name);
        return true;
      } catch {
        return false;
      }
    });
    return page(c, "Projects", projectsPage(visible, options.staleAfterMs, Date.now()));
  });

  ui.post("/ui/signin", async (c) => {
    if (!sameOrigin(c)) {
      throw new KeepError(
        "forbidden",
        "Cannot sign in: the form must come from this server's own page",
      );
    }
    if (ctx.tokens === null) return c.redirect("/", 303);
    const form = await c.req.parseBody();
    const token = typeof form.token === "string" ? form.token.trim() : "";
    let access: Access;
    try {
      access = await ctx.tokens.check(token);
    } catch {
      return page(c, "Sign in", signInPage("Unknown or revoked token."), 401);
    }
    if (access.role === "backup") {
      return page(
        c,
        "Sign in",
        signInPage("A backup token cannot read: sign in with a restore or admin token."),
        403,
      );
    }
    await sessions.delete(getCookie(c, COOKIE));
    const { id } = await sessions.create(access.id);
    setSessionCookie(c, id);
    ctx.log?.(`ui: signed in with token ${access.id} (${access.name})`);
    return c.redirect("/", 303);
  });

  ui.post("/ui/signout", async (c) => {
    const s = c.get("session");
    const form = await c.req.parseBody();
    if (!sameOrigin(c) || !s || !SessionStore.csrfOk(s, form.csrf)) {
      throw new KeepError(
        "forbidden",
        "Cannot sign out: the form must come from this session's page",
      );
    }
    await sessions.delete(c.get("sessionId"));
    deleteCookie(c, COOKIE, { path: "/" });
    return c.redirect("/", 303);
  });

  /** The `:project` of a page, once the session may read it. */
  const project = async (c: Context<UiEnv>): Promise<string> => {
    if (!await signedIn(c)) {
      throw new KeepError("unauthorized", "Cannot show this page: sign in first (at /)");
    }
    const p = checkProjectName(c.req.param("project") ?? "");
    authorize(c.get("access"), "read", p);
    return p;
  };

  ui.get("/p/:project", async (c) => {
    const p = await project(c);
    const before = c.req.query("before");
    const beforeSeq = before === undefined ? undefined : Number(before);
    if (beforeSeq !== undefined && !Number.isInteger(beforeSeq)) {
      throw new KeepError("usage", `Cannot page: before=${before} is no commit number`);
    }
    await index.resolveCommit(p, "latest");
    const commits = await index.listCommits(p, TIMELINE_PAGE + 1, beforeSeq);
    const shown = commits.slice(0, TIMELINE_PAGE);
    const older = commits.length > TIMELINE_PAGE ? shown[shown.length - 1].seq : null;
    return page(c, p, timelinePage(p, shown, older));
  });

  ui.get("/p/:project/tree", async (c) => {
    const p = await project(c);
    const t = await loadTree(
      index,
      p,
      c.req.query("commit") ?? "latest",
      c.req.query("path") ?? "",
      {
        after: c.req.query("after"),
        limit: PAGE_LIMITS.tree.def,
      },
    );
    return page(c, `${p} #${t.commit.seq} ${t.path}`, treePage(p, t));
  });

  ui.get("/p/:project/diff", async (c) => {
    const p = await project(c);
    const from = c.req.query("from") ?? "";
    const to = c.req.query("to") ?? "";
    if (!from || !to) throw new KeepError("usage", "Cannot diff: pick two commits");
    const prefix = c.req.query("path");
    const shown = await diffPage(index, p, from, to, {
      prefix,
      after: c.req.query("after"),
      limit: 500,
    });
    // The totals of the whole diff: one pass more (the same set-based pages).
    const totals = noTotals();
    for (
      let after: string | undefined, r;
      (r = await diffPage(index, p, from, to, { prefix, after, limit: PAGE_LIMITS.diff.max }));
      after = r.next
    ) {
      addTotals(totals, r);
      if (!r.next) break;
    }
    return page(c, `${p} diff`, diffPageView(p, shown, totals));
  });

  ui.get("/p/:project/history", async (c) => {
    const p = await project(c);
    const skip = Number(c.req.query("skip") ?? 0);
    if (!Number.isInteger(skip) || skip < 0) {
      throw new KeepError("usage", `Cannot page: skip=${c.req.query("skip")} is no count`);
    }
    return page(
      c,
      `${p} history`,
      historyPage(p, await pathHistory(index, p, c.req.query("path") ?? ""), skip),
    );
  });

  ui.get("/p/:project/find", async (c) => {
    const p = await project(c);
    const q = c.req.query("q") ?? "";
    const found = q === "" ? null : await findPaths(index, p, q, { after: c.req.query("after") });
    return page(c, `${p} find`, findPage(p, q, found));
  });

  ui.get("/p/:project/file", async (c) => {
    const p = await project(c);
    const commit = await index.resolveCommit(p, c.req.query("commit") ?? "latest");
    const path = normalisePrefix(c.req.query("path") ?? "");
    const [e] = path === "" ? [] : await index.entriesAt(p, commit.seq, [path]);
    if (!e || e.type !== "f") {
      throw new KeepError(
        "not_found",
        `Cannot download ${path}: no such file in commit ${commit.id}`,
      );
    }
    const name = path.slice(path.lastIndexOf("/") + 1);
    return new Response(
      streamFrom(fileBytes(ctx.storage, e.hash!, e.size), {
        onError: (err) =>
          ctx.log?.(`error: UI download ${p} ${commit.id}: ${(err as Error).message}`),
      }),
      {
        headers: {
          "content-type": "application/octet-stream",
          "content-length": String(e.size),
          "content-disposition": disposition(name),
        },
      },
    );
  });

  ui.get("/p/:project/archive", async (c) => {
    const p = await project(c);
    const commit = await index.resolveCommit(p, c.req.query("commit") ?? "latest");
    const prefix = normalisePrefix(c.req.query("path") ?? "");
    await checkArchivePath(ctx.storage, commit, prefix, "download");
    const base = `${p}-${commit.seq}${prefix ? "-" + prefix.replaceAll("/", "_") : ""}.tar.gz`;
    return new Response(
      streamFrom(exportArchive(ctx.storage, commit, prefix), {
        onError: (err) =>
          ctx.log?.(`error: UI archive ${p} ${commit.id}: ${(err as Error).message}`),
      }),
      {
        headers: { "content-type": "application/gzip", "content-disposition": disposition(base) },
      },
    );
  });

  return ui;
}

/** `attachment; filename=…` for any name (RFC 6266: an ASCII fallback and the UTF-8 name). */
function disposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, "_");
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`;
}

/**
 * A file's bytes, decoded from its stored gzip members, its SHA-256 checked:
 * a mismatch ends the download with an error rather than wrong bytes.
 */
async function* fileBytes(
  storage: Storage,
  hash: string,
  size: number,
): AsyncGenerator<Uint8Array> {
  if (size === 0) return;
  const place = await storage.index.blobPlace(hash);
  if (!place) throw new KeepError("integrity", `Cannot read content ${hash}: not in the store`);
  const sha = createHash("sha256");
  const split = new MemberSplitter();
  // The last piece waits for the check: a bad file never arrives whole.
  let held: Uint8Array | null = null;
  for await (const piece of await contentPieces(storage, hash, place)) {
    split.push(piece.slice());
    for (let m = split.next(); m; m = split.next()) {
      const raw = decodeMember(m);
      sha.update(raw);
      if (held) yield held;
      held = raw;
    }
  }
  split.end();
  if (sha.digest("hex") !== hash) {
    throw new KeepError("integrity", `Cannot send content ${hash}: its stored bytes do not match`);
  }
  if (held) yield held;
}
