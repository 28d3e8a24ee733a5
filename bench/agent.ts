/**
 * The agent's own cost (issue 16): `tcpka agent` idle on a host with 100,000 connections and 200 processes
 * starting every second, as a share of one CPU (target: under 1 %), and what its start costs.
 *
 * Set-up: 50,000 loopback connections (100,000 sockets) held by holder processes (holders.ts) in a cgroup of their
 * own, which the policy's first rule selects, so that every one of them is under an enforcement the agent
 * adopted; a python3 spawner in a second cgroup starts /bin/true at the given rate (posix_spawn, reaped as they
 * end; a rule selects it by cgroup, so each resync also plans that cgroup's short-lived processes); a third rule
 * selects containers by name and matches nothing (the runtimes' records are read each time anyway). The agent
 * runs as it is run by hand (`tcpka agent --policy FILE`, resync 30 s by default). Its CPU time (user + system,
 * every thread: /proc/PID/stat) is read after its start-up reconcile and again after the measured window: the
 * share is their difference over the window's wall time. Everything it made is removed at the end, the cgroups
 * too; the holders and the spawner are killed by pid on every exit path. With --by-process, a rule by process
 * name comes first (it matches nothing here): every exec the kernel reports is then read and matched.
 *
 *   node dist-test/bench/agent.js [--seconds 90] [--connections 50000] [--rate 200] [--resync 30s] [--by-process]
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { HolderPool } from "./holders.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "90" },
    connections: { type: "string", default: "50000" },
    rate: { type: "string", default: "200" },
    resync: { type: "string", default: "30s" },
    "by-process": { type: "boolean", default: false },
  },
});
const SECONDS = Number(values.seconds);
const CONNECTIONS = Number(values.connections);
const RATE = Number(values.rate);

// Starts /bin/true at `rate` per second (posix_spawn; each reaped as it ends) until killed; prints how many it has
// started, every second.
const SPAWNER = `
import os, sys, time
rate = float(sys.argv[1])
n, t0, told = 0, time.monotonic(), 0
while True:
    now = time.monotonic() - t0
    n = max(n, int(now * rate - rate))  # behind by more than a second (the CPUs were busy): no burst to catch up
    while n < int(now * rate):
        os.posix_spawn("/bin/true", ["true"], os.environ)
        n += 1
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    if now - told >= 1:
        print(n, flush=True)
        told = now
    time.sleep(0.002)
`;

/** user + system CPU seconds of a process, all its threads (fields 14 and 15 of /proc/PID/stat, in USER_HZ). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

function cgroup2Mount(): string {
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const dash = line.indexOf(" - ");
    if (dash > 0 && line.slice(dash + 3).startsWith("cgroup2 ")) return line.slice(0, dash).split(" ")[4] as string;
  }
  throw new Error("no cgroup2 mount");
}

async function main(): Promise<void> {
  const log = (s: string) => process.stderr.write(`bench agent: ${s}\n`);
  const tmp = mkdtempSync(join(tmpdir(), "tcpka-bench-agent-"));
  const pool = new HolderPool(tmp);
  const mount = cgroup2Mount();
  const tag = `tcpka-bench-agent-${process.pid}`;
  const held = join(mount, `${tag}-held`);
  const churn = join(mount, `${tag}-churn`);
  const children: number[] = [];
  const cleanup = () => {
    for (const pid of children) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* gone */
      }
    }
    pool.killAllSync();
    for (const cg of [held, churn]) {
      spawnSyncTcpka(["enforce", "--remove", "--cgroup", cg.slice(mount.length)]);
      for (let i = 0; i < 50; i++) {
        try {
          rmdirSync(cg);
          break;
        } catch {
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20); // its processes are still exiting
        }
      }
    }
    rmSync(tmp, { recursive: true, force: true });
  };
  process.once("SIGINT", () => {
    cleanup();
    process.exit(130);
  });
  try {
    mkdirSync(held);
    mkdirSync(churn);
    const t0 = Date.now();
    await pool.add(CONNECTIONS);
    for (const h of pool.holders) writeFileSync(join(held, "cgroup.procs"), String(h.pid));
    log(`${CONNECTIONS * 2} sockets held in ${pool.holders.length} holders (${Date.now() - t0} ms)`);
    const policy = join(tmp, "policy.yaml");
    writeFileSync(
      policy,
      `rules:
${values["by-process"] ? "  - name: by-name\n    match: {process: {name: no-such-daemon}}\n    keepalive: {idle: 60s}\n" : ""}  - name: held
    match: {cgroup: ${held.slice(mount.length)}}
    keepalive: {idle: 60s, interval: 10s, count: 6}
  - name: churn
    match: {cgroup: ${churn.slice(mount.length)}}
    keepalive: {idle: 60s}
  - name: billing
    match: {container: {name: "billing-*"}}
    keepalive: {for: azure-lb}
`,
    );
    const spawner = spawn(
      "sh",
      ["-c", `echo $$ > ${join(churn, "cgroup.procs")} && exec python3 -c '${SPAWNER}' ${RATE}`],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    children.push(spawner.pid as number);
    let spawned = 0;
    spawner.stdout.on("data", (b: Buffer) => {
      const counts = b.toString().trim().split("\n");
      spawned = Number(counts[counts.length - 1]);
    });
    const agent = spawn(
      "node",
      [join(ROOT, "bin", "tcpka.js"), "agent", "--policy", policy, "--resync", values.resync as string],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    children.push(agent.pid as number);
    const lines: { at: number; text: string }[] = [];
    let buffered = "";
    agent.stdout.on("data", (b: Buffer) => {
      buffered += b.toString();
      for (let i = buffered.indexOf("\n"); i >= 0; i = buffered.indexOf("\n")) {
        lines.push({ at: Date.now(), text: buffered.slice(0, i) });
        buffered = buffered.slice(i + 1);
      }
    });
    const started = Date.now();
    while (!lines.some((l) => l.text.startsWith("reconciled (start)"))) {
      if (Date.now() - started > 120_000)
        throw new Error(`the agent did not reconcile: ${lines.map((l) => l.text).join(" | ")}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const startLine = lines.find((l) => l.text.startsWith("reconciled (start)"))?.text ?? "";
    const reconciledAt = Date.now();
    // The existing connections are changed behind the reconcile, paced over up to an idle time: measure after.
    while (
      !lines.some((l) => /existing connections (changed|could not)/.test(l.text) && l.text.includes("rule held"))
    ) {
      if (Date.now() - started > 300_000)
        throw new Error(`the existing pass did not end: ${lines.map((l) => l.text).join(" | ")}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const passLine = lines.find((l) => l.text.includes("rule held") && /existing connections/.test(l.text));
    const passMs = (passLine?.at ?? reconciledAt) - reconciledAt;
    const startCpu = cpuSeconds(agent.pid as number);
    log(`agent started: ${startLine} (${startCpu.toFixed(2)} s CPU so far); measuring ${SECONDS} s`);
    await new Promise((r) => setTimeout(r, 3000)); // the start-up's own garbage collection and JIT settle
    const c0 = cpuSeconds(agent.pid as number);
    const w0 = Date.now();
    const s0 = spawned;
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    const c1 = cpuSeconds(agent.pid as number);
    const w1 = Date.now();
    const rate = (spawned - s0) / ((w1 - w0) / 1000);
    log(
      `spawned ${s0} → ${spawned}; lines in the window: ${[...new Set(lines.filter((l) => l.at >= w0 && l.at <= w1).map((l) => l.text.replace(/\d+/g, "N")))].join(" | ")}`,
    );
    const during = lines.filter((l) => l.at >= w0 && l.at <= w1);
    log("stopping the agent");
    agent.kill("SIGTERM");
    if (agent.exitCode === null && agent.signalCode === null) await new Promise((r) => agent.once("exit", r));
    log("stopping the spawner");
    spawner.kill("SIGTERM");
    if (spawner.exitCode === null && spawner.signalCode === null) await new Promise((r) => spawner.once("exit", r));
    const share = ((c1 - c0) / ((w1 - w0) / 1000)) * 100;
    process.stdout.write(
      [
        "### tcpka agent: its own cost (bench/agent.ts)",
        "",
        `Command: \`node dist-test/bench/agent.js --seconds ${SECONDS} --connections ${CONNECTIONS} --rate ${RATE} --resync ${values.resync}${values["by-process"] ? " --by-process" : ""}\``,
        "",
        "| what | value |",
        "|---|---|",
        `| sockets under the agent's enforcement (held, idle) | ${CONNECTIONS * 2} |`,
        `| processes started per second (achieved) | ${rate.toFixed(0)} |`,
        `| resync | ${values.resync} |`,
        `| a rule by process name first (every exec read and matched) | ${values["by-process"] ? "yes" : "no"} |`,
        `| the start-up reconcile (enforcements made) | ${startLine.replace(/^reconciled \(start\) in /, "").split(":")[0]} |`,
        `| then the existing-connections pass behind it (${CONNECTIONS * 2} sockets, paced over the timer wheel) | ${(passMs / 1000).toFixed(1)} s: ${passLine?.text.replace(/^rule held on [^:]*: /, "") ?? "?"} |`,
        `| agent CPU until then, Node's start included | ${startCpu.toFixed(2)} s |`,
        `| agent CPU over ${((w1 - w0) / 1000).toFixed(0)} s idle (user + system, every thread) | ${(c1 - c0).toFixed(2)} s |`,
        `| **share of one CPU** (target < 1 %) | **${share.toFixed(2)} %** |`,
        `| lines the agent logged in the window (a resync that changes nothing logs none) | ${during.length} |`,
        "",
      ].join("\n"),
    );
  } finally {
    cleanup();
  }
}

/** What the agent left pinned (it leaves its enforcements in force when it stops, by design), removed. */
function spawnSyncTcpka(args: string[]): void {
  spawnSync("node", [join(ROOT, "bin", "tcpka.js"), ...args], { stdio: "ignore" });
}

main().catch((e: unknown) => {
  process.stderr.write(`bench agent: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
