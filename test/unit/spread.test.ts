/**
 * The pace of bulk changes (src/enforce/live/spread.ts): the timer wheel's granularity, the window and the floor,
 * as arithmetic; and HZ as the running kernel gives it.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  armsTimer,
  capSpread,
  granularityMs,
  granuleSlotMs,
  probeBound,
  spreadOf,
  tickLimits,
  wheelGranularityMs,
} from "../../src/enforce/live/spread.js";
import { kernelHz } from "../../src/sys/libc.js";

describe("the timer wheel's granularity (calc_wheel_index, calc_index)", () => {
  test("2 s and 60 s at HZ 250 and 1000", () => {
    assert.equal(wheelGranularityMs(2, 250), 32, "500 jiffies: level 1, 8 jiffies");
    assert.equal(wheelGranularityMs(2, 1000), 64, "2,000 jiffies: level 2, 64 jiffies");
    assert.equal(wheelGranularityMs(60, 250), 2048, "15,000 jiffies: level 3, 512 jiffies");
    assert.equal(wheelGranularityMs(60, 1000), 4096, "60,000 jiffies: level 4, 4,096 jiffies");
  });

  test("the level boundaries: below 63 << 3n jiffies is level n", () => {
    assert.equal(wheelGranularityMs(0.062, 1000), 1, "62 jiffies: level 0");
    assert.equal(wheelGranularityMs(0.063, 1000), 8, "63 jiffies: level 1");
    assert.equal(wheelGranularityMs(0.503, 1000), 8);
    assert.equal(wheelGranularityMs(0.504, 1000), 64);
    assert.equal(wheelGranularityMs(7200, 250), 131_072, "1.8 M jiffies: level 5");
  });

  test("the last level takes everything longer (LVL_DEPTH 9, 8 at HZ 100)", () => {
    assert.equal(wheelGranularityMs(32_767, 1000), 8 ** 7, "level 7 of 0..8");
    assert.equal(wheelGranularityMs(1e9, 1000), 8 ** 8, "beyond the wheel: level 8");
    assert.equal(wheelGranularityMs(1e9, 100), (8 ** 7 * 1000) / 100, "HZ 100: level 7 is the last");
  });

  test("HZ unknown: the largest over 100, 250, 300 and 1000", () => {
    assert.equal(granularityMs(2, undefined), (64 * 1000) / 300, "HZ 300: 600 jiffies is level 2, 213 ms");
    assert.equal(granularityMs(60, undefined), 5120, "HZ 100: 6,000 jiffies is level 3, 5.12 s");
    assert.equal(granularityMs(2, 250), 32);
  });
});

describe("the window", () => {
  const hz250 = { hz: 250, backlog: 1000 };

  test("B = half the backlog; up to B changes go at once", () => {
    assert.equal(probeBound(hz250), 500);
    assert.equal(probeBound({ hz: 250, backlog: 1001 }), 500);
    assert.deepEqual(spreadOf(500, 2, 2, false, hz250), {
      changes: 500,
      windowMs: 0,
      stepMs: 0,
      perTick: 500,
      bound: 500,
      floor: false,
    });
  });

  test("a slot of B changes: the granule and two ticks of slack", () => {
    assert.equal(granuleSlotMs(2, 250), 40);
    assert.equal(granuleSlotMs(2, 1000), 66);
    assert.equal(granuleSlotMs(2, undefined), (64 * 1000) / 300 + 2000 / 300, "HZ 300 has the longest");
  });

  test("16,000 changes, idle 2 s, HZ 250: 0.8 B per 40 ms slot, W = 1,600 ms", () => {
    assert.deepEqual(spreadOf(16_000, 2, 2, false, hz250), {
      changes: 16_000,
      windowMs: 1600,
      stepMs: 40 / 400,
      perTick: 400,
      bound: 500,
      floor: false,
    });
  });

  test("40,000 changes, idle 2 s: the floor; W = idle less two granules, N × G / W ≈ 662 probes share a tick", () => {
    assert.deepEqual(spreadOf(40_000, 2, 2, false, hz250), {
      changes: 40_000,
      windowMs: 1936,
      stepMs: 1936 / 40_000,
      perTick: 662,
      bound: 500,
      floor: true,
    });
  });

  test("timers re-armed at once (keepalive on already, a new idle): the floor is a tick more", () => {
    const s = spreadOf(40_000, 2, 2, true, hz250);
    assert.deepEqual([s.windowMs, s.perTick, s.floor], [1936, 744, true], "40,000 × (32 + 4) / 1,936");
    assert.equal(spreadOf(16_000, 2, 2, true, hz250).windowMs, 1600, "below the floor: the same spread");
  });

  test("the granule comes from the longest timer, the fold-back from the shortest idle", () => {
    const s = spreadOf(5000, 60, 60, false, hz250);
    assert.equal(s.windowMs, (5000 * 2056) / 400, "60 s timers: 2,048 ms granules");
    assert.equal(s.floor, false);
    const mixed = spreadOf(5000, 2, 60, false, hz250);
    // two granules are more than a tenth of the idle: a tenth it is
    assert.deepEqual([mixed.windowMs, mixed.perTick, mixed.floor], [1800, Math.ceil((5000 * 2048) / 1800), true]);
  });

  test("clamped to idle but under the bound: no floor", () => {
    // 28,000 × 32 / 1,936 = 463 ≤ 500 < 28,000 × 40 / (0.8 × 500)
    assert.deepEqual(spreadOf(28_000, 2, 2, false, hz250), {
      changes: 28_000,
      windowMs: 1936,
      stepMs: 1936 / 28_000,
      perTick: 463,
      bound: 500,
      floor: false,
    });
  });

  test("HZ unknown: the longer window", () => {
    const s = spreadOf(16_000, 60, 60, false, { hz: undefined, backlog: 1000 });
    assert.deepEqual([s.windowMs, s.floor], [54_000, true], "60 s less a tenth (two 5,120 ms granules are more)");
    assert.equal(spreadOf(2000, 60, 60, false, { hz: undefined, backlog: 1000 }).windowMs, (2000 * 5140) / 400);
  });

  test("only SO_KEEPALIVE on and TCP_KEEPIDLE arm a timer", () => {
    assert.equal(armsTimer([{ option: "keepalive", from: 0, to: 1 }]), true);
    assert.equal(armsTimer([{ option: "idle", from: 7200, to: 2 }]), true);
    assert.equal(armsTimer([{ option: "keepalive", from: 1, to: 0 }]), false, "disable deletes the timer");
    assert.equal(
      armsTimer([
        { option: "interval", from: 75, to: 1 },
        { option: "count", from: 9, to: 2 },
        { option: "userTimeout", from: 0, to: 5000 },
      ]),
      false,
    );
  });
});

test("the limits take HZ from kernelHz (checked against CONFIG_HZ in kernel-hz.test.ts)", () => {
  assert.equal(tickLimits().hz, kernelHz());
});

describe("--spread: a window cut short (capSpread)", () => {
  const l = { hz: 250, backlog: 1000 };
  test("a cap longer than the spread changes nothing", () => {
    const s = spreadOf(16_000, 2, 2, false, l);
    assert.deepEqual(capSpread(s, 60_000, 2, l), s);
  });
  test("shorter: the same changes faster, and the probes per tick that gives, said", () => {
    const s = capSpread(spreadOf(16_000, 2, 2, false, l), 640, 2, l);
    assert.equal(s.windowMs, 640);
    assert.equal(s.stepMs, 640 / 16_000);
    assert.equal(s.perTick, 800, "16,000 × 32 ms / 640 ms");
    assert.equal(s.capped, true);
  });
  test("0, or shorter than one granule: every change in one tick", () => {
    for (const max of [0, 20]) {
      const s = capSpread(spreadOf(16_000, 2, 2, false, l), max, 2, l);
      assert.equal(s.perTick, 16_000);
      assert.equal(s.capped, true);
    }
  });
});
