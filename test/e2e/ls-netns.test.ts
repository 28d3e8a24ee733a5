/**
 * `tcpka ls --pid` from the host's network namespace on a process in another one (a container's): its
 * sockets are read from its own namespace (the kernel pass made from inside it, or /proc/PID/net/tcp) and their
 * settings exactly, a default being that namespace's sysctl.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { needs } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import { TCPKA } from "../helpers/paths.js";

const HOLDER = `
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
on = socket.create_connection(srv.getsockname())
on.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
on.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
off = socket.create_connection(srv.getsockname())
default = socket.create_connection(srv.getsockname())
default.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
a, _ = srv.accept(); b, _ = srv.accept(); c, _ = srv.accept()
print(on.getsockname()[1], off.getsockname()[1], default.getsockname()[1], flush=True)
sys.stdin.readline()
`;

interface Row {
  local_port: number;
  keepalive: boolean | null;
  source: string;
  idle_s: number | null;
  processes: { pid: number }[];
}

/** That namespace's own net.ipv4.tcp_keepalive_time: what a socket there without an idle time of its own has. */
const NS_IDLE = 4321;

for (const via of ["bpf", "netlink"])
  test(`ls --pid reaches a process in another network namespace, exactly (--via ${via})`, async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
    const ns = Netns.create(t);
    ns.setSysctl("net.ipv4.tcp_keepalive_time", NS_IDLE);
    const holder = ns.spawn(["python3", "-c", HOLDER]);
    const [onPort, offPort, defaultPort] = (await holder.line()).split(" ").map(Number);

    // From the host namespace: the holder's sockets are not in it, yet --pid finds them.
    const argv = [TCPKA, "ls", "--pid", String(holder.pid), "--json", "--via", via];
    const r = spawnSync(process.execPath, argv, { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    const rows = (JSON.parse(r.stdout) as { connections: Row[] }).connections;
    const on = rows.find((c) => c.local_port === onPort);
    const off = rows.find((c) => c.local_port === offPort);
    assert.ok(on && off, `both client ends listed: ${r.stdout}`);
    assert.deepEqual([on.source, on.keepalive, on.idle_s], ["exact", true, 77]);
    assert.deepEqual([off.source, off.keepalive], ["exact", false]);
    const byDefault = rows.find((c) => c.local_port === defaultPort);
    assert.deepEqual([byDefault?.keepalive, byDefault?.idle_s], [true, NS_IDLE], "its own namespace's sysctl");
    assert.equal(rows.length, 6, "both ends of the three connections, and nothing from the host");
    for (const c of rows) assert.equal(c.processes[0]?.pid, holder.pid);
  });

// A connection closed by this end first: its socket stays in TIME-WAIT, the namespace's only TCP socket.
const TIME_WAIT = `
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
port = c.getsockname()[1]
c.close(); a.close(); srv.close()
print(port, flush=True)
sys.stdin.readline()
`;

test("ls --all-netns skips only the namespaces with no TCP socket: a TIME-WAIT one is still walked", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
  const { tcpEmpty } = await import("../../src/inspect/netstat.js");
  const empty = Netns.create(t);
  const closing = Netns.create(t);
  const sleeper = empty.spawn(["python3", "-c", "import sys; print(1, flush=True); sys.stdin.readline()"]);
  await sleeper.line();
  const holder = closing.spawn(["python3", "-c", TIME_WAIT]);
  const port = Number(await holder.line());
  const inum = (ns: Netns) => Number(/net:\[(\d+)\]/.exec(ns.run(["readlink", "/proc/self/ns/net"]))?.[1]);
  const [emptyInum, closingInum] = [inum(empty), inum(closing)];
  assert.equal(tcpEmpty(sleeper.pid, emptyInum), true, "nothing hashed, nothing in TIME-WAIT");
  assert.equal(tcpEmpty(holder.pid, closingInum), false, "one TIME-WAIT socket");
  assert.equal(tcpEmpty(holder.pid, emptyInum), false, "not the namespace it is in");

  const r = spawnSync(process.execPath, [TCPKA, "ls", "--all-netns", "-a", "--json"], {
    encoding: "utf8",
    maxBuffer: 1 << 30, // the machine may hold many connections of its own
  });
  assert.equal(r.status, 0, r.stderr);
  const rows = (JSON.parse(r.stdout) as { connections: (Row & { state: string; netns: number })[] }).connections;
  const waiting = rows.filter((c) => c.netns === closingInum);
  assert.deepEqual(
    waiting.map((c) => [c.state, c.local_port]),
    [["TIME-WAIT", port]],
    "the TIME-WAIT socket of a namespace with nothing else",
  );
  assert.equal(rows.filter((c) => c.netns === emptyInum).length, 0);
});
