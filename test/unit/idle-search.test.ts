/**
 * The search of `tcpka idle-timeout` against a simulated path with a sharp idle timeout, on a simulated clock:
 * the same IdleSearch the command runs, with probes answered after a round trip or, past the timeout, never
 * (the verdict then comes after the probe timeout). Checks that the bounds bracket the truth within the
 * resolution and how long the search takes, over timeouts from 1s to 15m.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { IdleSearch, recommend, type Slot } from "../../src/probe/idle-search.js";

interface Sim {
  lo: number;
  hi: number;
  found: boolean;
  endMs: number;
  probes: number;
}

/** Run the search against a path that drops connections idle for `timeoutMs` or longer. */
function simulate(timeoutMs: number, o: { parallel?: number; maxMs?: number; rttMs?: number } = {}): Sim {
  const parallel = o.parallel ?? 8;
  const rtt = o.rttMs ?? 1;
  const probeTimeout = 1500;
  const suspectAfter = 200;
  const connectMs = 1;
  const search = new IdleSearch({ maxMs: o.maxMs ?? 900_000 });
  const slots: Slot[] = Array.from({ length: parallel }, () => ({ since: 0, ready: true, probing: null, point: null }));
  type Event = { at: number; run: () => void };
  let events: Event[] = [];
  let now = 0;
  let probes = 0;
  for (let step = 0; step < 100_000; step++) {
    if (search.done) {
      return { lo: search.longestAlive, hi: search.shortestDropped, found: search.found, endMs: now, probes };
    }
    for (const s of search.plan(slots, now)) {
      s.ready = false;
      events.push({ at: now + connectMs, run: () => Object.assign(s, { ready: true, since: now, point: null }) });
    }
    let started = false;
    for (const s of slots) {
      if (!s.ready || s.probing !== null || s.point === null || s.since + s.point > now) continue;
      const idle = now - s.since;
      s.probing = idle;
      s.point = null;
      probes++;
      started = true;
      if (idle < timeoutMs) {
        events.push({
          at: now + rtt,
          run: () => {
            s.probing = null;
            search.alive(idle);
            s.since = now;
          },
        });
      } else {
        events.push({ at: now + suspectAfter, run: () => search.suspect(idle) });
        events.push({
          at: now + probeTimeout,
          run: () => {
            s.probing = null;
            search.dropped(idle);
            s.ready = false;
            events.push({ at: now + connectMs, run: () => Object.assign(s, { ready: true, since: now, point: null }) });
          },
        });
      }
    }
    if (started) continue;
    let next = Number.POSITIVE_INFINITY;
    for (const s of slots)
      if (s.ready && s.probing === null && s.point !== null) next = Math.min(next, s.since + s.point);
    for (const e of events) next = Math.min(next, e.at);
    assert.ok(Number.isFinite(next), `stuck at ${now} ms: nothing planned (timeout ${timeoutMs} ms)`);
    now = next;
    const due = events.filter((e) => e.at <= now);
    events = events.filter((e) => e.at > now);
    for (const e of due) e.run();
  }
  throw new Error(`no end after 100000 steps (timeout ${timeoutMs} ms)`);
}

describe("IdleSearch against a simulated sharp timeout", () => {
  test("the lab's 4s and 9s: bounds within 1s of the truth, done well within 2× the timeout + 3s", () => {
    for (const t of [4000, 9000]) {
      const r = simulate(t);
      assert.ok(r.found);
      assert.ok(r.lo < t && r.hi >= t, `${t}: ${r.lo}..${r.hi}`);
      assert.ok(t - r.lo <= 1000 && r.hi - t <= 1000, `${t}: ${r.lo}..${r.hi}`);
      assert.ok(r.endMs <= 2 * t + 3000, `${t}: took ${r.endMs} ms`);
    }
  });

  test("every timeout from 1s to 15m is bracketed within the resolution, in at most 2.5× the timeout + 3s", () => {
    let worst = 0;
    for (let t = 1050; t < 900_000; t = t < 60_000 ? t + 170 : Math.round(t * 1.04)) {
      const r = simulate(t);
      const res = Math.max(1000, 0.05 * r.lo);
      assert.ok(r.lo < t && r.hi >= t, `${t}: ${r.lo}..${r.hi}`);
      assert.ok(r.hi - r.lo <= res, `${t}: ${r.lo}..${r.hi} wider than ${res}`);
      assert.ok(r.endMs <= 2.5 * t + 3000, `${t}: took ${r.endMs} ms`);
      worst = Math.max(worst, r.endMs / t);
    }
    assert.ok(worst > 1, "sanity");
  });

  test("no timeout: the answer comes once --max has passed, not later", () => {
    for (const max of [6000, 60_000, 900_000]) {
      const r = simulate(Number.POSITIVE_INFINITY, { maxMs: max });
      assert.equal(r.found, false);
      assert.ok(r.lo >= max);
      assert.ok(r.endMs <= max + 10, `--max ${max}: took ${r.endMs} ms`);
    }
  });

  test("a timeout beyond --max is reported as none up to --max", () => {
    const r = simulate(20_000, { maxMs: 6000 });
    assert.equal(r.found, false);
    assert.ok(r.endMs <= 6010);
  });

  test("under a second: found, with no survivor", () => {
    const r = simulate(500);
    assert.ok(r.found);
    assert.equal(r.lo, 0);
    assert.ok(r.hi <= 1000);
  });

  test("works with 2 connections and with 32, on a slow path", () => {
    for (const parallel of [2, 32]) {
      const r = simulate(30_000, { parallel, rttMs: 150 });
      assert.ok(r.lo < 30_000 && r.hi >= 30_000 && r.hi - r.lo <= 1500, `${parallel}: ${r.lo}..${r.hi}`);
    }
  });
});

describe("recommend", () => {
  test("idle at half the timeout, a fifth of that between probes, probes that fit", () => {
    assert.deepEqual(recommend(300_000), { idle: 150, interval: 30, count: 4 });
    assert.deepEqual(recommend(3600), { idle: 1, interval: 1, count: 3 });
    assert.deepEqual(recommend(8900), { idle: 4, interval: 1, count: 3 });
    assert.deepEqual(recommend(3_600_000), { idle: 1800, interval: 360, count: 4 });
  });
  test("nothing under 2s: keepalive counts whole seconds", () => assert.equal(recommend(1900), null));
});
