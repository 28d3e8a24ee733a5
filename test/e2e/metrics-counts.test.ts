/**
 * The kernel's counts behind a metrics scrape (src/inspect/socket-counts.ts, src/bpf/socket-counts.ts) against
 * the record path (the kernel pass's records and the owners' walk: what `tcpka ls` shows) and against
 * getsockopt (sock_diag, /proc and pidfd_getfd: the oracle), for the same sockets in two network namespaces of
 * the test's own: keepalive off, on with settings of their own, on with a user timeout, on with the namespace's
 * settings (which the test changes in one namespace), IPv6, a socket with two fds in one process, every socket
 * also held by a forked child (the first owner counts), a child's own connection, connections in the accept
 * queue (no file, no owner; only in the first namespace, which is then walked, where the second's and the
 * container's sockets come from the owners' walk); and a podman container's connection to itself (its cgroup). Each key of the counts (namespace, listening or not, keepalive, service port,
 * cgroup, first owner, effective settings) must have the same number of sockets as the records say, and the
 * snapshots built from either must give the same series; a mistake in the programs shows as a difference.
 *
 * Every process and namespace is the test's own (unique names) and goes when it ends.
 */
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { DEFAULT_FILTER } from "../../src/filter.js";
import { type Connection, inspectEach } from "../../src/inspect/connections.js";
import type { NetNamespace } from "../../src/inspect/namespaces.js";
import { tcpCounts } from "../../src/inspect/netstat.js";
import { type SocketCount, SocketCounter } from "../../src/inspect/socket-counts.js";
import { stateMask } from "../../src/kernel/states.js";
import {
  countedSnapshot,
  type OwnerLabel,
  recordSnapshot,
  type Snapshot,
  takeSnapshot,
} from "../../src/metrics/snapshot.js";
import { deadPeerAfter } from "../../src/settings.js";
import { KaAgent, kaAgentExe } from "../helpers/agent.js";
import { python3 } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import { fixture } from "../helpers/paths.js";
import { busyboxImage, needsPodman, startContainer } from "../helpers/podman.js";
import { uniqueName } from "../helpers/scope.js";

const COUNT_CONNS = fixture("count_conns.py");
const COUNT_OWN = fileURLToPath(new URL("../helpers/count-own.js", import.meta.url));
/** A listener in a thread that unshared its file table, closed in the main thread's: no fd table a walk reads. */
const HIDDEN_LISTENER = `
import ctypes, os, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
ready = threading.Event()
def hold():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
    if libc.unshare(0x400) != 0:  # CLONE_FILES
        raise SystemExit(os.strerror(ctypes.get_errno()))
    hold.port, hold.fd = s.getsockname()[1], s.fileno()
    ready.set()
    threading.Event().wait()
threading.Thread(target=hold, daemon=True).start()
ready.wait()
os.close(hold.fd)  # the main thread's table's copy, the same number: the thread's keeps it open
print("hidden", hold.port, flush=True)
sys.stdin.read()
`;
const ESTAB_LISTEN = { ...DEFAULT_FILTER, states: stateMask(["ESTAB", "LISTEN"]) };

function commName(prefix: string): string {
  return `${prefix}${uniqueName().slice(-6)}`.slice(0, 15);
}

/** A count's key as text: what the counting programs key by, with the detection time the exporter makes of it. */
function keyOf(k: {
  netns: number;
  listening: boolean;
  keepalive: boolean;
  port: number;
  cgroup: number;
  owner: number;
  after: number | null;
}): string {
  return [
    k.netns,
    k.listening ? "listen" : "estab",
    k.keepalive ? "on" : "off",
    k.port,
    k.cgroup,
    k.owner,
    k.after,
  ].join(" ");
}

function countsByKey(list: readonly SocketCount[], netns: ReadonlySet<number>): Map<string, number> {
  const out = new Map<string, number>();
  for (const c of list) {
    if (!netns.has(c.netns)) continue;
    const k = keyOf({
      ...c,
      cgroup: c.listening ? 0 : c.cgroup,
      after: c.settings ? deadPeerAfter(c.settings) : null,
    });
    out.set(k, (out.get(k) ?? 0) + c.count);
  }
  return out;
}

/** The same keys from the connections of the record path (or the oracle's), service port as snapshot.ts makes it. */
function recordsByKey(
  list: readonly Connection[],
  owners: boolean,
  only: (c: Connection) => boolean = () => true,
): Map<string, number> {
  const listening = new Set<string>();
  for (const c of list) if (c.socket.state === "LISTEN") listening.add(`${c.netns} ${c.socket.localPort}`);
  const out = new Map<string, number>();
  for (const c of list) {
    if (!only(c)) continue;
    const isListen = c.socket.state === "LISTEN";
    const local = c.socket.localPort;
    const k = keyOf({
      netns: c.netns ?? 0,
      listening: isListen,
      keepalive: c.keepalive === true,
      port: isListen || listening.has(`${c.netns} ${local}`) ? local : c.socket.peerPort,
      cgroup: isListen ? 0 : (c.cgroup ?? 0),
      owner: owners && !isListen ? (c.owners[0]?.pid ?? 0) : 0,
      after: isListen ? null : c.deadPeerAfter,
    });
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}

function records(netns: ReadonlySet<number>, via: "bpf" | "netlink", processes: boolean): Connection[] {
  const out: Connection[] = [];
  inspectEach(ESTAB_LISTEN, { allNetns: true, via, processes }, (c) => {
    if (c.netns !== undefined && netns.has(c.netns)) out.push(c);
  });
  return out;
}

function sorted(m: ReadonlyMap<string, number>): [string, number][] {
  return [...m].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** The series of a snapshot that belong to these process names, and its detection counts at these times. */
function ours(s: Snapshot, names: readonly string[], times: readonly number[]) {
  return {
    connections: s.connections
      .filter((c) => names.includes(c.labels.process ?? ""))
      .map((c) => JSON.stringify(c))
      .sort(),
    detection: times.map((t) => s.detection.find((d) => d.seconds === t)?.count ?? 0),
  };
}

test("the kernel's counts equal the records and getsockopt, key by key, in two namespaces and a container", async (t) => {
  if (!needsPodman(t)) return;
  if (!SocketCounter.possible(true)) {
    t.skip("the counting programs need Linux 5.11 and CAP_BPF + CAP_PERFMON");
    return;
  }
  const a = Netns.create(t);
  const b = Netns.create(t);
  // The namespace's settings for sockets that only turned SO_KEEPALIVE on: 1500 + 11 × 4 = 1544 s.
  b.setSysctl("net.ipv4.tcp_keepalive_time", 1500);
  b.setSysctl("net.ipv4.tcp_keepalive_intvl", 11);
  b.setSysctl("net.ipv4.tcp_keepalive_probes", 4);
  const names = [commName("tkca"), commName("tkcb"), commName("tkcc"), commName("tkcd")];
  const started: { pid: number; child: number; port: number; v6: boolean }[] = [];
  for (const [ns, parent, child] of [
    [a, names[0], names[1]],
    [b, names[2], names[3]],
  ] as const) {
    // b's sockets are all held by processes (but one in TIME-WAIT, which is not counted), a's accept queue is
    // not: the count takes b's (and the container's) from the owners' walk, and walks a.
    const p = ns.spawn([
      python3(),
      COUNT_CONNS,
      parent as string,
      child as string,
      ...(ns === b ? ["--no-backlog"] : []),
    ]);
    t.after(() => p.kill());
    const m = await p.waitFor(/^\{.*\}$/m);
    started.push(JSON.parse(m[0]) as { pid: number; child: number; port: number; v6: boolean });
  }
  // A podman container whose program connects to itself without keepalive: its sockets carry its cgroup.
  const exe = kaAgentExe(t);
  const c = startContainer(t, busyboxImage(t), {
    mounts: [{ source: exe, target: "/ka_agent" }],
    cmd: ["/ka_agent", "0"],
  });
  await KaAgent.inContainer(c).first();
  const inum = (ns: Netns) => statSync(`/run/netns/${ns.name}`).ino;
  const namespaces: NetNamespace[] = [
    ...[a, b].map((ns, i) => ({
      inum: inum(ns),
      path: `/run/netns/${ns.name}`,
      name: ns.name,
      pid: started[i]?.pid,
      own: false,
    })),
    { inum: c.netns, path: `/proc/${c.pid}/ns/net`, pid: c.pid, own: false },
  ];
  const mine = new Set(namespaces.map((ns) => ns.inum));
  assert.ok((tcpCounts(started[1]?.pid as number, inum(b))?.tw ?? 0) >= 1, "b has a socket in TIME-WAIT");

  for (const owners of [true, false]) {
    const counter = SocketCounter.open({ owners, holdFrom: 1 });
    try {
      // Twice: the second scrape finds the marks of the first (a new generation) and maps emptied by it.
      for (let round = 0; round < 2; round++) {
        const counted = counter.count(namespaces);
        assert.ok(counted, "the counts fit the map");
        assert.deepEqual([...counter.walked], [namespaces[0]?.inum], "a walked; b and the container held");
        const got = countsByKey(counted, mine);
        const want = recordsByKey(records(mine, "bpf", owners), owners);
        assert.deepEqual(sorted(got), sorted(want), `owners ${owners}, scrape ${round + 1}: counts vs records`);
        // The container's two ends, with its cgroup (not the host's root, 1).
        const inContainer = counted.filter((x) => x.netns === c.netns && !x.listening);
        assert.equal(
          inContainer.reduce((n, x) => n + x.count, 0),
          2,
          JSON.stringify(inContainer),
        );
        assert.ok(inContainer.every((x) => x.cgroup > 1 && !x.keepalive));
      }
    } finally {
      counter.close();
    }
  }

  // More keys than the map holds: the count says so (null), and the snapshot is the records' instead.
  const small = SocketCounter.open({ owners: true, maxKeys: 2 });
  try {
    assert.equal(small.count(namespaces), null, "a count map of 2 keys cannot hold the test's");
    const o = { labels: ["process" as const], maxSeries: 100_000, ports: 0 };
    const reasons: string[] = [];
    const s = takeSnapshot(o, small, (r) => reasons.push(r));
    assert.match(reasons.join(), /more distinct counts than the kernel's map holds/);
    assert.notEqual(s.via, "bpf-counts");
    assert.deepEqual(ours(s, names, []), ours(recordSnapshot(o), names, []));
  } finally {
    small.close();
  }

  // The oracle: getsockopt on each owned socket (the accept queue's have no owner, so no exact settings there).
  const counter = SocketCounter.open({ owners: true });
  try {
    const counted = counter.count(namespaces) ?? [];
    const owned = countsByKey(
      counted.filter((c) => c.owner !== 0 && !c.listening),
      mine,
    );
    const viaOracle = records(mine, "netlink", true);
    const oracle = recordsByKey(viaOracle, true, (c) => c.owners.length > 0 && c.socket.state !== "LISTEN");
    // sock_diag knows no cgroup: compare without it.
    const noCgroup = (m: Map<string, number>) => {
      const out = new Map<string, number>();
      for (const [k, n] of m) {
        const f = k.split(" ");
        f[4] = "-";
        const key = f.join(" ");
        out.set(key, (out.get(key) ?? 0) + n);
      }
      return out;
    };
    assert.deepEqual(sorted(noCgroup(owned)), sorted(noCgroup(oracle)), "counts vs getsockopt");

    // What the test made, by hand: namespace a's parent holds 2 × (3 + 2 + 1 + 2) + 2 (+ 2 over IPv6) sockets
    // of its own connections, and the 2 client ends in the accept queue; their server ends have no owner.
    const v6 = started[0]?.v6 ? 2 : 0;
    const ofOwner = (pid: number) =>
      counted.filter((c) => c.owner === pid && !c.listening).reduce((n, c) => n + c.count, 0);
    const pid = started[0]?.pid as number;
    // The forked child holds the same files but comes after its parent in the walk (a larger pid): only its
    // own connection counts for it.
    if ((started[0]?.child as number) > pid) {
      assert.equal(ofOwner(pid), 16 + 2 + v6, JSON.stringify(counted.filter((c) => c.owner === pid)));
      assert.equal(ofOwner(started[0]?.child as number), 2);
    }
    const unowned = counted
      .filter((c) => c.netns === namespaces[0]?.inum && c.owner === 0 && !c.listening)
      .reduce((n, c) => n + c.count, 0);
    assert.equal(unowned, 2, "the accept queue's server ends: no owner");

    // The snapshots built from either path give the same series for the test's processes, and the same
    // detection counts at the test's times (1111 + 7 × 3; the user timeout's 1000 + 9 × 6; 1200 + 7 × 3; b's
    // defaults 1500 + 11 × 4).
    const times = [1132, 1054, 1221, 1544];
    const labelSets: OwnerLabel[][] = [
      ["process", "container", "pod_namespace", "pod", "unit"],
      ["process"],
      ["container"],
    ];
    for (const labels of labelSets) {
      const o = { labels, maxSeries: 100_000, ports: 100_000 };
      const fromCounts = countedSnapshot(o, counter);
      assert.ok(fromCounts);
      const fromRecords = recordSnapshot(o);
      assert.deepEqual(ours(fromCounts, names, times), ours(fromRecords, names, times), labels.join());
      if (labels.includes("container")) {
        const ofContainer = (s: Snapshot) =>
          s.connections.filter((x) => x.labels.container === c.name).map((x) => JSON.stringify(x));
        assert.deepEqual(ofContainer(fromCounts), ofContainer(fromRecords), "the container's series");
        assert.equal(
          fromCounts.connections.filter((x) => x.labels.container === c.name).reduce((n, x) => n + x.value, 0),
          2,
        );
      }
      if (!labels.includes("process")) continue;
      const on = (name: string) =>
        fromCounts.connections
          .filter((c) => c.labels.process === name && c.state === "on")
          .reduce((n, c) => n + c.value, 0);
      // a: 2 + 1 + 2 connecting ends with keepalive (+ 1 over IPv6); the child's own 1.
      assert.equal(on(names[0] as string), 5 + v6 / 2);
      assert.equal(on(names[1] as string), 1);
      for (const p of [String(started[0]?.port), String(started[1]?.port)]) {
        const port = (s: Snapshot) => s.byPort.filter((x) => x.port === p).map((x) => JSON.stringify(x));
        assert.deepEqual(port(fromCounts), port(fromRecords), `port ${p}`);
      }
      assert.equal(fromCounts.detection.find((d) => d.seconds === 1544)?.count, 2, "b's own defaults");
    }
  } finally {
    counter.close();
  }
});

test("tcpka's own namespace is counted by the owners' walk where it met every socket, else walked", async (t) => {
  if (!SocketCounter.possible(true)) {
    t.skip("the counting programs need Linux 5.11 and CAP_BPF + CAP_PERFMON");
    return;
  }
  // The counter runs inside each namespace (test/helpers/count-own.ts), so that it is tcpka's own there: in a every
  // socket is held by the fixture's processes (and one waits in TIME-WAIT, which sockstat's inuse leaves out), in
  // b two connections wait in the accept queue, which no file holds.
  for (const backlog of [false, true]) {
    const ns = Netns.create(t);
    const names = [commName("tkoa"), commName("tkob")];
    const p = ns.spawn([python3(), COUNT_CONNS, ...names, ...(backlog ? [] : ["--no-backlog"])]);
    t.after(() => p.kill());
    const started = JSON.parse((await p.waitFor(/^\{.*\}$/m))[0]) as { pid: number; v6: boolean };
    if (!backlog) {
      // A listener that no process shows: held only by a thread with a file table of its own (unshare
      // CLONE_FILES, as the sandbox's own listener here is held out of every walk's sight); the listeners' walk
      // counts it, so the namespace still needs no TCP walk.
      const hidden = ns.spawn([python3(), "-c", HIDDEN_LISTENER]);
      t.after(() => hidden.kill());
      await hidden.waitFor(/^hidden \d+$/m);
    }
    const inum = statSync(`/run/netns/${ns.name}`).ino;
    const sockstat = tcpCounts(started.pid, inum);
    assert.ok(sockstat && sockstat.inuse > 0, "the namespace has hashed sockets");
    const mine = new Set([inum]);
    const out = JSON.parse(ns.run([process.execPath, COUNT_OWN])) as { walkedOwn: boolean; counts: SocketCount[] };
    assert.equal(out.walkedOwn, backlog, backlog ? "the accept queue's sockets: walked" : "every socket held: no walk");
    const got = countsByKey(out.counts, mine);
    const want = recordsByKey(records(mine, "bpf", true), true);
    assert.deepEqual(sorted(got), sorted(want), `${backlog ? "walked" : "from the owners' walk"}: counts vs records`);
    const listeners = out.counts.filter((c) => c.listening).reduce((n, c) => n + c.count, 0);
    // the parent's (and its IPv6 one) and the child's listeners, each counted once, and the hidden one
    assert.equal(
      listeners,
      2 + (started.v6 ? 1 : 0) + (backlog ? 0 : 1),
      JSON.stringify(out.counts.filter((c) => c.listening)),
    );
  }
});
