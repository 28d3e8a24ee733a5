/**
 * Which cgroup the agent gives which rule (src/agent/plan.ts), from facts as /proc and the runtimes would give
 * them: whole cgroups of one rule only, and everything else reported with why.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { type Described, planPolicy, sameAsRule } from "../../src/agent/plan.js";
import { type ProcessFacts, parsePolicy } from "../../src/policy.js";

const policy = parsePolicy(
  `rules:
  - name: billing
    match: {container: {name: "billing-*"}}
    connections: {only: ["10.0.0.0/8:5432"]}
    keepalive: {idle: 60s, interval: 10s, count: 6}
  - name: api
    match: {unit: api.service}
    keepalive: {for: azure-lb}
    mode: force
  - name: java
    match: {process: {name: java}}
    keepalive: {idle: 2m}
  - name: watched
    match: {cgroup: /watched}
    keepalive: {idle: 30s}
    mechanism: live
`,
  "policy.yaml",
);

let nextPid = 100;
function proc(cgroup: string | null, more: Partial<ProcessFacts> = {}): ProcessFacts {
  return {
    pid: nextPid++,
    comm: "sh",
    exe: "/bin/sh",
    uid: 0,
    user: "root",
    cgroup,
    unit: null,
    container: null,
    pod: null,
    ...more,
  };
}

test("a cgroup whose processes are all one rule's is that rule's target, with its container, pod or unit", () => {
  const c = { name: "billing-1", id: "a".repeat(64), image: null, labels: new Map<string, string>() };
  const plan = planPolicy(policy, [
    proc("/machine/libpod-aaaa", { container: c }),
    proc("/machine/libpod-aaaa", { container: c, comm: "psql" }),
    proc("/system.slice/api.service", { unit: "api.service" }),
    proc("/user.slice/user-1000.slice/session-2.scope"), // no rule: not a target, not reported
  ]);
  assert.deepEqual(
    plan.targets.map((t) => [t.cgroup, t.rule.name, t.processes.length, t.container, t.unit]),
    [
      ["/machine/libpod-aaaa", "billing", 2, "billing-1", null],
      ["/system.slice/api.service", "api", 1, null, "api.service"],
    ],
  );
  assert.deepEqual(plan.uncovered, []);
  assert.deepEqual(plan.watched, []);
});

test("a cgroup shared with processes of another rule or of none is never enforced half: the rule's are watched by pid", () => {
  const plan = planPolicy(policy, [
    proc("/shared", { comm: "java" }),
    proc("/shared", { comm: "java" }),
    proc("/shared", { comm: "bash" }),
  ]);
  assert.deepEqual(plan.targets, []);
  assert.deepEqual(plan.uncovered, []);
  assert.equal(plan.watched.length, 1);
  const u = plan.watched[0];
  assert.equal(u?.rule.name, "java");
  assert.equal(u?.processes.length, 2);
  assert.equal(u?.why, "its cgroup /shared also holds 1 process of no rule; the agent enforces whole cgroups only");
});

test("the first matching rule wins; mechanism live and processes in no cgroup v2 are watched", () => {
  // A java process in api.service: the unit rule comes first.
  const plan = planPolicy(policy, [
    proc("/system.slice/api.service", { unit: "api.service", comm: "java" }),
    proc("/watched/a"),
    proc(null, { comm: "java" }),
  ]);
  assert.deepEqual(
    plan.targets.map((t) => t.rule.name),
    ["api"],
  );
  assert.deepEqual(plan.uncovered, []);
  assert.deepEqual(
    plan.watched.map((u) => [u.rule.name, u.why.split(":")[0]]),
    [
      ["java", "in no cgroup v2"],
      ["watched", "mechanism live"],
    ],
  );
});

test("an enforcement is left alone only when its description is what the rule asks for", () => {
  const billing = policy.rules[0];
  assert.ok(billing);
  const described: Described = {
    mode: "strengthen",
    idle_s: 60,
    interval_s: 10,
    count: 6,
    only: ["10.0.0.0/8:5432"],
    except: [],
    rule: "billing",
  };
  assert.ok(sameAsRule(described, billing));
  assert.ok(!sameAsRule({ ...described, idle_s: 45 }, billing), "other settings");
  assert.ok(!sameAsRule({ ...described, only: [] }, billing), "other connections");
  assert.ok(!sameAsRule({ ...described, mode: "force" }, billing), "another mode");
  assert.ok(!sameAsRule({ ...described, rule: "billing-old" }, billing), "another rule's, even with the same settings");
});

test("a cgroup with other rules' processes in cgroups below it is not a target: its programs would run there too", () => {
  const c = { name: "billing-1", id: "b".repeat(64), image: null, labels: new Map<string, string>() };
  // Every process in / is root's java, but a container below / is another rule's.
  const plan = planPolicy(policy, [
    proc("/", { comm: "java" }),
    proc("/machine/libpod-bbbb", { container: c }),
    proc("/machine/libpod-bbbb/sub", { container: c }),
  ]);
  assert.deepEqual(
    plan.targets.map((t) => [t.cgroup, t.rule.name]),
    [
      ["/machine/libpod-bbbb", "billing"],
      ["/machine/libpod-bbbb/sub", "billing"],
    ],
  );
  assert.deepEqual(
    plan.watched.map((u) => [u.cgroup, u.rule.name, u.why]),
    [
      [
        "/",
        "java",
        "cgroups below / hold 2 processes of other rules or none, which an enforcement there would cover too",
      ],
    ],
  );
});

test("mechanism enforce asks for a cgroup: where there is none to enforce whole, it is reported, not watched", () => {
  const strict = parsePolicy(
    "rules:\n  - name: java\n    match: {process: {name: java}}\n    keepalive: {idle: 2m}\n    mechanism: enforce\n",
    "strict.yaml",
  );
  const plan = planPolicy(strict, [proc("/mixed", { comm: "java" }), proc("/mixed")]);
  assert.deepEqual(plan.targets, []);
  assert.deepEqual(plan.watched, []);
  assert.deepEqual(
    plan.uncovered.map((u) => u.why),
    [
      "its cgroup /mixed also holds 1 process of no rule; the agent enforces whole cgroups only; mechanism enforce: not watched either",
    ],
  );
});

test("a pod whose every process is one pod-wide rule's is enforced on the pod's cgroup; anything finer stays per container", () => {
  const pods = parsePolicy(
    `rules:
  - name: sidecars
    match: {pod: {namespace: shop, container: envoy}}
    keepalive: {idle: 30s}
  - name: shop
    match: {pod: {namespace: shop}}
    keepalive: {for: aws-nlb}
  - name: later
    match: {pod: {namespace: late}}
    keepalive: {idle: 20s}
`,
    "pods.yaml",
  );
  const uid = "0b6c3f2a-7d1e-4a5b-9c8d-1e2f3a4b5c6d";
  const pod = `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${uid.replaceAll("-", "_")}.slice`;
  const ctr = (id: string) => `${pod}/cri-containerd-${id.repeat(64)}.scope`;
  const of = (ns: string, name: string, container: string | null) => ({
    container: { name: null, id: "c".repeat(64), image: null, labels: new Map<string, string>() },
    pod: { namespace: ns, name, container },
  });
  const cart = [
    proc(ctr("a"), { comm: "pause", ...of("shop", "cart-1", null) }),
    proc(ctr("b"), { comm: "cart", ...of("shop", "cart-1", "app") }),
    proc(ctr("b"), { comm: "cart", ...of("shop", "cart-1", "app") }),
  ];
  // The sidecar rule comes first and selects by container: a container started later may be its, so not lifted.
  const plan = planPolicy(pods, cart);
  assert.deepEqual(
    plan.targets.map((t) => [t.cgroup, t.rule.name, t.processes.length, t.pod]),
    [
      [ctr("a"), "shop", 1, "shop/cart-1"],
      [ctr("b"), "shop", 2, "shop/cart-1"],
    ],
  );
  // Rules before it that decide by the pod alone (another namespace): the whole pod, on its cgroup.
  const late = cart.map((f) => ({ ...f, pod: f.pod && { ...f.pod, namespace: "late" } }));
  const lifted = planPolicy(pods, late);
  assert.deepEqual(
    lifted.targets.map((t) => [t.cgroup, t.rule.name, t.processes.length, t.pod, t.container]),
    [[pod, "later", 3, "late/cart-1", null]],
  );
  // A process of the pod that is not the rule's (a container whose records say no pod): per container, and not it.
  const mixed = planPolicy(pods, [...late, proc(ctr("d"), { comm: "x" })]);
  assert.deepEqual(
    mixed.targets.map((t) => t.cgroup),
    [ctr("a"), ctr("b")],
  );
  // A unit rule before it: a service's cannot select a pod's process; a scope pattern can (the systemd driver's
  // container scopes are units), so a container started later might be that rule's.
  const withUnit = (unit: string) =>
    parsePolicy(
      `rules:\n  - name: u\n    match: {unit: "${unit}"}\n    keepalive: {idle: 10s}\n  - name: later\n    match: {pod: {namespace: late}}\n    keepalive: {idle: 20s}\n`,
      "units.yaml",
    );
  assert.deepEqual(
    planPolicy(withUnit("api.service"), late).targets.map((t) => t.cgroup),
    [pod],
  );
  assert.deepEqual(
    planPolicy(withUnit("cri-containerd-*.scope"), late).targets.map((t) => t.cgroup),
    [ctr("a"), ctr("b")],
  );
  // The OCI hook sees one container: never lifted there.
  assert.deepEqual(
    planPolicy(pods, late, { pods: false }).targets.map((t) => t.cgroup),
    [ctr("a"), ctr("b")],
  );
});
