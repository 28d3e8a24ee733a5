/**
 * `tcpka enable --watch` against the real kernel: races with a program that makes and drops TCP connections,
 * pipes, Unix sockets and UDP sockets as fast as it can (test/fixtures/enable/churn.c), and the end of a watch.
 * What tcpka did is checked from inside the target: nothing but TCP sockets touched, no syscall of its own
 * failing, no fd left behind in it, and every TCP socket it still holds at the end with the settings asked for.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { after, test } from "node:test";
import { compileC } from "../helpers/compile.js";
import { summary } from "../helpers/enable.js";
import { needs } from "../helpers/env.js";
import { type Reported, report, settings, WANT, WANT_FLAGS } from "../helpers/keepalive.js";
import { Netns } from "../helpers/netns.js";
import { fixture } from "../helpers/paths.js";
import { type Process, sleep, until } from "../helpers/processes.js";
import { tempDir } from "../helpers/scope.js";

after(() => Netns.destroyAll());

/** How long the target churns while the watch runs. */
const CHURN_MS = 3000;

interface ChurnReport {
  pid: number;
  cycles: number;
  errors: number;
  first_error: string;
  touched: number;
  tcp: (Reported & { fd: number })[];
  other: { fd: number; kind: string; keepalive: number }[];
}

async function churnReport(p: Process): Promise<ChurnReport> {
  p.send("report\n");
  const r = JSON.parse(await p.line()) as ChurnReport;
  assert.equal(r.pid, p.pid);
  return r;
}

const hasWant = (s: Reported) => JSON.stringify(settings(s)) === JSON.stringify(WANT);

test("--watch races a program that churns TCP, pipes, Unix and UDP sockets: only TCP is touched", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "gcc"] })) return;
  const bin = compileC(tempDir(t, { readable: true }), "enable/churn.c", "churn");
  const ns = Netns.create(t);
  const p = ns.spawn([bin]);
  assert.equal(await p.line(), "ready");
  const fds = () => readdirSync(`/proc/${p.pid}/fd`).length;
  const fdsBefore = fds();

  const watch = ns.startTcpka([
    "enable",
    "--pid",
    String(p.pid),
    ...WANT_FLAGS,
    "--watch",
    "--every",
    "50ms",
    "--quiet",
  ]);
  await until(
    "the first round changes the target's TCP sockets",
    async () => (await churnReport(p)).tcp.every(hasWant),
    5000,
  );

  p.send("churn\n");
  await sleep(CHURN_MS);
  p.send("stop\n");
  const cycles = Number(/^stopped (\d+)$/.exec(await p.line())?.[1]);
  assert.ok(cycles >= 1000, `the target churned (${cycles} cycles)`);
  // The slots made last are new to the watch: its next rounds reach them.
  await until(
    "every TCP socket still held gets the settings",
    async () => (await churnReport(p)).tcp.every(hasWant),
    5000,
  );

  watch.kill("SIGINT");
  const { code, signal } = await watch.finish(10_000);
  assert.deepEqual({ code, signal }, { code: 0, signal: null }, watch.stderr);
  assert.equal(watch.stderr, "");
  const s = summary(watch.stdout);
  assert.equal(s.processes, 1);
  assert.equal(s.rows.failed, 0, watch.stdout);
  // At least the 34 TCP sockets of the first round, and the 16 client ends of the last slots, all made during the
  // churn (the accepted ends inherit from the listeners, changed in the first round).
  assert.ok(s.rows.changed! >= 34 + 16, `it changed sockets made during the churn: ${watch.stdout}`);
  assert.equal(watch.stdout.match(/TCP sockets? in/g)?.length, 1, "one summary, at the end");

  const r = await churnReport(p);
  assert.deepEqual(
    { errors: r.errors, first_error: r.first_error, touched: r.touched },
    { errors: 0, first_error: "", touched: 0 },
    "the target saw no error, and no pipe, Unix or UDP socket was touched",
  );
  for (const x of r.tcp) assert.deepEqual(settings(x), WANT, `TCP ${x.role} fd ${x.fd}`);
  for (const x of r.other) assert.equal(x.keepalive, 0, `${x.kind} fd ${x.fd}`);
  assert.equal(r.other.filter((x) => x.kind === "unix").length, 32);
  assert.equal(fds(), fdsBefore, "no fd left behind in the target");
});

test("--watch reaches new connections, and ends by itself when its --pid target exits", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
  const ns = Netns.create(t);
  const p = ns.spawn(["python3", fixture("enable/holder.py"), "plain=1"]);
  assert.equal(await p.line(), "ready");
  const watch = ns.startTcpka(["enable", "--pid", String(p.pid), ...WANT_FLAGS, "--watch", "--every", "50ms"]);
  await watch.waitFor(/ changed /);

  // A connection made after the first round: its client end is new to the watch (the accepted end inherits
  // from the listener, changed in the first round).
  p.send("connect\n");
  assert.equal(await p.line(), "connected");
  await until(
    "the watch changes the new connection",
    async () => {
      const late = (await report(p)).sockets.filter((s) => s.label === "late");
      return late.length === 2 && late.every(hasWant);
    },
    5000,
  );

  p.send("exit\n");
  const { code, signal } = await watch.finish(5000);
  assert.deepEqual({ code, signal }, { code: 0, signal: null }, watch.stderr);
  const s = summary(watch.stdout);
  assert.deepEqual([s.sockets, s.processes, s.rows.changed, s.rows.failed], [5, 1, 4, 0], watch.stdout);
});

test("--watch ends when its --pid target has exited even if no one has reaped it yet (a zombie)", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3"] })) return;
  const ns = Netns.create(t);
  const parent = ns.spawn(["python3", fixture("enable/fork_holder.py")]);
  const child = Number(await parent.line());
  const watch = ns.startTcpka(["enable", "--pid", String(child), ...WANT_FLAGS, "--watch", "--every", "50ms"]);
  await watch.waitFor(/ changed /);

  parent.send("exit\n"); // read by the child, which exits; the parent never waits for it
  await until("the child is a zombie", async () => stateOf(child) === "Z", 5000);
  const { code, signal } = await watch.finish(5000);
  assert.deepEqual({ code, signal }, { code: 0, signal: null }, watch.stderr);
  assert.equal(summary(watch.stdout).rows.changed, 3);
});

/** The state letter of /proc/PID/stat ("R", "S", "Z"...), or "" once the pid is gone. */
function stateOf(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  } catch {
    return "";
  }
}
