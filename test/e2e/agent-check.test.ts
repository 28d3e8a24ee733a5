/**
 * `tcpka agent --check FILE` as a user runs it: the example policy is accepted and each rule is shown with
 * what it selects and sets; a policy with errors exits 2 with one line per error on stderr, each with its line;
 * a missing file, a directory and a second file are refused; without --check nothing is applied and it says so;
 * --explain PID says which rule applies to a real process in a test cgroup, to a podman container that
 * carries the annotations containerd writes for a pod, and to podman containers by their image and their labels
 * (`podman run --label`, which podman keeps in its own database), and why each rule before it does not.
 */
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { TestCgroup } from "../helpers/cgroup.js";
import { needs } from "../helpers/env.js";
import { fixture } from "../helpers/paths.js";
import { busyboxImage, needsPodman, startContainer, type TestContainer } from "../helpers/podman.js";
import { Process } from "../helpers/processes.js";
import { tempDir } from "../helpers/scope.js";
import { tcpkaHere as tcpka } from "../helpers/tcpka.js";
import { NOBODY } from "../helpers/users.js";

/** The example of issue 16, as written (also in README.md). */
const EXAMPLE = readFileSync(fixture("policy-example.yaml"), "utf8");

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
  // The agent itself: a resync it cannot keep is refused before anything runs; another user is told to be root.
  const resync = tcpka(["agent", "--policy", file, "--resync", "100ms"]);
  assert.equal(resync.status, 2, resync.stderr);
  assert.match(resync.stderr, /^tcpka: --resync 100ms: a duration from 1s to 1d, e.g. 30s\n/);
  const nobody = tcpka(["agent", "--policy", file], process.geteuid?.() === 0 ? { user: NOBODY } : {});
  assert.equal(nobody.status, 1, nobody.stderr);
  assert.match(nobody.stderr, /^tcpka: the agent attaches BPF programs to cgroups: run it as root\n/);
});

test("agent --explain PID: a process in a cgroup, and a container that carries a pod's annotations", async (t) => {
  if (!needs(t, { root: true, tools: ["python3"] })) return;
  const dir = tempDir(t);
  const cg = TestCgroup.create(t);
  const podmanHere = needsPodman(t);
  const container = podmanHere
    ? startContainer(t, busyboxImage(t), {
        cmd: ["sleep", "120"],
        annotations: {
          "io.kubernetes.cri.sandbox-namespace": "prod",
          "io.kubernetes.cri.sandbox-name": "api-7f9",
          "io.kubernetes.cri.container-name": "api",
          "io.kubernetes.cri.container-type": "container",
        },
      })
    : undefined;
  const file = join(dir, "policy.yaml");
  writeFileSync(
    file,
    `rules:
  - name: billing
    match: {container: {name: "billing-*"}}
    keepalive: {idle: 60s}
  - name: prod-api
    match: {pod: {namespace: prod, container: api}}
    keepalive: {for: gcp-nat}
  - name: workers
    match: {cgroup: ${cg.path}, process: {name: "python*"}}
    keepalive: {for: azure-lb}
`,
  );
  const child = new Process(cg.spawn(["python3", "-c", "import time; time.sleep(60)"]), "sleeper");
  t.after(() => child.kill());
  let r = tcpka(["agent", "--explain", String(child.pid), "--policy", file]);
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.split("\n");
  assert.match(
    lines[0] ?? "",
    new RegExp(
      `^python3\\[${child.pid}\\]: uid 0 \\(root\\), exe \\S+, cgroup ${cg.path}, unit -, container -, pod -$`,
    ),
  );
  assert.equal(lines[1], "rule billing (line 2) does not apply: container.name billing-*: not in a container");
  assert.equal(
    lines[2],
    "rule prod-api (line 5) does not apply: pod.namespace prod: not in a pod; pod.container api: not in a pod",
  );
  assert.equal(
    lines[3],
    `rule workers (line 8) applies: cgroup ${cg.path}: its cgroup is ${cg.path}; process.name python*: its name is python3`,
  );
  assert.equal(lines[4], "  → 120s / 24s / 5 for azure-lb (strengthen), all connections");

  r = tcpka(["agent", "--explain", String(process.pid), "--policy", file]);
  assert.match(r.stdout, /\nno rule applies: the agent leaves this process as it is\n$/);
  assert.equal(tcpka(["agent", "--explain", "0", "--policy", file]).status, 2);

  if (!container) return; // needsPodman said why
  r = tcpka(["agent", "--explain", String(container.pid), "--policy", file]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(
    r.stdout,
    new RegExp(`container ${container.name} \\(image ${container.image}\\), pod prod/api-7f9 container api\\n`),
  );
  assert.match(
    r.stdout,
    /\nrule prod-api \(line 5\) applies: pod\.namespace prod: its pod's namespace is prod; pod\.container api: its pod's container is api\n {2}→ 600s \/ 120s \/ 5 for gcp-nat \(strengthen\), all connections\n$/,
  );
});

test("agent --explain PID: podman containers by their image and their labels, and not when a label differs", (t) => {
  if (!needsPodman(t)) return;
  const dir = tempDir(t);
  const image = busyboxImage(t);
  const otherImage = busyboxImage(t);
  const sleep = ["sleep", "120"];
  const db = startContainer(t, image, { labels: { tier: "db", team: "billing" }, cmd: sleep });
  // Whoever starts a container chooses its labels: this one's would retitle a terminal if printed as it is.
  const web = startContainer(t, image, {
    labels: { tier: "web", team: "billing", note: "\x1b]0;pwned\x07" },
    cmd: sleep,
  });
  const ops = startContainer(t, otherImage, { labels: { tier: "db", team: "ops" }, cmd: sleep });
  const file = join(dir, "policy.yaml");
  writeFileSync(
    file,
    `rules:
  - name: billing-db
    match: {container: {labels: {tier: db, team: "bill*"}}}
    keepalive: {idle: 60s}
  - name: noted
    match: {container: {labels: {note: quiet}}}
    keepalive: {idle: 45s}
  - name: by-image
    match: {container: {image: "${image}"}}
    keepalive: {for: gcp-nat}
`,
  );
  const explain = (pid: number) => {
    const r = tcpka(["agent", "--explain", String(pid), "--policy", file]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, "");
    return r.stdout.split("\n");
  };
  const head = (c: TestContainer) =>
    new RegExp(
      `^sleep\\[${c.pid}\\]: uid 0 \\(root\\), exe \\S+, cgroup ${c.cgroup}, unit -, container ${c.name} \\(image ${c.image}\\), pod -$`,
    );

  let lines = explain(db.pid);
  assert.match(lines[0] ?? "", head(db));
  assert.deepEqual(lines.slice(1), [
    "rule billing-db (line 2) applies: container.labels tier=db: its container's label tier is db; container.labels team=bill*: its container's label team is billing",
    "  → 60s / 10s / 6 (strengthen), all connections",
    "",
  ]);

  lines = explain(web.pid);
  assert.match(lines[0] ?? "", head(web));
  assert.deepEqual(lines.slice(1), [
    "rule billing-db (line 2) does not apply: container.labels tier=db: its container's label tier is web",
    "rule noted (line 5) does not apply: container.labels note=quiet: its container's label note is \\x1b]0;pwned\\x07",
    `rule by-image (line 8) applies: container.image ${image}: its container's image is ${image}`,
    "  → 600s / 120s / 5 for gcp-nat (strengthen), all connections",
    "",
  ]);

  lines = explain(ops.pid);
  assert.match(lines[0] ?? "", head(ops));
  assert.deepEqual(lines.slice(1), [
    "rule billing-db (line 2) does not apply: container.labels team=bill*: its container's label team is ops",
    "rule noted (line 5) does not apply: container.labels note=quiet: its container has no label note",
    `rule by-image (line 8) does not apply: container.image ${image}: its container's image is ${otherImage}`,
    "no rule applies: the agent leaves this process as it is",
    "",
  ]);

  // A process on the host is in no container: no image, no labels.
  lines = explain(process.pid);
  assert.equal(lines[3], `rule by-image (line 8) does not apply: container.image ${image}: not in a container`);
});
