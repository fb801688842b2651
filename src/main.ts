/**
 * The keep executable. The only place that reads Deno.args, turns errors
 * into one-line messages and exits.
 *
 * @module
 */

import { EXIT_CODES, exitCodeFor, KeepError, toKeepError } from "./engine/errors.ts";
import { backupCommand } from "./cmd/backup.ts";
import type { Command } from "./cmd/command.ts";
import { logCommand } from "./cmd/log.ts";
import { pruneCommand } from "./cmd/prune.ts";
import { lsCommand } from "./cmd/ls.ts";
import { restoreCommand } from "./cmd/restore.ts";
import { serveCommand } from "./cmd/serve.ts";
import { tokenCommand } from "./cmd/token.ts";
import { verifyCommand } from "./cmd/verify.ts";
import { VERSION } from "./http/wire.ts";

const COMMANDS: Command[] = [
  backupCommand,
  restoreCommand,
  serveCommand,
  logCommand,
  lsCommand,
  verifyCommand,
  pruneCommand,
  tokenCommand,
];

function exitTable(): string {
  return EXIT_CODES.map((r) => `  ${r.code}  ${r.meaning}`).join("\n");
}

function mainHelp(): string {
  return `keep ${VERSION} - incremental backups of build trees

Usage: keep <command> [options]     keep <command> --help

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(9)} ${c.summary}`).join("\n")}

Typical use (Makefile, last line):
  export KEEP_SERVER=http://nas:8080 KEEP_PROJECT=app KEEP_TOKEN=...
  keep backup -m "$(git rev-parse --short HEAD)" .

Exit codes:
${exitTable()}`;
}

async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    const cmd = COMMANDS.find((c) => c.name === rest[0]);
    console.log(cmd ? `${cmd.help}\n\nExit codes:\n${exitTable()}` : mainHelp());
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "version") {
    console.log(`keep ${VERSION} (deno ${Deno.version.deno})`);
    return 0;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    throw new KeepError("usage", `Cannot run keep ${name}: unknown command (see keep --help)`);
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(`${cmd.help}\n\nExit codes:\n${exitTable()}`);
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
    console.error(`keep: ${k.message}`);
    if (k.code === "internal" && Deno.env.get("KEEP_DEBUG")) console.error((err as Error)?.stack);
    code = exitCodeFor(k.code);
  }
  Deno.exit(code);
}
