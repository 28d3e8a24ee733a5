/**
 * `tcpka watch` (issue 17) in the firewall lab: a client with keepalive idle 2 s, interval 1 s, count 3 (set by
 * `tcpka run`) shows probes sent and answered while the path is up; once the lab's cable is pulled its probes go
 * unanswered, and after idle + interval × count = 5 s the kill is shown with ETIMEDOUT, when the client's own
 * blocking recv() fails with it. Keepalive turned on, retuned and off is shown with who did it: the program's
 * own setsockopt, a connect with keepalive set before it, tcpka enable through either path; --container shows
 * one container's. Without root, watch says so in one line and counts instead.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { needs, python3 } from "../helpers/env.js";
import { LAB_PEER, Lab, SERVER_IP } from "../helpers/lab.js";
import { Netns } from "../helpers/netns.js";
import { fixture } from "../helpers/paths.js";
import { busyboxImage, needsPodman, startKinds } from "../helpers/podman.js";
import { type Process, sleep, until } from "../helpers/processes.js";
import { uniqueName } from "../helpers/scope.js";
import { startTcpka, tcpkaFor } from "../helpers/tcpka.js";
import { NOBODY } from "../helpers/users.js";

const NAMED_CONNS = fixture("named_conns.py");
const KA_CHANGES = fixture("ka_changes.py");

interface Event {
  kind: "probe" | "answered" | "killed" | "timed-out" | "on" | "retuned" | "off";
  at: string;
  local: string;
  peer: string;
  owners: { pid: number; comm: string }[];
  probe: number;
  count: number;
  silent_s: number;
  answered_ms?: number;
  errno?: string;
  by?: { pid: number; comm: string } | null;
  at_connect?: boolean;
  idle_s?: number;
  next_probe_s?: number;
  container: { runtime: string; id: string; name: string | null } | null;
}

const CHANGES = new Set(["on", "retuned", "off"]);

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
  // Each expiry detaches the timer (a timer_cancel) before it runs: that is no keepalive turned off.
  const offs = events(watch).filter((e) => mine(e) && e.kind === "off");
  assert.deepEqual(offs, [], "keepalive off while it probed");
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

test("keepalive turned on, retuned and off, with who did it: the program, a connect, tcpka enable by either path", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
  const ns = Netns.create(t);
  const prog = ns.spawn([python3(), KA_CHANGES]);
  const hello = JSON.parse(await prog.line()) as { pid: number; port: number };
  const watch = startTcpka(t, ["watch", "--json", "--port", String(hello.port)], { timeoutMs: 120_000 });
  await watch.waitFor(/tracing keepalive/, 15_000, "stderr");
  assert.doesNotMatch(watch.stderr, /not seen on this kernel/);
  const ask = async (cmd: string) => {
    prog.send(`${cmd}\n`);
    return JSON.parse(await prog.line()) as { conn: number; port: number };
  };
  const changesOf = (port: number) =>
    events(watch).filter((e) => CHANGES.has(e.kind) && e.local === `127.0.0.1:${port}`);
  /** The one change that `step` makes on `port`'s connection: exactly one, however many setsockopt calls. */
  const change = async (port: number, step: () => unknown): Promise<Event> => {
    const before = changesOf(port).length;
    await step();
    await until("the change", () => changesOf(port).length > before, 5000);
    await sleep(400); // nothing more comes of it
    const after = changesOf(port).slice(before);
    assert.equal(after.length, 1, JSON.stringify(after));
    return after[0] as Event;
  };
  // The wheel's buckets round an expiry up by at most 1/8 of the time left (kernel/time/timer.c, LVL_CLK_SHIFT 3).
  const firstProbeIn = (e: Event, idle: number) =>
    assert.ok(
      (e.next_probe_s ?? -1) >= idle - 0.1 && (e.next_probe_s ?? -1) <= idle * 1.13 + 0.1,
      `next probe in ${e.next_probe_s} s, idle ${idle} s`,
    );

  // The program: SO_KEEPALIVE then TCP_KEEPIDLE is one change, on; a new idle, retuned; then off.
  const a = await ask("connect");
  const on = await change(a.port, () => ask(`on ${a.conn} 30`));
  assert.equal(on.kind, "on");
  assert.deepEqual(on.by, { pid: hello.pid, comm: "python3" });
  assert.equal(on.at_connect, false);
  assert.equal(on.idle_s, 30);
  firstProbeIn(on, 30);
  const retuned = await change(a.port, () => ask(`idle ${a.conn} 600`));
  assert.equal(retuned.kind, "retuned");
  assert.equal(retuned.by?.pid, hello.pid);
  assert.equal(retuned.idle_s, 600);
  firstProbeIn(retuned, 600);
  const off = await change(a.port, () => ask(`off ${a.conn}`));
  assert.equal(off.kind, "off");
  assert.equal(off.by?.pid, hello.pid);

  // Set before connect(): armed when the connection is established.
  let b: { conn: number; port: number } | undefined;
  const atConnect = await until(
    "the connect's on",
    async () => {
      b ??= await ask("preset 45");
      return changesOf(b.port)[0];
    },
    5000,
  );
  assert.equal(atConnect.kind, "on");
  assert.equal(atConnect.at_connect, true);
  assert.equal(atConnect.by, null);
  assert.equal(atConnect.idle_s, 45);

  // tcpka enable, through a duplicate of the socket and in the kernel: "by tcpka", its own process.
  for (const via of ["pidfd", "bpf"]) {
    const c = await ask("connect");
    const byTcpka = await change(c.port, () => {
      const r = ns.tcpka(["enable", "--pid", String(hello.pid), "--sport", String(c.port), "--via", via]);
      assert.equal(r.status, 0, r.stderr);
      return r;
    });
    assert.equal(byTcpka.kind, "on", via);
    assert.equal(byTcpka.by?.comm, "tcpka", via);
    assert.notEqual(byTcpka.by?.pid, hello.pid, via);
    assert.ok((byTcpka.idle_s ?? 0) > 0 && (byTcpka.idle_s ?? 0) <= 60, `${via}: idle ${byTcpka.idle_s} s`);
  }
  // The accepted ends were never touched.
  assert.deepEqual(changesOf(hello.port), []);
  watch.kill();
});

test("--container: only that container's keepalive changes", async (t) => {
  if (!needsPodman(t)) return;
  const image = busyboxImage(t);
  const name = `${uniqueName()}-watched`;
  const watch = startTcpka(t, ["watch", "--json", "--container", name], { timeoutMs: 120_000 });
  await watch.waitFor(/tracing keepalive/, 15_000, "stderr");
  const other = await startKinds(t, image);
  const mine = await startKinds(t, image, { name });
  // ka_kinds sets idle 31 s and SO_KEEPALIVE before connecting: armed at the connect, in the container.
  const on = await until(
    "the container's connect with keepalive",
    () => events(watch).find((e) => e.kind === "on" && e.idle_s === 31),
    10_000,
  );
  assert.equal(on.at_connect, true);
  assert.equal(on.container?.name, name);
  assert.equal(on.container?.id, mine.container.id);
  assert.equal(on.owners[0]?.comm, "ka_kinds");
  await sleep(500);
  const elsewhere = events(watch).filter((e) => e.container?.id !== mine.container.id);
  assert.deepEqual(elsewhere, [], `events of ${other.container.name} or elsewhere`);
  watch.kill();
});
