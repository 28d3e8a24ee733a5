/**
 * What one scrape counts over every network namespace: the established connections by keepalive state and
 * owner, by service port, their dead-peer detection times, the listening sockets, and each namespace's
 * keepalive probe and time-out counters (TcpExtTCPKeepAlive, TcpExtTCPAbortOnTimeout). Counted in the kernel
 * where it can (inspect/socket-counts.ts: a few hundred map entries instead of a record per socket), else from
 * one pass of the inventory (inspect/connections.ts); both give the same snapshot. Owner labels are folded so
 * that the number of series stays bounded: see foldOwners.
 */
import { DEFAULT_FILTER, type SocketFilter } from "../filter.js";
import { type Connection, inspectEach } from "../inspect/connections.js";
import { type NetNamespace, networkNamespaces } from "../inspect/namespaces.js";
import { tcpExt } from "../inspect/netstat.js";
import { commOf } from "../inspect/processes.js";
import type { SocketCounter } from "../inspect/socket-counts.js";
import { type Workload, Workloads } from "../inspect/workloads.js";
import { stateMask } from "../kernel/states.js";
import { deadPeerAfter } from "../settings.js";

/** The owner labels a scrape may carry; which ones is the operator's choice (--labels). */
export const OWNER_LABELS = ["process", "container", "pod_namespace", "pod", "unit"] as const;
export type OwnerLabel = (typeof OWNER_LABELS)[number];
export type KeepaliveState = "on" | "off" | "unknown";

/**
 * Bucket bounds (seconds) of the detection-time histogram: a minute or two, then the idle timeouts of the
 * paths that bite (presets.ts: Azure LB 4 min, AWS NAT/NLB 350 s, GCP firewall 10 min, IPVS 15 min, GCP NAT
 * 20 min), an hour, and the kernel's default 2 h 11 min 15 s (7200 + 9 × 75 s).
 */
export const DETECTION_BOUNDS = [30, 60, 120, 240, 350, 600, 900, 1200, 3600, 7875] as const;

export interface SnapshotOptions {
  labels: readonly OwnerLabel[];
  /** the most owner label sets of tcpka_connections; the smallest beyond are summed into one "other" set */
  maxSeries: number;
  /** the most service ports named; the rest are summed as port "other" (0: no port series) */
  ports: number;
}

export interface OwnerSeries {
  labels: Record<string, string>;
  state: KeepaliveState;
  value: number;
}

export interface NamespaceCounters {
  netns: string;
  labels: Record<string, string>;
  probes: number;
  timedOut: number;
}

export interface Snapshot {
  /** established connections, by owner label set and keepalive state (already folded) */
  connections: OwnerSeries[];
  /** how many owner label sets were folded into "other" */
  folded: number;
  byPort: { port: string; state: KeepaliveState; value: number }[];
  listening: Record<KeepaliveState, number>;
  /** the dead-peer detection times (seconds) of the established connections with keepalive on that are known, ascending, with how many take each */
  detection: { seconds: number; count: number }[];
  /** the longest known detection time, Infinity when a connection never notices; null with none */
  worstDetection: number | null;
  /** each namespace's probe and time-out counters (through a process in it), with whose namespace it is */
  counters: NamespaceCounters[];
  namespaces: number;
  via: string;
  /** whether the settings were read exactly (root); otherwise from the kernel's timer only */
  exact: boolean;
}

const ESTABLISHED_AND_LISTENING: SocketFilter = {
  ...DEFAULT_FILTER,
  states: stateMask(["ESTAB", "LISTEN"]),
};

function stateOf(c: Connection): KeepaliveState {
  return c.keepalive === true ? "on" : c.keepalive === false ? "off" : "unknown";
}

function ownerLabels(comm: string, w: Workload | null, want: readonly OwnerLabel[]): Record<string, string> {
  const k = w?.container;
  const out: Record<string, string> = {};
  for (const l of want) {
    if (l === "process") out.process = comm;
    else if (l === "container") out.container = k ? (k.name ?? k.id.slice(0, 12)) : "";
    else if (l === "pod_namespace") out.pod_namespace = k?.pod?.namespace ?? "";
    else if (l === "pod") out.pod = k?.pod?.name ?? "";
    else out.unit = w?.unit ?? "";
  }
  return out;
}

type Counts = Record<KeepaliveState, number>;

/**
 * What a scrape adds up, whichever way the sockets were read: counted per (process name, workload object) and
 * only then turned into label sets (a label record and its key made per connection cost as much as the
 * inventory itself at 100,000); the lookup hands out one Workload object per cgroup, so the inner maps stay small.
 */
class Tally {
  readonly byComm = new Map<string, Map<Workload | null, Counts>>();
  readonly listening: Counts = { on: 0, off: 0, unknown: 0 };
  readonly byPort = new Map<number, Counts>();
  /** detection time (s) -> established connections with keepalive on that take it */
  readonly detection = new Map<number, number>();
  worst: number | null = null;
  exact = false;

  connections(comm: string, w: Workload | null, state: KeepaliveState, n: number): void {
    let inner = this.byComm.get(comm);
    if (!inner) {
      inner = new Map();
      this.byComm.set(comm, inner);
    }
    let counts = inner.get(w);
    if (!counts) {
      counts = { on: 0, off: 0, unknown: 0 };
      inner.set(w, counts);
    }
    counts[state] += n;
  }

  port(port: number, state: KeepaliveState, n: number): void {
    let e = this.byPort.get(port);
    if (!e) {
      e = { on: 0, off: 0, unknown: 0 };
      this.byPort.set(port, e);
    }
    e[state] += n;
  }

  /** `after`: the connections' detection time (deadPeerAfter); null with keepalive off or unknown */
  detect(keepalive: boolean | null, after: number | null, n: number): void {
    if (keepalive === false) this.worst = Number.POSITIVE_INFINITY;
    else if (after !== null) {
      this.detection.set(after, (this.detection.get(after) ?? 0) + n);
      if (this.worst === null || after > this.worst) this.worst = after;
    }
  }

  snapshot(o: SnapshotOptions, info: { namespaces: ReadonlyMap<number, NetNamespace>; via: string }): Snapshot {
    // Label sets, merged where two workload objects (two cgroups of one container) carry the same labels.
    const sets = new Map<string, { labels: Record<string, string>; counts: Counts }>();
    for (const [comm, inner] of this.byComm) {
      for (const [w, counts] of inner) {
        const labels = ownerLabels(comm, w, o.labels);
        const key = JSON.stringify(labels);
        const e = sets.get(key);
        if (!e) sets.set(key, { labels, counts: { ...counts } });
        else for (const k of ["on", "off", "unknown"] as const) e.counts[k] += counts[k];
      }
    }
    const { series, folded } = foldOwners([...sets.values()], o.maxSeries, o.labels);
    return {
      connections: series,
      folded,
      byPort: o.ports > 0 ? portSeries(this.byPort, o.ports) : [],
      listening: this.listening,
      detection: [...this.detection].sort((a, b) => a[0] - b[0]).map(([seconds, count]) => ({ seconds, count })),
      worstDetection: this.worst,
      counters: namespaceCounters(info.namespaces, o.labels),
      namespaces: info.namespaces.size,
      via: info.via,
      exact: this.exact,
    };
  }
}

/**
 * One pass over every namespace's sockets, counted: in the kernel by `counter` where it is given and its
 * counts fit (socket-counts.ts), else from the inventory's records (inspectEach). `why` hears why the counts
 * could not be used, when they could not.
 */
export function takeSnapshot(o: SnapshotOptions, counter?: SocketCounter, why?: (reason: string) => void): Snapshot {
  if (counter) {
    try {
      const s = countedSnapshot(o, counter);
      if (s) return s;
      why?.("more distinct counts than the kernel's map holds");
    } catch (e) {
      why?.(`counting in the kernel failed: ${(e as Error).message}`);
    }
  }
  return recordSnapshot(o);
}

/** From the records of every socket (the kernel pass's, or sock_diag and getsockopt's). */
export function recordSnapshot(o: SnapshotOptions): Snapshot {
  const t = new Tally();
  const wantProcess = o.labels.includes("process");
  const wantWorkload = o.labels.some((l) => l !== "process");
  const listeningPorts = new Set<number>(); // netns * 65536 + port
  const ports = { netns: [] as number[], local: [] as number[], remote: [] as number[], state: [] as KeepaliveState[] };
  // The owners' walk (every process's file table) only for the process label: without it a scrape costs the
  // kernel about a third less (BENCHMARKS.md §7); the settings are exact either way (the kernel pass reads them).
  const info = inspectEach(ESTABLISHED_AND_LISTENING, { allNetns: true, processes: wantProcess }, (c) => {
    const state = stateOf(c);
    if (c.source === "exact") t.exact = true;
    if (c.socket.state === "LISTEN") {
      t.listening[state]++;
      listeningPorts.add((c.netns ?? 0) * 65536 + c.socket.localPort);
      return;
    }
    t.connections(wantProcess ? (c.owners[0]?.comm ?? "") : "", wantWorkload ? (c.workload ?? null) : null, state, 1);
    if (o.ports > 0) {
      ports.netns.push(c.netns ?? 0);
      ports.local.push(c.socket.localPort);
      ports.remote.push(c.socket.peerPort);
      ports.state.push(state);
    }
    t.detect(c.keepalive, c.deadPeerAfter, 1);
  });
  // The service port: the local one where the namespace listens on it (the server's end of an accepted
  // connection), else the peer's.
  for (let i = 0; i < ports.state.length; i++) {
    const local = ports.local[i] as number;
    const listened = listeningPorts.has((ports.netns[i] as number) * 65536 + local);
    t.port(listened ? local : (ports.remote[i] as number), ports.state[i] as KeepaliveState, 1);
  }
  return t.snapshot(o, info);
}

/**
 * From the kernel's counts (socket-counts.ts): the same answers as recordSnapshot, with the workload of each
 * count looked up as the inventory looks it up for a connection (by its cgroup, else its first owner's, else
 * its namespace's: WorkloadLookup in inspect/connections.ts). null when the counts did not fit the kernel's map.
 */
export function countedSnapshot(o: SnapshotOptions, counter: SocketCounter): Snapshot | null {
  const wantProcess = o.labels.includes("process");
  const wantWorkload = o.labels.some((l) => l !== "process");
  const list = networkNamespaces();
  const counts = counter.count(list);
  if (counts === null) return null;
  const t = new Tally();
  const workloads = wantWorkload ? Workloads.load() : null;
  const byPid = new Map<number, Workload | null>();
  const comms = new Map<number, string>();
  for (const c of counts) {
    const state: KeepaliveState = c.keepalive ? "on" : "off";
    t.exact = true; // every ESTABLISHED or LISTEN socket is a full one: its settings are its own
    if (c.listening) {
      t.listening[state] += c.count;
      continue;
    }
    let comm = "";
    if (wantProcess && c.owner !== 0) {
      let known = comms.get(c.owner);
      if (known === undefined) {
        known = commOf(c.owner);
        comms.set(c.owner, known);
      }
      comm = known;
    }
    let w: Workload | null = null;
    if (workloads) {
      if (c.cgroup) w = workloads.ofCgroup(c.cgroup);
      else if (c.owner !== 0) {
        let byOwner = byPid.get(c.owner);
        if (byOwner === undefined) {
          byOwner = workloads.ofPid(c.owner);
          byPid.set(c.owner, byOwner);
        }
        w = byOwner;
      }
      w ??= workloads.ofNetns(c.netns);
    }
    t.connections(comm, w, state, c.count);
    if (o.ports > 0) t.port(c.port, state, c.count);
    t.detect(c.keepalive, c.settings ? deadPeerAfter(c.settings) : null, c.count);
  }
  return t.snapshot(o, { namespaces: new Map(list.map((ns) => [ns.inum, ns])), via: "bpf-counts" });
}

/**
 * At most `max` owner label sets: those with the most connections, and the rest summed into one set whose every
 * label is "other" — so that a host where processes or containers come and go by the thousand keeps a bounded
 * number of series, and the totals stay right.
 */
export function foldOwners(
  sets: readonly { labels: Record<string, string>; counts: Record<KeepaliveState, number> }[],
  max: number,
  labels: readonly OwnerLabel[],
): { series: OwnerSeries[]; folded: number } {
  const total = (c: Record<KeepaliveState, number>) => c.on + c.off + c.unknown;
  const sorted = [...sets].sort((a, b) => total(b.counts) - total(a.counts));
  const keep = sorted.length <= max ? sorted : sorted.slice(0, Math.max(0, max - 1));
  const rest = sorted.slice(keep.length);
  const series: OwnerSeries[] = [];
  const emit = (l: Record<string, string>, c: Record<KeepaliveState, number>) => {
    for (const state of ["on", "off", "unknown"] as const) {
      if (c[state] > 0) series.push({ labels: l, state, value: c[state] });
    }
  };
  for (const s of keep) emit(s.labels, s.counts);
  if (rest.length) {
    const sum = { on: 0, off: 0, unknown: 0 };
    for (const s of rest) for (const k of ["on", "off", "unknown"] as const) sum[k] += s.counts[k];
    emit(Object.fromEntries(labels.map((l) => [l, "other"])), sum);
  }
  return { series, folded: rest.length };
}

/** The `max` service ports with the most connections named, the rest summed as "other". */
function portSeries(
  byPort: ReadonlyMap<number, Counts>,
  max: number,
): { port: string; state: KeepaliveState; value: number }[] {
  const total = (c: Counts) => c.on + c.off + c.unknown;
  const sorted = [...byPort].sort((a, b) => total(b[1]) - total(a[1]) || a[0] - b[0]);
  const out: { port: string; state: KeepaliveState; value: number }[] = [];
  const other: Counts = { on: 0, off: 0, unknown: 0 };
  sorted.forEach(([port, c], i) => {
    for (const state of ["on", "off", "unknown"] as const) {
      if (i < max) {
        if (c[state] > 0) out.push({ port: String(port), state, value: c[state] });
      } else other[state] += c[state];
    }
  });
  for (const state of ["on", "off", "unknown"] as const) {
    if (other[state] > 0) out.push({ port: "other", state, value: other[state] });
  }
  return out;
}

/**
 * Two counters of each namespace, read from /proc/PID/net/netstat of a process in it: TcpExtTCPKeepAlive, the
 * keepalive probes its sockets sent (LINUX_MIB_TCPKEEPALIVE, counted in tcp_keepalive_timer each time
 * tcp_write_wakeup sends one), and TcpExtTCPAbortOnTimeout, the connections the kernel closed because the peer
 * stopped answering (LINUX_MIB_TCPABORTONTIMEOUT, counted in tcp_write_err: keepalive probes, retransmissions or
 * the user timeout ran out). A namespace that only `ip netns` keeps, with no process in it, is not read.
 */
function namespaceCounters(
  namespaces: ReadonlyMap<number, NetNamespace>,
  labels: readonly OwnerLabel[],
): NamespaceCounters[] {
  const out: NamespaceCounters[] = [];
  const workloads = Workloads.load();
  for (const [inum, ns] of namespaces) {
    const file = ns.own ? "/proc/self/net/netstat" : ns.pid !== undefined ? `/proc/${ns.pid}/net/netstat` : undefined;
    if (file === undefined) continue;
    const v = tcpExt(file, ["TCPKeepAlive", "TCPAbortOnTimeout"]);
    const probes = v?.get("TCPKeepAlive");
    const timedOut = v?.get("TCPAbortOnTimeout");
    if (probes === undefined || timedOut === undefined) continue;
    // Whose namespace it is: a container's or pod's (a process or unit has no meaning for a namespace).
    const k = workloads.ofNetns(inum)?.container;
    const l: Record<string, string> = {};
    if (labels.includes("container")) l.container = k ? (k.name ?? k.id.slice(0, 12)) : "";
    if (labels.includes("pod_namespace")) l.pod_namespace = k?.pod?.namespace ?? "";
    if (labels.includes("pod")) l.pod = k?.pod?.name ?? "";
    out.push({ netns: String(inum), labels: l, probes, timedOut });
  }
  return out;
}
