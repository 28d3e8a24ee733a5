/**
 * HZ as src/sys/libc.ts kernelHz reads it (the resolution of CLOCK_MONOTONIC_COARSE, one tick), against the kernel's
 * build configuration where it is published (/proc/config.gz, CONFIG_IKCONFIG_PROC).
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { gunzipSync } from "node:zlib";
import { kernelHz } from "../../src/sys/libc.js";

test("kernelHz is the kernel's CONFIG_HZ", (t) => {
  const hz = kernelHz();
  assert.ok([100, 250, 300, 1000].includes(hz), `HZ ${hz}`);
  if (!existsSync("/proc/config.gz")) return t.skip("no /proc/config.gz to compare with");
  const config = gunzipSync(readFileSync("/proc/config.gz")).toString("latin1");
  assert.equal(hz, Number(/^CONFIG_HZ=(\d+)$/m.exec(config)?.[1]));
});
