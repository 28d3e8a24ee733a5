/**
 * `tcpka enforce` keeps its rule when a program changes its keepalive options after connecting (issue 15): the
 * cgroup setsockopt program of src/bpf/sockopt-hook.ts beside the sock_ops program, on the real kernel, seen from
 * inside python3 agents (test/fixtures/enforce_agent.py) that connect, accept and listen in a test cgroup and make
 * setsockopt calls there, or outside it. Each call's errno is compared with the same call by an agent outside the
 * cgroup: tcpka may change what a valid call sets, never what any call returns.
 *
 * Shown here: a looser TCP_KEEPIDLE after connecting ends with the requested one under strengthen and under force,
 * a stricter one stays under strengthen and not under force; SO_KEEPALIVE 0 after connecting leaves keepalive on;
 * a looser interval goes back to the requested pair; the accepted end and the listener alike; TCP_NODELAY,
 * SO_RCVBUF and invalid keepalive values (0, 32768, 128 probes, a negative user timeout) return what they return
 * outside; a process outside the cgroup is untouched; replacing the settings keeps the sockets set up before it
 * under the new rule; --list says the hook is there and counts the connections set up and the calls kept to the
 * rule; --remove leaves no pin.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { pinName } from "../../src/enforce/cgroup.js";
import { TestCgroup } from "../helpers/cgroup.js";
import {
  Agent,
  afterEnforceTests,
  connectPair,
  enforce,
  enforcedOn,
  guard,
  ka,
  PIN_ROOT,
  remove,
} from "../helpers/enforce.js";
import { needs } from "../helpers/env.js";
import { UNTOUCHED, WANT, WANT_FLAGS } from "../helpers/keepalive.js";
import { Netns } from "../helpers/netns.js";
import { TCPKA } from "../helpers/paths.js";
import { tempDir } from "../helpers/scope.js";

afterEnforceTests();

const NEEDS = { root: true, tools: ["ip", "python3"] };
const HOST = "127.0.0.1";

/** A cgroup with an enforcement, a server and a client agent in it, an outsider, and one connection of each. */
async function lab(t: Parameters<typeof needs>[0], flags: readonly string[]) {
  const ns = Netns.create(t);
  const cg = TestCgroup.create(t);
  const out = enforce(cg, flags);
  const server = await Agent.start(t, ns, cg);
  const client = await Agent.start(t, ns, cg);
  const outsider = await Agent.start(t, ns);
  const listener = await server.listen(HOST);
  const [c, a] = await connectPair(client, server, listener, HOST);
  const outsideListener = await outsider.listen(HOST);
  const [o] = await connectPair(outsider, outsider, outsideListener, HOST);
  return { ns, cg, out, server, client, outsider, listener, c, a, o };
}

test("strengthen: a looser idle, keepalive off or a looser interval after connecting end with the request", async (t) => {
  if (!needs(t, NEEDS)) return;
  const { cg, out, server, client, outsider, listener, c, a, o } = await lab(t, WANT_FLAGS);
  assert.doesNotMatch(out, /^warning: keepalive options that a program sets itself/m, "the kernel has the hook");
  assert.equal(enforcedOn(cg)?.setsockopt_hook, true, "--list --json: the hook is attached");
  assert.deepEqual(ka(c.opts), { ...WANT, user_timeout_ms: 0 }, "set up at connect");

  // The client, after connecting: idle 7200 s, then keepalive off, then interval 75 s.
  let r = await client.calls(c, [["idle", 7200]]);
  assert.deepEqual(r.errnos, [0]);
  assert.equal(r.opts.idle, WANT.idle, "a looser idle is lowered to the request");
  r = await client.calls(c, [["keepalive", 0]]);
  assert.deepEqual([r.errnos, r.opts.keepalive], [[0], 1], "SO_KEEPALIVE 0 leaves keepalive on");
  r = await client.calls(c, [["interval", 75]]);
  assert.deepEqual([r.opts.interval, r.opts.count], [WANT.interval, WANT.count], "the request's pair detects sooner");
  // Stricter values are the program's to keep: idle 2 s, and a pair that detects sooner (1 s × 5 = 5 s < 3 × 4).
  r = await client.calls(c, [
    ["idle", 2],
    ["interval", 1],
    ["count", 5],
  ]);
  assert.deepEqual(r.errnos, [0, 0, 0]);
  assert.deepEqual([r.opts.idle, r.opts.interval, r.opts.count], [2, 1, 5], "stricter values stay the program's");
  // A count that makes the program's pair detect later than the request's: the request's pair, both halves.
  r = await client.calls(c, [["count", 100]]);
  assert.deepEqual([r.opts.interval, r.opts.count], [WANT.interval, WANT.count], "the pair from one side");

  // The accepted end and the listener alike.
  r = await server.calls(a, [
    ["idle", 600],
    ["keepalive", 0],
  ]);
  assert.deepEqual([r.errnos, r.opts.keepalive, r.opts.idle], [[0, 0], 1, WANT.idle], "the accepted end");
  r = await server.calls(listener, [["idle", 600]]);
  assert.equal(r.opts.idle, WANT.idle, "the listener");

  // Outside the cgroup, the same calls do what they say.
  r = await outsider.calls(o, [
    ["keepalive", 1],
    ["idle", 600],
    ["keepalive", 0],
  ]);
  assert.deepEqual([r.opts.keepalive, r.opts.idle], [0, 600], "a process outside the cgroup is untouched");
  // --list counts what it did: the listener and both ends set up; 7 of the calls above had their value replaced.
  const listed = enforcedOn(cg);
  assert.deepEqual([listed?.connections_set_up, listed?.calls_kept_to_rule], [3, 7], "the counters");
  remove(cg);
  assert.equal(existsSync(join(PIN_ROOT, pinName(cg.path))), false, "--remove leaves no pin, the hook's included");
});

test("--force: the requested values whatever the program sets later, stricter ones too", async (t) => {
  if (!needs(t, NEEDS)) return;
  const { client, c } = await lab(t, [...WANT_FLAGS, "--user-timeout", "20s", "--force"]);
  const r = await client.calls(c, [
    ["idle", 7200],
    ["interval", 1],
    ["count", 100],
    ["keepalive", 0],
    ["user_timeout_ms", 0],
  ]);
  assert.deepEqual(r.errnos, [0, 0, 0, 0, 0]);
  assert.deepEqual(ka(r.opts), { ...WANT, user_timeout_ms: 20_000 });
  const s = await client.calls(c, [["idle", 2]]);
  assert.equal(s.opts.idle, WANT.idle, "a stricter idle is set to the requested one too");
});

test("other options and invalid keepalive values return what they return outside the cgroup", async (t) => {
  if (!needs(t, NEEDS)) return;
  for (const mode of [[], ["--force"]]) {
    await t.test(mode.length ? "force" : "strengthen", async (t) => {
      const { client, outsider, c, o } = await lab(t, [...WANT_FLAGS, "--user-timeout", "20s", ...mode]);
      const calls: [string, number][] = [
        ["nodelay", 1],
        ["rcvbuf", 65536],
        ["idle", 0],
        ["idle", 32768],
        ["interval", 0],
        ["interval", 32768],
        ["count", 0],
        ["count", 128],
        ["user_timeout_ms", -1],
        ["nodelay", 0],
      ];
      const inside = await client.calls(c, calls);
      const outside = await outsider.calls(o, calls);
      assert.deepEqual(inside.errnos, outside.errnos, "every call returns what it returns without tcpka");
      assert.ok(inside.errnos.filter((e) => e !== 0).length >= 7, `the invalid values fail: ${inside.errnos}`);
      assert.equal(inside.opts.nodelay, 0, "TCP_NODELAY as the program set it");
      assert.deepEqual(ka(inside.opts), { ...WANT, user_timeout_ms: 20_000 }, "the keepalive settings stay");
    });
  }
});

test("replacing the settings keeps the sockets set up before under the new rule", async (t) => {
  if (!needs(t, NEEDS)) return;
  const { cg, client, c } = await lab(t, WANT_FLAGS);
  const out = enforce(cg, ["--idle", "5s", "--interval", "2s", "--count", "3"]);
  assert.match(out, /^replaced the settings/);
  const r = await client.calls(c, [["idle", 7200]]);
  assert.equal(r.opts.idle, 5, "the new request, on a socket set up under the old one");
  assert.notDeepEqual(ka(r.opts), { ...UNTOUCHED, user_timeout_ms: 0 });
});

test("--existing: connections open before enforce are changed in the kernel and kept to the rule later", async (t) => {
  if (!needs(t, { ...NEEDS, tools: [...NEEDS.tools, "strace"] })) return;
  const ns = Netns.create(t);
  const cg = TestCgroup.create(t);
  const server = await Agent.start(t, ns, cg);
  const client = await Agent.start(t, ns, cg);
  const listener = await server.listen(HOST);
  const [c, a] = await connectPair(client, server, listener, HOST);
  assert.deepEqual(ka(c.opts), { ...UNTOUCHED, user_timeout_ms: 0 }, "before: nothing set");
  // Through the kernel path of a bulk change: no socket duplicated into tcpka (strace sees no pidfd_getfd).
  guard(cg);
  const dir = tempDir(t);
  const trace = join(dir, "strace");
  const argv = [process.execPath, TCPKA, "enforce", "--cgroup", cg.path, ...WANT_FLAGS, "--existing"];
  const r = spawnSync("strace", ["-f", "-qq", "-e", "trace=pidfd_getfd", "-e", "signal=none", "-o", trace, ...argv], {
    encoding: "utf8",
    timeout: 60_000,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^ {2}changed +[3-9]\d*\b/m, r.stdout);
  const duplicated = readFileSync(trace, "utf8")
    .split("\n")
    .filter((l) => l.includes("pidfd_getfd(")).length;
  assert.equal(duplicated, 0, "no pidfd_getfd");
  assert.deepEqual(ka(await client.get(c)), { ...WANT, user_timeout_ms: 0 }, "changed by --existing");
  for (const [agent, s] of [
    [client, c],
    [server, a],
  ] as const) {
    const r = await agent.calls(s, [
      ["idle", 7200],
      ["keepalive", 0],
    ]);
    assert.deepEqual([r.opts.keepalive, r.opts.idle], [1, WANT.idle], "the program's later calls keep the rule");
  }
});

test("with --only, later calls are kept to the rule on the chosen connections only", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const cg = TestCgroup.create(t);
  const server = await Agent.start(t, ns, cg);
  const client = await Agent.start(t, ns, cg);
  const chosen = await server.listen(HOST);
  const other = await server.listen(HOST);
  enforce(cg, [...WANT_FLAGS, "--only", `:${chosen.port}`]);
  const [c] = await connectPair(client, server, chosen, HOST);
  const [d] = await connectPair(client, server, other, HOST);
  assert.deepEqual([ka(c.opts).keepalive, ka(d.opts).keepalive], [1, 0], "the sock_ops program chose one");
  const kept = await client.calls(c, [["idle", 7200]]);
  assert.equal(kept.opts.idle, WANT.idle, "the chosen connection: the request");
  const left = await client.calls(d, [
    ["keepalive", 1],
    ["idle", 7200],
    ["keepalive", 0],
  ]);
  assert.deepEqual([left.opts.keepalive, left.opts.idle], [0, 7200], "the other one: what its program set");
});
