/**
 * `tcpka watch` (issue 17) in the firewall lab: a client with keepalive idle 2 s, interval 1 s, count 3 (set by
 * `tcpka run`) shows probes sent and answered while the path is up; once the lab's cable is pulled its probes go
 * unanswered, and after idle + interval × count = 5 s the kill is shown with ETIMEDOUT, when the client's own
 * blocking recv() fails with it. Without root, watch says so in one line and counts instead.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { needs, python3 } from "../helpers/env.js";
import { LAB_PEER, Lab, SERVER_IP } from "../helpers/lab.js";
import { Netns } from "../helpers/netns.js";
import { fixture } from "../helpers/paths.js";
import { type Process, until } from "../helpers/processes.js";
import { startTcpka, tcpkaFor } from "../helpers/tcpka.js";
import { NOBODY } from "../helpers/users.js";

const NAMED_CONNS = fixture("named_conns.py");

interface Event {
  kind: "probe" | "answered" | "killed" | "timed-out";
  at: string;
  local: string;
  peer: string;
  owners: { pid: number; comm: string }[];
  probe: number;
  count: number;
  silent_s: number;
  answered_ms?: number;
  errno?: string;
}

function events(p: Process): Event[] {
  return p.stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Event);
}

test("probes sent and answered on an idle connection; after the cable is pulled, unanswered, then the kill with ETIMEDOUT", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "nft", "python3"] })) return;
  const lab = Lab.create(t);
  const server = lab.start(lab.server, [python3(), LAB_PEER, "serve", "7000"]);
  await server.waitFor(/^listening$/m);
  const watch = startTcpka(t, ["watch", "--json", "--port", "7000"], { timeoutMs: 120_000 });
  await watch.waitFor(/tracing keepalive/, 15_000, "stderr");
  const client = lab.tcpka(lab.client, [
    "run",
    "--idle",
    "2s",
    "--interval",
    "1s",
    "--count",
    "3",
    "--",
    python3(),
    LAB_PEER,
    "recv",
    SERVER_IP,
    "7000",
  ]);
  const ready = await client.waitFor(/^ready (\d+)$/m);
  const pid = Number(ready[1]);
  const mine = (e: Event) => e.peer === `${SERVER_IP}:7000` && e.owners.some((o) => o.pid === pid);

  // The path is up: a probe after 2 s of silence, answered.
  await until(
    "a probe and its answer",
    () => {
      const es = events(watch).filter(mine);
      return es.some((e) => e.kind === "probe") && es.some((e) => e.kind === "answered");
    },
    10_000,
  );
  const first = events(watch)
    .filter(mine)
    .find((e) => e.kind === "probe") as Event;
  assert.equal(first.probe, 1);
  assert.equal(first.count, 3);
  assert.ok(first.silent_s >= 1.9 && first.silent_s <= 2.6, `silent ${first.silent_s} s before the first probe`);
  assert.ok(
    (events(watch)
      .filter(mine)
      .find((e) => e.kind === "answered")?.answered_ms ?? -1) >= 0,
  );
  assert.equal(first.owners[0]?.comm, "python3");

  // The cable pulled: probes 1, 2, 3 unanswered, then the kill.
  const before = events(watch).length;
  const pulledAt = Date.now();
  lab.pullCable();
  const recv = JSON.parse((await client.waitFor(/^\{.*\}$/m, 12_000))[0]) as { errno: string; elapsed_s: number };
  assert.equal(recv.errno, "ETIMEDOUT");
  const killed = await until(
    "the kill",
    () =>
      events(watch)
        .slice(before)
        .filter(mine)
        .find((e) => e.kind === "killed"),
    5000,
  );
  const after = events(watch).slice(before).filter(mine);
  const unanswered = after.filter((e) => e.kind === "probe").map((e) => e.probe);
  assert.deepEqual(unanswered.slice(-3), [1, 2, 3], JSON.stringify(after));
  assert.equal(after.filter((e) => e.kind === "answered" && Date.parse(e.at) > pulledAt + 200).length, 0);
  assert.equal(killed.errno, "ETIMEDOUT");
  assert.equal(killed.probe, 3);
  const killedAfter = (Date.parse(killed.at) - pulledAt) / 1000;
  t.diagnostic(
    `killed ${killedAfter.toFixed(2)} s after the cable was pulled; the client's recv() failed after ${recv.elapsed_s} s of idle`,
  );
  // idle 2 s + 3 × 1 s from the last answer, which came at most 2 s before the pull (plus the 100 ms polls)
  assert.ok(killedAfter >= 2.5 && killedAfter <= 6.5, `killed ${killedAfter} s after the pull`);
  assert.ok(Math.abs(killed.silent_s - 5) <= 0.6, `silent ${killed.silent_s} s at the kill (idle 2 + 3 × 1)`);
  lab.restoreCable();
  watch.kill();
});

test("without root: one line says so, and the namespace's own counters are printed as probes go out", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "setpriv", "python3"] })) return;
  const ns = Netns.create(t);
  const w = ns.spawn([process.execPath, tcpkaFor(NOBODY), "watch"], { user: NOBODY });
  await w.waitFor(/^tcpka watch: not root: no tracing; this namespace's keepalive counters instead/m, 10_000, "stderr");
  // A connection in the namespace that probes every second: the counter moves, and a line says so.
  const p = ns.spawn([python3(), NAMED_CONNS, "tkprobe", "self", "0", "1", "1", "1", "3"]);
  await p.waitFor(/^\{/m);
  await w.waitFor(
    /^\d\d:\d\d:\d\d\.\d{3} {2}[1-9]\d* keepalive probes? sent, 0 connections timed out \(this namespace, the last second\)$/m,
    10_000,
  );
});
