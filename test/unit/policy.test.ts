/**
 * The agent's policy file (src/policy.ts): the issue's example as written, every error with its line, column and
 * field, all of them at once, and what a hostile or broken file gets (YAML syntax, an alias bomb, a huge file).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import {
  explainPolicy,
  globRegExp,
  MAX_POLICY_BYTES,
  matchPolicy,
  PolicyErrors,
  type ProcessFacts,
  parsePolicy,
} from "../../src/policy.js";
import { fixture } from "../helpers/paths.js";

/** The example of issue 16, as written (also in README.md). */
const EXAMPLE = readFileSync(fixture("policy-example.yaml"), "utf8");

function errorsOf(text: string): string[] {
  try {
    parsePolicy(text, "p.yaml");
  } catch (e) {
    assert.ok(e instanceof PolicyErrors, String(e));
    assert.equal(e.exitCode, 2);
    return e.message.split("\n");
  }
  assert.fail("the policy was accepted");
}

test("the issue's example, as written", () => {
  const p = parsePolicy(EXAMPLE, "policy.yaml");
  assert.deepEqual(
    p.rules.map((r) => [r.name, r.line, r.mode, r.mechanism, r.preset ?? "", r.settings]),
    [
      ["billing-db", 2, "strengthen", "auto", "", { idle: 60, interval: 10, count: 6 }],
      ["api-behind-azure-lb", 6, "force", "auto", "azure-lb", { idle: 120, interval: 24, count: 5 }],
      ["prod-pods", 10, "strengthen", "auto", "", { idle: 120, interval: 10, count: 6 }],
    ],
  );
  assert.deepEqual(p.rules[0]?.match, { container: { name: "billing-*" } });
  assert.deepEqual(p.rules[2]?.match, { pod: { namespace: "prod" } });
  assert.equal(p.rules[0]?.only.length, 1);
  assert.equal(p.rules[0]?.only[0]?.ports?.from, 5432);
});

test("every error at once, each with its line, column and field", () => {
  const text = `rules:
  - name: billing-db
    match: {container: {nam: "billing-*"}}
    keepalive: {idle: 0s, interval: 10s, count: 6}
  - name: api
    match: {unit: api.service}
    keepalive: {for: azure}
  - name: api
    match: {unit: x.service}
    connections: {only: ["10.0.0.0/33"]}
    keepalive: {count: 200, user_timeout: -5s}
  - match: {}
    keepalive: {idle: 1m}
    mode: gentle
`;
  assert.deepEqual(errorsOf(text), [
    "p.yaml:3:25: rules[0].match.container.nam: not a field here (the fields are name, image, labels)",
    "p.yaml:4:23: rules[0].keepalive.idle 0s: out of range; the kernel accepts 1 to 32767 seconds (9h6m7s)",
    "p.yaml:7:22: rules[1].keepalive.for: one of aws-nat, aws-nlb, azure-lb, gcp-nat, gcp-firewall, kube-proxy-ipvs, docker-swarm",
    'p.yaml:8:11: rules[2].name: a rule named "api" comes earlier',
    "p.yaml:10:26: rules[2].connections.only[0] 10.0.0.0/33: the prefix length must be 0 to 32 for IPv4",
    "p.yaml:11:24: rules[2].keepalive.count 200: out of range; the kernel accepts 1 to 127 probes",
    "p.yaml:11:43: rules[2].keepalive.user_timeout -5s: out of range; 0 (off) to 2147483647 ms",
    "p.yaml:12:5: rules[3]: name is missing",
    "p.yaml:12:12: rules[3].match: needs at least one field",
    "p.yaml:14:11: rules[3].mode: one of strengthen, force",
  ]);
});

test("a file that is not a policy: YAML syntax, no rules, the wrong shape", () => {
  assert.match(errorsOf("rules:\n  - name: a\n    match: {unit: x\n")[0] ?? "", /^p\.yaml:4:1: .*indented/);
  assert.deepEqual(errorsOf("rule: []\n"), [
    "p.yaml:1:1: rules is missing",
    "p.yaml:1:1: rule: not a field here (the fields are rules)",
  ]);
  assert.deepEqual(errorsOf("rules: {}\n"), ["p.yaml:1:8: rules: must be array"]);
  assert.deepEqual(errorsOf("rules:\n  - a\n"), ["p.yaml:2:5: rules[0]: must be object"]);
  assert.deepEqual(errorsOf("rules: []\nrules: []\n"), ["p.yaml:2:1: Map keys must be unique"]);
});

test("hostile files: an alias bomb and a huge file are refused, not expanded", () => {
  const bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"];
  for (let i = 0; i < 12; i++)
    bomb.push(
      `${"b".repeat(i + 1)}: &${"b".repeat(i + 1)} [${Array(10)
        .fill(i ? `*${"b".repeat(i)}` : "*a")
        .join(", ")}]`,
    );
  bomb.push("rules: []");
  const e = errorsOf(bomb.join("\n"));
  assert.match(e[0] ?? "", /alias/i);
  assert.match(errorsOf(`# ${"x".repeat(MAX_POLICY_BYTES)}\nrules: []\n`)[0] ?? "", /longer than 1048576 bytes/);
});

describe("which rule applies to a process (explainPolicy, matchPolicy)", () => {
  const policy = parsePolicy(
    `rules:
  - name: billing
    match: {container: {name: "billing-*"}}
    keepalive: {idle: 60s}
  - name: prod
    match: {pod: {namespace: prod, container: "api?"}}
    keepalive: {for: gcp-nat}
  - name: images
    match: {container: {image: "postgres:*"}}
    keepalive: {idle: 30s}
  - name: workers
    match: {cgroup: /workers, user: 1000}
    keepalive: {for: azure-lb}
  - name: api
    match: {unit: "api*.service", process: {exe: "/usr/bin/*"}}
    keepalive: {for: aws-nat}
`,
    "p.yaml",
  );
  const none: ProcessFacts = {
    pid: 7,
    comm: "x",
    exe: null,
    uid: 0,
    user: "root",
    cgroup: "/",
    unit: null,
    container: null,
    pod: null,
  };
  const first = (f: Partial<ProcessFacts>) => matchPolicy(policy, { ...none, ...f })?.name;

  test("each selector, with * and ?; all of a rule's must hold; the first rule wins", () => {
    assert.equal(first({ container: { name: "billing-7", id: "a" } }), "billing");
    assert.equal(first({ container: { name: "payments", id: "a" } }), undefined);
    const pod = { namespace: "prod", name: "api-5d8", container: "api2" };
    assert.equal(first({ container: { name: null, id: "b" }, pod }), "prod");
    assert.equal(first({ pod: { ...pod, container: "api10" } }), undefined, "? is one character");
    assert.equal(first({ pod: { ...pod, container: null } }), undefined, "a pod's sandbox has no container name");
    assert.equal(first({ cgroup: "/workers/a/b", uid: 1000 }), "workers", "a cgroup below the one named");
    assert.equal(first({ cgroup: "/workers2", uid: 1000 }), undefined, "a sibling with the same prefix is not below");
    assert.equal(first({ cgroup: "/workers", uid: 0 }), undefined, "and the user");
    assert.equal(first({ unit: "api-v2.service", exe: "/usr/bin/node" }), "api");
    assert.equal(first({ unit: "api-v2.service", exe: null }), undefined, "an unreadable exe matches no pattern");
    // Both hold billing and prod: the first of them wins.
    assert.equal(first({ container: { name: "billing-1", id: "c" }, pod }), "billing");
  });

  test("a selector tcpka cannot read yet passes the rule over, and says so", () => {
    const v = explainPolicy(policy, { ...none, container: { name: "pg", id: "d" } });
    assert.equal(v[2]?.rule.name, "images");
    assert.equal(v[2]?.applies, false);
    assert.equal(v[2]?.undecided, "container images and labels are not read yet");
    assert.deepEqual(v[0]?.reasons, [
      { selector: "container.name billing-*", holds: false, why: "its container is pg" },
    ]);
  });

  test("patterns are whole-string and take nothing else as special", () => {
    assert.ok(globRegExp("a.b*").test("a.bcd"));
    assert.ok(!globRegExp("a.b*").test("axbcd"));
    assert.ok(!globRegExp("api").test("xapi"));
    assert.ok(globRegExp("(x)[y]+").test("(x)[y]+"));
  });
});
