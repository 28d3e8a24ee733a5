/** The agent's /healthz answer (src/cli/agent.ts unwell): what a DaemonSet's probes restart it or wait for. */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { AgentStatus } from "../../src/agent/status.js";
import { unwell } from "../../src/cli/agent.js";

function status(reconciledAgoMs: number | null, errors: string[] = []): AgentStatus {
  return {
    version: 1,
    pid: 1,
    started: new Date().toISOString(),
    policy: { file: "/etc/tcpka/policy.yaml", loaded: null, errors },
    reconciled:
      reconciledAgoMs === null
        ? null
        : { at: new Date(Date.now() - reconciledAgoMs).toISOString(), reason: "resync", ms: 5 },
    rules: [],
    removed: [],
  } as AgentStatus;
}

test("/healthz: not well before the first reconcile or when the loop has stopped; a bad policy is no reason", () => {
  assert.equal(unwell(undefined, 30_000), "the agent has not reconciled yet");
  assert.equal(unwell(status(null), 30_000), "the agent has not reconciled yet");
  assert.equal(unwell(status(1_000), 30_000), undefined);
  assert.equal(unwell(status(100_000), 30_000), undefined, "three resyncs, at least 2 minutes");
  assert.equal(unwell(status(125_000), 30_000), "the last reconcile was 125s ago");
  assert.equal(unwell(status(170_000), 60_000), undefined, "three resyncs of 60 s");
  assert.equal(unwell(status(190_000), 60_000), "the last reconcile was 190s ago");
  assert.equal(unwell(status(1_000, ["policy.yaml:1:1: rules is missing"]), 30_000), undefined);
});
