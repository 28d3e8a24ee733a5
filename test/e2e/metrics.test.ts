/**
 * `tcpka metrics` and `tcpka agent --metrics` (issue 17) against the real kernel, real programs, a real podman
 * container and a real Prometheus server (Debian's prometheus package):
 *
 * - one scrape (--once) passes `promtool check metrics`, names a process whose name is full of the characters
 *   that the text format must escape, counts its connections, their service port and detection times;
 * - Prometheus scrapes the endpoint every second, and its HTTP API returns the numbers the test made: N
 *   connections without keepalive of a python3 process in the firewall lab's client and of a podman container,
 *   M with keepalive on (idle 2 s), probes sent increasing while they idle, and both killed (ETIMEDOUT, counted as
 *   timed out) once the lab's cable is pulled; with --events, a container's keepalive connection through the lab:
 *   its probes sent and answered, and its kill by keepalive, as the container's (not the namespace's processes');
 * - the agent's endpoint says what it enforces: its rule's target, the connections set up under it.
 *
 * Every process, namespace, container, cgroup and file is the test's own (unique names) and goes when it ends.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { AgentHost, KaAgent, kaAgentExe, needsAgentHost } from "../helpers/agent.js";
import { TestCgroup } from "../helpers/cgroup.js";
import { compileC } from "../helpers/compile.js";
import { needs, python3 } from "../helpers/env.js";
import { LAB_PEER, Lab, SERVER_IP } from "../helpers/lab.js";
import { Netns } from "../helpers/netns.js";
import { fixture, TCPKA } from "../helpers/paths.js";
import { busyboxImage, needsPodman, startContainer } from "../helpers/podman.js";
import { freePort } from "../helpers/ports.js";
import { type Process, start, until } from "../helpers/processes.js";
import { type Scope, tempDir, uniqueName } from "../helpers/scope.js";
import { startTcpka, tcpka } from "../helpers/tcpka.js";

const NAMED_CONNS = fixture("named_conns.py");

/** A process name of at most 15 bytes (the kernel's TASK_COMM_LEN), unique to this run. */
function commName(prefix: string): string {
  return `${prefix}${uniqueName().slice(-6)}`.slice(0, 15);
}

/** The series of one metric in a scrape's text, as {labels, value}; label values unescaped. */
function series(text: string, name: string): { labels: Record<string, string>; value: number }[] {
  const out: { labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labels: Record<string, string> = {};
    let rest = line.slice(name.length);
    if (rest.startsWith("{")) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/y;
      re.lastIndex = 1;
      for (let m = re.exec(rest); m; m = re.exec(rest)) {
        labels[m[1] as string] = (m[2] as string).replace(/\\(["\\n])/g, (_, c: string) => (c === "n" ? "\n" : c));
        if (rest[re.lastIndex] === "}") break;
      }
      rest = rest.slice(rest.indexOf("} ") + 1);
    }
    const v = rest.trim();
    out.push({
      labels,
      value: v === "+Inf" ? Number.POSITIVE_INFINITY : v === "-Inf" ? Number.NEGATIVE_INFINITY : Number(v),
    });
  }
  return out;
}

function sum(
  list: readonly { labels: Record<string, string>; value: number }[],
  where: Record<string, string>,
): number {
  return list
    .filter((s) => Object.entries(where).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);
}

function promtoolCheck(text: string): void {
  assert.ok(text.includes("# TYPE tcpka_connections gauge"), "a scrape with tcpka's metrics");
  const r = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
  assert.equal(r.status, 0, `promtool check metrics: ${r.stdout}${r.stderr}`);
}

/** Connections of a renamed python3 (named_conns.py), started in `ns` or on the host; its pid and port. */
async function namedConns(
  scope: Scope,
  where: Netns | undefined,
  name: string,
  target: string,
  n: number,
  ka?: [number, number, number],
): Promise<{ p: Process; pid: number; port: number }> {
  const [host, port] = target === "self" ? ["self", "0"] : target.split(":");
  const argv = [python3(), NAMED_CONNS, name, host as string, port as string, String(n), ...(ka ?? []).map(String)];
  const p = where ? where.spawn(argv) : start(scope, argv, { timeoutMs: 180_000 });
  scope.after(() => p.kill());
  const m = await p.waitFor(/^\{.*\}$/m);
  const j = JSON.parse(m[0]) as { pid: number; port: number };
  return { p, pid: j.pid, port: j.port };
}

test("one scrape: promtool-clean, a hostile process name escaped, its connections, port and detection times counted", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "python3", "promtool"] })) return;
  const ns = Netns.create(t);
  // Every character the text format escapes (quote, backslash, newline) and a few it need not.
  const hostile = 'q"\\\n}{=,x';
  const off = await namedConns(t, ns, hostile, "self", 3);
  const onName = commName("tkon");
  const on = await namedConns(t, ns, onName, "self", 2, [2, 1, 3]);
  const r = await tcpka(t, ["metrics", "--once"]);
  assert.equal(r.code, 0, r.stderr);
  promtoolCheck(r.stdout);
  const conns = series(r.stdout, "tcpka_connections");
  // Both ends of each connection are the process's: 3 connections, 6 sockets, none with keepalive.
  assert.equal(sum(conns, { process: hostile, keepalive: "off" }), 6, r.stdout);
  assert.equal(sum(conns, { process: hostile, keepalive: "on" }), 0);
  // The keepalive process: its connecting ends have it (idle 2 s), the accepted ends do not.
  assert.equal(sum(conns, { process: onName, keepalive: "on" }), 2, r.stdout);
  assert.equal(sum(conns, { process: onName, keepalive: "off" }), 2, r.stdout);
  // By service port: the listener's port, for both ends of every connection to it.
  const ports = series(r.stdout, "tcpka_connections_by_port");
  assert.equal(sum(ports, { port: String(off.port), keepalive: "off" }), 6, JSON.stringify(ports));
  assert.equal(sum(ports, { port: String(on.port), keepalive: "on" }), 2, JSON.stringify(ports));
  // Detection: idle 2 + interval 1 × count 3 = 5 s, within the first bucket; the worst is +Inf (keepalive off).
  const le30 = series(r.stdout, "tcpka_dead_peer_detection_seconds_bucket").find((s) => s.labels.le === "30");
  assert.ok((le30?.value ?? 0) >= 2, `le=30: ${JSON.stringify(le30)}`);
  assert.equal(series(r.stdout, "tcpka_dead_peer_detection_worst_seconds")[0]?.value, Number.POSITIVE_INFINITY);
  // The namespace's own counters are there, labelled by its inode number.
  const inum = String(statSync(`/run/netns/${ns.name}`).ino);
  assert.ok(series(r.stdout, "tcpka_keepalive_probes_total").some((s) => s.labels.netns === inum));
  assert.equal(series(r.stdout, "tcpka_exact_settings")[0]?.value, 1);

  // --labels: fewer labels, the same totals; --max-series 1 folds everything into "other".
  const narrow = await tcpka(t, ["metrics", "--once", "--labels", "container", "--max-series", "1"]);
  assert.equal(narrow.code, 0, narrow.stderr);
  promtoolCheck(narrow.stdout);
  const folded = series(narrow.stdout, "tcpka_connections");
  assert.ok(
    folded.every((s) => Object.keys(s.labels).sort().join() === "container,keepalive"),
    JSON.stringify(folded),
  );
  assert.ok(folded.every((s) => s.labels.container === "other" || folded.length <= 3));
  assert.ok(sum(folded, { keepalive: "off" }) >= 6);

  // Bad input: one line, exit 2.
  const bad = await tcpka(t, ["metrics", "--once", "--labels", "pid"]);
  assert.equal(bad.code, 2);
  assert.match(
    bad.stderr,
    /^tcpka: --labels: pid is not a label: one of process, container, pod_namespace, pod, unit, or none$/m,
  );
  const noWhere = await tcpka(t, ["metrics"]);
  assert.equal(noWhere.code, 2);
  assert.match(noWhere.stderr, /where to serve: --listen PORT/);
  const badListen = await tcpka(t, ["metrics", "--listen", "localhost:99999"]);
  assert.equal(badListen.code, 2);
  assert.match(badListen.stderr, /--listen localhost:99999: want PORT or ADDRESS:PORT/);
});

/** A Prometheus server of the test's own, scraping `target` every second; its query API. */
async function startPrometheus(scope: Scope, target: string): Promise<(q: string) => Promise<number | undefined>> {
  const dir = tempDir(scope);
  const config = join(dir, "prometheus.yml");
  writeFileSync(
    config,
    `global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tcpka\n    static_configs:\n      - targets: ["${target}"]\n`,
  );
  const port = await freePort();
  const p = start(
    scope,
    [
      "prometheus",
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    { timeoutMs: 300_000 },
  );
  const base = `http://127.0.0.1:${port}`;
  await until(
    "prometheus to be ready",
    async () => {
      if (!p.running) throw new Error(`prometheus exited: ${p.stderr}`);
      try {
        return (await fetch(`${base}/-/ready`)).ok;
      } catch {
        return false;
      }
    },
    30_000,
  );
  return async (q) => {
    const res = await fetch(`${base}/api/v1/query?query=${encodeURIComponent(q)}`);
    const body = (await res.json()) as { status: string; data?: { result: { value: [number, string] }[] } };
    assert.equal(body.status, "success", `${q}: ${JSON.stringify(body)}`);
    const v = body.data?.result[0]?.value[1];
    return v === undefined ? undefined : Number(v);
  };
}

/** Query until it returns `want` (or `ok` holds), within `timeoutMs`; the last value. */
async function queryUntil(
  query: (q: string) => Promise<number | undefined>,
  q: string,
  ok: (v: number | undefined) => boolean,
  timeoutMs = 20_000,
): Promise<number | undefined> {
  let last: number | undefined;
  try {
    await until(
      `prometheus: ${q}`,
      async () => {
        last = await query(q);
        return ok(last);
      },
      timeoutMs,
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}; it last said ${last}`);
  }
  return last;
}

test("Prometheus scrapes it: connections of a process and a container by keepalive state, probes while idle, the kill after the cable is pulled", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "nft", "python3", "prometheus", "promtool"] })) return;
  if (!needsPodman(t)) return;
  const lab = Lab.create(t);
  const server = lab.start(lab.server, [python3(), LAB_PEER, "serve", "7000"]);
  await server.waitFor(/^listening$/m);
  const offName = commName("tkoff");
  const onName = commName("tkon");
  const N = 3;
  const M = 2;
  await namedConns(t, lab.client, offName, `${SERVER_IP}:7000`, N);
  await namedConns(t, lab.client, onName, `${SERVER_IP}:7000`, M, [2, 1, 3]);
  // A container whose program makes a connection to itself (both ends inside it) and never sets keepalive.
  const image = busyboxImage(t);
  const exe = kaAgentExe(t);
  const c = startContainer(t, image, { mounts: [{ source: exe, target: "/ka_agent" }], cmd: ["/ka_agent", "0"] });
  await KaAgent.inContainer(c).first();
  // And one in the lab's client namespace with a keepalive connection to the server (idle 2 s, 1 s, 3 probes):
  // its probes, their answers and its kill are counted as the container's (--events).
  const connect = compileC(tempDir(t, { readable: true }), "ka_connect.c", "ka_connect", ["-static"]);
  const kc = startContainer(t, image, {
    network: `ns:/run/netns/${lab.client.name}`,
    mounts: [{ source: connect, target: "/ka_connect" }],
    cmd: ["/ka_connect", SERVER_IP, "7000", "2", "1", "3"],
  });
  await until("ka_connect ready in its container", () => /^ready$/m.test(kc.logs()));

  const port = await freePort();
  const metrics = startTcpka(t, ["metrics", "--listen", `127.0.0.1:${port}`, "--events"], { timeoutMs: 300_000 });
  await metrics.waitFor(/metrics at http:\/\/127\.0\.0\.1:\d+\/metrics/, 15_000, "stderr");
  const direct = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  promtoolCheck(direct);
  assert.equal((await fetch(`http://127.0.0.1:${port}/nothing`)).status, 404);
  const query = await startPrometheus(t, `127.0.0.1:${port}`);

  const is = (want: number) => (v: number | undefined) => v === want;
  await queryUntil(query, `sum(tcpka_connections{process="${offName}",keepalive="off"})`, is(N));
  await queryUntil(query, `sum(tcpka_connections{process="${onName}",keepalive="on"})`, is(M));
  await queryUntil(query, `sum(tcpka_connections{container="${c.name}",keepalive="off"})`, is(2));
  await queryUntil(query, `sum(tcpka_connections{container="${c.name}",keepalive="on"})`, (v) => v === undefined);
  await queryUntil(query, `sum(tcpka_connections{container="${kc.name}",keepalive="on"})`, is(1));
  await queryUntil(query, `up{job="tcpka"}`, is(1));
  // The container's own probes, sent and answered, while the path is up (one every 2 s).
  const atLeast = (n: number) => (v: number | undefined) => v !== undefined && v >= n;
  await queryUntil(query, `tcpka_keepalive_probes_sent_total{container="${kc.name}"}`, atLeast(2), 15_000);
  await queryUntil(query, `tcpka_keepalive_probes_answered_total{container="${kc.name}"}`, atLeast(2), 15_000);
  const kcKilled = `tcpka_connections_killed_total{container="${kc.name}",reason="keepalive"}`;
  await queryUntil(query, kcKilled, is(0));

  // The client namespace's probes: M connections idle 2 s each probe about once every 2 s, answered.
  const clientNetns = String(statSync(`/run/netns/${lab.client.name}`).ino);
  const probes = `tcpka_keepalive_probes_total{netns="${clientNetns}"}`;
  const before = await queryUntil(query, probes, (v) => v !== undefined);
  await queryUntil(query, probes, (v) => v !== undefined && v >= (before as number) + 2 * M, 15_000);
  const timedOut = `tcpka_connections_timed_out_total{netns="${clientNetns}"}`;
  const killedBefore = await queryUntil(query, timedOut, (v) => v !== undefined);

  // The cable pulled: probes go unanswered, and after idle + interval × count = 5 s the kernel kills both
  // keepalive connections (ETIMEDOUT); those without keepalive never notice.
  const pulledAt = Date.now();
  lab.pullCable();
  await queryUntil(query, timedOut, (v) => v !== undefined && v >= (killedBefore as number) + M, 20_000);
  // ...and the container's: killed by keepalive, as its program's read() says.
  await queryUntil(query, kcKilled, is(1), 20_000);
  await until("ka_connect's read() to fail", () => /^ended errno=ETIMEDOUT$/m.test(kc.logs()), 10_000);
  await queryUntil(query, `sum(tcpka_connections_killed_total{container="${kc.name}"})`, is(1));
  const killedAfter = (Date.now() - pulledAt) / 1000;
  await queryUntil(query, `sum(tcpka_connections{process="${onName}",keepalive="on"})`, (v) => v === undefined);
  await queryUntil(query, `sum(tcpka_connections{process="${offName}",keepalive="off"})`, is(N));
  t.diagnostic(
    `the kill was seen by Prometheus ${killedAfter.toFixed(1)} s after the cable was pulled (expected 5 s + scrapes)`,
  );
  assert.ok(killedAfter >= 4.5, `killed after ${killedAfter} s: before keepalive could have`);
  lab.restoreCable();
  const scrapeSeconds = await query("tcpka_scrape_duration_seconds");
  assert.ok(scrapeSeconds !== undefined && scrapeSeconds > 0 && scrapeSeconds < 5, `scrape took ${scrapeSeconds} s`);
  await queryUntil(query, "tcpka_scrape_errors_total", is(0));
  metrics.kill();
});

test("the agent's endpoint: its rule's target enforced, the connections set up under it, the same inventory", async (t) => {
  if (!needsAgentHost(t) || !needs(t, { tools: ["promtool"] })) return;
  const exe = kaAgentExe(t);
  const host = await AgentHost.create(t);
  await host.explained(async () => {
    const cg = TestCgroup.create(t);
    const dir = tempDir(t);
    const policy = join(dir, "policy.yaml");
    writeFileSync(
      policy,
      `rules:\n  - name: mine\n    match: {cgroup: ${cg.path}}\n    keepalive: {idle: 9s, interval: 3s, count: 4}\n`,
    );
    const port = await freePort();
    const agent = await host.startAgent(policy, { extra: ["--metrics", `127.0.0.1:${port}`] });
    await agent.waitLog(new RegExp(`^metrics at http://127\\.0\\.0\\.1:${port}/metrics$`, "m"), 0);
    const k = KaAgent.inCgroup(t, cg, exe);
    await k.first();
    await agent.waitLog(/^enforcing rule mine on /m, 0);
    await k.report(); // one more connection, set up under the enforcement (the first one was changed by the pass)
    const text = await until(
      "the agent's metrics to show the connection set up",
      async () => {
        const body = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        return sum(series(body, "tcpka_agent_connections_set_up_total"), { rule: "mine" }) >= 1 ? body : undefined;
      },
      15_000,
    );
    promtoolCheck(text);
    assert.equal(sum(series(text, "tcpka_agent_targets"), { rule: "mine", state: "enforced" }), 1, text);
    assert.equal(sum(series(text, "tcpka_agent_targets"), { rule: "mine", state: "failing" }), 0);
    assert.equal(series(text, "tcpka_agent_up")[0]?.value, 1);
    assert.equal(series(text, "tcpka_agent_rules")[0]?.value, 1);
    assert.equal(series(text, "tcpka_agent_policy_errors")[0]?.value, 0);
    // The inventory is there too: the program's connections, with keepalive on as the rule says.
    assert.ok(sum(series(text, "tcpka_connections"), { process: "ka_agent", keepalive: "on" }) >= 1, text);
    await agent.stop();
  });
});

test("a name in /run/netns whose bind mount is gone fails neither a scrape nor ls --all-netns", async (t) => {
  if (!needs(t, { root: true, tools: ["unshare"] })) return;
  const ns = Netns.create(t);
  const p = ns.spawn([
    python3(),
    "-c",
    "import socket,sys\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\nprint('up', flush=True); sys.stdin.read()",
  ]);
  t.after(() => p.kill());
  await p.waitFor(/^up$/m);
  // In a mount namespace of its own the name's bind mount is taken away: /run/netns/NAME is an empty file there,
  // which `ip netns list` still shows and setns refuses (EINVAL). Every other namespace is counted as before.
  const run = (args: string) =>
    spawnSync(
      "unshare",
      ["--mount", "--propagation", "private", "--", "sh", "-c", `umount /run/netns/${ns.name} && exec ${args}`],
      { encoding: "utf8", maxBuffer: 1 << 28 },
    );
  const scrape = run(`${process.execPath} ${TCPKA} metrics --once`);
  assert.equal(scrape.status, 0, scrape.stderr);
  assert.doesNotMatch(scrape.stderr, /failed/, scrape.stderr);
  assert.match(scrape.stdout, /^tcpka_scrape_errors_total 0$/m);
  assert.match(scrape.stdout, /^tcpka_network_namespaces \d+$/m);
  const ls = run(`${process.execPath} ${TCPKA} ls --all-netns --json`);
  assert.equal(ls.status, 0, ls.stderr);
  assert.doesNotMatch(ls.stderr, /EINVAL/);
});
