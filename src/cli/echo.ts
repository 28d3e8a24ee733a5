/**
 * `tcpka echo --listen [ADDR:]PORT`: the far end that `tcpka idle-timeout` measures against. The server is
 * probe/echo.ts's EchoServer; this file parses, starts it, and prints.
 */
import { usage } from "../errors.js";
import { EchoServer } from "../probe/echo.js";
import { parseEndpoint } from "../probe/endpoint.js";
import { formatSeconds, parseDurationMs } from "../settings.js";
import { bool, parse, str } from "../ui/args.js";
import type { Out } from "../ui/format.js";
import { stopOnSignals } from "../ui/signals.js";

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

  const server = await EchoServer.listen(where, {
    closeIdleMs,
    onConnection: verbose
      ? (event, peer) => {
          const line =
            event === "idle"
              ? `idle  ${peer}: silent for ${formatSeconds(closeIdleMs / 1000)}, closing`
              : `${event.padEnd(5)} ${peer}`;
          process.stderr.write(`${new Date().toISOString()} ${line}\n`);
        }
      : undefined,
  });
  out.write(
    `tcpka echo: listening on ${server.address}; "ping N" is answered with "pong N", anything else echoed; Ctrl-C stops\n`,
  );
  out.end();

  const stop = stopOnSignals();
  try {
    await server.runUntil(stop.signal);
  } finally {
    stop.dispose();
  }
  return 0;
}
