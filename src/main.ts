/**
 * The keep executable. The only place that reads Deno.args, turns errors
 * into one-line messages and exits.
 *
 * @module
 */

import { EXIT_CODES, exitCodeFor, KeepError, toKeepError } from "./errors.ts";
import type { Command } from "./cmd/command.ts";
import { JSON_VERSION, VERSION } from "./format/api.ts";

/**
 * Subcommands, loaded on use: a backup does not load the server, SQLite or
 * Hono (less to start, ~10 MB less resident).
 */
const COMMANDS: { name: string; load: () => Promise<Command> }[] = [
  { name: "backup", load: async () => (await import("./cmd/backup.ts")).backupCommand },
  { name: "restore", load: async () => (await import("./cmd/restore.ts")).restoreCommand },
  { name: "serve", load: async () => (await import("./cmd/serve.ts")).serveCommand },
  { name: "log", load: async () => (await import("./cmd/log.ts")).logCommand },
  { name: "ls", load: async () => (await import("./cmd/ls.ts")).lsCommand },
  { name: "diff", load: async () => (await import("./cmd/diff.ts")).diffCommand },
  { name: "find", load: async () => (await import("./cmd/find.ts")).findCommand },
  { name: "history", load: async () => (await import("./cmd/history.ts")).historyCommand },
  { name: "verify", load: async () => (await import("./cmd/verify.ts")).verifyCommand },
  { name: "prune", load: async () => (await import("./cmd/prune.ts")).pruneCommand },
  { name: "policy", load: async () => (await import("./cmd/policy.ts")).policyCommand },
  { name: "stats", load: async () => (await import("./cmd/stats.ts")).statsCommand },
  { name: "migrate", load: async () => (await import("./cmd/migrate.ts")).migrateCommand },
  { name: "token", load: async () => (await import("./cmd/token.ts")).tokenCommand },
];

function exitTable(): string {
  return EXIT_CODES.map((r) => `  ${r.code}  ${r.meaning}`).join("\n");
}

async function mainHelp(): Promise<string> {
  const commands = await Promise.all(COMMANDS.map((c) => c.load()));
  return `keep ${VERSION} - incremental backups of build trees

Usage: keep <command> [options]     keep <command> --help

Commands:
${commands.map((c) => `  ${c.name.padEnd(9)} ${c.summary}`).join("\n")}

Typical use (Makefile, last line):
  export KEEP_SERVER=http://nas:8080 KEEP_PROJECT=app KEEP_TOKEN=...
  keep backup -m "$(git rev-parse --short HEAD)" .

Exit codes:
${exitTable()}`;
}

/** Help text on stdout; with --json, as one JSON object (stdout carries only JSON). */
function printText(key: "help" | "version", text: string, json: boolean): void {
  console.log(json ? JSON.stringify({ keep: JSON_VERSION, [key]: text }) : text);
}

async function main(args: string[]): Promise<number> {
  const json = args.includes("--json");
  const [name, ...rest] = args.filter((a, i) => !(a === "--json" && i === 0));
  if (name === undefined && json) {
    throw new KeepError("usage", "Cannot run keep: no command given (see keep --help)");
  }
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    const topic = rest.find((a) => a !== "--json");
    const entry = COMMANDS.find((c) => c.name === topic);
    const cmd = entry ? await entry.load() : null;
    printText("help", cmd ? `${cmd.help}\n\nExit codes:\n${exitTable()}` : await mainHelp(), json);
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "version") {
    printText("version", `keep ${VERSION} (deno ${Deno.version.deno})`, json);
    return 0;
  }
  const entry = COMMANDS.find((c) => c.name === name);
  if (!entry) {
    throw new KeepError("usage", `Cannot run keep ${name}: unknown command (see keep --help)`);
  }
  const cmd = await entry.load();
  if (rest.includes("--help") || rest.includes("-h")) {
    printText("help", `${cmd.help}\n\nExit codes:\n${exitTable()}`, json);
    return 0;
  }
  return await cmd.run(rest);
}

if (import.meta.main) {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (err) {
    const k = toKeepError(err, "Cannot complete");
    code = exitCodeFor(k.code);
    // With --json, stdout carries only JSON: the error too (and stderr its line).
    if (Deno.args.includes("--json")) {
      console.log(JSON.stringify({
        keep: JSON_VERSION,
        error: { code: k.code, message: k.message, exit: code },
      }));
    }
    console.error(`keep: ${k.message}`);
    if (k.code === "internal" && Deno.env.get("KEEP_DEBUG")) console.error((err as Error)?.stack);
  }
  Deno.exit(code);
}
