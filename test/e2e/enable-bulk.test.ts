/**
 * Issue 14's reproduction: `tcpka enable --idle 2s --interval 1s --count 2` on 16,000 and 40,000 idle loopback
 * connection ends held by several processes (test/helpers/bulk.ts), with keepalive off and with keepalive
 * already on at the 7200 s default on sockets idle for longer than the new idle. Changing them all in one pass
 * makes their timers fire in the same tick and stay in step; on loopback the probes and their ACKs then
 * overflow the softnet backlog, and a dropped probe counts as unanswered: connections die with ETIMEDOUT. After
 * the change and 15 s: no connection lost, no softnet drop, every end with the settings asked for (as its
 * holder's getsockopt reads them), and never more keepalive probes in one timer tick than probesPerTickBound().
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Bulk, drops, probesPerTickBound } from "../helpers/bulk.js";
import { needs } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import { sleep } from "../helpers/processes.js";

after(() => Netns.destroyAll());

/** Longer than the new idle (2 s): a socket with keepalive on is then due for a probe as soon as its idle drops. */
const IDLE_BEFORE_MS = 5000;
const WATCH_MS = 15_000;
const TODO = "issue 14: fails until the spread lands";

for (const ends of [16_000, 40_000]) {
  for (const keepalive of [false, true]) {
    const before = keepalive ? "keepalive on at 7200 s" : "keepalive off";
    test(`enable on ${ends} idle ends (${before}): none lost, no softnet drop, probes per tick bounded`, {
      todo: TODO,
      timeout: 180_000,
    }, async (t) => {
      if (!needs(t, { root: true, tools: ["ip", "gcc"] })) return;
      const ns = Netns.create(t);
      const bulk = await Bulk.start(t, ns, { ends, keepalive });
      await sleep(IDLE_BEFORE_MS);
      const sampler = await bulk.sample();
      sampler.mark();
      const pids = bulk.pids.flatMap((p) => ["--pid", String(p)]);
      const r = ns.tcpka(["enable", ...pids, "--idle", "2s", "--interval", "1s", "--count", "2"], {
        timeoutMs: 60_000,
      });
      assert.equal(r.status, 0, r.stderr);
      await sleep(WATCH_MS);
      const report = await bulk.report();
      const probes = await sampler.stop();
      const seen = `lost ${report.lost} (ETIMEDOUT ends ${report.etimedout}), softnet drops ${probes.dropped}, probes per 4 ms ${probes.max4}, per 32 ms ${probes.max32}`;
      t.diagnostic(seen);

      assert.equal(report.ends, ends);
      assert.equal(report.lost, 0, `no connection lost: ${seen}`);
      assert.equal(drops(probes), 0, `no softnet drop: ${seen}`);
      // strengthen may spread the timers by lowering idle (never raising it), so 1 s is as good as 2 s
      for (const s of report.settings) {
        assert.ok(
          s.keepalive === 1 && s.idle >= 1 && s.idle <= 2 && s.interval === 1 && s.count === 2,
          `${s.ends} ends read keepalive ${s.keepalive}, ${s.idle}s / ${s.interval}s / ${s.count}`,
        );
      }
      assert.ok(probes.total > 0, "keepalive probes were sent");
      const bound = probesPerTickBound();
      assert.ok(probes.max4 <= bound, `at most ${bound} probes in a tick: ${seen}`);
    });
  }
}
