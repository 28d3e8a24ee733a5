/**
 * `tcpka run [settings] [--only …] [--except …] [--force] -- CMD ARGS…`: run a program with keepalive forced on
 * through the preload shim. Everything is validated before the program starts.
 */

import { setTimeout as sleep } from "node:timers/promises";
import { LiveSession } from "../enforce/live/session.js";
import { type Blocker, preloadOrFallback, resolveCommand } from "../enforce/preload/index.js";
import { processTree } from "../inspect/targets.js";
import {
  bool,
  type CommandLine,
  commandLine,
  type Options,
  RULE_LINES,
  SETTINGS_HELP,
  SETTINGS_OPTIONS,
} from "../ui/args.js";
import { passThrough, runChild } from "../ui/child.js";
import { Out, printable, reportError } from "../ui/format.js";
import { LiveReport } from "../ui/live.js";

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

Before CMD starts, tcpka checks that the library loads and accepts its settings in CMD's environment; when
the copy it ships cannot be loaded on this system, it builds one with the system's C compiler (once, into
/var/cache/tcpka or ~/.cache/tcpka). LD_PRELOAD cannot reach statically linked programs (most Go binaries),
set-user-ID programs, or programs for another machine type or C library. For those, and where no library
loads, tcpka says so, runs CMD as it is and sets keepalive on its connections (and its children's) through
pidfd_getfd every 200 ms, as tcpka enable does. Where the kernel would not allow that either (another user's
program without root or CAP_SYS_PTRACE, an unreadable program, Yama ptrace_scope 2 or 3), tcpka refuses and
CMD does not run. Sockets made by raw syscalls or io_uring bypass the library; tcpka enforce (BPF) covers them.

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

/** What tcpka run starts: its command line, and the file that CMD names. */
type PreloadPlan = CommandLine & { file: string };

export async function runRun(argv: readonly string[], out: Out): Promise<number> {
  const line = commandLine("run", argv, OPTIONS);
  if (bool(line.values, "help")) {
    out.write(RUN_HELP);
    return 0;
  }
  const plan: PreloadPlan = { ...line, file: resolveCommand(line.argv0) };
  const force = bool(line.values, "force");
  const preload = preloadOrFallback(plan.file, {
    mode: force ? "force" : "strengthen",
    settings: plan.settings,
    only: plan.only,
    except: plan.except,
    debug: bool(line.values, "debug"),
  });
  if ("env" in preload) {
    if (preload.notice) process.stderr.write(`tcpka: ${printable(preload.notice)}\n`);
    out.end();
    return passThrough(await runChild(plan.file, plan.argv0, plan.args, preload.env));
  }
  return runWatched(plan, preload.blocked, force);
}

const WATCH_EVERY_MS = 200;

/**
 * The fallback for a program that LD_PRELOAD cannot reach (statically linked, set-user-ID): run it as it is
 * and, while it runs, turn keepalive on for its connections and its children's through pidfd_getfd, looking
 * every 200 ms. The report goes to stderr; the exit code is the program's.
 */
async function runWatched(plan: PreloadPlan, why: Blocker, force: boolean): Promise<number> {
  const err = new Out(2);
  err.write(
    `tcpka: ${printable(why.message)}; setting keepalive on the program's connections through pidfd_getfd every ${WATCH_EVERY_MS}ms instead\n`,
  );
  err.end();
  let pid = 0;
  const exited = new AbortController();
  const child = runChild(plan.file, plan.argv0, plan.args, process.env, (p) => {
    pid = p;
  }).finally(() => exited.abort());
  const { settings } = plan;
  const watching = (async () => {
    while (pid === 0 && !exited.signal.aborted) await sleep(5);
    if (exited.signal.aborted) return 0;
    const session = LiveSession.matching(
      { only: plan.only, except: plan.except },
      { disable: false, settings, mode: force ? "force" : "strengthen" },
    );
    const report = new LiveReport(err, { settings, quiet: true });
    const rounds = { every: WATCH_EVERY_MS, signal: exited.signal, onRound: report.round, onSpread: report.spread };
    return report.end(await session.watch(processTree(pid), rounds));
  })();
  const result = await child;
  await watching.catch((e: unknown) => reportError(e));
  err.end();
  return passThrough(result);
}
