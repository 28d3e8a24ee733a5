/**
 * The presets of `--for` (src/presets.ts): every one resolves to settings whose probes all come before the path's
 * timeout and whose dead-peer time is at most the timeout; --for goes with the other settings flags, which replace
 * a part of it; an unknown name is a usage error that lists the known ones.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { MAX_TCP_KEEPCNT, MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL } from "../../src/kernel/constants.js";
import { findPreset, PRESETS, presetSettings } from "../../src/presets.js";
import { parse, SETTINGS_OPTIONS, settingsFrom } from "../../src/ui/args.js";
import { throwsExit2 } from "../helpers/expect.js";

test("each preset: idle about half the timeout, five probes that all refresh the path in time", () => {
  assert.deepEqual(
    PRESETS.map((p) => p.name),
    ["aws-nat", "aws-nlb", "azure-lb", "gcp-nat", "gcp-firewall", "kube-proxy-ipvs", "docker-swarm"],
  );
  for (const p of PRESETS) {
    const s = presetSettings(p);
    assert.ok(s.idle <= p.timeoutS / 2 && s.idle > p.timeoutS / 2 - 5, `${p.name}: idle ${s.idle}`);
    assert.ok(s.idle + 4 * s.interval < p.timeoutS, `${p.name}: the fifth probe still comes before the timeout`);
    assert.ok(s.idle + s.count * s.interval <= p.timeoutS, `${p.name}: a dead peer noticed within the timeout`);
    assert.ok(s.idle >= 1 && s.idle <= MAX_TCP_KEEPIDLE && s.interval >= 1 && s.interval <= MAX_TCP_KEEPINTVL);
    assert.ok(s.count >= 3 && s.count <= MAX_TCP_KEEPCNT, "not fragile");
    assert.match(p.source, /^https:\/\//, `${p.name} cites its source`);
  }
  assert.deepEqual(presetSettings(findPreset("aws-nat")!), { idle: 175, interval: 35, count: 5 });
  assert.deepEqual(presetSettings(findPreset("azure-lb")!), { idle: 120, interval: 24, count: 5 });
});

test("--for sets all three, a flag beside it replaces its part, an unknown name is refused", () => {
  const from = (argv: string[]) => settingsFrom(parse("enable", argv, SETTINGS_OPTIONS).values);
  assert.deepEqual(from(["--for", "gcp-nat"]), { idle: 600, interval: 120, count: 5 });
  assert.deepEqual(from(["--for", "azure-lb", "--count", "3"]), { idle: 120, interval: 24, count: 3 });
  assert.deepEqual(from(["--for", "azure-lb", "--user-timeout", "90s"]), {
    idle: 120,
    interval: 24,
    count: 5,
    userTimeout: 90_000,
  });
  throwsExit2(() => from(["--for", "azure"]), "usage", /--for "azure": not a known path/);
});
