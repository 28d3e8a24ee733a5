/**
 * `tcpka enable` on programs that LD_PRELOAD cannot reach or that are not python: a statically linked C program
 * (gcc -static, no dynamic loader at all) and a Java program (its sockets are IPv6 sockets with IPv4-mapped
 * addresses). Each holds idle loopback connections without keepalive in a network namespace of its own and
 * prints, on request, what getsockopt / Socket.getOption say about them from inside; after enable every one has
 * exactly the settings asked for, and disable turns keepalive off again.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { compileC, compileJava, isStaticElf } from "../helpers/compile.js";
import { summary } from "../helpers/enable.js";
import { needs } from "../helpers/env.js";
import { assertAll, type Reported, report, UNTOUCHED, WANT, WANT_FLAGS } from "../helpers/keepalive.js";
import { Netns } from "../helpers/netns.js";
import type { Process } from "../helpers/processes.js";
import { tempDir } from "../helpers/scope.js";

after(() => Netns.destroyAll());

const CONNECTIONS = 50;

/** enable, check from inside, disable, check again: the part both programs share. */
async function enableThenDisable(ns: Netns, p: Process, comm: string, reported: number): Promise<void> {
  const sockets = 2 * CONNECTIONS + 1; // and the listener
  const before = await report(p);
  assert.equal(before.sockets.length, reported);
  assertAll(before.sockets, UNTOUCHED, "before");

  const r = ns.tcpka(["enable", "--pid", String(p.pid), ...WANT_FLAGS]);
  assert.equal(r.status, 0, r.stderr);
  assertAll((await report(p)).sockets, WANT, "after enable, as the program reads them");
  const lines = r.stdout.split("\n").filter((l) => l.startsWith(`${comm}[${p.pid}] fd `));
  assert.equal(lines.length, sockets, r.stdout);
  assert.deepEqual(summary(r.stdout), {
    sockets,
    processes: 1,
    rows: { changed: sockets, "already as strong": 0, listening: 1, failed: 0 },
    notes: {
      changed: "keepalive on, 7s / 3s / 4",
      listening: "connections they accept from now on inherit the settings",
    },
    deadPeers: "dead peers are now noticed after at most 19s (before: never)",
  });

  const d = ns.tcpka(["disable", "--pid", String(p.pid)]);
  assert.equal(d.status, 0, d.stderr);
  for (const s of (await report(p)).sockets) assert.equal(s.keepalive, 0, `after disable: ${s.role}`);
  assert.deepEqual(summary(d.stdout).rows, { changed: sockets, "already off": 0, failed: 0 });
}

test("a statically linked C program: enable and disable, verified with getsockopt inside it", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "gcc"] })) return;
  const bin = compileC(tempDir(t, { readable: true }), "enable/holder.c", "holder", ["-static"]);
  assert.ok(isStaticElf(bin), "no PT_INTERP: LD_PRELOAD could never reach it");
  const ns = Netns.create(t);
  const p = ns.spawn([bin, String(CONNECTIONS)]);
  assert.equal(await p.line(), "ready");
  await enableThenDisable(ns, p, "holder", 2 * CONNECTIONS + 1);
});

interface JavaSocket extends Reported {
  local_port: number;
  peer_port: number;
}

test("a Java program: enable and disable, verified with Socket.getOption inside it", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "javac", "java"] })) return;
  const dir = tempDir(t, { readable: true });
  compileJava(dir, "enable/Holder.java");
  const ns = Netns.create(t);
  const p = ns.spawn(["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", dir, "Holder", String(CONNECTIONS)]);
  assert.equal(await p.line(30_000), "ready");
  // Java makes IPv6 sockets: tcpka must find them in /proc/net/tcp6 (or sock_diag AF_INET6), IPv4-mapped.
  const r = ns.tcpka(["ls", "--all", "--json", "--pid", String(p.pid)]);
  assert.equal(r.status, 0, r.stderr);
  const conns = (JSON.parse(r.stdout) as { connections: { family: number; local_address: string }[] }).connections;
  assert.equal(conns.length, 2 * CONNECTIONS + 1);
  for (const c of conns) assert.deepEqual([c.family, c.local_address], [6, "::ffff:127.0.0.1"]);

  const before = await report<JavaSocket>(p, 30_000);
  assert.ok(before.sockets.every((s) => s.peer_port > 0));
  // The listener is not in Java's report (ServerSocket has no TCP_KEEP* options).
  await enableThenDisable(ns, p, "java", 2 * CONNECTIONS);
});
