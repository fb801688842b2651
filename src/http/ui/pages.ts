/**
 * The web UI's pages: plain HTML rendered on the server with hono/html's
 * tagged templates, which escape every interpolated value (no build step, no
 * JSX compiler settings) and need no script at all, so the pages' CSP
 * forbids scripts outright. Forms are GET (search, diff) except sign-in and
 * sign-out. Only presentation here: routes.ts fetches the data.
 *
 * @module
 */

import { html } from "hono/html";
import type { HtmlEscapedString } from "hono/utils/html";
import type {
  DiffPage,
  FindResult,
  HistoryResult,
  PathVersion,
  ProjectInfo,
  TreePage,
  VersionInfo,
} from "../../format/api.ts";
import { type DiffTotals } from "../../format/api.ts";
import type { CommitInfo } from "../../format/manifest.ts";
import { formatBytes, formatDelta, modeString, nsToIso } from "../../format/units.ts";
import { VERSION } from "../../format/api.ts";

type Html = HtmlEscapedString | Promise<HtmlEscapedString>;

/** The stylesheet, served at /ui/style.css. */
export const STYLE = `
:root { font-family: "DejaVu Sans", system-ui, sans-serif; font-size: 14px; color: #1d232a; }
body { margin: 0; background: #f6f7f9; }
header { background: #1f3b57; color: #fff; padding: 8px 20px; display: flex; gap: 16px; align-items: center; }
header a { color: #fff; text-decoration: none; }
header .who { margin-left: auto; font-size: 12px; opacity: .85; }
header form { display: inline; }
main { padding: 16px 20px; max-width: 1200px; }
h1 { font-size: 20px; margin: 4px 0 12px; }
h2 { font-size: 16px; margin: 18px 0 8px; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, .mono { font-family: "DejaVu Sans Mono", monospace; font-size: 12.5px; }
a { color: #0b5cad; }
.stale { color: #fff; background: #b3261e; border-radius: 3px; padding: 0 5px; font-size: 12px; }
.ok { color: #1a7f37; }
.flag { color: #9a6700; font-weight: 600; }
.added { color: #1a7f37; } .deleted { color: #b3261e; } .changed { color: #0b5cad; } .meta { color: #6e7781; }
.crumbs { margin: 0 0 10px; }
.pager { margin: 10px 0; }
.box { background: #fff; padding: 12px 16px; border: 1px solid #e3e6ea; max-width: 420px; }
.error { color: #b3261e; font-weight: 600; }
input[type=text], input[type=password] { padding: 4px 6px; font-size: 14px; }
.tag { background: #eef1f4; border-radius: 3px; padding: 0 4px; margin-right: 3px; font-size: 12px; }
footer { color: #6e7781; font-size: 12px; padding: 12px 20px; }
`;

/** A link inside the UI: path segments encoded, query values encoded, undefined left out. */
export function link(
  path: string,
  query: Record<string, string | number | undefined> = {},
): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** `/p/<project>` and below. */
export function projectLink(
  project: string,
  page = "",
  query: Record<string, string | number | undefined> = {},
): string {
  return link(`/p/${encodeURIComponent(project)}${page ? `/${page}` : ""}`, query);
}

/** "3 h ago", "2 d ago". */
export function age(iso: string, now = Date.now()): string {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function when(iso: string): string {
  return iso.slice(0, 19).replace("T", " ");
}

/** A whole page as sent: the doctype first (deno fmt indents templates), then `page`. */
export async function document(page: Html): Promise<string> {
  return "<!doctype html>\n" + String(await page).trimStart();
}

/** The page around a body. `who`: the signed-in token's description and the CSRF value. */
export function layout(
  title: string,
  body: Html,
  who: { label: string; csrf: string } | null,
): Html {
  return html`
    <html lang="en">
      <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width">
        <title>${title} · Keep</title>
        <link rel="stylesheet" href="/ui/style.css">
      </head>
      <body>
        <header><a href="/"><b>Keep</b></a><a href="/">Projects</a>${who
          ? html`<span class="who">${who.label}
<form method="post" action="/ui/signout"><input type="hidden" name="csrf" value="${who.csrf}">
<button type="submit">Sign out</button></form></span>`
          : ""}</header>
        <main>${body}</main>
        <footer>keep ${VERSION}</footer>
      </body>
    </html>
  `;
}

export function signInPage(error?: string): Html {
  return html`
    <h1>Sign in</h1>
    <div class="box">
      <form method="post" action="/ui/signin">
    <p>Paste a <b>restore</b> or <b>admin</b> token (<code>keep token create</code>). It is sent
    once and kept by this server only as a session; it never appears in a URL or page.</p>
    ${error ? html`<p class="error" id="error">${error}</p>` : ""}
    <p><input type="password" name="token" autocomplete="off" size="48" required autofocus>
    <button type="submit" id="signin">Sign in</button></p></form>
    </div>
  `;
}

export function errorPage(status: number, message: string): Html {
  return html`<h1>${status === 404 ? "Not found" : status === 403 ? "Not allowed" : "Error"}</h1>
<p class="error" id="error">${message}</p>`;
}

export function projectsPage(projects: ProjectInfo[], staleAfterMs: number, now: number): Html {
  if (projects.length === 0) {
    return html`
      <h1>Projects</h1>
      <p>No projects you may read yet.</p>
    `;
  }
  const rows = projects.map((p) => {
    const last = p.head?.time ?? null;
    const stale = p.lastComplete === null || now - Date.parse(p.lastComplete) > staleAfterMs;
    return html`
      <tr class="project" data-project="${p.name}">
        <td><a href="${projectLink(p.name)}">${p.name}</a> ${stale
          ? html`<span class="stale" title="no complete backup within the stale limit">stale</span>`
          : ""}</td>
        <td>${last
          ? html`${when(last)} <span class="meta">(${age(last, now)})</span>`
          : "never"}</td>
        <td>${p.lastComplete ? age(p.lastComplete, now) : "never"}</td>
        <td class="n">${p.commits}</td>
        <td class="n">${p.head ? p.head.counts.files : 0}</td>
        <td class="n">${formatBytes(p.head?.counts.bytes ?? 0)}</td>
      </tr>
    `;
  });
  return html`<h1>Projects</h1>
<table id="projects"><tr><th>project</th><th>last backup</th><th>last complete</th>
<th class="n">commits</th><th class="n">files</th><th class="n">live size</th></tr>${rows}</table>
<p class="meta">Stale: no complete backup in the last ${Math.round(staleAfterMs / 3600_000)} h
(<code>keep serve --stale-after</code>).</p>`;
}

function searchForm(project: string, q = ""): Html {
  return html`<form method="get" action="${projectLink(project, "find")}">
<input type="text" name="q" value="${q}" size="40" placeholder="path glob, e.g. *.o or src/*/main.c">
<button type="submit" id="find">Find in all commits</button></form>`;
}

function counts(c: CommitInfo): Html {
  const k = c.counts;
  return html`<span class="added">+${k.added}</span> <span class="changed">~${k.changed}</span>
<span class="deleted">-${k.deleted}</span>${
    k.metadata
      ? html`
        <span class="meta">m${k.metadata}</span>
      `
      : ""
  }`;
}

export function timelinePage(
  project: string,
  commits: CommitInfo[],
  olderThan: number | null,
): Html {
  const rows = commits.map((c, i) =>
    html`
      <tr class="commit" data-seq="${c.seq}">
        <td><input type="radio" name="from" value="${c.id}" ${i === 1
          ? "checked"
          : ""} aria-label="from #${c.seq}">
      <input type="radio" name="to" value="${c.id}" ${i === 0 ? "checked" : ""} aria-label="to #${c
        .seq}"></td>
        <td class="n"><a href="${projectLink(project, "tree", { commit: c.id })}">#${c.seq}</a></td>
        <td class="mono">${c.id}</td>
        <td>${when(c.time)}</td>
        <td>${c.message}${Object.entries(c.tags).map(([k, v]) =>
          html`
            <span class="tag">${k}=${v}</span>
          `
        )}</td>
        <td>${c.host}</td>
        <td class="n">${c.counts.files}</td>
        <td class="n">${counts(c)}</td>
        <td class="n">${formatBytes(c.stats.wireBytes)}</td>
        <td>${c.counts.flagged
          ? html`<span class="flag" title="paths kept from an earlier commit">incomplete: ${c.counts.flagged} flagged</span>`
          : html`<span class="ok">complete</span>`}</td>
      </tr>
    `
  );
  return html`
    <h1>${project}</h1>${searchForm(project)}
    <h2>Commits</h2>
    <form method="get" action="${projectLink(project, "diff")}">
      <table id="timeline"><tr><th>from / to</th><th class="n">#</th><th>id</th><th>time (UTC)</th>
    <th>message, tags</th><th>host</th><th class="n">files</th><th class="n">changes</th>
    <th class="n">sent</th><th>state</th></tr>${rows}</table>
      <p><button type="submit" id="diff">Diff the two selected</button></p>
    </form>
    ${olderThan !== null
      ? html`<p class="pager"><a id="older" href="${
        projectLink(project, "", { before: olderThan })
      }">Older commits →</a></p>`
      : ""}
  `;
}

function crumbs(project: string, commit: CommitInfo, path: string): Html {
  const parts = path === "" ? [] : path.split("/");
  return html`<p class="crumbs"><a href="${projectLink(project)}">${project}</a> /
<a href="${projectLink(project, "tree", { commit: commit.id })}">#${commit.seq}</a>${
    parts.map((name, i) =>
      html`
        / <a href="${projectLink(project, "tree", {
          commit: commit.id,
          path: parts.slice(0, i + 1).join("/"),
        })}">${name}</a>
      `
    )
  }</p>`;
}

function typeName(v: VersionInfo): string {
  return v.type === "d" ? "dir" : v.type === "l" ? "link" : "file";
}

export function treePage(project: string, t: TreePage): Html {
  const c = t.commit;
  const tree = (path: string, after?: string) =>
    projectLink(project, "tree", { commit: c.id, path, after });
  if (t.entry && t.entry.type !== "d") {
    const e = t.entry;
    return html`<h1>${t.path}</h1>${crumbs(project, c, t.path)}
<table id="file"><tr><th>type</th><td>${typeName(e)}</td></tr>
<tr><th>mode</th><td class="mono">${modeString(e.type, e.mode)}</td></tr>
<tr><th>size</th><td>${formatBytes(e.size)} (${e.size} bytes)</td></tr>
<tr><th>mtime</th><td>${nsToIso(e.mtime)} UTC</td></tr>
${
      e.hash
        ? html`
          <tr>
            <th>SHA-256</th>
            <td class="mono">${e.hash}</td>
          </tr>
        `
        : ""
    }
${
      e.target !== undefined
        ? html`
          <tr>
            <th>target</th>
            <td class="mono">${e.target}</td>
          </tr>
        `
        : ""
    }
${
      e.flag
        ? html`
          <tr>
            <th>flag</th>
            <td class="flag">${e.flag}</td>
          </tr>
        `
        : ""
    }</table>
<p>${
      e.type === "f"
        ? html`
          <a id="download" href="${projectLink(project, "file", {
            commit: c.id,
            path: t.path,
          })}">Download</a> ·
        `
        : ""
    }<a href="${projectLink(project, "history", { path: t.path })}">History</a></p>`;
  }
  const rows = t.items.map((i) =>
    html`
      <tr class="item" data-path="${i.path}">
        <td><a href="${tree(i.path)}">${i.name}${i.type === "d" ? "/" : ""}</a>${i.type === "l"
          ? html`
            <span class="meta">→ ${i.target}</span>
          `
          : ""}${i.flag
          ? html`
            <span class="flag">${i.flag}</span>
          `
          : ""}</td>
        <td class="mono">${modeString(i.type, i.mode)}</td>
        <td class="n">${i.type === "d" ? formatBytes(i.bytes ?? 0) : formatBytes(i.size)}</td>
        <td class="n">${i.type === "d" ? `${i.files ?? 0} files` : ""}</td>
        <td>${nsToIso(i.mtime)}</td>
        <td>${i.type === "f"
          ? html`<a href="${
            projectLink(project, "file", { commit: c.id, path: i.path })
          }">download</a>`
          : i.type === "d"
          ? html`<a href="${
            projectLink(project, "archive", { commit: c.id, path: i.path })
          }">tar.gz</a>`
          : ""} <a href="${projectLink(project, "history", { path: i.path })}">history</a></td>
      </tr>
    `
  );
  return html`<h1>${project} #${c.seq}${
    t.path
      ? html`
        — ${t.path}/
      `
      : ""
  }</h1>${crumbs(project, c, t.path)}
<p class="meta">${c.message} · ${when(c.time)} UTC · ${c.host} · ${c.counts.files} files,
${formatBytes(c.counts.bytes)} ·
<a id="download-folder" href="${
    projectLink(project, "archive", { commit: c.id, path: t.path })
  }">download ${t.path || "all"} as tar.gz</a></p>
<table id="tree"><tr><th>name</th><th>mode</th><th class="n">size</th><th class="n">below</th>
<th>mtime (UTC)</th><th></th></tr>${rows}</table>
${
    t.next
      ? html`<p class="pager"><a id="next" href="${tree(t.path, t.next)}">Next page →</a></p>`
      : ""
  }`;
}

export function diffPageView(project: string, d: DiffPage, totals: DiffTotals): Html {
  const rows = d.items.map((i) => {
    const v = (i.after ?? i.before)!;
    return html`
      <tr class="change ${i.kind}" data-path="${i.path}">
        <td class="${i.kind}">${i.kind}</td>
        <td><a href="${projectLink(project, "tree", {
          commit: i.after ? d.to.id : d.from.id,
          path: i.path,
        })}">${i.path}${v.type === "d" ? "/" : ""}</a></td>
        <td class="n">${i.before ? formatBytes(i.before.size) : ""}</td>
        <td class="n">${i.after ? formatBytes(i.after.size) : ""}</td>
        <td class="n">${formatDelta(i.delta)}</td>
        <td class="mono">${i.kind === "meta"
          ? `${modeString(v.type, i.before!.mode)} → ${modeString(v.type, i.after!.mode)}`
          : ""}</td>
      </tr>
    `;
  });
  return html`<h1>${project}: #${d.from.seq} → #${d.to.seq}${
    d.path
      ? html`
        under ${d.path}/
      `
      : ""
  }</h1>
<p id="totals"><span class="added">${totals.added} added</span>, <span class="changed">${totals.changed}
changed</span>, <span class="deleted">${totals.deleted} deleted</span>, <span class="meta">${totals.meta}
metadata-only</span>; size ${formatDelta(totals.delta)}</p>
<table id="diff"><tr><th>kind</th><th>path</th><th class="n">before</th><th class="n">after</th>
<th class="n">delta</th><th>mode</th></tr>${rows}</table>
${
    d.next
      ? html`<p class="pager"><a id="next" href="${
        projectLink(project, "diff", { from: d.from.id, to: d.to.id, path: d.path, after: d.next })
      }">Next page →</a></p>`
      : ""
  }`;
}

function versionRows(project: string, path: string, versions: PathVersion[]): Html {
  return html`${
    versions.map((v) =>
      html`
        <tr class="version">
          <td class="n"><a href="${projectLink(project, "tree", { commit: v.last.id, path })}">#${v
            .first.seq}${v.first.seq === v.last.seq ? "" : `–#${v.last.seq}`}</a></td>
          <td class="n">${v.commits}</td>
          <td class="n">${formatBytes(v.size)}</td>
          <td class="mono">${modeString(v.type, v.mode)}</td>
          <td class="mono">${v.type === "l" ? `→ ${v.target}` : (v.hash ?? "").slice(0, 12)}</td>
          <td>${when(v.first.time)}</td>
          <td>${v.type === "f"
            ? html`<a href="${
              projectLink(project, "file", { commit: v.last.id, path })
            }">download</a>`
            : ""}${v.flag
            ? html`
              <span class="flag">${v.flag}</span>
            `
            : ""}</td>
        </tr>
      `
    )
  }`;
}

const VERSION_HEAD = html`
  <tr>
    <th class="n">commits</th>
    <th class="n">n</th>
    <th class="n">size</th>
    <th>mode</th>
    <th>hash / target</th>
    <th>first seen (UTC)</th>
    <th></th>
  </tr>
`;

/** Versions per history page. */
export const HISTORY_PAGE = 200;

export function historyPage(project: string, h: HistoryResult, skip: number): Html {
  const shown = h.versions.slice(skip, skip + HISTORY_PAGE);
  const more = skip + HISTORY_PAGE < h.versions.length;
  return html`
    <h1>${h.path}</h1>
    <p class="crumbs"><a href="${projectLink(project)}">${project}</a></p>
    <p>${h.versions.length} version${h.versions.length === 1 ? "" : "s"}, newest first${skip || more
      ? ` (${skip + 1}–${skip + shown.length} here)`
      : ""}.</p>
    <table id="history">${VERSION_HEAD}${versionRows(project, h.path, shown)}</table>
    ${more
      ? html`<p class="pager"><a id="next" href="${
        projectLink(project, "history", { path: h.path, skip: skip + HISTORY_PAGE })
      }">Older versions →</a></p>`
      : ""}
  `;
}

export function findPage(project: string, q: string, f: FindResult | null): Html {
  const body = f === null
    ? ""
    : f.paths.length === 0
    ? html`<p id="none">No path of any commit matches.</p>`
    : html`<table id="found">${
      f.paths.map((p) =>
        html`
          <tr class="found">
            <th colspan="7"><a href="${projectLink(project, "history", { path: p.path })}">${p
              .path}</a></th>
          </tr>${versionRows(project, p.path, p.versions)}
        `
      )
    }</table>${
      f.next
        ? html`<p class="pager"><a id="next" href="${
          projectLink(project, "find", { q, after: f.next })
        }">More →</a></p>`
        : ""
    }`;
  return html`
    <h1>Find in ${project}</h1><p
      class="crumbs"><a href="${projectLink(project)}">${project}</a></p>${searchForm(
        project,
        q,
      )}${body}
  `;
}
