/**
 * `tcpka ls`: one line per socket, like `ss -tanoe` but about keepalive.
 */
import { geteuid } from "node:process";
import { usage } from "../errors.js";
import type { SocketFilter } from "../filter.js";
import {
  type Connection,
  type Inspection,
  type InspectionInfo,
  type InspectOptions,
  inspect,
  inspectEach,
} from "../inspect/connections.js";
import { commOf, permissionError } from "../inspect/processes.js";
import { readSystemDefaults } from "../inspect/sysctl.js";
import type { TcpStateName } from "../kernel/states.js";
import { formatMs, formatSeconds } from "../settings.js";
import { bool, FILTER_HELP, FILTER_OPTIONS, filterFrom, parse, str } from "../ui/args.js";
import { hostPort, type Out, ownerText, paint, plural, printable, table } from "../ui/format.js";

export const LS_HELP = `Usage: tcpka ls [filters] [-w | --json]

List TCP sockets with their keepalive state: whether it is on, the real idle/interval/count and user timeout
(read from the socket itself), when the next probe goes out, and how long a peer that vanished would go
unnoticed. Run as root (or as the owner of the processes) for exact answers; otherwise the kernel's keepalive
timer is shown as a hint, marked with '?'.

${FILTER_HELP}

Output:
  -w, --wide             every column: the next probe, the probes sent, idle/interval/count and the user
                         timeout apart (the default fits 120 columns)
      --json             one JSON object: {"defaults", "connections": [...], "summary"}; durations in
                         fields named _s (seconds) or _ms (milliseconds)
      --no-process       do not look up owning processes (faster; keepalive comes from the timer only)
      --via SOURCE       netlink (default) or proc: read /proc/net/tcp{,6} instead of NETLINK_SOCK_DIAG

Examples:
  sudo tcpka ls                        established connections and their keepalive
  sudo tcpka ls --no-keepalive         only the ones at risk
  tcpka ls --dport 5432 --json         PostgreSQL connections, for a script
  sudo tcpka ls -l                     listening sockets: accepted connections inherit their keepalive
  sudo tcpka ls --only :5432           what tcpka run, enable or enforce --only :5432 would touch
`;

const LS_OPTIONS = {
  ...FILTER_OPTIONS,
  json: { type: "boolean" },
  wide: { type: "boolean", short: "w" },
  "no-process": { type: "boolean" },
  via: { type: "string" },
} as const;

export function runLs(argv: readonly string[], out: Out): number {
  const { values } = parse("ls", argv, LS_OPTIONS);
  if (bool(values, "help")) {
    out.write(LS_HELP);
    return 0;
  }
  const via = str(values, "via");
  if (via !== undefined && via !== "netlink" && via !== "proc") {
    throw usage(`--via ${via}: use netlink or proc`);
  }
  const filter = filterFrom(values);
  const opts: InspectOptions = { via, processes: !bool(values, "no-process") };
  let denied: number[];
  if (bool(values, "json")) denied = deniedTargets(filter, writeJson(filter, opts, out));
  else {
    const r = inspect(filter, opts);
    denied = deniedTargets(filter, r);
    writeTable(r, out, bool(values, "wide"), denied.length > 0);
  }
  // What was asked for by process could not all be read: not "no TCP sockets match", and not exit 0.
  if (denied.length) throw permissionError(denied);
  return 0;
}

/** The processes named by --pid or --comm whose fds this user may not read (/proc/PID/comm is world-readable). */
function deniedTargets(filter: SocketFilter, info: InspectionInfo): number[] {
  if (!filter.pids.length && !filter.comms.length) return [];
  const comms = new Set(filter.comms);
  return info.unreadablePids.filter(
    (p) => (!filter.pids.length || filter.pids.includes(p)) && (!comms.size || comms.has(commOf(p))),
  );
}

/**
 * The JSON form of a connection: stable snake_case names, units in the names. Built as text: at 100,000
 * sockets this is several times faster than objects through JSON.stringify, and makes far less garbage.
 * Every value is a number, boolean, null or a string that needs no escaping, except the process name.
 */
export function connectionJsonText(c: Connection): string {
  const s = c.socket;
  const e = c.settings;
  const probe = s.timer === "keepalive" && c.keepalive !== null;
  const procs = c.owners.map((o) => `{"pid":${o.pid},"comm":${JSON.stringify(o.comm)},"fd":${o.fd}}`).join(",");
  return (
    `{"state":"${s.state}","family":${s.family},` +
    `"local_address":"${s.localAddress}","local_port":${s.localPort},` +
    `"peer_address":"${s.peerAddress}","peer_port":${s.peerPort},"inode":${s.inode},"uid":${s.uid},` +
    `"keepalive":${c.keepalive},"source":"${c.source}",` +
    `"timer":"${s.timer}","timer_ms":${s.timerMs},"timer_count":${s.timerCount},` +
    `"next_probe_ms":${probe ? s.timerMs : null},"probes":${probe ? s.timerCount : null},` +
    `"idle_s":${e ? e.idle : null},"interval_s":${e ? e.interval : null},"count":${e ? e.count : null},` +
    `"user_timeout_ms":${e ? e.userTimeout : null},"dead_peer_after_s":${c.deadPeerAfter},` +
    `"send_queue":${s.sendQueue},"recv_queue":${s.recvQueue},"processes":[${procs}]` +
    `${c.exactError ? `,"exact_error":"${c.exactError}"` : ""}}`
  );
}

/**
 * What the listed sockets mean, by state. Only established connections are at risk: keepalive is what notices
 * their peer vanishing. A listener has no peer; its keepalive is what the connections it accepts inherit
 * (sk_clone_lock copies SO_KEEPALIVE and the TCP_KEEP* values). Every other state is a connection opening or
 * closing (TIME-WAIT is a mini-socket without options, inet_timewait_sock): not counted as without keepalive.
 */
export interface Summary {
  /** Every socket listed. */
  total: number;
  established: number;
  /** Established connections with keepalive on, off, and not known (a retransmission hides the timer). */
  keepaliveOn: number;
  keepaliveOff: number;
  unknown: number;
  listening: number;
  listeningOn: number;
  listeningOff: number;
  /** Every socket listed, by state. */
  states: Map<TcpStateName, number>;
  /** Owners of the established connections without keepalive: "comm[pid]" -> count. */
  offOwners: Map<string, number>;
  /** Longest known detection time of an established connection in seconds; Infinity when one never notices. */
  worstDeadPeer: number | null;
  exact: number;
}

export function emptySummary(): Summary {
  return {
    total: 0,
    established: 0,
    keepaliveOn: 0,
    keepaliveOff: 0,
    unknown: 0,
    listening: 0,
    listeningOn: 0,
    listeningOff: 0,
    states: new Map(),
    offOwners: new Map(),
    worstDeadPeer: null,
    exact: 0,
  };
}

/** Count one connection into a summary. */
export function addToSummary(sum: Summary, c: Connection): void {
  const state = c.socket.state;
  sum.total++;
  sum.states.set(state, (sum.states.get(state) ?? 0) + 1);
  if (c.source === "exact") sum.exact++;
  if (state === "LISTEN") {
    sum.listening++;
    if (c.keepalive === true) sum.listeningOn++;
    else if (c.keepalive === false) sum.listeningOff++;
    return;
  }
  if (state !== "ESTAB") return;
  sum.established++;
  if (c.keepalive === true) sum.keepaliveOn++;
  else if (c.keepalive === false) sum.keepaliveOff++;
  else sum.unknown++;
  if (c.keepalive === false) {
    sum.worstDeadPeer = Number.POSITIVE_INFINITY;
    const o = c.owners[0];
    const key = o ? `${o.comm}[${o.pid}]` : "owner not visible";
    sum.offOwners.set(key, (sum.offOwners.get(key) ?? 0) + 1);
  } else if (c.deadPeerAfter !== null) {
    sum.worstDeadPeer = Math.max(sum.worstDeadPeer ?? 0, c.deadPeerAfter);
  }
}

export function summarize(conns: readonly Connection[]): Summary {
  const sum = emptySummary();
  for (const c of conns) addToSummary(sum, c);
  return sum;
}

/** Stream the JSON: each connection is written as soon as it is known and not kept. */
function writeJson(filter: SocketFilter, opts: InspectOptions, out: Out): InspectionInfo {
  const d = readSystemDefaults();
  out.write(`{"defaults":{"idle_s":${d.idle},"interval_s":${d.interval},"count":${d.count}},\n"connections":[`);
  const sum = emptySummary();
  const info = inspectEach(filter, opts, (c) => {
    out.write((sum.total === 0 ? "\n" : ",\n") + connectionJsonText(c));
    addToSummary(sum, c);
  });
  const summary = {
    connections: sum.total,
    states: Object.fromEntries(sum.states),
    established: sum.established,
    keepalive_on: sum.keepaliveOn,
    keepalive_off: sum.keepaliveOff,
    keepalive_unknown: sum.unknown,
    listening: sum.listening,
    listening_keepalive_on: sum.listeningOn,
    listening_keepalive_off: sum.listeningOff,
    exact: sum.exact,
    worst_dead_peer_after_s: sum.worstDeadPeer === Number.POSITIVE_INFINITY ? null : sum.worstDeadPeer,
    some_never_detect_dead_peer: sum.worstDeadPeer === Number.POSITIVE_INFINITY,
    without_keepalive: [...sum.offOwners].map(([process, count]) => ({ process, count })),
    unreadable_pids: info.unreadablePids.length,
  };
  out.write(`\n],\n"summary":${JSON.stringify(summary)}}\n`);
  return info;
}

function keepaliveCell(c: Connection, out: Out): string {
  if (c.socket.state === "TIME-WAIT") return "-"; // a mini-socket without options (inet_timewait_sock)
  const mark = c.source === "timer" ? "?" : "";
  if (c.keepalive === true) return paint(out, "green", `on${mark}`);
  if (c.keepalive === false) return paint(out, "red", `off${mark}`);
  return "?";
}

function nextProbeCell(c: Connection): string {
  const s = c.socket;
  if (c.keepalive === false) return "-";
  if (s.timer === "keepalive") return formatMs(s.timerMs);
  // A pending retransmission or zero-window probe hides the keepalive timer.
  if (c.keepalive === true && (s.timer === "on" || s.timer === "persist"))
    return s.timer === "on" ? "(retrans)" : "(persist)";
  return "-";
}

function deadPeerCell(c: Connection, out: Out): string {
  if (c.socket.state === "TIME-WAIT") return "-";
  if (c.keepalive === false)
    return c.socket.state === "LISTEN" ? "-" : paint(out, "red", c.source === "timer" ? "never?" : "never");
  if (c.deadPeerAfter === null) return "?";
  return formatSeconds(c.deadPeerAfter);
}

type Column = readonly [header: string, cell: (c: Connection, out: Out) => string];

const STATE: Column = ["STATE", (c) => c.socket.state];
const LOCAL: Column = ["LOCAL", (c) => hostPort(c.socket.localAddress, c.socket.localPort)];
const PEER: Column = ["PEER", (c) => hostPort(c.socket.peerAddress, c.socket.peerPort)];
const DEAD_PEER: Column = ["DEAD PEER AFTER", deadPeerCell];
const PROCESS: Column = ["PROCESS", (c) => ownerText(c.owners)];
/** Where keepalive is on, its settings as the socket has them. */
const on = (c: Connection) => (c.keepalive === true ? c.settings : null);

/**
 * The default columns fit an IPv4 row in 120 columns, with a process name of 15 characters and a 7-digit pid:
 * keepalive and its settings share a column. --wide shows each setting, the timer and the user timeout apart.
 */
const COLUMNS: readonly Column[] = [
  STATE,
  LOCAL,
  PEER,
  [
    "KEEPALIVE",
    (c, out) => {
      const e = on(c);
      return keepaliveCell(c, out) + (e ? ` ${e.idle}s/${e.interval}s/${e.count}` : "");
    },
  ],
  DEAD_PEER,
  PROCESS,
];

const WIDE_COLUMNS: readonly Column[] = [
  STATE,
  LOCAL,
  PEER,
  ["KEEPALIVE", keepaliveCell],
  ["NEXT PROBE", nextProbeCell],
  ["PROBES", (c) => (c.keepalive === true && c.socket.timer === "keepalive" ? String(c.socket.timerCount) : "-")],
  [
    "IDLE/INTVL/CNT",
    (c) => {
      const e = on(c);
      return e ? `${e.idle}/${e.interval}/${e.count}` : "-";
    },
  ],
  [
    "USER TIMEOUT",
    (c) => {
      const ut = on(c)?.userTimeout;
      return ut ? formatMs(ut) : "-";
    },
  ],
  DEAD_PEER,
  PROCESS,
];

/** The table and its footer; `denied`: some targets could not be read, which is said instead of "no match". */
function writeTable(r: Inspection, out: Out, wide: boolean, denied: boolean): void {
  const columns = wide ? WIDE_COLUMNS : COLUMNS;
  const rows = r.connections.map((c) => columns.map(([, cell]) => cell(c, out)));
  if (rows.length)
    table(
      columns.map(([header]) => header),
      rows,
      out,
    );
  writeFooter(r, out, denied);
}

function writeFooter(r: Inspection, out: Out, denied: boolean): void {
  const sum = summarize(r.connections);
  if (sum.total === 0) {
    if (!denied) out.write("no TCP sockets match\n");
    return;
  }
  if (sum.established) {
    let line = `${plural(sum.established, "connection")}: ${sum.keepaliveOn} with keepalive, ${sum.keepaliveOff} without`;
    const owners = [...sum.offOwners.keys()];
    if (owners.length) line += ` (${owners.slice(0, 5).map(printable).join(", ")}${owners.length > 5 ? ", …" : ""})`;
    if (sum.unknown) line += `, ${sum.unknown} unknown`;
    out.write(`${line}\n`);
  }
  if (sum.listening) out.write(`${listeningText(sum)}\n`);
  const others = [...sum.states].filter(([state]) => state !== "ESTAB" && state !== "LISTEN");
  if (others.length) {
    const n = others.reduce((a, [, k]) => a + k, 0);
    const which = others.map(([state, k]) => `${k} ${state}`).join(", ");
    out.write(`${plural(n, "socket")} opening or closing (${which}): not counted as connections\n`);
  }
  if (sum.worstDeadPeer === Number.POSITIVE_INFINITY) {
    out.write(
      `${paint(out, "red", "a dead peer is never noticed")} on ${plural(sum.keepaliveOff, "connection")} without keepalive\n`,
    );
  } else if (sum.worstDeadPeer !== null) {
    out.write(`a dead peer is noticed after at most ${formatSeconds(sum.worstDeadPeer)}\n`);
  }
  // A TIME-WAIT socket has no owner and no options: it can never be read exactly.
  writeExactHint(r, sum.total - sum.exact - (sum.states.get("TIME-WAIT") ?? 0), out);
}

/** The listeners' keepalive: what the connections they accept start with. */
function listeningText(sum: Summary): string {
  const unknown = sum.listening - sum.listeningOn - sum.listeningOff;
  return (
    `${plural(sum.listening, "listening socket")}: ${sum.listeningOn} with keepalive, ${sum.listeningOff} without` +
    `${unknown ? `, ${unknown} unknown` : ""}; accepted connections inherit their listener's`
  );
}

/** One line on how to get exact answers, when some came from the timer only. */
export function writeExactHint(r: Inspection, inexact: number, out: Out): void {
  if (inexact === 0 || !r.processes) return;
  if (geteuid?.() !== 0 && (r.unreadablePids.length > 0 || r.exactDenied > 0)) {
    out.write(
      paint(
        out,
        "dim",
        `${plural(inexact, "socket")} marked '?': only the kernel's timer was visible; run as root (or give tcpka CAP_SYS_PTRACE) for exact settings\n`,
      ),
    );
  } else if (r.exactDenied > 0) {
    out.write(
      paint(
        out,
        "dim",
        `${plural(r.exactDenied, "socket")} could not be read (EPERM); their keepalive is a timer hint\n`,
      ),
    );
  }
}
