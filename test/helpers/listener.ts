/** Peers in this test process: a TCP listener that accepts and holds connections, and a connection to a port. */
import { connect, createServer, type Server, type Socket } from "node:net";
import type { Scope } from "./scope.js";

export interface Listener {
  port: number;
  host: string;
  /** Connections accepted so far (still open unless the peer closed them). */
  sockets: Socket[];
  /** Data received per connection, in accept order. */
  received: string[];
  /** Resolves once `n` connections have been accepted (and each has sent something when `withData`). */
  accepted(n: number, withData?: boolean, timeoutMs?: number): Promise<void>;
}

/**
 * A TCP listener in this process on `host` and an ephemeral port. It accepts and holds every connection until
 * the scope ends (a program that connects never has to wait for it); the test answers through `sockets`. The test
 * must not block its event loop (spawnSync) while a program talks to it.
 */
export async function listener(scope: Scope, host = "127.0.0.1"): Promise<Listener> {
  const sockets: Socket[] = [];
  const received: string[] = [];
  const waiters: (() => void)[] = [];
  const server: Server = createServer((s) => {
    const i = sockets.push(s) - 1;
    received[i] = "";
    s.on("error", () => {});
    s.setEncoding("utf8");
    s.on("data", (d: string) => {
      received[i] += d;
      for (const w of waiters.splice(0)) w();
    });
    for (const w of waiters.splice(0)) w();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host, port: 0, backlog: 4096 }, resolve);
  });
  scope.after(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("listener: no address");
  return {
    port: address.port,
    host,
    sockets,
    received,
    async accepted(n, withData = false, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      const ok = () => sockets.length >= n && (!withData || received.slice(0, n).every((r) => r !== ""));
      while (!ok()) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`listener ${host}:${address.port}: ${sockets.length} of ${n} connections`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
    },
  };
}

/** A connection from this process to 127.0.0.1:`port`, once it is established. */
export function connectTo(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: "127.0.0.1", port }, () => resolve(s));
    s.once("error", reject);
  });
}
