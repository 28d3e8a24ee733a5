/**
 * `tcpka enable` and `tcpka disable`: keepalive on (or off) for the live TCP sockets of running processes,
 * through pidfd_getfd, once or, with --watch, for new connections as they appear.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { type LiveResult, LiveSession } from "../enforce/live/session.js";
import { TcpkaError, usage } from "../errors.js";
import { parsePid, type SocketFilter, socketMatcher } from "../filter.js";
import { permissionError } from "../inspect/processes.js";
import { chooseProcesses, type ProcessChoice, type ProcessTargets } from "../inspect/targets.js";
import { stateMask } from "../kernel/states.js";
import {
  type Change,
  deadPeerChange,
  type EffectiveKeepAlive,
  formatMs,
  formatSeconds,
  type KeepAliveSettings,
  parseDurationMs,
} from "../settings.js";
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
import { hostPort, type Out, paint, plural, processText } from "../ui/format.js";

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
      --watch            keep going for new connections until interrupted or every --pid target has exited
      --every DURATION   how often --watch looks (default 1s)
  -q, --quiet            no line per socket, only the summary
      --json             the result as JSON`;

export const ENABLE_HELP = `Usage: tcpka enable (--pid PID… | --comm NAME | --cgroup PATH | --all) [settings] [filters] [--force]
                    [--dry-run] [--watch [--every 1s]] [--json]

Turn TCP keepalive on for the live connections of running processes, without restarting them: each socket is
duplicated with pidfd_getfd (Linux 5.6+), checked to still be the socket that was listed, changed with
setsockopt, and the duplicate closed at once. Works for statically linked programs (Go) too. Listening sockets
are changed as well: the connections they accept from now on inherit the settings. Needs root or
CAP_SYS_PTRACE (or the same user as the process, where ptrace is allowed).

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

interface Tally {
  changed: number;
  unchanged: number;
  filtered: number;
  gone: number;
  failed: number;
  listening: number;
  processes: Set<number>;
  before: number | null; // worst dead-peer time before, Infinity = never
  after: number | null;
  errors: Map<string, number>;
}

function worst(a: number | null, b: number | null): number | null {
  if (a === null) return b;
  if (b === null) return a;
  return Math.max(a, b);
}

function tally(t: Tally, results: readonly LiveResult[]): void {
  // Outcomes share their `before` and `changes` objects (enforce/live/batch.ts): work each pair out once.
  const times = new Map<EffectiveKeepAlive, Map<readonly Change[], [number, number]>>();
  for (const { socket, outcome } of results) {
    t.processes.add(socket.pid);
    if (outcome.result === "gone") {
      t.gone++;
      continue;
    }
    if (outcome.result === "failed") {
      t.failed++;
      const key = `${outcome.error.syscall}: ${outcome.error.errnoName}`;
      t.errors.set(key, (t.errors.get(key) ?? 0) + 1);
      continue;
    }
    if (outcome.result === "unchanged") t.unchanged++;
    else t.changed++;
    if (socket.socket.state === "LISTEN") {
      t.listening++;
      continue;
    }
    let byChanges = times.get(outcome.before);
    if (!byChanges) {
      byChanges = new Map();
      times.set(outcome.before, byChanges);
    }
    let pair = byChanges.get(outcome.changes);
    if (!pair) {
      pair = deadPeerChange(outcome.before, outcome.changes);
      byChanges.set(outcome.changes, pair);
    }
    t.before = worst(t.before, pair[0]);
    t.after = worst(t.after, pair[1]);
  }
}

function changeText(c: Change): string {
  if (c.option === "keepalive") return c.to ? "keepalive on" : "keepalive off";
  if (c.option === "userTimeout") return `user timeout ${c.from ? formatMs(c.from) : "none"}→${formatMs(c.to)}`;
  const unit = c.option === "count" ? "" : "s";
  return `${c.option} ${c.from}→${c.to}${unit}`;
}

function lineFor(r: LiveResult, out: Out): string {
  const s = r.socket;
  const where = `${processText(s.comm, s.pid)} fd ${s.fd}  ${s.socket.state} ${hostPort(s.socket.localAddress, s.socket.localPort)}${
    s.socket.state === "LISTEN" ? "" : ` -> ${hostPort(s.socket.peerAddress, s.socket.peerPort)}`
  }`;
  const o = r.outcome;
  switch (o.result) {
    case "changed":
    case "would change":
      return `${where}  ${paint(out, "green", o.result)}  ${o.changes.map(changeText).join(", ")}\n`;
    case "unchanged": {
      const b = o.before;
      return `${where}  already  ${b.keepalive ? `on, ${b.idle}s / ${b.interval}s / ${b.count}` : "off"}\n`;
    }
    case "gone":
      return `${where}  gone  closed or exited meanwhile (${o.error.errnoName})\n`;
    case "failed":
      return `${where}  ${paint(out, "red", "failed")}  ${o.error.message}\n`;
  }
}

function resultJson(r: LiveResult): Record<string, unknown> {
  const s = r.socket;
  const o = r.outcome;
  return {
    pid: s.pid,
    comm: s.comm,
    fd: s.fd,
    state: s.socket.state,
    local_address: s.socket.localAddress,
    local_port: s.socket.localPort,
    peer_address: s.socket.peerAddress,
    peer_port: s.socket.peerPort,
    inode: s.socket.inode,
    result: o.result,
    changes: o.changes.map((c) => ({ option: c.option, from: c.from, to: c.to })),
    ...("error" in o ? { error: o.error.errnoName, message: o.error.message } : {}),
  };
}

export interface LiveOptions {
  disable: boolean;
  settings: KeepAliveSettings;
  force: boolean;
  filter: SocketFilter;
  /** --watch stops at SIGINT/SIGTERM (default); tcpka run's fallback stops when its child exits instead. */
  stopOnSignal?: boolean;
  dryRun: boolean;
  watch: boolean;
  everyMs: number;
  quiet: boolean;
  json: boolean;
}

/** Run enable/disable over the targets; the exit code. Shared with `tcpka run`'s fallback. */
export async function runLive(targets: ProcessTargets, o: LiveOptions, out: Out): Promise<number> {
  const plan = { disable: o.disable, settings: o.settings, mode: o.force ? "force" : "strengthen" } as const;
  const session = new LiveSession(o.filter.states, socketMatcher(o.filter), plan, o.dryRun);
  const t: Tally = {
    changed: 0,
    unchanged: 0,
    filtered: 0,
    gone: 0,
    failed: 0,
    listening: 0,
    processes: new Set(),
    before: null,
    after: null,
    errors: new Map(),
  };
  const all: LiveResult[] = [];
  const unreadable = new Set<number>();
  let reached = 0; // target processes whose fds could be read, summed over the rounds
  let stop = false;
  const onSignal = () => {
    stop = true;
  };
  if (o.watch && o.stopOnSignal !== false) {
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  }
  try {
    for (;;) {
      const pids = targets.pids();
      const round = await session.round(pids);
      for (const p of round.unreadable) unreadable.add(p);
      reached += pids.length - round.unreadable.length;
      t.filtered += round.filtered;
      for (const pid of round.holders) t.processes.add(pid);
      tally(t, round.results);
      if (round.results.some((r) => r.outcome.result === "failed" && r.outcome.error.errnoName === "ENOSYS")) {
        throw new TcpkaError("unsupported", "this kernel has no pidfd_getfd: tcpka enable needs Linux 5.6 or newer", {
          hint: "on older kernels use tcpka run (LD_PRELOAD) at the program's start",
        });
      }
      if (o.json) all.push(...round.results);
      else if (!o.quiet) for (const r of round.results) out.write(lineFor(r, out));
      out.end();
      // Waiting is pointless when none of the targets can be read: say so now, not at the end.
      if (
        o.watch &&
        targets.fixed &&
        pids.length > 0 &&
        round.unreadable.length === pids.length &&
        t.processes.size === 0
      ) {
        throw permissionError(round.unreadable);
      }
      if (!o.watch || stop || (targets.fixed && pids.length === 0)) break;
      await sleep(o.everyMs);
      if (stop) break;
    }
  } finally {
    await session.close();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }

  // Processes that could not be read are skipped, counted and make the exit code 1; but when nothing at all
  // could be reached, the permission error says it in one line.
  const denied = [...unreadable];
  const eperm = t.errors.size > 0 && [...t.errors.keys()].every((k) => k.endsWith("EPERM"));
  if (t.changed + t.unchanged === 0 && ((denied.length > 0 && reached === 0) || (eperm && t.failed > 0))) {
    throw permissionError(denied.length ? denied : [...t.processes]);
  }

  if (o.json) {
    out.write(
      `${JSON.stringify({
        sockets: all.map(resultJson),
        summary: {
          changed: t.changed,
          unchanged: t.unchanged,
          listening: t.listening,
          filtered_out: t.filtered,
          gone: t.gone,
          failed: t.failed,
          unreadable_pids: denied,
          dead_peer_after_s_before: finite(t.before),
          dead_peer_after_s: finite(t.after),
          dry_run: o.dryRun,
        },
      })}\n`,
    );
  } else {
    writeSummary(t, o, denied, out);
  }
  return t.failed > 0 || denied.length > 0 ? 1 : 0;
}

function finite(x: number | null): number | null {
  return x === null || !Number.isFinite(x) ? null : x;
}

function writeSummary(t: Tally, o: LiveOptions, denied: readonly number[], out: Out): void {
  const total = t.changed + t.unchanged + t.gone + t.failed;
  const verb = o.dryRun ? "would change" : "changed";
  const s = o.settings;
  const what = o.disable ? "keepalive off" : `keepalive on, ${s.idle}s / ${s.interval}s / ${s.count}`;
  out.write(`${plural(total, "TCP socket")} in ${plural(t.processes.size, "process", "processes")}\n`);
  const row = (label: string, n: number, note = "") =>
    out.write(`  ${label.padEnd(18)}${String(n).padStart(6)}  ${note}\n`.trimEnd() + "\n");
  row(verb, t.changed, t.changed ? what : "");
  row(o.disable ? "already off" : "already as strong", t.unchanged);
  if (t.listening && !o.disable)
    row("listening", t.listening, "connections they accept from now on inherit the settings");
  if (t.filtered) row("filtered out", t.filtered);
  if (t.gone) row("gone", t.gone, "closed or exited meanwhile");
  row("failed", t.failed, [...t.errors].map(([k, n]) => `${k} (${n})`).join(", "));
  if (denied.length)
    out.write(
      `  ${paint(out, "red", `${plural(denied.length, "process", "processes")} could not be read`)}: run as root, or give tcpka CAP_SYS_PTRACE\n`,
    );
  if (!o.disable && t.after !== null) {
    const before = t.before === null ? "" : ` (before: ${formatSeconds(t.before)})`;
    const verbPhrase = o.dryRun ? "would be" : "are now";
    out.write(`dead peers ${verbPhrase} noticed after at most ${formatSeconds(t.after)}${before}\n`);
  }
}

async function runTargets(argv: readonly string[], out: Out, disable: boolean): Promise<number> {
  const options = enableOptions(disable);
  const { values } = parse(disable ? "disable" : "enable", argv, options);
  if (bool(values, "help")) {
    out.write(disable ? DISABLE_HELP : ENABLE_HELP);
    return 0;
  }
  const targets = chooseProcesses(processChoice(values, disable ? "disable" : "enable"));
  const filterValues = { ...values, all: undefined, pid: undefined, comm: undefined };
  const filter = filterFrom(filterValues);
  if (!values.state && !values.listening) filter.states = stateMask(["ESTAB", "LISTEN"]);
  const every = str(values, "every");
  let everyMs = 1000;
  if (every !== undefined && !bool(values, "watch")) throw usage("--every goes with --watch");
  if (every !== undefined) {
    const ms = parseDurationMs(every);
    if (ms === undefined || ms < 10)
      throw usage(`--every ${every}: not a duration of at least 10ms`, "e.g. --every 500ms or --every 2s");
    everyMs = ms;
  }
  return runLive(
    targets,
    {
      disable,
      settings: disable ? {} : settingsFrom(values),
      force: bool(values, "force"),
      filter,
      dryRun: bool(values, "dry-run"),
      watch: bool(values, "watch"),
      everyMs,
      quiet: bool(values, "quiet"),
      json: bool(values, "json"),
    },
    out,
  );
}

export function runEnable(argv: readonly string[], out: Out): Promise<number> {
  return runTargets(argv, out, false);
}

export function runDisable(argv: readonly string[], out: Out): Promise<number> {
  return runTargets(argv, out, true);
}
