/**
 * Issue 14's reproduction: `tcpka enable --idle 2s --interval 1s --count 2` on 16,000 and 40,000 idle loopback
 * connection ends held by several processes (test/helpers/bulk.ts), with keepalive off and with keepalive
 * already on at the 7200 s default on sockets idle for longer than the new idle. Changing them all in one pass
 * made their timers fire in the same tick and stay in step; on loopback the probes and their ACKs then
 * overflowed the softnet backlog, and a dropped probe counts as unanswered: connections died with ETIMEDOUT
 * (before the spread: 1,985–5,330 connections lost per case, 3,174–5,137 probes in one 4 ms tick). After the
 * change and 15 s: no connection lost, every end with the settings asked for (as its holder's getsockopt reads
 * them), and tcpka's plan never more keepalive probes in one timer tick than half the backlog, or 20 % above the
 * floor N × G / idle where no spread can do better (a tick more where keepalive was on: the new idle re-arms the
 * timers at once; src/enforce/live/spread.ts); measured, at most three planned ticks' probes in one tick (a late
 * timer softirq) and no softnet drop where two fit the backlog; tcpka says how it spreads. At 40,000 ends the floor
 * leaves no room for one late softirq: where the kernel is seen merging granules there, losses must all be
 * explained by softnet's drops (see the case itself).
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { granularityMs, tickLimits } from "../../src/enforce/live/spread.js";
import { Bulk, drops, netdevMaxBacklog, probesPerTickBound } from "../helpers/bulk.js";
import { needs } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import { sleep } from "../helpers/processes.js";

after(() => Netns.destroyAll());

/** Longer than the new idle (2 s): a socket with keepalive on is then due for a probe as soon as its idle drops. */
const IDLE_BEFORE_MS = 5000;
const WATCH_MS = 15_000;
const IDLE_S = 2;

// Both ways of changing sockets on every case: the kernel path (the default as root: a BPF TCP iterator) and
// the pidfd path (each case is about 20 s).
const CASES = ["bpf", "pidfd"].flatMap((via) =>
  [16_000, 40_000].flatMap((ends) => [false, true].map((keepalive) => ({ ends, keepalive, via }))),
);

for (const { ends, keepalive, via } of CASES) {
  const before = keepalive ? "keepalive on at 7200 s" : "keepalive off";
  const none =
    ends < 40_000 ? "none lost, no softnet drop" : "none lost unless the kernel merges ticks, then only to drops";
  test(`enable --via ${via} on ${ends} idle ends (${before}): ${none}, probes per tick bounded`, {
    timeout: 180_000,
  }, async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "gcc"] })) return;
    const ns = Netns.create(t);
    const bulk = await Bulk.start(t, ns, { ends, keepalive });
    await sleep(IDLE_BEFORE_MS);
    const sampler = await bulk.sample();
    sampler.mark();
    const pids = bulk.pids.flatMap((p) => ["--pid", String(p)]);
    const start = performance.now();
    const argv = ["enable", ...pids, "--idle", `${IDLE_S}s`, "--interval", "1s", "--count", "2", "--via", via, "-q"];
    const r = ns.tcpka(argv, {
      timeoutMs: 60_000,
    });
    const wallMs = performance.now() - start;
    assert.equal(r.status, 0, r.stderr);
    await sleep(WATCH_MS);
    const report = await bulk.report();
    const probes = await sampler.stop();
    const changed = Number(/^ {2}changed +(\d+)/m.exec(r.stdout)?.[1]);
    // The floor no spread can beat (spread.ts): N × G / idle, a tick more where the new idle re-arms timers at once.
    const { hz } = tickLimits();
    const g = granularityMs(IDLE_S, hz) + (keepalive && hz ? 1000 / hz : 0);
    const floor = (changed * g) / (IDLE_S * 1000);
    const bound = probesPerTickBound(floor);
    const seen = `lost ${report.lost} (ETIMEDOUT ends ${report.etimedout}), softnet drops ${probes.dropped}, probes per 4 ms ${probes.max4} (bound ${bound}), per 32 ms ${probes.max32}, busiest 4 ms windows ${JSON.stringify(probes.top4.slice(0, 4))}, sampler gap ≤ ${probes.maxGapUs} µs; tcpka enable took ${Math.round(wallMs)} ms`;
    t.diagnostic(seen);
    t.diagnostic(
      r.stdout
        .split("\n")
        .filter((l) => /^(spreading|warning)/.test(l))
        .join(" / "),
    );

    assert.equal(report.ends, ends);
    assert.ok(changed >= ends, `every end changed: ${r.stdout}`);
    // What tcpka plans: no tick above half the backlog, or 20 % above the floor where that cannot be met.
    const planned = Number(/no timer tick carries more than ~(\d+) probes/.exec(r.stdout)?.[1]);
    assert.ok(planned <= bound, `tcpka plans at most ${bound} probes a tick: ${planned}`);
    // What the kernel then does: a timer softirq that runs late (a stalled vCPU, softirqs deferred to ksoftirqd)
    // expires the granules it missed at once, so one measured tick may carry two or three planned ones (seen in CI
    // on this 2-vCPU VM: 640 at 16,000 ends planned at 320, 1,615 and 1,661 at 40,000 planned at 662 and 744).
    // Without the spread it was 3,174–5,137. A longer stall holds back more: the sampler stalls with its vCPU,
    // so a gap of G ms between its samples is a softirq late by as much, which expires every granule (g ms) due
    // meanwhile at once — seen in CI: a 94 ms gap, 2,432 probes in 4 ms planned at 662 a tick, nothing lost.
    const held = Math.max(3, Math.ceil(probes.maxGapUs / 1000 / g) + 1);
    assert.ok(probes.max4 <= held * bound, `at most ${held} planned ticks' probes in one: ${seen}`);
    const backlog = netdevMaxBacklog();
    // A tick with half as many probes again as planned: the kernel merged granules (tcpka's turns never come
    // early: session.ts). Those sockets then stay merged, because each re-arms from the tick that ran it.
    // The sliding max leaves out what a stalled sampler missed (a pair of samples more than 4 ms apart); the
    // aligned windows put that all in one window. A stall of the sampler is a stall of its vCPU, when the timer
    // softirq runs late too: seen in CI, 1,080 probes in the sliding max but 1,676 in one aligned window after a
    // 24 ms gap, with drops and losses. Only when neither shows a merge has the kernel kept to the plan.
    const busiest = Math.max(probes.max4, ...probes.top4.map(([, n]) => n));
    const merged = busiest > 1.5 * planned;
    if (2 * planned < backlog || !merged) {
      // Where two planned ticks fit the backlog, one late softirq drops nothing; where the kernel kept to the
      // plan, nothing is dropped either: no connection may be lost.
      assert.equal(report.lost, 0, `no connection lost: ${seen}`);
      assert.equal(drops(probes), 0, `no softnet drop: ${seen}`);
    } else {
      // 40,000 ends, idle 2 s: the floor (640–720 a tick) leaves less than twice itself below netdev_max_backlog,
      // so a late softirq drops probes, and a connection whose probes are dropped twice in a row dies (count 2;
      // tcpka warns that it is fragile and that the floor is above half the backlog). The holders' own ideal
      // spread has the same floor (BENCHMARKS.md §5: 641-700 a tick at 40,000 ends). What tcpka still answers for: every loss is one the softnet
      // drops explain (an end dies after two unanswered probes, its peer by the reset it then sends), nothing else.
      t.diagnostic(`the kernel merged timer granules (${busiest} probes in 4 ms, planned ${planned}): ${seen}`);
      assert.equal(report.otherError, 0, `ends died only of keepalive (ETIMEDOUT, or the peer's reset): ${seen}`);
      assert.ok(2 * report.lost <= drops(probes), `every loss explained by softnet drops: ${seen}`);
    }
    for (const s of report.settings) {
      assert.deepEqual(
        [s.keepalive, s.idle, s.interval, s.count, s.userTimeout],
        [1, IDLE_S, 1, 2, 0],
        `${s.ends} ends read keepalive ${s.keepalive}, ${s.idle}s / ${s.interval}s / ${s.count}`,
      );
    }
    assert.ok(probes.total > 0, "keepalive probes were sent");
    assert.match(r.stdout, new RegExp(`^spreading ${changed} changes over `, "m"), "tcpka says it spreads");
    const half = Math.floor(netdevMaxBacklog() / 2);
    assert.equal(/^warning: ~\d+ is more than half/m.test(r.stdout), floor > half, "the floor is said where it binds");
    assert.match(r.stdout, /^warning: giving up after 2 unanswered probes 1s apart is fragile on \d+ sockets/m);
  });
}
