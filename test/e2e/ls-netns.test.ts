/**
 * `tcpka ls --pid` from the host's network namespace on a process in another one (a container's): its
 * sockets are read from its own namespace (the kernel pass made from inside it, or /proc/PID/net/tcp) and their
 * settings exactly, a default being that namespace's sysctl.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
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
  const { tcpCounts } = await import("../../src/inspect/netstat.js");
  const empty = Netns.create(t);
  const closing = Netns.create(t);
  const sleeper = empty.spawn(["python3", "-c", "import sys; print(1, flush=True); sys.stdin.readline()"]);
  await sleeper.line();
  const holder = closing.spawn(["python3", "-c", TIME_WAIT]);
  const port = Number(await holder.line());
  const inum = (ns: Netns) => Number(/net:\[(\d+)\]/.exec(ns.run(["readlink", "/proc/self/ns/net"]))?.[1]);
  const [emptyInum, closingInum] = [inum(empty), inum(closing)];
  assert.deepEqual(tcpCounts(sleeper.pid, emptyInum), { inuse: 0, tw: 0 }, "nothing hashed, nothing in TIME-WAIT");
  assert.deepEqual(tcpCounts(holder.pid, closingInum), { inuse: 0, tw: 1 }, "one TIME-WAIT socket");
  assert.equal(tcpCounts(holder.pid, emptyInum), undefined, "not the namespace it is in");

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

// Three connections, one with keepalive of its own; a forked child holds the same sockets (PR_SET_PDEATHSIG: it
// dies with the holder). With `backlog`, one more connection that nobody accepts: its server end is hashed and
// no process holds it.
const HELD = (backlog: boolean) => `
import ctypes, os, socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
on = socket.create_connection(srv.getsockname())
on.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
on.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
off = socket.create_connection(srv.getsockname())
a, _ = srv.accept(); b, _ = srv.accept()
waiting = socket.create_connection(srv.getsockname()) if ${backlog ? "True" : "False"} else None
if os.fork() == 0:
    ctypes.CDLL(None).prctl(1, 9)
    sys.stdin.readline(); os._exit(0)
print(srv.getsockname()[1], on.getsockname()[1], off.getsockname()[1], waiting.getsockname()[1] if waiting else 0, flush=True)
sys.stdin.readline()
`;

const SYN_PORT = 8081;
const HANDSHAKE = `
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", ${SYN_PORT})); srv.listen()
c = socket.create_connection(("127.0.0.1", ${SYN_PORT}))
print(c.getsockname()[1], flush=True)
sys.stdin.readline()
`;

/**
 * tcpka under strace -y, which names each setns(2)'s namespace: a TCP walk of another namespace is made from inside
 * it. Its output, and how many times it entered namespace `inum` (and came back).
 */
function traced(t: TestContext, argv: readonly string[]) {
  const dir = mkdtempSync(join(tmpdir(), "tcpka-held-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const trace = join(dir, "strace");
  const r = spawnSync(
    "strace",
    ["-f", "-qq", "-y", "-e", "trace=setns", "-e", "signal=none", "-o", trace, process.execPath, ...argv],
    { encoding: "utf8", maxBuffer: 1 << 30 }, // the machine may hold many connections of its own
  );
  assert.equal(r.status, 0, r.stderr);
  const lines = readFileSync(trace, "utf8").split("\n");
  return { r, entered: (inum: number) => lines.filter((l) => l.includes(`net:[${inum}]`)).length };
}

interface FullRow extends Row {
  state: string;
  netns: number;
  inode: number;
  peer_port: number;
  timer_ms: number;
  next_probe_ms: number | null;
  [field: string]: unknown;
}

test("ls --all-netns takes a small namespace's sockets from the owners' walk, and walks one where a socket has no owner", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3", "strace"] })) return;
  const inum = (ns: Netns) => Number(/net:\[(\d+)\]/.exec(ns.run(["readlink", "/proc/self/ns/net"]))?.[1]);
  const whole = Netns.create(t);
  const backlog = Netns.create(t);
  whole.setSysctl("net.ipv4.tcp_keepalive_time", NS_IDLE);
  const wholeHolder = whole.spawn(["python3", "-c", HELD(false)]);
  const backlogHolder = backlog.spawn(["python3", "-c", HELD(true)]);
  const wholePorts = (await wholeHolder.line()).split(" ").map(Number);
  const backlogPorts = (await backlogHolder.line()).split(" ").map(Number);
  // A handshake whose last ACK the firewall drops: the listener keeps a request socket (SYN-RECV), which
  // sockstat does not count.
  const handshake = Netns.create(t);
  handshake.nft(`table inet tcpka_test {
  chain input {
    type filter hook input priority 0;
    tcp dport ${SYN_PORT} tcp flags & ack == ack drop
  }
}
`);
  const handshakeHolder = handshake.spawn(["python3", "-c", HANDSHAKE]);
  await handshakeHolder.line();
  const [wholeInum, backlogInum, handshakeInum] = [inum(whole), inum(backlog), inum(handshake)];

  const argv = [TCPKA, "ls", "--all-netns", "-a", "--json"];
  const { r, entered } = traced(t, argv);
  assert.equal(entered(wholeInum), 0, "every socket of that namespace held: no walk of it");
  assert.equal(entered(backlogInum), 1, "a connection nobody accepted: its namespace is walked");
  assert.equal(entered(handshakeInum), 1, "a request socket: its namespace is walked");

  const oracle = spawnSync(process.execPath, [...argv, "--via", "netlink"], { encoding: "utf8", maxBuffer: 1 << 30 });
  assert.equal(oracle.status, 0, oracle.stderr);
  const rowsOf = (out: string, netns: number) =>
    (JSON.parse(out) as { connections: FullRow[] }).connections.filter((c) => c.netns === netns);
  for (const [netns, ports, holder, n] of [
    [wholeInum, wholePorts, wholeHolder, 5],
    [backlogInum, backlogPorts, backlogHolder, 7],
  ] as const) {
    const rows = rowsOf(r.stdout, netns);
    const expected = rowsOf(oracle.stdout, netns);
    assert.equal(rows.length, n, `the listener and both ends of each connection, once each: ${JSON.stringify(rows)}`);
    const byInode = new Map(expected.map((c) => [c.inode, c]));
    for (const c of rows) {
      if (c.inode === 0) continue; // no file: getsockopt cannot read it (the one nobody accepted, below)
      const o = byInode.get(c.inode);
      assert.ok(o, `${c.state} :${c.local_port} also in sock_diag's dump`);
      // The timers ran on between the two runs; everything else is the same, field by field, but a listener's
      // send queue: /proc/PID/net/tcp, the oracle's way into another namespace, has no maximum backlog there.
      assert.ok(Math.abs(c.timer_ms - o.timer_ms) < 5_000, "the same timer");
      const same = { timer_ms: 0, next_probe_ms: 0, ...(c.state === "LISTEN" ? { send_queue: 0 } : {}) };
      assert.deepEqual({ ...c, ...same }, { ...o, ...same });
    }
    const [, onPort, , waitingPort] = ports;
    const on = rows.find((c) => c.local_port === onPort);
    assert.deepEqual([on?.keepalive, on?.idle_s], [true, 77]);
    for (const c of rows.filter((c) => c.peer_port !== waitingPort || !waitingPort))
      assert.deepEqual(
        [c.processes.length, c.processes.some((p) => p.pid === holder.pid)],
        [2, true],
        `the holder and its child, in one row: ${JSON.stringify(c)}`,
      );
    if (waitingPort) {
      const child = rows.find((c) => c.peer_port === waitingPort);
      assert.deepEqual(
        [child?.state, child?.processes.length, child?.source, child?.idle_s],
        ["ESTAB", 0, "exact", 7200],
        "the connection nobody accepted, from the kernel's walk",
      );
    }
  }
  const request = rowsOf(r.stdout, handshakeInum).filter((c) => c.state === "SYN-RECV");
  assert.deepEqual(
    request.map((c) => c.local_port),
    [SYN_PORT],
    "the request socket, as sock_diag shows it",
  );
  const idle = rowsOf(r.stdout, wholeInum).find((c) => c.local_port === wholePorts[2]);
  assert.equal(idle?.keepalive, false);
});

// A connection held, and one closed by its client first: that end waits in TIME-WAIT, held by no process.
const WITH_TIME_WAIT = `
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
w = socket.create_connection(srv.getsockname()); wa, _ = srv.accept()
port = w.getsockname()[1]
w.close(); wa.close()
print(port, flush=True)
sys.stdin.readline()
`;

test("ls --all-netns holds a namespace with TIME-WAIT sockets unless they are asked for", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3", "strace"] })) return;
  const ns = Netns.create(t);
  const holder = ns.spawn(["python3", "-c", WITH_TIME_WAIT]);
  const port = Number(await holder.line());
  const inum = Number(/net:\[(\d+)\]/.exec(ns.run(["readlink", "/proc/self/ns/net"]))?.[1]);
  const rowsOf = (out: string) =>
    (JSON.parse(out) as { connections: FullRow[] }).connections.filter((c) => c.netns === inum);

  const established = traced(t, [TCPKA, "ls", "--all-netns", "--json"]);
  assert.equal(established.entered(inum), 0, "only ESTABLISHED asked for: held, not walked");
  assert.deepEqual(
    rowsOf(established.r.stdout).map((c) => [c.state, c.processes[0]?.pid]),
    [
      ["ESTAB", holder.pid],
      ["ESTAB", holder.pid],
    ],
  );
  const all = traced(t, [TCPKA, "ls", "--all-netns", "-a", "--json"]);
  assert.equal(all.entered(inum), 1, "TIME-WAIT asked for: walked");
  const waiting = rowsOf(all.r.stdout).filter((c) => c.state === "TIME-WAIT");
  assert.deepEqual(
    waiting.map((c) => c.local_port),
    [port],
  );
});

test("ls --all-netns --no-process holds four namespaces or more: one walk of every process's files, none of theirs", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3", "strace"] })) return;
  const spaces = [0, 1, 2, 3].map(() => Netns.create(t));
  for (const ns of spaces) await ns.spawn(["python3", "-c", WITH_TIME_WAIT]).line();
  const inums = spaces.map((ns) => Number(/net:\[(\d+)\]/.exec(ns.run(["readlink", "/proc/self/ns/net"]))?.[1]));
  const { r, entered } = traced(t, [TCPKA, "ls", "--all-netns", "--no-process", "--json"]);
  const rows = (JSON.parse(r.stdout) as { connections: FullRow[] }).connections;
  for (const inum of inums) {
    assert.equal(entered(inum), 0, `namespace ${inum} held, not walked`);
    const mine = rows.filter((c) => c.netns === inum);
    assert.deepEqual(
      mine.map((c) => [c.state, c.source, c.processes.length]),
      [
        ["ESTAB", "exact", 0],
        ["ESTAB", "exact", 0],
      ],
      "both ends of its connection, exact, no owner asked for",
    );
  }
});
