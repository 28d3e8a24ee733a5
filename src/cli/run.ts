/**
 * `tcpka run [settings] [--only …] [--except …] [--force] -- CMD ARGS…`: run a program with keepalive forced on
 * through the preload shim. Everything is validated before the program starts.
 */

import { readdirSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { preloadBlocker, resolveCommand, shimEnvironment } from "../enforce/preload.js";
import { TcpkaError, usage } from "../errors.js";
import { DEFAULT_FILTER, type EndpointRule, parseRules } from "../filter.js";
import { stateMask } from "../inspect/sockets.js";
import type { KeepAliveSettings } from "../settings.js";
import {
  bool,
  type Options,
  parse,
  RULE_LINES,
  SETTINGS_HELP,
  SETTINGS_OPTIONS,
  settingsFrom,
  splitCommand,
  strs,
} from "./args.js";
import { passThrough, runChild } from "./child.js";
import { runLive } from "./enable.js";
import { Out, reportError } from "./format.js";

export const RUN_HELP = `Usage: tcpka run [settings] [--only RULE]… [--except RULE]… [--force] [--] CMD [ARGS…]

Run CMD with TCP keepalive on for its connections, without changing it: the preload library libtcpka.so
turns keepalive on when a socket connects, when it listens (accepted connections inherit it) and when a
connection is accepted from a listener it did not see. Child processes inherit it. Exit code and signals of
CMD pass through.

${SETTINGS_HELP}

Which connections (default: all TCP over IPv4 and IPv6):
${RULE_LINES.only}
${RULE_LINES.except}
      --debug            the library reports its own errors on stderr

LD_PRELOAD cannot reach statically linked programs (most Go binaries) or set-user-ID programs: for those,
tcpka says so, runs CMD as it is and sets keepalive on its connections (and its children's) through
pidfd_getfd every 200 ms, as tcpka enable does (needs root or CAP_SYS_PTRACE). Sockets made by raw syscalls
or io_uring bypass the library; tcpka enforce (BPF) covers them.

Examples:
  tcpka run -- psql -h db.internal
  tcpka run --idle 2m --interval 20s --count 3 -- java -jar app.jar
  tcpka run --only :5432 --only 198.18.0.0/15 -- ./worker
`;

const OPTIONS: Options = {
  ...SETTINGS_OPTIONS,
  only: { type: "string", multiple: true },
  except: { type: "string", multiple: true },
  debug: { type: "boolean" },
};

export interface PreloadPlan {
  file: string;
  args: string[];
  argv0: string;
  settings: KeepAliveSettings;
  only: EndpointRule[];
  except: EndpointRule[];
}

/** Parse and check a run-like command line (shared with trace): settings, rules, and a runnable CMD. */
export function planPreload(
  command: string,
  argv: readonly string[],
  options: Options,
): PreloadPlan & { values: ReturnType<typeof parse>["values"] } {
  const split = splitCommand(argv, options);
  const { values } = parse(command, split.own, options);
  const plan = {
    values,
    settings: settingsFrom(values),
    ...parseRules(strs(values, "only"), strs(values, "except")),
    file: "",
    args: split.command.slice(1),
    argv0: split.command[0] ?? "",
  };
  if (bool(values, "help")) return plan;
  if (!plan.argv0) throw usage(`${command}: no command given`, `e.g. tcpka ${command} -- curl http://127.0.0.1:8080/`);
  plan.file = resolveCommand(plan.argv0);
  return plan;
}

/** The one-line refusal for a program that LD_PRELOAD cannot reach. */
export function blockedError(plan: PreloadPlan, why: string): TcpkaError {
  return new TcpkaError("unsupported", `${plan.file} is ${why}: LD_PRELOAD cannot reach it`, {
    hint:
      why === "statically linked"
        ? "the dynamic loader does not run for it; tcpka run falls back to pidfd_getfd for it, tcpka enable --pid does the same for a running process"
        : "the loader ignores LD_PRELOAD when exec changes credentials; run it as its owner, or use tcpka enable --pid",
  });
}

export async function runRun(argv: readonly string[], out: Out): Promise<number> {
  const plan = planPreload("run", argv, OPTIONS);
  if (bool(plan.values, "help")) {
    out.write(RUN_HELP);
    return 0;
  }
  const why = preloadBlocker(plan.file);
  if (why) return runWatched(plan, why, bool(plan.values, "force"));
  const env = shimEnvironment({
    mode: bool(plan.values, "force") ? "force" : "strengthen",
    settings: plan.settings,
    only: plan.only,
    except: plan.except,
    debug: bool(plan.values, "debug"),
  });
  out.end();
  return passThrough(await runChild(plan.file, plan.argv0, plan.args, env));
}

/** Every descendant of a process (through /proc/PID/task/TID/children), itself included. */
function withDescendants(root: number): number[] {
  const out: number[] = [];
  const queue = [root];
  while (queue.length) {
    const pid = queue.shift() as number;
    out.push(pid);
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tasks) {
      try {
        for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, "ascii").split(" "))
          if (c.trim()) queue.push(Number(c));
      } catch {
        /* exited */
      }
    }
  }
  return out;
}

const WATCH_EVERY_MS = 200;

/**
 * The fallback for a program that LD_PRELOAD cannot reach (statically linked, set-user-ID): run it as it is
 * and, while it runs, turn keepalive on for its connections and its children's through pidfd_getfd, looking
 * every 200 ms. The report goes to stderr; the exit code is the program's.
 */
async function runWatched(plan: PreloadPlan, why: string, force: boolean): Promise<number> {
  const err = new Out(2);
  err.write(
    `tcpka: ${plan.file} is ${why}: LD_PRELOAD cannot reach it; setting keepalive on its connections through pidfd_getfd every ${WATCH_EVERY_MS}ms instead\n`,
  );
  err.end();
  let pid = 0;
  let exited = false;
  const child = runChild(plan.file, plan.argv0, plan.args, process.env, (p) => {
    pid = p;
  }).finally(() => {
    exited = true;
  });
  const filter = { ...DEFAULT_FILTER, states: stateMask(["ESTAB", "LISTEN"]), only: plan.only, except: plan.except };
  const watching = (async () => {
    while (pid === 0 && !exited) await sleep(5);
    if (exited) return 0;
    return runLive(
      { pids: () => (exited ? [] : withDescendants(pid)), fixed: true },
      {
        disable: false,
        settings: plan.settings,
        force,
        filter,
        dryRun: false,
        watch: true,
        everyMs: WATCH_EVERY_MS,
        quiet: true,
        json: false,
        stopOnSignal: false,
      },
      err,
    );
  })();
  const result = await child;
  await watching.catch((e: unknown) => reportError(e));
  err.end();
  return passThrough(result);
}
