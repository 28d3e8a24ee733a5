/**
 * The whole inspection behind `tcpka ls` and `tcpka`: list sockets, find their owners, read their exact
 * keepalive settings where this user may, and fall back to the kernel's timer as a hint where it may not.
 */
import { DEFAULT_FILTER, type SocketFilter, socketMatcher } from "../filter.js";
import { deadPeerAfter, type EffectiveKeepAlive, type SystemDefaults } from "../settings.js";
import { SysError } from "../sys/libc.js";
import { SocketBorrower } from "../sys/pidfd.js";
import { readKeepAlive } from "./exact.js";
import { findOwners, type SocketOwner } from "./owners.js";
import { listPids, netnsOf } from "./processes.js";
import { listeningPorts, type ReadOptions, readSockets, type TcpSocket } from "./sockets.js";
import { readSystemDefaults } from "./sysctl.js";

export interface Connection {
  socket: TcpSocket;
  owners: SocketOwner[];
  /** "exact": getsockopt on the socket itself; "timer": only the kernel's timer was visible. */
  source: "exact" | "timer";
  /** true/false; null when the timer could not tell (listening, SYN-SENT, a retransmission hiding it). */
  keepalive: boolean | null;
  /** Effective settings, known only when exact. */
  settings: EffectiveKeepAlive | null;
  /** Seconds until a vanished peer is noticed; null when never (keepalive off) or unknown. */
  deadPeerAfter: number | null;
  /** Why the exact answer could not be read (e.g. "EPERM"), when an owner was known. */
  exactError?: string;
}

/** What an inspection learned besides the connections themselves. */
export interface InspectionInfo {
  defaults: SystemDefaults;
  /** Processes whose fds this user may not read: their sockets have no owner and only a timer hint. */
  unreadablePids: number[];
  /** Owners were looked up at all (not with `processes: false`). */
  processes: boolean;
  /** How many sockets had an owner but getsockopt on it was refused (EPERM). */
  exactDenied: number;
}

export interface Inspection extends InspectionInfo {
  connections: Connection[];
}

export interface InspectOptions {
  via?: "netlink" | "proc";
  /** Look up owning processes and read exact settings (default true). */
  processes?: boolean;
}

/**
 * What the timer alone says. The keepalive timer (sk_timer) is armed on every ESTABLISHED or CLOSE-WAIT socket
 * with SO_KEEPALIVE, but /proc and sock_diag show a pending retransmit or zero-window probe timer in its place
 * (inet_sk_diag_fill), and it never runs on LISTEN, SYN-SENT or CLOSE sockets (tcp_keepalive_timer); an orphaned
 * FIN-WAIT-2 socket uses the same timer without keepalive.
 */
export function keepaliveFromTimer(s: TcpSocket): boolean | null {
  if (s.state !== "ESTAB" && s.state !== "CLOSE-WAIT") return null;
  if (s.timer === "keepalive") return true;
  if (s.timer === "off") return false;
  return null;
}

/**
 * The sockets to look at that pass the filter's addresses, ports and rules: this network namespace's; with --pid,
 * those of each target's own namespace (through /proc/PID/net/tcp for another one), so that `tcpka ls --pid`
 * works on a container's process.
 */
function socketsOf(filter: SocketFilter, opts: InspectOptions): TcpSocket[] {
  const matches = socketMatcher(filter);
  const readMatching = (from: ReadOptions) => {
    const list = readSockets(from);
    if (!matches) return list;
    let ports: ReadonlySet<number> | undefined;
    const listening = () => (ports ??= listeningPorts(from));
    return list.filter((s) => matches(s, listening));
  };
  const read = { states: filter.states, families: filter.families, via: opts.via };
  if (!filter.pids.length) return readMatching(read);
  const own = netnsOf(process.pid);
  const namespaces = new Map<string, number>();
  for (const pid of filter.pids) {
    const ns = netnsOf(pid);
    if (ns !== undefined && !namespaces.has(ns)) namespaces.set(ns, pid);
  }
  const out: TcpSocket[] = [];
  for (const [ns, pid] of namespaces) out.push(...readMatching(ns === own ? read : { ...read, netnsOf: pid }));
  return out;
}

/** Inspect and collect every matching connection. */
export function inspect(filter: SocketFilter = DEFAULT_FILTER, opts: InspectOptions = {}): Inspection {
  const connections: Connection[] = [];
  const info = inspectEach(filter, opts, (c) => connections.push(c));
  return { ...info, connections };
}

/**
 * Inspect and hand each matching connection to `each` as soon as it is known, keeping none: what a streaming
 * consumer (ls --json) needs to stay small at 100,000 sockets.
 */
export function inspectEach(filter: SocketFilter, opts: InspectOptions, each: (c: Connection) => void): InspectionInfo {
  const defaults = readSystemDefaults();
  const sockets = socketsOf(filter, opts);
  const processes = opts.processes ?? true;
  const wantOwners = processes || filter.pids.length > 0 || filter.comms.length > 0;

  let owners = new Map<number, SocketOwner[]>();
  let unreadablePids: number[] = [];
  if (wantOwners) {
    const inodes = new Set<number>();
    for (const s of sockets) if (s.inode) inodes.add(s.inode);
    const scan = findOwners(inodes, filter.pids.length ? filter.pids : listPids());
    owners = scan.owners;
    unreadablePids = scan.unreadable;
  }

  const comms = new Set(filter.comms);
  const borrower = new SocketBorrower();
  const none: SocketOwner[] = [];
  let exactDenied = 0;
  try {
    for (const socket of sockets) {
      let own = owners.get(socket.inode) ?? none;
      if (filter.pids.length) {
        own = own.filter((o) => filter.pids.includes(o.pid));
        if (own.length === 0) continue;
      }
      if (comms.size && !own.some((o) => comms.has(o.comm))) continue;

      const c: Connection = {
        socket,
        owners: own,
        source: "timer",
        keepalive: keepaliveFromTimer(socket),
        settings: null,
        deadPeerAfter: null,
      };
      if (processes) {
        for (const o of own) {
          try {
            c.settings = borrower.with(o.pid, o.fd, socket.inode, readKeepAlive);
            c.source = "exact";
            c.keepalive = c.settings.keepalive;
            c.deadPeerAfter = deadPeerAfter(c.settings);
            delete c.exactError;
            break;
          } catch (e) {
            if (!(e instanceof SysError)) throw e;
            c.exactError = e.errnoName;
          }
        }
        if (c.exactError === "EPERM") exactDenied++;
      }
      if (filter.noKeepalive && c.keepalive !== false) continue;
      each(c);
    }
  } finally {
    borrower.close();
  }
  return { defaults, unreadablePids, processes, exactDenied };
}
