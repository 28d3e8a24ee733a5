/**
 * The strengthen rule, the same in the three mechanisms that apply it: the preload shim (tcpka run), enable
 * (pidfd_getfd) and enforce (the BPF program). Asked for 30 s / 5 s / 3, each must give
 *   - a program that set 1 s / 1 s / 10 itself (Node's setKeepAlive(true, 1000) does, after connect) its own
 *     1 s / 1 s / 10: its own pair detects a dead peer sooner (11 s), and 1 s / 1 s / 3 would declare a peer dead
 *     after 3 s without an answer, which neither side accepted;
 *   - a program with 100 s / 1 s / 50 (150 s) the requested 30 s / 5 s / 3, the pair taken together (not 30/1/3);
 *   - the smaller non-zero user timeout, and a program's own one when --user-timeout 0 is given.
 * Everything runs in a test network namespace (compiled-in sysctl defaults), enforce on a test cgroup; the
 * sockets are read with getsockopt by the program itself, or with tcpka ls --json (exact, as root).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { TestCgroup } from "../helpers/cgroup.js";
import { afterEnforceTests, enforce, remove } from "../helpers/enforce.js";
import { needs, python3 } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import { fixture, TCPKA } from "../helpers/paths.js";
import { finished, type Result } from "../helpers/processes.js";

afterEnforceTests();

const NEEDS = { root: true, tools: ["ip", "python3"] };
const FLAGS = ["--idle", "30s", "--interval", "5s", "--count", "3"];
const own = { keepalive: 1, idle: 1, interval: 1, count: 10 }; // what Node's setKeepAlive(true, 1000) sets
const asked = { keepalive: 1, idle: 30, interval: 5, count: 3 };

interface Case {
  name: string;
  /** setsockopt before connect() or after it */
  when: "pre" | "post";
  set: Record<string, number>;
  /** the result with --user-timeout 20s, and with --user-timeout 0 */
  ut20: Record<string, number>;
  ut0: Record<string, number>;
}

const CASES: Case[] = [
  {
    name: "own-pair",
    when: "pre",
    set: own,
    ut20: { ...own, user_timeout_ms: 20_000 },
    ut0: { ...own, user_timeout_ms: 0 },
  },
  {
    name: "own-pair-later",
    when: "post",
    set: own,
    ut20: { ...own, user_timeout_ms: 20_000 },
    ut0: { ...own, user_timeout_ms: 0 },
  },
  {
    name: "reverse",
    when: "pre",
    set: { idle: 100, interval: 1, count: 50 },
    ut20: { ...asked, user_timeout_ms: 20_000 },
    ut0: { ...asked, user_timeout_ms: 0 },
  },
  {
    name: "reverse-later",
    when: "post",
    set: { idle: 100, interval: 1, count: 50 },
    ut20: { ...asked, user_timeout_ms: 20_000 },
    ut0: { ...asked, user_timeout_ms: 0 },
  },
  {
    name: "ut-shorter",
    when: "pre",
    set: { user_timeout_ms: 5000 },
    ut20: { ...asked, user_timeout_ms: 5000 },
    ut0: { ...asked, user_timeout_ms: 5000 },
  },
  {
    name: "ut-longer",
    when: "pre",
    set: { user_timeout_ms: 60_000 },
    ut20: { ...asked, user_timeout_ms: 20_000 },
    ut0: { ...asked, user_timeout_ms: 60_000 },
  },
  {
    name: "ut-none",
    when: "pre",
    set: {},
    ut20: { ...asked, user_timeout_ms: 20_000 },
    ut0: { ...asked, user_timeout_ms: 0 },
  },
];

const UT: [keyof Pick<Case, "ut20" | "ut0">, string][] = [
  ["ut20", "20s"],
  ["ut0", "0"],
];

/** conns.py's spec: one listener, one connection per case. */
function spec(cases: readonly Case[]): string {
  return JSON.stringify({
    listen: [{ name: "L", family: 4, port: 7001, v6only: false }],
    connect: cases.map((c) => ({ name: c.name, family: 4, bind: "", host: "127.0.0.1", port: 7001, [c.when]: c.set })),
  });
}

interface Reported {
  name: string;
  local: [string, number];
  opts: Record<string, number>;
}

function reported(r: Result, what: string): Reported[] {
  assert.equal(r.status, 0, `${what}: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { sockets: Reported[] }).sockets;
}

/** The connecting end of each case, as the program read it. */
function outEnds(sockets: readonly Reported[]): Record<string, Record<string, number>> {
  return Object.fromEntries(sockets.filter((s) => s.name.endsWith(">")).map((s) => [s.name.slice(0, -1), s.opts]));
}

function expected(cases: readonly Case[], ut: "ut20" | "ut0"): Record<string, Record<string, number>> {
  return Object.fromEntries(cases.map((c) => [c.name, c[ut]]));
}

/** The exact settings of each connection of `pid` by its local port, from tcpka ls --json --pid. */
function lsByPort(ns: Netns, pid: number): Map<number, Record<string, number | boolean>> {
  const r = ns.tcpka(["ls", "--json", "--pid", String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  const conns = (
    JSON.parse(r.stdout) as {
      connections: {
        local_port: number;
        keepalive: boolean;
        idle_s: number;
        interval_s: number;
        count: number;
        user_timeout_ms: number;
      }[];
    }
  ).connections;
  return new Map(
    conns.map((c) => [
      c.local_port,
      {
        keepalive: c.keepalive ? 1 : 0,
        idle: c.idle_s,
        interval: c.interval_s,
        count: c.count,
        user_timeout_ms: c.user_timeout_ms,
      },
    ]),
  );
}

test("tcpka run (the shim): at connect, and again when the program changes an option later", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  for (const [ut, value] of UT) {
    const r = ns.tcpka(["run", ...FLAGS, "--user-timeout", value, "--", python3(), fixture("conns.py"), spec(CASES)]);
    assert.deepEqual(outEnds(reported(r, "run")), expected(CASES, ut), `--user-timeout ${value}`);
  }
});

test("tcpka run: a Node client's own setKeepAlive(true, 1000) after connect stays 1 s / 1 s / 10", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const run = ns.spawn([
    process.execPath,
    TCPKA,
    "run",
    ...FLAGS,
    "--",
    process.execPath,
    fixture("node_keepalive.mjs"),
  ]);
  const { pid, port } = JSON.parse(await run.line()) as { pid: number; port: number };
  t.after(() => process.kill(pid, "SIGKILL")); // the program tcpka run started; tcpka run then ends too
  const socks = lsByPort(ns, pid);
  assert.deepEqual(socks.get(port), { ...own, user_timeout_ms: 0 }, "the client: its own pair");
  const accepted = [...socks.entries()].find(([local]) => local !== port)?.[1];
  assert.deepEqual(accepted, { ...asked, user_timeout_ms: 0 }, "the server's accepted end: the request");
});

test("tcpka enable: a live program's own 1 s / 1 s / 10 is already as strong; 100 s / 1 s / 50 gets 30 s / 5 s / 3", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  for (const [ut, value] of UT) {
    const holder = ns.spawn([python3(), fixture("conns.py"), "--hold", spec(CASES)]);
    const before = JSON.parse(await holder.line()) as { pid: number; sockets: Reported[] };
    const r = ns.tcpka(["enable", "--pid", String(before.pid), ...FLAGS, "--user-timeout", value, "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const after = lsByPort(ns, before.pid);
    const got = Object.fromEntries(
      before.sockets.filter((s) => s.name.endsWith(">")).map((s) => [s.name.slice(0, -1), after.get(s.local[1])]),
    );
    assert.deepEqual(got, expected(CASES, ut), `--user-timeout ${value}`);
    const pair = before.sockets.find((b) => b.name === "own-pair>") as Reported;
    const plan = (JSON.parse(r.stdout) as { sockets: { local_port: number; result: string; changes: object[] }[] })
      .sockets;
    const mine = plan.find((s) => s.local_port === pair.local[1]);
    assert.deepEqual(
      [mine?.result, mine?.changes],
      ut === "ut0" ? ["unchanged", []] : ["changed", [{ option: "userTimeout", from: 0, to: 20_000 }]],
      "the program's own pair is left as it is",
    );
    holder.kill();
  }

  const node = ns.spawn([process.execPath, fixture("node_keepalive.mjs")]);
  const { pid, port } = JSON.parse(await node.line()) as { pid: number; port: number };
  const r = ns.tcpka(["enable", "--pid", String(pid), ...FLAGS]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`ESTAB 127\\.0\\.0\\.1:${port} -> \\S+  already  on, 1s / 1s / 10$`, "m"));
  assert.deepEqual(lsByPort(ns, pid).get(port), { ...own, user_timeout_ms: 0 }, "a Node client's own settings stay");
  node.kill();
});

test("tcpka enforce (BPF): what the program set before connect() meets the request under the same rule", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const cg = TestCgroup.create(t);
  const before = CASES.filter((c) => c.when === "pre"); // the BPF program cannot see a setsockopt after connect()
  for (const [ut, value] of UT) {
    enforce(cg, [...FLAGS, "--user-timeout", value]);
    const out = await finished(
      cg.spawn(["ip", "netns", "exec", ns.name, python3(), fixture("conns.py"), spec(before)]),
    );
    assert.deepEqual(outEnds(reported(out, "enforce")), expected(before, ut), `--user-timeout ${value}`);
    remove(cg);
  }
});
