/**
 * `tcpka` with no arguments, against real processes in a namespace of its own: a server whose listener has
 * SO_KEEPALIVE with the namespace's defaults (its accepted connections inherit it), a client that set its own
 * idle time, and two clients without keepalive, one with three connections and one with one. The summary must
 * say whose settings make the detection times, suggest fixing the processes of its table in the table's order,
 * and still say something about the connections with keepalive when it cannot read them.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { needs, python3 } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import type { Process } from "../helpers/processes.js";
import { NOBODY } from "../helpers/users.js";

after(() => Netns.destroyAll());

/** The namespace's net.ipv4.tcp_keepalive_time: not the compiled-in 7200, to tell whose value is shown. */
const SYSCTL_IDLE = 1234;
const PORT = 7100;

const SERVER = `
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
srv.bind(("127.0.0.1", ${PORT})); srv.listen(16)
print("ready", flush=True)
held = []
while True:
    held.append(srv.accept()[0])
    print("accepted", flush=True)
`;

/** argv: how many connections, and the idle time to set (keepalive on) or "off". */
const CLIENT = `
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    if sys.argv[2] != "off":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, int(sys.argv[2]))
    s.connect(("127.0.0.1", ${PORT})); held.append(s)
print("ready", flush=True)
sys.stdin.readline()
`;

test("the summary says whose settings it reports, and suggests the processes of its table", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "setpriv", "python3"] })) return;
  const ns = Netns.create(t);
  ns.setSysctl("net.ipv4.tcp_keepalive_time", SYSCTL_IDLE);
  const server = ns.spawn([python3(), "-c", SERVER]);
  assert.equal(await server.line(), "ready");
  const client = async (n: number, idle: string): Promise<Process> => {
    const p = ns.spawn([python3(), "-c", CLIENT, String(n), idle]);
    assert.equal(await p.line(), "ready");
    for (let i = 0; i < n; i++) assert.equal(await server.line(), "accepted");
    return p;
  };
  // Started first, so that its connections come first in the kernel's listing as often as not.
  const one = await client(1, "off");
  const three = await client(3, "off");
  await client(1, "60");

  const r = ns.tcpka([]);
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.split("\n");
  assert.equal(lines[0], "10 established TCP connections in this network namespace");
  // The server's 5 accepted connections use the namespace's values; the client's own idle is its own.
  assert.equal(
    lines[1],
    "  keepalive on    6   dead peer noticed after 12m15s … 31m49s " +
      `(5 with the system default ${SYSCTL_IDLE}s + 75s × 9, 1 with the program's own settings: 60s + 75s × 9)`,
  );
  const rows = lines.filter((l) => /^ {2}python3 /.test(l)).map((l) => l.split(/ {2,}/).slice(2, 4));
  assert.deepEqual(rows, [
    [String(three.pid), "3"],
    [String(one.pid), "1"],
  ]);
  assert.ok(
    lines.includes(`Fix running processes:  sudo tcpka enable --pid ${three.pid} --pid ${one.pid} --idle 60s`),
    r.stdout,
  );

  // Without root none of these settings can be read: the line says so instead of naming a default.
  const nobody = ns.tcpka([], { user: NOBODY });
  assert.equal(nobody.status, 0, nobody.stderr);
  assert.equal(nobody.stdout.split("\n")[1], "  keepalive on    6   settings not readable without root");
});
