/**
 * `tcpka agent --check FILE` as a user runs it: the example policy is accepted and each rule is shown with
 * what it selects and sets; a policy with errors exits 2 with one line per error on stderr, each with its line;
 * a missing file, a directory and a second file are refused; without --check nothing is applied and it says so.
 */
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { tempDir } from "../helpers/scope.js";
import { tcpkaHere as tcpka } from "../helpers/tcpka.js";

const EXAMPLE = `rules:
  - name: billing-db
    match: {container: {name: "billing-*"}}
    connections: {only: ["10.0.0.0/8:5432"]}
    keepalive: {idle: 60s, interval: 10s, count: 6}
  - name: api-behind-azure-lb
    match: {unit: api.service}
    keepalive: {for: azure-lb}
    mode: force
  - name: prod-pods
    match: {pod: {namespace: prod}}
    keepalive: {idle: 2m}
`;

test("agent --check: the example policy, rule by rule; nothing applied", (t) => {
  const dir = tempDir(t);
  const file = join(dir, "policy.yaml");
  writeFileSync(file, EXAMPLE);
  const r = tcpka(["agent", "--check", file]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "");
  assert.deepEqual(r.stdout.split("\n"), [
    `${file}: 3 rules, no errors (checked; nothing was applied)`,
    "  RULE                 LINE  SELECTS                     CONNECTIONS           SETTINGS",
    "  billing-db           2     containers named billing-*  only 10.0.0.0/8:5432  60s / 10s / 6 (strengthen)",
    "  api-behind-azure-lb  6     unit api.service            all                   120s / 24s / 5 for azure-lb (force)",
    "  prod-pods            10    pods in namespace prod      all                   120s / 10s / 6 (strengthen)",
    "",
  ]);
  assert.equal(tcpka(["agent", "--policy", file, "--check"]).status, 0, "--policy FILE works the same");
});

test("agent --check: errors one per line with their lines, exit 2; bad files and arguments refused", (t) => {
  const dir = tempDir(t);
  const file = join(dir, "bad.yaml");
  writeFileSync(file, EXAMPLE.replace("idle: 60s", "idle: soon").replace("name: prod-pods", "nme: prod-pods"));
  const r = tcpka(["agent", "--check", file]);
  assert.equal(r.status, 2);
  assert.equal(r.stdout, "");
  assert.deepEqual(r.stderr.split("\n"), [
    `tcpka: ${file}:5:23: rules[0].keepalive.idle soon: not a duration`,
    `tcpka: ${file}:10:5: rules[2]: name is missing`,
    `tcpka: ${file}:10:5: rules[2].nme: not a field here (the fields are name, match, connections, keepalive, mode, mechanism)`,
    "3 errors; nothing was applied",
    "",
  ]);
  const missing = tcpka(["agent", "--check", join(dir, "nope.yaml")]);
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /^tcpka: no policy at .*nope\.yaml\n/);
  mkdirSync(join(dir, "d"));
  assert.match(tcpka(["agent", "--check", join(dir, "d")]).stderr, /is not a regular file/);
  assert.equal(tcpka(["agent", "--check", file, file]).status, 2);
  const apply = tcpka(["agent", "--policy", file]);
  assert.notEqual(apply.status, 0, "the agent itself is not built: it says so");
  assert.match(apply.stderr, /^tcpka: the agent that applies a policy is not built yet; nothing was applied\n/);
});
