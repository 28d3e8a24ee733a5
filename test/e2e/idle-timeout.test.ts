/**
 * `tcpka idle-timeout` and `tcpka echo` in the firewall lab: the measured idle timeout brackets conntrack's
 * real one (4s and 9s) within a second, in less than twice the timeout plus a few seconds; a path without a
 * middlebox has none up to --max; bad input gets one clear line and the right exit code.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { needs, python3 } from "../helpers/env.js";
import { Lab, NOBODY_IP, SERVER_IP } from "../helpers/lab.js";
import { TCPKA } from "../helpers/paths.js";
import type { Process } from "../helpers/processes.js";

const PORT = 7007;

/** `tcpka echo` in the lab's server namespace, once it listens. */
async function echoServer(lab: Lab): Promise<Process> {
  const echo = lab.tcpka(lab.server, ["echo", "--listen", String(PORT)]);
  await echo.waitFor(/listening on \S+:7007/);
  return echo;
}

function idleTimeout(lab: Lab, args: readonly string[], timeoutMs = 60_000) {
  return lab.run(lab.client, [process.execPath, TCPKA, "idle-timeout", ...args], { timeoutMs });
}

interface Report {
  target: string;
  found: boolean;
  longest_alive_idle_ms: number;
  shortest_dropped_idle_ms: number | null;
  consistent: boolean;
  elapsed_ms: number;
  recommended: { idle_s: number; interval_s: number; count: number; run: string; sysctl: string } | null;
  probes: { idle_ms: number; result: "alive" | "dropped" }[];
}

/** Both bounds within 1s of the truth (and on the right side of it). */
function assertBrackets(aliveS: number, droppedS: number, truthS: number): void {
  assert.ok(aliveS < truthS && aliveS >= truthS - 1, `longest alive ${aliveS}s, truth ${truthS}s`);
  assert.ok(droppedS >= truthS && droppedS <= truthS + 1, `shortest dropped ${droppedS}s, truth ${truthS}s`);
}

describe("tcpka idle-timeout in the firewall lab", { concurrency: true }, () => {
  test("conntrack timeout 4s: between ~3s and ~5s, with the keepalive to use, in under 2 × 4s + 4s", async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "nft"] })) return;
    const lab = Lab.create(t, { idleTimeout: 4 });
    await echoServer(lab);
    const r = await idleTimeout(lab, [`${SERVER_IP}:${PORT}`]);
    assert.equal(r.code, 0, r.stderr);
    const m = /^idle timeout: between ([\d.]+)s and ([\d.]+)s \(measured in /m.exec(r.stdout);
    assert.ok(m, r.stdout);
    assertBrackets(Number(m[1]), Number(m[2]), 4);
    assert.ok(r.ms <= (2 * 4 + 4) * 1000, `took ${r.ms} ms`);
    // Half of the longest idle time that survived (3.x s), in whole seconds: 1s.
    assert.match(r.stdout, /^recommended keepalive: idle ≤ 1s$/m);
    assert.match(r.stdout, /^ {2}tcpka run --idle 1s --interval 1s --count 3 -- <command>$/m);
    assert.match(
      r.stdout,
      /^ {2}sysctl -w net\.ipv4\.tcp_keepalive_time=1 net\.ipv4\.tcp_keepalive_intvl=1 net\.ipv4\.tcp_keepalive_probes=3$/m,
    );
    // Progress went to stderr, a line per probe (stderr is not a terminal here).
    assert.match(r.stderr, /^measuring the idle timeout of the path to 198\.19\.2\.2:7007 \(8 connections/m);
    assert.match(r.stderr, /idle [\d.]+s: dropped \(no answer within 1\.5s\)/);
    t.diagnostic(`4s: between ${m[1]}s and ${m[2]}s, ${(r.ms / 1000).toFixed(1)}s`);
  });

  test("conntrack timeout 9s, --json: between ~8s and ~10s, in under 2 × 9s + 4s", async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "nft"] })) return;
    const lab = Lab.create(t, { idleTimeout: 9 });
    await echoServer(lab);
    const r = await idleTimeout(lab, [`${SERVER_IP}:${PORT}`, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as Report;
    assert.equal(doc.target, `${SERVER_IP}:${PORT}`);
    assert.equal(doc.found, true);
    assertBrackets(doc.longest_alive_idle_ms / 1000, (doc.shortest_dropped_idle_ms as number) / 1000, 9);
    assert.ok(r.ms <= (2 * 9 + 4) * 1000, `took ${r.ms} ms`);
    assert.ok(doc.elapsed_ms <= r.ms);
    // Every probe agrees with the truth: alive below 9s, dropped from 9s on. (Within a few tens of ms of 9s
    // either is right: the firewall's clock starts at the client's ACK of the pong, which may be delayed.)
    for (const p of doc.probes) {
      if (Math.abs(p.idle_ms - 9000) > 100) assert.equal(p.result, p.idle_ms < 9000 ? "alive" : "dropped");
    }
    assert.deepEqual(
      { idle_s: doc.recommended?.idle_s, interval_s: doc.recommended?.interval_s, count: doc.recommended?.count },
      { idle_s: 4, interval_s: 1, count: 3 },
    );
    assert.equal(doc.recommended?.run, "tcpka run --idle 4s --interval 1s --count 3 -- <command>");
    t.diagnostic(
      `9s: between ${doc.longest_alive_idle_ms}ms and ${doc.shortest_dropped_idle_ms}ms, ${(r.ms / 1000).toFixed(1)}s`,
    );
  });

  test("no middlebox, --max 6s: no idle timeout up to 6s, said once 6s have passed", async (t) => {
    if (!needs(t, { root: true, tools: ["ip"] })) return;
    const lab = Lab.create(t, { firewall: false });
    await echoServer(lab);
    const r = await idleTimeout(lab, [`${SERVER_IP}:${PORT}`, "--max", "6s"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^no idle timeout up to 6s: a connection idle for 6s still answered/m);
    assert.doesNotMatch(r.stdout, /recommended/);
    assert.ok(r.ms >= 6000 && r.ms <= 6000 + 3000, `took ${r.ms} ms`);
  });

  test("bad input: port 0 exits 2; a closed port and an unreachable address exit 1 with one clear line", async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "nft"] })) return;
    const lab = Lab.create(t, { idleTimeout: 4 });
    const [port0, closed, unreachable] = await Promise.all([
      idleTimeout(lab, [`${SERVER_IP}:0`]),
      idleTimeout(lab, [`${SERVER_IP}:7999`]),
      // The router's ARP for it fails; it answers "host unreachable" after about 3s.
      idleTimeout(lab, [`${NOBODY_IP}:${PORT}`], 20_000),
    ]);
    assert.equal(port0.code, 2);
    assert.equal(port0.stderr, "tcpka: idle-timeout: port 0 is not a usable port\nhint: give a port from 1 to 65535\n");
    assert.equal(closed.code, 1);
    assert.equal(
      closed.stderr,
      `tcpka: cannot connect to ${SERVER_IP}:7999: connection refused, nothing listens there\nhint: start the far end there: tcpka echo --listen 7999\n`,
    );
    assert.equal(unreachable.code, 1);
    assert.match(unreachable.stderr, /^tcpka: cannot connect to 198\.19\.2\.99:7007: host unreachable\nhint: /);
    for (const r of [port0, closed, unreachable]) assert.equal(r.stdout, "");
  });

  test("tcpka echo: ping lines get pong, the rest is echoed as it comes; bad --listen exits 2; SIGTERM ends it", async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
    const lab = Lab.create(t, { firewall: false });
    const echo = await echoServer(lab);
    const script = [
      "import socket",
      `s = socket.create_connection(("${SERVER_IP}", ${PORT}), timeout=5)`,
      "def read(n):",
      "    b = b''",
      "    while len(b) < n: b += s.recv(n - len(b))",
      "    return b",
      "s.sendall(b'ping 7\\nhello\\npi')",
      "print(read(len('pong 7\\nhello\\n')))",
      "s.sendall(b'ng 8\\nraw bytes without newline')",
      "print(read(len('pong 8\\nraw bytes without newline')))",
    ].join("\n");
    const r = await lab.run(lab.client, [python3(), "-c", script], { timeoutMs: 15_000 });
    assert.equal(r.stdout, "b'pong 7\\nhello\\n'\nb'pong 8\\nraw bytes without newline'\n", r.stderr);

    const bad = await Promise.all(
      [["--listen", "0"], ["--listen", "300.1.2.3:7007"], ["--listen", "[::1]:x"], []].map((args) =>
        lab.run(lab.server, [process.execPath, TCPKA, "echo", ...args]),
      ),
    );
    for (const b of bad) {
      assert.equal(b.code, 2, b.stderr);
      assert.match(b.stderr, /^tcpka: .+\n(hint: .+\n)?$/);
    }
    const elsewhere = await lab.run(lab.server, [process.execPath, TCPKA, "echo", "--listen", "198.51.100.1:7007"]);
    assert.equal(elsewhere.code, 1);
    assert.match(elsewhere.stderr, /cannot listen on 198\.51\.100\.1:7007: no interface has this address/);

    echo.kill("SIGTERM");
    const done = await echo.done;
    assert.equal(done.code, 0, done.stderr);
  });
});
