/**
 * Expected failures through the real CLI: one `tcpka: ...` line on stderr, at most one `hint:` line after it, the
 * right exit code, never a stack trace. Run in a namespace of their own, so that not even a broken
 * `sysctl --set` could reach the host's values.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { after, test } from "node:test";
import { needs, python3 } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import { assertOneLineErrorOnly } from "../helpers/tcpka.js";
import { NOBODY } from "../helpers/users.js";

after(() => Netns.destroyAll());

test("bad input is refused with exit code 2 and one line that names it", async (t) => {
  if (!needs(t, { root: true, tools: ["ip"] })) return;
  const ns = Netns.create(t);
  const gone = spawnSync("true").pid; // exited and reaped: no process has this pid now
  const cases: [string[], RegExp][] = [
    [["ls", "--bogus"], /unknown option --bogus/],
    [["ls", "--dst", "10.0.0.0/33"], /--dst 10\.0\.0\.0\/33/],
    [["ls", "--dport", "70000"], /--dport 70000/],
    [["ls", "--pid", String(gone)], new RegExp(`--pid ${gone}: no such process`)],
    [["sysctl", "--set", "count=0"], /count=0/],
    // A negative number is the value of the flag before it, and its own check words the error.
    [["enable", "--pid", "1", "--idle", "-1", "--dry-run"], /^tcpka: --idle -1: out of range/],
    [["enable", "--pid", "1", "--count", "-1", "--dry-run"], /^tcpka: --count -1: out of range/],
    [["run", "--idle", "-1", "--", "true"], /^tcpka: --idle -1: out of range/],
    [["enable", "--pid", "1", "--idle", `1${"0".repeat(23)}`, "--dry-run"], /^tcpka: --idle 10+: out of range/],
    // Nothing that would match nothing, or everything, is taken silently.
    [["enable", "--all", "--pid", "1", "--dry-run"], /^tcpka: --all means every process: give it without --pid$/],
    [["enable", "--all", "--comm", "sshd", "--dry-run"], /^tcpka: --all means every process/],
    [["ls", "--comm", ""], /^tcpka: ls: --comm needs a value, not an empty string$/],
    [["enable", "--comm", "", "--dry-run"], /^tcpka: enable: --comm needs a value, not an empty string$/],
    [["enable", "--cgroup", "", "--dry-run"], /^tcpka: enable: --cgroup needs a value, not an empty string$/],
    [["ls", "--comm", "a-name-of-16-byt"], /^tcpka: --comm a-name-of-16-byt: longer than a process name can be/],
    [["enable", "--comm", "a-name-of-16-byt", "--dry-run"], /^tcpka: --comm a-name-of-16-byt: longer/],
  ];
  for (const [args, message] of cases) {
    await t.test(`tcpka ${args.join(" ")}`, () => assertOneLineErrorOnly(ns.tcpka(args), 2, message));
  }
  assert.equal(ns.sysctl("net.ipv4.tcp_keepalive_probes"), "9", "count=0 changed nothing");
});

test("sysctl --set without root fails with exit code 1 and a permission message", (t) => {
  if (!needs(t, { root: true, tools: ["ip", "setpriv"] })) return;
  const ns = Netns.create(t);
  assertOneLineErrorOnly(ns.tcpka(["sysctl", "--set", "idle=60"], { user: NOBODY }), 1, /permission denied/);
  assert.equal(ns.sysctl("net.ipv4.tcp_keepalive_time"), "7200");
});

/** A name server that answers every query with NXDOMAIN (RCODE 3), the question echoed. */
const NXDOMAIN = `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    end = 12
    while q[end]:
        end += q[end] + 1
    s.sendto(q[:2] + bytes([0x81, 0x83]) + q[4:6] + bytes(6) + q[12:end + 5], peer)
`;

test("idle-timeout to a host that does not resolve fails with exit code 1: not bad usage", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
  const ns = Netns.create(t);
  // `ip netns exec` mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf: the local server answers.
  const madeParent = !existsSync("/etc/netns");
  const dir = `/etc/netns/${ns.name}`;
  mkdirSync(dir, { recursive: true });
  t.after(() => {
    rmSync(dir, { recursive: true, force: true });
    try {
      if (madeParent) rmdirSync("/etc/netns");
    } catch {
      // another namespace's files are in it now: it stays for them
    }
  });
  writeFileSync(`${dir}/resolv.conf`, "nameserver 127.0.0.1\n");
  const dns = ns.spawn([python3(), "-c", NXDOMAIN]);
  assert.equal(await dns.line(), "ready");
  assertOneLineErrorOnly(
    ns.tcpka(["idle-timeout", "no-such-host.invalid:7007"]),
    1,
    /^tcpka: cannot resolve no-such-host\.invalid: no such host$/,
  );
});

const HOLDER = `
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
c = socket.create_connection(srv.getsockname()); a = srv.accept()[0]
print("ready", flush=True)
sys.stdin.readline()
`;

/** PF_KTHREAD in the flags of /proc/PID/stat; false once the process has gone. */
function isKernelThread(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    return (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[6]) & 0x00200000) !== 0;
  } catch {
    return false;
  }
}

test("enable --all without root does its own processes, skips kernel threads, counts the rest, exits 1", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "setpriv", "python3"] })) return;
  const ns = Netns.create(t);
  const own = ns.spawn([python3(), "-c", HOLDER], { user: NOBODY });
  assert.equal(await own.line(), "ready");

  const r = ns.tcpka(["enable", "--all", "--dry-run", "--json"], { user: NOBODY });
  assert.equal(r.status, 1, `some processes could not be read: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as {
    sockets: { pid: number; result: string }[];
    summary: { failed: number; unreadable_pids: number[] };
  };
  assert.deepEqual(
    out.sockets.filter((s) => s.pid === own.pid).map((s) => s.result),
    ["would change", "would change", "would change"],
    "its own listener and connection",
  );
  assert.equal(out.summary.failed, 0, "no socket failed");
  assert.ok(out.summary.unreadable_pids.includes(process.pid), "root's processes are counted as not read");
  const kthreads = out.summary.unreadable_pids.filter(isKernelThread);
  assert.deepEqual(kthreads, [], "kernel threads hold no sockets: not counted");

  const human = ns.tcpka(["enable", "--all", "--dry-run", "-q"], { user: NOBODY });
  assert.equal(human.status, 1, human.stderr);
  assert.equal(human.stderr, "");
  assert.match(human.stdout, /^ {2}\d+ process(es)? could not be read: run as root/m);
  assert.match(human.stdout, /^ {2}failed +0$/m);
});
