/**
 * `tcpka echo --listen [ADDR:]PORT`: a small TCP echo server, the far end that `tcpka idle-timeout` measures
 * against. It answers a line "ping N" with "pong N" and echoes anything else as it comes. It never turns
 * keepalive on: its probes would refresh the very middlebox timers that idle-timeout measures.
 */
import { createServer, isIP, type Server, type Socket } from "node:net";
import { TcpkaError, usage } from "../errors.js";
import { parsePort } from "../filter.js";
import { formatSeconds, parseDurationMs } from "../settings.js";
import { bool, parse, str } from "../ui/args.js";
import { hostPort, type Out } from "../ui/format.js";

export const ECHO_HELP = `Usage: tcpka echo --listen [ADDR:]PORT [--close-idle DURATION] [--verbose]

A TCP echo server: the far end for 'tcpka idle-timeout'. Run it on the other side of the firewall, NAT or load
balancer whose idle timeout you want to know, then measure from this side. A line "ping N" is answered with
"pong N"; anything else is echoed back as it comes, so nc or telnet work too. It runs until interrupted
(Ctrl-C, SIGTERM).

It never turns keepalive on for its connections: keepalive probes would refresh the middlebox's idle timer
and hide the timeout being measured.

Options:
      --listen [ADDR:]PORT   where to listen: 7007, :7007, 0.0.0.0:7007, [::]:7007, 192.0.2.7:7007
                             (no address: every address, IPv4 and IPv6)
      --close-idle DURATION  close connections silent this long (default 24h): a connection a firewall dropped
                             is never closed otherwise. Keep it above idle-timeout's --max.
  -v, --verbose              a line on stderr for every connection that opens or closes

Examples:
  tcpka echo --listen 7007                       on the server
  tcpka idle-timeout server.example:7007         on the client, through the firewall
  printf 'ping 1\\n' | nc -q1 192.0.2.7 7007      answers: pong 1
`;

const OPTIONS = {
  listen: { type: "string" },
  "close-idle": { type: "string" },
  verbose: { type: "boolean", short: "v" },
} as const;

/** Longest line kept while waiting for its end: a ping line is short; anything longer is plain data. */
const MAX_PING_LINE = 64;
const PING = /^ping ([\w.:-]{1,40})\r?$/;

export interface Endpoint {
  /** undefined: every address (only for listening). */
  host: string | undefined;
  port: number;
}

const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/**
 * "HOST:PORT", "[IPv6]:PORT", and, when `hostOptional`, "PORT" or ":PORT". The host is an IP address or a DNS
 * name; an IPv6 address needs brackets (the port would be ambiguous otherwise).
 */
export function parseEndpoint(what: string, text: string, hostOptional: boolean): Endpoint {
  const example = hostOptional
    ? "7007, :7007, 198.51.100.7:7007 or [2001:db8::7]:7007"
    : "198.51.100.7:7007, db.internal:5432 or [2001:db8::7]:7007";
  const t = text.trim();
  if (hostOptional && /^:?\d+$/.test(t)) return { host: undefined, port: parsePort(what, t.replace(/^:/, "")) };
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(t);
  if (bracketed) {
    const host = bracketed[1] as string;
    if (isIP(host) !== 6) throw usage(`${what}: [${host}] is not an IPv6 address`, `use ${example}`);
    return { host, port: parsePort(what, bracketed[2] as string) };
  }
  const i = t.lastIndexOf(":");
  if (i < 0) throw usage(`${what}: ${t || "(empty)"} has no port`, `use ${example}`);
  const host = t.slice(0, i);
  if (host.includes(":")) throw usage(`${what}: put an IPv6 address in brackets: [${host}]:${t.slice(i + 1)}`);
  if (host === "" && hostOptional) return { host: undefined, port: parsePort(what, t.slice(i + 1)) };
  if (host === "") throw usage(`${what}: ${t} has no host`, `use ${example}`);
  if (isIP(host) === 0 && (/^[\d.]+$/.test(host) || !HOSTNAME.test(host))) {
    throw usage(`${what}: ${host} is not an IP address or host name`, `use ${example}`);
  }
  return { host, port: parsePort(what, t.slice(i + 1)) };
}

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

export async function runEcho(argv: readonly string[], out: Out): Promise<number> {
  const { values, positionals } = parse("echo", argv, OPTIONS, true);
  if (bool(values, "help")) {
    out.write(ECHO_HELP);
    return 0;
  }
  if (positionals.length) {
    throw usage(
      `echo: unexpected argument ${positionals[0]}`,
      "give the address with --listen, e.g. tcpka echo --listen 7007",
    );
  }
  const listen = str(values, "listen");
  if (listen === undefined) throw usage("echo: --listen [ADDR:]PORT is required", "e.g. tcpka echo --listen 7007");
  const where = parseEndpoint("--listen", listen, true);
  const closeIdleText = str(values, "close-idle") ?? "24h";
  const closeIdleMs = parseDurationMs(closeIdleText);
  if (closeIdleMs === undefined || closeIdleMs < 1000) {
    throw usage(`--close-idle ${closeIdleText}: not a duration of at least 1s`, "e.g. --close-idle 2h");
  }
  const verbose = bool(values, "verbose");

  const log = (line: string) => {
    if (verbose) process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  };
  const sockets = new Set<Socket>();
  const server = createServer((s) => serve(s, closeIdleMs, sockets, log));
  const bound = await listenOn(server, where);
  out.write(
    `tcpka echo: listening on ${bound}; "ping N" is answered with "pong N", anything else echoed; Ctrl-C stops\n`,
  );
  out.end();

  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  for (const s of sockets) s.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return 0;
}

function serve(s: Socket, closeIdleMs: number, sockets: Set<Socket>, log: (line: string) => void): void {
  const peer = hostPort(s.remoteAddress ?? "?", s.remotePort ?? 0);
  sockets.add(s);
  log(`open  ${peer}`);
  const protocol = new EchoProtocol();
  s.setNoDelay(true);
  s.setEncoding("latin1"); // bytes in, the same bytes out
  s.setTimeout(closeIdleMs, () => {
    log(`idle  ${peer}: silent for ${formatSeconds(closeIdleMs / 1000)}, closing`);
    s.destroy();
  });
  s.on("data", (d: string) => {
    const reply = protocol.receive(d);
    if (reply) s.write(reply, "latin1");
  });
  s.on("end", () => s.end());
  s.on("error", () => {}); // a reset or a dead path: the connection just ends
  s.on("close", () => {
    sockets.delete(s);
    log(`close ${peer}`);
  });
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
