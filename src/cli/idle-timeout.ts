/**
 * `tcpka idle-timeout HOST:PORT`: measure how long a connection may stay idle on the path to an echo server
 * (`tcpka echo`) before a firewall, NAT or load balancer on the way forgets it, and say which keepalive
 * settings keep connections alive through it.
 *
 * How it searches. Each of N connections (--parallel) is a clock: its age is the time since it last saw
 * traffic, and probing it ("ping K" -> "pong K") at age x answers "does an idle time of x survive?" — after
 * which an alive connection starts again from age 0, and a dropped one is replaced. A probe that gets no pong
 * within --probe-timeout, or a reset or close, counts as dropped: a path whose state expired usually drops the
 * packet silently, so the client would only retransmit. The search keeps the longest idle time that survived
 * (lo) and the shortest that did not (hi):
 *  - exploring (no drop seen yet): waves of probes at idle times on a geometric ladder (1s, 1.2s, 1.44s, …),
 *    the oldest connection to the shortest time it can still reach; one connection is kept back for --max
 *    itself, so "no timeout up to --max" is known once --max has passed. A wave ends when its probes are
 *    answered or one is dropped.
 *  - narrowing (lo < hi known): every gap between lo, hi and the probes already planned that is wider than the
 *    resolution (1s or 5% of lo) gets a probe at its middle, from the connection that can reach it soonest —
 *    often one that has already aged into the gap while the explorers were out, and is probed at once.
 *  Planned probes outside (lo, hi) are cancelled as results come in; an idle connection older than hi is
 *  replaced (it cannot tell anything new). Simulated over 1s..15m with 8 connections, this ends within about
 *  2× the true timeout (less for short ones), with both bounds within the resolution.
 */
import { lookup } from "node:dns/promises";
import { connect, isIP, type Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { TcpkaError, usage } from "../errors.js";
import { IdleSearch, recommend, type Slot } from "../probe/idle-search.js";
import { formatMs, formatSeconds, parseDurationMs } from "../settings.js";
import { bool, parse, str } from "../ui/args.js";
import { hostPort, Out, paint } from "../ui/format.js";
import { parseEndpoint } from "./echo.js";

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

const CONNECT_TIMEOUT_MS = 5000;
const HELLO_TIMEOUT_MS = 3000;
const MAX_MAX_MS = 24 * 3600_000;
/** A pong this late (or 4 round trips, if longer) makes the probe a suspected drop for planning. */
const SUSPECT_MS = 200;

// ---------------------------------------------------------------------------------------------------------
// Connections to the echo server.

type PingResult = { alive: true; at: number } | { alive: false; reason: string };

/** A connection to an echo server that answers "ping K" with "pong K" (or echoes it back unchanged). */
class EchoConnection {
  private buffer = "";
  private waiting: { seq: number; done: (r: PingResult) => void; timer: NodeJS.Timeout } | undefined;
  private ended: string | undefined;
  /** Called once when the connection ends while no ping is in flight: a reset or close while idle. */
  onIdleEnd: ((reason: string) => void) | undefined;
  /** The last time data arrived. */
  lastTraffic = performance.now();

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.setEncoding("latin1");
    socket.on("data", (d: string) => this.receive(d));
    socket.on("error", (e: NodeJS.ErrnoException) => this.end(e.code ? errnoText(e.code) : e.message));
    socket.on("end", () => this.end("closed by the peer"));
    socket.on("close", () => this.end("closed"));
  }

  /** Connect and check that the far end echoes; errors are TcpkaErrors that say what is wrong. */
  static open(host: string, port: number, seq: number): Promise<{ conn: EchoConnection; rttMs: number }> {
    const target = hostPort(host, port);
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port });
      const fail = (e: TcpkaError) => {
        clearTimeout(timer);
        socket.destroy();
        reject(e);
      };
      const timer = setTimeout(
        () =>
          fail(
            new TcpkaError("system", `cannot connect to ${target}: no answer within ${formatMs(CONNECT_TIMEOUT_MS)}`, {
              hint: "a firewall may drop the connection attempt silently; check the address, the port and the route",
            }),
          ),
        CONNECT_TIMEOUT_MS,
      );
      socket.once("error", (e: NodeJS.ErrnoException) => fail(connectError(e, host, port)));
      socket.once("connect", () => {
        socket.removeAllListeners("error");
        clearTimeout(timer);
        const conn = new EchoConnection(socket);
        const start = performance.now();
        conn.ping(seq, HELLO_TIMEOUT_MS).then((r) => {
          if (r.alive) {
            resolve({ conn, rttMs: r.at - start });
            return;
          }
          conn.destroy();
          const what =
            r.reason === `no answer within ${formatMs(HELLO_TIMEOUT_MS)}`
              ? `${target} accepted the connection but did not echo a ping within ${formatMs(HELLO_TIMEOUT_MS)}`
              : `${target} accepted the connection, then: ${r.reason}`;
          reject(
            new TcpkaError("system", what, {
              hint: `idle-timeout needs an echo server at the far end: run 'tcpka echo --listen ${port}' there`,
            }),
          );
        });
      });
    });
  }

  /** Send "ping SEQ" and wait up to `timeoutMs` for its answer. */
  ping(seq: number, timeoutMs: number): Promise<PingResult> {
    return new Promise((resolve) => {
      if (this.ended !== undefined) {
        resolve({ alive: false, reason: this.ended });
        return;
      }
      const timer = setTimeout(() => {
        this.waiting = undefined;
        resolve({ alive: false, reason: `no answer within ${formatMs(timeoutMs)}` });
      }, timeoutMs);
      this.waiting = { seq, done: resolve, timer };
      this.socket.write(`ping ${seq}\n`);
    });
  }

  /** Close it; a ping in flight ends as "closed" at once (no timer is left behind). */
  destroy(): void {
    this.onIdleEnd = undefined;
    this.end("closed");
    this.socket.destroy();
  }

  private receive(data: string): void {
    const now = performance.now();
    this.lastTraffic = now;
    this.buffer += data;
    for (;;) {
      const nl = this.buffer.indexOf("\n");
      if (nl < 0) break;
      const line = this.buffer.slice(0, nl).replace(/\r$/, "");
      this.buffer = this.buffer.slice(nl + 1);
      const w = this.waiting;
      if (w && (line === `pong ${w.seq}` || line === `ping ${w.seq}`)) {
        clearTimeout(w.timer);
        this.waiting = undefined;
        w.done({ alive: true, at: now });
      }
    }
    if (this.buffer.length > 4096) this.buffer = this.buffer.slice(-64);
  }

  private end(reason: string): void {
    if (this.ended !== undefined) return;
    this.ended = reason;
    const w = this.waiting;
    if (w) {
      clearTimeout(w.timer);
      this.waiting = undefined;
      w.done({ alive: false, reason });
    } else {
      this.onIdleEnd?.(reason);
    }
  }
}

function errnoText(code: string): string {
  const text: Record<string, string> = {
    ECONNRESET: "reset (RST)",
    EPIPE: "broken pipe",
    ETIMEDOUT: "timed out",
    EHOSTUNREACH: "host unreachable",
    ENETUNREACH: "network unreachable",
  };
  return text[code] ?? code;
}

function connectError(e: NodeJS.ErrnoException, host: string, port: number): TcpkaError {
  const target = hostPort(host, port);
  switch (e.code) {
    case "ECONNREFUSED":
      return new TcpkaError("system", `cannot connect to ${target}: connection refused, nothing listens there`, {
        hint: `start the far end there: tcpka echo --listen ${port}`,
      });
    case "EHOSTUNREACH":
    case "ENETUNREACH":
    case "EADDRNOTAVAIL":
      return new TcpkaError("system", `cannot connect to ${target}: ${errnoText(e.code)}`, {
        hint: `check the address and the route to it: ip route get ${host}`,
      });
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return new TcpkaError("not-found", `cannot resolve ${host}`, {
        hint: "check the host name, or give an IP address",
        exitCode: 1, // the name is well formed: its lookup failed
      });
    default:
      return new TcpkaError("system", `cannot connect to ${target}: ${e.code ?? e.message}`, {
        hint: "check the address and the port",
      });
  }
}

// ---------------------------------------------------------------------------------------------------------
// The measurement: slots with live connections, driven by the search.

interface ProbeRecord {
  atMs: number;
  idleMs: number;
  alive: boolean;
  reason?: string;
}

interface LiveSlot extends Slot {
  conn: EchoConnection | undefined;
}

export interface Measurement {
  /** As given (the host name, if one was given). */
  target: string;
  search: IdleSearch;
  probes: ProbeRecord[];
  elapsedMs: number;
  connections: number;
  interrupted: boolean;
}

interface MeasureOptions {
  host: string;
  port: number;
  maxMs: number;
  parallel: number;
  probeTimeoutMs: number;
  progress: Progress;
}

async function measure(o: MeasureOptions): Promise<Measurement> {
  const t0 = performance.now();
  const search = new IdleSearch({ maxMs: o.maxMs });
  const probes: ProbeRecord[] = [];
  let seq = 0;
  let connections = 0;
  let failure: unknown;
  let interrupted = false;
  let finished = false;
  let rttMs = 0;
  let wakeUp: (() => void) | undefined;
  const wake = () => {
    const w = wakeUp;
    wakeUp = undefined;
    w?.();
  };
  const onSignal = () => {
    interrupted = true;
    wake();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const slots: LiveSlot[] = [];

  const record = (slot: LiveSlot, idleMs: number, result: PingResult) => {
    const at = performance.now();
    probes.push({ atMs: at - t0, idleMs, alive: result.alive, ...(result.alive ? {} : { reason: result.reason }) });
    if (result.alive) {
      search.alive(idleMs);
      slot.since = result.at;
    } else {
      search.dropped(idleMs);
      slot.conn?.destroy();
      slot.conn = undefined;
      slot.ready = false;
      if (!search.done) reopen(slot);
    }
    o.progress.result(at - t0, idleMs, result, search);
  };

  const attach = (slot: LiveSlot, conn: EchoConnection) => {
    slot.conn = conn;
    slot.since = conn.lastTraffic;
    slot.ready = true;
    slot.point = null;
    conn.onIdleEnd = (reason) => {
      // Reset or closed while idle: the path (or the server) gave up on it at this age.
      if (slot.conn !== conn || slot.probing !== null || finished) return;
      record(slot, performance.now() - slot.since, { alive: false, reason });
      wake();
    };
  };

  const open = async (): Promise<EchoConnection> => {
    connections++;
    const { conn, rttMs: rtt } = await EchoConnection.open(o.host, o.port, ++seq);
    rttMs = Math.max(rttMs, rtt);
    return conn;
  };

  const reopen = (slot: LiveSlot) => {
    slot.ready = false;
    slot.point = null;
    open().then(
      (conn) => {
        if (search.done || interrupted || failure !== undefined) conn.destroy();
        else attach(slot, conn);
        wake();
      },
      (e: unknown) => {
        failure ??= e;
        wake();
      },
    );
  };

  const probe = (slot: LiveSlot, now: number) => {
    const conn = slot.conn as EchoConnection;
    const idleMs = now - slot.since;
    slot.probing = idleMs;
    slot.point = null;
    const timeoutMs = Math.max(o.probeTimeoutMs, 3 * rttMs);
    const late = setTimeout(
      () => {
        search.suspect(idleMs);
        wake();
      },
      Math.min(timeoutMs / 2, Math.max(SUSPECT_MS, 4 * rttMs)),
    );
    conn.ping(++seq, timeoutMs).then((r) => {
      clearTimeout(late);
      search.settled(idleMs);
      slot.probing = null;
      if (slot.conn === conn && !finished) record(slot, idleMs, r);
      wake();
    });
  };

  try {
    // One connection first: if the far end is unreachable or no echo server, that is one clear error.
    const conns = [await open()];
    const rest = await Promise.allSettled(Array.from({ length: o.parallel - 1 }, () => open()));
    for (const r of rest) if (r.status === "fulfilled") conns.push(r.value);
    const bad = rest.find((r) => r.status === "rejected");
    if (bad) {
      for (const c of conns) c.destroy();
      throw bad.reason;
    }
    for (const conn of conns) {
      const slot: LiveSlot = { since: 0, ready: false, probing: null, point: null, conn: undefined };
      attach(slot, conn);
      slots.push(slot);
    }
    o.progress.start(t0, search);

    while (!search.done && !interrupted) {
      if (failure !== undefined) throw failure;
      const now = performance.now();
      for (const s of search.plan(slots, now)) {
        s.conn?.destroy();
        s.conn = undefined;
        reopen(s);
      }
      let next = Number.POSITIVE_INFINITY;
      let started = false;
      for (const s of slots) {
        if (!s.ready || s.probing !== null || s.point === null) continue;
        const due = s.since + s.point;
        if (due <= now) {
          probe(s, now);
          started = true;
        } else next = Math.min(next, due);
      }
      if (started) continue; // plan again with these probes in flight
      if (!Number.isFinite(next) && slots.every((s) => s.ready && s.probing === null)) {
        throw new Error(
          `idle-timeout: nothing left to probe between ${search.longestAlive} and ${search.shortestDropped} ms`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = Number.isFinite(next) ? setTimeout(resolve, Math.max(0, next - performance.now())) : undefined;
        wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    if (failure !== undefined && !search.done) throw failure;
  } finally {
    finished = true;
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    for (const s of slots) s.conn?.destroy();
    o.progress.stop();
  }
  return {
    target: hostPort(o.host, o.port),
    search,
    probes,
    elapsedMs: performance.now() - t0,
    connections,
    interrupted,
  };
}

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
    private readonly quiet: boolean,
  ) {
    this.tty = process.stderr.isTTY === true && process.env.TERM !== "dumb";
  }

  say(line: string): void {
    if (this.quiet) return;
    this.err.write(`${line}\n`);
    this.err.end();
  }

  /** Printed once the connections are open (an error before that needs no heading). */
  heading = "";

  start(t0: number, search: IdleSearch): void {
    this.say(this.heading);
    this.t0 = t0;
    this.search = search;
    if (this.tty && !this.quiet) {
      this.timer = setInterval(() => this.draw(), 250);
      this.timer.unref();
      this.draw();
    }
  }

  result(atMs: number, idleMs: number, r: PingResult, search: IdleSearch): void {
    if (this.quiet) return;
    if (this.tty) {
      this.draw();
      return;
    }
    const what = r.alive ? "alive" : `dropped (${r.reason})`;
    this.say(`  ${formatMs(atMs).padStart(6)}  idle ${formatMs(idleMs)}: ${what}${this.bounds(search, " · ")}`);
  }

  stop(): void {
    clearInterval(this.timer);
    if (this.tty && !this.quiet && this.search) {
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

/** The address to connect to: every connection goes to the same one. */
async function resolve(host: string): Promise<string> {
  if (isIP(host)) return host;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new TcpkaError("system", `cannot resolve ${host}: no answer within ${formatMs(CONNECT_TIMEOUT_MS)}`, {
            hint: "check the DNS servers in /etc/resolv.conf, or give an IP address",
          }),
        ),
      CONNECT_TIMEOUT_MS,
    );
  });
  try {
    const r = await Promise.race([lookup(host), timeout]);
    return r.address;
  } catch (e) {
    if (e instanceof TcpkaError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOTFOUND") {
      throw new TcpkaError("not-found", `cannot resolve ${host}: no such host`, {
        hint: "check the host name, or give an IP address",
        exitCode: 1, // the name is well formed: its lookup failed
      });
    }
    throw new TcpkaError(
      "system",
      `cannot resolve ${host}: ${code === "EAI_AGAIN" ? "DNS did not answer" : (code ?? String(e))}`,
      {
        hint: "check the DNS servers in /etc/resolv.conf, or give an IP address",
      },
    );
  } finally {
    clearTimeout(timer);
  }
}

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

  const err = new Out(2);
  const progress = new Progress(err, false);
  const target = hostPort(host as string, port);
  progress.heading = `measuring the idle timeout of the path to ${target} (${parallel} connections in parallel, up to ${formatSeconds(maxMs / 1000)})`;
  const address = await resolve(host as string);
  const m = await measure({ host: address, port, maxMs, parallel, probeTimeoutMs, progress });
  m.target = target;
  if (json) writeJson(m, out);
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

function writeText(m: Measurement, out: Out): void {
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

function writeJson(m: Measurement, out: Out): void {
  const s = m.search;
  const r = s.found ? recommend(safeMs(s)) : null;
  const round = (ms: number) => Math.round(ms);
  const doc = {
    target: m.target,
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
