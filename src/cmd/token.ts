import { resolve } from "node:path";
import { KeepError } from "../errors.ts";
import { openLocalStorage, type Storage } from "../server/storage/open.ts";
import { type Role, ROLES, TokenStore } from "../server/tokens.ts";
import { checkProjectName } from "../format/api.ts";
import { type Command, out, outJson } from "./command.ts";
import { flagOrEnv, parseFlags, parseIndexFlag, positionals } from "./flags.ts";

export const tokenCommand: Command = {
  name: "token",
  summary: "create, list or revoke access tokens (on the server's data dir)",
  help:
    `Usage: keep token create --data DIR --role ROLE --project ID|'*' [--project ID ...] [--name NAME]
       keep token list   --data DIR
       keep token revoke --data DIR TOKEN_ID

Roles: backup  (append-only: read the head manifest, add commits; no old content, no prune)
       restore (read: commits, manifests, archives, blobs)
       admin   (everything on its projects: prune, policy; with --project '*'
               also what concerns the whole store: verify, store stats)
A token is printed once at creation; the server keeps only its SHA-256.
Clients pass it with --token or KEEP_TOKEN.

Options:
  -d, --data DIR     data directory (env KEEP_DATA; default ./keep-data)
      --index URL    the server's PostgreSQL index (as keep serve --index)
      --json         the result as JSON (create: the token and its info)`,
  run(args) {
    return runToken(args);
  },
};

async function runToken(args: string[]): Promise<number> {
  {
    const p = parseFlags("token", args, {
      data: { type: "string", short: "d" },
      role: { type: "string" },
      project: { type: "string", short: "p", multiple: true },
      name: { type: "string" },
      json: { type: "boolean" },
      index: { type: "string" },
    });
    const [action, ...rest] = p.positionals;
    const pg = parseIndexFlag(p.values.index as string | undefined);
    const dir = resolve(flagOrEnv(p, "data", "KEEP_DATA") ?? "keep-data");
    let storage: Storage;
    try {
      storage = await openLocalStorage(dir, { create: action === "create", pg });
    } catch (err) {
      if (err instanceof KeepError && err.code === "usage" && /no index\.db/.test(err.message)) {
        throw new KeepError("usage", `Cannot open ${dir}: no index.db there (run keep serve once)`);
      }
      throw err;
    }
    try {
      const tokens = new TokenStore(storage.index);
      switch (action) {
        case "create": {
          if (rest.length) {
            throw new KeepError("usage", `Cannot run keep token create: unexpected ${rest[0]}`);
          }
          const role = p.values.role as string | undefined;
          if (!role || !ROLES.includes(role as Role)) {
            throw new KeepError(
              "usage",
              `Cannot create token: --role must be one of ${ROLES.join(", ")}`,
            );
          }
          const projects = ((p.values.project as string[] | undefined) ?? []).map((x) =>
            x === "*" ? x : checkProjectName(x)
          );
          if (role === "admin" && projects.length === 0) projects.push("*");
          const { token, info } = await tokens.create(
            (p.values.name as string) ?? role,
            role as Role,
            projects,
          );
          if (p.values.json) outJson({ token, ...info });
          else {
            out(token);
            console.error(
              `keep token: created ${info.id} (${info.role} on ${
                info.projects.join(", ")
              }); shown once, store it now`,
            );
          }
          return 0;
        }
        case "list": {
          positionals({ values: {}, positionals: rest }, "token list", []);
          const list = await tokens.list();
          if (p.values.json) outJson({ tokens: list });
          else {
            for (const t of list) {
              out(
                `${t.id}  ${t.role.padEnd(7)}  ${
                  t.projects.join(",").padEnd(20)
                }  ${t.name}  ${t.created}${t.revoked ? `  REVOKED ${t.revoked}` : ""}`,
              );
            }
          }
          return 0;
        }
        case "revoke": {
          const [id] = positionals({ values: {}, positionals: rest }, "token revoke", ["TOKEN_ID"]);
          await tokens.revoke(id);
          if (p.values.json) outJson({ revoked: id });
          else out(`keep token: revoked ${id}`);
          return 0;
        }
        default:
          throw new KeepError(
            "usage",
            `Cannot run keep token ${action ?? ""}: use create, list or revoke`,
          );
      }
    } finally {
      await storage.close();
    }
  }
}
