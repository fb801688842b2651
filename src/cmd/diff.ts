import { KeepClient } from "../http/client.ts";
import {
  addTotals,
  checkProjectName,
  type DiffItem,
  noTotals,
  type VersionInfo,
} from "../format/api.ts";
import { formatBytes, formatDelta } from "../format/units.ts";
import { type Command, out, outJson } from "./command.ts";
import {
  CLIENT_FLAGS,
  CLIENT_HELP,
  clientOptions,
  parseFlags,
  positionals,
  required,
} from "./flags.ts";

const MARK = { added: "+", changed: "~", deleted: "-", meta: "m" } as const;

/** What moved besides content: "mode 644→600", "mtime". */
function metaDetail(a: VersionInfo, b: VersionInfo): string {
  const moved: string[] = [];
  if (a.mode !== b.mode) moved.push(`mode ${a.mode.toString(8)}→${b.mode.toString(8)}`);
  if (a.mtime !== b.mtime) moved.push("mtime");
  return moved.join(", ");
}

/** One line of `keep diff`. */
export function diffLine(i: DiffItem): string {
  const size = i.kind === "deleted" ? i.before!.size : i.after!.size;
  const name = (i.after ?? i.before)!.type === "d" ? i.path + "/" : i.path;
  let detail = "";
  if (i.kind === "changed") detail = `  (${formatBytes(i.before!.size)} → ${formatBytes(size)})`;
  if (i.kind === "meta") detail = `  (${metaDetail(i.before!, i.after!)})`;
  return `${MARK[i.kind]} ${formatBytes(size).padStart(10)} ${
    formatDelta(i.delta).padStart(11)
  }  ${name}${detail}`;
}

export const diffCommand: Command = {
  name: "diff",
  summary: "what changed between two commits (added, changed, deleted, metadata-only)",
  help: `Usage: keep diff --project ID [--path PREFIX] [--json] FROM TO

Lists every path whose version differs from commit FROM to commit TO (each a
commit id, a unique prefix, #SEQ or latest), in path order:
  + added   ~ changed (content, type or target)   - deleted
  m metadata only (mode or mtime; a directory's mtime alone does not count)
with its size and the size delta, then a summary line.

${CLIENT_HELP}

Options:
      --path PREFIX  only this path and below
      --json         {"keep":1, "from", "to", "path", "items": [{path, kind, before,
                     after, delta}], "totals": {added, changed, deleted, meta, delta}}`,
  async run(args) {
    const p = parseFlags("diff", args, {
      ...CLIENT_FLAGS,
      path: { type: "string" },
      json: { type: "boolean" },
    });
    const [from, to] = positionals(p, "diff", ["FROM", "TO"]);
    const project = checkProjectName(required(p, "diff", "project", "KEEP_PROJECT"));
    const client = new KeepClient(clientOptions(p));
    try {
      const items: DiffItem[] = [];
      const totals = noTotals();
      let after: string | undefined;
      let first;
      for (;;) {
        const page = await client.diff(project, from, to, {
          path: p.values.path as string | undefined,
          after,
          limit: 10_000, // the largest page: each costs a pass over its range
        });
        first ??= page;
        addTotals(totals, page);
        if (p.values.json) items.push(...page.items);
        // One write per page: a console.log per line cost ~10 s for 100k lines.
        else if (page.items.length) out(page.items.map(diffLine).join("\n"));
        if (!page.next) break;
        after = page.next;
      }
      if (p.values.json) {
        outJson({ from: first.from, to: first.to, path: first.path, items, totals });
      } else {
        out(
          `keep diff: #${first.from.seq} → #${first.to.seq}: ${totals.added} added, ${totals.changed} changed, ${totals.deleted} deleted, ${totals.meta} metadata-only; size ${
            formatDelta(totals.delta)
          }`,
        );
      }
      return 0;
    } finally {
      client.close();
    }
  },
};
