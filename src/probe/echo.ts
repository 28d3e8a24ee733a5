/**
 * The ping/pong protocol of `tcpka echo` and `tcpka idle-timeout`, both sides. A line "ping N" is answered with
 * "pong N"; anything else is echoed as it comes, so any echo server works as the far end. The server never
 * turns keepalive on: its probes would refresh the very middlebox timers that idle-timeout measures.
 */
import { connect, createServer, type Server, type Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { hostPort } from "../addresses.js";
import { TcpkaError } from "../errors.js";
import { formatMs } from "../settings.js";
import type { Endpoint } from "./endpoint.js";

/** Longest line kept while waiting for its end: a ping line is short; anything longer is plain data. */
const MAX_PING_LINE = 64;
const PING = /^ping ([\w.:-]{1,40})\r?$/;

const CONNECT_TIMEOUT_MS = 5000;
const HELLO_TIMEOUT_MS = 3000;

// ---------------------------------------------------------------------------------------------------------
// The server side.

/**
 * What the server does with the bytes of one connection: complete "ping N" lines get "pong N", everything
 * else goes back unchanged and at once. Only a possible start of a ping line is held back until its newline.
 */
export class EchoProtocol {
  private pending = "";

  /** Feed received text; returns what to send back (possibly ""). */
  receive(data: string): string {
    let text = this.pending + data;
    this.pending = "";
    let reply = "";
    for (;;) {
      const nl = text.indexOf("\n");
      if (nl < 0) break;
      const line = text.slice(0, nl);
      text = text.slice(nl + 1);
      const m = PING.exec(line);
      reply += m ? `pong ${m[1]}\n` : `${line}\n`;
    }
    if (text.length > 0 && text.length <= MAX_PING_LINE && "ping ".startsWith(text.slice(0, 5))) {
      this.pending = text; // may still become a ping line
    } else {
      reply += text;
    }
    return reply;
  }
}

export interface EchoServerOptions {
  /** Close a connection silent this long: one that a firewall dropped would never be closed otherwise. */
  closeIdleMs: number;
  /**
   * A connection opened, was found silent for closeIdleMs ("idle", it is closed next) or closed; `peer` is its
   * ADDRESS:PORT.
   */
  onConnection?: (event: "open" | "idle" | "close", peer: string) => void;
}

/** An echo server: EchoProtocol on every connection it accepts, until it is closed. */
export class EchoServer {
  private readonly sockets = new Set<Socket>();
  private readonly server = createServer((s) => this.serve(s));
  private bound = "";

  private constructor(private readonly o: EchoServerOptions) {}

  /**
   * Listen on `where` (every address, IPv4 and IPv6, when its host is undefined). Errors are TcpkaErrors that
   * say why: the address in use, not this host's, a privileged port.
   */
  static async listen(where: Endpoint, o: EchoServerOptions): Promise<EchoServer> {
    const self = new EchoServer(o);
    self.bound = await listenOn(self.server, where);
    return self;
  }

  /** Where it listens, ADDRESS:PORT (the port the kernel chose, if 0 was asked for). */
  get address(): string {
    return this.bound;
  }

  /** Serve until `signal` aborts, then close. */
  async runUntil(signal: AbortSignal): Promise<void> {
    if (!signal.aborted) await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
    await this.close();
  }

  /** Drop every connection and stop listening. */
  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private serve(s: Socket): void {
    const { closeIdleMs, onConnection } = this.o;
    const peer = hostPort(s.remoteAddress ?? "?", s.remotePort ?? 0);
    this.sockets.add(s);
    onConnection?.("open", peer);
    const protocol = new EchoProtocol();
    s.setNoDelay(true);
    s.setEncoding("latin1"); // bytes in, the same bytes out
    s.setTimeout(closeIdleMs, () => {
      onConnection?.("idle", peer);
      s.destroy();
    });
    s.on("data", (d: string) => {
      const reply = protocol.receive(d);
      if (reply) s.write(reply, "latin1");
    });
    s.on("end", () => s.end());
    s.on("error", () => {}); // a reset or a dead path: the connection just ends
    s.on("close", () => {
      this.sockets.delete(s);
      onConnection?.("close", peer);
    });
  }
}

function listenOn(server: Server, where: Endpoint): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) => {
      const at = where.host === undefined ? `port ${where.port}` : hostPort(where.host, where.port);
      const why: Record<string, [string, string]> = {
        EADDRINUSE: ["the address is already in use", "stop what listens there (ss -tlnp) or pick another port"],
        EADDRNOTAVAIL: ["no interface has this address", "use an address of this host (ip -br addr), or none"],
        EACCES: ["permission denied", "ports below 1024 need root or CAP_NET_BIND_SERVICE"],
        ENOTFOUND: ["the host name does not resolve", "use an IP address of this host"],
      };
      const [text, hint] = why[e.code ?? ""] ?? [e.code ?? e.message, "check the address"];
      const code = e.code === "ENOTFOUND" ? 2 : 1;
      reject(
        new TcpkaError(code === 2 ? "usage" : "system", `echo: cannot listen on ${at}: ${text}`, {
          hint,
          exitCode: code,
        }),
      );
    });
    server.listen({ host: where.host, port: where.port }, () => {
      const a = server.address();
      resolve(a && typeof a === "object" ? hostPort(a.address, a.port) : String(a));
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// The client side.

export type PingResult = { alive: true; at: number } | { alive: false; reason: string };

/** A connection to an echo server that answers "ping K" with "pong K" (or echoes it back unchanged). */
export class EchoConnection {
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
