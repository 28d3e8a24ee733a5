/**
 * `tcpka enable` and `tcpka disable`: keepalive on (or off) for the live TCP sockets of running processes,
 * through pidfd_getfd, once or, with --watch, for new connections as they appear.
 */
import { LIVE_STATES, LiveSession } from "../enforce/live/session.js";
import { usage } from "../errors.js";
import { parsePid } from "../filter.js";
import { chooseProcesses, type ProcessChoice } from "../inspect/targets.js";
import { parseDurationMs } from "../settings.js";
import {
  bool,
  FILTER_OPTIONS,
  filterFrom,
  filterHelp,
  type Options,
  type Parsed,
  parse,
  parseComm,
  SETTINGS_HELP,
  SETTINGS_OPTIONS,
  settingsFrom,
  str,
  strs,
} from "../ui/args.js";
import type { Out } from "../ui/format.js";
import { LiveReport } from "../ui/live.js";
import { stopOnSignals } from "../ui/signals.js";

const TARGETS_HELP = `Targets (one kind at least):
      --pid PID          this process (give it several times for several)
      --comm NAME        every process with this name (/proc/PID/comm)
      --cgroup PATH      every process in this cgroup v2 and below it (e.g. system.slice/nginx.service)
      --all              every process`;

const FILTERS_HELP = filterHelp("Filters (all must match; default: established and listening sockets):", [
  "listening",
  "state",
  "no-keepalive",
  "sport",
  "dport",
  "dst",
  "src",
  "ip",
  "only",
  "except",
]);

const RUN_HELP = `Output and behaviour:
      --dry-run          show what would change, change nothing
      --via bpf|pidfd    how to change them: bpf, in the kernel (a BPF TCP iterator; root, Linux 5.15, BTF; no
                         socket is duplicated); pidfd, through a duplicate of each (pidfd_getfd). Default: bpf
                         where it works, else pidfd
      --spread DURATION  spread many changes over at most this long (default: as long as the kernel's timer
                         wheel and softnet backlog need, up to one idle time; see README). Shorter puts more
                         first probes in one timer tick, and tcpka says how many; 0: all at once
      --watch            keep going for new connections until interrupted or every --pid target has exited
      --every DURATION   how often --watch looks (default 1s)
  -q, --quiet            no line per socket, only the summary
      --json             the result as JSON`;

export const ENABLE_HELP = `Usage: tcpka enable (--pid PID… | --comm NAME | --cgroup PATH | --all) [settings] [filters] [--force]
                    [--dry-run] [--watch [--every 1s]] [--json]

Turn TCP keepalive on for the live connections of running processes, without restarting them. As root on
Linux 5.15+ with BTF the kernel does it: a BPF TCP iterator reads each target socket's settings, decides and
calls setsockopt on it in one pass, no socket duplicated. Elsewhere each socket is duplicated with pidfd_getfd
(Linux 5.6+), checked to still be the socket that was listed, changed, and the duplicate closed at once (needs
root or CAP_SYS_PTRACE, or the same user as the process where ptrace is allowed). Works for statically linked
programs (Go) too. Listening sockets are changed as well: the connections they accept inherit the settings.
Many changes are spread out so that their first probes never crowd one tick of the kernel's timer wheel (the
command says how long that takes).

${TARGETS_HELP}

${SETTINGS_HELP}

${FILTERS_HELP}

${RUN_HELP}

Exit code: 0 when every socket is done, 1 when some failed or some processes could not be read, 2 for bad usage.

Examples:
  sudo tcpka enable --pid 2203
  sudo tcpka enable --comm psql --idle 30s --interval 5s --count 3
  sudo tcpka enable --cgroup system.slice/app.service --dport 5432 --watch
`;

export const DISABLE_HELP = `Usage: tcpka disable (--pid PID… | --comm NAME | --cgroup PATH | --all) [filters] [--dry-run] [--json]

Turn SO_KEEPALIVE off again on the live TCP sockets of running processes (what tcpka enable undoes), with the
same targeting and filters as tcpka enable.

${TARGETS_HELP}

${FILTERS_HELP}

${RUN_HELP}

Exit code: 0 when every socket is done, 1 when some failed or some processes could not be read, 2 for bad usage.

Examples:
  sudo tcpka disable --pid 2203
  sudo tcpka disable --comm psql --dport 5432 --dry-run
`;

function enableOptions(disable: boolean): Options {
  const filters: Options = { ...FILTER_OPTIONS };
  delete filters.all; // --all means every process here
  return {
    ...filters,
    ...(disable ? {} : SETTINGS_OPTIONS),
    pid: { type: "string", multiple: true },
    comm: { type: "string", multiple: true },
    cgroup: { type: "string", multiple: true },
    all: { type: "boolean" },
    "dry-run": { type: "boolean" },
    via: { type: "string" },
    spread: { type: "string" },
    watch: { type: "boolean" },
    every: { type: "string" },
    quiet: { type: "boolean", short: "q" },
    json: { type: "boolean" },
  };
}

/** The target flags as a choice of processes; which flags go together, and that one is given. */
function processChoice(v: Parsed["values"], command: string): ProcessChoice {
  const all = bool(v, "all");
  const others = ["pid", "comm", "cgroup"].filter((k) => strs(v, k).length);
  if (all && others.length) throw usage(`--all means every process: give it without --${others.join(" or --")}`);
  if (!others.length && !all) {
    throw usage("no target: give --pid, --comm, --cgroup or --all", `e.g. sudo tcpka ${command} --pid 2203`);
  }
  return {
    pids: strs(v, "pid").map((p) => parsePid("--pid", p)),
    comms: strs(v, "comm").map(parseComm),
    cgroups: strs(v, "cgroup"),
    all,
  };
}

async function runTargets(argv: readonly string[], out: Out, disable: boolean): Promise<number> {
  const command = disable ? "disable" : "enable";
  const { values } = parse(command, argv, enableOptions(disable));
  if (bool(values, "help")) {
    out.write(disable ? DISABLE_HELP : ENABLE_HELP);
    return 0;
  }
  const targets = chooseProcesses(processChoice(values, command));
  const filter = filterFrom({ ...values, all: undefined, pid: undefined, comm: undefined });
  if (!values.state && !values.listening) filter.states = LIVE_STATES;
  const watch = bool(values, "watch");
  const every = str(values, "every");
  if (every !== undefined && !watch) throw usage("--every goes with --watch");
  const everyMs = every === undefined ? 1000 : parseDurationMs(every);
  if (everyMs === undefined || everyMs < 10)
    throw usage(`--every ${every}: not a duration of at least 10ms`, "e.g. --every 500ms or --every 2s");
  const settings = disable ? {} : settingsFrom(values);
  const dryRun = bool(values, "dry-run");
  const via = str(values, "via");
  if (via !== undefined && via !== "bpf" && via !== "pidfd") throw usage(`--via ${via}: use bpf or pidfd`);
  // --no-keepalive is decided on the settings read in the same pass that changes them (batch.ts, the kernel's).
  const plan = {
    disable,
    settings,
    mode: bool(values, "force") ? "force" : "strengthen",
    onlyOff: filter.noKeepalive,
  } as const;
  const report = new LiveReport(out, {
    disable,
    settings,
    dryRun,
    quiet: bool(values, "quiet"),
    json: bool(values, "json"),
  });
  const spread = str(values, "spread");
  const maxSpreadMs = spread === undefined ? undefined : parseDurationMs(spread);
  if (spread !== undefined && maxSpreadMs === undefined)
    throw usage(`--spread ${spread}: not a duration`, "e.g. --spread 10s, or --spread 0 to change everything at once");
  const session = LiveSession.matching(filter, plan, dryRun, { via, maxSpreadMs });
  const stop = watch ? stopOnSignals() : undefined;
  try {
    const rounds = {
      every: watch ? everyMs : undefined,
      signal: stop?.signal,
      onRound: report.round,
      onSpread: report.spread,
    };
    return report.end(await session.watch(targets, rounds));
  } finally {
    stop?.dispose();
  }
}

export function runEnable(argv: readonly string[], out: Out): Promise<number> {
  return runTargets(argv, out, false);
}

export function runDisable(argv: readonly string[], out: Out): Promise<number> {
  return runTargets(argv, out, true);
}
