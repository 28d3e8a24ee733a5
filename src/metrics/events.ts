/**
 * Keepalive at work, counted for the metrics (`tcpka metrics --events`, `tcpka agent --metrics-events`): the
 * tracing programs of `tcpka watch` (inspect/watch.ts) kept attached, their events counted per container, pod or
 * unit — found by the cgroup the socket is charged to — as they come. What the namespaces' TcpExt counters cannot
 * say: which workload's probes, how many were answered, and kills by keepalive apart from time-outs. Costs what
 * watch costs while it runs (BENCHMARKS.md §8: its programs run on every packet and timer of the host), which is
 * why it is asked for, not on by default.
 */
import { EventWorkloads, KeepaliveWatch, type WatchEvent } from "../inspect/watch.js";
import type { Workload } from "../inspect/workloads.js";

/** What happened to the connections of one workload (or of none), since the counting started. */
export interface EventCount {
  workload: Workload | null;
  /** keepalive probes sent */
  probes: number;
  /** probes answered by the peer */
  answered: number;
  /** connections closed by keepalive: every probe unanswered (or the user timeout ran out while probing) */
  killedByKeepalive: number;
  /** connections closed with ETIMEDOUT outside keepalive, with a user timeout set: it ran out */
  killedByUserTimeout: number;
  /** the same without a user timeout: retransmissions went unanswered */
  killedByRetransmissions: number;
}

/** Workloads counted apart at most; the events of any more are counted under none. */
const MAX_WORKLOADS = 5000;

/** The same workload across reloads of the runtimes' records (each makes new objects): its container, its unit. */
function keyOf(w: Workload | null): string {
  return w ? `${w.container?.id ?? ""}\0${w.unit ?? ""}` : "";
}

type Tally = Omit<EventCount, "workload">;

/**
 * The counts as label sets of `labels` (container, pod_namespace, pod, unit: as tcpka_connections names them),
 * merged where two workloads carry the same labels; beyond `maxSeries` sets, the ones with the fewest events are
 * summed into one whose every label is "other".
 */
export function foldEvents(
  counts: Iterable<EventCount>,
  labels: readonly string[],
  maxSeries: number,
): { labels: Record<string, string>; count: Tally }[] {
  const sets = new Map<string, { labels: Record<string, string>; count: Tally }>();
  for (const c of counts) {
    const k = c.workload?.container;
    const l: Record<string, string> = {};
    for (const name of labels) {
      if (name === "container") l.container = k ? (k.name ?? k.id.slice(0, 12)) : "";
      else if (name === "pod_namespace") l.pod_namespace = k?.pod?.namespace ?? "";
      else if (name === "pod") l.pod = k?.pod?.name ?? "";
      else if (name === "unit") l.unit = c.workload?.unit ?? "";
    }
    const key = JSON.stringify(l);
    const set = sets.get(key) ?? { labels: l, count: empty() };
    add(set.count, c);
    sets.set(key, set);
  }
  const all = [...sets.values()];
  if (all.length <= maxSeries) return all;
  const total = (t: Tally) =>
    t.probes + t.answered + t.killedByKeepalive + t.killedByUserTimeout + t.killedByRetransmissions;
  all.sort((a, b) => total(b.count) - total(a.count));
  const kept = all.slice(0, Math.max(0, maxSeries - 1));
  const other = { labels: Object.fromEntries(labels.map((l) => [l, "other"])), count: empty() };
  for (const s of all.slice(kept.length)) add(other.count, s.count);
  return [...kept, other];
}

function empty(): Tally {
  return { probes: 0, answered: 0, killedByKeepalive: 0, killedByUserTimeout: 0, killedByRetransmissions: 0 };
}

function add(to: Tally, from: Tally): void {
  to.probes += from.probes;
  to.answered += from.answered;
  to.killedByKeepalive += from.killedByKeepalive;
  to.killedByUserTimeout += from.killedByUserTimeout;
  to.killedByRetransmissions += from.killedByRetransmissions;
}

export class EventCounts {
  private readonly counts = new Map<string, EventCount>();
  private readonly where = new EventWorkloads();
  /** records the ring buffer had no room for: events not counted */
  lost = 0;

  private constructor(private readonly watch: KeepaliveWatch) {}

  /** Attach and start counting; throws TcpkaError (as `tcpka watch` would: root, BTF, a kernel that allows it). */
  static start(): EventCounts {
    // No setsockopt programs: the metrics count no changes, and the syscall's trace events would put every system
    // call of the host on the traced path for as long as the endpoint runs (bpf/keepalive-watch.ts).
    const watch = KeepaliveWatch.start({ owners: false, setsockopt: false });
    const c = new EventCounts(watch);
    watch.run(
      (e) => c.count(e),
      (n) => {
        c.lost += n;
      },
    );
    return c;
  }

  private count(e: WatchEvent): void {
    let w = this.where.of(e);
    let key = keyOf(w);
    if (!this.counts.has(key) && this.counts.size >= MAX_WORKLOADS) {
      w = null;
      key = "";
    }
    let c = this.counts.get(key);
    if (!c) {
      c = {
        workload: w,
        probes: 0,
        answered: 0,
        killedByKeepalive: 0,
        killedByUserTimeout: 0,
        killedByRetransmissions: 0,
      };
      this.counts.set(key, c);
    }
    if (e.kind === "probe") c.probes++;
    else if (e.kind === "answered") c.answered++;
    else if (e.kind === "killed") c.killedByKeepalive++;
    else if (e.kind === "timed-out") {
      if (e.userTimeoutMs) c.killedByUserTimeout++;
      else c.killedByRetransmissions++;
    }
  }

  /** Every workload's counts so far (a workload that went keeps its counts: counters never go down). */
  all(): Iterable<EventCount> {
    return this.counts.values();
  }

  stop(): void {
    this.watch.stop();
  }
}
