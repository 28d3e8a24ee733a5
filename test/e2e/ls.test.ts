/**
 * `tcpka ls` against the real kernel. In a fresh network namespace, a python process holds TCP sockets in every
 * keepalive situation and reports what getsockopt says about each; a second one, named tcpka-holder, holds one
 * more. tcpka must report exactly that, agree with `ss -tanoe`, read the same through netlink and /proc, print
 * IPv6 and IPv4-mapped addresses right, filter exactly, and fall back to the timer hint without root.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import { needs } from "../helpers/env.js";
import { ssTimers } from "../helpers/keepalive.js";
import { Netns } from "../helpers/netns.js";
import type { Process } from "../helpers/processes.js";
import { NOBODY, type User } from "../helpers/users.js";

after(() => Netns.destroyAll());

const NEEDS = { root: true, tools: ["ip", "nft", "ss", "python3", "setpriv"] };
/** The namespace's net.ipv4.tcp_keepalive_time: not the compiled-in 7200, to show whose value is reported. */
const SYSCTL_IDLE = 1234;
/** The peer of the "silenced" connection: nftables drops what reaches it, so a retransmission stays pending. */
const SILENT = { address: "198.18.0.1", port: 7004 };
/** Time left on a timer moves between two reads (and ss rounds it): allowed difference, in ms. */
const TOLERANCE_MS = 2000;

/** Shared by both python processes: make sockets (kept in `held` by label), and report on every one of them. */
const PY_PRELUDE = `
import ctypes, json, os, socket, sys
SOL, TCP = socket.SOL_SOCKET, socket.IPPROTO_TCP
OPTS = {"idle": socket.TCP_KEEPIDLE, "interval": socket.TCP_KEEPINTVL, "count": socket.TCP_KEEPCNT,
        "user_timeout_ms": socket.TCP_USER_TIMEOUT}
held = {}

def tcp(label, address, keepalive=False, **opts):
    s = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    if keepalive:
        s.setsockopt(SOL, socket.SO_KEEPALIVE, 1)
    for name, value in opts.items():
        s.setsockopt(TCP, OPTS[name], value)
    held[label] = s
    return s

def listen(label, address, **opts):
    s = tcp(label, address, **opts)
    s.bind(address)
    s.listen()
    return s

def connect(label, listener, address, **opts):
    tcp(label, address, **opts).connect(address)
    held[label + ":accepted"] = listener.accept()[0]

def report():
    out = {}
    for label, s in held.items():
        listening = s.getsockopt(SOL, socket.SO_ACCEPTCONN) == 1
        out[label] = {
            "fd": s.fileno(), "inode": os.fstat(s.fileno()).st_ino, "listening": listening,
            "family": 6 if s.family == socket.AF_INET6 else 4,
            "local": list(s.getsockname()[:2]), "peer": None if listening else list(s.getpeername()[:2]),
            "keepalive": s.getsockopt(SOL, socket.SO_KEEPALIVE) == 1,
            **{name: s.getsockopt(TCP, opt) for name, opt in OPTS.items()},
        }
    print(json.dumps(out), flush=True)
`;

const PY_FIXTURE = `${PY_PRELUDE}
plain = listen("listen-plain", ("127.0.0.1", 7001))
keepalive_listener = listen("listen-keepalive", ("127.0.0.1", 7002), keepalive=True, idle=90)
v6 = listen("listen-v6", ("::1", 7003))
silent = listen("listen-silent", ("${SILENT.address}", ${SILENT.port}))
connect("idle-60", plain, ("127.0.0.1", 7001), keepalive=True, idle=60)
connect("idle-300", plain, ("127.0.0.1", 7001), keepalive=True, idle=300)
connect("idle-sysctl", plain, ("127.0.0.1", 7001), keepalive=True)
connect("tuned", plain, ("127.0.0.1", 7001), keepalive=True, idle=120, interval=10, count=4, user_timeout_ms=150000)
connect("off-1", plain, ("127.0.0.1", 7001))
connect("off-2", plain, ("127.0.0.1", 7001))
connect("mapped", plain, ("::ffff:127.0.0.1", 7001), keepalive=True, idle=45)
connect("to-keepalive-listener", keepalive_listener, ("127.0.0.1", 7002))
connect("v6", v6, ("::1", 7003), keepalive=True, idle=75)
connect("silenced", silent, ("${SILENT.address}", ${SILENT.port}), keepalive=True, idle=600)
print("ready", flush=True)
sys.stdin.readline()  # meanwhile the test silences the peer and starts tcpka-holder, which connects to 7001
plain.settimeout(10)
held["holder:accepted"] = plain.accept()[0]
held["silenced"].send(b"x")  # never acknowledged
report()
sys.stdin.readline()  # hold everything until killed
`;

const PY_HOLDER = `${PY_PRELUDE}
ctypes.CDLL(None).prctl(15, b"tcpka-holder")  # PR_SET_NAME: a comm of its own, for --comm
tcp("holder", ("127.0.0.1", 7001)).connect(("127.0.0.1", 7001))
report()
sys.stdin.readline()
`;

/**
 * Seconds until a vanished peer is noticed (tcp_keepalive_timer): idle + interval × count, or with
 * TCP_USER_TIMEOUT the first probe time past it. Sockets not listed have keepalive off: never.
 */
const DEAD_PEER_AFTER: Readonly<Record<string, number>> = {
  "listen-keepalive": 90 + 75 * 9, // what the connections it accepts inherit
  "idle-60": 60 + 75 * 9,
  "idle-300": 300 + 75 * 9,
  "idle-sysctl": SYSCTL_IDLE + 75 * 9,
  tuned: 120 + 10 * 3, // the 150 s user timeout ends it at the third probe, before count=4 (160 s)
  mapped: 45 + 75 * 9,
  "to-keepalive-listener:accepted": 90 + 75 * 9, // inherited from the listener
  v6: 75 + 75 * 9,
  silenced: 600 + 75 * 9,
};

/** What a python process reports about one of its sockets: getsockopt, fstat, getsockname, getpeername. */
interface Held {
  label: string;
  pid: number;
  fd: number;
  inode: number;
  listening: boolean;
  family: 4 | 6;
  local: [string, number];
  peer: [string, number] | null;
  keepalive: boolean;
  idle: number;
  interval: number;
  count: number;
  user_timeout_ms: number;
}

/** The fields of a `tcpka ls --json` connection that these tests read (connectionJsonText in src/ui/connections.ts). */
interface Conn {
  state: string;
  family: number;
  local_address: string;
  local_port: number;
  peer_address: string;
  peer_port: number;
  inode: number;
  uid: number;
  keepalive: boolean | null;
  source: string;
  timer: string;
  timer_ms: number;
  timer_count: number;
  idle_s: number | null;
  interval_s: number | null;
  count: number | null;
  user_timeout_ms: number | null;
  dead_peer_after_s: number | null;
  processes: { pid: number; comm: string; fd: number }[];
}

interface Fixture {
  ns: Netns;
  python: Process;
  holder: Process;
  /** Every socket of the namespace: python's and tcpka-holder's. */
  sockets: Held[];
}

let fixture: Promise<Fixture> | undefined;

/** The namespace and its two processes, made by the first test that runs and shared by all of this file. */
function lab(): Promise<Fixture> {
  fixture ??= (async () => {
    const ns = Netns.create();
    ns.setSysctl("net.ipv4.tcp_keepalive_time", SYSCTL_IDLE);
    ns.ip("addr", "add", `${SILENT.address}/32`, "dev", "lo");
    // A 100 s minimum RTO towards the silent peer: the pending retransmission neither fires nor backs off while
    // the tests compare readings (with the default 200 ms it would, between two reads).
    ns.ip("route", "replace", "local", SILENT.address, "dev", "lo", "table", "local", "rto_min", "100s");
    const python = ns.spawn(["python3", "-c", PY_FIXTURE]);
    assert.equal(await python.line(), "ready");
    // Dropped on the peer's input: on the client's output the send would fail locally, and the kernel would arm
    // the zero-window probe timer ("persist") instead of a retransmission.
    ns.nft(`table inet tcpka_test {
      chain input { type filter hook input priority 0; ip daddr ${SILENT.address} tcp dport ${SILENT.port} drop; }
    }`);
    const holder = ns.spawn(["python3", "-c", PY_HOLDER]);
    const sockets = reported(await holder.line(), holder.pid);
    python.send("go\n");
    sockets.push(...reported(await python.line(), python.pid));
    return { ns, python, holder, sockets };
  })();
  return fixture;
}

function reported(line: string, pid: number): Held[] {
  const report = JSON.parse(line) as Record<string, Omit<Held, "label" | "pid">>;
  return Object.entries(report).map(([label, s]) => ({ label, pid, ...s }));
}

function held(f: Fixture, label: string): Held {
  const s = f.sockets.find((x) => x.label === label);
  assert.ok(s, `the fixture holds ${label}`);
  return s;
}

function ls(ns: Netns, args: readonly string[], user?: User): Conn[] {
  const r = ns.tcpka(["ls", ...args, "--json"], { user });
  assert.equal(r.status, 0, r.stderr);
  return (JSON.parse(r.stdout) as { connections: Conn[] }).connections;
}

function byInode(conns: readonly Conn[]): Map<number, Conn> {
  return new Map(conns.map((c) => [c.inode, c]));
}

function listed(conns: ReadonlyMap<number, Conn>, s: Held): Conn {
  const c = conns.get(s.inode);
  assert.ok(c, `${s.label} (inode ${s.inode}) is listed`);
  return c;
}

/** The timer the kernel shows: none on a listener, the retransmission on "silenced", keepalive where it is on. */
function expectedTimer(s: Held): "off" | "on" | "keepalive" {
  if (s.label === "silenced") return "on";
  return s.keepalive && !s.listening ? "keepalive" : "off";
}

function near(actualMs: number, fromMs: number, toMs: number, what: string): void {
  assert.ok(actualMs >= fromMs - TOLERANCE_MS && actualMs <= toMs + TOLERANCE_MS, `${what}: ${actualMs} ms`);
}

/**
 * Both ways of reading settings: the kernel pass (one BPF iterator over the TCP table) and sock_diag with
 * getsockopt on each owned socket, which stays for unprivileged users and kernels without BTF.
 */
const VIAS = ["bpf", "netlink"] as const;

for (const via of VIAS)
  test(`ls --all --json reports every socket exactly as getsockopt in its owner reads it (--via ${via})`, async (t) => {
    if (!needs(t, NEEDS)) return;
    const f = await lab();
    const r = f.ns.tcpka(["ls", "--all", "--json", "--via", via]);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { defaults: { idle_s: number }; connections: Conn[] };
    assert.equal(out.defaults.idle_s, SYSCTL_IDLE);
    assert.equal(out.connections.length, f.sockets.length, "nothing but the fixture's sockets");
    const conns = byInode(out.connections);
    for (const s of f.sockets) {
      const c = listed(conns, s);
      const comm = readFileSync(`/proc/${s.pid}/comm`, "utf8").trim();
      assert.deepEqual(
        {
          state: c.state,
          family: c.family,
          local: [c.local_address, c.local_port],
          peer: s.listening ? null : [c.peer_address, c.peer_port],
          source: c.source,
          keepalive: c.keepalive,
          idle: c.idle_s,
          interval: c.interval_s,
          count: c.count,
          user_timeout_ms: c.user_timeout_ms,
          dead_peer_after_s: c.dead_peer_after_s,
          processes: c.processes,
        },
        {
          state: s.listening ? "LISTEN" : "ESTAB",
          family: s.family,
          local: s.local,
          peer: s.peer,
          source: "exact",
          keepalive: s.keepalive,
          idle: s.idle,
          interval: s.interval,
          count: s.count,
          user_timeout_ms: s.user_timeout_ms,
          dead_peer_after_s: DEAD_PEER_AFTER[s.label] ?? null,
          processes: [{ pid: s.pid, comm, fd: s.fd }],
        },
        s.label,
      );
    }
    // The socket that set no idle time of its own reports the namespace's sysctl.
    assert.equal(listed(conns, held(f, "idle-sysctl")).idle_s, SYSCTL_IDLE);
  });

for (const via of VIAS)
  test(`timer fields match ss -tanoe; a pending retransmission shows 'on' and keepalive stays exact (--via ${via})`, async (t) => {
    if (!needs(t, NEEDS)) return;
    const f = await lab();
    // ss -e under ip netns exec complains on stderr that it cannot find the cgroup2 mount: ignored.
    const ss = ssTimers(f.ns.run(["ss", "-tanoe"]));
    const conns = byInode(ls(f.ns, ["--all", "--via", via]));
    for (const s of f.sockets) {
      const c = listed(conns, s);
      const timer = ss.get(s.inode);
      assert.notEqual(timer, undefined, `ss lists ${s.label}`);
      assert.deepEqual(
        [c.timer, c.timer_count],
        [timer?.kind ?? "off", timer?.count ?? 0],
        `${s.label}: tcpka and ss agree on the timer`,
      );
      assert.equal(c.timer, expectedTimer(s), s.label);
      if (timer) near(c.timer_ms, timer.fromMs, timer.toMs, `${s.label}: time left, ss ${timer.fromMs} ms`);
    }
    const silenced = listed(conns, held(f, "silenced"));
    assert.deepEqual([silenced.timer, silenced.keepalive, silenced.source], ["on", true, "exact"]);
  });

/**
 * Every field of `ls --json` from the kernel pass and from sock_diag + getsockopt, socket by socket; time left
 * on a timer moves between the two reads. `sockets`: how many the namespace is known to hold.
 */
function samePaths(ns: Netns, sockets: number): void {
  const kernel = ls(ns, ["--all", "--via", "bpf"]);
  const oracle = ls(ns, ["--all", "--via", "netlink"]);
  assert.equal(kernel.length, sockets, JSON.stringify(kernel));
  assert.equal(oracle.length, sockets, JSON.stringify(oracle));
  // Found by addresses: a socket that no file holds (TIME-WAIT, an orphan) has inode 0.
  const key = (c: Conn) => `${c.state} ${c.local_address}:${c.local_port} ${c.peer_address}:${c.peer_port}`;
  const byKey = new Map(oracle.map((c) => [key(c), c]));
  for (const k of kernel) {
    const o = byKey.get(key(k));
    assert.ok(o, `sock_diag lists ${key(k)}`);
    const { timer_ms: a, next_probe_ms: _a, ...kernelFacts } = k as Conn & { next_probe_ms: number | null };
    const { timer_ms: b, next_probe_ms: _b, ...oracleFacts } = o as Conn & { next_probe_ms: number | null };
    assert.deepEqual(kernelFacts, oracleFacts, key(k));
    near(a, b, b, `${key(k)}: time left, ${b} ms through sock_diag`);
  }
}

test("the kernel pass and sock_diag with getsockopt agree field for field on every socket", async (t) => {
  if (!needs(t, NEEDS)) return;
  const f = await lab();
  samePaths(f.ns, f.sockets.length);
  // As root on a kernel with BTF, the kernel pass is what ls takes by itself, and its JSON says so.
  const via = (args: string[]) => {
    const r = f.ns.tcpka(["ls", "--json", ...args]);
    assert.equal(r.status, 0, r.stderr);
    return (JSON.parse(r.stdout) as { summary: { via: string } }).summary.via;
  };
  assert.deepEqual([via([]), via(["--via", "netlink"]), via(["--via", "proc"])], ["bpf", "netlink", "proc"]);
});

test("the netlink reader and the /proc/net/tcp{,6} fallback agree", async (t) => {
  if (!needs(t, NEEDS)) return;
  const f = await lab();
  const netlink = ls(f.ns, ["--all", "--via", "netlink"]);
  const proc = byInode(ls(f.ns, ["--all", "--via", "proc"]));
  assert.equal(proc.size, netlink.length);
  const facts = (c: Conn) => [
    c.state,
    c.family,
    c.local_address,
    c.local_port,
    c.peer_address,
    c.peer_port,
    c.uid,
    c.inode,
    c.timer,
    c.timer_count,
  ];
  for (const a of netlink) {
    const b = proc.get(a.inode);
    assert.ok(b, `/proc lists inode ${a.inode}`);
    assert.deepEqual(facts(b), facts(a));
    near(b.timer_ms, a.timer_ms, a.timer_ms, `inode ${a.inode}: /proc time left, netlink ${a.timer_ms} ms`);
  }
});

test("IPv6 and IPv4-mapped addresses print right in the table and in JSON", async (t) => {
  if (!needs(t, NEEDS)) return;
  const f = await lab();
  const r = f.ns.tcpka(["ls", "--all"]);
  assert.equal(r.status, 0, r.stderr);
  /** LOCAL and PEER of the table row of a socket, found by its PROCESS column ("comm[pid] fd N"). */
  const row = (s: Held) => {
    const line = r.stdout.split("\n").find((l) => l.endsWith(`[${s.pid}] fd ${s.fd}`));
    assert.ok(line, `a row for ${s.label}`);
    return line.split(/ {2,}/).slice(1, 3);
  };
  const mapped = held(f, "mapped");
  const v6 = held(f, "v6");
  assert.deepEqual(row(mapped), [`[::ffff:127.0.0.1]:${mapped.local[1]}`, "[::ffff:127.0.0.1]:7001"]);
  assert.deepEqual(row(held(f, "mapped:accepted")), ["127.0.0.1:7001", `127.0.0.1:${mapped.local[1]}`]);
  assert.deepEqual(row(v6), [`[::1]:${v6.local[1]}`, "[::1]:7003"]);

  const conns = byInode(ls(f.ns, []));
  const json = (s: Held) => {
    const c = listed(conns, s);
    return [c.family, c.local_address, c.peer_address];
  };
  assert.deepEqual(json(mapped), [6, "::ffff:127.0.0.1", "::ffff:127.0.0.1"]);
  assert.deepEqual(json(v6), [6, "::1", "::1"]);
});

test("filters select exactly the right sockets", async (t) => {
  if (!needs(t, NEEDS)) return;
  const f = await lab();
  const peer = (s: Held) => s.peer?.[0] ?? "";
  const established = (s: Held) => !s.listening;
  const cases: [string[], (s: Held) => boolean][] = [
    [["--no-keepalive"], (s) => established(s) && !s.keepalive],
    [["--all", "--no-keepalive"], (s) => !s.keepalive],
    [["--dport", "7001"], (s) => s.peer?.[1] === 7001],
    [
      ["--dst", "198.18.0.0/15", "--dport", String(SILENT.port)],
      (s) => peer(s) === SILENT.address && s.peer?.[1] === SILENT.port,
    ],
    [["--dst", "127.0.0.0/8"], (s) => /^(::ffff:)?127\./.test(peer(s))], // a mapped peer is an IPv4 peer
    [["--dst", "::1"], (s) => peer(s) === "::1"],
    [["-l"], (s) => s.listening],
    [["--all", "-6"], (s) => s.family === 6],
    [["--pid", String(f.python.pid)], (s) => established(s) && s.pid === f.python.pid],
    [["--pid", String(f.holder.pid)], (s) => s.pid === f.holder.pid],
    [["--comm", "tcpka-holder"], (s) => s.pid === f.holder.pid],
  ];
  const sorted = (inodes: number[]) => inodes.sort((a, b) => a - b);
  for (const [args, selects] of cases) {
    const want = sorted(f.sockets.filter(selects).map((s) => s.inode));
    assert.notEqual(want.length, 0, `ls ${args.join(" ")} is expected to select something`);
    assert.deepEqual(sorted(ls(f.ns, args).map((c) => c.inode)), want, `ls ${args.join(" ")}`);
  }
});

test("without root, ls falls back to the timer hint and says how to get exact answers", async (t) => {
  if (!needs(t, NEEDS)) return;
  const f = await lab();
  const conns = byInode(ls(f.ns, ["--all"], NOBODY));
  for (const s of f.sockets) {
    const c = listed(conns, s);
    const timer = expectedTimer(s);
    // The timer tells on an idle established connection only: not on a listener, nor behind a retransmission.
    const hint = s.listening || timer === "on" ? null : timer === "keepalive";
    assert.deepEqual([c.source, c.keepalive, c.processes], ["timer", hint, []], s.label);
  }
  const r = f.ns.tcpka(["ls", "--all"], { user: NOBODY });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^.*marked '\?'.*run as root.*$/m);
});

test("without root, ls --pid and --comm for another user's process say it could not be read, exit 1", async (t) => {
  if (!needs(t, NEEDS)) return;
  const f = await lab();
  const cases: [string[], number][] = [
    [["--pid", String(f.python.pid)], f.python.pid],
    [["--comm", "tcpka-holder"], f.holder.pid],
    [["--comm", "tcpka-holder", "--json"], f.holder.pid],
  ];
  for (const [args, pid] of cases) {
    const r = f.ns.tcpka(["ls", ...args], { user: NOBODY });
    assert.equal(r.status, 1, `ls ${args.join(" ")}: ${r.stdout} ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^tcpka: cannot reach the sockets of [^\\n]*\\[${pid}\\]: permission denied\\n`));
    assert.match(r.stderr, /^hint: run as root/m);
    assert.doesNotMatch(r.stdout, /no TCP sockets match/);
  }
  // A name that no process has is still an empty answer, not an error.
  const none = f.ns.tcpka(["ls", "--comm", "no-such-name"], { user: NOBODY });
  assert.deepEqual([none.status, none.stdout], [0, "no TCP sockets match\n"]);
});

/** One established connection with keepalive on one end, a listener without, and one socket in each closing state. */
const PY_STATES = `
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 7010)); srv.listen()
on = socket.socket(); on.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1); on.connect(("127.0.0.1", 7010))
accepted = srv.accept()[0]
closing = socket.create_connection(("127.0.0.1", 7010)); close_wait = srv.accept()[0]
closing.close()  # this end: FIN-WAIT-2 (orphaned), the accepted end: CLOSE-WAIT
done = socket.create_connection(("127.0.0.1", 7010)); active = srv.accept()[0]
active.close(); done.close()  # the end that closed first: TIME-WAIT
print("ready", flush=True)
sys.stdin.readline()
`;

test("ls -a counts each state for what it means: only established connections can lack keepalive", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = ns.spawn(["python3", "-c", PY_STATES]);
  assert.equal(await p.line(), "ready");

  const r = ns.tcpka(["ls", "-a"]);
  assert.equal(r.status, 0, r.stderr);
  const comm = readFileSync(`/proc/${p.pid}/comm`, "utf8").trim();
  const footer = r.stdout.split("\n").filter((l) => l && !/^[A-Z0-9-]+ {2}/.test(l));
  assert.deepEqual(footer.slice(0, 2), [
    `2 connections: 1 with keepalive, 1 without (${comm}[${p.pid}])`,
    "1 listening socket: 0 with keepalive, 1 without; accepted connections inherit their listener's",
  ]);
  assert.match(footer[2]!, /^3 sockets opening or closing \((?=.*1 TIME-WAIT)(?=.*1 CLOSE-WAIT)(?=.*1 FIN-WAIT-2).*\)/);
  assert.equal(footer[3], "a dead peer is never noticed on 1 connection without keepalive");
  assert.equal(footer.length, 4, r.stdout);
  // The connection without keepalive shares its settings with the listener: it still says "never", the
  // listener "-" (a cell once made for one was shown for the other).
  const cells = (prefix: string) =>
    r.stdout
      .split("\n")
      .filter((l) => l.startsWith(prefix))
      .map((l) => l.split(/ {2,}/).slice(3, 5));
  assert.deepEqual(cells("LISTEN "), [["off", "-"]], r.stdout);
  assert.deepEqual(
    cells("ESTAB ").sort(),
    [
      ["off", "never"],
      ["on 7200s/75s/9", "2h11m15s"],
    ],
    r.stdout,
  );
  const timeWait = r.stdout.split("\n").find((l) => l.startsWith("TIME-WAIT "));
  assert.equal(timeWait?.split(/ {2,}/)[3], "-", "a TIME-WAIT socket has no keepalive to show");
  // The sockets that no process holds (TIME-WAIT, the orphan in FIN-WAIT-2) are there on both paths, alike.
  samePaths(ns, 6);

  const json = ns.tcpka(["ls", "-a", "--json"]);
  assert.equal(json.status, 0, json.stderr);
  const { summary } = JSON.parse(json.stdout) as { summary: Record<string, unknown> };
  assert.deepEqual(
    {
      connections: summary.connections,
      states: summary.states,
      established: summary.established,
      keepalive: [summary.keepalive_on, summary.keepalive_off, summary.keepalive_unknown],
      listening: [summary.listening, summary.listening_keepalive_on, summary.listening_keepalive_off],
      without_keepalive: summary.without_keepalive,
    },
    {
      connections: 6,
      states: { ESTAB: 2, LISTEN: 1, "TIME-WAIT": 1, "CLOSE-WAIT": 1, "FIN-WAIT-2": 1 },
      established: 2,
      keepalive: [1, 1, 0],
      listening: [1, 0, 1],
      without_keepalive: [{ process: `${comm}[${p.pid}]`, count: 1 }],
    },
  );
});

test("a plain ls that finds no connection says what its default left out; a filter's empty answer stays 'no match'", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const empty = ns.tcpka(["ls"]);
  assert.deepEqual([empty.status, empty.stdout, empty.stderr], [0, "no established TCP connections\n", ""]);
  const p = ns.spawn([
    "python3",
    "-c",
    `import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 7020)); srv.listen()
print("ready", flush=True); sys.stdin.readline()`,
  ]);
  assert.equal(await p.line(), "ready");
  for (const args of [["ls"], ["ls", "-w"]]) {
    const r = ns.tcpka(args);
    assert.deepEqual(
      [r.status, r.stdout],
      [0, "no established TCP connections; 1 other TCP socket (listening, opening or closing): tcpka ls -a lists it\n"],
      args.join(" "),
    );
  }
  const filtered = ns.tcpka(["ls", "--dport", "9"]);
  assert.deepEqual([filtered.status, filtered.stdout], [0, "no TCP sockets match\n"]);
  // What the hint points to lists it.
  assert.match(ns.tcpka(["ls", "-a"]).stdout, /^LISTEN +127\.0\.0\.1:7020 /m);
});

/** Typical IPv4 connections: addresses of 14 characters, a process name of 15, keepalive on and off. */
const PY_WIDE = `
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"billing-workers")  # PR_SET_NAME: 15 characters, the most a name can have
srv = socket.socket(); srv.bind(("198.18.100.201", 5432)); srv.listen()
held = []
for keepalive in (True, False):
    s = socket.socket(); s.bind(("198.18.100.200", 0))
    if keepalive:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.connect(("198.18.100.201", 5432)); held += [s, srv.accept()[0]]
print("ready", flush=True)
sys.stdin.readline()
`;

test("ls rows of typical IPv4 connections fit 120 columns; --wide shows every column", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  for (const address of ["198.18.100.200/32", "198.18.100.201/32"]) ns.ip("addr", "add", address, "dev", "lo");
  const p = ns.spawn(["python3", "-c", PY_WIDE]);
  assert.equal(await p.line(), "ready");

  const table = (args: string[]) => {
    const r = ns.tcpka(["ls", ...args]);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.split("\n");
    const rows = lines.filter((l) => l.startsWith("ESTAB "));
    assert.equal(rows.length, 4, r.stdout);
    return { header: lines[0]!.split(/ {2,}/), rows, all: [lines[0]!, ...rows] };
  };
  const normal = table([]);
  assert.deepEqual(normal.header, ["STATE", "LOCAL", "PEER", "KEEPALIVE", "DEAD PEER AFTER", "PROCESS"]);
  for (const line of normal.all) assert.ok(line.length <= 120, `${line.length} columns: ${line}`);
  const client = normal.rows.find((l) => l.includes(" on "));
  assert.deepEqual(client?.split(/ {2,}/).slice(3, 6), [
    "on 7200s/75s/9",
    "2h11m15s",
    `billing-workers[${p.pid}] fd 4`,
  ]);

  const wide = table(["--wide"]);
  assert.deepEqual(wide.header, [
    "STATE",
    "LOCAL",
    "PEER",
    "KEEPALIVE",
    "NEXT PROBE",
    "PROBES",
    "IDLE/INTVL/CNT",
    "USER TIMEOUT",
    "DEAD PEER AFTER",
    "PROCESS",
  ]);
  const wideClient = wide.rows.find((l) => / on {2}/.test(l))?.split(/ {2,}/);
  assert.deepEqual([wideClient?.[3], wideClient?.[5], wideClient?.[6], wideClient?.[7]], ["on", "0", "7200/75/9", "-"]);
  assert.match(wideClient?.[4] ?? "", /^(1h59m|2h)/, "the next probe, in about 2 hours");
  assert.deepEqual(table(["-w"]).header, wide.header);
});

/** A listener and a connection, both ends held by the parent and, after fork(), by its child too. */
const PY_SHARED = `
import os, socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 7020)); srv.listen()
c = socket.create_connection(("127.0.0.1", 7020)); a = srv.accept()[0]
child = os.fork()
if child == 0:
    sys.stdin.readline(); os._exit(0)
print(child, srv.fileno(), c.fileno(), a.fileno(), flush=True)
sys.stdin.readline()
`;

test("a socket that fork() shared lists every owner, in pid order, on both paths", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = ns.spawn(["python3", "-c", PY_SHARED]);
  const [child, ...fds] = (await p.line()).split(" ").map(Number);
  const conns = ls(ns, ["--all"]);
  assert.equal(conns.length, 3);
  for (const c of conns) {
    const fd = c.processes[0]?.fd as number;
    assert.ok(fds.includes(fd), `${c.state} ${c.local_port}: fd ${fd}`);
    // In pid order, as both the task_file walk and /proc list processes: usually the parent first, but not
    // after the pid counter wrapped between the two (seen in CI: parent 32745, child 318).
    const owners = [
      [p.pid, fd],
      [child as number, fd],
    ].sort((a, b) => (a[0] as number) - (b[0] as number));
    assert.deepEqual(
      c.processes.map((o) => [o.pid, o.fd]),
      owners,
      `${c.state} ${c.local_port}: both processes own it`,
    );
  }
  samePaths(ns, 3);
});
