import { join, resolve } from "node:path";
import { KeepError } from "../errors.ts";
import { checkProjectName, type Policy } from "../format/api.ts";
import { KeepClient } from "../http/client.ts";
import { lockForLife } from "../platform/fs_native.ts";
import { checkPolicy } from "../server/retention.ts";
import { openLocalStorage } from "../server/storage/open.ts";
import { type Command, out, outJson } from "./command.ts";
import { CLIENT_FLAGS, clientOptions, flagOrEnv, parseFlags, required } from "./flags.ts";
import {
  describePolicy,
  policyFromFlags,
  quotaFromFlags,
  RULE_FLAGS,
  RULE_HELP,
} from "./retention_flags.ts";

export const policyCommand: Command = {
  name: "policy",
  summary: "set, show or clear a project's retention policy and quota",
  help: `Usage: keep policy set --project ID [RULES] [--quota SIZE]
       keep policy show --project ID [--json]
       keep policy clear --project ID
       (each with --server URL --token ADMIN, or --data DIR)

A project's policy is stored on the server, which applies it by itself
every --retention-every (keep serve; default hourly): build hosts only need
backup tokens. 'set' replaces the whole policy with the rules given (and the
quota); 'clear' removes it (every commit is kept). keep prune --dry-run
shows what a policy would remove.

${RULE_HELP}

Quota:
      --quota SIZE       a backup that would take the project's stored bytes past SIZE
                         is refused before anything is stored (exit 7); e.g. 50G, off

Options:
  -p, --project ID    project (env KEEP_PROJECT)
  -s, --server URL    through the server (env KEEP_SERVER); --token, --ca, --fingerprint
  -d, --data DIR      a data directory directly (env KEEP_DATA; set/clear: server stopped)
      --json          show: the policy as JSON`,
  async run(args) {
    const [action, ...rest] = args;
    if (action !== "set" && action !== "show" && action !== "clear") {
      throw new KeepError(
        "usage",
        `Cannot run keep policy ${action ?? ""}: give set, show or clear (keep policy --help)`,
      );
    }
    const p = parseFlags(`policy ${action}`, rest, {
      ...CLIENT_FLAGS,
      ...(action === "set" ? { ...RULE_FLAGS, quota: { type: "string" } } : {}),
      data: { type: "string", short: "d" },
      json: { type: "boolean" },
    });
    if (p.positionals.length) {
      throw new KeepError(
        "usage",
        `Cannot run keep policy ${action}: unexpected ${JSON.stringify(p.positionals[0])}`,
      );
    }
    const project = checkProjectName(required(p, `policy ${action}`, "project", "KEEP_PROJECT"));
    let wanted: Policy | null = null;
    if (action === "set") {
      wanted = policyFromFlags(p);
      const quota = quotaFromFlags(p);
      if (quota) wanted.quotaBytes = quota;
      if (Object.keys(wanted).length === 0) {
        throw new KeepError(
          "usage",
          "Cannot run keep policy set: give rules (--keep-last, ...) or --quota; clear removes a policy",
        );
      }
      checkPolicy(wanted);
    }
    const data = typeof p.values.data === "string" ? resolve(p.values.data) : undefined;
    let policy: Policy | null;
    if (data) {
      try {
        Deno.statSync(join(data, "index.db"));
      } catch {
        throw new KeepError("usage", `Cannot open ${data}: no index.db there`);
      }
      if (action !== "show" && lockForLife(join(data, "serve.lock")) === false) {
        throw new KeepError(
          "unavailable",
          `Cannot change the policy in ${data}: keep serve is running on it; use --server`,
        );
      }
      const storage = await openLocalStorage(data);
      try {
        if (action !== "show") await storage.index.setPolicy(project, wanted);
        policy = await storage.index.getPolicy(project);
      } finally {
        await storage.close();
      }
    } else {
      if (!flagOrEnv(p, "server", "KEEP_SERVER")) {
        throw new KeepError(
          "usage",
          `Cannot run keep policy ${action}: give --server URL (admin token) or --data DIR`,
        );
      }
      const client = new KeepClient(clientOptions(p));
      try {
        policy = action === "show"
          ? await client.policy(project)
          : await client.setPolicy(project, wanted);
      } finally {
        client.close();
      }
    }
    if (p.values.json) outJson({ project, policy });
    else out(`keep policy: ${project}: ${describePolicy(policy)}`);
    return 0;
  },
};
