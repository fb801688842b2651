import { KeepError } from "../errors.ts";
import { KeepClient } from "../http/client.ts";
import { checkProjectName, type FindResult } from "../format/api.ts";
import { type Command, note, out, outJson } from "./command.ts";
import {
  CLIENT_FLAGS,
  CLIENT_HELP,
  clientOptions,
  parseFlags,
  positionals,
  required,
} from "./flags.ts";
import { versionLine } from "./history.ts";

export const findCommand: Command = {
  name: "find",
  summary: "paths matching a pattern across all commits, with their versions",
  help: `Usage: keep find --project ID [--limit N] [--json] PATTERN

Finds every path any commit of the project holds that matches PATTERN, a
glob (* ? [abc]; * also matches /). A pattern without / matches a path's
last component (like find -name): "*.o", "main.c"; with /, the whole path:
"src/*/util.c". Each path is listed with its versions, newest first, and
the commits each lives in (as keep history prints them).

${CLIENT_HELP}

Options:
  -n, --limit N   at most N paths (default 1000)
      --json      {"keep":1, "project", "pattern", "paths": [{path, versions}],
                  "truncated"} (versions as keep history --json has them)`,
  async run(args) {
    const p = parseFlags("find", args, {
      ...CLIENT_FLAGS,
      limit: { type: "string", short: "n" },
      json: { type: "boolean" },
    });
    const [pattern] = positionals(p, "find", ["PATTERN"]);
    const project = checkProjectName(required(p, "find", "project", "KEEP_PROJECT"));
    const limit = Number(p.values.limit ?? 1000);
    if (!Number.isInteger(limit) || limit < 1) {
      throw new KeepError("usage", `Cannot parse --limit ${p.values.limit}: a whole number ≥ 1`);
    }
    const client = new KeepClient(clientOptions(p));
    try {
      const paths: FindResult["paths"] = [];
      let after: string | undefined;
      let truncated = false;
      for (;;) {
        const page = await client.find(project, pattern, {
          after,
          limit: Math.min(1000, limit - paths.length),
        });
        paths.push(...page.paths);
        if (!page.next) break;
        if (paths.length >= limit) {
          truncated = true;
          break;
        }
        after = page.next;
      }
      if (p.values.json) outJson({ project, pattern, paths, truncated });
      else {
        const lines: string[] = [];
        for (const { path, versions } of paths) lines.push(path, ...versions.map(versionLine));
        if (lines.length) out(lines.join("\n"));
        if (paths.length === 0) note(`keep find: no path of ${project} matches ${pattern}`);
        if (truncated) note(`keep find: more than ${limit} paths match (see --limit)`);
      }
      return 0;
    } finally {
      client.close();
    }
  },
};
