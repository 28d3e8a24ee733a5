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
    match: {container: {image: "*/postgres:1?"}}
    keepalive: {idle: 30s}
  - name: labelled
    match: {container: {labels: {tier: db, team: "bill*", empty: ""}}}
    keepalive: {idle: 20s}
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
  const container = (name: string | null, more: { image?: string; labels?: Record<string, string> } = {}) => ({
    name,
    id: "0123456789abcdef",
    image: more.image ?? null,
    labels: new Map(Object.entries(more.labels ?? {})),
  });

  test("each selector, with * and ?; all of a rule's must hold; the first rule wins", () => {
    assert.equal(first({ container: container("billing-7") }), "billing");
    assert.equal(first({ container: container("payments") }), undefined);
    const pod = { namespace: "prod", name: "api-5d8", container: "api2" };
    assert.equal(first({ container: container(null), pod }), "prod");
    assert.equal(first({ pod: { ...pod, container: "api10" } }), undefined, "? is one character");
    assert.equal(first({ pod: { ...pod, container: null } }), undefined, "a pod's sandbox has no container name");
    assert.equal(first({ cgroup: "/workers/a/b", uid: 1000 }), "workers", "a cgroup below the one named");
    assert.equal(first({ cgroup: "/workers2", uid: 1000 }), undefined, "a sibling with the same prefix is not below");
    assert.equal(first({ cgroup: "/workers", uid: 0 }), undefined, "and the user");
    assert.equal(first({ unit: "api-v2.service", exe: "/usr/bin/node" }), "api");
    assert.equal(first({ unit: "api-v2.service", exe: null }), undefined, "an unreadable exe matches no pattern");
    // Both hold billing and prod: the first of them wins.
    assert.equal(first({ container: container("billing-1"), pod }), "billing");
  });

  test("a container's image by pattern; its labels: every one given present, its value matching", () => {
    assert.equal(first({ container: container("pg", { image: "docker.io/library/postgres:16" }) }), "images");
    assert.equal(first({ container: container("pg", { image: "docker.io/library/postgres:9" }) }), undefined);
    assert.equal(first({ container: container("pg") }), undefined, "no image in the records matches no pattern");
    const labels = { tier: "db", team: "billing", empty: "", other: "x" };
    assert.equal(first({ container: container("x", { labels }) }), "labelled", "more labels than the rule's");
    for (const [what, l] of [
      ["a value that differs", { ...labels, tier: "web" }],
      ["a pattern that does not match", { ...labels, team: "ops" }],
      ["a label missing", { tier: "db", team: "billing" }],
      ["an empty value is a value", { ...labels, empty: "x" }],
      ["keys are exact", { ...labels, tier: undefined, Tier: "db" }],
    ] as const) {
      const defined = Object.fromEntries(Object.entries(l).filter(([, v]) => v !== undefined)) as Record<
        string,
        string
      >;
      assert.equal(first({ container: container("x", { labels: defined }) }), undefined, what);
    }
    assert.equal(first({}), undefined, "not in a container");
  });

  test("each verdict says what it read: the image, each label, or that there is none", () => {
    const f = { ...none, container: container("pg", { image: "localhost/pg:1", labels: { tier: "web" } }) };
    const v = explainPolicy(policy, f);
    assert.deepEqual(
      v.map((r) => [r.rule.name, r.applies, r.undecided]),
      [
        ["billing", false, undefined],
        ["prod", false, undefined],
        ["images", false, undefined],
        ["labelled", false, undefined],
        ["workers", false, undefined],
        ["api", false, undefined],
      ],
    );
    assert.deepEqual(v[0]?.reasons, [
      { selector: "container.name billing-*", holds: false, why: "its container is pg" },
    ]);
    assert.deepEqual(v[2]?.reasons, [
      { selector: "container.image */postgres:1?", holds: false, why: "its container's image is localhost/pg:1" },
    ]);
    assert.deepEqual(v[3]?.reasons, [
      { selector: "container.labels tier=db", holds: false, why: "its container's label tier is web" },
      { selector: "container.labels team=bill*", holds: false, why: "its container has no label team" },
      { selector: "container.labels empty=", holds: false, why: "its container has no label empty" },
    ]);
    const bare = explainPolicy(policy, { ...none, container: container("pg") });
    assert.equal(bare[2]?.reasons[0]?.why, "its container has no image in the runtime's records");
    const host = explainPolicy(policy, none);
    assert.deepEqual(
      [host[2]?.reasons[0]?.why, ...(host[3]?.reasons.map((r) => r.why) ?? [])],
      ["not in a container", "not in a container", "not in a container", "not in a container"],
    );
    // The text as found: escaping is for printing (cli/agent.ts), not for the verdict.
    const odd = explainPolicy(policy, { ...none, container: container("pg", { labels: { tier: "d\x1b[2Jb" } }) });
    assert.equal(odd[3]?.reasons[0]?.why, "its container's label tier is d\x1b[2Jb");
  });

  test("labels: {} is refused: it would select every process", () => {
    assert.deepEqual(
      errorsOf("rules:\n  - name: a\n    match: {container: {labels: {}}}\n    keepalive: {idle: 1m}\n"),
      ["p.yaml:3:33: rules[0].match.container.labels: needs at least one field"],
    );
  });

  test("patterns are whole-string and take nothing else as special", () => {
    assert.ok(globRegExp("a.b*").test("a.bcd"));
    assert.ok(!globRegExp("a.b*").test("axbcd"));
    assert.ok(!globRegExp("api").test("xapi"));
    assert.ok(globRegExp("(x)[y]+").test("(x)[y]+"));
  });
});
