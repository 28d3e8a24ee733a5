/**
 * The BPF listing of a process's TCP sockets (src/inspect/socket-fds.ts) against what /proc and the kernel's TCP
 * tables say of the same process: a python3 process in a namespace of its own holds TCP over IPv4 and IPv6,
 * a TCP socket never connected, UDP, a Unix socket pair, a pipe, a file, and a thread with a file table of its
 * own. The listing must have exactly its TCP sockets, with the same fd, inode, state and addresses, and none of
 * the rest; and `tcpka enable` must reach the same sockets through it as through /proc.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import { LiveSession, type PlanSpec } from "../../src/enforce/live/session.js";
import type { TcpEndpoints } from "../../src/filter.js";
import { findOwners, type OwnerScan, socketFds } from "../../src/inspect/owners.js";
import { listPids } from "../../src/inspect/processes.js";
import { SocketFdIterator } from "../../src/inspect/socket-fds.js";
import { readSockets } from "../../src/inspect/sockets.js";
import { ALL_STATES, stateMask } from "../../src/kernel/states.js";
import { needs, python3 } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import { fixture, REPO } from "../helpers/paths.js";
import type { Process } from "../helpers/processes.js";

interface Held {
  fds: { tcp4: number[]; tcp6: number[]; tcp_unconnected: number[]; other: number[] };
  private_inode: number | null;
  error: string | null;
}

async function startHolder(scope: { after(fn: () => void): void }): Promise<{ p: Process; held: Held }> {
  const ns = Netns.create(scope);
  const p = ns.spawn([python3(), fixture("enable/mixed_fds.py")]);
  const held = JSON.parse(await p.line()) as Held;
  assert.equal(held.error, null, `unshare(CLONE_FILES) in the holder's thread: ${held.error}`);
  return { p, held };
}

describe("the BPF listing of a process's TCP sockets", () => {
  after(() => Netns.destroyAll());

  test("lists exactly the TCP sockets of /proc/PID/fd, with what the TCP table says of each", async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
    const { p, held } = await startHolder(t);
    const it = SocketFdIterator.open();
    t.after(() => it.close());

    const fds: number[] = [];
    const sockets: TcpEndpoints[] = [];
    assert.equal(it.list(p.pid, fds, sockets), true);
    const listed = fds.map((fd, i) => ({ fd, socket: sockets[i] as TcpEndpoints }));
    const byFd = new Map(listed.map((s) => [s.fd, s]));

    // Every TCP socket it holds, and nothing else.
    const tcp = [...held.fds.tcp4, ...held.fds.tcp6, ...held.fds.tcp_unconnected];
    assert.deepEqual(
      listed.map((s) => s.fd),
      [...tcp].sort((a, b) => a - b),
    );
    for (const fd of held.fds.other) assert.equal(byFd.has(fd), false, `fd ${fd} is not TCP`);
    // The thread's own table is not the process's: pidfd_getfd could not reach it.
    assert.ok(held.private_inode);
    assert.equal(
      listed.some((s) => s.socket.inode === held.private_inode),
      false,
    );

    // Inodes as /proc/PID/fd shows them.
    const proc = new Map(socketFds(p.pid)?.map(([fd, inode]) => [fd, inode]));
    for (const s of listed) assert.equal(s.socket.inode, proc.get(s.fd), `inode of fd ${s.fd}`);

    // State and addresses as the namespace's TCP tables show them (/proc/PID/net/tcp and tcp6).
    const table = new Map(readSockets({ states: ALL_STATES, netnsOf: p.pid }).map((s) => [s.inode, s]));
    for (const fd of [...held.fds.tcp4, ...held.fds.tcp6]) {
      const s = byFd.get(fd)?.socket;
      const want = table.get(s?.inode ?? -1);
      assert.ok(s && want, `fd ${fd} in both`);
      const { family, state, localAddress, localPort, peerAddress, peerPort, inode } = want;
      assert.deepEqual(s, { family, state, localAddress, localPort, peerAddress, peerPort, inode });
    }
    assert.deepEqual(
      held.fds.tcp6.map((fd) => byFd.get(fd)?.socket.family),
      [6, 6, 6],
    );
    assert.deepEqual(
      held.fds.tcp4.map((fd) => byFd.get(fd)?.socket.state),
      ["LISTEN", "ESTAB", "ESTAB"],
    );
    // A socket never bound is in no table, but it is TCP, and closed.
    assert.equal(byFd.get(held.fds.tcp_unconnected[0] as number)?.socket.state, "CLOSE");
  });

  test("a process that does not exist is told apart from one without sockets", (t) => {
    if (!needs(t, { root: true })) return;
    const it = SocketFdIterator.open();
    t.after(() => it.close());
    // pid_max is at most 2^22: this pid cannot exist.
    assert.equal(it.list(4_194_305, [], []), false);
    assert.equal(it.list(1, [], []), true); // init exists; whether it holds TCP sockets does not matter
  });

  test("loads while signals keep arriving (the verifier's EAGAIN is retried)", (t) => {
    if (!needs(t, { root: true })) return;
    // Under Node's CPU profiler (a SIGPROF every millisecond) about a third of the loads fail with EAGAIN.
    const dir = mkdtempSync(join(tmpdir(), "tcpka-prof-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const module = pathToFileURL(join(REPO, "dist", "inspect", "socket-fds.js")).href;
    const script = `const { SocketFdIterator } = await import(${JSON.stringify(module)});
      for (let i = 0; i < 20; i++) SocketFdIterator.open().close();`;
    const r = spawnSync(
      process.execPath,
      ["--cpu-prof", "--cpu-prof-interval", "1000", "--cpu-prof-dir", dir, "--input-type=module", "-e", script],
      { encoding: "utf8", timeout: 60_000 },
    );
    assert.equal(r.status, 0, r.stderr);
  });

  test("tcpka ls finds the same owners through it as through /proc", async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
    const { p, held } = await startHolder(t);
    const table = readSockets({ states: ALL_STATES, netnsOf: p.pid });
    const inodes = new Set(table.map((s) => s.inode).filter((i) => i > 0));
    const pids = listPids();
    const byIterator = findOwners(inodes, pids, "iterator");
    const byProc = findOwners(inodes, pids, "proc");
    const mine = (scan: OwnerScan) =>
      [...scan.owners.entries()].filter(([, owners]) => owners.some((o) => o.pid === p.pid)).sort(([a], [b]) => a - b);
    assert.equal(mine(byIterator).length, 6, "both ends and the listener, IPv4 and IPv6");
    assert.deepEqual(mine(byIterator), mine(byProc));
    assert.deepEqual(
      mine(byIterator)
        .flatMap(([, owners]) => owners.map((o) => o.fd))
        .sort((a, b) => a - b),
      [...held.fds.tcp4, ...held.fds.tcp6].sort((a, b) => a - b),
    );
    // Every process: the same owners for every socket of this namespace, whoever holds it.
    assert.deepEqual(
      [...byIterator.owners.entries()].sort(([a], [b]) => a - b),
      [...byProc.owners.entries()].sort(([a], [b]) => a - b),
    );
  });

  test("tcpka enable reaches the same sockets through it as through /proc", async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
    const { p } = await startHolder(t);
    const plan: PlanSpec = { disable: false, settings: { idle: 7, interval: 3, count: 4 }, mode: "strengthen" };
    const states = stateMask(["ESTAB", "LISTEN"]);
    const rounds = [];
    for (const useIterator of [true, false]) {
      const session = new LiveSession(states, null, plan, true, useIterator);
      try {
        const r = await session.round([p.pid]);
        rounds.push(
          r.results.map(({ socket: { pid, fd, socket: s }, outcome }) => {
            const { family, state, localAddress, localPort, peerAddress, peerPort, inode } = s;
            return { pid, fd, family, state, localAddress, localPort, peerAddress, peerPort, inode, outcome };
          }),
        );
      } finally {
        await session.close();
      }
    }
    assert.equal(rounds[0]?.length, 6, "both ends and the listener, IPv4 and IPv6");
    assert.deepEqual(rounds[0], rounds[1]);
  });

  test("a target that has exited is gone, not unreadable, through it as through /proc", async (t) => {
    if (!needs(t, { root: true })) return;
    // A child that has exited and been reaped: its pid names no process (tcpka run's fallback meets these
    // whenever a short-lived child of CMD ends between two rounds).
    const child = spawn("true");
    await new Promise((resolve) => child.once("exit", resolve));
    const gone = child.pid as number;
    const plan: PlanSpec = { disable: false, settings: { idle: 7, interval: 3, count: 4 }, mode: "strengthen" };
    for (const useIterator of [true, false]) {
      const session = new LiveSession(stateMask(["ESTAB", "LISTEN"]), null, plan, true, useIterator);
      try {
        const r = await session.round([gone]);
        assert.deepEqual(
          r.unreadable,
          [],
          `${useIterator ? "the iterator" : "/proc"}: an exited process is not a denied one`,
        );
        assert.deepEqual(r.results, []);
      } finally {
        await session.close();
      }
    }
  });
});
