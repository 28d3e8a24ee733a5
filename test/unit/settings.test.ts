import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  afterChanges,
  deadPeerAfter,
  deadPeerChange,
  type EffectiveKeepAlive,
  formatMs,
  formatSeconds,
  parseCount,
  parseDurationMs,
  parseIdle,
  parseInterval,
  parseUserTimeout,
  planChanges,
  strengthen,
} from "../../src/settings.js";
import { each, throwsExit2 } from "../helpers/expect.js";

describe("parseDurationMs", () => {
  test("a bare number means seconds; units alone and combined; fractions without floating-point noise", () => {
    each(parseDurationMs, [
      ["75", 75_000],
      [" 75 ", 75_000],
      ["0", 0],
      ["1.5", 1500],
      ["75s", 75_000],
      ["2m", 120_000],
      ["1h30m", 5_400_000],
      ["1d", 86_400_000],
      ["500ms", 500],
      ["1m5s", 65_000],
      ["1s500ms", 1500],
      ["1.5s", 1500],
      ["1.1s", 1100],
      ["0.29s", 290],
      ["1.5ms", 1.5],
    ]);
  });

  test("anything else is undefined", () => {
    for (const bad of ["", "   ", "2x", "s", "-5", "1.2.3", ".5s", "1h 30m", "75S", "ten", "1e3"]) {
      assert.equal(parseDurationMs(bad), undefined, bad);
    }
  });
});

describe("parseIdle and parseInterval", () => {
  test("accept whole seconds from 1 to 32767", () => {
    each(parseIdle, [
      ["1", 1],
      ["2m", 120],
      ["1.0s", 1],
      ["9h6m7s", 32767],
    ]);
    each(parseInterval, [
      ["75s", 75],
      ["32767", 32767],
    ]);
  });

  test("reject sub-second values, naming the flag and the limits", () => {
    const msg = "the kernel counts keepalive idle time in whole seconds (1 to 32767)";
    throwsExit2(() => parseIdle("1.5s"), "invalid", `--idle 1.5s: ${msg}`);
    throwsExit2(() => parseIdle("500ms"), "invalid", `--idle 500ms: ${msg}`);
    throwsExit2(
      () => parseInterval("0.5"),
      "invalid",
      "--interval 0.5: the kernel counts keepalive intervals in whole seconds (1 to 32767)",
    );
  });

  test("reject values out of range", () => {
    const range = "out of range; the kernel accepts 1 to 32767 seconds (9h6m7s)";
    throwsExit2(() => parseIdle("0"), "invalid", `--idle 0: ${range}`);
    throwsExit2(() => parseIdle("32768"), "invalid", `--idle 32768: ${range}`);
    throwsExit2(() => parseInterval("9h6m8s"), "invalid", `--interval 9h6m8s: ${range}`);
  });

  test("negative and huge values are out of range, not 'not a duration' or 'whole seconds'", () => {
    const range = "out of range; the kernel accepts 1 to 32767 seconds (9h6m7s)";
    throwsExit2(() => parseIdle("-1"), "invalid", `--idle -1: ${range}`);
    throwsExit2(() => parseInterval("-1.5s"), "invalid", `--interval -1.5s: ${range}`);
    throwsExit2(() => parseIdle("1".padEnd(24, "0")), "invalid", `--idle 1${"0".repeat(23)}: ${range}`);
    throwsExit2(() => parseIdle("9".repeat(400)), "invalid", /^--idle 9+: out of range/);
  });

  test("reject garbage", () => {
    throwsExit2(() => parseIdle("soon"), "invalid", "--idle soon: not a duration");
    throwsExit2(() => parseInterval(""), "invalid", "--interval : not a duration");
  });

  test("a KEY= flag is written without a space", () => {
    throwsExit2(() => parseIdle("1.5s", "idle="), "invalid", /^idle=1\.5s: the kernel counts keepalive idle time/);
  });
});

describe("parseCount", () => {
  test("accepts 1 to 127", () => {
    each(parseCount, [
      ["1", 1],
      [" 9 ", 9],
      ["127", 127],
    ]);
  });

  test("rejects 0, 128, negative numbers and non-numbers", () => {
    const range = "out of range; the kernel accepts 1 to 127 probes";
    throwsExit2(() => parseCount("0"), "invalid", `--count 0: ${range}`);
    throwsExit2(() => parseCount("128"), "invalid", `--count 128: ${range}`);
    throwsExit2(() => parseCount("-1"), "invalid", `--count -1: ${range}`);
    throwsExit2(() => parseCount("1".padEnd(24, "0")), "invalid", `--count 1${"0".repeat(23)}: ${range}`);
    for (const bad of ["x", "1.5", "-", ""]) {
      throwsExit2(() => parseCount(bad), "invalid", `--count ${bad}: not a whole number of probes`);
    }
  });
});

describe("parseUserTimeout", () => {
  test("returns milliseconds; 0 turns it off", () => {
    each(parseUserTimeout, [
      ["0", 0],
      ["500ms", 500],
      ["90s", 90_000],
      ["2m", 120_000],
      ["24d", 2_073_600_000],
    ]);
  });

  test("rejects fractions of a millisecond, garbage and more than an int holds", () => {
    throwsExit2(
      () => parseUserTimeout("1.5ms"),
      "invalid",
      "--user-timeout 1.5ms: the kernel counts the user timeout in whole milliseconds",
    );
    const range = "out of range; 0 (off) to 2147483647 ms";
    throwsExit2(() => parseUserTimeout("-1"), "invalid", `--user-timeout -1: ${range}`);
    throwsExit2(() => parseUserTimeout("25d"), "invalid", `--user-timeout 25d: ${range}`);
    throwsExit2(() => parseUserTimeout("soon"), "invalid", "--user-timeout soon: not a duration");
  });
});

describe("deadPeerAfter", () => {
  /** [idle, interval, count, user timeout in ms] with keepalive on. */
  const on = ([idle, interval, count, userTimeout]: readonly number[]): EffectiveKeepAlive => ({
    keepalive: true,
    idle: idle as number,
    interval: interval as number,
    count: count as number,
    userTimeout: userTimeout ?? 0,
  });
  const after = (s: readonly number[]) => deadPeerAfter(on(s));

  test("idle + interval × count without a user timeout", () => {
    each(after, [
      [[7200, 75, 9], 7875],
      [[60, 10, 6], 120],
    ]);
  });

  test("keepalive off: never", () => {
    assert.equal(deadPeerAfter({ ...on([7200, 75, 9]), keepalive: false }), null);
    assert.equal(deadPeerAfter({ ...on([60, 10, 6, 30_000]), keepalive: false }), null);
  });

  test("with a user timeout: the first probe time idle + k × interval (k ≥ 1) at or after it", () => {
    each(after, [
      [[60, 10, 6, 90_000], 90], // exactly on a probe: aborts then
      [[60, 10, 6, 95_000], 100], // between probes: at the next one
      [[60, 10, 6, 90_001], 100],
      [[60, 10, 6, 30_000], 70], // before the first probe: one probe must have gone out
      [[60, 10, 6, 60_000], 70],
      [[7200, 75, 9, 7_875_000], 7875],
    ]);
  });

  test("with a user timeout the probe count is ignored", () => {
    each(after, [
      [[60, 10, 2, 200_000], 200],
      [[60, 10, 127, 75_000], 80],
    ]);
  });
});

describe("formatSeconds and formatMs", () => {
  test("formatSeconds leaves out zero units", () => {
    each(formatSeconds, [
      [7875, "2h11m15s"],
      [600, "10m"],
      [90, "1m30s"],
      [45, "45s"],
      [3600, "1h"],
      [86_401, "1d1s"],
      [0, "0s"],
    ]);
  });

  test("formatSeconds rounds, keeps the sign and says never for infinity", () => {
    each(formatSeconds, [
      [0.4, "0s"],
      [59.6, "1m"],
      [-90, "-1m30s"],
      [Number.POSITIVE_INFINITY, "never"],
    ]);
  });

  test("formatMs: ms below a second, tenths below 10 s, then like formatSeconds", () => {
    each(formatMs, [
      [0, "0ms"],
      [500, "500ms"],
      [1000, "1s"],
      [1500, "1.5s"],
      [10_000, "10s"],
      [90_000, "1m30s"],
      [7_875_000, "2h11m15s"],
    ]);
  });
});

describe("the strengthen rule (planChanges, strengthen)", () => {
  /** [idle, interval, count, user timeout in ms, keepalive 0/1] */
  const sock = ([idle, interval, count, userTimeout = 0, keepalive = 1]: readonly number[]): EffectiveKeepAlive => ({
    keepalive: keepalive === 1,
    idle: idle as number,
    interval: interval as number,
    count: count as number,
    userTimeout,
  });
  const want = { idle: 30, interval: 5, count: 3 };
  const plan = (have: readonly number[], w: object = want, mode: "strengthen" | "force" = "strengthen") =>
    planChanges(sock(have), w, mode).map((c) => `${c.option} ${c.from}→${c.to}`);

  test("a program's 1s / 1s / 10 against 30s / 5s / 3: its own pair stays (1s / 1s / 3 would declare a peer dead after 3 s)", () => {
    assert.deepEqual(plan([1, 1, 10]), []);
    assert.deepEqual(plan([1, 1, 10, 0, 0]), ["keepalive 0→1"], "keepalive off counts the same values");
  });

  test("the reverse: the request detects sooner, so its interval and count come together", () => {
    assert.deepEqual(plan([100, 1, 50, 0, 0]), ["interval 1→5", "count 50→3", "idle 100→30", "keepalive 0→1"]);
    assert.deepEqual(plan([7200, 75, 9, 0, 0]), ["interval 75→5", "count 9→3", "idle 7200→30", "keepalive 0→1"]);
  });

  test("the order: SO_KEEPALIVE last (armed a full idle from now), TCP_KEEPIDLE after the interval it re-arms with", () => {
    const all = { ...want, userTimeout: 20_000 };
    assert.deepEqual(plan([7200, 75, 9, 0, 0], all), [
      "interval 75→5",
      "count 9→3",
      "userTimeout 0→20000",
      "idle 7200→30",
      "keepalive 0→1",
    ]);
    assert.deepEqual(plan([7200, 75, 9, 0, 1], all, "force"), [
      "interval 75→5",
      "count 9→3",
      "userTimeout 0→20000",
      "idle 7200→30",
    ]);
  });

  test("idle is always the smaller; a tie in detection time keeps the program's pair", () => {
    // 15 + 5 × 6 = 45 = 30 + 5 × 3
    assert.deepEqual(plan([30, 5, 3], { idle: 15, interval: 5, count: 6 }), ["idle 30→15"]);
    assert.deepEqual(plan([10, 20, 9]), ["interval 20→5", "count 9→3"], "idle 10 stays, 190 s > 45 s");
  });

  test("a request without a value leaves the socket's", () => {
    assert.deepEqual(plan([7200, 75, 9], { idle: 30 }), ["idle 7200→30"]);
    assert.deepEqual(plan([7200, 75, 9], { count: 3 }), ["count 9→3"]);
  });

  test("user timeout: the smaller non-zero one; a requested 0 leaves the program's", () => {
    assert.deepEqual(plan([1, 1, 10, 5000], { ...want, userTimeout: 20_000 }), []);
    assert.deepEqual(plan([1, 1, 10, 0], { ...want, userTimeout: 20_000 }), ["userTimeout 0→20000"]);
    assert.deepEqual(plan([1, 1, 10, 30_000], { ...want, userTimeout: 20_000 }), ["userTimeout 30000→20000"]);
    assert.deepEqual(plan([1, 1, 10, 5000], { ...want, userTimeout: 0 }), []);
    assert.deepEqual(plan([1, 1, 10, 5000], { ...want, userTimeout: 0 }, "force"), [
      "interval 1→5",
      "count 10→3",
      "userTimeout 5000→0",
      "idle 1→30",
    ]);
  });

  test("force sets exactly what is requested", () => {
    assert.deepEqual(plan([1, 1, 10], want, "force"), ["interval 1→5", "count 10→3", "idle 1→30"]);
    assert.deepEqual(plan([30, 5, 3], want, "force"), []);
  });

  test("afterChanges: the changes planned make a socket what the rule says; deadPeerChange times both ends", () => {
    const w = { ...want, userTimeout: 20_000 };
    for (const have of [
      [7200, 75, 9, 0, 0],
      [1, 1, 10, 5000],
      [10, 20, 9],
      [30, 5, 3],
    ].map(sock)) {
      assert.deepEqual(afterChanges(have, planChanges(have, w, "strengthen")), strengthen(have, w));
      assert.deepEqual(afterChanges(have, planChanges(have, w, "force")), { keepalive: true, ...w });
    }
    const off = sock([7200, 75, 9, 0, 0]);
    assert.deepEqual(deadPeerChange(off, planChanges(off, want, "strengthen")), [Number.POSITIVE_INFINITY, 45]);
    const on = sock([30, 5, 3]);
    assert.deepEqual(deadPeerChange(on, [{ option: "keepalive", from: 1, to: 0 }]), [45, Number.POSITIVE_INFINITY]);
  });

  test("never later than either side alone, and interval and count always one side's own pair", () => {
    const values = [1, 2, 7, 30, 600];
    for (const hi of values)
      for (const hv of values)
        for (const hc of [1, 3, 10])
          for (const wi of values)
            for (const wv of values)
              for (const wc of [1, 3, 10]) {
                const have = sock([hi, hv, hc]);
                const w = { idle: wi, interval: wv, count: wc };
                const r = strengthen(have, w);
                const after = deadPeerAfter(r) as number;
                const what = `${hi}/${hv}/${hc} with ${wi}/${wv}/${wc}: ${r.idle}/${r.interval}/${r.count}`;
                assert.ok(after <= Math.min(hi + hv * hc, wi + wv * wc), what);
                assert.ok((r.interval === hv && r.count === hc) || (r.interval === wv && r.count === wc), what);
              }
  });
});
