/**
 * `tcpka watch`: keepalive at work, one line per event, from the kernel's tracepoints (src/inspect/watch.ts);
 * without root or BPF, the namespace's own counters once a second instead.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { hostPort } from "../addresses.js";
import { usage } from "../errors.js";
import { workloadMatcher } from "../inspect/connections.js";
import { tcpExt } from "../inspect/netstat.js";
import { EventWorkloads, KeepaliveWatch, type WatchEvent } from "../inspect/watch.js";
import type { Workload } from "../inspect/workloads.js";
import { errnoName } from "../kernel/errno.js";
import { bpfCapable } from "../sys/bpf.js";
import { bool, parse, str } from "../ui/args.js";
import { workloadText } from "../ui/connections.js";
import { type Out, printable, processText } from "../ui/format.js";
import { stopOnSignals } from "../ui/signals.js";

export const WATCH_HELP = `Usage: sudo tcpka watch [--pid PID] [--port PORT] [--container ID] [--pod NS/NAME] [--unit NAME] [--json]
                       [--no-setsockopt]

Is keepalive working? One line per event, on every TCP connection of the host (every network namespace), as it
happens:

  probe      a keepalive probe sent: which connection, its owner, which probe of how many before it gives up,
             how long the peer has been silent
  answered   the peer answered the probe, and how fast
  killed     keepalive gave up (every probe unanswered, or the user timeout ran out while probing): the
             connection is closed and its program gets the error shown (ETIMEDOUT)
  timed-out  closed with ETIMEDOUT outside keepalive: retransmissions unanswered, or the user timeout
  on         keepalive turned on (SO_KEEPALIVE) on a connection: by which process (a program's setsockopt,
             tcpka enable), or as the connection was established (set before connect() by the program or
             tcpka run, or by tcpka enforce's program); the idle time and when the first probe is due
  retuned    a new idle time, interval or count (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) on a connection, and
             when the next probe is due (of a connection without keepalive: what it will have once on)
  off        keepalive turned off, and by which process

From BPF programs on kernel tracepoints (timer_expire_entry/exit, net_dev_queue, tcp_probe,
inet_sock_set_state: Linux 5.9 or later with BTF; timer_start and timer_cancel for on, retuned and off: Linux
6.2 or later) through a ring buffer; events the ring had no room for are counted and said. A program's own
setsockopt of SO_KEEPALIVE or TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT is seen at the system call's exit
(syscalls:sys_enter/exit_setsockopt): a new interval or count too, which touches no timer, and one call is one
line, with the options it set; while watch runs, that puts every system call of the host on the kernel's
traced path (about 75 ns more each, measured on a 2-core VM). A SO_KEEPALIVE that changes nothing (1 where it
is on) and a call that fails show nothing. Needs root. Without it, tcpka says so and prints this
namespace's keepalive counters (TcpExtTCPKeepAlive: probes sent; TcpExtTCPAbortOnTimeout: connections timed
out) each second they change.

Options:
      --pid PID          only connections this process holds
      --port PORT        only connections with this local or peer port
      --container ID     only this container's connections (its id, 4 or more leading characters of it, or
                         its name)
      --pod NS/NAME      only this Kubernetes pod's connections (from the CRI runtime's annotations)
      --unit NAME        only this systemd unit's connections (nginx means nginx.service)
      --json             one JSON object per line, for scripts
      --no-setsockopt    leave programs' setsockopt calls untraced, so that the host's other system calls stay
                         off the traced path; a new TCP_KEEPINTVL or TCP_KEEPCNT alone is then not seen

Examples:
  sudo tcpka watch
  sudo tcpka watch --port 5432
  sudo tcpka watch --pod shop/cart-7d4f9
  sudo tcpka watch --json | jq 'select(.kind == "killed")'
`;

const OPTIONS = {
  pid: { type: "string" },
  port: { type: "string" },
  container: { type: "string" },
  pod: { type: "string" },
  unit: { type: "string" },
  json: { type: "boolean" },
  "no-setsockopt": { type: "boolean" },
} as const;

function whole(flag: string, text: string | undefined, max: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > max) throw usage(`${flag} ${printable(text)}: a number from 1 to ${max}`);
  return n;
}

function clock(ms: number): string {
  return new Date(ms).toISOString().slice(11, 23);
}

function seconds(s: number): string {
  return Number.isInteger(s) ? `${s}s` : `${s.toFixed(1)}s`;
}

function line(e: WatchEvent, where: string | null): string {
  const conn = `${hostPort(e.localAddress, e.localPort)} → ${hostPort(e.peerAddress, e.peerPort)}`;
  const owner =
    (e.owners.length ? e.owners.map((o) => processText(o.comm, o.pid)).join(",") : "(no process)") +
    (where === null ? "" : `  ${where}`);
  const by = `by ${processText(e.comm, e.pid)}`;
  const silent = `silent ${e.silentS.toFixed(1)}s`;
  switch (e.kind) {
    case "probe":
      return `${clock(e.at)}  probe ${e.probe}/${e.count}  ${conn}  ${owner}  ${silent}`;
    case "answered":
      return `${clock(e.at)}  answered in ${(e.answeredMs ?? 0).toFixed(2)} ms  ${conn}  ${owner}`;
    case "killed": {
      const why = e.userTimeoutMs
        ? `the user timeout (${e.userTimeoutMs} ms) ran out while probing`
        : `${e.probe} probe${e.probe === 1 ? "" : "s"} unanswered`;
      return `${clock(e.at)}  killed by keepalive: ${why}, ${silent}: ${errnoName(e.errno ?? 0)}  ${conn}  ${owner}`;
    }
    case "timed-out":
      return `${clock(e.at)}  timed out (${e.userTimeoutMs ? `user timeout ${e.userTimeoutMs} ms` : "retransmissions unanswered"}), ${silent}: ${errnoName(e.errno ?? 0)}  ${conn}  ${owner}`;
    case "on": {
      const how = e.atConnect ? "as the connection was established (set before connect, or by tcpka enforce)" : by;
      return `${clock(e.at)}  keepalive on ${how}${calls(e)}: ${settings(e)}, first probe in ${seconds(e.nextProbeS ?? 0)}  ${conn}  ${owner}`;
    }
    case "retuned":
      return e.keepalive === false
        ? `${clock(e.at)}  keepalive retuned ${by}${calls(e)}, keepalive off: ${settings(e)}  ${conn}  ${owner}`
        : `${clock(e.at)}  keepalive retuned ${by}${calls(e)}: ${settings(e)}${e.nextProbeS === undefined ? "" : `, next probe in ${seconds(e.nextProbeS)}`}  ${conn}  ${owner}`;
    case "off":
      return `${clock(e.at)}  keepalive off ${by}${calls(e)}  ${conn}  ${owner}`;
  }
}

/** The options a program's setsockopt set in a change, " (SO_KEEPALIVE, TCP_KEEPIDLE)"; nothing when none were seen. */
function calls(e: WatchEvent): string {
  return e.options?.length ? ` (${e.options.join(", ")})` : "";
}

/** A change's settings: what the socket has after it (its own, else its namespace's). */
function settings(e: WatchEvent): string {
  return `idle ${seconds(e.idleS)}, interval ${seconds(e.intervalS)}, count ${e.count}`;
}

function json(e: WatchEvent, w: Workload | null): string {
  const k = w?.container;
  return JSON.stringify({
    kind: e.kind,
    at: new Date(e.at).toISOString(),
    netns: e.netns,
    local: hostPort(e.localAddress, e.localPort),
    peer: hostPort(e.peerAddress, e.peerPort),
    owners: e.owners.map((o) => ({ pid: o.pid, fd: o.fd, comm: o.comm })),
    probe: e.probe,
    count: e.count,
    silent_s: Math.round(e.silentS * 1000) / 1000,
    user_timeout_ms: e.userTimeoutMs,
    ...(e.answeredMs !== undefined ? { answered_ms: e.answeredMs } : {}),
    ...(e.errno !== undefined ? { errno: errnoName(e.errno) } : {}),
    ...(e.kind === "on" || e.kind === "retuned" || e.kind === "off"
      ? {
          by: e.atConnect ? null : { pid: e.pid, comm: e.comm },
          at_connect: e.atConnect === true,
          options: e.options ?? [],
          keepalive: e.keepalive ?? e.kind !== "off",
          idle_s: e.idleS,
          interval_s: e.intervalS,
          ...(e.nextProbeS !== undefined ? { next_probe_s: Math.round(e.nextProbeS * 1000) / 1000 } : {}),
        }
      : {}),
    container: k ? { runtime: k.runtime, id: k.id, name: k.name } : null,
    pod: k?.pod ? { namespace: k.pod.namespace, name: k.pod.name, container: k.pod.container } : null,
    unit: w?.unit ?? null,
  });
}

export async function runWatch(argv: readonly string[], out: Out): Promise<number> {
  const { values } = parse("watch", argv, OPTIONS);
  if (bool(values, "help")) {
    out.write(WATCH_HELP);
    return 0;
  }
  const pid = whole("--pid", str(values, "pid"), 4_194_304);
  const port = whole("--port", str(values, "port"), 65535);
  const asJson = bool(values, "json");
  const pod = str(values, "pod");
  if (pod !== undefined && !/^[^/]+\/[^/]+$/.test(pod))
    throw usage(`--pod ${printable(pod)}: use NAMESPACE/NAME, e.g. --pod default/web-0`);
  const wanted = workloadMatcher({ container: str(values, "container"), pod, unit: str(values, "unit") });
  const stop = stopOnSignals();
  const flush = () => out.end();
  try {
    if (!bpfCapable()) {
      process.stderr.write(
        "tcpka watch: not root: no tracing; this namespace's keepalive counters instead, each second they change (sudo tcpka watch for every event)\n",
      );
      await countersOnly(out, asJson, stop.signal);
      return 0;
    }
    const traceSetsockopt = !bool(values, "no-setsockopt");
    const w = KeepaliveWatch.start({ setsockopt: traceSetsockopt });
    const setsockoptMissing = traceSetsockopt ? w.setsockoptMissing : "--no-setsockopt";
    const where = new EventWorkloads();
    try {
      process.stderr.write(
        w.changesMissing !== null
          ? `tcpka watch: tracing keepalive on every TCP connection (Ctrl-C to stop); keepalive turned on, retuned or off is not seen: ${printable(w.changesMissing)}\n`
          : setsockoptMissing !== null
            ? `tcpka watch: tracing keepalive on every TCP connection (Ctrl-C to stop); a new TCP_KEEPINTVL or TCP_KEEPCNT alone, or an idle time that leaves the timer in its wheel bucket, is not seen: ${printable(setsockoptMissing)}\n`
            : "tcpka watch: tracing keepalive on every TCP connection (Ctrl-C to stop)\n",
      );
      w.run(
        (e) => {
          if (port !== undefined && e.localPort !== port && e.peerPort !== port) return;
          if (pid !== undefined && !e.owners.some((o) => o.pid === pid)) return;
          const wl = where.of(e);
          if (wanted && !wanted(wl)) return;
          out.write(`${asJson ? json(e, wl) : printable(line(e, workloadText(wl)))}\n`);
          flush();
        },
        (n) => {
          process.stderr.write(`tcpka watch: ${n} event${n === 1 ? "" : "s"} lost (the ring buffer was full)\n`);
        },
      );
      await new Promise<void>((resolve) => stop.signal.addEventListener("abort", () => resolve(), { once: true }));
    } finally {
      w.stop();
    }
  } finally {
    stop.dispose();
  }
  return 0;
}

/** The namespace's TcpExtTCPKeepAlive and TcpExtTCPAbortOnTimeout, a line each second they change. */
async function countersOnly(out: Out, asJson: boolean, signal: AbortSignal): Promise<void> {
  const names = ["TCPKeepAlive", "TCPAbortOnTimeout"];
  let last = tcpExt("/proc/self/net/netstat", names);
  while (!signal.aborted) {
    await sleep(1000, undefined, { signal }).catch(() => {}); // aborted: the loop ends
    const now = tcpExt("/proc/self/net/netstat", names);
    const d = (n: string) => (now?.get(n) ?? 0) - (last?.get(n) ?? 0);
    if (d("TCPKeepAlive") || d("TCPAbortOnTimeout")) {
      const probes = d("TCPKeepAlive");
      const timedOut = d("TCPAbortOnTimeout");
      out.write(
        asJson
          ? `${JSON.stringify({ kind: "counters", at: new Date().toISOString(), probes_sent: probes, timed_out: timedOut })}\n`
          : `${clock(Date.now())}  ${probes} keepalive probe${probes === 1 ? "" : "s"} sent, ${timedOut} connection${timedOut === 1 ? "" : "s"} timed out (this namespace, the last second)\n`,
      );
      out.end();
    }
    last = now;
  }
}
