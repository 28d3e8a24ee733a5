/**
 * `tcpka watch`: keepalive at work, one line per event, from the kernel's tracepoints (src/inspect/watch.ts);
 * without root or BPF, the namespace's own counters once a second instead.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { hostPort } from "../addresses.js";
import { usage } from "../errors.js";
import { tcpExt } from "../inspect/netstat.js";
import { KeepaliveWatch, type WatchEvent } from "../inspect/watch.js";
import { errnoName } from "../kernel/errno.js";
import { bpfCapable } from "../sys/bpf.js";
import { bool, parse, str } from "../ui/args.js";
import { type Out, printable, processText } from "../ui/format.js";
import { stopOnSignals } from "../ui/signals.js";

export const WATCH_HELP = `Usage: sudo tcpka watch [--pid PID] [--port PORT] [--json]

Is keepalive working? One line per event, on every TCP connection of the host (every network namespace), as it
happens:

  probe      a keepalive probe sent: which connection, its owner, which probe of how many before it gives up,
             how long the peer has been silent
  answered   the peer answered the probe, and how fast
  killed     keepalive gave up (every probe unanswered, or the user timeout ran out while probing): the
             connection is closed and its program gets the error shown (ETIMEDOUT)
  timed-out  closed with ETIMEDOUT outside keepalive: retransmissions unanswered, or the user timeout

From BPF programs on kernel tracepoints (timer_expire_entry/exit, net_dev_queue, tcp_probe,
inet_sock_set_state: Linux 5.9 or later with BTF) through a ring buffer; events the ring had no room for are
counted and said. Needs root. Without it, tcpka says so and prints this namespace's keepalive counters
(TcpExtTCPKeepAlive: probes sent; TcpExtTCPAbortOnTimeout: connections timed out) each second they change.

Options:
      --pid PID          only connections this process holds
      --port PORT        only connections with this local or peer port
      --json             one JSON object per line, for scripts

Examples:
  sudo tcpka watch
  sudo tcpka watch --port 5432
  sudo tcpka watch --json | jq 'select(.kind == "killed")'
`;

const OPTIONS = {
  pid: { type: "string" },
  port: { type: "string" },
  json: { type: "boolean" },
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

function line(e: WatchEvent): string {
  const conn = `${hostPort(e.localAddress, e.localPort)} → ${hostPort(e.peerAddress, e.peerPort)}`;
  const owner = e.owners.length ? e.owners.map((o) => processText(o.comm, o.pid)).join(",") : "(no process)";
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
  }
}

function json(e: WatchEvent): string {
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
    const w = KeepaliveWatch.start();
    try {
      process.stderr.write("tcpka watch: tracing keepalive on every TCP connection (Ctrl-C to stop)\n");
      w.run(
        (e) => {
          if (port !== undefined && e.localPort !== port && e.peerPort !== port) return;
          if (pid !== undefined && !e.owners.some((o) => o.pid === pid)) return;
          out.write(`${asJson ? json(e) : printable(line(e))}\n`);
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
