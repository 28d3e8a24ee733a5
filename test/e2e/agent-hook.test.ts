/**
 * `tcpka agent --oci-hook`: podman runs it (as an OCI hook, from --hooks-dir) while it creates a container, and a
 * container that a rule selects is enforced before it runs anything: its very first connection is set up by the
 * cgroup's sock_ops program (keepalive on right after connect(), SET UP counted), where without the hook the
 * agent's own reaction comes a moment after the start. The hook runs in podman's (the host's) mount namespace, so
 * the agent here is the host's own, with the host's bpffs and /run/tcpka: the test refuses to run beside another
 * agent (outside CI it skips, saying why), and removes its pins and the agent's status at the end.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { agentRuns } from "../../src/agent/status.js";
import { KaAgent, kaAgentExe } from "../helpers/agent.js";
import { IN_CI } from "../helpers/env.js";
import { TCPKA } from "../helpers/paths.js";
import { busyboxImage, needsPodman, startContainer } from "../helpers/podman.js";
import { tempDir, uniqueName } from "../helpers/scope.js";
import { startTcpka, tcpkaHere as tcpka } from "../helpers/tcpka.js";

test("with the OCI hook, a selected container's first connection is covered from its first packet; without, by the agent as runc creates it (or a moment later)", async (t) => {
  if (!needsPodman(t)) return;
  if (agentRuns()) {
    assert.ok(!IN_CI, "another tcpka agent runs on this machine in CI");
    t.skip("another tcpka agent runs on this host (the hook talks to the host's agent)");
    return;
  }
  const image = busyboxImage(t);
  const exe = kaAgentExe(t);
  const dir = tempDir(t, { readable: true });
  const prefix = uniqueName();
  const policy = join(dir, "policy.yaml");
  writeFileSync(
    policy,
    `rules:\n  - name: hooked\n    match: {container: {name: "${prefix}-*"}}\n    keepalive: {idle: 7s, interval: 3s, count: 4}\n`,
  );
  // The hook as contrib/oci-hooks.d/tcpka-agent.json has it, run from this checkout (its PATH finds this node).
  const hooks = join(dir, "hooks.d");
  const shipped = JSON.parse(
    readFileSync(join(dirname(TCPKA), "..", "contrib", "oci-hooks.d", "tcpka-agent.json"), "utf8"),
  ) as { hook: { path: string; args: string[]; env: string[] }; stages: string[] };
  assert.deepEqual(shipped.stages, ["createRuntime"]);
  mkdirSync(hooks);
  writeFileSync(
    join(hooks, "tcpka-agent.json"),
    JSON.stringify({
      ...shipped,
      hook: { ...shipped.hook, path: TCPKA, env: [`PATH=${dirname(process.execPath)}:/usr/bin:/bin`] },
    }),
  );

  const agent = startTcpka(t, ["agent", "--policy", policy, "--resync", "1m"]);
  const cgroups: string[] = [];
  t.after(() => {
    agent.kill("SIGTERM");
    for (const cg of cgroups) tcpka(["enforce", "--remove", "--cgroup", cg]);
    if (existsSync("/run/tcpka/agent.json")) rmSync("/run/tcpka/agent.json");
  });
  await agent.waitFor(/^reconciled \(start\) in \d+ ms/m, 20_000);

  // With the hook: set up at connect, covered at once, counted by the sock_ops program.
  const hooked = startContainer(t, image, {
    name: `${prefix}-hooked`,
    hooksDir: hooks,
    mounts: [{ source: exe, target: "/ka_agent" }],
    cmd: ["/ka_agent", "5"],
  });
  cgroups.push(hooked.cgroup);
  const first = await KaAgent.inContainer(hooked).first();
  assert.deepEqual(
    // at_connect: on right after connect() returned (covered_ms counts from main(), so it includes the connect)
    [first.at_connect, first.idle, first.interval, first.count],
    [1, 7, 3, 4],
    `the hooked container's first connection: ${JSON.stringify(first)}`,
  );
  // Without it (the same rule): the agent itself, the moment runc writes the container's state.json (35-42 ms
  // before the program runs, here), else at its reconcile and its pass over the connections made meanwhile.
  const later = startContainer(t, image, {
    name: `${prefix}-plain`,
    mounts: [{ source: exe, target: "/ka_agent" }],
    cmd: ["/ka_agent", "5"],
  });
  cgroups.push(later.cgroup);
  const plain = await KaAgent.inContainer(later).first();
  assert.ok(plain.covered_ms >= 0, `no hook: covered by the agent (${JSON.stringify(plain)})`);
  console.log(
    `first connection covered: with the hook at connect; without it ${plain.at_connect ? "at connect too" : `after ${plain.covered_ms} ms`}`,
  );

  // The agent adopted what the hook made (nothing made twice), and the kernel counts the hooked one's set-ups.
  await agent.waitFor(/^enforcing rule hooked on container .*-plain .* as its runtime created it$/m, 10_000);
  const listed = JSON.parse(tcpka(["enforce", "--list", "--json"]).stdout) as {
    cgroup: string;
    owner?: string;
    rule?: string;
    connections_set_up?: number;
  }[];
  const mine = (cg: string) => listed.filter((l) => l.cgroup === cg);
  assert.equal(mine(hooked.cgroup).length, 1);
  assert.deepEqual(
    [mine(hooked.cgroup)[0]?.owner, mine(hooked.cgroup)[0]?.rule],
    ["agent", "hooked"],
    "the hook's enforcement is the agent's",
  );
  assert.ok((mine(hooked.cgroup)[0]?.connections_set_up ?? 0) >= 2, "set up by the sock_ops program at connect");
  assert.doesNotMatch(agent.stdout, /enforcing rule hooked on container .*-hooked /, "the agent found it made");

  // tcpka status: what the agent covers now, with what the kernel counts; exit 0 while all is well.
  // (after the reconcile that found both: the pass over the plain one's existing connections changes what
  // its program made before the agent enforced, none when it was in time)
  await agent.waitFor(/^reconciled \([^)]+\) in \d+ ms: 2 targets, /m, 10_000);
  assert.doesNotMatch(agent.stdout, /^updated rule /m, "nothing made twice");
  const status = tcpka(["status"]);
  assert.equal(status.status, 0, status.stdout + status.stderr);
  assert.match(status.stdout, /^agent: running \(pid \d+, since /m);
  assert.match(
    status.stdout,
    /^rule hooked \(line 2\): 7s \/ 3s \/ 4 \(strengthen\), all connections, mechanism auto$/m,
  );
  for (const c of [hooked, later]) {
    const row = status.stdout.split("\n").find((l) => l.includes(`container ${c.name} `));
    assert.ok(row, `a row for ${c.name}: ${status.stdout}`);
    assert.match(row, /\benforced$/);
  }
  const json = tcpka(["status", "--json"]);
  assert.equal(json.status, 0, json.stderr);
  const s = JSON.parse(json.stdout) as {
    running: boolean;
    rules: {
      name: string;
      targets: { container: string; state: string; connections_set_up: number | null; existing: unknown }[];
    }[];
  };
  assert.equal(s.running, true);
  const targets = new Map(s.rules[0]?.targets.map((x) => [x.container, x]));
  assert.ok((targets.get(hooked.name)?.connections_set_up ?? 0) >= 2, "the hooked one's set-ups, counted");
  // The plain one: set up by the sock_ops program where the agent was in time, else changed by the pass.
  const plainSetUps = targets.get(later.name)?.connections_set_up ?? -1;
  if (plain.at_connect) assert.ok(plainSetUps >= 2, `the plain one's set-ups, counted: ${plainSetUps}`);
  else assert.equal(plainSetUps, 0, "the plain one's were changed by the pass instead");
  assert.deepEqual((targets.get(later.name)?.existing as { changed: number } | undefined)?.changed !== undefined, true);
  // Stopped: its enforcements stay, and status says it is not running (exit 1).
  agent.kill("SIGTERM");
  await agent.waitFor(/^stopped \(SIGTERM\); the enforcements stay in force$/m, 10_000);
  const down = tcpka(["status"]);
  assert.equal(down.status, 1, down.stdout);
  assert.match(down.stdout, /^agent: NOT running \(its last status, from pid \d+; what it enforced stays pinned\)$/m);
});
