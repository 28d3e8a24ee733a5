/**
 * The whole inspection behind `tcpka ls` and `tcpka`: list sockets, find their owners, read their exact
 * keepalive settings where this user may, and fall back to the kernel's timer as a hint where it may not.
 */
import { closeSync, constants, openSync } from "node:fs";
import { DEFAULT_FILTER, type SocketFilter, socketMatcher } from "../filter.js";
import { TCP_STATES } from "../kernel/states.js";
import { deadPeerAfter, type EffectiveKeepAlive, SharedSettings, type SystemDefaults } from "../settings.js";
import { SysError } from "../sys/libc.js";
import { SocketBorrower } from "../sys/pidfd.js";
import { ReadAhead } from "../sys/read-ahead.js";
import { readKeepAliveInto } from "./exact.js";
import {
  HeldSockets,
  HOLD_WITHOUT_OWNERS,
  type KernelSocket,
  KernelSockets,
  type OwnersMap,
  ownersMap,
  type TcpWalk,
} from "./kernel-sockets.js";
import { type NetNamespace, networkNamespaces } from "./namespaces.js";
import { sockstat, tcpCounts } from "./netstat.js";
import { findOwners, type OwnerLookup, type OwnerScan, OwnerTable, type SocketOwner, TcpOwnerWalk } from "./owners.js";
import { listPids } from "./processes.js";
import { listeningPorts, type ReadOptions, readSockets, type TcpSocket } from "./sockets.js";
import { readSystemDefaults } from "./sysctl.js";
import { type Workload, Workloads } from "./workloads.js";

export interface Connection {
  socket: TcpSocket;
  /** The socket's network namespace (inode number); its cgroup v2 id where the kernel pass read it. */
  netns?: number;
  cgroup?: number;
  /** The container, pod or systemd unit it belongs to; null when none (or none that tcpka can see). */
  workload?: Workload | null;
  owners: SocketOwner[];
  /** "exact": the socket's own settings (getsockopt, or the kernel pass); "timer": only the kernel's timer. */
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
  /** How the sockets were read: "bpf" (the kernel pass) or sock_diag ("netlink", or "proc" when asked). */
  via: "bpf" | "netlink" | "proc";
  /** The namespaces read, by inode number (with tcpka's own, and the `ip netns` names of those that have one). */
  namespaces: Map<number, NetNamespace>;
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
  /**
   * How sockets are read. "bpf": the kernel pass (kernel-sockets.ts); "netlink" or "proc": sock_diag or
   * /proc/net/tcp, then getsockopt on each owned socket. Default: the kernel pass where it loads, else netlink.
   */
  via?: "bpf" | "netlink" | "proc";
  /** Look up owning processes and read exact settings (default true). */
  processes?: boolean;
  /** Every network namespace of the host, not only tcpka's own (or the --pid targets'). */
  allNetns?: boolean;
  /**
   * Only the sockets of this container (its id, an id prefix of 4 characters or more, or its name), this pod
   * ("NAMESPACE/NAME"), this systemd unit ("nginx.service"; "nginx" means nginx.service). Each reads every
   * network namespace: a container or pod has its own.
   */
  container?: string;
  pod?: string;
  unit?: string;
  /**
   * The callback keeps nothing of a connection it is handed, nor its socket or owners (ls writes each one out
   * as it comes): the kernel pass then hands out the same objects each time, refilled, instead of four new
   * ones per socket.
   */
  transient?: boolean;
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
 * The sockets to look at that pass the filter's addresses, ports and rules, by namespace: tcpka's own, or each
 * one asked for (--pid, --all-netns) through /proc/PID/net/tcp of a process in it (sock_diag only answers for
 * the namespace of the socket it is asked on). A namespace without any process (`ip netns` only) has no such
 * file: the kernel pass reads those.
 */
function socketsOf(
  filter: SocketFilter,
  namespaces: readonly NetNamespace[],
  via: "netlink" | "proc" | undefined,
): { netns: number; sockets: TcpSocket[] }[] {
  const matches = socketMatcher(filter);
  const readMatching = (from: ReadOptions) => {
    const list = readSockets(from);
    if (!matches) return list;
    let ports: ReadonlySet<number> | undefined;
    const listening = () => (ports ??= listeningPorts(from));
    return list.filter((s) => matches(s, listening));
  };
  const read = { states: filter.states, families: filter.families, via };
  const out: { netns: number; sockets: TcpSocket[] }[] = [];
  for (const ns of namespaces) {
    if (ns.own) out.push({ netns: ns.inum, sockets: readMatching(read) });
    else if (ns.pid !== undefined) out.push({ netns: ns.inum, sockets: readMatching({ ...read, netnsOf: ns.pid }) });
  }
  return out;
}

function* eachSocket(
  groups: { netns: number; sockets: TcpSocket[] }[],
): Generator<{ netns: number; socket: TcpSocket }> {
  for (const g of groups) for (const socket of g.sockets) yield { netns: g.netns, socket };
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
  const namespaces = new Map(namespacesFor(filter, opts).map((ns) => [ns.inum, ns]));
  const list = [...namespaces.values()];
  const kernel = opts.via === "bpf" || (opts.via === undefined && KernelSockets.possible());
  // Started before anything else, so that it is up when the first walk is read (read-ahead.ts).
  const ahead = kernel && ReadAhead.worthIt(list.length) ? ReadAhead.start() : undefined;
  try {
    const who = new WorkloadLookup(Workloads.load());
    const wanted = workloadMatcher(opts);
    const found = (c: Connection): void => {
      c.workload = who.of(c);
      if (!wanted || wanted(c.workload)) each(c);
    };
    if (kernel) {
      const info = inspectKernel(filter, opts, list, found, ahead);
      if (info) return { defaults, namespaces, via: "bpf", ...info };
    }
    const via = opts.via === "proc" ? "proc" : "netlink";
    return { defaults, namespaces, via, ...inspectSyscalls(filter, opts, list, found) };
  } finally {
    ahead?.stop();
  }
}

type Found = Omit<InspectionInfo, "defaults" | "namespaces" | "via">;

/** Who a socket belongs to: by its cgroup where the kernel pass read it, else its first owner's, else its namespace's. */
class WorkloadLookup {
  private readonly byPid = new Map<number, Workload | null>();

  constructor(private readonly w: Workloads) {}

  of(c: Connection): Workload | null {
    // The cgroup the kernel charged the socket to is the answer where it is known; then only a pod's or
    // container's namespace can still say more (a socket in one made by a process outside its cgroup).
    if (c.cgroup) return this.w.ofCgroup(c.cgroup) ?? (c.netns === undefined ? null : this.w.ofNetns(c.netns));
    const pid = c.owners[0]?.pid;
    if (pid !== undefined) {
      let w = this.byPid.get(pid);
      if (w === undefined) {
        w = this.w.ofPid(pid);
        this.byPid.set(pid, w);
      }
      if (w) return w;
    }
    return c.netns === undefined ? null : this.w.ofNetns(c.netns);
  }
}

/** The filter of --container, --pod and --unit; null when none is given. */
export function workloadMatcher(
  opts: Pick<InspectOptions, "container" | "pod" | "unit">,
): ((w: Workload | null) => boolean) | null {
  const { container, pod, unit } = opts;
  if (container === undefined && pod === undefined && unit === undefined) return null;
  const unitName = unit === undefined || /\.[a-z]+$/.test(unit) ? unit : `${unit}.service`;
  return (w) => {
    const k = w?.container;
    if (container !== undefined) {
      if (!k) return false;
      const byId = k.id === container || (container.length >= 4 && k.id.startsWith(container));
      if (!byId && k.name !== container) return false;
    }
    if (pod !== undefined && (!k?.pod || `${k.pod.namespace}/${k.pod.name}` !== pod)) return false;
    return unitName === undefined || w?.unit === unitName;
  };
}

/**
 * The kernel pass: every socket of the namespaces asked for, with its settings, from the TCP iterator; the
 * owners from one walk of every process's files. null when the program cannot load here (and `via` did not
 * insist on it): the caller then takes the system calls.
 */
function inspectKernel(
  filter: SocketFilter,
  opts: InspectOptions,
  namespaces: readonly NetNamespace[],
  each: (c: Connection) => void,
  ahead: ReadAhead | undefined,
): Found | null {
  // Every iterator is made first and handed to the reader thread, which runs the kernel's half of the walks
  // while this thread builds the owner map and the connections. The owners' walk, the longer one in the
  // kernel, is made first: the reader runs it while this thread loads the TCP iterator.
  const opened: { close(): void }[] = [];
  let ks: KernelSockets | undefined;
  try {
    const processes = opts.processes ?? true;
    const wantOwners = processes || filter.pids.length > 0 || filter.comms.length > 0;
    // Each walk of another namespace scans the one established hash that all namespaces share (bpf_iter_tcp
    // filters it by net, seq_sk_match() in net/ipv4/tcp_ipv4.c): 10-14 ms at 100,000 sockets elsewhere, for a
    // pod's handful. The owners' walk visits every socket that a process holds anyway, so it brings the other
    // namespaces' sockets whole (held records); where they are not all of a namespace's hashed sockets
    // (HeldNamespace.complete), that namespace is walked after all. TIME-WAIT sockets (and FIN-WAIT-2 orphans,
    // timewait sockets too) are held by no process: a namespace that has any is walked when the filter wants them.
    const wantTimeWait = (filter.states & ((1 << TCP_STATES.TIME_WAIT) | (1 << TCP_STATES.FIN_WAIT2))) !== 0;
    const toWalk: NetNamespace[] = [];
    const heldNs = new Map<number, { ns: NetNamespace; fd: number }>();
    // No TCP socket that the filter could want (a container without connections, a sandbox): no walk.
    const empty = (ns: NetNamespace): boolean => {
      const n = ns.pid === undefined ? undefined : tcpCounts(ns.pid, ns.inum);
      return n !== undefined && n.inuse === 0 && (n.tw === 0 || !wantTimeWait);
    };
    try {
      for (const ns of namespaces) {
        if (!ns.own && ns.pid !== undefined && !heldNs.has(ns.inum)) {
          try {
            heldNs.set(ns.inum, { ns, fd: openSync(ns.path, constants.O_RDONLY) });
          } catch {
            // its last process exited since: nothing of it to list
          }
          continue;
        }
        toWalk.push(ns);
      }
    } finally {
      for (const { fd } of heldNs.values()) opened.push({ close: () => closeSync(fd) });
    }
    // Without owners (--no-process) the owners' walk is made for the held namespaces alone: worth it from a few.
    if (!wantOwners && heldNs.size < HOLD_WITHOUT_OWNERS) {
      for (const { ns } of heldNs.values()) if (!empty(ns)) toWalk.push(ns);
      heldNs.clear();
    }
    // tcpka's own namespace alone: each socket's first owner is joined to it in the kernel (the owners' map of
    // src/bpf/tcp-sockets.ts), so that this thread builds no table for the sockets one process holds and looks
    // nothing up. The owners' walk must be read to its end before the TCP walk's first read: both go through
    // the one reader in the order queued, and with a single TCP walk neither thread takes one out of turn.
    let joined: OwnersMap | undefined;
    if (wantOwners && heldNs.size === 0 && toWalk.length === 1 && toWalk[0]?.own === true) {
      try {
        const map = ownersMap(sockstat(process.pid)?.inuse ?? 0);
        joined = map;
        opened.push({ close: () => closeSync(map.fd) });
      } catch {
        joined = undefined; // no map here (an old kernel, a memory limit): the owners come as records, as before
      }
    }
    const ownerWalk = wantOwners || heldNs.size > 0 ? TcpOwnerWalk.start(ahead, [...heldNs.keys()], joined) : null;
    if (ownerWalk) opened.push(ownerWalk);
    if (!ownerWalk?.holds) {
      for (const { ns } of heldNs.values()) if (!empty(ns)) toWalk.push(ns);
      heldNs.clear();
    }
    try {
      ks = KernelSockets.open(filter.states, ownerWalk ? joined : undefined);
    } catch (e) {
      if (opts.via === "bpf") throw e;
      return null;
    }
    const walks: { walk: TcpWalk; listening: Set<number> }[] = [];
    for (const ns of toWalk) {
      let fd: number | undefined;
      if (!ns.own) {
        try {
          fd = openSync(ns.path, constants.O_RDONLY);
        } catch {
          continue; // its last process exited since: nothing of it to list
        }
      }
      try {
        const walk = ks.prepare(fd, ahead);
        opened.push(walk);
        walks.push({ walk, listening: new Set() });
      } finally {
        if (fd !== undefined) closeSync(fd);
      }
    }
    const heldSockets = heldNs.size > 0 ? new HeldSockets(heldNs.keys()) : undefined;
    const found = ownerWalk?.finish(heldSockets?.add) ?? null;
    let scan: OwnerScan | null = !wantOwners ? { owners: new Map(), unreadable: [] } : found;
    // Without the task_file iterator (before Linux 5.11) the owners come from /proc, once the inodes are known.
    const later: KernelSocket[] | null = scan ? null : [];
    const matches = socketMatcher(filter);
    const comms = new Set(filter.comms);
    const none: SocketOwner[] = [];
    const transient = opts.transient === true;
    let reused: Connection | undefined;
    const emit = (socket: KernelSocket, owners: SocketOwner[]): void => {
      let own = owners;
      if (filter.pids.length) {
        own = own.filter((o) => filter.pids.includes(o.pid));
        if (own.length === 0) return;
      }
      if (comms.size && !own.some((o) => comms.has(o.comm))) return;
      const e = socket.settings;
      if (filter.noKeepalive && (e ? e.keepalive : keepaliveFromTimer(socket)) !== false) return;
      const source = e ? "exact" : "timer";
      const keepalive = e ? e.keepalive : keepaliveFromTimer(socket);
      const dead = e ? deadPeerAfter(e) : null;
      if (!transient || reused === undefined) {
        const c: Connection = {
          socket,
          owners: own,
          source,
          keepalive,
          settings: e,
          deadPeerAfter: dead,
          netns: socket.netns,
          cgroup: socket.cgroup,
          workload: null,
        };
        if (transient) reused = c;
        each(c);
        return;
      }
      reused.socket = socket;
      reused.owners = own;
      reused.source = source;
      reused.keepalive = keepalive;
      reused.settings = e;
      reused.deadPeerAfter = dead;
      reused.netns = socket.netns;
      reused.cgroup = socket.cgroup;
      reused.workload = null;
      each(reused);
    };
    const table = scan?.owners instanceof OwnerTable ? scan.owners : undefined;
    const held: SocketOwner[] = [];
    const kernel = ks;
    const ownersOf = (inode: number): SocketOwner[] => {
      const first = kernel.ownerPid;
      if (first !== 0 && table)
        return transient
          ? table.getIntoAfter(first, kernel.ownerFd, inode, held)
          : table.getAfter(first, kernel.ownerFd, inode);
      return transient && table ? table.getInto(inode, held) : (scan?.owners.get(inode) ?? none);
    };
    const families = new Set(filter.families);
    for (const { walk, listening } of walks) {
      const ports = () => listening;
      ks.walk(
        (s) => {
          if (!families.has(s.family) || (matches && !matches(s, ports))) return;
          if (later) later.push(s);
          else emit(s, ownersOf(s.inode));
        },
        { listening, reuse: transient && !later },
        walk,
      );
    }
    if (heldSockets && ks) {
      const wantRequests = (filter.states & (1 << TCP_STATES.SYN_RECV)) !== 0;
      for (const [inum, h] of heldSockets.byNetns) {
        const { ns, fd } = heldNs.get(inum) as { ns: NetNamespace; fd: number };
        const listening = new Set<number>();
        const each = (s: KernelSocket) => {
          if (!families.has(s.family) || (matches && !matches(s, () => listening))) return;
          emit(s, ownersOf(s.inode));
        };
        if (h.complete(ns.pid, ns.inum, wantTimeWait) && !(wantRequests && h.requests > 0))
          ks.readHeld(h, each, { listening, reuse: transient });
        else ks.walk(each, { netnsFd: fd, listening, reuse: transient });
      }
    }
    if (later) {
      const inodes = new Set<number>();
      for (const s of later) if (s.inode) inodes.add(s.inode);
      scan = findOwners(inodes, filter.pids.length ? filter.pids : listPids());
      for (const s of later) emit(s, scan.owners.get(s.inode) ?? none);
    }
    return { unreadablePids: scan?.unreadable ?? [], processes, exactDenied: 0 };
  } finally {
    ahead?.stop(); // first: no fd below may be closed while the reader could still read it
    for (const o of opened) o.close();
    ks?.close();
  }
}

/**
 * The namespaces to read: with --all-netns (or --container, --pod, --unit, which may be anywhere) every one,
 * with --pid each target's, else tcpka's own.
 */
function namespacesFor(filter: SocketFilter, opts: InspectOptions): NetNamespace[] {
  if (opts.allNetns || opts.container !== undefined || opts.pod !== undefined || opts.unit !== undefined)
    return networkNamespaces();
  if (filter.pids.length) return networkNamespaces(filter.pids);
  return networkNamespaces([process.pid]);
}

/**
 * sock_diag (or /proc/net/tcp) for the sockets, /proc or the task_file iterator for the owners, and getsockopt
 * on a pidfd_getfd duplicate of each owned socket: what an unprivileged user can do, and the oracle.
 */
function inspectSyscalls(
  filter: SocketFilter,
  opts: InspectOptions,
  namespaces: readonly NetNamespace[],
  each: (c: Connection) => void,
): Found {
  const via = opts.via === "bpf" ? undefined : opts.via;
  const groups = socketsOf(filter, namespaces, via);
  const processes = opts.processes ?? true;
  const wantOwners = processes || filter.pids.length > 0 || filter.comms.length > 0;

  let owners: OwnerLookup = new Map<number, SocketOwner[]>();
  let unreadablePids: number[] = [];
  if (wantOwners) {
    const inodes = new Set<number>();
    for (const g of groups) for (const s of g.sockets) if (s.inode) inodes.add(s.inode);
    const scan = findOwners(inodes, filter.pids.length ? filter.pids : listPids());
    owners = scan.owners;
    unreadablePids = scan.unreadable;
  }

  const comms = new Set(filter.comms);
  const borrower = new SocketBorrower();
  // The five values of one socket, then one shared settings object per combination (SharedSettings).
  const read = new Int32Array(5);
  const shared = new SharedSettings();
  const none: SocketOwner[] = [];
  let exactDenied = 0;
  try {
    for (const { netns, socket } of eachSocket(groups)) {
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
        netns,
      };
      if (processes) {
        for (const o of own) {
          try {
            c.settings = borrower.with(o.pid, o.fd, socket.inode, (fd) => {
              readKeepAliveInto(fd, read, 0);
              return shared.of(
                read[0] === 1,
                read[1] as number,
                read[2] as number,
                read[3] as number,
                read[4] as number,
              );
            });
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
  return { unreadablePids, processes, exactDenied };
}
