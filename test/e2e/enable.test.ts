/**
 * `tcpka enable` and `tcpka disable` on the live sockets of a python process (test/fixtures/enable/holder.py),
 * against the real kernel, each test in a network namespace of its own. What tcpka did is read back from inside
 * the process: it prints what getsockopt says about every socket it holds. Also: the kernel's keepalive timers
 * (ss -tanoe), the summary's counts, strengthen against --force, --dry-run, a process in another network
 * namespace than tcpka's, an unprivileged user, bad usage, --comm, a socket shared after fork, --pid of a thread.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readlinkSync, renameSync } from "node:fs";
import { after, test } from "node:test";
import { compileC } from "../helpers/compile.js";
import { summary } from "../helpers/enable.js";
import { needs } from "../helpers/env.js";
import {
  assertAll,
  type Reported,
  report,
  settings,
  ssTimers,
  UNTOUCHED,
  WANT,
  WANT_FLAGS,
} from "../helpers/keepalive.js";
import { Netns } from "../helpers/netns.js";
import { fixture, TCPKA } from "../helpers/paths.js";
import { Process } from "../helpers/processes.js";
import { tempDir } from "../helpers/scope.js";
import { assertOneLineErrorOnly } from "../helpers/tcpka.js";
import { NOBODY } from "../helpers/users.js";

after(() => Netns.destroyAll());

const NEEDS = { root: true, tools: ["ip", "python3"] };
const HOLDER = fixture("enable/holder.py");

interface PySocket extends Reported {
  label: string;
  fd: number;
  inode: number;
  local: [string, number];
  peer: [string, number] | null;
}

async function holder(ns: Netns, groups: readonly string[]): Promise<Process> {
  const p = ns.spawn(["python3", HOLDER, ...groups]);
  assert.equal(await p.line(), "ready");
  return p;
}

function pyReport(p: Process): Promise<PySocket[]> {
  return report<PySocket>(p).then((r) => r.sockets);
}

function find(sockets: readonly PySocket[], label: string, role: PySocket["role"]): PySocket {
  const s = sockets.find((x) => x.label === label && x.role === role);
  assert.ok(s, `${label} ${role}`);
  return s;
}

test("enable: 200 idle connections of a python process get exactly the settings asked for", async (t) => {
  if (!needs(t, { ...NEEDS, tools: [...NEEDS.tools, "ss"] })) return;
  const ns = Netns.create(t);
  const p = await holder(ns, ["idle=200"]);
  const before = await pyReport(p);
  assert.equal(before.length, 401, "200 connections, both ends, and the listener");
  assertAll(before, UNTOUCHED, "before");
  const timersBefore = ssTimers(ns.run(["ss", "-tanoe"]));
  for (const s of before) assert.equal(timersBefore.get(s.inode), null, `no timer before on fd ${s.fd}`);

  const r = ns.tcpka(["enable", "--pid", String(p.pid), ...WANT_FLAGS]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "");

  const now = await pyReport(p);
  assertAll(now, WANT, "after enable, as the process itself reads them");
  assert.deepEqual(
    now.map((s) => s.inode),
    before.map((s) => s.inode),
    "the same sockets, still held",
  );

  // One line per socket, each naming its fd and the change.
  const lines = r.stdout.split("\n").filter((l) => l.startsWith(`python3[${p.pid}] fd `));
  assert.equal(lines.length, 401);
  for (const l of lines) assert.match(l, / {2}changed {2}interval 75→3s, count 9→4, idle 7200→7s, keepalive on$/);
  const fds = (xs: number[]) => xs.sort((a, b) => a - b);
  assert.deepEqual(fds(lines.map((l) => Number(/ fd (\d+) /.exec(l)![1]))), fds(now.map((s) => s.fd)));

  assert.deepEqual(summary(r.stdout), {
    sockets: 401,
    processes: 1,
    rows: { changed: 401, "already as strong": 0, listening: 1, failed: 0 },
    notes: {
      changed: "keepalive on, 7s / 3s / 4",
      listening: "connections they accept from now on inherit the settings",
    },
    deadPeers: "dead peers are now noticed after at most 19s (before: never)",
  });

  // The kernel runs a keepalive timer on every established one now, due within the new idle time.
  const timers = ssTimers(ns.run(["ss", "-tanoe"]));
  for (const s of now) {
    const timer = timers.get(s.inode);
    if (s.role === "listen") {
      assert.equal(timer, null, "no timer runs on a listener");
      continue;
    }
    assert.ok(timer, `ss shows a timer on fd ${s.fd}`);
    assert.equal(timer.kind, "keepalive", `fd ${s.fd}`);
    assert.ok(timer.fromMs <= WANT.idle * 1000, `fd ${s.fd}: due in ${timer.fromMs} ms`);
  }

  // The listener was changed too: a connection accepted from now on inherits the settings; the new client end,
  // a socket tcpka never saw, has none.
  p.send("connect\n");
  assert.equal(await p.line(), "connected");
  const late = await pyReport(p);
  assert.deepEqual(settings(find(late, "late", "accepted")), WANT, "accepted after enable");
  assert.deepEqual(settings(find(late, "late", "client")), UNTOUCHED, "made after enable");

  // A second run finds nothing left to do.
  const again = ns.tcpka(["enable", "--pid", String(p.pid), ...WANT_FLAGS, "--quiet"]);
  assert.equal(again.status, 0, again.stderr);
  const s2 = summary(again.stdout);
  assert.deepEqual([s2.sockets, s2.rows.changed, s2.rows["already as strong"]], [403, 1, 402], again.stdout);
  assert.equal(again.stdout.split("\n")[0], "403 TCP sockets in 1 process", "--quiet prints the summary only");
});

test("--for azure-lb: the preset's settings on every socket, a flag beside it replacing its part", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = await holder(ns, ["idle=3"]);
  let r = ns.tcpka(["enable", "--pid", String(p.pid), "--for", "azure-lb"]);
  assert.equal(r.status, 0, r.stderr);
  // Azure's 4 minutes: idle 120 s, then five probes 24 s apart, all before the load balancer forgets the flow.
  assertAll(await pyReport(p), { keepalive: 1, idle: 120, interval: 24, count: 5 }, "--for azure-lb");
  assert.match(r.stdout, /dead peers are now noticed after at most 4m\b/);
  r = ns.tcpka(["enable", "--pid", String(p.pid), "--for", "aws-nat", "--count", "3", "--force"]);
  assert.equal(r.status, 0, r.stderr);
  assertAll(await pyReport(p), { keepalive: 1, idle: 175, interval: 35, count: 3 }, "--for aws-nat --count 3");
  r = ns.tcpka(["enable", "--pid", String(p.pid), "--for", "azure"]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^tcpka: --for "azure": not a known path\nhint: one of: aws-nat, aws-nlb, azure-lb,/);
});

test("strengthen keeps what the program made stricter, --force sets exactly, disable turns keepalive off", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = await holder(ns, [
    "tight=1,ka=1,idle=3", // stricter idle than asked
    "loose=1,ka=1,idle=600", // looser
    "strong=1,ka=1,idle=3,interval=2,count=2", // stricter in everything
    "plain=2",
  ]);
  const pid = String(p.pid);

  const r1 = ns.tcpka(["enable", "--pid", pid, ...WANT_FLAGS]);
  assert.equal(r1.status, 0, r1.stderr);
  let s = await pyReport(p);
  assert.deepEqual(settings(find(s, "tight", "client")), { keepalive: 1, idle: 3, interval: 3, count: 4 });
  assert.deepEqual(settings(find(s, "loose", "client")), WANT);
  assert.deepEqual(settings(find(s, "strong", "client")), { keepalive: 1, idle: 3, interval: 2, count: 2 });
  assertAll(
    s.filter((x) => x.label !== "tight" && x.label !== "strong"),
    WANT,
    "strengthen",
  );
  assertAll(
    s.filter((x) => x.role === "accepted"),
    WANT,
    "strengthen",
  );
  assert.match(r1.stdout, new RegExp(`fd ${find(s, "tight", "client").fd} .*changed  interval 75→3s, count 9→4$`, "m"));
  assert.match(r1.stdout, new RegExp(`fd ${find(s, "strong", "client").fd} .*already  on, 3s / 2s / 2$`, "m"));
  assert.deepEqual(summary(r1.stdout).rows, { changed: 10, "already as strong": 1, listening: 1, failed: 0 });
  assert.equal(summary(r1.stdout).deadPeers, "dead peers are now noticed after at most 19s (before: never)");

  const r2 = ns.tcpka(["enable", "--pid", pid, ...WANT_FLAGS, "--force"]);
  assert.equal(r2.status, 0, r2.stderr);
  s = await pyReport(p);
  assertAll(s, WANT, "--force");
  assert.match(r2.stdout, new RegExp(`fd ${find(s, "tight", "client").fd} .*changed  idle 3→7s$`, "m"));
  assert.deepEqual(summary(r2.stdout).rows, { changed: 2, "already as strong": 9, listening: 1, failed: 0 });

  const r3 = ns.tcpka(["disable", "--pid", pid]);
  assert.equal(r3.status, 0, r3.stderr);
  s = await pyReport(p);
  for (const x of s) assert.equal(x.keepalive, 0, `disable: ${x.label} ${x.role} fd ${x.fd}`);
  const d = summary(r3.stdout);
  assert.deepEqual(
    [d.sockets, d.rows, d.notes.changed],
    [11, { changed: 11, "already off": 0, failed: 0 }, "keepalive off"],
  );
  assert.equal(d.deadPeers, null);

  const r4 = ns.tcpka(["disable", "--pid", pid]);
  assert.equal(r4.status, 0, r4.stderr);
  assert.deepEqual(summary(r4.stdout).rows, { changed: 0, "already off": 11, failed: 0 });
});

test("10,000 sockets, enough for a second thread to share the work: each handled once, exactly", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  // 10,000 fds or more start the helper thread (2,000 where the sockets are listed through /proc; see
  // src/enforce/live/session.ts): the same plan, run by two threads, must give every socket what one thread gives it.
  // A minority is stricter than asked, so strengthen has to tell.
  const p = await holder(ns, ["plain=4900", "tight=100,ka=1,idle=3"]);
  const before = await pyReport(p);
  assert.equal(before.length, 10_001);

  const r = ns.tcpka(["enable", "--pid", String(p.pid), ...WANT_FLAGS, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as {
    sockets: { fd: number; inode: number; result: string; changes: { option: string; from: number; to: number }[] }[];
    summary: { changed: number; unchanged: number; failed: number };
  };
  assert.equal(out.sockets.length, 10_001);
  assert.equal(new Set(out.sockets.map((x) => x.inode)).size, 10_001, "each socket once");
  assert.deepEqual(
    out.sockets.map((x) => x.fd),
    [...out.sockets.map((x) => x.fd)].sort((a, b) => a - b),
    "in fd order, whichever thread did what",
  );
  assert.deepEqual([out.summary.changed, out.summary.unchanged, out.summary.failed], [10_001, 0, 0]);

  const now = await pyReport(p);
  const tight = now.filter((x) => x.label === "tight" && x.role === "client");
  assert.equal(tight.length, 100);
  assertAll(tight, { ...WANT, idle: 3 }, "stricter idle kept");
  assertAll(
    now.filter((x) => !(x.label === "tight" && x.role === "client")),
    WANT,
    "everything else",
  );
  const byInode = new Map(out.sockets.map((x) => [x.inode, x]));
  for (const x of tight) {
    assert.deepEqual(
      byInode.get(x.inode)?.changes.map((c) => c.option),
      ["interval", "count"],
      `fd ${x.fd}: the report matches what was done`,
    );
  }
});

test("--dry-run reports what would change and changes nothing", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = await holder(ns, ["plain=3", "tight=1,ka=1,idle=3"]);
  const before = await pyReport(p);

  const r = ns.tcpka(["enable", "--pid", String(p.pid), ...WANT_FLAGS, "--dry-run"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await pyReport(p), before, "nothing changed");
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("python3["));
  assert.equal(lines.length, 9);
  assert.equal(lines.filter((l) => l.includes("  would change  ")).length, 9);
  assert.ok(!r.stdout.includes("  changed"), `nothing says "changed": ${r.stdout}`);
  assert.deepEqual(summary(r.stdout), {
    sockets: 9,
    processes: 1,
    rows: { "would change": 9, "already as strong": 0, listening: 1, failed: 0 },
    notes: {
      "would change": "keepalive on, 7s / 3s / 4",
      listening: "connections they accept from now on inherit the settings",
    },
    deadPeers: "dead peers would be noticed after at most 19s (before: never)",
  });

  const j = ns.tcpka(["enable", "--pid", String(p.pid), ...WANT_FLAGS, "--dry-run", "--json"]);
  assert.equal(j.status, 0, j.stderr);
  const out = JSON.parse(j.stdout) as {
    sockets: { inode: number; result: string; changes: { option: string; from: number; to: number }[] }[];
    summary: { changed: number; dry_run: boolean; dead_peer_after_s: number };
  };
  assert.deepEqual(
    out.sockets.map((x) => x.result),
    Array(9).fill("would change"),
  );
  const tight = out.sockets.find((x) => x.inode === find(before, "tight", "client").inode);
  assert.deepEqual(tight?.changes, [
    { option: "interval", from: 75, to: 3 },
    { option: "count", from: 9, to: 4 },
  ]);
  assert.deepEqual([out.summary.changed, out.summary.dry_run, out.summary.dead_peer_after_s], [9, true, 19]);
  assert.deepEqual(await pyReport(p), before, "nothing changed by --json either");

  const d = ns.tcpka(["disable", "--pid", String(p.pid), "--dry-run"]);
  assert.equal(d.status, 0, d.stderr);
  assert.deepEqual(summary(d.stdout).rows, { "would change": 1, "already off": 8, failed: 0 });
  assert.deepEqual(await pyReport(p), before, "nothing changed by disable --dry-run");
});

test("enable from the host namespace reaches a process in another network namespace", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  // A sysctl of that namespace's own: what its sockets report before, unlike the host's.
  ns.setSysctl("net.ipv4.tcp_keepalive_time", 5555);
  const inside = await holder(ns, ["v4=3", "v6=2,family=6"]);
  const before = await pyReport(inside);
  for (const s of before) assert.equal(s.idle, 5555);
  // And one in the host namespace (on the host's loopback), in the same run.
  const here = new Process(spawn("python3", [HOLDER, "v4=1"], { stdio: ["pipe", "pipe", "pipe"] }), "host holder");
  t.after(() => here.kill());
  assert.equal(await here.line(), "ready");
  const hereBefore = (await report(here)).sockets;

  // tcpka itself runs here, in the namespace of this test process: not the target's.
  assert.notEqual(ns.run(["readlink", "/proc/self/ns/net"]).trim(), readlinkSync("/proc/self/ns/net"));
  const args = ["enable", "--pid", String(inside.pid), "--pid", String(here.pid), ...WANT_FLAGS, "--json"];
  const r = spawnSync(process.execPath, [TCPKA, ...args], { encoding: "utf8", timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  assertAll(await pyReport(inside), WANT, "in the other namespace");
  assertAll((await report(here)).sockets, WANT, "in tcpka's namespace");
  const out = JSON.parse(r.stdout) as {
    sockets: {
      pid: number;
      inode: number;
      state: string;
      local_address: string;
      changes: { option: string; from: number }[];
    }[];
    summary: { changed: number; failed: number };
  };
  assert.deepEqual([out.summary.changed, out.summary.failed], [before.length + hereBefore.length, 0]);
  const byInode = new Map(out.sockets.map((x) => [x.inode, x]));
  for (const s of before) {
    const x = byInode.get(s.inode);
    assert.ok(x, `tcpka found fd ${s.fd} (${s.local[0]})`);
    assert.equal(x.pid, inside.pid);
    assert.equal(x.local_address, s.local[0], "read from that namespace's /proc/PID/net/tcp{,6}");
    assert.equal(x.state, s.role === "listen" ? "LISTEN" : "ESTAB");
    assert.deepEqual(
      x.changes.find((c) => c.option === "idle"),
      { option: "idle", from: 5555, to: 7 },
    );
  }
});

test("an unprivileged user: one line and a hint for a root process, success for its own", async (t) => {
  if (!needs(t, { ...NEEDS, tools: [...NEEDS.tools, "setpriv", "gcc"] })) return;
  const ns = Netns.create(t);
  const rootOwned = await holder(ns, ["plain=2"]);
  const before = await pyReport(rootOwned);
  for (const cmd of ["enable", "disable"]) {
    const r = ns.tcpka([cmd, "--pid", String(rootOwned.pid), ...(cmd === "enable" ? WANT_FLAGS : [])], {
      user: NOBODY,
    });
    assertOneLineErrorOnly(
      r,
      1,
      new RegExp(`^tcpka: cannot reach the sockets of python3\\[${rootOwned.pid}\\]: permission denied$`),
    );
    assert.equal(r.stderr.split("\n")[1], "hint: run as root, or give tcpka CAP_SYS_PTRACE", cmd);
  }
  assert.deepEqual(await pyReport(rootOwned), before, "nothing changed");

  // The same user may, where ptrace is allowed (no Yama here, or ptrace_scope 0). A compiled holder: the python3
  // on PATH may be one that only root can run (a pyenv shim under /root).
  const own = ns.spawn([compileC(tempDir(t, { readable: true }), "enable/holder.c", "holder"), "2"], { user: NOBODY });
  assert.equal(await own.line(), "ready");
  const r = ns.tcpka(["enable", "--pid", String(own.pid), ...WANT_FLAGS], { user: NOBODY });
  assert.equal(r.status, 0, r.stderr);
  assertAll((await report(own)).sockets, WANT, "nobody's own process");
});

test("bad usage exits 2 with one line", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = await holder(ns, ["plain=1"]);
  const gone = spawnSync("true").pid!; // exited and reaped: no process has this pid now
  const pid = String(p.pid);
  const cases: [string[], RegExp][] = [
    [["enable"], /^tcpka: no target: give --pid, --comm, --cgroup or --all$/],
    [["enable", ...WANT_FLAGS], /^tcpka: no target/],
    [["disable"], /^tcpka: no target/],
    [["enable", "--pid", String(gone)], new RegExp(`^tcpka: --pid ${gone}: no such process$`)],
    [["disable", "--pid", String(gone)], new RegExp(`^tcpka: --pid ${gone}: no such process$`)],
    [["enable", "--pid", "abc"], /^tcpka: --pid abc: not a process id$/],
    [["enable", "--pid", pid, "--watch", "--every", "garbage"], /^tcpka: --every garbage: not a duration/],
    [["enable", "--pid", pid, "--watch", "--every", "5ms"], /^tcpka: --every 5ms: not a duration of at least 10ms$/],
    [["enable", "--pid", pid, "--idle", "1.5s"], /^tcpka: --idle 1\.5s: .*whole seconds/],
    [["enable", "--pid", pid, "--count", "128"], /^tcpka: --count 128: out of range/],
    [["enable", "--pid", pid, "--bogus"], /^tcpka: enable: unknown option --bogus$/],
    [["enable", "--pid", pid, "--via", "ptrace"], /^tcpka: --via ptrace: use bpf or pidfd$/],
    [["enable", "--pid", pid, "--spread", "soon"], /^tcpka: --spread soon: not a duration$/],
  ];
  for (const [args, message] of cases) {
    await t.test(`tcpka ${args.join(" ")}`, () => assertOneLineErrorOnly(ns.tcpka(args), 2, message));
  }
  assertAll(await pyReport(p), UNTOUCHED, "nothing changed");
});

test("disable without a target points at tcpka disable, not enable", async (t) => {
  if (!needs(t, { root: true, tools: ["ip"] })) return;
  const ns = Netns.create(t);
  const r = ns.tcpka(["disable"]);
  assertOneLineErrorOnly(r, 2, /^tcpka: no target/);
  assert.match(r.stderr.split("\n")[1] ?? "", /^hint: .*tcpka disable\b/);
});

test("--comm reaches every process of that name and no other", async (t) => {
  if (!needs(t, { ...NEEDS, tools: [...NEEDS.tools, "gcc"] })) return;
  const ns = Netns.create(t);
  // The holder under a name no other process has: its comm.
  const bin = compileC(tempDir(t, { readable: true }), "enable/holder.c", "holder");
  const named = `${bin.slice(0, -"holder".length)}tcpkaE2eHold`;
  renameSync(bin, named);
  const a = ns.spawn([named, "1"]);
  const b = ns.spawn([named, "2"]);
  for (const p of [a, b]) assert.equal(await p.line(), "ready");
  const other = await holder(ns, ["plain=1"]);

  const r = ns.tcpka(["enable", "--comm", "tcpkaE2eHold", ...WANT_FLAGS]);
  assert.equal(r.status, 0, r.stderr);
  for (const p of [a, b]) assertAll((await report(p)).sockets, WANT, `tcpkaE2eHold[${p.pid}]`);
  assertAll(await pyReport(other), UNTOUCHED, "python3 is left alone");
  const s = summary(r.stdout);
  assert.deepEqual([s.sockets, s.processes, s.rows.changed], [8, 2, 8]);
});

test("a socket shared by two processes (after fork) is counted once", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = await holder(ns, ["plain=1"]);
  p.send("fork\n");
  const child = Number(/^forked (\d+)$/.exec(await p.line())?.[1]);
  const r = ns.tcpka(["enable", "--pid", String(p.pid), "--pid", String(child), ...WANT_FLAGS]);
  assert.equal(r.status, 0, r.stderr);
  assertAll(await pyReport(p), WANT, "changed, as the parent reads them");
  // Three sockets (a listener and both ends of a connection), each held by both processes, all changed by this
  // run: not six sockets of which three were "already as strong".
  const s = summary(r.stdout);
  assert.deepEqual(
    [s.sockets, s.processes, s.rows.changed, s.rows["already as strong"], s.rows.listening],
    [3, 2, 3, 0, 1],
    r.stdout,
  );
});

test("--pid of a thread (not a process) either reaches its process or says so in one line", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = await holder(ns, ["plain=1"]);
  p.send("thread\n");
  const tid = Number(/^thread (\d+)$/.exec(await p.line())?.[1]);
  assert.notEqual(tid, p.pid);
  const r = ns.tcpka(["enable", "--pid", String(tid), ...WANT_FLAGS]);
  if (r.status === 0) assertAll(await pyReport(p), WANT, "the sockets of the thread's process");
  else assertOneLineErrorOnly(r, 2, new RegExp(`^tcpka: --pid ${tid}: .*thread`));
});
