import assert from "node:assert/strict";
import { test } from "node:test";
import { deadPeerAfter, parseDurationMs, parseIdle } from "../../src/settings.js";

test("durations parse with units and a bare number means seconds", () => {
  assert.equal(parseDurationMs("75"), 75_000);
  assert.equal(parseDurationMs("1h30m"), 5_400_000);
  assert.equal(parseDurationMs("2x"), undefined);
});

test("idle rejects what the kernel cannot represent", () => {
  assert.equal(parseIdle("2m"), 120);
  assert.throws(() => parseIdle("1.5s"), /whole seconds/);
  assert.throws(() => parseIdle("32768"), /out of range/);
});

test("dead peer detection follows tcp_keepalive_timer", () => {
  assert.equal(deadPeerAfter({ keepalive: true, idle: 7200, interval: 75, count: 9, userTimeout: 0 }), 7875);
  assert.equal(deadPeerAfter({ keepalive: false, idle: 7200, interval: 75, count: 9, userTimeout: 0 }), null);
});
