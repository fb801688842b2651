/** The shape every subcommand file exports. */
export interface Command {
  name: string;
  /** One line for `keep --help`. */
  summary: string;
  /** Full `keep <name> --help` text. */
  help: string;
  /** Runs with the arguments after the subcommand; resolves to the exit code. */
  run(args: string[]): Promise<number>;
}

import { JSON_VERSION } from "../format/api.ts";

/** Where commands write: stdout for results, stderr for notes and problems. */
export const out = (line: string) => console.log(line);
export const note = (line: string) => console.error(line);

/**
 * The one `--json` answer of a command: `{"keep": 1, …fields}` on stdout
 * (README "JSON output" has the shapes; errors are main.ts's, same envelope).
 */
export function outJson(fields: object): void {
  out(JSON.stringify({ keep: JSON_VERSION, ...fields }, null, 2));
}
