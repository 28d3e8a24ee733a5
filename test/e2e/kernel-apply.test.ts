/**
 * The kernel path of a bulk keepalive change (src/enforce/live/kernel-apply.ts, the TCP iterator program of
 * src/bpf/bulk-keepalive.ts) against the pidfd path (`tcpka enable --json`, src/enforce/live/batch.ts), on twin
 * python holders (test/fixtures/enable/holder.py) with the same kinds of sockets, each in a network namespace of
 * the test's own: keepalive off, on with the namespace's defaults, on with the program's own idle / interval /
 * count (stricter and looser than asked), a user timeout below and above the one asked for, IPv6, listeners.
 * Both paths must give every socket the same outcome and the same settings, as getsockopt inside the holders
 * reads them. Also: a target that is not there is gone, a socket not targeted is untouched, a socket in another
 * namespace (or in the test's own) is found where it is and only there, and one read of the walk changes at most
 * `perRead` sockets.
 */
import assert from "node:assert/strict";
import { closeSync, constants, openSync, readFileSync, rmSync } from "node:fs";
import { after, test } from "node:test";
import type { Outcome, PlanSpec } from "../../src/enforce/live/batch.js";
import { applyInKernel, KernelApply, type KernelApplyOptions } from "../../src/enforce/live/kernel-apply.js";
import { needs, python3 } from "../helpers/env.js";
import { type Reported, report, ssTimers, UNTOUCHED, WANT, WANT_FLAGS } from "../helpers/keepalive.js";
import { Netns } from "../helpers/netns.js";
import { fixture, TCPKA } from "../helpers/paths.js";
import { type Process, start } from "../helpers/processes.js";
import type { Scope } from "../helpers/scope.js";

after(() => Netns.destroyAll());

const NEEDS = { root: true, tools: ["ip", "python3"] };
const HOLDER = fixture("enable/holder.py");

/** Every kind of socket the rule tells apart (7 s / 3 s / 4, 20 s asked for). */
const GROUPS = [
  "plain=2", // keepalive off, the namespace's defaults
  "kaon=2,ka=1", // on, 7200 s / 75 s / 9
  "tight=2,ka=1,idle=3", // a stricter idle, a looser pair
  "strong=2,ka=1,idle=3,interval=2,count=2", // stricter in everything
  "ownpair=2,ka=1,idle=1,interval=1,count=10", // 11 s: its own pair detects sooner than 7 + 3 × 4
  "reverse=2,ka=1,idle=100,interval=1,count=50", // 150 s: the asked pair, taken together
  "offidle=2,idle=5", // keepalive off with an idle of its own, stricter than asked
  "utlow=2,ka=1,ut=5000", // a user timeout below the one asked for
  "uthigh=2,ut=60000", // above it
  "six=2,family=6", // IPv6
];

interface PySocket extends Reported {
  label: string;
  inode: number;
  user_timeout: number;
}

async function holder(ns: Netns | undefined, scope: Scope, groups: readonly string[]): Promise<Process> {
  const argv = [python3(), HOLDER, ...groups];
  const p = ns ? ns.spawn(argv) : start(scope, argv);
  assert.equal(await p.line(), "ready");
  return p;
}

async function sockets(p: Process): Promise<PySocket[]> {
  return (await report<PySocket>(p)).sockets;
}

function state(s: PySocket) {
  return {
    keepalive: s.keepalive,
    idle: s.idle,
    interval: s.interval,
    count: s.count,
    user_timeout: s.user_timeout,
  };
}

/** An outcome as both paths can say it: the result, and the changes in one order. */
function comparable(o: { result: string; changes: readonly { option: string; from: number; to: number }[] }) {
  const changes = o.changes.map((c) => `${c.option} ${c.from}→${c.to}`).sort();
  return { result: o.result, changes };
}

function netnsFd(ns: Netns): number {
  return openSync(`/run/netns/${ns.name}`, constants.O_RDONLY);
}

/** applyInKernel over a list of {inode, netnsFd}: its outcomes by inode. */
async function applyList(
  list: readonly { inode: number; netnsFd?: number }[],
  plan: PlanSpec,
  opts: KernelApplyOptions,
): Promise<Map<number, Outcome>> {
  const outcomes = await applyInKernel(
    { inodes: list.map((t) => t.inode), netnsFds: list.map((t) => t.netnsFd) },
    plan,
    opts,
  );
  assert.equal(outcomes.length, list.length, "an outcome for every target");
  return new Map(list.map((t, i) => [t.inode, outcomes[i] as Outcome]));
}

async function kernel(
  p: Process,
  ns: Netns,
  plan: PlanSpec,
  dryRun: boolean,
  which: (s: PySocket) => boolean = () => true,
): Promise<Map<number, Outcome>> {
  const fd = netnsFd(ns);
  try {
    const targets = (await sockets(p)).filter(which).map((s) => ({ inode: s.inode, netnsFd: fd }));
    return await applyList(targets, plan, { dryRun, perRead: 64 });
  } finally {
    closeSync(fd);
  }
}

const CASES: { name: string; argv: string[]; plan: PlanSpec; dryRun: boolean }[] = [
  {
    name: "strengthen",
    argv: ["enable", ...WANT_FLAGS, "--user-timeout", "20s"],
    plan: { disable: false, settings: { idle: 7, interval: 3, count: 4, userTimeout: 20_000 }, mode: "strengthen" },
    dryRun: false,
  },
  {
    name: "force",
    argv: ["enable", ...WANT_FLAGS, "--user-timeout", "20s", "--force"],
    plan: { disable: false, settings: { idle: 7, interval: 3, count: 4, userTimeout: 20_000 }, mode: "force" },
    dryRun: false,
  },
  {
    name: "strengthen, no user timeout asked",
    argv: ["enable", ...WANT_FLAGS],
    plan: { disable: false, settings: { idle: 7, interval: 3, count: 4 }, mode: "strengthen" },
    dryRun: false,
  },
  { name: "disable", argv: ["disable"], plan: { disable: true, settings: {}, mode: "strengthen" }, dryRun: false },
  {
    name: "dry run",
    argv: ["enable", ...WANT_FLAGS, "--user-timeout", "20s", "--dry-run"],
    plan: { disable: false, settings: { idle: 7, interval: 3, count: 4, userTimeout: 20_000 }, mode: "strengthen" },
    dryRun: true,
  },
];

for (const c of CASES) {
  test(`kernel path = pidfd path: ${c.name}`, async (t) => {
    if (!needs(t, NEEDS)) return;
    assert.ok(KernelApply.possible(), "this kernel (5.15+, BTF) and root can take the kernel path");
    const ns = Netns.create(t);
    const viaPidfd = await holder(ns, t, GROUPS);
    const viaKernel = await holder(ns, t, GROUPS);
    const viaCommand = await holder(ns, t, GROUPS); // tcpka enable --via bpf: the kernel path as the command runs it
    const before = await sockets(viaKernel);
    assert.equal(before.length, 2 * 2 * GROUPS.length + 2, "both ends of every connection and two listeners");

    const run = (p: Process, via: string) => {
      const r = ns.tcpka([...c.argv, "--pid", String(p.pid), "--via", via, "--json"]);
      assert.equal(r.status, 0, r.stderr);
      const json = JSON.parse(r.stdout) as { sockets: { inode: number; result: string; changes: [] }[] };
      return new Map(json.sockets.map((s) => [s.inode, s]));
    };
    const pidfd = run(viaPidfd, "pidfd");
    const command = run(viaCommand, "bpf");
    const outcomes = await kernel(viaKernel, ns, c.plan, c.dryRun);

    const a = await sockets(viaPidfd);
    const b = await sockets(viaKernel);
    const d = await sockets(viaCommand);
    assert.equal(a.length, b.length);
    assert.deepEqual(d.map(state), b.map(state), "tcpka enable --via bpf leaves what applyInKernel leaves");
    for (const [i, x] of d.entries()) {
      const y = command.get(x.inode);
      const z = outcomes.get((b[i] as PySocket).inode);
      assert.ok(y && z, `${x.label} ${x.role} #${i}: reported by the command`);
      assert.deepEqual(comparable(y), comparable(z), `${x.label} ${x.role} #${i}: the command's outcome`);
    }
    for (const [i, x] of a.entries()) {
      const y = b[i] as PySocket;
      const what = `${x.label} ${x.role} #${i}`;
      assert.deepEqual([y.label, y.role], [x.label, x.role], "the twins hold the same sockets in the same order");
      assert.deepEqual(state(y), state(x), `${what}: the same settings, as getsockopt inside reads them`);
      const viaK = outcomes.get(y.inode);
      const viaP = pidfd.get(x.inode);
      assert.ok(viaK && viaP, `${what}: both paths report it`);
      assert.deepEqual(comparable(viaK), comparable(viaP), `${what}: the same outcome`);
      if (viaK.result !== "gone" && viaK.result !== "failed") {
        const was = before[i] as PySocket;
        assert.deepEqual(
          { ...viaK.before, keepalive: viaK.before.keepalive ? 1 : 0 },
          {
            keepalive: was.keepalive,
            idle: was.idle,
            interval: was.interval,
            count: was.count,
            userTimeout: was.user_timeout,
          },
          `${what}: what the kernel read is what getsockopt read before`,
        );
      }
    }
    if (c.dryRun) assert.deepEqual(b, before, "a dry run changes nothing");
    else assert.notDeepEqual(b.map(state), before.map(state), "something changed");
  });
}

test("only the targets change, where they are: another namespace, tcpka's own, gone ones", async (t) => {
  if (!needs(t, NEEDS)) return;
  const [one, two, three] = [Netns.create(t), Netns.create(t), Netns.create(t)];
  const p1 = await holder(one, t, ["plain=4"]);
  const p2 = await holder(two, t, ["plain=2"]);
  const p3 = await holder(three, t, ["plain=1"]);
  const p0 = await holder(undefined, t, ["plain=1"]); // in the test's own namespace
  const [s1, s2, s3, s0] = [await sockets(p1), await sockets(p2), await sockets(p3), await sockets(p0)];
  const targeted = s1.filter((s) => s.role === "client");
  const elsewhere = s3.find((s) => s.role === "client") as PySocket;
  const fd1 = netnsFd(one);
  const fd2 = netnsFd(two);
  let out: Map<number, Outcome>;
  try {
    out = await applyList(
      [
        ...targeted.map((s) => ({ inode: s.inode, netnsFd: fd1 })),
        ...s2.map((s) => ({ inode: s.inode, netnsFd: fd2 })),
        ...s0.map((s) => ({ inode: s.inode })),
        { inode: elsewhere.inode, netnsFd: fd2 }, // a socket of namespace three, which no walk covers
        { inode: 2 ** 40 + 7, netnsFd: fd1 }, // no such socket
      ],
      { disable: false, settings: { idle: 7, interval: 3, count: 4 }, mode: "strengthen" },
      { dryRun: false, perRead: 64 },
    );
  } finally {
    closeSync(fd1);
    closeSync(fd2);
  }
  assert.equal(out.get(2 ** 40 + 7)?.result, "gone");
  assert.equal(out.get(elsewhere.inode)?.result, "gone", "a walk sees its own namespace only");
  for (const s of [...targeted, ...s2, ...s0])
    assert.equal(out.get(s.inode)?.result, "changed", `${s.role} ${s.inode}`);
  assert.equal(out.size, targeted.length + s2.length + s0.length + 2);

  const want = { ...WANT, user_timeout: 0 };
  const untouched = { ...UNTOUCHED, user_timeout: 0 };
  for (const s of await sockets(p1)) {
    assert.deepEqual(state(s), s.role === "client" ? want : untouched, `namespace one: ${s.role} ${s.inode}`);
  }
  for (const s of await sockets(p2)) assert.deepEqual(state(s), want, `namespace two: ${s.role}`);
  for (const s of await sockets(p3)) assert.deepEqual(state(s), untouched, `namespace three: ${s.role}`);
  for (const s of await sockets(p0)) assert.equal(s.keepalive, 1, `tcpka's own namespace: ${s.role}`);
});

test("one read of the walk changes at most perRead sockets, and pace sees each step", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = await holder(ns, t, ["plain=60"]);
  const all = await sockets(p);
  assert.equal(all.length, 121);
  const perRead = 8;
  const steps: { said: number; seen: number }[] = [];
  const fd = netnsFd(ns);
  let out: Map<number, Outcome>;
  try {
    out = await applyList(
      all.map((s) => ({ inode: s.inode, netnsFd: fd })),
      { disable: false, settings: { idle: 7, interval: 3, count: 4 }, mode: "strengthen" },
      {
        dryRun: false,
        perRead,
        // Between two reads the walk stands still: what the holder reads now is what the reads so far did.
        pace: async (said) => {
          const seen = (await sockets(p)).filter((s) => s.keepalive === 1).length;
          steps.push({ said, seen });
        },
      },
    );
  } finally {
    closeSync(fd);
  }
  assert.ok(steps.length >= Math.floor(all.length / perRead), `paced ${steps.length} times: ${JSON.stringify(steps)}`);
  let last = 0;
  for (const s of steps) {
    assert.equal(s.seen, s.said, `pace is told what the holder sees: ${JSON.stringify(steps)}`);
    assert.ok(s.seen - last <= perRead, `at most ${perRead} changed per read: ${JSON.stringify(steps)}`);
    last = s.seen;
  }
  assert.equal([...out.values()].filter((o) => o.result === "changed").length, all.length);
  for (const s of await sockets(p)) assert.deepEqual(state(s), { ...WANT, user_timeout: 0 });
});

/** TcpExtTCPKeepAlive of a namespace: the keepalive probes sent there (tcp_keepalive_timer). */
function probesSent(ns: Netns): number {
  const lines = ns
    .run(["cat", "/proc/net/netstat"])
    .split("\n")
    .filter((l) => l.startsWith("TcpExt:"));
  const [names, values] = lines.map((l) => l.split(/\s+/));
  const at = names?.indexOf("TCPKeepAlive") ?? -1;
  assert.ok(at > 0 && values, "TcpExt has TCPKeepAlive");
  return Number(values[at]);
}

test("keepalive off: the options before SO_KEEPALIVE, so no probe goes earlier than the new idle", async (t) => {
  if (!needs(t, { ...NEEDS, tools: [...NEEDS.tools, "ss"] })) return;
  const ns = Netns.create(t);
  const p = await holder(ns, t, ["plain=20"]);
  const all = await sockets(p);
  await new Promise((r) => setTimeout(r, 1500)); // idle for longer than the 1 s asked for
  const sent = probesSent(ns);
  const fd = netnsFd(ns);
  try {
    await applyList(
      all.map((s) => ({ inode: s.inode, netnsFd: fd })),
      { disable: false, settings: { idle: 1, interval: 30, count: 9 }, mode: "strengthen" },
      { dryRun: false, perRead: 64 },
    );
  } finally {
    closeSync(fd);
  }
  const timers = ssTimers(ns.run(["ss", "-tanoe"]));
  // Had SO_KEEPALIVE come first (tcp_set_keepalive arms 7200 s), TCP_KEEPIDLE 1 on a socket idle for 1.5 s would
  // have re-armed the timer to fire at once (tcp_sock_set_keepidle_locked): 40 probes now, timers at ~30 s.
  assert.equal(probesSent(ns) - sent, 0, "no probe yet");
  for (const s of all.filter((x) => x.role !== "listen")) {
    const timer = timers.get(s.inode);
    assert.equal(timer?.kind, "keepalive", `${s.role} ${s.inode}`);
    assert.ok(
      timer && timer.fromMs > 500 && timer.fromMs <= 1000,
      `${s.role}: due in ${timer?.fromMs} ms, a full idle`,
    );
  }
});

test("a bpf_setsockopt that fails: failed with its errno, nothing after it made, keepalive left off", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = await holder(ns, t, ["plain=1"]);
  const client = (await sockets(p)).find((s) => s.role === "client") as PySocket;
  const fd = netnsFd(ns);
  let out: Map<number, Outcome>;
  try {
    // TCP_KEEPCNT 200 is beyond the kernel's 127 (do_tcp_setsockopt: EINVAL); the command line never asks it.
    out = await applyList(
      [{ inode: client.inode, netnsFd: fd }],
      { disable: false, settings: { idle: 7, count: 200 }, mode: "force" },
      { dryRun: false, perRead: 64 },
    );
  } finally {
    closeSync(fd);
  }
  const o = out.get(client.inode);
  assert.equal(o?.result, "failed");
  assert.equal(o.error.errnoName, "EINVAL");
  // TCP_KEEPCNT comes before TCP_KEEPIDLE and SO_KEEPALIVE (APPLY_ORDER): it fails, and nothing after it is made.
  const notMade = ["count 9→200", "idle 7200→7", "keepalive 0→1"];
  assert.deepEqual(comparable(o), { result: "failed", changes: notMade }, "not made");
  const now = (await sockets(p)).find((s) => s.inode === client.inode) as PySocket;
  assert.deepEqual(state(now), { ...UNTOUCHED, user_timeout: 0 }, "nothing made; SO_KEEPALIVE never set");
});

test("as root, tcpka enable changes sockets in the kernel: no pidfd_getfd; --via pidfd duplicates them", async (t) => {
  if (!needs(t, { ...NEEDS, tools: [...NEEDS.tools, "strace"] })) return;
  const ns = Netns.create(t);
  for (const via of [undefined, "pidfd"] as const) {
    const p = await holder(ns, t, ["plain=3"]);
    const trace = `/tmp/tcpka-kernel-apply-${process.pid}-${via ?? "auto"}.strace`;
    t.after(() => rmSync(trace, { force: true }));
    const r = ns.exec([
      "strace",
      "-f",
      "-qq",
      "-e",
      "trace=pidfd_getfd",
      "-e",
      "signal=none",
      "-o",
      trace,
      process.execPath,
      TCPKA,
      "enable",
      ...WANT_FLAGS,
      "--pid",
      String(p.pid),
      ...(via ? ["--via", via] : []),
    ]);
    assert.equal(r.status, 0, r.stderr);
    const calls = readFileSync(trace, "utf8")
      .split("\n")
      .filter((l) => l.includes("pidfd_getfd(")).length;
    if (via === "pidfd") assert.ok(calls >= 6, `--via pidfd: ${calls} pidfd_getfd calls`);
    else assert.equal(calls, 0, "the kernel path duplicates no socket");
    for (const s of await sockets(p)) assert.equal(s.keepalive, 1, `${via ?? "auto"}: ${s.role} has keepalive on`);
  }
});

test("a filter picks the same sockets on both ways: --no-keepalive, --listening", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const groups = ["plain=2", "kaon=2,ka=1", "six=2,family=6"];
  const twins = { bpf: await holder(ns, t, groups), pidfd: await holder(ns, t, groups) };
  const before = await sockets(twins.bpf);
  for (const filter of [["--no-keepalive"], ["--listening"]]) {
    const after: PySocket[][] = [];
    for (const [via, p] of Object.entries(twins)) {
      const r = ns.tcpka(["enable", ...WANT_FLAGS, "--pid", String(p.pid), "--via", via, ...filter, "--json"]);
      assert.ok(r.status === 0 || r.status === 1, r.stderr);
      after.push(await sockets(p));
    }
    const [viaBpf, viaPidfd] = after as [PySocket[], PySocket[]];
    assert.deepEqual(viaBpf.map(state), viaPidfd.map(state), `${filter.join(" ")}: the same sockets changed, alike`);
    if (filter[0] === "--no-keepalive") {
      for (const [i, s] of viaBpf.entries()) {
        const was = before[i] as PySocket;
        if (was.keepalive) assert.deepEqual(state(s), state(was), `${s.label} ${s.role}: had keepalive, untouched`);
        else assert.equal(s.keepalive, 1, `${s.label} ${s.role}: had none, has it now`);
      }
    }
  }
});
