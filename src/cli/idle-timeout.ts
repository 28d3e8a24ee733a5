/**
 * `tcpka idle-timeout HOST:PORT`: measure how long a connection may stay idle on the path to an echo server
 * (`tcpka echo`) before a firewall, NAT or load balancer on the way forgets it, and say which keepalive
 * settings keep connections alive through it. The measurement is probe/measure.ts's; this file parses the
 * arguments, shows the progress and prints the result.
 */
import { performance } from "node:perf_hooks";
import { isatty } from "node:tty";
import { usage } from "../errors.js";
import { parseEndpoint, resolveHost } from "../probe/endpoint.js";
import { type IdleSearch, recommend } from "../probe/idle-search.js";
import { type IdleTimeoutMeasurement, measureIdleTimeout, type ProbeRecord } from "../probe/measure.js";
import { formatMs, formatSeconds, parseDurationMs } from "../settings.js";
import { bool, parse, str } from "../ui/args.js";
import { hostPort, Out, paint } from "../ui/format.js";
import { stopOnSignals } from "../ui/signals.js";

export const IDLE_TIMEOUT_HELP = `Usage: tcpka idle-timeout HOST:PORT [--max DURATION] [--parallel N] [--json]

Measure the idle timeout of the path to HOST:PORT: how long a TCP connection may stay silent before a
stateful firewall, NAT gateway or load balancer on the way forgets it and drops its packets. Then print the
keepalive settings that keep connections open through it (first probe at half the timeout or earlier).

The far end must echo: run 'tcpka echo --listen PORT' there (any echo server works). Several connections are
held idle for different times in parallel; the search narrows the range between the longest idle time that
survived and the shortest that did not, to 1s or 5%. That takes about twice the timeout (up to 2.5 times;
less with a higher --parallel). Progress goes to stderr, the result to stdout; Ctrl-C stops early and prints
what is known so far.

Options:
      --max DURATION            give up looking beyond this idle time (default 15m, at most 24h)
      --parallel N              connections held at once (default 8, 2 to 64); more is faster for long timeouts
      --probe-timeout DURATION  a ping left this long without a pong counts as dropped (default 1.5s;
                                raise it on a slow or lossy path)
      --json                    the result as JSON (durations in _ms / _s fields)

Examples:
  tcpka echo --listen 7007                          on the server side
  tcpka idle-timeout 198.51.100.7:7007              from the client side, through the firewall
  tcpka idle-timeout db.internal:7007 --max 2h --parallel 16
`;

const OPTIONS = {
  max: { type: "string" },
  parallel: { type: "string" },
  "probe-timeout": { type: "string" },
  json: { type: "boolean" },
} as const;

const MAX_MAX_MS = 24 * 3600_000;

// ---------------------------------------------------------------------------------------------------------
// Progress on stderr: a redrawn line on a terminal, a line per result otherwise.

class Progress {
  private readonly tty: boolean;
  private timer: NodeJS.Timeout | undefined;
  private t0 = 0;
  private search: IdleSearch | undefined;
  private firstWidth = 0;

  constructor(
    private readonly err: Out,
    /** Printed once the connections are open (an error before that needs no heading). */
    private readonly heading: string,
  ) {
    this.tty = isatty(2) && process.env.TERM !== "dumb"; // not process.stderr: see Out
  }

  private say(line: string): void {
    this.err.write(`${line}\n`);
    this.err.end();
  }

  start(search: IdleSearch, t0: number): void {
    this.say(this.heading);
    this.t0 = t0;
    this.search = search;
    if (this.tty) {
      this.timer = setInterval(() => this.draw(), 250);
      this.timer.unref();
      this.draw();
    }
  }

  result(p: ProbeRecord, search: IdleSearch): void {
    if (this.tty) {
      this.draw();
      return;
    }
    const what = p.alive ? "alive" : `dropped (${p.reason})`;
    this.say(`  ${formatMs(p.atMs).padStart(6)}  idle ${formatMs(p.idleMs)}: ${what}${this.bounds(search, " · ")}`);
  }

  stop(): void {
    clearInterval(this.timer);
    if (this.tty && this.search) {
      this.err.write("\r\x1b[K");
      this.err.end();
    }
  }

  private bounds(s: IdleSearch, sep: string): string {
    const parts: string[] = [];
    if (s.longestAlive > 0) parts.push(`alive after ${formatMs(s.longestAlive)}`);
    if (s.found) parts.push(`dropped after ${formatMs(s.shortestDropped)}`);
    return parts.length ? sep + parts.join(" · ") : "";
  }

  private draw(): void {
    const s = this.search;
    if (!s) return;
    const elapsed = performance.now() - this.t0;
    let fraction: number;
    let phase: string;
    if (!s.found) {
      // Exploring: how far the longest survivor got towards --max, on a log scale.
      fraction = (0.5 * Math.log1p(s.longestAlive / 1000)) / Math.log1p(s.maxMs / 1000);
      phase = "exploring";
    } else {
      const width = Math.max(s.shortestDropped - s.longestAlive, s.resolution());
      this.firstWidth ||= width;
      const span = Math.log(this.firstWidth / s.resolution());
      fraction = 0.5 + (span > 0 ? 0.5 * (1 - Math.log(width / s.resolution()) / span) : 0.5);
      phase = "narrowing";
    }
    const cells = 14;
    const full = Math.max(0, Math.min(cells, Math.round(fraction * cells)));
    const bar = `[${"█".repeat(full)}${"░".repeat(cells - full)}]`;
    const line = `  ${bar}  ${formatMs(elapsed).padStart(6)}${this.bounds(s, "  ")} · ${phase}`;
    this.err.write(`\r\x1b[K${paint(this.err, "dim", line)}`);
    this.err.end();
  }
}

// ---------------------------------------------------------------------------------------------------------
// The command.

function parseMax(text: string): number {
  const ms = parseDurationMs(text);
  if (ms === undefined) throw usage(`--max ${text}: not a duration`, "e.g. --max 15m, --max 2h, --max 90s");
  if (ms < 2000 || ms > MAX_MAX_MS) throw usage(`--max ${text}: out of range`, "give 2s to 24h");
  return ms;
}

function parseParallel(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 2 || Number(text) > 64) {
    throw usage(`--parallel ${text}: give a whole number from 2 to 64`);
  }
  return Number(text);
}

function parseProbeTimeout(text: string): number {
  const ms = parseDurationMs(text);
  if (ms === undefined || ms < 100 || ms > 60_000) {
    throw usage(`--probe-timeout ${text}: give a duration from 100ms to 60s`, "e.g. --probe-timeout 3s");
  }
  return ms;
}

export async function runIdleTimeout(argv: readonly string[], out: Out): Promise<number> {
  const { values, positionals } = parse("idle-timeout", argv, OPTIONS, true);
  if (bool(values, "help")) {
    out.write(IDLE_TIMEOUT_HELP);
    return 0;
  }
  if (positionals.length === 0) {
    throw usage(
      "idle-timeout: which path? give HOST:PORT of an echo server",
      "e.g. tcpka idle-timeout 198.51.100.7:7007",
    );
  }
  if (positionals.length > 1) throw usage(`idle-timeout: unexpected argument ${positionals[1]}`, "give one HOST:PORT");
  const { host, port } = parseEndpoint("idle-timeout", positionals[0] as string, false);
  const maxMs = parseMax(str(values, "max") ?? "15m");
  const parallel = parseParallel(str(values, "parallel") ?? "8");
  const probeTimeoutMs = parseProbeTimeout(str(values, "probe-timeout") ?? "1.5s");
  const json = bool(values, "json");

  const target = hostPort(host as string, port);
  const progress = new Progress(
    new Out(2),
    `measuring the idle timeout of the path to ${target} (${parallel} connections in parallel, up to ${formatSeconds(maxMs / 1000)})`,
  );
  const address = await resolveHost(host as string);
  const stop = stopOnSignals();
  let m: IdleTimeoutMeasurement;
  try {
    m = await measureIdleTimeout({
      host: address,
      port,
      maxMs,
      parallel,
      probeTimeoutMs,
      signal: stop.signal,
      onStart: (search, startedAt) => progress.start(search, startedAt),
      onResult: (probe, search) => progress.result(probe, search),
    });
  } finally {
    stop.dispose();
    progress.stop();
  }
  if (json) writeJson(m, target, out);
  else writeText(m, out);
  return m.interrupted ? 130 : 0;
}

function commands(r: { idle: number; interval: number; count: number }) {
  return {
    run: `tcpka run --idle ${formatSeconds(r.idle)} --interval ${formatSeconds(r.interval)} --count ${r.count} -- <command>`,
    sysctl: `sysctl -w net.ipv4.tcp_keepalive_time=${r.idle} net.ipv4.tcp_keepalive_intvl=${r.interval} net.ipv4.tcp_keepalive_probes=${r.count}`,
  };
}

/** The idle time below which connections were seen to survive for sure. */
function safeMs(s: IdleSearch): number {
  return Math.min(s.longestAlive, s.shortestDropped);
}

function writeText(m: IdleTimeoutMeasurement, out: Out): void {
  const s = m.search;
  const took = `measured in ${formatMs(m.elapsedMs)} with ${m.connections} connections`;
  if (m.interrupted) out.write(`interrupted after ${formatMs(m.elapsedMs)}\n`);
  if (!s.found) {
    if (s.longestAlive >= s.maxMs) {
      out.write(
        `no idle timeout up to ${formatSeconds(s.maxMs / 1000)}: a connection idle for ${formatMs(s.longestAlive)} still answered (${took})\n`,
      );
      out.write(
        `nothing on this path drops idle connections that soon; to look further: --max ${formatSeconds((s.maxMs * 4) / 1000)}\n`,
      );
    } else {
      out.write(`no idle timeout seen yet: connections idle for ${formatMs(s.longestAlive)} still answered\n`);
    }
    return;
  }
  if (s.inconsistent) {
    out.write(
      `idle timeout: not sharp: a connection idle ${formatMs(s.longestAlive)} survived, one idle ${formatMs(s.shortestDropped)} was dropped (${took})\n`,
    );
    out.write("the middlebox may expire idle connections in periodic sweeps; going by the shortest drop\n");
  } else if (s.longestAlive === 0) {
    out.write(`idle timeout: under ${formatMs(s.shortestDropped)} (${took})\n`);
  } else {
    const range = m.interrupted && !s.done ? "so far between" : "between";
    out.write(`idle timeout: ${range} ${formatMs(s.longestAlive)} and ${formatMs(s.shortestDropped)} (${took})\n`);
  }
  const r = recommend(safeMs(s));
  if (!r) {
    out.write("keepalive cannot help here: the kernel's keepalive idle time is at least 1s\n");
    return;
  }
  const c = commands(r);
  out.write(`recommended keepalive: idle ≤ ${formatSeconds(r.idle)}\n  ${c.run}\n  ${c.sysctl}\n`);
}

function writeJson(m: IdleTimeoutMeasurement, target: string, out: Out): void {
  const s = m.search;
  const r = s.found ? recommend(safeMs(s)) : null;
  const round = (ms: number) => Math.round(ms);
  const doc = {
    target,
    found: s.found,
    longest_alive_idle_ms: round(s.longestAlive),
    shortest_dropped_idle_ms: s.found ? round(s.shortestDropped) : null,
    consistent: !s.inconsistent,
    max_ms: s.maxMs,
    resolution_ms: round(s.resolution()),
    elapsed_ms: round(m.elapsedMs),
    connections: m.connections,
    interrupted: m.interrupted,
    recommended: r ? { idle_s: r.idle, interval_s: r.interval, count: r.count, ...commands(r) } : null,
    probes: m.probes.map((p) => ({
      at_ms: round(p.atMs),
      idle_ms: round(p.idleMs),
      result: p.alive ? "alive" : "dropped",
      ...(p.reason === undefined ? {} : { reason: p.reason }),
    })),
  };
  out.write(`${JSON.stringify(doc, null, 2)}\n`);
}
