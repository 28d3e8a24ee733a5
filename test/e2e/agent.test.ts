/**
 * `tcpka agent` (issue 16) against the real kernel, real cgroups and real podman containers (runc, cgroupfs),
 * read from inside with the programs' own getsockopt (test/fixtures/ka_agent.c, which never sets keepalive
 * itself):
 *
 * - containers started after the agent, selected by name (a glob) and by the pod of their CRI annotations, get
 *   their rule on their first connection, and the delay from the container's start is measured; containers not
 *   selected (another name, another pod of the same namespace) are untouched; the log says what was done; a
 *   stream of changes elsewhere on the host does not hold a new container's cover back;
 * - a policy edit (SIGHUP after the file changed where the agent does not watch; an editor's atomic rename)
 *   changes new and existing connections; removing the rule removes the enforcement;
 * - killed with SIGKILL in the middle of its first reconcile and of later ones and restarted, it converges: one
 *   pin directory per cgroup, descriptions that describe what the links run, one program of each kind attached;
 *   an operator's enforce on another cgroup and on a cgroup that the policy selects stay as they are (the latter
 *   reported as failing); the BPF file system unmounted and mounted again as at a reboot, it re-creates its
 *   enforcements, restarted or within its --resync;
 * - a policy with errors changes nothing, every error is logged with its line, also at start;
 * - behind the firewall lab's idle timeout, a selected container's idle connection lives and an unselected one's
 *   dies.
 *
 * Each test runs its agent in a mount namespace of its own (test/helpers/agent.ts: its own bpffs and
 * /run/tcpka), so that it never touches another agent's pins or the host's, and a "reboot" empties only its own
 * bpffs. Every container, cgroup, namespace and process has a unique name and goes when its test ends.
 */
import assert from "node:assert/strict";
import { chmodSync, copyFileSync, symlinkSync, watch, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { pinName } from "../../src/enforce/cgroup.js";
import { cgroup2Mount } from "../../src/inspect/cgroup.js";
import {
  AgentHost,
  attached,
  type Conn,
  type First,
  type Ka,
  KaAgent,
  ka,
  kaAgentExe,
  needsAgentHost,
  PIN_ROOT,
  type RunningAgent,
  writeAtomically,
} from "../helpers/agent.js";
import { TestCgroup } from "../helpers/cgroup.js";
import type { Listed } from "../helpers/enforce.js";
import { needs, python3 } from "../helpers/env.js";
import { UNTOUCHED } from "../helpers/keepalive.js";
import { LAB_PEER, Lab, SERVER_IP } from "../helpers/lab.js";
import { busyboxImage, needsPodman, startContainer, type TestContainer } from "../helpers/podman.js";
import { Process, sleep, start, until } from "../helpers/processes.js";
import { NAME_PREFIX, type Scope, tempDir, uniqueName } from "../helpers/scope.js";

/**
 * The end of the reconcile that made one target's change, looked for after its "updated rule" line. Its reason
 * is not asserted: on a machine where cgroups come and go (other tests), a reconcile that a change elsewhere
 * asked for may be the one that applies a policy change.
 */
const RECONCILED_ONE = /^reconciled \([^)]+\) in \d+ ms: 1 target, 1 changed, 0 removed, 0 failing/m;

/** A container's first connection must be covered within this long of its start (the agent reacts to events). */
const COVER_WITHIN_MS = 3000;

/** The io.kubernetes.cri.* annotations that containerd writes for a container of a pod. */
function cri(namespace: string, pod: string, container: string): Record<string, string> {
  return {
    "io.kubernetes.cri.sandbox-namespace": namespace,
    "io.kubernetes.cri.sandbox-name": pod,
    "io.kubernetes.cri.container-name": container,
    "io.kubernetes.cri.container-type": "container",
  };
}

function esc(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

/** A container running ka_agent (`/ka_agent WAIT_S [HOST PORT]`), and when `podman run` was started. */
interface Started {
  c: TestContainer;
  k: KaAgent;
  /** Date.now() right before `podman run` */
  runAt: number;
}

function startKa(
  scope: Scope,
  image: string,
  exe: string,
  opts: { name?: string; annotations?: Record<string, string>; network?: string; args?: string[] } = {},
): Started {
  const runAt = Date.now();
  const c = startContainer(scope, image, {
    ...(opts.name ? { name: opts.name } : {}),
    ...(opts.annotations ? { annotations: opts.annotations } : {}),
    ...(opts.network ? { network: opts.network } : {}),
    mounts: [{ source: exe, target: "/ka_agent" }],
    cmd: ["/ka_agent", ...(opts.args ?? ["5"])],
  });
  return { c, k: KaAgent.inContainer(c), runAt };
}

/** The first connection was covered, with `want`, within COVER_WITHIN_MS of the program's start; the delay, printed. */
function assertCovered(s: Started, f: First, want: Ka, what: string): number {
  assert.ok(f.covered_ms >= 0, `${what}: its first connection never got keepalive (${JSON.stringify(f)})`);
  assert.deepEqual(ka(f), want, `${what}: the first connection's settings`);
  const sinceRun = f.start_ms + f.covered_ms - s.runAt;
  console.log(
    `${what}: first connection covered ${f.covered_ms} ms after the container's program started ` +
      `(${sinceRun} ms after \`podman run\` began; keepalive at connect: ${f.at_connect})`,
  );
  assert.ok(f.covered_ms <= COVER_WITHIN_MS, `${what}: covered after ${f.covered_ms} ms, want <= ${COVER_WITHIN_MS}`);
  return f.covered_ms;
}

/** Every socket of a report has `want`. */
function assertAll(conns: readonly Conn[], want: Ka, what: string): void {
  assert.ok(conns.length > 0, `${what}: some sockets`);
  for (const c of conns) assert.deepEqual(ka(c), want, `${what}: connection ${c.conn} (${c.end})`);
}

/** A --list entry without its counters (they move with every connection). */
function fixed(l: Listed | undefined): Omit<Listed, "connections_set_up" | "calls_kept_to_rule"> | undefined {
  if (!l) return undefined;
  const { connections_set_up: _a, calls_kept_to_rule: _b, ...rest } = l;
  return rest;
}

/**
 * Shell loops in the background (a stream of changes on the host), each until it is stopped. Call this first
 * in a test: its cleanup, registered before the cgroups and directories the loops write into, stops them
 * before those are removed.
 */
function backgroundLoops(scope: Scope): (script: string) => Process {
  const loops: Process[] = [];
  scope.after(() => {
    for (const p of loops) p.kill();
  });
  return (script) => {
    const p = start(scope, ["sh", "-c", script], { timeoutMs: 120_000 });
    loops.push(p);
    return p;
  };
}

test("containers started after the agent, selected by name and by pod, are covered from their first connection; others untouched", async (t) => {
  if (!needsPodman(t) || !needsAgentHost(t)) return;
  const background = backgroundLoops(t);
  const image = busyboxImage(t);
  const exe = kaAgentExe(t);
  const host = await AgentHost.create(t);
  await host.explained(async () => {
    const busy = TestCgroup.create(t); // made before the agent starts: it watches the top of the cgroup tree
    const dir = tempDir(t);
    const policy = join(dir, "policy.yaml");
    const podNs = uniqueName();
    writeFileSync(
      policy,
      `rules:
  - name: billing
    match: {container: {name: "${NAME_PREFIX}*-billing"}}
    keepalive: {idle: 7s, interval: 3s, count: 4}
  - name: web-pods
    match: {pod: {namespace: ${podNs}, name: "web-*"}}
    keepalive: {idle: 9s, interval: 2s, count: 5}
`,
    );
    const BILLING = { keepalive: 1, idle: 7, interval: 3, count: 4 };
    const WEB = { keepalive: 1, idle: 9, interval: 2, count: 5 };
    // No resync during the test: what covers a new container is the agent's reaction to the runtime's state
    // directory and the cgroup tree changing.
    const agent = await host.startAgent(policy, { resync: "10m" });
    const from = agent.mark();

    const billing = startKa(t, image, exe, { name: `${uniqueName()}-billing` });
    const web = startKa(t, image, exe, { annotations: cri(podNs, "web-7f9c", "app") });
    const plain = startKa(t, image, exe);
    const db = startKa(t, image, exe, { annotations: cri(podNs, "db-0", "postgres") });
    const [fBilling, fWeb, fPlain, fDb] = await Promise.all([billing, web, plain, db].map((s) => s.k.first()));
    assertCovered(billing, fBilling!, BILLING, "container selected by name");
    assertCovered(web, fWeb!, WEB, "container selected by pod");
    for (const [f, what] of [
      [fPlain!, "container of no rule"],
      [fDb!, "container of another pod of the namespace"],
    ] as const) {
      assert.equal(f.covered_ms, -1, `${what}: never covered`);
      assert.deepEqual(ka(f), UNTOUCHED, what);
    }

    // New connections: the rule from the start (the cgroup's programs), the first one still as it was changed.
    assertAll(await billing.k.report(), BILLING, "by name");
    assertAll(await web.k.report(), WEB, "by pod");
    assertAll(await plain.k.report(), UNTOUCHED, "no rule");
    assertAll(await db.k.report(), UNTOUCHED, "another pod");

    // What the log says, and nothing of the others. Both were enforced the moment runc wrote their state.json,
    // before their program ran (watchCreated), not at the reconcile SETTLE_MS later.
    await agent.waitLog(
      new RegExp(
        `^enforcing rule billing on container ${esc(billing.c.name)} \\(${esc(billing.c.cgroup)}\\) as its runtime created it$`,
        "m",
      ),
      from,
    );
    await agent.waitLog(
      new RegExp(
        `^enforcing rule web-pods on pod ${esc(podNs)}/web-7f9c \\(${esc(web.c.cgroup)}\\) as its runtime created it$`,
        "m",
      ),
      from,
    );
    assert.match(
      agent.log.slice(from),
      /^reconciled \((a container appeared or went|a cgroup appeared or went)\) in \d+ ms: /m,
    );
    for (const s of [plain, db]) {
      assert.ok(!agent.log.includes(s.c.id), `the log never names ${s.c.name}: ${agent.log}`);
      assert.ok(!agent.log.includes(s.c.name));
    }

    // The pins and the status say the same.
    const pins = host.pinDirs();
    assert.ok(pins.includes(pinName(billing.c.cgroup)) && pins.includes(pinName(web.c.cgroup)), pins.join(" "));
    for (const s of [plain, db]) assert.ok(!pins.includes(pinName(s.c.cgroup)), `no pin for ${s.c.name}`);
    for (const [s, rule, want] of [
      [billing, "billing", BILLING],
      [web, "web-pods", WEB],
    ] as const) {
      const l = host.listed(s.c.cgroup);
      assert.ok(l, `--list shows ${s.c.cgroup}`);
      assert.deepEqual(
        [l.owner, l.rule, l.settings_known, l.setsockopt_hook, l.idle_s, l.interval_s, l.count, l.mode],
        ["agent", rule, true, true, want.idle, want.interval, want.count, "strengthen"],
      );
    }
    await host.passesDone();
    const status = host.status();
    assert.equal(status.pid, agent.pid);
    const [sBilling, sWeb] = status.rules.map((r) => r.targets);
    assert.deepEqual(
      sBilling?.map((x) => [x.cgroup, x.container, x.pod, x.state]),
      [[billing.c.cgroup, billing.c.name, null, "enforced"]],
    );
    assert.deepEqual(
      sWeb?.map((x) => [x.cgroup, x.container, x.pod, x.state]),
      [[web.c.cgroup, web.c.name, `${podNs}/web-7f9c`, "enforced"]],
    );
    // The pass over existing connections changed the first connection's two ends where the enforcement came
    // after it, nothing where the enforcement came first (at runc's state.json).
    for (const [x, f] of [
      [sBilling?.[0], fBilling!],
      [sWeb?.[0], fWeb!],
    ] as const) {
      const changed = typeof x?.existing === "object" ? x.existing.changed : -1;
      if (f.at_connect) assert.equal(changed, 0, `nothing left to change: ${JSON.stringify(x)}`);
      else assert.ok(changed >= 2, `the first connection's two ends were changed: ${JSON.stringify(x)}`);
    }

    // A host where something changes all the time: a cgroup made and removed every 50 ms does not hold a new
    // container's cover back until the changes stop...
    const churn = background(`while :; do mkdir "${busy.dir}/c"; rmdir "${busy.dir}/c"; sleep 0.05; done`);
    const late = startKa(t, image, exe, { name: `${uniqueName()}-billing` });
    assertCovered(late, await late.k.first(), BILLING, "container started while cgroups come and go every 50 ms");
    await churn.stop();
    // ...nor does a file that changes all the time in the policy's directory (an editor's swap file): those are
    // reloads of an unchanged policy, which must not swallow the reconcile that a container's start asked for.
    const swap = background(`while :; do date > "${dir}/.policy.yaml.swp"; sleep 0.05; done`);
    const later = startKa(t, image, exe, { name: `${uniqueName()}-billing` });
    assertCovered(
      later,
      await later.k.first(),
      BILLING,
      "container started while a file in the policy's directory changes",
    );
    await swap.stop();
    assert.equal(agent.lines(/^policy /, from).length, 0, "an unchanged policy is not loaded again");

    await agent.stop();
  });
});

test("a policy edit changes new and existing connections (SIGHUP, an atomic rewrite); a removed rule's enforcement goes", async (t) => {
  if (!needsPodman(t) || !needsAgentHost(t)) return;
  const image = busyboxImage(t);
  const exe = kaAgentExe(t);
  const host = await AgentHost.create(t);
  await host.explained(async () => {
    // The policy as a symlink into a directory that the agent does not watch (a ConfigMap's volume is made so):
    // a change there is read on SIGHUP.
    const dir = tempDir(t);
    const elsewhere = tempDir(t);
    const policy = join(dir, "policy.yaml");
    const name = `${uniqueName()}-billing`;
    const rule = (keepalive: string, mode = "strengthen") =>
      `rules:\n  - name: billing\n    match: {container: {name: "${name}"}}\n    keepalive: ${keepalive}\n    mode: ${mode}\n`;
    writeFileSync(join(elsewhere, "policy.yaml"), rule("{idle: 7s, interval: 3s, count: 4}"));
    symlinkSync(join(elsewhere, "policy.yaml"), policy);
    const agent = await host.startAgent(policy);
    const s = startKa(t, image, exe, { name });
    assertCovered(s, await s.k.first(), { keepalive: 1, idle: 7, interval: 3, count: 4 }, "the container");
    const where = `container ${esc(name)} \\(${esc(s.c.cgroup)}\\)`;
    await agent.waitLog(new RegExp(`^enforcing rule billing on ${where} as its runtime created it$`, "m"), 0);
    const made = host.listed(s.c.cgroup);
    assert.ok(made);

    // SIGHUP: the file changed where no event tells the agent; a resync does not read it, SIGHUP does.
    let from = agent.mark();
    writeAtomically(join(elsewhere, "policy.yaml"), rule("{idle: 5s, interval: 2s, count: 3}"));
    await sleep(2500);
    assert.equal(agent.lines(/^policy |^updated /, from).length, 0, `not read before SIGHUP: ${agent.log.slice(from)}`);
    assertAll(await s.k.report(), { keepalive: 1, idle: 7, interval: 3, count: 4 }, "before SIGHUP");
    agent.hup();
    await agent.waitLog(new RegExp(`^policy ${esc(policy)}: 1 rule \\(the policy changed\\)$`, "m"), from);
    await agent.waitLog(
      RECONCILED_ONE,
      await agent.waitLogEnd(new RegExp(`^updated rule billing on ${where}$`, "m"), from),
    );
    await host.passesDone();
    // the first connection and the one of the first report (existing) and a new one: all of them
    const sighup = await s.k.report();
    assert.deepEqual(
      sighup.map((c) => c.conn),
      [1, 1, 2, 2, 3, 3],
    );
    assertAll(sighup, { keepalive: 1, idle: 5, interval: 2, count: 3 }, "after SIGHUP");

    // An editor's save: a new file renamed over the old one in the policy's directory. Force, with a weaker idle.
    from = agent.mark();
    writeAtomically(policy, rule("{idle: 20s, interval: 4s, count: 3}", "force"));
    await agent.waitLog(
      RECONCILED_ONE,
      await agent.waitLogEnd(new RegExp(`^updated rule billing on ${where}$`, "m"), from),
    );
    await host.passesDone();
    assertAll(await s.k.report(), { keepalive: 1, idle: 20, interval: 4, count: 3 }, "after the atomic rewrite");
    const updated = host.listed(s.c.cgroup);
    assert.ok(updated);
    assert.deepEqual(
      [updated.name, updated.since, updated.mode, updated.idle_s, updated.settings_known, updated.owner],
      [made.name, made.since, "force", 20, true, "agent"],
      "updated in place: the same pins, the same since",
    );
    assert.notEqual(updated.prog_id, made.prog_id);
    assert.deepEqual(host.pinDirs(), [pinName(s.c.cgroup)]);

    // The rule removed: its enforcement goes; new connections are left alone, existing ones keep their settings.
    from = agent.mark();
    writeAtomically(
      policy,
      `rules:\n  - name: other\n    match: {container: {name: "${uniqueName()}"}}\n    keepalive: {idle: 9s}\n`,
    );
    await agent.waitLog(
      new RegExp(
        `^removed the enforcement of rule billing on ${esc(s.c.cgroup)} \\(the rule is not in the policy now\\)$`,
        "m",
      ),
      from,
    );
    assert.deepEqual(host.pinDirs(), [], "its pin directory is gone");
    assert.equal(host.listed(s.c.cgroup), undefined);
    assert.deepEqual(attached(join(cgroup2Mount(), s.c.cgroup)), { sockOps: 0, setsockopt: 0 }, "nothing attached");
    // A new connection's connecting end is left alone; its accepted end inherits the listener's options, and the
    // listener, an existing socket, keeps what the enforcement set on it.
    const after = await s.k.report();
    const newest = Math.max(...after.map((c) => c.conn));
    const FORCED = { keepalive: 1, idle: 20, interval: 4, count: 3 };
    assertAll(
      after.filter((c) => c.conn === newest && c.end === "client"),
      UNTOUCHED,
      "a new connection",
    );
    assertAll(
      after.filter((c) => c.conn !== newest || c.end === "accepted"),
      FORCED,
      "the existing ones, and what the listener passes on",
    );
    await agent.waitLog(/^reconciled \([^)]+\) in \d+ ms: 0 targets, 0 changed, 1 removed/m, from);
    const status = host.status();
    assert.deepEqual(
      status.rules.map((r) => [r.name, r.targets.length]),
      [["other", 0]],
      "the status: no target left",
    );
    await agent.stop();
  });
});

test("SIGKILL at start and mid-reconcile, restarts, a reboot of bpffs: it converges, nothing duplicated, the operator's enforce kept", async (t) => {
  if (!needsAgentHost(t)) return;
  const exe = kaAgentExe(t);
  const host = await AgentHost.create(t);
  await host.explained(async () => {
    const workers = TestCgroup.create(t);
    const sel = ["a", "b", "c", "d"].map((n) => workers.child(n));
    const taken = workers.child("e"); // selected by the policy, but an operator enforces there first
    const other = TestCgroup.create(t); // an operator's enforce on a cgroup that no rule selects
    const procs = new Map([...sel, taken, other].map((cg) => [cg, KaAgent.inCgroup(t, cg, exe)]));
    await Promise.all([...procs.values()].map((k) => k.first()));
    const hostDefaults = ka(await procs.get(other)!.first());
    assert.equal(hostDefaults.keepalive, 0);

    host.enforce(["--cgroup", other.path, "--idle", "11s", "--interval", "5s", "--count", "2"]);
    host.enforce(["--cgroup", taken.path, "--idle", "13s", "--interval", "5s", "--count", "2"]);
    const OPERATOR_OTHER = { keepalive: 1, idle: 11, interval: 5, count: 2 };
    const OPERATOR_TAKEN = { keepalive: 1, idle: 13, interval: 5, count: 2 };
    const operators = () => [fixed(host.listed(other.path)), fixed(host.listed(taken.path))];
    const operatorsBefore = operators();
    assert.ok(operatorsBefore.every((l) => l?.settings_known && l.owner === undefined));

    const dir = tempDir(t);
    const policy = join(dir, "policy.yaml");
    const version = (idle: number, interval: number, count: number) => {
      writeAtomically(
        policy,
        `rules:\n  - name: workers\n    match: {cgroup: ${workers.path}}\n    keepalive: {idle: ${idle}s, interval: ${interval}s, count: ${count}}\n`,
      );
      return { keepalive: 1, idle, interval, count };
    };

    /** Everything as the policy says, with the operator's enforcements (`operator`: still there) as they were. */
    const converged = async (agent: RunningAgent, want: Ka, operator: boolean) => {
      const agents = operator ? sel : [...sel, taken];
      const expected = [...agents, ...(operator ? [taken, other] : [])].map((cg) => pinName(cg.path)).sort();
      assert.deepEqual(host.pinDirs(), expected, "one pin directory per enforced cgroup, nothing else");
      const list = host.list();
      assert.equal(list.length, expected.length);
      for (const cg of agents) {
        const l = list.find((x) => x.cgroup === cg.path);
        assert.ok(l, cg.path);
        assert.deepEqual(
          [l.settings_known, l.setsockopt_hook, l.owner, l.rule, l.idle_s, l.interval_s, l.count],
          [true, true, "agent", "workers", want.idle, want.interval, want.count],
          `${cg.path}: the description is of the program the link runs, and of the rule`,
        );
        assert.deepEqual(host.pinsIn(l.name), ["counters", "link", "meta", "setsockopt"], `${cg.path}: its pins`);
      }
      for (const cg of [...sel, taken, other]) {
        const n = operator || cg !== other ? 1 : 0;
        assert.deepEqual(attached(cg.dir), { sockOps: n, setsockopt: n }, `${cg.path}: programs attached to it`);
      }
      // every connection, old and new, has the rule (or the operator's settings where the operator's enforce is)
      for (const cg of agents) assertAll(await procs.get(cg)!.report(), want, cg.path);
      const status = host.status();
      assert.equal(status.pid, agent.pid);
      const targets = status.rules[0]?.targets ?? [];
      assert.deepEqual(
        targets.map((x) => [x.cgroup, x.state]).sort(),
        [...sel.map((cg) => [cg.path, "enforced"]), [taken.path, operator ? "failing" : "enforced"]].sort(),
      );
      if (!operator) return;
      assert.deepEqual(operators(), operatorsBefore, "the operator's enforcements: untouched");
      assert.match(targets.find((x) => x.cgroup === taken.path)?.error ?? "", /operator's tcpka enforce/);
      const inTaken = await procs.get(taken)!.report();
      const newest = Math.max(...inTaken.map((c) => c.conn));
      assertAll(
        inTaken.filter((c) => c.conn === newest),
        OPERATOR_TAKEN,
        "a new connection where the operator enforces",
      );
      assertAll(
        inTaken.filter((c) => c.conn === 1),
        hostDefaults,
        "one that existed before the operator's enforce: nobody changed it",
      );
      const inOther = await procs.get(other)!.report();
      assertAll(
        inOther.filter((c) => c.conn !== 1),
        OPERATOR_OTHER,
        "the operator's other cgroup",
      );
    };

    // Killed in the middle of making its first enforcement: the moment its pin directory appears in bpffs
    // (inotify on the namespace's bpffs), before the pins that go in it.
    let want = version(7, 3, 4);
    const ours = new Set(sel.map((cg) => pinName(cg.path)));
    let halfMade = "";
    const pinWatch = watch(host.path(PIN_ROOT), (_, f) => {
      if (typeof f === "string" && ours.has(f) && !halfMade) {
        agent.p.kill("SIGKILL");
        halfMade = f;
      }
    });
    let agent = await host.startAgent(policy, { started: null });
    await agent.p.done.catch(() => {});
    pinWatch.close();
    assert.ok(halfMade, `killed when a pin directory appeared; its log: ${agent.log}`);
    const leftThen = host.pinsIn(halfMade);
    console.log(`killed as it made ${halfMade}: pinned in it then: [${leftThen.join(", ")}]`);

    // Restarted, and killed in its first reconcile right after its first enforcement: the rest are not made yet.
    agent = await host.startAgent(policy, { started: null });
    await agent.killWhen(/^enforcing rule workers on /m, 0);
    if (leftThen.length === 0) {
      assert.match(
        agent.log,
        new RegExp(`^removed the empty pin directory ${esc(PIN_ROOT)}/${esc(halfMade)} \\(`, "m"),
        "the empty directory, which enforces nothing, makes way",
      );
    }
    assert.doesNotMatch(agent.log, /^reconciled/m, "killed before its first reconcile ended");
    const early = host.list().filter((l) => l.owner === "agent");
    console.log(
      `killed at start with ${early.length} of ${sel.length} enforcements made (pins: ${host.pinDirs().length})`,
    );
    agent = await host.startAgent(policy);
    await converged(agent, want, true);
    // what the killed one had made completely is adopted as it is: no gap, no second program
    for (const e of early.filter((l) => l.settings_known)) {
      const now = host.listed(e.cgroup);
      assert.deepEqual([now?.prog_id, now?.since], [e.prog_id, e.since], `${e.cgroup}: adopted as it was`);
    }

    // Killed mid-reconcile after a policy change, right after its first update. The kill comes from this process
    // when it reads that line; a whole reconcile of four takes ~25 ms, and on a busy machine this process may read
    // the line only after it: then that change converges as any other and the next one is tried, up to five.
    let from = 0;
    let midReconcile = false;
    for (let attempt = 0; attempt < 5 && !midReconcile; attempt++) {
      from = agent.mark();
      want = version(5, 2, 3 + attempt);
      await agent.killWhen(/^updated rule workers on /m, from);
      const updating = agent.log.indexOf("\nupdated rule workers on ", from);
      midReconcile = !/^reconciled/m.test(agent.log.slice(updating));
      const updated = host.list().filter((l) => l.owner === "agent" && l.count === 3 + attempt).length;
      console.log(
        midReconcile
          ? `killed mid-reconcile with ${updated} of ${sel.length} enforcements updated`
          : `killed after the reconcile had ended (attempt ${attempt + 1}): trying another change`,
      );
      agent = await host.startAgent(policy);
      await converged(agent, want, true);
    }
    assert.ok(midReconcile, "killed before a reconcile ended, in one of five changes");

    // Killed at other moments after a change: before, in and after the reading of the policy and the reconcile.
    for (const [delay, idle, interval, count] of [
      [120, 4, 2, 3],
      [190, 3, 1, 3],
      [260, 2, 1, 3],
    ] as const) {
      from = agent.mark();
      want = version(idle, interval, count);
      await sleep(delay);
      await agent.kill();
      console.log(
        `killed ${delay} ms after a policy change; its log by then: ${JSON.stringify(agent.log.slice(from))}`,
      );
      agent = await host.startAgent(policy);
      await converged(agent, want, true);
    }

    // A reboot: the agent dead, bpffs unmounted and mounted again. Every pin is gone and the kernel detached
    // every program; restarted, the agent makes its enforcements again, also on the cgroup whose operator's
    // enforce went with the reboot.
    await agent.kill();
    host.rebootBpffs();
    assert.deepEqual(host.pinDirs(), []);
    for (const cg of [...sel, taken, other]) assert.deepEqual(attached(cg.dir), { sockOps: 0, setsockopt: 0 });
    const bare = await procs.get(sel[0]!)!.report();
    assertAll(
      bare.filter((c) => c.conn === Math.max(...bare.map((x) => x.conn)) && c.end === "client"),
      hostDefaults,
      "a new connection after the reboot, before the agent runs (its accepted end inherits the listener's options)",
    );
    agent = await host.startAgent(policy);
    assert.equal(agent.lines(/^enforcing rule workers on /).length, sel.length + 1, agent.log);
    await converged(agent, want, false);

    // bpffs emptied under a running agent: its next resync (2 s) makes everything again.
    from = agent.mark();
    const t0 = Date.now();
    host.rebootBpffs();
    await agent.waitLog(/^reconciled \([^)]+\) in \d+ ms: 5 targets, 5 changed, 0 removed, 0 failing/m, from, 10_000);
    console.log(`bpffs remounted under the running agent: its enforcements back after ${Date.now() - t0} ms`);
    await converged(agent, want, false);
    await agent.stop();
  });
});

test("a policy with errors: the last good policy stays in force, every error is logged with its line, also at start", async (t) => {
  if (!needsAgentHost(t)) return;
  const exe = kaAgentExe(t);
  const host = await AgentHost.create(t);
  await host.explained(async () => {
    const cg = TestCgroup.create(t);
    const proc = KaAgent.inCgroup(t, cg, exe);
    await proc.first();
    const dir = tempDir(t);
    const policy = join(dir, "policy.yaml");
    const good = (idle: number) =>
      `rules:\n  - name: workers\n    match: {cgroup: ${cg.path}}\n    keepalive: {idle: ${idle}s, interval: 3s, count: 4}\n  - name: billing\n    match: {container: {name: "billing-*"}}\n    keepalive: {idle: 60s}\n`;
    writeFileSync(policy, good(7));
    const GOOD = { keepalive: 1, idle: 7, interval: 3, count: 4 };
    let agent = await host.startAgent(policy);
    await agent.waitLog(new RegExp(`^enforcing rule workers on ${esc(cg.path)}$`, "m"), 0);
    assertAll(await proc.report(), GOOD, "the good policy");
    const loaded = host.status().policy.loaded;
    assert.ok(loaded);
    const before = fixed(host.listed(cg.path));
    const pinsBefore = host.pinDirs();

    // Four errors on four lines: a bad duration, a rule without settings, a misspelt field, a rule without a name.
    const bad = [
      "rules:",
      "  - name: workers",
      `    match: {cgroup: ${cg.path}}`,
      "    keepalive: {idle: 3s, interval: soon, count: 4}",
      "  - name: billing",
      '    match: {container: {nam: "billing-*"}}',
      "  - match: {unit: api.service}",
      "    keepalive: {idle: 60s}",
      "",
    ].join("\n");
    writeFileSync(join(dir, "bad.yaml"), bad);
    const expected = host
      .tcpka(["agent", "--check", join(dir, "bad.yaml")])
      .stderr.split("\n")
      .filter((l) => l.startsWith("tcpka: "))
      .map((l) => l.slice("tcpka: ".length).replace(join(dir, "bad.yaml"), policy));
    assert.equal(expected.length, 4, expected.join("\n"));
    assert.deepEqual(
      expected.map((l) => Number(/^[^:]+:(\d+):\d+: /.exec(l)?.[1])),
      [4, 5, 6, 7],
      `each error with its line: ${expected.join("\n")}`,
    );

    let from = agent.mark();
    writeAtomically(policy, bad);
    await agent.waitLog(
      new RegExp(`^the policy loaded at ${esc(loaded)} stays in force; nothing was changed$`, "m"),
      from,
    );
    assert.deepEqual(
      agent.lines(/^policy error: /, from),
      expected.map((l) => `policy error: ${l}`),
    );
    await sleep(2500); // a resync passes
    assert.deepEqual(fixed(host.listed(cg.path)), before, "the enforcement: as it was");
    assert.deepEqual(host.pinDirs(), pinsBefore);
    assertAll(await proc.report(), GOOD, "connections: the last good policy's");
    const status = host.status();
    assert.deepEqual(status.policy.errors, expected);
    assert.equal(status.policy.loaded, loaded);
    assert.equal(status.rules[0]?.idle_s, 7, "the status: the policy in force");

    // Started on the bad policy (after a crash, a reboot of the agent's unit): nothing in place is touched.
    await agent.kill();
    agent = await host.startAgent(policy, {
      started: /^no policy is in force: the enforcements in place are left as they are$/m,
    });
    assert.deepEqual(
      agent.lines(/^policy error: /),
      expected.map((l) => `policy error: ${l}`),
    );
    await sleep(2500);
    assert.deepEqual(fixed(host.listed(cg.path)), before, "the enforcement: as it was");
    assertAll(await proc.report(), GOOD, "connections: still the last good policy's");

    // Mended: in force at once.
    from = agent.mark();
    writeAtomically(policy, good(5));
    await agent.waitLog(
      RECONCILED_ONE,
      await agent.waitLogEnd(new RegExp(`^updated rule workers on ${esc(cg.path)}$`, "m"), from),
    );
    await host.passesDone();
    assertAll(await proc.report(), { keepalive: 1, idle: 5, interval: 3, count: 4 }, "the mended policy");
    assert.deepEqual(host.status().policy.errors, []);
    await agent.stop();
  });
});

test("behind the lab's firewall that forgets idle connections after 5 s: a selected container's connection lives, another's dies", async (t) => {
  if (!needsPodman(t) || !needsAgentHost(t) || !needs(t, { tools: ["ip", "nft", "python3"] })) return;
  const IDLE_S = 8;
  const image = busyboxImage(t);
  const exe = kaAgentExe(t);
  const lab = Lab.create(t, { idleTimeout: 5 });
  const server = lab.start(lab.server, [python3(), LAB_PEER, "serve", "7000"]);
  await server.waitFor(/^listening$/m);
  const host = await AgentHost.create(t);
  await host.explained(async () => {
    const dir = tempDir(t);
    const policy = join(dir, "policy.yaml");
    writeFileSync(
      policy,
      `rules:\n  - name: behind-firewall\n    match: {container: {name: "${NAME_PREFIX}*-client"}}\n    keepalive: {idle: 2s, interval: 1s, count: 3}\n`,
    );
    const agent = await host.startAgent(policy);
    // Both containers in the lab's client namespace, each with one connection to the server, idle from the start.
    const network = `ns:/run/netns/${lab.client.name}`;
    const args = ["3", SERVER_IP, "7000"];
    const kept = startKa(t, image, exe, { name: `${uniqueName()}-client`, network, args });
    const lost = startKa(t, image, exe, { network, args });
    const [fKept, fLost] = await Promise.all([kept.k.first(), lost.k.first()]);
    assertCovered(kept, fKept, { keepalive: 1, idle: 2, interval: 1, count: 3 }, "the selected client");
    assert.equal(fLost.covered_ms, -1);
    assert.equal(fLost.keepalive, 0);
    await agent.waitLog(new RegExp(`^enforcing rule behind-firewall on container ${esc(kept.c.name)} `, "m"), 0);

    await sleep(IDLE_S * 1000 - (Date.now() - fLost.start_ms));
    const [pKept, pLost] = await Promise.all([kept.k.ping(), lost.k.ping()]);
    assert.deepEqual(pKept, [{ conn: 1, ok: true }], `the selected client's connection, idle ${IDLE_S} s`);
    assert.equal(pLost.length, 1);
    assert.equal(pLost[0]?.ok, false, `the other's: forgotten by the firewall (${JSON.stringify(pLost)})`);
    await agent.stop();
  });
});

test("a cgroup shared with an unselected process is not enforced: the selected one's connections are changed by pid, each reconcile", async (t) => {
  if (!needsAgentHost(t)) return;
  const exe = kaAgentExe(t);
  // The same program under another name: /proc/PID/comm tells the two apart, as a rule by process name does.
  const otherExe = join(dirname(exe), "ka_other");
  copyFileSync(exe, otherExe);
  chmodSync(otherExe, 0o755);
  const host = await AgentHost.create(t);
  await host.explained(async () => {
    const cg = TestCgroup.create(t);
    const mine = KaAgent.inCgroup(t, cg, exe);
    const other = KaAgent.inCgroup(t, cg, otherExe);
    await mine.first();
    await other.first();
    const dir = tempDir(t);
    const policy = join(dir, "policy.yaml");
    writeFileSync(
      policy,
      "rules:\n  - name: by-name\n    match: {process: {name: ka_agent}}\n    keepalive: {idle: 9s, interval: 3s, count: 4}\n",
    );
    const agent = await host.startAgent(policy);
    const watched = new RegExp(
      `^rule by-name, watched \\(1 process in ${esc(cg.path)}\\): \\d+ connections changed$`,
      "m",
    );
    await agent.waitLog(watched, 0);
    const want = { keepalive: 1, idle: 9, interval: 3, count: 4 };
    // report() makes one more connection, then reports them all: the round changed the first one and the
    // listener, whose accepted end of the new one inherits it at once; the new one's connecting end waits for the
    // next round (no program in the cgroup sets it up at connect).
    const first = await mine.report();
    assertAll(
      first.filter((c) => c.conn === 1 || c.end === "accepted"),
      want,
      "the selected process, its connection of before the round, and what its listener accepted since",
    );
    assertAll(
      first.filter((c) => c.conn === 2 && c.end === "client"),
      UNTOUCHED,
      "the selected process, a connection made since",
    );
    assertAll(await other.report(), UNTOUCHED, "the other process in its cgroup");
    assert.deepEqual(host.pinDirs(), [], "no enforcement on a cgroup shared with a process of no rule");
    const from = agent.mark();
    await agent.waitLog(watched, from, 10_000); // the next reconcile's round (resync 2 s)
    const later = await mine.report();
    assertAll(
      later.filter((c) => c.conn <= 2),
      want,
      "the selected process, a round later",
    );
    const status = host.status();
    const rule = status.rules[0];
    assert.deepEqual(rule?.targets, []);
    assert.deepEqual(
      rule?.watched.map((w) => [w.cgroup, w.process_count, w.why]),
      [[cg.path, 1, `its cgroup ${cg.path} also holds 1 process of no rule; the agent enforces whole cgroups only`]],
    );
    assert.ok((rule?.watched[0]?.last?.changed ?? 0) >= 1, JSON.stringify(rule?.watched));
    await agent.stop();
  });
});

test("a process that starts in, or is moved into, a cgroup that already exists is planned for at once (the kernel's process events, the cgroup_attach_task tracepoint), not at the resync", async (t) => {
  if (!needsAgentHost(t)) return;
  const exe = kaAgentExe(t);
  const host = await AgentHost.create(t);
  await host.explained(async () => {
    const dir = tempDir(t);
    const policy = join(dir, "policy.yaml");
    writeFileSync(
      policy,
      "rules:\n  - name: by-name\n    match: {process: {name: ka_agent}}\n    keepalive: {idle: 9s, interval: 3s, count: 4}\n",
    );
    // A cgroup that holds a process of no rule; another that will hold only the rule's process. Both three levels
    // down, where the agent's inotify on the cgroup tree (its top two levels) does not reach: only the process
    // events tell of a process starting there.
    const top = TestCgroup.create(t);
    const shared = top.child("a").child("shared");
    const sleeper = new Process(shared.spawn(["sleep", "600"]), `sleep in ${shared.path}`);
    t.after(() => sleeper.kill());
    const alone = top.child("b").child("alone");
    // A resync far beyond the test: only the process events can make the agent act in time.
    const agent = await host.startAgent(policy, { resync: "10m" });
    assert.doesNotMatch(agent.log, /no process events/, "the agent listens to the kernel's process events");
    const want = { keepalive: 1, idle: 9, interval: 3, count: 4 };

    // The rule's process starts beside the sleeper: watched by pid, its first connection changed within moments.
    let from = agent.mark();
    const inShared = KaAgent.inCgroup(t, shared, exe, 1);
    await agent.waitLog(new RegExp(`^rule by-name, watched \\(1 process in ${esc(shared.path)}\\)`, "m"), from, 5000);
    const f = await inShared.first();
    assert.ok(f.covered_ms >= 0 && f.covered_ms <= 3000, `covered after ${f.covered_ms} ms (resync 10 min)`);
    assert.deepEqual(ka(f), want, "the first connection of a process that started in a cgroup that existed");

    // The rule's process alone in a cgroup: enforced there. Then a process of no rule execs in it: the
    // enforcement goes at once (it would give the newcomer the rule's settings), and the rule's process is watched.
    from = agent.mark();
    const inAlone = KaAgent.inCgroup(t, alone, exe, 0);
    await agent.waitLog(new RegExp(`^enforcing rule by-name on ${esc(alone.path)}`, "m"), from, 5000);
    await inAlone.first();
    from = agent.mark();
    const intruder = new Process(alone.spawn(["sleep", "600"]), `sleep in ${alone.path}`);
    t.after(() => intruder.kill());
    await agent.waitLog(
      new RegExp(`^removed the enforcement of rule by-name on ${esc(alone.path)} \\(`, "m"),
      from,
      5000,
    );
    const status = host.status();
    assert.deepEqual(status.rules[0]?.targets, [], "no cgroup is enforced: both hold a process of no rule");
    assert.deepEqual(
      status.rules[0]?.watched.map((w) => w.cgroup).sort(),
      [shared.path, alone.path].sort(),
      "the rule's two processes are watched by pid",
    );

    // A process of no rule moved, not started, into a cgroup that the rule enforces: no exec for the process
    // events to tell, but the cgroup_attach_task tracepoint does, and the enforcement goes at once too.
    const moved = top.child("c").child("moved");
    const parking = top.child("d").child("parking");
    from = agent.mark();
    const inMoved = KaAgent.inCgroup(t, moved, exe, 0);
    await agent.waitLog(new RegExp(`^enforcing rule by-name on ${esc(moved.path)}`, "m"), from, 5000);
    await inMoved.first();
    const mover = new Process(parking.spawn(["sleep", "600"]), `sleep in ${parking.path}`);
    t.after(() => mover.kill());
    await until("the sleeper in its cgroup", () => parking.pids().includes(mover.pid));
    await sleep(500); // its start, heard of and found to change nothing
    from = agent.mark();
    writeFileSync(join(moved.dir, "cgroup.procs"), String(mover.pid));
    await agent.waitLog(
      new RegExp(`^removed the enforcement of rule by-name on ${esc(moved.path)} \\(`, "m"),
      from,
      5000,
    );
    // The pass's summary comes after what it did: waited for, not read at once (CI under load saw it missing).
    await agent.waitLog(/^reconciled \(a process moved to another cgroup\)/m, from, 5000);
    await agent.stop();
  });
});
