/**
 * The HTTP endpoint of the metrics: GET /metrics answers a scrape, GET / a line saying where they are, GET
 * /healthz whether tcpka is well without a scrape (for a liveness or readiness probe: 200, or 503 with why; the
 * agent's is well while it reconciles), anything else 404 (405 for another method). An address given as a port alone listens on 127.0.0.1 only: the metrics
 * name processes, containers and pods, so listening wider is the operator's explicit choice.
 */
import { createServer, type Server } from "node:http";
import { isIP } from "node:net";
import prom from "prom-client";
import { TcpkaError, usage } from "../errors.js";
import { type AgentPart, Exporter } from "./exporter.js";
import type { SnapshotOptions } from "./snapshot.js";

export interface ListenAddress {
  host: string;
  port: number;
}

/** "9977", ":9977" and "127.0.0.1:9977" (loopback), "0.0.0.0:9977", "[::]:9977", "[::1]:9977". */
export function parseListen(text: string, flag = "--listen"): ListenAddress {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[0-9.]+)?:)?(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : Number.NaN;
  let host = m?.[1] ?? "127.0.0.1";
  if (host.startsWith("[")) host = host.slice(1, -1);
  if (!m || port < 1 || port > 65535 || isIP(host) === 0) {
    throw usage(
      `${flag} ${text}: want PORT or ADDRESS:PORT (an IP address; [IPv6]:PORT), with a port of 1 to 65535`,
      "e.g. --listen 127.0.0.1:9977, or --listen 0.0.0.0:9977 for every address",
    );
  }
  return { host, port };
}

/** Listen; resolves once the socket is bound (rejects with a TcpkaError saying why not). */
export function serveMetrics(
  at: ListenAddress,
  scrape: () => Promise<string>,
  log: (line: string) => void,
  /** undefined when well, else why not (GET /healthz) */
  unwell: () => string | undefined = () => undefined,
): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("GET only\n");
      return;
    }
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/plain" }).end("tcpka: the metrics are at /metrics\n");
      return;
    }
    if (path === "/healthz") {
      const why = unwell();
      res.writeHead(why === undefined ? 200 : 503, { "content-type": "text/plain" }).end(`${why ?? "ok"}\n`);
      return;
    }
    if (path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: the metrics are at /metrics\n");
      return;
    }
    scrape().then(
      (text) => {
        res.writeHead(200, { "content-type": prom.contentType }).end(req.method === "HEAD" ? undefined : text);
      },
      (e: unknown) => {
        log(`scrape failed: ${(e as Error).message}`);
        res.writeHead(500, { "content-type": "text/plain" }).end("the scrape failed: see tcpka's log\n");
      },
    );
  });
  // A scraper that stops reading must not hold a socket forever.
  server.requestTimeout = 30_000;
  server.headersTimeout = 10_000;
  server.keepAliveTimeout = 60_000;
  return new Promise((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) => {
      const why =
        e.code === "EADDRINUSE"
          ? "the address is in use"
          : e.code === "EADDRNOTAVAIL"
            ? "no interface has that address"
            : e.code === "EACCES"
              ? "not allowed"
              : e.message;
      reject(new TcpkaError("system", `cannot listen on ${hostPort(at)}: ${why}`));
    });
    server.listen(at.port, at.host, () => {
      server.removeAllListeners("error");
      server.on("error", (e) => log(`metrics endpoint: ${e.message}`));
      resolve(server);
    });
  });
}

export function hostPort(at: ListenAddress): string {
  return at.host.includes(":") ? `[${at.host}]:${at.port}` : `${at.host}:${at.port}`;
}

/**
 * Serve the metrics at `listen` until `signal` aborts (the agent's part included when given); returns once
 * listening, with a function that closes the endpoint.
 */
export async function startMetrics(
  listen: string,
  options: SnapshotOptions & { events?: boolean },
  log: (line: string) => void,
  agent?: AgentPart,
  flag = "--listen",
): Promise<{ server: Server; close: () => Promise<void> }> {
  const at = parseListen(listen, flag);
  const exporter = new Exporter({ ...options, log }, agent);
  let server: Server;
  try {
    server = await serveMetrics(
      at,
      () => exporter.scrape(),
      log,
      () => agent?.unwell?.(),
    );
  } catch (e) {
    exporter.close(); // its programs (--events) go with it
    throw e;
  }
  log(`metrics at http://${hostPort(at)}/metrics`);
  return {
    server,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          exporter.close();
          resolve();
        });
      }),
  };
}
