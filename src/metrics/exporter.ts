/**
 * The Prometheus metrics of `tcpka metrics` and `tcpka agent --metrics`, in the text format through prom-client
 * (the kept library: its escaping of label values, HELP/TYPE lines and content type are the ones Prometheus
 * expects). Every scrape counts every socket once (snapshot.ts: in the kernel where the counting programs load,
 * else from the inventory's records); the counters mirror the kernel's own counts (set to them, never added to
 * here). The agent adds what it enforces (agentPart).
 */
import type { Counter, Gauge, Registry } from "prom-client";
// prom-client is CommonJS: its classes come from the default export (named imports of it fail in ESM).
import prom from "prom-client";
import type { AgentStatus } from "../agent/status.js";
import type { Listed } from "../enforce/cgroup.js";
import { SocketCounter } from "../inspect/socket-counts.js";
import { EventCounts, foldEvents } from "./events.js";
import { DETECTION_BOUNDS, type OwnerLabel, type Snapshot, type SnapshotOptions, takeSnapshot } from "./snapshot.js";

/** What the agent hands the exporter at each scrape: its status now, and its enforcements' kernel counters. */
export interface AgentPart {
  status(): AgentStatus | undefined;
  enforcements(): readonly Listed[];
  /** undefined while the agent is well, else why not (the endpoint's /healthz) */
  unwell?(): string | undefined;
}

export class Exporter {
  readonly registry: Registry = new prom.Registry();
  private readonly connections: Gauge<string>;
  private readonly folded: Gauge<string>;
  private readonly byPort: Gauge<string>;
  private readonly listening: Gauge<string>;
  private readonly detecting: CountedHistogram;
  private readonly worst: Gauge<string>;
  private readonly probes: Counter<string>;
  private readonly timedOut: Counter<string>;
  private readonly namespaces: Gauge<string>;
  private readonly exact: Gauge<string>;
  private readonly scrapeSeconds: Gauge<string>;
  private readonly scrapeErrors: Counter<string>;
  private readonly agent: ReturnType<typeof agentMetrics> | undefined;
  /** the scrape under way: a second one at the same time waits for it and answers the same */
  private running: Promise<string> | undefined;
  /** the kernel's counting programs, loaded at the first scrape; null where they cannot load (records then) */
  private counter: SocketCounter | null | undefined;
  /** whether a scrape that fell back from the counts to the records was logged */
  private toldRecords = false;
  /** with `events`: keepalive's events counted as they come, and their metrics */
  private readonly events: { counts: EventCounts; metrics: ReturnType<typeof eventMetrics> } | undefined;

  /**
   * `events`: also count keepalive's events (the tracing programs of tcpka watch, kept attached: events.ts), which
   * throws here as KeepaliveWatch.start does where they cannot be had.
   */
  constructor(
    private readonly o: SnapshotOptions & { log: (line: string) => void; events?: boolean },
    private readonly agentPart?: AgentPart,
  ) {
    const registers = [this.registry];
    const owner = [...o.labels];
    this.connections = new prom.Gauge({
      name: "tcpka_connections",
      help: `Established TCP connections by keepalive state (on, off, unknown: the kernel's timer could not tell) and owner, every network namespace; owner label sets beyond ${o.maxSeries} are summed as "other"`,
      labelNames: ["keepalive", ...owner],
      registers,
    });
    this.folded = new prom.Gauge({
      name: "tcpka_connections_owner_sets_folded",
      help: 'Owner label sets of tcpka_connections summed into the "other" set this scrape (raise --max-series, or drop labels, when not 0)',
      registers,
    });
    this.byPort = new prom.Gauge({
      name: "tcpka_connections_by_port",
      help: `Established TCP connections by keepalive state and service port (the local port where the namespace listens on it, else the peer's); ports beyond the ${o.ports} with the most connections are summed as "other"`,
      labelNames: ["keepalive", "port"],
      registers,
    });
    this.listening = new prom.Gauge({
      name: "tcpka_listening_sockets",
      help: "Listening TCP sockets by keepalive state: the connections they accept inherit it",
      labelNames: ["keepalive"],
      registers,
    });
    this.detecting = new CountedHistogram(
      "tcpka_dead_peer_detection_seconds",
      'How long the established connections with keepalive on take to notice a vanished peer (idle + interval x count, or the user timeout): the connections there are now, counted afresh at each scrape (use histogram_quantile on it as it is, not on rate()); those with keepalive off never notice (tcpka_connections{keepalive="off"})',
      DETECTION_BOUNDS,
    );
    this.registry.registerMetric(this.detecting as unknown as prom.Metric);
    this.worst = new prom.Gauge({
      name: "tcpka_dead_peer_detection_worst_seconds",
      help: "The longest time any established connection takes to notice a vanished peer: +Inf when one has keepalive off, 0 with no established connection",
      registers,
    });
    this.probes = new prom.Counter({
      name: "tcpka_keepalive_probes_total",
      help: "Keepalive probes sent by the sockets of each network namespace (the kernel's TcpExtTCPKeepAlive), with its container or pod",
      labelNames: ["netns", ...owner.filter((l) => l !== "process" && l !== "unit")],
      registers,
    });
    this.timedOut = new prom.Counter({
      name: "tcpka_connections_timed_out_total",
      help: "Connections of each network namespace that the kernel closed because the peer stopped answering: keepalive probes, retransmissions or the user timeout ran out (the kernel's TcpExtTCPAbortOnTimeout)",
      labelNames: ["netns", ...owner.filter((l) => l !== "process" && l !== "unit")],
      registers,
    });
    this.namespaces = new prom.Gauge({
      name: "tcpka_network_namespaces",
      help: "Network namespaces read this scrape",
      registers,
    });
    this.exact = new prom.Gauge({
      name: "tcpka_exact_settings",
      help: "1 when the sockets' settings were read exactly (root), 0 when only the kernel's timer was seen",
      registers,
    });
    this.scrapeSeconds = new prom.Gauge({
      name: "tcpka_scrape_duration_seconds",
      help: "How long tcpka took to read every socket for this scrape",
      registers,
    });
    this.scrapeErrors = new prom.Counter({
      name: "tcpka_scrape_errors_total",
      help: "Scrapes in which reading the sockets failed (the error is logged); the other metrics are then from before",
      registers,
    });
    this.agent = agentPart ? agentMetrics(this.registry) : undefined;
    if (o.events) {
      const labels = o.labels.filter((l) => l !== "process");
      this.events = { counts: EventCounts.start(), metrics: eventMetrics(this.registry, labels) };
    }
  }

  /** The text of one scrape. */
  scrape(): Promise<string> {
    this.running ??= this.take().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async take(): Promise<string> {
    const t0 = process.hrtime.bigint();
    try {
      this.fill(
        takeSnapshot(this.o, this.counting(), (reason) => {
          if (!this.toldRecords) this.o.log(`${reason}: this scrape read every socket instead (said once)`);
          this.toldRecords = true;
        }),
      );
    } catch (e) {
      this.scrapeErrors.inc();
      this.o.log(`scrape failed: ${(e as Error).message}`);
    }
    this.scrapeSeconds.set(Number(process.hrtime.bigint() - t0) / 1e9);
    if (this.agent && this.agentPart) fillAgent(this.agent, this.agentPart);
    if (this.events) fillEvents(this.events.metrics, this.events.counts, this.o);
    return this.registry.metrics();
  }

  /** The counting programs, loaded once; null (the records, each scrape) where this kernel or user cannot. */
  private counting(): SocketCounter | undefined {
    if (this.counter === undefined) {
      const owners = this.o.labels.includes("process");
      this.counter = null;
      if (SocketCounter.possible(owners)) {
        try {
          this.counter = SocketCounter.open({ owners });
        } catch (e) {
          this.o.log(
            `counting in the kernel is not possible here (${(e as Error).message}): every socket is read instead`,
          );
        }
      }
    }
    return this.counter ?? undefined;
  }

  /** Unload the counting programs (a scrape after this loads them again) and the event programs (for good). */
  close(): void {
    this.counter?.close();
    this.counter = undefined;
    this.events?.counts.stop();
  }

  private fill(s: Snapshot): void {
    this.connections.reset();
    for (const c of s.connections) this.connections.set({ keepalive: c.state, ...c.labels }, c.value);
    this.folded.set(s.folded);
    this.byPort.reset();
    for (const p of s.byPort) this.byPort.set({ keepalive: p.state, port: p.port }, p.value);
    this.listening.reset();
    for (const state of ["on", "off", "unknown"] as const) this.listening.set({ keepalive: state }, s.listening[state]);
    this.detecting.set(s.detection);
    this.worst.reset();
    if (s.worstDetection !== null) this.worst.set(s.worstDetection);
    this.probes.reset();
    this.timedOut.reset();
    for (const n of s.counters) {
      this.probes.inc({ netns: n.netns, ...n.labels }, n.probes);
      this.timedOut.inc({ netns: n.netns, ...n.labels }, n.timedOut);
    }
    this.namespaces.set(s.namespaces);
    this.exact.set(s.exact ? 1 : 0);
  }
}

/**
 * A histogram filled from counts (so many connections take so many seconds) instead of one observe() per
 * connection, with the samples prom-client's Histogram gives (_bucket with le, cumulative, then +Inf, _sum,
 * _count), registered in the registry as a metric of its own (its get() is what the registry formats).
 */
class CountedHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";
  private values: { seconds: number; count: number }[] = [];

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly bounds: readonly number[],
  ) {}

  set(values: { seconds: number; count: number }[]): void {
    this.values = values;
  }

  reset(): void {
    this.values = [];
  }

  get() {
    const inBucket = new Array<number>(this.bounds.length).fill(0);
    let sum = 0;
    let count = 0;
    for (const { seconds, count: n } of this.values) {
      sum += seconds * n;
      count += n;
      const i = this.bounds.findIndex((b) => seconds <= b);
      if (i >= 0) inBucket[i] = (inBucket[i] as number) + n;
    }
    const bucket = `${this.name}_bucket`;
    const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
    let acc = 0;
    this.bounds.forEach((le, i) => {
      acc += inBucket[i] as number;
      values.push({ labels: { le }, value: acc, metricName: bucket });
    });
    values.push({ labels: { le: "+Inf" }, value: count, metricName: bucket });
    values.push({ labels: {}, value: sum, metricName: `${this.name}_sum` });
    values.push({ labels: {}, value: count, metricName: `${this.name}_count` });
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}

/** The metrics of keepalive's events (--events), labelled by workload (the owner labels but process). */
function eventMetrics(registry: Registry, labels: readonly string[]) {
  const registers = [registry];
  return {
    labels,
    probes: new prom.Counter({
      name: "tcpka_keepalive_probes_sent_total",
      help: "Keepalive probes sent, by the container, pod or unit of the connection (seen by tcpka's tracing programs since the endpoint started)",
      labelNames: [...labels],
      registers,
    }),
    answered: new prom.Counter({
      name: "tcpka_keepalive_probes_answered_total",
      help: "Keepalive probes the peer answered, by the container, pod or unit of the connection",
      labelNames: [...labels],
      registers,
    }),
    killed: new prom.Counter({
      name: "tcpka_connections_killed_total",
      help: 'Connections the kernel closed because the peer went silent, by why (reason="keepalive": every probe unanswered; "user_timeout": its TCP_USER_TIMEOUT ran out; "retransmissions": data unacknowledged after every retransmission) and by container, pod or unit',
      labelNames: ["reason", ...labels],
      registers,
    }),
    lost: new prom.Counter({
      name: "tcpka_keepalive_events_lost_total",
      help: "Keepalive events the tracing programs' ring buffer had no room for: not in the counts above",
      registers,
    }),
  };
}

function fillEvents(m: ReturnType<typeof eventMetrics>, counts: EventCounts, o: SnapshotOptions): void {
  for (const c of [m.probes, m.answered, m.killed, m.lost]) c.reset();
  for (const { labels, count } of foldEvents(counts.all(), m.labels, o.maxSeries)) {
    m.probes.inc(labels, count.probes);
    m.answered.inc(labels, count.answered);
    m.killed.inc({ reason: "keepalive", ...labels }, count.killedByKeepalive);
    m.killed.inc({ reason: "user_timeout", ...labels }, count.killedByUserTimeout);
    m.killed.inc({ reason: "retransmissions", ...labels }, count.killedByRetransmissions);
  }
  m.lost.inc(counts.lost);
}

function agentMetrics(registry: Registry) {
  const registers = [registry];
  return {
    up: new prom.Gauge({ name: "tcpka_agent_up", help: "1 while the agent runs", registers }),
    rules: new prom.Gauge({ name: "tcpka_agent_rules", help: "Rules of the policy in force", registers }),
    policyErrors: new prom.Gauge({
      name: "tcpka_agent_policy_errors",
      help: "Errors in the policy file as it is now (the last good policy stays in force while not 0)",
      registers,
    }),
    targets: new prom.Gauge({
      name: "tcpka_agent_targets",
      help: "Cgroups each rule enforces on, by state (enforced, failing)",
      labelNames: ["rule", "state"],
      registers,
    }),
    watched: new prom.Gauge({
      name: "tcpka_agent_watched_processes",
      help: "Processes each rule selects whose cgroup cannot be enforced whole: changed by pid at every reconcile",
      labelNames: ["rule"],
      registers,
    }),
    uncovered: new prom.Gauge({
      name: "tcpka_agent_uncovered_processes",
      help: "Processes each rule selects that the agent cannot cover (tcpka status says why)",
      labelNames: ["rule"],
      registers,
    }),
    setUp: new prom.Counter({
      name: "tcpka_agent_connections_set_up_total",
      help: "Connections set up under each rule's enforcements, as the kernel counts them (an enforcement removed takes its count with it)",
      labelNames: ["rule"],
      registers,
    }),
    kept: new prom.Counter({
      name: "tcpka_agent_calls_kept_to_rule_total",
      help: "Programs' own keepalive setsockopt calls that each rule's enforcements kept to the rule",
      labelNames: ["rule"],
      registers,
    }),
    existing: new prom.Gauge({
      name: "tcpka_agent_existing_connections_changed",
      help: "Connections that existed when each rule's enforcements were made, changed then",
      labelNames: ["rule"],
      registers,
    }),
    failures: new prom.Gauge({
      name: "tcpka_agent_connections_failed",
      help: "Connections that each rule's passes over existing connections and last watched rounds could not change",
      labelNames: ["rule"],
      registers,
    }),
    reconcileSeconds: new prom.Gauge({
      name: "tcpka_agent_last_reconcile_duration_seconds",
      help: "How long the last reconcile took",
      registers,
    }),
    reconciledAt: new prom.Gauge({
      name: "tcpka_agent_last_reconcile_timestamp_seconds",
      help: "When the last reconcile ended (Unix time)",
      registers,
    }),
  };
}

function fillAgent(m: ReturnType<typeof agentMetrics>, part: AgentPart): void {
  const s = part.status();
  m.up.set(1);
  for (const g of [m.targets, m.watched, m.uncovered, m.setUp, m.kept, m.existing, m.failures]) g.reset();
  if (!s) return;
  m.rules.set(s.rules.length);
  m.policyErrors.set(s.policy.errors.length);
  if (s.reconciled) {
    m.reconcileSeconds.set(s.reconciled.ms / 1000);
    m.reconciledAt.set(Date.parse(s.reconciled.at) / 1000);
  }
  const counts = new Map(part.enforcements().map((l) => [l.cgroup, l]));
  for (const r of s.rules) {
    const rule = { rule: r.name };
    let failing = 0;
    let failed = 0;
    let existing = 0;
    let setUp = 0;
    let kept = 0;
    for (const t of r.targets) {
      if (t.state === "failing") failing++;
      if (typeof t.existing === "object") {
        existing += t.existing.changed;
        failed += t.existing.failed;
      }
      const l = counts.get(t.cgroup);
      if (l?.enforcement?.owner === "agent" && l.enforcement.rule === r.name && l.counts) {
        setUp += l.counts.setUp;
        if (l.hook) kept += l.counts.rewritten;
      }
    }
    for (const w of r.watched) failed += w.last?.failed ?? 0;
    m.targets.set({ ...rule, state: "enforced" }, r.targets.length - failing);
    m.targets.set({ ...rule, state: "failing" }, failing);
    m.watched.set(
      rule,
      r.watched.reduce((n, w) => n + w.process_count, 0),
    );
    m.uncovered.set(
      rule,
      r.uncovered.reduce((n, u) => n + u.process_count, 0),
    );
    m.setUp.inc(rule, setUp);
    m.kept.inc(rule, kept);
    m.existing.set(rule, existing);
    m.failures.set(rule, failed);
  }
}

export type { OwnerLabel };
