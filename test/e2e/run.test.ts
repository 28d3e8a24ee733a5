/**
 * `tcpka run` end to end: real programs (curl, python3, Java, a forking server, a server on an inherited
 * listener, a C client with 8 threads × 1,000 connections) under the preload shim, checked from inside (the
 * program's own getsockopt) and from outside (`tcpka ls --json --pid`: exact getsockopt through pidfd_getfd;
 * `ss -tnoe` keepalive timers). Loopback only.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, type TestContext, test } from "node:test";
import { compileC } from "../helpers/compile.js";
import { needs, python3 } from "../helpers/env.js";
import { assertKeepaliveTimers, exactConnections, settingsOf, WANT, WANT_FLAGS } from "../helpers/keepalive.js";
import { connectTo, listener } from "../helpers/listener.js";
import { Netns } from "../helpers/netns.js";
import { fixture, SHIM, TCPKA } from "../helpers/paths.js";
import { exec, killLeftover, type Process, start, until } from "../helpers/processes.js";
import { tempDir } from "../helpers/scope.js";
import { startTcpka, tcpka } from "../helpers/tcpka.js";

const DIR = tempDir({ after });

/** The keepalive defaults of this network namespace: what a socket nobody touched reports. */
function systemDefaults() {
  const read = (n: string) => Number(readFileSync(`/proc/sys/net/ipv4/${n}`, "utf8").trim());
  return {
    keepalive: 0,
    idle: read("tcp_keepalive_time"),
    interval: read("tcp_keepalive_intvl"),
    count: read("tcp_keepalive_probes"),
  };
}

interface ClientReport {
  target: string;
  pid: number;
  family: 4 | 6;
  keepalive: number;
  idle: number;
  interval: number;
  count: number;
  user_timeout_ms: number;
}

function settings(r: { keepalive: number; idle: number; interval: number; count: number }) {
  return { keepalive: r.keepalive, idle: r.idle, interval: r.interval, count: r.count };
}

/** The child processes of `pid` (tcpka run's program is its child). */
function childrenOf(pid: number): number[] {
  const text = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim();
  return text ? text.split(/\s+/).map(Number) : [];
}

describe("tcpka run gives every kind of program exactly the requested settings", () => {
  test("curl --no-keepalive: keepalive on with 7s/3s/4 (tcpka ls --pid and ss), output and exit code untouched", async (t) => {
    if (!needs(t, { root: true, tools: ["curl", "ss"] })) return;
    const server = await listener(t);
    const run = startTcpka(t, [
      "run",
      ...WANT_FLAGS,
      "--",
      "curl",
      "-sS",
      "--no-keepalive",
      `http://127.0.0.1:${server.port}/hello`,
    ]);
    await server.accepted(1, true); // curl sent its request and now waits for the answer: the connection is idle
    const curl = await until("curl under tcpka", () => childrenOf(run.pid)[0]);
    const conns = await exactConnections(t, curl);
    assert.equal(conns.length, 1, JSON.stringify(conns));
    assert.equal(conns[0]!.peer_port, server.port);
    assert.deepEqual(settingsOf(conns[0]!), WANT);
    await assertKeepaliveTimers(`dport = :${server.port}`, 1, WANT.idle);

    server.sockets[0]!.end("HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n");
    const done = await run.done;
    assert.equal(done.stdout, "hello\n");
    assert.equal(done.stderr, "");
    assert.equal(done.code, 0);
  });

  test("python3 client: the program itself reads back 7s/3s/4, and so does tcpka ls from outside", async (t) => {
    if (!needs(t, { root: true, tools: ["python3", "ss"] })) return;
    const server = await listener(t);
    const run = startTcpka(t, [
      "run",
      ...WANT_FLAGS,
      "--",
      python3(),
      fixture("ka_client.py"),
      "--hold",
      `127.0.0.1:${server.port}`,
    ]);
    await run.waitFor(/^ready$/m);
    const [inside] = run.json<ClientReport>();
    assert.deepEqual(settings(inside!), WANT);
    assert.equal(inside!.user_timeout_ms, 0, "no user timeout unless asked for");
    const conns = await exactConnections(t, inside!.pid);
    assert.equal(conns.length, 1);
    assert.deepEqual(settingsOf(conns[0]!), WANT);
    await assertKeepaliveTimers(`dport = :${server.port}`, 1, WANT.idle);
    const done = await run.finish();
    assert.equal(done.code, 0, done.stderr);
  });

  test("Java client on a dual-stack IPv6 socket (AF_INET6 to ::ffff:127.0.0.1) gets 7s/3s/4", async (t) => {
    if (!needs(t, { root: true, tools: ["java", "javac", "ss"] })) return;
    const classes = join(DIR, "java");
    const javac = spawnSync("javac", ["-J-XX:-UsePerfData", "-d", classes, fixture("KaClient.java")], {
      encoding: "utf8",
    });
    assert.equal(javac.status, 0, javac.stderr);
    const server = await listener(t);
    const run = startTcpka(t, [
      "run",
      ...WANT_FLAGS,
      "--",
      "java",
      "-XX:-UsePerfData", // no /tmp/hsperfdata_*
      "-cp",
      classes,
      "KaClient",
      "127.0.0.1",
      String(server.port),
    ]);
    await run.waitFor(/^\{.*\}$/m, 30_000);
    const [inside] = run.json<ClientReport & { local_port: number }>();
    assert.deepEqual(settings(inside!), WANT, "as the JVM reads it (ExtendedSocketOptions)");
    const conns = await exactConnections(t, inside!.pid);
    const c = conns.find((x) => x.local_port === inside!.local_port);
    assert.ok(c, JSON.stringify(conns));
    assert.equal(c.family, 6, "Java's default socket is AF_INET6 (dual stack)");
    assert.equal(c.local_address, "::ffff:127.0.0.1");
    assert.equal(c.peer_address, "::ffff:127.0.0.1");
    assert.deepEqual(settingsOf(c), WANT);
    await assertKeepaliveTimers(`dport = :${server.port}`, 1, WANT.idle);
    const done = await run.finish();
    assert.equal(done.code, 0, done.stderr);
  });

  test("forking server: connections accepted and served by forked children get 7s/3s/4", async (t) => {
    if (!needs(t, { root: true, tools: ["python3"] })) return;
    const run = startTcpka(t, ["run", ...WANT_FLAGS, "--", python3(), fixture("forking_server.py")]);
    const { port, pid: serverPid } = JSON.parse((await run.waitFor(/^\{"port".*$/m))[0]) as {
      port: number;
      pid: number;
    };
    const clients = await Promise.all([connectTo(port), connectTo(port), connectTo(port)]);
    t.after(() => {
      for (const c of clients) c.destroy();
    });
    await run.waitFor(/(^\{"pid".*\n){3}/m);
    const handlers = run.json<{ pid: number; peer_port: number } & ClientReport>().filter((r) => r.pid !== serverPid);
    t.after(() => {
      for (const h of handlers) killLeftover(h.pid, "forking_server.py");
    });
    assert.equal(handlers.length, 3);
    assert.equal(new Set(handlers.map((h) => h.pid)).size, 3, "one child per connection");
    for (const h of handlers) {
      assert.deepEqual(settings(h), WANT, `child ${h.pid}, from inside`);
      const conns = await exactConnections(t, h.pid);
      const mine = conns.find((c) => c.local_port === port && c.peer_port === h.peer_port);
      assert.ok(mine, `child ${h.pid}: ${JSON.stringify(conns)}`);
      assert.deepEqual(settingsOf(mine), WANT, `child ${h.pid}, from outside`);
    }
    for (const c of clients) c.end();
    await run.stop();
  });

  test("a listener inherited from a parent without the shim: accepted connections get 7s/3s/4 (through tcpka run)", async (t) => {
    if (!needs(t, { root: true, tools: ["python3"] })) return;
    // The parent creates and listens, then execs `tcpka run … -- python3 accept_child.py`, which accepts on the
    // inherited fd (socket activation works this way): the shim never saw the listener.
    const parent = start(t, [
      python3(),
      fixture("inherit_parent.py"),
      process.execPath,
      TCPKA,
      "run",
      ...WANT_FLAGS,
      "--",
      python3(),
      fixture("accept_child.py"),
    ]);
    await checkInheritedListener(t, parent);
  });

  test("a listener inherited from a parent without the shim: the shim alone (LD_PRELOAD set as tcpka run sets it)", async (t) => {
    if (!needs(t, { root: true, tools: ["python3"] })) return;
    // The same without tcpka's own process in between: the parent execs env(1), which sets up the shim's
    // environment and execs the child.
    const parent = start(t, [
      python3(),
      fixture("inherit_parent.py"),
      "env",
      `LD_PRELOAD=${SHIM}`,
      "TCPKA_MODE=strengthen",
      `TCPKA_IDLE=${WANT.idle}`,
      `TCPKA_INTVL=${WANT.interval}`,
      `TCPKA_CNT=${WANT.count}`,
      python3(),
      fixture("accept_child.py"),
    ]);
    await checkInheritedListener(t, parent);
  });

  test("C client, 8 threads × 1,000 connections: every one has 7s/3s/4 (inside), the last ones also by ls and ss", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc", "ss"] })) return;
    const many = compileC(DIR, "many.c", "many", ["-pthread"]);
    const server = await listener(t);
    const run = startTcpka(t, [
      "run",
      ...WANT_FLAGS,
      "--",
      many,
      "127.0.0.1",
      String(server.port),
      "8",
      "1000",
      String(WANT.idle),
      String(WANT.interval),
      String(WANT.count),
    ]);
    const m = await run.waitFor(/^pid=(\d+) connections=(\d+) wrong=(\d+) failed=(\d+)$/m, 30_000);
    assert.deepEqual(m.slice(2), ["8000", "0", "0"], run.stdout);
    await run.waitFor(/^ready$/m);
    const held = (await exactConnections(t, Number(m[1]))).filter((c) => c.peer_port === server.port);
    assert.equal(held.length, 8, "each thread keeps its last connection");
    for (const c of held) assert.deepEqual(settingsOf(c), WANT);
    await assertKeepaliveTimers(`dport = :${server.port}`, 8, WANT.idle);
    const done = await run.finish();
    assert.equal(done.code, 0, done.stderr);
  });
});

describe("tcpka run: strengthen (default) and --force against a program's own values", () => {
  // One process, one connection per case, all read back by the program itself after its last setsockopt.
  const CASES: [string, { strengthen: object; force: object }][] = [
    ["pre:idle=3", { strengthen: { keepalive: 1, idle: 3, interval: 3, count: 4 }, force: WANT }],
    ["pre:idle=600", { strengthen: WANT, force: WANT }],
    ["post:idle=600", { strengthen: WANT, force: WANT }],
    ["post:idle=3", { strengthen: { keepalive: 1, idle: 3, interval: 3, count: 4 }, force: WANT }],
    ["post:keepalive=0", { strengthen: WANT, force: WANT }],
    // 7200 s + 1 s × 2 detects later than 7 s + 3 s × 4: the request's interval and count come together.
    ["pre:interval=1/pre:count=2", { strengthen: WANT, force: WANT }],
    [
      "pre:idle=3/pre:interval=1/pre:count=2",
      { strengthen: { keepalive: 1, idle: 3, interval: 1, count: 2 }, force: WANT },
    ],
    [
      "pre:keepalive=1/pre:idle=5/pre:interval=60/pre:count=20",
      { strengthen: { keepalive: 1, idle: 5, interval: 3, count: 4 }, force: WANT },
    ],
  ];

  for (const mode of ["strengthen", "force"] as const) {
    test(`${mode}: ${CASES.map(([steps]) => steps).join(", ")}`, async (t) => {
      if (!needs(t, { tools: ["python3"] })) return;
      const server = await listener(t);
      const targets = CASES.map(([steps]) => `127.0.0.1:${server.port}/${steps}`);
      const flags = mode === "force" ? [...WANT_FLAGS, "--force"] : WANT_FLAGS;
      const r = await tcpka(t, ["run", ...flags, "--", python3(), fixture("ka_client.py"), ...targets]);
      assert.equal(r.code, 0, r.stderr);
      const reports = r.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as ClientReport);
      assert.deepEqual(
        reports.map((x) => [x.target.split("/").slice(1).join("/"), settings(x)]),
        CASES.map(([steps, want]) => [steps, want[mode]]),
      );
    });
  }
});

describe("tcpka run --only / --except pick the right connections", () => {
  /** Targets: 127.0.0.1:P1, 127.0.0.1:P2, [::1]:P6, and P2 again from an AF_INET6 socket as ::ffff:127.0.0.1. */
  async function servers(t: TestContext) {
    const [a, b, six] = await Promise.all([listener(t), listener(t), listener(t, "::1")]);
    return {
      p1: a.port,
      p2: b.port,
      p6: six.port,
      targets: [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`, `[::1]:${six.port}`, `[::ffff:127.0.0.1]:${b.port}`],
    };
  }

  /** Which of the targets got keepalive (1) under `flags`; each one has either exactly 7s/3s/4 or the defaults. */
  async function keepaliveUnder(t: TestContext, targets: readonly string[], flags: readonly string[]) {
    const r = await tcpka(t, ["run", ...WANT_FLAGS, ...flags, "--", python3(), fixture("ka_client.py"), ...targets]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "", "the shim says nothing");
    const reports = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as ClientReport);
    const defaults = systemDefaults();
    return reports.map((x) => {
      assert.deepEqual(settings(x), x.keepalive ? WANT : defaults, x.target);
      return x.keepalive;
    });
  }

  test("IPv4 and IPv6 rules by port, address and network; --except wins over --only", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const { p1, p2, p6, targets } = await servers(t);
    const cases: [string[], number[]][] = [
      [[], [1, 1, 1, 1]],
      [
        ["--only", `:${p1}`],
        [1, 0, 0, 0],
      ],
      [
        ["--except", `127.0.0.1:${p2}`],
        [1, 0, 1, 0],
      ],
      [
        ["--only", "127.0.0.0/8"],
        [1, 1, 0, 1],
      ],
      [
        ["--only", "10.0.0.0/8"],
        [0, 0, 0, 0],
      ],
      [
        ["--only", `[::1]:${p6}`],
        [0, 0, 1, 0],
      ],
      [
        ["--only", `127.0.0.1:${p1}`, "--only", `[::1/128]:${p6}`],
        [1, 0, 1, 0],
      ],
      [
        ["--except", `[::1/128]:${p6}`],
        [1, 1, 0, 1],
      ],
      [
        ["--only", `:${p1}`, "--except", "127.0.0.1/32"],
        [0, 0, 0, 0],
      ],
    ];
    for (const [flags, want] of cases) {
      assert.deepEqual(await keepaliveUnder(t, targets, flags), want, `tcpka run ${flags.join(" ")}`);
    }
  });

  test("an IPv6 rule without a port: --except ::1 (an address that starts with ':')", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const { targets } = await servers(t);
    assert.deepEqual(await keepaliveUnder(t, targets, ["--except", "::1"]), [1, 1, 0, 1]);
  });

  test("an IPv6 rule without a port, in brackets: --except [::1]", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const { targets } = await servers(t);
    assert.deepEqual(await keepaliveUnder(t, targets, ["--except", "[::1]"]), [1, 1, 0, 1]);
  });

  test("accepted connections are filtered by the peer's address (forking server)", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const cases: [string[], number][] = [
      [["--only", "127.0.0.1/32"], 1],
      [["--except", "127.0.0.0/8"], 0],
      [["--only", "[::1]:1"], 0],
    ];
    for (const [flags, want] of cases) {
      const run = startTcpka(t, ["run", ...WANT_FLAGS, ...flags, "--", python3(), fixture("forking_server.py")]);
      const { port, pid } = JSON.parse((await run.waitFor(/^\{"port".*$/m))[0]) as { port: number; pid: number };
      const client = await connectTo(port);
      const m = await run.waitFor(/^\{"pid".*$/m);
      const handler = JSON.parse(m[0]) as ClientReport;
      t.after(() => killLeftover(handler.pid, "forking_server.py"));
      assert.notEqual(handler.pid, pid);
      assert.deepEqual(settings(handler), want ? WANT : systemDefaults(), flags.join(" "));
      client.destroy();
      await run.stop();
    }
  });
});

describe("tcpka run is transparent to the program", () => {
  test("stdout, stderr and the exit code pass through; death by a signal passes through", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const exit7 = await tcpka(t, ["run", "--", python3(), fixture("ka_client.py"), "--exit", "7"]);
    assert.deepEqual([exit7.code, exit7.stdout, exit7.stderr], [7, "", ""]);
    const killed = await tcpka(t, ["run", "--", "sh", "-c", "echo out; echo err >&2; kill -TERM $$"]);
    assert.deepEqual([killed.signal, killed.stdout, killed.stderr], ["SIGTERM", "out\n", "err\n"]);
    const missing = await tcpka(t, ["run", "--", "no-such-command-tcpka-e2e"]);
    assert.equal(missing.code, 127);
    assert.match(missing.stderr, /^tcpka: no-such-command-tcpka-e2e: command not found$/m);
  });

  test("the program's stdin stays as it was: a pipe is not made non-blocking", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const script = [
      "import fcntl, os, sys",
      "print('O_NONBLOCK' if fcntl.fcntl(0, fcntl.F_GETFL) & os.O_NONBLOCK else 'blocking')",
      "print(sys.stdin.read(), end='')",
    ].join("\n");
    const plain = await exec(t, [python3(), "-c", script], { input: "data\n" });
    assert.deepEqual([plain.code, plain.stdout], [0, "blocking\ndata\n"]);
    for (const command of ["run", "trace"]) {
      const r = await tcpka(t, [command, "--", python3(), "-c", script], { input: "data\n" });
      assert.deepEqual([r.code, r.stdout], [0, "blocking\ndata\n"], `tcpka ${command}: ${r.stderr}`);
    }
  });

  test("a dup() of a new socket onto an fd number whose earlier socket was closed by close_range()", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const server = await listener(t);
    const r = await tcpka(t, [
      "run",
      ...WANT_FLAGS,
      "--",
      python3(),
      fixture("ka_client.py"),
      "--stale-slot",
      `127.0.0.1:${server.port}/dup`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(settings(JSON.parse(r.stdout) as ClientReport), WANT);
  });
});

describe("the shim keeps track of every socket, however the program closes, forks or connects", () => {
  const line = (mode: string, ka: number, idle: number, interval: number, count: number) =>
    `${mode} keepalive=${ka} idle=${idle} interval=${interval} count=${count}\n`;
  const requested = (mode: string) => line(mode, 1, WANT.idle, WANT.interval, WANT.count);

  test("a vfork() child that closes or replaces the parent's socket fd leaves the parent's socket managed: a later TCP_KEEPIDLE=600 is lowered again", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const exe = compileC(DIR, "shim_hooks.c", "shim_hooks");
    // fork-close is the premise: a child of fork() has its own memory, and the parent keeps 7.
    for (const mode of ["fork-close", "vfork-close", "vfork-dup2", "vfork-close_range", "vfork-closefrom"]) {
      const r = await tcpka(t, ["run", ...WANT_FLAGS, "--", exe, mode]);
      assert.deepEqual([r.code, r.stderr, r.stdout], [0, "", requested(mode)], mode);
    }
  });

  test("python3's subprocess (a vfork child that closes every fd above 2) leaves the parent's socket managed", async (t) => {
    if (!needs(t, { tools: ["python3"] })) return;
    const program = [
      "import socket, subprocess",
      'srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()',
      "c = socket.create_connection(srv.getsockname())",
      'subprocess.run(["true"], close_fds=True)',
      "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 600)",
      "print(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))",
    ].join("\n");
    const r = await tcpka(t, ["run", ...WANT_FLAGS, "--", python3(), "-c", program]);
    assert.deepEqual([r.code, r.stdout], [0, `${WANT.idle}\n`], r.stderr);
  });

  test("close_range() and closefrom() forget the sockets they close: a socket the shim never saw on the same fd is left alone", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const exe = compileC(DIR, "shim_hooks.c", "shim_hooks");
    const { idle, interval, count } = systemDefaults();
    for (const mode of ["close_range", "closefrom"]) {
      const r = await tcpka(t, ["run", ...WANT_FLAGS, "--", exe, mode]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, line(mode, 0, 600, interval, count), `${mode} (namespace defaults: idle ${idle})`);
    }
  });

  test("TCP Fast Open (sendto, sendmsg, sendmmsg with MSG_FASTOPEN, no connect()) gets keepalive, and trace reports the connection", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc", "ip"] })) return;
    const exe = compileC(DIR, "shim_hooks.c", "shim_hooks");
    const ns = Netns.create(t);
    ns.setSysctl("net.ipv4.tcp_fastopen", 3); // client and server
    for (const mode of ["tfo-sendto", "tfo-sendmsg", "tfo-sendmmsg"]) {
      const r = ns.tcpka(["run", ...WANT_FLAGS, "--", exe, mode]);
      assert.deepEqual([r.status, r.stderr, r.stdout], [0, "", requested(mode)], mode);
      const traced = ns.tcpka(["trace", "--json", "--", exe, mode]);
      assert.equal(traced.status, 0, traced.stderr);
      const report = JSON.parse(traced.stderr.slice(traced.stderr.indexOf("{"))) as {
        sockets: { kind: string; error?: string; keepalive: boolean }[];
      };
      assert.deepEqual(
        report.sockets.map((s) => [s.kind, s.error, s.keepalive]).sort(),
        [
          ["accept", undefined, false],
          ["connect", undefined, false],
          ["listen", undefined, false],
        ],
        `${mode}: ${traced.stderr}`,
      );
    }
  });

  test("connect() called again on a connection under way or made (EALREADY, EISCONN) applies nothing again and is not a failed connection", async (t) => {
    if (!needs(t, { tools: ["gcc", "strace"] })) return;
    const exe = compileC(DIR, "shim_hooks.c", "shim_hooks");
    // The program sets TCP_KEEPIDLE=600 by the raw system call after its first connect(): a shim that applied
    // its settings again on the later calls would put 7 back.
    const r = await tcpka(t, ["run", ...WANT_FLAGS, "--", exe, "reconnect"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, line("reconnect", 1, 600, WANT.interval, WANT.count));
    assert.match(r.stderr, /^connect\(\) called [3-9] times$/m);

    // Counted: the setsockopt calls after the first connect() are the program's own one.
    const log = join(tempDir(t), "strace.log");
    const traced = await tcpka(t, [
      "run",
      ...WANT_FLAGS,
      "--",
      "strace",
      "-f",
      "-qq",
      "-e",
      "trace=setsockopt,connect",
      "-o",
      log,
      exe,
      "reconnect",
    ]);
    assert.equal(traced.code, 0, traced.stderr);
    const calls = readFileSync(log, "utf8").split("\n");
    const first = calls.findIndex((l) => /connect\(\d+, .*EINPROGRESS/.test(l));
    assert.ok(first > 0, calls.join("\n"));
    assert.deepEqual(
      calls
        .slice(first + 1)
        .filter((l) => l.includes("setsockopt("))
        .map((l) => l.replace(/^\d+ +/, "").replace(/\(\d+,/, "(FD,")),
      ["setsockopt(FD, SOL_TCP, TCP_KEEPIDLE, [600], 4) = 0"],
    );

    const report = await tcpka(t, ["trace", "--json", "--", exe, "reconnect"]);
    assert.equal(report.code, 0, report.stderr);
    const json = JSON.parse(report.stderr.slice(report.stderr.indexOf("{"))) as {
      sockets: { kind: string; error?: string; peer_port: number }[];
    };
    const connects = json.sockets.filter((s) => s.kind === "connect");
    assert.equal(connects.length, 1, JSON.stringify(json.sockets));
    assert.equal(connects[0]!.error, undefined, "EALREADY/EISCONN of the later calls is not a failure");
  });
});

/** accept_child.py under an inherit_parent.py: one connection, settings from inside; ends the programs. */
async function checkInheritedListener(t: TestContext, parent: Process): Promise<void> {
  const { port } = JSON.parse((await parent.waitFor(/^\{"port".*$/m))[0]) as { port: number };
  const client = await connectTo(port);
  t.after(() => client.destroy());
  await parent.waitFor(/"what": "accepted"/);
  const reports = parent.json<ClientReport & { what: string }>();
  const listening = reports.find((r) => r.what === "listener");
  const accepted = reports.find((r) => r.what === "accepted");
  assert.deepEqual(settings(listening!), systemDefaults(), "the shim never touched the inherited listener");
  assert.deepEqual(settings(accepted!), WANT);
  client.end();
  const done = await parent.finish();
  assert.equal(done.code, 0, done.stderr);
}
