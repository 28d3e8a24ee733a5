/**
 * `tcpka ls`: one line per socket, like `ss -tanoe` but about keepalive.
 */

import { hostPrefix } from "../addresses.js";
import { usage } from "../errors.js";
import type { SocketFilter } from "../filter.js";
import { type Connection, type InspectionInfo, type InspectOptions, inspectEach } from "../inspect/connections.js";
import { networkNamespaces } from "../inspect/namespaces.js";
import { sockstat } from "../inspect/netstat.js";
import { permissionError } from "../inspect/processes.js";
import { addToSummary, deniedTargets, emptySummary, offOwners, type Summary } from "../inspect/summary.js";
import { readSystemDefaults } from "../inspect/sysctl.js";
import { formatMs, formatSeconds } from "../settings.js";
import { bool, FILTER_HELP, FILTER_OPTIONS, filterFrom, parse, str } from "../ui/args.js";
import { whereText, writeConnectionJson, writeExactHint } from "../ui/connections.js";
import { asciiBytes, type Out, ownerPrefix, paint, plural, printable, Table, visibleWidth } from "../ui/format.js";

export const LS_HELP = `Usage: tcpka ls [filters] [-w | --json]

List TCP sockets with their keepalive state: whether it is on, the real idle/interval/count and user timeout
(read from the socket itself), when the next probe goes out, and how long a peer that vanished would go
unnoticed. Run as root (or as the owner of the processes) for exact answers; otherwise the kernel's keepalive
timer is shown as a hint, marked with '?'.

${FILTER_HELP}

Where:
      --all-netns        the whole host: every network namespace (every container's, every pod's, every
                         \`ip netns\`), not only tcpka's own; each row says where it is: its Kubernetes pod,
                         its container (runtime, short id, name), its systemd unit, or its namespace
      --container ID     only this container's sockets (its id, 4 or more leading characters of it, or its
                         name), in whichever namespace
      --pod NS/NAME      only this Kubernetes pod's sockets (from the CRI runtime's annotations)
      --unit NAME        only this systemd unit's sockets (nginx means nginx.service)

Output:
  -w, --wide             every column: the next probe, the probes sent, idle/interval/count and the user
                         timeout apart (the default fits 120 columns)
      --json             one JSON object: {"defaults", "connections": [...], "summary"}; durations in
                         fields named _s (seconds) or _ms (milliseconds)
      --no-process       do not look up owning processes (faster; without root, keepalive then comes from the
                         timer only)
      --via SOURCE       how sockets are read: bpf (root, Linux 5.9 with BTF: one kernel pass reads every
                         socket's settings, owned or not), netlink (NETLINK_SOCK_DIAG, then getsockopt on each
                         socket a process holds) or proc (/proc/net/tcp{,6} instead of sock_diag). Default: bpf
                         where it loads, else netlink

Examples:
  sudo tcpka ls                        established connections and their keepalive
  sudo tcpka ls --no-keepalive         only the ones at risk
  tcpka ls --dport 5432 --json         PostgreSQL connections, for a script
  sudo tcpka ls -l                     listening sockets: accepted connections inherit their keepalive
  sudo tcpka ls --only :5432           what tcpka run, enable or enforce --only :5432 would touch
  sudo tcpka ls --all-netns            the whole host: every container's and pod's connections too
  sudo tcpka ls --pod shop/cart-7d4f9 --no-keepalive   one Kubernetes pod's connections at risk
`;

const LS_OPTIONS = {
  ...FILTER_OPTIONS,
  json: { type: "boolean" },
  wide: { type: "boolean", short: "w" },
  "no-process": { type: "boolean" },
  "all-netns": { type: "boolean" },
  container: { type: "string" },
  pod: { type: "string" },
  unit: { type: "string" },
  via: { type: "string" },
} as const;

export function runLs(argv: readonly string[], out: Out): number {
  const { values } = parse("ls", argv, LS_OPTIONS);
  if (bool(values, "help")) {
    out.write(LS_HELP);
    return 0;
  }
  const via = str(values, "via");
  if (via !== undefined && via !== "bpf" && via !== "netlink" && via !== "proc") {
    throw usage(`--via ${via}: use bpf, netlink or proc`);
  }
  const filter = filterFrom(values);
  const pod = str(values, "pod");
  if (pod !== undefined && !/^[^/]+\/[^/]+$/.test(pod))
    throw usage(`--pod ${pod}: use NAMESPACE/NAME, e.g. --pod default/web-0`);
  const opts: InspectOptions = {
    via,
    processes: !bool(values, "no-process"),
    allNetns: bool(values, "all-netns"),
    container: str(values, "container"),
    pod,
    unit: str(values, "unit"),
    transient: true, // both outputs keep nothing of a connection but its bytes
  };
  const everywhere = opts.allNetns || opts.container !== undefined || pod !== undefined || opts.unit !== undefined;
  // `tcpka ls` as it is, no filter: an empty answer says what the default left out.
  const plain = argv.every((a) => a === "-w" || a === "--wide" || a === "--no-process");
  let denied: number[];
  if (bool(values, "json")) denied = deniedTargets(filter, writeJson(filter, opts, out));
  else denied = writeTable(filter, opts, out, bool(values, "wide"), everywhere, plain);
  // What was asked for by process could not all be read: not "no TCP sockets match", and not exit 0.
  if (denied.length) throw permissionError(denied);
  return 0;
}

const NEWLINE = asciiBytes("\n");
const COMMA_NEWLINE = asciiBytes(",\n");

/** Stream the JSON: each connection is written as soon as it is known and not kept. */
function writeJson(filter: SocketFilter, opts: InspectOptions, out: Out): InspectionInfo {
  const d = readSystemDefaults();
  out.write(`{"defaults":{"idle_s":${d.idle},"interval_s":${d.interval},"count":${d.count}},\n"connections":[`);
  const sum = emptySummary();
  const info = inspectEach(filter, opts, (c) => {
    out.bytes(sum.total === 0 ? NEWLINE : COMMA_NEWLINE);
    writeConnectionJson(out, c);
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
    without_keepalive: [...offOwners(sum)].map(([process, count]) => ({ process, count })),
    unreadable_pids: info.unreadablePids.length,
    via: info.via,
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

/** A column: its header, and how a connection's cell goes into the table's row (Table.put…, then endCell). */
type Column = readonly [header: string, cell: (c: Connection, t: Table, out: Out) => void];

/** A column whose cell is a text (the rarer and wide columns). */
const textColumn = (header: string, text: (c: Connection, out: Out) => string): Column =>
  [
    header,
    (c, t, out) => {
      t.putText(text(c, out));
      t.endCell();
    },
  ] as const;

/**
 * One-entry caches in front of the maps below: consecutive rows mostly share a state, a local address, a peer
 * address, a process and a settings object, and at 100,000 rows a map lookup for each cost more than the cell.
 */
let lastState: string | undefined;
let lastStateBytes: Uint8Array = new Uint8Array(0);

const STATE: Column = [
  "STATE",
  (c, t) => {
    const state = c.socket.state;
    if (state !== lastState) {
      lastState = state;
      lastStateBytes = asciiBytes(state);
    }
    t.put(lastStateBytes);
    t.endCell();
  },
];

/**
 * "192.0.2.7:" or "[2001:db8::1]:" of an address, encoded once (a host has few local addresses and, on a busy
 * server, many connections per peer), then the port's digits: an address cell costs no string. Bounded.
 */
const addressPieces = new Map<string, Uint8Array>();
const STAR = asciiBytes("*");

let lastAddress: string | undefined;
let lastAddressPiece: Uint8Array = new Uint8Array(0);

function putHostPort(t: Table, address: string, port: number): void {
  let piece = lastAddressPiece;
  if (address !== lastAddress) {
    let known = addressPieces.get(address);
    if (known === undefined) {
      if (addressPieces.size >= 1 << 16) addressPieces.clear();
      known = Buffer.from(hostPrefix(address), "latin1");
      addressPieces.set(address, known);
    }
    lastAddress = address;
    lastAddressPiece = piece = known;
  }
  t.put(piece);
  if (port === 0)
    t.put(STAR); // a listener's peer, as ss prints it (hostPort)
  else t.putNumber(port);
  t.endCell();
}

const LOCAL: Column = ["LOCAL", (c, t) => putHostPort(t, c.socket.localAddress, c.socket.localPort)];
const PEER: Column = ["PEER", (c, t) => putHostPort(t, c.socket.peerAddress, c.socket.peerPort)];
const DEAD_PEER = textColumn("DEAD PEER AFTER", deadPeerCell);

/** "java[2203] fd " of a process, as UTF-8 with its width: one piece per process, not per socket. Bounded. */
const ownerPieces = new Map<number, { comm: string; bytes: Uint8Array; width: number }>();
const NO_OWNER = asciiBytes("-");
let lastOwner: { comm: string; bytes: Uint8Array; width: number } | undefined;
let lastOwnerPid = -1;
const PLUS = asciiBytes(" +");

const PROCESS: Column = [
  "PROCESS",
  (c, t) => {
    const first = c.owners[0];
    if (!first) t.put(NO_OWNER);
    else {
      let p = lastOwner;
      if (p === undefined || first.pid !== lastOwnerPid || p.comm !== first.comm) {
        p = ownerPieces.get(first.pid);
        if (p === undefined || p.comm !== first.comm) {
          if (ownerPieces.size >= 1 << 16) ownerPieces.clear();
          const text = ownerPrefix(first.comm, first.pid);
          p = { comm: first.comm, bytes: Buffer.from(text), width: text.length };
          ownerPieces.set(first.pid, p);
        }
        lastOwner = p;
        lastOwnerPid = first.pid;
      }
      t.put(p.bytes, p.width);
      t.putNumber(first.fd);
      if (c.owners.length > 1) {
        t.put(PLUS);
        t.putNumber(c.owners.length - 1);
      }
    }
    t.endCell();
  },
];

/** Where keepalive is on, its settings as the socket has them. */
const on = (c: Connection) => (c.keepalive === true ? c.settings : null);

/** A cell made once: its bytes (with colour escapes if any) and the columns it takes. */
interface Piece {
  bytes: Uint8Array;
  width: number;
}

function piece(text: string): Piece {
  return { bytes: Buffer.from(text), width: visibleWidth(text) };
}

/**
 * The KEEPALIVE and DEAD PEER AFTER cells of an exact connection (not a listener), by settings object: the
 * kernel pass shares one object among the sockets with the same settings, so each pair is made once (once
 * painted, once not).
 */
const settingsCells = [new WeakMap<object, readonly [Piece, Piece]>(), new WeakMap<object, readonly [Piece, Piece]>()];

let lastSettings: object | undefined;
let lastColor = false;
let lastCells: readonly [Piece, Piece] | undefined;

function exactCells(c: Connection, out: Out): readonly [Piece, Piece] | undefined {
  const e = c.settings;
  // A listener without keepalive shows "-", a connection "never": the cached cells are a connection's.
  if (!e || c.source !== "exact" || c.socket.state === "LISTEN") return undefined;
  if (e === lastSettings && out.color === lastColor) return lastCells;
  const cache = settingsCells[out.color ? 1 : 0] as WeakMap<object, readonly [Piece, Piece]>;
  let cells = cache.get(e);
  if (cells === undefined) {
    cells = [
      piece(keepaliveCell(c, out) + (e.keepalive ? ` ${e.idle}s/${e.interval}s/${e.count}` : "")),
      piece(deadPeerCell(c, out)),
    ];
    cache.set(e, cells);
  }
  lastSettings = e;
  lastColor = out.color;
  lastCells = cells;
  return cells;
}

const KEEPALIVE: Column = [
  "KEEPALIVE",
  (c, t, out) => {
    const cells = exactCells(c, out);
    if (cells) t.put(cells[0].bytes, cells[0].width);
    else {
      const e = c.settings;
      t.putText(
        e && c.source === "exact"
          ? keepaliveCell(c, out) + (e.keepalive ? ` ${e.idle}s/${e.interval}s/${e.count}` : "")
          : keepaliveCell(c, out),
      );
    }
    t.endCell();
  },
];

const DEAD_PEER_SHARED: Column = [
  "DEAD PEER AFTER",
  (c, t, out) => {
    const cells = exactCells(c, out);
    if (cells) t.put(cells[1].bytes, cells[1].width);
    else t.putText(deadPeerCell(c, out));
    t.endCell();
  },
];

/**
 * The default columns fit an IPv4 row in 120 columns, with a process name of 15 characters and a 7-digit pid:
 * keepalive and its settings share a column. --wide shows each setting, the timer and the user timeout apart.
 */
const COLUMNS: readonly Column[] = [STATE, LOCAL, PEER, KEEPALIVE, DEAD_PEER_SHARED, PROCESS];
/** The default columns' cells, for writeTable's row of direct calls. */
const [STATE_CELL, LOCAL_CELL, PEER_CELL, KEEPALIVE_CELL, DEAD_PEER_CELL, PROCESS_CELL] = COLUMNS.map(
  ([, cell]) => cell,
) as [Column[1], Column[1], Column[1], Column[1], Column[1], Column[1]];

const WIDE_COLUMNS: readonly Column[] = [
  STATE,
  LOCAL,
  PEER,
  textColumn("KEEPALIVE", keepaliveCell),
  textColumn("NEXT PROBE", nextProbeCell),
  textColumn("PROBES", (c) =>
    c.keepalive === true && c.socket.timer === "keepalive" ? String(c.socket.timerCount) : "-",
  ),
  textColumn("IDLE/INTVL/CNT", (c) => {
    const e = on(c);
    return e ? `${e.idle}/${e.interval}/${e.count}` : "-";
  }),
  textColumn("USER TIMEOUT", (c) => {
    const ut = on(c)?.userTimeout;
    return ut ? formatMs(ut) : "-";
  }),
  DEAD_PEER,
  PROCESS,
];

/**
 * The table and its footer. Each row's cells are made as its connection streams by, and only the cells are
 * kept until the widths are known: at 100,000 sockets the connections themselves would double the memory.
 * Returns the targets that could not be read, which the footer says instead of "no match".
 */
function writeTable(
  filter: SocketFilter,
  opts: InspectOptions,
  out: Out,
  wide: boolean,
  where: boolean,
  plain: boolean,
): number[] {
  // With every namespace, each row says where it is: its pod, container, unit or namespace.
  const namespaces = where ? new Map(networkNamespaces().map((ns) => [ns.inum, ns])) : new Map();
  const whereColumn = textColumn("WHERE", (c) => whereText(c, namespaces));
  const columns = where
    ? [...(wide ? WIDE_COLUMNS : COLUMNS).slice(0, -1), whereColumn, PROCESS]
    : wide
      ? WIDE_COLUMNS
      : COLUMNS;
  // Sized for tcpka's own namespace's sockets, where that is all it lists; the buffers grow beyond if need be.
  const counted = where ? undefined : sockstat(process.pid);
  const rows = new Table(
    columns.map(([header]) => header),
    out.color,
    counted ? counted.inuse + counted.tw : 0,
  );
  const sum = emptySummary();
  // The default columns called one by one, each call site with one callee (inlined); the others through the list.
  const cells =
    columns === COLUMNS
      ? (c: Connection) => {
          STATE_CELL(c, rows, out);
          LOCAL_CELL(c, rows, out);
          PEER_CELL(c, rows, out);
          KEEPALIVE_CELL(c, rows, out);
          DEAD_PEER_CELL(c, rows, out);
          PROCESS_CELL(c, rows, out);
        }
      : (c: Connection) => {
          for (let i = 0; i < columns.length; i++) (columns[i] as Column)[1](c, rows, out);
        };
  const info = inspectEach(filter, opts, (c) => {
    cells(c);
    rows.endRow();
    addToSummary(sum, c);
  });
  const denied = deniedTargets(filter, info);
  if (rows.size) rows.write(out);
  writeFooter(info, sum, out, denied.length > 0, plain);
  return denied;
}

function writeFooter(r: InspectionInfo, sum: Summary, out: Out, denied: boolean, plain: boolean): void {
  if (sum.total === 0) {
    if (!denied) out.write(plain ? `${notEstablishedText()}\n` : "no TCP sockets match\n");
    return;
  }
  if (sum.established) {
    let line = `${plural(sum.established, "connection")}: ${sum.keepaliveOn} with keepalive, ${sum.keepaliveOff} without`;
    const owners = [...offOwners(sum).keys()];
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

/**
 * What a plain `tcpka ls` that found no connection says: that there is none, and how many TCP sockets the default
 * (established only) left out, as this namespace's sockstat counts them (hashed sockets: listeners, connections
 * opening or closing; and TIME-WAIT), so that an empty table is not taken for "no TCP here at all".
 */
function notEstablishedText(): string {
  const n = sockstat(process.pid); // undefined where it cannot be read: say only what was found
  const others = n ? n.inuse + n.tw : 0;
  if (others === 0) return "no established TCP connections";
  const them = others === 1 ? "it" : "them";
  return `no established TCP connections; ${plural(others, "other TCP socket")} (listening, opening or closing): tcpka ls -a lists ${them}`;
}

/** The listeners' keepalive: what the connections they accept start with. */
function listeningText(sum: Summary): string {
  const unknown = sum.listening - sum.listeningOn - sum.listeningOff;
  return (
    `${plural(sum.listening, "listening socket")}: ${sum.listeningOn} with keepalive, ${sum.listeningOff} without` +
    `${unknown ? `, ${unknown} unknown` : ""}; accepted connections inherit their listener's`
  );
}
