/**
 * What an inspection adds up to, for `tcpka ls`'s footer and JSON summary and for `tcpka`: the sockets by state,
 * the established connections with and without keepalive, who owns the ones without, how soon the ones with it
 * notice a dead peer, and which of the processes asked for could not be read.
 */
import type { SocketFilter } from "../filter.js";
import type { TcpStateName } from "../kernel/states.js";
import type { EffectiveKeepAlive, SystemDefaults } from "../settings.js";
import type { Connection, InspectionInfo } from "./connections.js";
import { commOf } from "./processes.js";

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
  /**
   * Owners of the established connections without keepalive: pid -> count (-1: owner not visible), in the
   * order first seen; offOwners() names them. Counted by number: a name built per connection costs more than
   * the rest of the count at 100,000 connections.
   */
  offByPid: Map<number, number>;
  /** The name of each pid in offByPid. */
  offComms: Map<number, string>;
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
    offByPid: new Map(),
    offComms: new Map(),
    worstDeadPeer: null,
    exact: 0,
  };
}

/** The owners of the connections without keepalive as "comm[pid]" (or "owner not visible") -> count. */
export function offOwners(sum: Summary): Map<string, number> {
  const out = new Map<string, number>();
  for (const [pid, n] of sum.offByPid) {
    out.set(pid < 0 ? "owner not visible" : `${sum.offComms.get(pid)}[${pid}]`, n);
  }
  return out;
}

/** Count one connection into a summary: a summary can be built while the connections stream by. */
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
    const pid = o ? o.pid : -1;
    const n = sum.offByPid.get(pid);
    if (n === undefined) {
      sum.offByPid.set(pid, 1);
      if (o) sum.offComms.set(pid, o.comm);
    } else sum.offByPid.set(pid, n + 1);
  } else if (c.deadPeerAfter !== null) {
    sum.worstDeadPeer = Math.max(sum.worstDeadPeer ?? 0, c.deadPeerAfter);
  }
}

export function summarize(conns: readonly Connection[]): Summary {
  const sum = emptySummary();
  for (const c of conns) addToSummary(sum, c);
  return sum;
}

/** A process and the connections without keepalive that it owns (no pid or comm: owner not visible). */
export interface OwnerWithoutKeepalive {
  pid?: number;
  comm?: string;
  connections: Connection[];
}

/**
 * The connections without keepalive, by owning process (the first owner of each), the process with the most
 * first; the connections whose owner is not visible together, as one.
 */
export function ownersWithoutKeepalive(conns: readonly Connection[]): OwnerWithoutKeepalive[] {
  const groups = new Map<number | undefined, OwnerWithoutKeepalive>();
  for (const c of conns) {
    if (c.keepalive !== false) continue;
    const o = c.owners[0];
    let g = groups.get(o?.pid);
    if (!g) {
      g = o ? { pid: o.pid, comm: o.comm, connections: [] } : { connections: [] };
      groups.set(o?.pid, g);
    }
    g.connections.push(c);
  }
  return [...groups.values()].sort((a, b) => b.connections.length - a.connections.length);
}

/** How soon the connections with keepalive on notice a dead peer, and whose settings make it so. */
export interface Detection {
  /** How many have settings that could be read; `unreadable` have not. */
  known: number;
  unreadable: number;
  /** Seconds until the first and the last of the known ones notices (Infinity and 0 when none is known). */
  fastest: number;
  slowest: number;
  /**
   * The known ones whose settings are not the namespace's defaults: the programs' own. A socket whose values
   * equal the defaults is counted as using them: getsockopt returns the effective value (keepalive_time_when()
   * in include/net/tcp.h), so the two cannot be told apart.
   */
  own: Connection[];
}

export function detection(conns: readonly Connection[], d: SystemDefaults): Detection {
  const on = conns.filter((c) => c.keepalive === true);
  const known = on.filter((c) => c.settings !== null && c.deadPeerAfter !== null);
  let fastest = Number.POSITIVE_INFINITY;
  let slowest = 0;
  for (const c of known) {
    fastest = Math.min(fastest, c.deadPeerAfter as number);
    slowest = Math.max(slowest, c.deadPeerAfter as number);
  }
  const own = known.filter((c) => !usesDefaults(c.settings as EffectiveKeepAlive, d));
  return { known: known.length, unreadable: on.length - known.length, fastest, slowest, own };
}

function usesDefaults(e: EffectiveKeepAlive, d: SystemDefaults): boolean {
  return e.idle === d.idle && e.interval === d.interval && e.count === d.count && e.userTimeout === 0;
}

/**
 * The processes named by a filter's pids or comms whose fds this user may not read (/proc/PID/comm is
 * world-readable): what was asked for by process could not all be read, which is not "no socket matches".
 */
export function deniedTargets(filter: SocketFilter, info: InspectionInfo): number[] {
  if (!filter.pids.length && !filter.comms.length) return [];
  const comms = new Set(filter.comms);
  return info.unreadablePids.filter(
    (p) => (!filter.pids.length || filter.pids.includes(p)) && (!comms.size || comms.has(commOf(p))),
  );
}
