/**
 * `tcpka trace` end to end: real programs (curl against a python3 http.server, python3 clients, a forking
 * server) traced through the shim's event file, checked in the text report (stderr), in --json (-o FILE), and
 * for what it must leave alone: the program's stdout and exit code. Then the event channel played against as
 * uid 65534 and from outside the traced processes, and -o with paths that cannot or must not be written.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  appendFileSync,
  chmodSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, type TestContext, test } from "node:test";
import { compileC } from "../helpers/compile.js";
import { needs, python3 } from "../helpers/env.js";
import { WANT } from "../helpers/keepalive.js";
import { connectTo, listener } from "../helpers/listener.js";
import { fixture, TCPKA } from "../helpers/paths.js";
import { cleanEnv, exec, killLeftover, type Process, runSync, shimEnv, start, until } from "../helpers/processes.js";
import { type Scope, tempDir } from "../helpers/scope.js";
import { startTcpka, tcpka } from "../helpers/tcpka.js";
import { asUser, NOBODY } from "../helpers/users.js";

/** Cleanups of things shared by the tests of this file (the HTTP server), run when the file ends. */
const cleanups: (() => void | Promise<void>)[] = [];
const FILE: Scope = { after: (fn) => cleanups.push(fn) };
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

const DIR = tempDir(FILE);
const BODY = "hello from the e2e http server\n";

/** The namespace's keepalive probe count: what curl's dead-peer time is made of (it sets idle and interval only). */
const PROBES = Number(readFileSync("/proc/sys/net/ipv4/tcp_keepalive_probes", "utf8").trim());

let http: Promise<number> | undefined;

/** `python3 -m http.server` on 127.0.0.1 and an ephemeral port, serving hello.txt; its port. */
function httpServer(): Promise<number> {
  http ??= (async () => {
    writeFileSync(join(DIR, "hello.txt"), BODY);
    const server = start(FILE, [python3(), "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", DIR, "0"], {
      timeoutMs: 10 * 60_000,
    });
    const m = await server.waitFor(/^Serving HTTP on 127\.0\.0\.1 port (\d+) /m);
    return Number(m[1]);
  })();
  return http;
}

interface TraceSocket {
  pid: number;
  comm: string;
  fd: number;
  kind: "connect" | "listen" | "accept";
  local_address: string;
  local_port: number;
  peer_address: string;
  peer_port: number;
  error?: string;
  matched: boolean;
  program: Record<string, number>;
  tcpka: Record<string, number>;
  keepalive: boolean | null;
  idle_s: number | null;
  interval_s: number | null;
  count: number | null;
  user_timeout_ms: number | null;
  dead_peer_after_s: number | null;
}

interface TraceJson {
  command: string[];
  processes: { pid: number; comm: string }[];
  sockets: TraceSocket[];
  user_switches: { pid: number; comm: string; uid: number }[];
  events_lost: number;
  foreign_lines: number;
  errors: string[];
}

/** `tcpka trace --json -o FILE ARGS…`: the run's result and the parsed report. */
async function traceJson(t: TestContext, args: readonly string[], opts: { input?: string } = {}) {
  const out = join(tempDir(t), "report.json");
  const r = await tcpka(t, ["trace", "--json", "-o", out, ...args], opts);
  let report: TraceJson | undefined;
  try {
    report = JSON.parse(readFileSync(out, "utf8")) as TraceJson;
  } catch (e) {
    assert.fail(`no JSON report in ${out} (${String(e)}); exit ${r.code} signal ${r.signal}; stderr: ${r.stderr}`);
  }
  return { ...r, report };
}

describe("tcpka trace reports what the program set itself", () => {
  test("curl: its own keepalive (on, idle 60, interval 60) in the text report; stdout and exit code untouched", async (t) => {
    if (!needs(t, { tools: ["curl", "python3"] })) return;
    const port = await httpServer();
    const url = `http://127.0.0.1:${port}/hello.txt`;
    const r = await tcpka(t, ["trace", "--", "curl", "-sS", url]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, BODY, "curl's output, and nothing else, on stdout");
    const head = new RegExp(`^curl\\[(\\d+)\\] fd \\d+  127\\.0\\.0\\.1:\\d+ -> 127\\.0\\.0\\.1:${port}$`, "m");
    assert.match(r.stderr, head);
    assert.match(r.stderr, /^ {2}program set {2}SO_KEEPALIVE=1 TCP_KEEPIDLE=60 TCP_KEEPINTVL=60$/m);
    assert.match(r.stderr, /^ {2}verdict {6}keepalive on: a dead peer is noticed after /m);
    assert.ok(r.stderr.includes(`(60s + 60s × ${PROBES})`), r.stderr);
    assert.doesNotMatch(r.stderr, /^ {2}fix /m);
    assert.doesNotMatch(r.stderr, /tcpka set/, "nothing applied without --apply or settings");
    assert.equal(r.stderr.match(/ -> /g)?.length, 1, "one connection");
  });

  test("curl: --json -o FILE has the same facts with stable names; nothing on stderr", async (t) => {
    if (!needs(t, { tools: ["curl", "python3"] })) return;
    const port = await httpServer();
    const url = `http://127.0.0.1:${port}/hello.txt`;
    const { code, stdout, stderr, report } = await traceJson(t, ["--", "curl", "-sS", url]);
    assert.equal(code, 0, stderr);
    assert.equal(stdout, BODY);
    assert.equal(stderr, "", "the report went to the file");
    assert.deepEqual(report.command, ["curl", "-sS", url]);
    assert.equal(report.sockets.length, 1, JSON.stringify(report.sockets));
    const s = report.sockets[0]!;
    assert.ok(
      report.processes.some((p) => p.pid === s.pid && p.comm === "curl"),
      JSON.stringify(report.processes),
    );
    assert.deepEqual(
      {
        comm: s.comm,
        kind: s.kind,
        local_address: s.local_address,
        peer_address: s.peer_address,
        peer_port: s.peer_port,
        program: s.program,
        tcpka: s.tcpka,
        keepalive: s.keepalive,
        idle_s: s.idle_s,
        interval_s: s.interval_s,
        count: s.count,
        user_timeout_ms: s.user_timeout_ms,
        dead_peer_after_s: s.dead_peer_after_s,
      },
      {
        comm: "curl",
        kind: "connect",
        local_address: "127.0.0.1",
        peer_address: "127.0.0.1",
        peer_port: port,
        program: { keepalive: 1, idle: 60, interval: 60 },
        tcpka: {},
        keepalive: true,
        idle_s: 60,
        interval_s: 60,
        count: PROBES,
        user_timeout_ms: 0,
        dead_peer_after_s: 60 + 60 * PROBES,
      },
    );
    assert.ok(s.local_port > 0);
    assert.deepEqual([report.events_lost, report.foreign_lines, report.errors, report.user_switches], [0, 0, [], []]);
  });

  test("curl --no-keepalive: keepalive OFF, in text (with the fix) and in JSON", async (t) => {
    if (!needs(t, { tools: ["curl", "python3"] })) return;
    const port = await httpServer();
    const url = `http://127.0.0.1:${port}/hello.txt`;
    const text = await tcpka(t, ["trace", "--", "curl", "-sS", "--no-keepalive", url]);
    assert.equal(text.code, 0, text.stderr);
    assert.equal(text.stdout, BODY);
    assert.match(text.stderr, /^ {2}program set {2}nothing$/m);
    assert.match(text.stderr, /^ {2}verdict {6}keepalive OFF: /m);
    assert.match(text.stderr, /^ {2}fix {10}tcpka run --idle 60s -- curl -sS --no-keepalive http:\S+$/m);

    const { code, stdout, report } = await traceJson(t, ["--", "curl", "-sS", "--no-keepalive", url]);
    assert.equal(code, 0);
    assert.equal(stdout, BODY);
    assert.equal(report.sockets.length, 1);
    const s = report.sockets[0]!;
    assert.deepEqual(
      [s.program, s.keepalive, s.dead_peer_after_s, s.peer_port],
      [{}, false, null, port],
      JSON.stringify(s),
    );
  });

  test("exit codes pass through (curl -f on a 404: 22, to a closed port: 7); a failed connect is named by its errno", async (t) => {
    if (!needs(t, { tools: ["curl", "python3"] })) return;
    const port = await httpServer();
    const notFound = await tcpka(t, ["trace", "--", "curl", "-sSf", `http://127.0.0.1:${port}/missing`]);
    assert.equal(notFound.code, 22, notFound.stderr);
    assert.match(notFound.stderr, /^ {2}program set {2}SO_KEEPALIVE=1 /m);

    // curl's connect is non-blocking: connect() says EINPROGRESS, and the refusal comes when curl reads
    // SO_ERROR. The report names it there, and does not count it as a connection.
    const refusedPort = await freePort();
    const curl = await traceJson(t, ["--", "curl", "-sS", `http://127.0.0.1:${refusedPort}/`]);
    assert.equal(curl.code, 7, curl.stderr);
    assert.deepEqual(
      curl.report.sockets.map((s) => [s.kind, s.peer_port, s.error]),
      [["connect", refusedPort, "ECONNREFUSED"]],
    );
    const curlText = await tcpka(t, ["trace", "--", "curl", "-sS", `http://127.0.0.1:${refusedPort}/`]);
    assert.equal(curlText.code, 7);
    assert.match(curlText.stderr, /^ {2}connect failed: ECONNREFUSED$/m);
    assert.match(curlText.stderr, /^0 TCP connections from 0 processes/m);
    // A blocking connect() that fails is reported with its errno, and the program's exit code is kept.
    const script = [
      "import socket, sys",
      "try:",
      `    socket.create_connection(("127.0.0.1", ${refusedPort}))`,
      "except ConnectionRefusedError:",
      "    sys.exit(9)",
    ].join("\n");
    const refused = await traceJson(t, ["--", python3(), "-c", script]);
    assert.equal(refused.code, 9, refused.stderr);
    assert.deepEqual(
      refused.report.sockets.map((s) => [s.kind, s.peer_port, s.error]),
      [["connect", refusedPort, "ECONNREFUSED"]],
    );
    const text = await tcpka(t, ["trace", "--", python3(), "-c", script]);
    assert.equal(text.code, 9);
    assert.match(text.stderr, /^ {2}connect failed: ECONNREFUSED$/m);
  });

  test("--idle 7s --interval 3s --count 4 (apply): what tcpka set, for curl with and without its own keepalive", async (t) => {
    if (!needs(t, { tools: ["curl", "python3"] })) return;
    const port = await httpServer();
    const url = `http://127.0.0.1:${port}/hello.txt`;
    const flags = ["--idle", "7s", "--interval", "3s", "--count", "4"];
    const off = await tcpka(t, ["trace", ...flags, "--", "curl", "-sS", "--no-keepalive", url]);
    assert.equal(off.code, 0, off.stderr);
    assert.equal(off.stdout, BODY);
    assert.match(off.stderr, /^ {2}program set {2}nothing$/m);
    assert.match(off.stderr, /^ {2}tcpka set {4}SO_KEEPALIVE=1 TCP_KEEPIDLE=7 TCP_KEEPINTVL=3 TCP_KEEPCNT=4$/m);
    assert.match(off.stderr, /^ {2}verdict {6}keepalive on: /m);

    const on = await traceJson(t, [...flags, "--", "curl", "-sS", url]);
    assert.equal(on.code, 0, on.stderr);
    const s = on.report.sockets[0]!;
    assert.deepEqual(
      [s.program, s.tcpka, s.keepalive, s.idle_s, s.interval_s, s.count],
      [
        { keepalive: 1, idle: 60, interval: 60 },
        { idle: WANT.idle, interval: WANT.interval, count: WANT.count },
        true,
        WANT.idle,
        WANT.interval,
        WANT.count,
      ],
      "curl's own keepalive stays on and is strengthened",
    );
  });

  test("a program that closes all its fds (os.closerange) before connecting is still traced", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const server = await listener(t);
    const target = `127.0.0.1:${server.port}/pre:keepalive=1`;
    const some = await traceJson(t, ["--", python3(), fixture("ka_client.py"), "--closerange", target]);
    assert.equal(some.code, 0, some.stderr);
    assert.equal(JSON.parse(some.stdout).keepalive, 1);
    assert.deepEqual(
      some.report.sockets.map((s) => [s.kind, s.peer_port, s.program, s.keepalive]),
      [["connect", server.port, { keepalive: 1 }, true]],
    );
    assert.equal(some.report.events_lost, 0);

    // With stdin, stdout and stderr closed too, the shim's event file is opened on fd 0 for each event.
    const all = await traceJson(t, ["--", python3(), fixture("ka_client.py"), "--closerange-all", target]);
    assert.equal(all.code, 0);
    assert.deepEqual(
      all.report.sockets.map((s) => [s.kind, s.peer_port, s.program, s.keepalive]),
      [["connect", server.port, { keepalive: 1 }, true]],
    );

    const text = await tcpka(t, ["trace", "--", python3(), fixture("ka_client.py"), "--closerange", target]);
    assert.match(text.stderr, new RegExp(`-> 127\\.0\\.0\\.1:${server.port}\\n {2}program set {2}SO_KEEPALIVE=1\\n`));
  });

  test("a forking server: the listener and the connections it accepts, then serves in forked children", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const out = join(tempDir(t), "report.json");
    const run = start(t, [
      process.execPath,
      TCPKA,
      "trace",
      "--json",
      "-o",
      out,
      "--idle",
      "7s",
      "--interval",
      "3s",
      "--count",
      "4",
      "--",
      python3(),
      fixture("forking_server.py"),
      "2",
    ]);
    const handlers = await serveTwo(t, run);
    const done = await run.done;
    assert.equal(done.code, 0, done.stderr);
    const report = JSON.parse(readFileSync(out, "utf8")) as TraceJson;
    const listening = report.sockets.filter((s) => s.kind === "listen");
    assert.equal(listening.length, 1, JSON.stringify(report.sockets));
    assert.equal(listening[0]!.pid, handlers.serverPid);
    // socketserver accepts in the server process and forks afterwards: the accept events are the server's.
    const accepted = report.sockets.filter((s) => s.kind === "accept");
    assert.deepEqual(
      accepted.map((s) => [s.pid, s.peer_port, s.keepalive, s.idle_s, s.interval_s, s.count]).sort(),
      handlers.children
        .map((h) => [handlers.serverPid, h.peer_port, true, WANT.idle, WANT.interval, WANT.count])
        .sort(),
    );
    // The children read back the same from inside.
    for (const h of handlers.children) {
      assert.deepEqual([h.keepalive, h.idle, h.interval, h.count], [1, WANT.idle, WANT.interval, WANT.count]);
    }
  });

  test("8 threads × 1,000 connections: every one is in the report, once, with no event lost", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const many = compileC(tempDir(t), "many.c", "many", ["-pthread"]);
    const server = await listener(t);
    const flags = ["--idle", "7s", "--interval", "3s", "--count", "4"];
    const args = ["127.0.0.1", String(server.port), "8", "1000", String(WANT.idle), String(WANT.interval)];
    const r = await traceJson(t, [...flags, "--", many, ...args, String(WANT.count)]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^pid=\d+ connections=8000 wrong=0 failed=0$/m);
    // Sockets are told apart by their cookie: fds and (after a reset) local ports are reused.
    assert.deepEqual([r.report.events_lost, r.report.errors, r.report.sockets.length], [0, [], 8000]);
    const wrong = r.report.sockets.filter(
      (s) =>
        s.kind !== "connect" ||
        s.peer_port !== server.port ||
        !s.keepalive ||
        s.idle_s !== WANT.idle ||
        s.interval_s !== WANT.interval ||
        s.count !== WANT.count,
    );
    assert.deepEqual(wrong, []);
  });

  test("the report is written when the program dies of a signal (and the signal passes through)", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const server = await listener(t);
    const script = [
      "import os, signal, socket",
      `s = socket.create_connection(("127.0.0.1", ${server.port}))`,
      "print(os.environ['TCPKA_EVENTS'], flush=True)",
      "os.kill(os.getpid(), signal.SIGTERM)",
    ].join("\n");
    const text = await tcpka(t, ["trace", "--", python3(), "-c", script]);
    assert.equal(text.signal, "SIGTERM");
    assert.match(text.stderr, new RegExp(`-> 127\\.0\\.0\\.1:${server.port}\\n {2}program set {2}nothing\\n`));
    assert.ok(!existsSync(dirname(text.stdout.trim())), "tcpka trace removed its event directory");
  });
});

/** A command run as uid 65534 (the attacker), in this network namespace. */
function asNobody(argv: readonly string[]) {
  const r = runSync([...asUser(NOBODY), ...argv], { timeoutMs: 10_000 });
  return { status: r.status, stderr: r.stderr };
}

/** `dev:ino` of a file, as trace announces its event file to the shim. */
function identity(path: string): string {
  const st = statSync(path, { bigint: true });
  return `${st.dev}:${st.ino}`;
}

/** A python3 program that prints its event file and key, waits for a line on stdin, then connects to `port`. */
function announceThenConnect(port: number): string {
  return [
    "import os, socket, sys",
    "print(os.environ['TCPKA_EVENTS'], os.environ.get('TCPKA_EVENTS_KEY', '-'), os.getpid(), flush=True)",
    "sys.stdin.readline()",
    `socket.create_connection(("127.0.0.1", ${port})).close()`,
  ].join("\n");
}

const ANNOUNCED = /^(\/\S+) (\S+) (\d+)$/m;

/** An event line as the shim writes it, for a connection with keepalive that never happened. */
function forgedLine(key?: string): string {
  return `${JSON.stringify({
    ...(key === undefined ? {} : { key }),
    ev: "connect",
    pid: 4242,
    seq: 0,
    lost: 0,
    comm: "\x1b]0;owned\x07\x1b[2J",
    fd: 9,
    cookie: 1,
    local: "198.18.0.1",
    local_port: 1,
    peer: "198.18.0.2",
    peer_port: 6,
    matched: true,
    ret: 0,
    program: { keepalive: 1 },
    tcpka: {},
    effective: { keepalive: 1, idle: 1, interval: 1, count: 1, user_timeout_ms: 0 },
  })}\n`;
}

describe("trace's event channel: only the invoking user reaches it, only the traced processes write to it", () => {
  test("it is a 0600 file in a 0700 directory under /run/tcpka: uid 65534 cannot list, read or append to it while CMD runs, nor re-create it afterwards", async (t) => {
    if (!needs(t, { root: true, tools: ["python3", "setpriv"] })) return;
    const server = await listener(t);
    const out = join(tempDir(t), "report.json");
    const run = startTcpka(t, ["trace", "--json", "-o", out, "--", python3(), "-c", announceThenConnect(server.port)]);
    const [, events, key] = (await run.waitFor(ANNOUNCED)) as unknown as [string, string, string];
    const dir = dirname(events);
    assert.match(dir, /^\/run\/tcpka\/trace-\w+$/, "not in /tmp, not at a predictable name");
    assert.ok(!dir.startsWith(tmpdir()), dir);
    assert.match(key, /^[0-9a-f]{32}$/);
    const [d, f] = [lstatSync(dir), lstatSync(events)];
    assert.deepEqual(
      [d.isDirectory(), d.uid, d.mode & 0o777, f.isFile(), f.uid, f.mode & 0o777],
      [true, 0, 0o700, true, 0, 0o600],
    );
    for (const argv of [
      ["ls", dir],
      ["cat", events],
      ["sh", "-c", `echo '${forgedLine().trim()}' >> ${events}`],
    ]) {
      const r = asNobody(argv);
      assert.notEqual(r.status, 0, `uid 65534 could ${argv.join(" ")}`);
      assert.match(r.stderr, /Permission denied/, argv.join(" "));
    }
    run.send("\n");
    const done = await run.done;
    assert.equal(done.code, 0, done.stderr);
    const report = JSON.parse(readFileSync(out, "utf8")) as TraceJson;
    assert.deepEqual(
      report.sockets.map((s) => [s.kind, s.peer_port]),
      [["connect", server.port]],
    );
    assert.ok(!existsSync(dir), "removed when trace ended");
    const again = asNobody(["mkdir", dir]);
    assert.notEqual(again.status, 0, "uid 65534 re-created the channel's directory");
    assert.match(again.stderr, /Permission denied/);
  });

  test("lines appended from outside the traced processes (no key, or an earlier run's) are not in the report", async (t) => {
    if (!needs(t, { root: true, tools: ["python3"] })) return;
    const server = await listener(t);
    // A process outside the tree with a stale TCPKA_EVENTS knows at most an earlier run's key.
    const earlier = await tcpka(t, ["trace", "--", python3(), "-c", announceThenConnect(server.port)], { input: "\n" });
    assert.equal(earlier.code, 0, earlier.stderr);
    const staleKey = ANNOUNCED.exec(earlier.stdout)?.[2];
    assert.ok(staleKey);

    const out = join(tempDir(t), "report.json");
    const run = startTcpka(t, ["trace", "--json", "-o", out, "--", python3(), "-c", announceThenConnect(server.port)]);
    const [, events, key] = (await run.waitFor(ANNOUNCED)) as unknown as [string, string, string];
    // Root (trace's own user) appending, from a process that trace did not start.
    appendFileSync(events, forgedLine() + forgedLine(staleKey) + forgedLine(key.toUpperCase()));
    run.send("\n");
    const done = await run.done;
    assert.equal(done.code, 0, done.stderr);
    const report = JSON.parse(readFileSync(out, "utf8")) as TraceJson;
    assert.deepEqual(
      report.sockets.map((s) => [s.pid, s.kind, s.peer_port, s.keepalive]),
      [[report.sockets[0]?.pid, "connect", server.port, false]],
      "only the real connection, without keepalive",
    );
    assert.ok(!report.processes.some((p) => p.pid === 4242), JSON.stringify(report.processes));
    assert.equal(report.foreign_lines, 3);
    assert.notEqual(key, staleKey, "every run has its own key");

    const text = await tcpka(t, ["trace", "--", python3(), "-c", announceThenConnect(server.port)], { input: "\n" });
    assert.equal(text.code, 0);
    assert.match(text.stderr, /^1 TCP connection from 1 process: 0 with keepalive, 1 without/m);
  });

  test("a descendant of CMD that outlives trace and then connects makes root write nothing: the attacker cannot re-create the channel, a root-owned file stays as it was", async (t) => {
    if (!needs(t, { root: true, tools: ["python3", "setpriv"] })) return;
    const server = await listener(t);
    const work = tempDir(t); // root's, 0700
    const canary = join(work, "canary");
    writeFileSync(canary, "root's file\n", { mode: 0o600 });
    const [info, go, connected] = [join(work, "info"), join(work, "go"), join(work, "connected")];
    const late = [
      "import os, socket, sys, time",
      `open(${JSON.stringify(info)}, "w").write(os.environ["TCPKA_EVENTS"] + " " + str(os.getpid()))`,
      `while not os.path.exists(${JSON.stringify(go)}): time.sleep(0.05)`,
      `socket.create_connection(("127.0.0.1", ${server.port})).close()`,
      `open(${JSON.stringify(connected)}, "w").write("yes")`,
    ].join("\n");
    // TMPDIR=/tmp, where an older trace kept its channel: the directory every user can write to.
    const r = await tcpka(
      t,
      ["trace", "--", "sh", "-c", '"$0" -c "$1" </dev/null >/dev/null 2>&1 &', python3(), late],
      {
        env: cleanEnv({ TMPDIR: tmpdir() }),
      },
    );
    assert.equal(r.code, 0, r.stderr);
    await until("the descendant to start", () => existsSync(info));
    const [events, pid] = readFileSync(info, "utf8").split(" ") as [string, string];
    t.after(() => killLeftover(Number(pid), "socket.create_connection"));
    const dir = dirname(events);
    // What uid 65534 does once trace is gone: make the directory again, the event file a symlink to root's file.
    t.after(() => spawnSync("rm", ["-rf", "--", dir]));
    const attack = asNobody(["sh", "-c", 'mkdir -p "$0" && ln -s "$1" "$0/events.jsonl"', dir, canary]);
    writeFileSync(go, "");
    await until("the descendant to connect", () => existsSync(connected));
    await server.accepted(1);
    assert.equal(readFileSync(canary, "utf8"), "root's file\n", "root appended events to the file the symlink named");
    assert.notEqual(attack.status, 0, "uid 65534 could re-create the channel");
    assert.ok(!existsSync(dir), "something made the channel's directory again");
  });

  test("the shim writes to the very file trace announced: a symlink there, or another file, is left alone", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const work = tempDir(t);
    const probe = compileC(work, "ka_probe.c", "ka_probe");
    const canary = join(work, "canary");
    writeFileSync(canary, "root's file\n", { mode: 0o600 });
    const link = join(work, "link");
    symlinkSync(canary, link);
    const other = join(work, "other");
    writeFileSync(other, "");
    const real = join(work, "events.jsonl");
    writeFileSync(real, "", { mode: 0o600 });
    const key = "0123456789abcdef0123456789abcdef";
    const probeWith = async (events: Record<string, string>) => {
      const env = shimEnv({ TCPKA_IDLE: String(WANT.idle), TCPKA_EVENTS_KEY: key, ...events });
      const r = await exec(t, [probe], { env });
      // The program is unaffected either way: its own connection gets keepalive.
      assert.deepEqual([r.code, r.stderr], [3, ""]);
      assert.match(r.stdout, new RegExp(`^client keepalive=1 idle=${WANT.idle} `, "m"));
    };
    // The symlink announced with the identity of its target: O_NOFOLLOW alone refuses it.
    await probeWith({ TCPKA_EVENTS: link, TCPKA_EVENTS_ID: identity(canary) });
    await probeWith({ TCPKA_EVENTS: canary, TCPKA_EVENTS_ID: identity(real) });
    await probeWith({ TCPKA_EVENTS: other, TCPKA_EVENTS_ID: identity(canary) });
    await probeWith({ TCPKA_EVENTS: real }); // no identity: no events
    assert.equal(readFileSync(canary, "utf8"), "root's file\n");
    assert.deepEqual([readFileSync(other, "utf8"), readFileSync(real, "utf8")], ["", ""]);
    // The file announced with its own identity gets the events, each starting with the key.
    await probeWith({ TCPKA_EVENTS: real, TCPKA_EVENTS_ID: identity(real) });
    const lines = readFileSync(real, "utf8").trimEnd().split("\n");
    assert.ok(lines.length >= 4, lines.join("\n"));
    for (const l of lines) assert.ok(l.startsWith(`{"key":"${key}","ev":"`), l);
  });

  test("nothing is left when tcpka trace gets SIGTERM or SIGKILL, nor after a run whose watchdog was killed too", async (t) => {
    if (!needs(t, { root: true, tools: ["python3"] })) return;
    const sleeper = ["import os, time", "print(os.environ['TCPKA_EVENTS'], os.getpid(), flush=True)", "time.sleep(60)"];
    const started = async () => {
      const run = startTcpka(t, ["trace", "--", python3(), "-c", sleeper.join("\n")]);
      const [, events, pid] = (await run.waitFor(/^(\/\S+) (\d+)$/m)) as unknown as [string, string, string];
      t.after(() => killLeftover(Number(pid), "time.sleep(60)"));
      assert.ok(existsSync(events));
      return { run, dir: dirname(events), pid: Number(pid) };
    };

    // SIGTERM: forwarded to CMD, which dies of it; trace reports, removes the channel, and dies of it too.
    const term = await started();
    process.kill(term.run.pid, "SIGTERM");
    const termed = await term.run.done;
    assert.equal(termed.signal, "SIGTERM", termed.stderr);
    assert.ok(!existsSync(term.dir), "left behind after SIGTERM");

    // SIGKILL: CMD lives on; the watchdog removes the channel at once.
    const kill = await started();
    process.kill(kill.run.pid, "SIGKILL");
    await until(`${kill.dir} to be removed after SIGKILL`, () => !existsSync(kill.dir), 5000);
    assert.ok(existsSync(`/proc/${kill.pid}`), "CMD is still running");

    // Both tcpka and its watchdog killed: the next trace removes what is left (nobody holds its lock).
    const both = await started();
    const watchdog = readdirSync("/proc")
      .filter((p) => /^\d+$/.test(p))
      .find((p) => {
        try {
          const argv = readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
          return argv[0] === "/bin/sh" && argv.includes(both.dir);
        } catch {
          return false;
        }
      });
    assert.ok(watchdog, "a watchdog process for the channel");
    process.kill(Number(watchdog), "SIGKILL");
    process.kill(both.run.pid, "SIGKILL");
    await both.run.done;
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(existsSync(both.dir), "the premise: nobody removed it");
    const next = await tcpka(t, ["trace", "--", "true"]);
    assert.equal(next.code, 0, next.stderr);
    assert.ok(!existsSync(both.dir), "the next trace removed the channel of the dead run");
  });

  test("traces started at once never take each other's channel for a dead one; a half-made one is swept after a minute", async (t) => {
    if (!needs(t, { root: true, tools: ["python3"] })) return;
    const server = await listener(t);
    const connect = `import socket; socket.create_connection(("127.0.0.1", ${server.port})).close()`;
    // Each trace sweeps dead channels as it starts, while the others are making theirs.
    const runs = await Promise.all(Array.from({ length: 12 }, () => traceJson(t, ["--", python3(), "-c", connect])));
    for (const { code, stderr, report } of runs) {
      assert.equal(code, 0, stderr);
      assert.equal(report.events_lost, 0, stderr);
      assert.equal(report.sockets.filter((s) => s.kind === "connect").length, 1, JSON.stringify(report.sockets));
    }
    // A channel directory without its lock: a trace that died while making it. Swept once it is a minute old.
    const base = "/run/tcpka";
    const fresh = mkdtempSync(join(base, "trace-"));
    const stale = mkdtempSync(join(base, "trace-"));
    t.after(() => {
      for (const d of [fresh, stale]) rmSync(d, { recursive: true, force: true });
    });
    const old = new Date(Date.now() - 120_000);
    utimesSync(stale, old, old);
    const next = await tcpka(t, ["trace", "--", "true"]);
    assert.equal(next.code, 0, next.stderr);
    assert.ok(!existsSync(stale), "a lockless channel two minutes old is removed");
    assert.ok(existsSync(fresh), "a lockless channel made a moment ago may be a live one in the making: kept");
  });
});

describe("trace's report: strings from the traced processes, and a process that switches user", () => {
  test("a process that names itself with escape sequences: escaped in the text report, exact in JSON", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const server = await listener(t);
    const name = "\x1b]0;owned\x07\x1b[2J";
    const script = [
      "import ctypes, socket",
      `ctypes.CDLL(None).prctl(15, ${JSON.stringify(name).replace(/\\u00/g, "\\x")}.encode(), 0, 0, 0)`,
      `socket.create_connection(("127.0.0.1", ${server.port})).close()`,
    ].join("\n");
    const text = await tcpka(t, ["trace", "--", python3(), "-c", script]);
    assert.equal(text.code, 0, text.stderr);
    assert.ok(!text.stderr.includes("\x1b") && !text.stderr.includes("\x07"), JSON.stringify(text.stderr));
    assert.match(text.stderr, /^\\x1b\]0;owned\\x07\\x1b\[2J\[\d+\] fd \d+ {2}127\.0\.0\.1:\d+ -> /m);
    const { report } = await traceJson(t, ["--", python3(), "-c", script]);
    assert.deepEqual(
      report.sockets.map((s) => s.comm),
      [name],
    );
  });

  test("a process that switches to another uid: the report says so; what it did afterwards is missing", async (t) => {
    if (!needs(t, { root: true, tools: ["python3"] })) return;
    const server = await listener(t);
    const script = [
      "import os, socket",
      `a = socket.create_connection(("127.0.0.1", ${server.port}))`,
      `os.setuid(${NOBODY.uid})`,
      `b = socket.create_connection(("127.0.0.1", ${server.port}))`,
    ].join("\n");
    const { code, stderr, report } = await traceJson(t, ["--", python3(), "-c", script]);
    assert.equal(code, 0, stderr);
    await server.accepted(2);
    assert.equal(report.sockets.length, 1, "the connection after setuid cannot be reported");
    assert.deepEqual(
      report.user_switches.map((u) => [u.pid, u.uid]),
      [[report.sockets[0]!.pid, NOBODY.uid]],
    );
    const text = await tcpka(t, ["trace", "--", python3(), "-c", script]);
    assert.match(
      text.stderr,
      new RegExp(
        `^warning: \\S+\\[\\d+\\] switched to uid ${NOBODY.uid}, which cannot open the event file \\(only uid 0 can\\): what it and its children did afterwards is missing$`,
        "m",
      ),
    );
  });
});

describe("trace -o FILE", () => {
  /** A command that leaves a mark when it runs. */
  function marking(t: TestContext) {
    const mark = join(tempDir(t), "ran");
    return { mark, argv: ["sh", "-c", 'echo > "$0"', mark] };
  }

  test("a path that cannot be written fails before CMD runs: one line, no stack trace", async (t) => {
    const cmd = marking(t);
    const dir = tempDir(t);
    for (const [path, message] of [
      [join(dir, "missing", "report.json"), /^tcpka: cannot write \S+report\.json: no such directory$/],
      [dir, /^tcpka: cannot write \S+: it is a directory$/],
    ] as const) {
      const r = await tcpka(t, ["trace", "-o", path, "--", ...cmd.argv]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr.split("\n")[0]!, message);
      assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
      assert.ok(!existsSync(cmd.mark), "CMD ran although its report could not be written");
    }
    assert.deepEqual(readdirSync(dir), [], "nothing made");
  });

  test("a report that cannot be written at the end is printed on stderr, and CMD's exit code stays", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const dir = tempDir(t);
    const report = join(dir, "report.json");
    // CMD removes the directory that the report was to go to.
    const r = await tcpka(t, ["trace", "-o", report, "--", "sh", "-c", 'rm -rf -- "$0"; exit 3', dir]);
    assert.equal(r.code, 3, r.stderr);
    const lines = r.stderr.split("\n");
    assert.match(lines[0]!, new RegExp(`^tcpka: cannot write ${report}: `));
    assert.equal(lines[1], "hint: the report follows here, on stderr");
    assert.match(r.stderr, /^0 TCP connections from 0 processes: /m);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
  });

  test("a file is replaced, not written through (a hard link keeps its content); /dev/stdout works", async (t) => {
    const dir = tempDir(t);
    const report = join(dir, "report.json");
    writeFileSync(report, "old\n");
    linkSync(report, join(dir, "hardlink"));
    const r = await tcpka(t, ["trace", "--json", "-o", report, "--", "true"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((JSON.parse(readFileSync(report, "utf8")) as TraceJson).command, ["true"]);
    assert.equal(readFileSync(join(dir, "hardlink"), "utf8"), "old\n");
    assert.deepEqual(readdirSync(dir).sort(), ["hardlink", "report.json"], "no temporary file left");
    const out = await tcpka(t, ["trace", "--json", "-o", "/dev/stdout", "--", "true"]);
    assert.equal(out.code, 0, out.stderr);
    assert.deepEqual((JSON.parse(out.stdout) as TraceJson).command, ["true"]);
  });

  test("a symlink is followed in a directory only root can write, refused in one that uid 65534 can (before CMD runs)", async (t) => {
    if (!needs(t, { root: true, tools: ["setpriv"] })) return;
    const mine = tempDir(t);
    const canary = join(mine, "canary");
    writeFileSync(canary, "root's file\n", { mode: 0o600 });
    const target = join(mine, "target.json");
    symlinkSync(target, join(mine, "link.json"));
    const followed = await tcpka(t, ["trace", "--json", "-o", join(mine, "link.json"), "--", "true"]);
    assert.equal(followed.code, 0, followed.stderr);
    assert.ok(lstatSync(join(mine, "link.json")).isSymbolicLink());
    assert.deepEqual((JSON.parse(readFileSync(target, "utf8")) as TraceJson).command, ["true"]);

    const shared = tempDir(t);
    chmodSync(shared, 0o1777); // like /tmp
    const planted = join(shared, "report.json");
    const ln = asNobody(["ln", "-s", canary, planted]);
    assert.equal(ln.status, 0, ln.stderr);
    const cmd = marking(t);
    const r = await tcpka(t, ["trace", "-o", planted, "--", ...cmd.argv]);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(
      r.stderr.split("\n")[0],
      `tcpka: refusing to follow the symlink ${planted}: every user can write ${shared}`,
    );
    assert.ok(!existsSync(cmd.mark), "CMD ran");
    assert.equal(readFileSync(canary, "utf8"), "root's file\n");
  });
});

/** Two clients of forking_server.py under `run`; the handlers' reports, once both connections are closed. */
async function serveTwo(t: TestContext, run: Process) {
  const { port, pid } = JSON.parse((await run.waitFor(/^\{"port".*$/m))[0]) as { port: number; pid: number };
  const clients = [await connectTo(port), await connectTo(port)];
  t.after(() => {
    for (const c of clients) c.destroy();
  });
  await run.waitFor(/(^\{"pid".*\n){2}/m);
  const children = run.stdout
    .split("\n")
    .filter((l) => l.startsWith('{"pid"'))
    .map(
      (l) =>
        JSON.parse(l) as {
          pid: number;
          peer_port: number;
          keepalive: number;
          idle: number;
          interval: number;
          count: number;
        },
    );
  for (const c of clients) c.end();
  return { serverPid: pid, children };
}

/** A port on 127.0.0.1 that nothing listens on: taken from a listener that is then closed. */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen({ host: "127.0.0.1", port: 0 }, resolve));
  const address = s.address();
  await new Promise<void>((resolve) => s.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}
