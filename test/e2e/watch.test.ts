/**
 * `tcpka watch` (issue 17) in the firewall lab: a client with keepalive idle 2 s, interval 1 s, count 3 (set by
 * `tcpka run`) shows probes sent and answered while the path is up; once the lab's cable is pulled its probes go
 * unanswered, and after idle + interval × count = 5 s the kill is shown with ETIMEDOUT, when the client's own
 * blocking recv() fails with it. Keepalive turned on, retuned and off is shown with who did it: the program's
 * own setsockopt, a connect with keepalive set before it, tcpka enable through either path; --container shows
 * one container's. Without root, watch says so in one line and counts instead.
 */
import assert from "node:assert/strict";
import { type TestContext, test } from "node:test";
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
  options?: string[];
  keepalive?: boolean;
  idle_s?: number;
  interval_s?: number;
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

/**
 * ka_changes in a network namespace of its own and `tcpka watch --json` on its listener's port; `change` makes one
 * step and returns the one change it shows on a connection (exactly one, however many records or calls).
 */
async function changesSession(t: TestContext, flags: readonly string[] = []) {
  const ns = Netns.create(t);
  const prog = ns.spawn([python3(), KA_CHANGES]);
  const hello = JSON.parse(await prog.line()) as { pid: number; port: number };
  const watch = startTcpka(t, ["watch", "--json", "--port", String(hello.port), ...flags], { timeoutMs: 120_000 });
  await watch.waitFor(/tracing keepalive/, 15_000, "stderr");
  // Everything traced: the timer's programs and the setsockopt syscall's (no "... is not seen: why").
  if (flags.length === 0) assert.doesNotMatch(watch.stderr, /not seen/);
  const ask = async (cmd: string) => {
    prog.send(`${cmd}\n`);
    return JSON.parse(await prog.line()) as { conn: number; port: number; error?: string };
  };
  const changesOf = (port: number) =>
    events(watch).filter((e) => CHANGES.has(e.kind) && e.local === `127.0.0.1:${port}`);
  const change = async (port: number, step: () => unknown): Promise<Event> => {
    const before = changesOf(port).length;
    await step();
    await until("the change", () => changesOf(port).length > before, 5000);
    await sleep(400); // nothing more comes of it
    const after = changesOf(port).slice(before);
    assert.equal(after.length, 1, JSON.stringify(after));
    return after[0] as Event;
  };
  return { ns, prog, hello, watch, ask, changesOf, change };
}

/**
 * The wheel's buckets round an expiry up by at most 1/8 of the time left (kernel/time/timer.c, LVL_CLK_SHIFT 3); a
 * new idle on a connection with keepalive on counts from its last packet (tcp_sock_set_keepidle_locked: idle minus
 * keepalive_time_elapsed), which silent_s says.
 */
function firstProbeIn(e: Event, idle: number): void {
  const next = e.next_probe_s ?? -1;
  assert.ok(
    next >= idle - e.silent_s - 0.1 && next <= idle * 1.13 + 0.1,
    `next probe in ${e.next_probe_s} s, idle ${idle} s, silent ${e.silent_s} s`,
  );
}

test("keepalive turned on, retuned and off, with who did it: the program, a connect, tcpka enable by either path", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
  const { ns, hello, watch, ask, changesOf, change } = await changesSession(t);

  // The program: SO_KEEPALIVE then TCP_KEEPIDLE is one change, on; a new idle, retuned; then off.
  const a = await ask("connect");
  const on = await change(a.port, () => ask(`on ${a.conn} 30`));
  assert.equal(on.kind, "on");
  assert.deepEqual(on.by, { pid: hello.pid, comm: "python3" });
  assert.equal(on.at_connect, false);
  assert.deepEqual(on.options, ["SO_KEEPALIVE", "TCP_KEEPIDLE"]);
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
  assert.deepEqual(off.options, ["SO_KEEPALIVE"]);

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

  // tcpka enable, through a duplicate of the socket and in the kernel: "by tcpka", its own process. Through the
  // duplicate its setsockopt calls are seen; the kernel's bpf_setsockopt is not a system call: the timer shows it.
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
    if (via === "pidfd") assert.ok(byTcpka.options?.includes("SO_KEEPALIVE"), JSON.stringify(byTcpka));
    else assert.deepEqual(byTcpka.options, [], via);
  }
  // The accepted ends were never touched.
  assert.deepEqual(changesOf(hello.port), []);
  watch.kill();
});

test("a program's own TCP_KEEPINTVL, then TCP_KEEPCNT, alone: retuned with the new values; a new idle is one line, also within its timer wheel bucket", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
  const { hello, watch, ask, changesOf, change } = await changesSession(t);
  const python = { pid: hello.pid, comm: "python3" };
  const a = await ask("connect");

  // Without keepalive: what it will probe with once it is on (the namespace's idle and count, 7200 s and 9).
  const early = await change(a.port, () => ask(`intvl ${a.conn} 7`));
  assert.equal(early.kind, "retuned");
  assert.equal(early.keepalive, false);
  assert.deepEqual(early.by, python);
  assert.deepEqual(early.options, ["TCP_KEEPINTVL"]);
  assert.deepEqual([early.idle_s, early.interval_s, early.count], [7200, 7, 9]);
  assert.equal(early.next_probe_s, undefined);
  const on = await change(a.port, () => ask(`on ${a.conn} 30`));
  assert.equal(on.kind, "on");
  assert.deepEqual([on.idle_s, on.interval_s, on.count], [30, 7, 9]);

  // On an idle established connection with keepalive on: no timer moves, the setsockopt is seen.
  const interval = await change(a.port, () => ask(`intvl ${a.conn} 5`));
  assert.equal(interval.kind, "retuned");
  assert.equal(interval.keepalive, true);
  assert.deepEqual(interval.by, python);
  assert.deepEqual(
    interval.owners.map((o) => o.pid),
    [hello.pid],
  );
  assert.deepEqual(interval.options, ["TCP_KEEPINTVL"]);
  assert.deepEqual([interval.idle_s, interval.interval_s, interval.count], [30, 5, 9]);
  // The timer as TCP_KEEPIDLE 30 armed it, a few hundred milliseconds ago.
  assert.ok(
    (interval.next_probe_s ?? -1) > 25 && (interval.next_probe_s ?? -1) <= 30 * 1.13,
    `${interval.next_probe_s}`,
  );
  const count = await change(a.port, () => ask(`cnt ${a.conn} 4`));
  assert.equal(count.kind, "retuned");
  assert.deepEqual(count.by, python);
  assert.deepEqual(count.options, ["TCP_KEEPCNT"]);
  assert.deepEqual([count.idle_s, count.interval_s, count.count], [30, 5, 4]);

  // A new idle re-arms the timer (timer_cancel, timer_start) and is a setsockopt: one line, with both's facts.
  const idle = await change(a.port, () => ask(`idle ${a.conn} 3000`));
  assert.equal(idle.kind, "retuned");
  assert.deepEqual(idle.options, ["TCP_KEEPIDLE"]);
  assert.deepEqual([idle.idle_s, idle.interval_s, idle.count], [3000, 5, 4]);
  firstProbeIn(idle, 3000);
  // 3001 s moves the expiry by 1 s, within the bucket it is in but 1 time in 131 (131 s wide there at HZ 250,
  // calc_wheel_index): __mod_timer then only updates the expiry and traces nothing. One line either way.
  const again = await change(a.port, () => ask(`idle ${a.conn} 3001`));
  assert.equal(again.kind, "retuned");
  assert.deepEqual(again.options, ["TCP_KEEPIDLE"]);
  assert.equal(again.idle_s, 3001);
  firstProbeIn(again, 3001);

  // A call that fails, and SO_KEEPALIVE 1 where it is on, change nothing and show nothing; the off after them does.
  const before = changesOf(a.port).length;
  assert.deepEqual(await ask(`cnt ${a.conn} 1000`), { error: "EINVAL" });
  await ask(`again ${a.conn}`);
  const off = await change(a.port, () => ask(`off ${a.conn}`));
  assert.equal(off.kind, "off");
  assert.deepEqual(off.by, python);
  assert.equal(changesOf(a.port).length, before + 1, JSON.stringify(changesOf(a.port).slice(before)));
  watch.kill();
});

test("--no-setsockopt: said in the first line; an interval alone is not seen, keepalive turned on still is", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
  const { watch, ask, changesOf, change } = await changesSession(t, ["--no-setsockopt"]);
  assert.match(watch.stderr, /a new TCP_KEEPINTVL or TCP_KEEPCNT alone, .* is not seen: --no-setsockopt$/m);
  const a = await ask("connect");
  await ask(`on ${a.conn} 30`);
  await until("keepalive on", () => changesOf(a.port).some((e) => e.kind === "on"), 5000);
  const before = changesOf(a.port).length;
  await ask(`intvl ${a.conn} 5`);
  await sleep(1000);
  assert.equal(changesOf(a.port).length, before, JSON.stringify(changesOf(a.port).slice(before)));
  // The timer still shows a new idle, without the options that only the setsockopt programs name.
  const idle = await change(a.port, () => ask(`idle ${a.conn} 3000`));
  assert.equal(idle.kind, "retuned");
  assert.equal(idle.idle_s, 3000);
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
