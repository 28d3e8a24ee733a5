/**
 * Expected failures through the real CLI: one `tcpka: ...` line on stderr, at most one `hint:` line after it, the
 * right exit code, never a stack trace. Run in a namespace of their own, so that not even a broken
 * `sysctl --set` could reach the host's values.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { after, test } from "node:test";
import { needs } from "../helpers/env.js";
import { Netns, NOBODY, type Result } from "../helpers/netns.js";

after(() => Netns.destroyAll());

/** stderr is `tcpka: <message>\n` with an optional `hint: <text>\n`: nothing else, no stack trace. */
function assertOneLineError(r: Result, status: 1 | 2, message: RegExp): void {
  assert.equal(r.status, status, `exit code; stderr: ${r.stderr}`);
  assert.match(r.stderr, /^tcpka: [^\n]+\n(hint: [^\n]+\n)?$/);
  assert.match(r.stderr.split("\n")[0]!, message);
  assert.ok(!r.stderr.includes("    at "), "no stack trace");
  assert.equal(r.stdout, "");
}

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
    [["ls", "--comm", ""], /^tcpka: ls: --comm needs a value, not an empty string$/],
    [["enable", "--comm", "", "--dry-run"], /^tcpka: enable: --comm needs a value, not an empty string$/],
    [["enable", "--cgroup", "", "--dry-run"], /^tcpka: enable: --cgroup needs a value, not an empty string$/],
    [["ls", "--comm", "a-name-of-16-byt"], /^tcpka: --comm a-name-of-16-byt: longer than a process name can be/],
  ];
  for (const [args, message] of cases) {
    await t.test(`tcpka ${args.join(" ")}`, () => assertOneLineError(ns.tcpka(args), 2, message));
  }
  assert.equal(ns.sysctl("net.ipv4.tcp_keepalive_probes"), "9", "count=0 changed nothing");
});

test("sysctl --set without root fails with exit code 1 and a permission message", (t) => {
  if (!needs(t, { root: true, tools: ["ip", "setpriv"] })) return;
  const ns = Netns.create(t);
  assertOneLineError(ns.tcpka(["sysctl", "--set", "idle=60"], { user: NOBODY }), 1, /permission denied/);
  assert.equal(ns.sysctl("net.ipv4.tcp_keepalive_time"), "7200");
});

