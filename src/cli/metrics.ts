/**
 * `tcpka metrics`: the Prometheus endpoint (src/metrics/): every network namespace's connections counted by
 * keepalive state and owner at each scrape.
 */
import { usage } from "../errors.js";
import { Exporter } from "../metrics/exporter.js";
import { startMetrics } from "../metrics/server.js";
import { OWNER_LABELS } from "../metrics/snapshot.js";
import { euid } from "../sys/files.js";
import { bool, parse, str } from "../ui/args.js";
import { type Out, printable } from "../ui/format.js";
import { MAX_SERIES_DEFAULT, PORTS_DEFAULT, snapshotOptions } from "../ui/metrics-options.js";
import { stopOnSignals } from "../ui/signals.js";

const METRICS_LABEL_HELP = `      --labels LIST      the owner labels of tcpka_connections, comma-separated, from ${OWNER_LABELS.join(", ")}
                         (the default: all), or none. Each label set is one series: on a host where
                         thousands of short-lived processes or containers come and go, leave process or
                         container out
      --max-series N     at most N owner label sets (default ${MAX_SERIES_DEFAULT}); the ones with the fewest connections
                         are summed into one set labelled "other" (tcpka_connections_owner_sets_folded says how many)
      --ports N          name the N service ports with the most connections in tcpka_connections_by_port, the
                         rest as "other" (default ${PORTS_DEFAULT}; 0: none)
      --events           also count keepalive at work as it happens, by container, pod and unit (the labels
                         above but process): tcpka_keepalive_probes_sent_total, _probes_answered_total,
                         tcpka_connections_killed_total{reason="keepalive|user_timeout|retransmissions"},
                         tcpka_keepalive_events_lost_total. From tcpka watch's tracing programs, kept attached:
                         they run on every packet and timer of the host while the endpoint runs (a few per cent
                         on a workload of nothing but new connections; see README). Not with --once`;

export const METRICS_HELP = `Usage: sudo tcpka metrics --listen [ADDRESS:]PORT [--labels LIST] [--max-series N] [--ports N] [--events]
       sudo tcpka metrics --once

Serve Prometheus metrics of every TCP connection on the host, every network namespace: at each scrape, tcpka
reads every socket once (the kernel pass where BPF iterators load) and counts

  tcpka_connections{keepalive="on|off|unknown", process, container, pod_namespace, pod, unit}
  tcpka_connections_by_port{keepalive, port}       by service port (bounded: --ports)
  tcpka_listening_sockets{keepalive}               what the connections they accept inherit
  tcpka_dead_peer_detection_seconds (a histogram of now), tcpka_dead_peer_detection_worst_seconds
  tcpka_keepalive_probes_total{netns, container, pod_namespace, pod}   the kernel's TcpExtTCPKeepAlive
  tcpka_connections_timed_out_total{netns, …}     closed as the peer stopped answering (TCPAbortOnTimeout)
  tcpka_scrape_duration_seconds, tcpka_scrape_errors_total, tcpka_network_namespaces, tcpka_exact_settings

A port alone listens on 127.0.0.1: the metrics name processes, containers and pods, so listening on other
addresses is for you to choose. Without root only the kernel's timer is seen (keepalive "unknown" where a
retransmission hides it) and other users' sockets have no owner.

Options:
      --listen ADDR      where to serve /metrics: PORT, ADDRESS:PORT or [IPv6]:PORT
      --once             print one scrape to stdout and exit (e.g. to check it with promtool check metrics)
${METRICS_LABEL_HELP}

Examples:
  sudo tcpka metrics --listen 9977                       then scrape http://127.0.0.1:9977/metrics
  sudo tcpka metrics --listen 0.0.0.0:9977 --labels container,pod_namespace,pod
  sudo tcpka metrics --listen 9977 --events              probes, answers and kills per container and pod too
  sudo tcpka metrics --once | promtool check metrics
  sudo tcpka agent --metrics 9977                        the same endpoint, with what the agent enforces
`;

const OPTIONS = {
  listen: { type: "string" },
  once: { type: "boolean" },
  labels: { type: "string" },
  "max-series": { type: "string" },
  ports: { type: "string" },
  events: { type: "boolean" },
} as const;

export async function runMetrics(argv: readonly string[], out: Out): Promise<number> {
  const { values } = parse("metrics", argv, OPTIONS);
  if (bool(values, "help")) {
    out.write(METRICS_HELP);
    return 0;
  }
  const options = snapshotOptions(values);
  const listen = str(values, "listen");
  const once = bool(values, "once");
  if (once === (listen !== undefined)) {
    throw usage(
      once ? "--once and --listen: one of them" : "where to serve: --listen PORT (or --once to print one scrape)",
    );
  }
  if (once && options.events) throw usage("--events counts what happens while the endpoint runs: not with --once");
  const log = (line: string) => {
    process.stderr.write(`tcpka metrics: ${printable(line)}\n`);
  };
  if (euid() !== 0) log("not root: only the kernel's timers are seen, and other users' sockets have no owner");
  if (once) {
    const exporter = new Exporter({ ...options, events: false, log });
    try {
      out.write(await exporter.scrape());
    } finally {
      exporter.close();
    }
    return 0;
  }
  const stop = stopOnSignals();
  try {
    const m = await startMetrics(listen as string, options, log);
    await new Promise<void>((resolve) => stop.signal.addEventListener("abort", () => resolve(), { once: true }));
    await m.close();
  } finally {
    stop.dispose();
  }
  return 0;
}
