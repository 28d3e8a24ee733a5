/**
 * --only / --except mean the same thing in every mechanism. One fixed table of rules, accepted and refused, over
 * one fixed set of sockets: listeners, and connections both ways (the end that connected and the end that
 * accepted), IPv4 between addresses of 198.18.0.0/15 and 127.0.0.1 on lo, IPv6 ::1, IPv4 peers of AF_INET6
 * sockets (a dual-stack listener, and a client connecting to ::ffff:127.0.0.1), on several ports, all inside a
 * test network namespace. Each accepted rule set goes through
 *   - tcpka run (the preload shim): which sockets got keepalive, read by the program itself;
 *   - tcpka trace --json: each socket's "matched";
 *   - tcpka enable --dry-run --json on a process that holds the same sockets: which it would change;
 *   - tcpka ls --json: which it lists;
 *   - tcpka enforce on a test cgroup (the BPF program): which sockets got keepalive, made in the cgroup;
 * and every mechanism must agree with the table. Every refused rule is refused by all five commands with the
 * same one-line message and exit 2.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { TestCgroup } from "../helpers/cgroup.js";
import { afterEnforceTests, enforce, remove, KA_UNTOUCHED as UNTOUCHED } from "../helpers/enforce.js";
import { needs, python3 } from "../helpers/env.js";
import { WANT, WANT_FLAGS } from "../helpers/keepalive.js";
import { Netns } from "../helpers/netns.js";
import { fixture } from "../helpers/paths.js";
import { finished, type Process, type Result } from "../helpers/processes.js";
import { tcpkaHere } from "../helpers/tcpka.js";

const SPEC = {
  listen: [
    { name: "L8080", family: 4, port: 8080, v6only: false },
    { name: "L8089", family: 4, port: 8089, v6only: false },
    { name: "L9443", family: 6, port: 9443, v6only: true },
    { name: "L5432", family: 6, port: 5432, v6only: false }, // dual-stack: IPv4 peers appear as ::ffff:a.b.c.d
  ],
  connect: [
    { name: "a", family: 4, bind: "198.18.0.1", host: "198.18.0.2", port: 8080 },
    { name: "b", family: 4, bind: "127.0.0.1", host: "127.0.0.1", port: 8089 },
    { name: "c", family: 6, bind: "", host: "::1", port: 9443 },
    { name: "d", family: 4, bind: "198.18.0.1", host: "198.19.0.1", port: 5432 },
    { name: "e", family: 6, bind: "", host: "::ffff:127.0.0.1", port: 8080 }, // an AF_INET6 client, IPv4 peer
  ],
};
const ALL = ["L8080", "L8089", "L9443", "L5432", ..."abcde".split("").flatMap((c) => [`${c}>`, `${c}<`])];
const both = (...names: string[]) => names.flatMap((c) => [`${c}>`, `${c}<`]);

/** Rules, and the sockets they take (a listener only when no rule names an address). */
const ACCEPTED: [string[], string[]][] = [
  [[], ALL],
  [
    ["--only", ":8080"],
    ["L8080", ...both("a", "e")],
  ],
  [
    ["--only", ":8080-8089"],
    ["L8080", "L8089", ...both("a", "b", "e")],
  ],
  [
    ["--only", ":8089,9443"],
    ["L8089", "L9443", ...both("b", "c")],
  ],
  [
    ["--except", ":9443,5432"],
    ["L8080", "L8089", ...both("a", "b", "e")],
  ],
  [["--only", "198.18.0.0/15"], both("a", "d")],
  [["--only", "::ffff:198.18.0.0/111"], both("a", "d")],
  [["--only", "198.18.0.0/15:8080"], both("a")],
  [["--only", "0.0.0.0/0"], both("a", "b", "d", "e")],
  [["--only", "::/0"], both("c")],
  [["--only", "::1"], both("c")],
  [["--only", "[::1]:9443"], both("c")],
  [["--only", "[::ffff:127.0.0.1]:8080"], both("e")],
  [["--except", "127.0.0.0/8"], both("a", "c", "d")],
  [["--only", ":8080-8089", "--except", "198.18.0.0/15:8080"], both("b", "e")],
];

const many = Array.from({ length: 33 }, (_, i) => 1000 + i).join(",");
/** Rules, and the first line every command must refuse them with. */
const REFUSED: [string, string][] = [
  [
    "fe80::1%lo",
    "tcpka: --only fe80::1%lo: zone ids (%lo) are not supported: tcpka enforce's BPF program cannot see a connection's interface",
  ],
  [
    "[fe80::1%lo]:443",
    "tcpka: --only [fe80::1%lo]:443: zone ids (%lo) are not supported: tcpka enforce's BPF program cannot see a connection's interface",
  ],
  ["::1:443", "tcpka: --only ::1:443: ambiguous: the IPv6 address ::1:443, or port 443 of ::1?"],
  ["2001:db8::/32:443", "tcpka: --only 2001:db8::/32:443: a port after an IPv6 network needs brackets"],
  [":90-80", "tcpka: --only :90-80: the range ends before it starts"],
  ["198.18.0.0/15:0", "tcpka: --only 198.18.0.0/15:0: port 0 is out of range (1 to 65535)"],
  ["10.0.0.0/33", "tcpka: --only 10.0.0.0/33: the prefix length must be 0 to 32 for IPv4"],
  ["localhost:80", "tcpka: --only localhost:80: not an IP address or CIDR"],
  [":", "tcpka: --only :: no port after ':'"],
  [`:${many}`, "tcpka: --only/--except: 33 rules, more than the 32 that the preload library and the BPF program hold"],
];

interface Reported {
  name: string;
  role: "listen" | "out" | "in";
  local: [string, number];
  peer: [string, number] | null;
  opts: Record<string, number>;
}

/** What identifies a socket in every report: a listener by its port, a connection by both ends. */
function key(local: [string, number], peer: [string, number] | null): string {
  return peer === null ? `listen ${local[1]}` : `${local[0]}:${local[1]} > ${peer[0]}:${peer[1]}`;
}

function names(sockets: readonly Reported[], keys: Iterable<string>): string[] {
  const byKey = new Map(sockets.map((s) => [key(s.local, s.peer), s.name]));
  const out: string[] = [];
  for (const k of keys) {
    const name = byKey.get(k);
    assert.ok(name, `a socket of the program: ${k}`);
    out.push(name);
  }
  return out.sort();
}

/** The sockets that got exactly the requested settings; every other one must be untouched. */
function touched(sockets: readonly Reported[], what: string): string[] {
  const want = { ...WANT, user_timeout_ms: 0 };
  return sockets
    .filter((s) => {
      const got = s.opts.keepalive === 1;
      assert.deepEqual(s.opts, got ? want : UNTOUCHED, `${what}: ${s.name}`);
      return got;
    })
    .map((s) => s.name)
    .sort();
}

function parseRun(r: Result, what: string): Reported[] {
  assert.equal(r.status, 0, `${what}: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { sockets: Reported[] }).sockets;
}

function sorted(list: readonly string[]): string[] {
  return [...list].sort();
}

const NEEDS = { root: true, tools: ["ip", "python3"] };
const spec = JSON.stringify(SPEC);

interface Lab {
  /** Where the program runs under run, trace and enforce. */
  ns: Netns;
  cg: TestCgroup;
  /** A process that holds the sockets of SPEC for enable and ls, in a namespace of its own, and what it reported. */
  hold: Netns;
  holder: Process;
  held: Reported[];
}

/** Cleanups of what the tests of this file share, run when the file ends. */
const cleanups: (() => void)[] = [];
const FILE = { after: (fn: () => void) => cleanups.push(fn) };
let lab: Promise<Lab> | undefined;

/** A namespace with 198.18.0.1, 198.18.0.2 and 198.19.0.1 on lo. */
function namespace(): Netns {
  const ns = Netns.create(FILE);
  for (const a of ["198.18.0.1", "198.18.0.2", "198.19.0.1"]) ns.ip("addr", "add", `${a}/32`, "dev", "lo");
  return ns;
}

/** The namespaces, the cgroup and the holder, made once. */
function shared(): Promise<Lab> {
  lab ??= (async () => {
    const ns = namespace();
    const hold = namespace();
    const cg = TestCgroup.create(FILE);
    const holder = hold.spawn([python3(), fixture("conns.py"), "--hold", spec]);
    const held = (JSON.parse(await holder.line()) as { sockets: Reported[] }).sockets;
    assert.deepEqual(held.map((s) => s.name).sort(), sorted(ALL));
    return { ns, cg, hold, holder, held };
  })();
  return lab;
}

afterEnforceTests(() => {
  for (const fn of cleanups.reverse()) fn();
});

describe("--only/--except: one meaning in run, trace, enable, ls and enforce", () => {
  for (const [rules, want] of ACCEPTED) {
    test(`${rules.join(" ") || "no rules"}: ${want.length === ALL.length ? "everything" : want.join(" ")}`, async (t) => {
      if (!needs(t, NEEDS)) return;
      const { ns, cg, hold, holder, held } = await shared();
      const expected = sorted(want);
      const program = [python3(), fixture("conns.py"), spec];

      const run = parseRun(ns.tcpka(["run", ...WANT_FLAGS, ...rules, "--", ...program]), "run");
      assert.deepEqual(touched(run, "run"), expected, "tcpka run");

      const tr = ns.tcpka(["trace", "--json", ...rules, "--", ...program]);
      const traced = parseRun(tr, "trace");
      const report = JSON.parse(tr.stderr) as {
        sockets: {
          local_address: string;
          local_port: number;
          peer_address: string;
          peer_port: number;
          kind: string;
          matched: boolean;
        }[];
      };
      assert.equal(report.sockets.length, ALL.length, tr.stderr);
      const keyOf = (s: (typeof report.sockets)[number]) =>
        key([s.local_address, s.local_port], s.kind === "listen" ? null : [s.peer_address, s.peer_port]);
      assert.deepEqual(names(traced, report.sockets.filter((s) => s.matched).map(keyOf)), expected, "tcpka trace");

      const en = hold.tcpka(["enable", "--pid", String(holder.pid), "--dry-run", "--json", ...WANT_FLAGS, ...rules]);
      assert.equal(en.status, 0, en.stderr);
      const plan = JSON.parse(en.stdout) as {
        sockets: {
          local_address: string;
          local_port: number;
          peer_address: string;
          peer_port: number;
          state: string;
          result: string;
        }[];
        summary: { filtered_out: number };
      };
      for (const s of plan.sockets) assert.equal(s.result, "would change");
      const enKeys = plan.sockets.map((s) =>
        key([s.local_address, s.local_port], s.state === "LISTEN" ? null : [s.peer_address, s.peer_port]),
      );
      assert.deepEqual(names(held, enKeys), expected, "tcpka enable --dry-run");
      assert.equal(plan.summary.filtered_out, ALL.length - expected.length, "the others are filtered out");

      const ls = hold.tcpka([
        "ls",
        "--json",
        "--pid",
        String(holder.pid),
        "--state",
        "established",
        "--state",
        "listening",
        ...rules,
      ]);
      assert.equal(ls.status, 0, ls.stderr);
      const listed = JSON.parse(ls.stdout) as {
        connections: {
          local_address: string;
          local_port: number;
          peer_address: string;
          peer_port: number;
          state: string;
        }[];
      };
      const lsKeys = listed.connections.map((s) =>
        key([s.local_address, s.local_port], s.state === "LISTEN" ? null : [s.peer_address, s.peer_port]),
      );
      assert.deepEqual(names(held, lsKeys), expected, "tcpka ls");

      enforce(cg, [...WANT_FLAGS, ...rules]);
      try {
        const out = await finished(cg.spawn(["ip", "netns", "exec", ns.name, ...program]));
        assert.deepEqual(touched(parseRun(out, "enforce"), "enforce"), expected, "tcpka enforce");
      } finally {
        remove(cg);
      }
    });
  }

  for (const [rule, message] of REFUSED) {
    test(`refused everywhere, with one message: ${rule.length > 30 ? `${rule.slice(0, 30)}…` : rule}`, async (t) => {
      if (!needs(t, NEEDS)) return;
      const { ns, cg, hold, holder } = await shared();
      const given = ["--only", rule];
      const results: [string, Result][] = [
        ["run", ns.tcpka(["run", ...given, "--", "true"])],
        ["trace", ns.tcpka(["trace", ...given, "--", "true"])],
        ["enable", hold.tcpka(["enable", "--pid", String(holder.pid), "--dry-run", ...given])],
        ["ls", ns.tcpka(["ls", ...given])],
        ["enforce", tcpkaHere(["enforce", "--cgroup", cg.path, ...given])],
      ];
      const first = results[0]?.[1].stderr ?? "";
      for (const [command, r] of results) {
        assert.equal(r.status, 2, `${command}: exit code; ${r.stderr}`);
        assert.equal(r.stderr.split("\n")[0], message, command);
        assert.match(r.stderr, /^tcpka: [^\n]+\n(hint: [^\n]+\n)?$/, `${command}: one line and a hint`);
        assert.equal(r.stderr, first, `${command} says what run says`);
        assert.equal(r.stdout, "", command);
      }
    });
  }
});
