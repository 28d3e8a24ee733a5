/**
 * `npm run bench` (as root): builds, then runs the benchmarks and prints their tables in Markdown.
 *
 *   ls       issue 13's table: tcpka ls (JSON, table, --no-process, --via netlink) against ss -tnoep and ss -tnoe
 *            with 20,000 and 100,000 sockets, where tcpka's time goes (phases.ts), and --all-netns with
 *            100,000 sockets in 50 network namespaces against as many in one (ls.ts, hosts.ts)
 *   shim     the LD_PRELOAD shim's cost per connection against the program's own setsockopt calls (shim.ts)
 *   enable   tcpka enable on 10,000 and 50,000 live sockets (enable.ts, its own process)
 *   enforce  connections per second in a cgroup with and without tcpka enforce (enforce.ts, its own process)
 *   agent    tcpka agent's own CPU, idle with 100,000 connections under it and 200 processes starting a second
 *            (agent.ts, its own process)
 *   metrics  a scrape of 100,000 connections beside `ss -tnoe`, and the endpoint's CPU at one scrape every 15 s
 *            (metrics.ts, its own process); then the same with 50 one-connection network namespaces beside them,
 *            and with the sockets and the endpoint in a namespace of their own (--own-netns)
 *   walk-floor  the kernel walks under a scrape alone, at 100,000 sockets (walk-floor.ts, its own process)
 *   watch    loopback connections per second with and without `tcpka watch` (watch.ts, its own process)
 *
 * Environment:
 *   BENCH_ONLY         a comma-separated subset of ls,shim,enable,enforce,agent,metrics,walk-floor,watch (default: all eight)
 *   BENCH_SOCKETS      ls: socket counts (default 20000,100000); the smallest and the largest are the issue's
 *                      20,000 and 100,000
 *   BENCH_RUNS         ls: timed rounds per command (7), after one warm-up round
 *   BENCH_PHASE_RUNS   ls: phases.js processes per path, bpf and netlink (3)
 *   BENCH_NETNS        ls: network namespaces of the whole-host comparison (50; 0: none)
 *   BENCH_NETNS_SOCKETS  ls: sockets of the whole-host comparison, in each of its two hosts (100000)
 *   BENCH_NETNS_EHASH  ls: net.ipv4.tcp_child_ehash_entries while the whole host's namespaces are made (0: the
 *                      host's one established hash, shared; N: each namespace gets a hash of its own, N buckets)
 *   BENCH_SHIM_N       shim: connections per run at most (200000)
 *   BENCH_SHIM_SECONDS shim: seconds per run at most (0.5)
 *   BENCH_SHIM_RUNS    shim: runs per variant (60)
 *   BENCH_SHIM_CALLGRIND_N  shim: connections per callgrind run (5000; 0: no callgrind)
 *   BENCH_JSON         a file to write all raw results to
 *
 * Every process the bench starts is waited for; the socket holders are killed by pid on every exit path (and exit
 * by themselves when the bench dies, as their stdin is a pipe from it or from their host's init), and the network
 * namespaces the bench makes are removed. No sysctl is changed.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { HolderPool } from "./holders.js";
import { benchLs, type LsResult, reportLs } from "./ls.js";
import { benchShim, reportShim, type ShimResult } from "./shim.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url)); // dist-test/bench -> project root
const env = (name: string, dflt: string) => process.env[name] || dflt;
const ONLY = new Set(env("BENCH_ONLY", "ls,shim,enable,enforce,agent,metrics,walk-floor,watch").split(","));

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  return (r.stdout || r.stderr || "").trim();
}

function machine(): Record<string, string> {
  const changed = spawnSync("git", ["-C", ROOT, "status", "--porcelain", "src", "native"], { encoding: "utf8" })
    .stdout.split("\n")
    .filter(Boolean)
    .map((l) => l.slice(3));
  return {
    date: new Date().toISOString(),
    nproc: sh("nproc", []),
    cpu: cpus()[0]?.model ?? "?",
    kernel: sh("uname", ["-r"]),
    node: process.version,
    ss: sh("ss", ["-V"]),
    gcc: sh("gcc", ["-dumpfullversion"]),
    valgrind: sh("sh", ["-c", "valgrind --version 2>/dev/null || echo none"]),
    src:
      `commit ${sh("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"])}` +
      (changed.length ? ` + uncommitted changes to ${changed.join(", ")}` : ""),
  };
}

async function main(): Promise<number> {
  const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
  if (process.geteuid?.() !== 0) {
    log("run as root (tcpka reads other processes' sockets through pidfd_getfd)");
    return 1;
  }
  const netns = Number(env("BENCH_NETNS", "50"));
  const tools = [
    ...(ONLY.has("ls") ? ["python3", "ss", ...(netns > 0 ? ["ip", "unshare", "nsenter", "mount"] : [])] : []),
    ...(ONLY.has("shim") ? ["gcc", "ss"] : []),
  ];
  for (const tool of tools) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) {
      log(`needs ${tool}`);
      return 1;
    }
  }
  const tmp = mkdtempSync(join(tmpdir(), "tcpka-bench-"));
  const pool = new HolderPool(tmp);
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: stopping the socket holders`);
    void pool.stopAll().finally(() => {
      rmSync(tmp, { recursive: true, force: true });
      process.exit(130);
    });
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("exit", () => pool.killAllSync());

  // NODE_EXTRA_CA_CERTS makes every Node process build its whole root certificate store at start-up (~90 ms
  // of CPU on a 2-vCPU VM; nodejs/node#40524), before any of tcpka's code runs, and tcpka speaks no TLS. `sudo
  // tcpka` never sees it (sudo's env_reset), so no command here does; ls also times tcpka and node with it.
  const extraCaCerts = process.env.NODE_EXTRA_CA_CERTS;
  delete process.env.NODE_EXTRA_CA_CERTS;
  const info = machine();
  if (extraCaCerts !== undefined) info.NODE_EXTRA_CA_CERTS = "set here, taken out of every command's environment";
  let ls: LsResult | null = null;
  let shim: ShimResult | null = null;
  try {
    if (ONLY.has("shim")) {
      shim = benchShim({
        root: ROOT,
        tmp,
        n: Number(env("BENCH_SHIM_N", "200000")),
        seconds: Number(env("BENCH_SHIM_SECONDS", "0.5")),
        runs: Number(env("BENCH_SHIM_RUNS", "60")),
        callgrindN: Number(env("BENCH_SHIM_CALLGRIND_N", "5000")),
        log,
      });
      process.stdout.write(`${reportShim(shim)}\n`);
    }
    if (ONLY.has("ls")) {
      ls = await benchLs({
        root: ROOT,
        tmp,
        pool,
        sizes: env("BENCH_SOCKETS", "20000,100000").split(",").map(Number),
        runs: Number(env("BENCH_RUNS", "7")),
        phaseRuns: Number(env("BENCH_PHASE_RUNS", "3")),
        extraCaCerts,
        netns:
          netns > 0
            ? {
                namespaces: netns,
                sockets: Number(env("BENCH_NETNS_SOCKETS", "100000")),
                childEhash: Number(env("BENCH_NETNS_EHASH", "0")),
              }
            : null,
        log,
      });
      process.stdout.write(`${reportLs(ls)}\n`);
    }
    await pool.stopAll();
    // These two are scripts of their own, run as they are run by hand (see the comment at their top).
    const scripts: [string, string[]][] = [
      ["enable", []],
      ["enforce", ["--cycles", "10000", "--rounds", "30"]],
      ["agent", []],
      ["metrics", []],
      ["metrics", ["--netns", "50"]],
      ["metrics", ["--own-netns"]],
      ["walk-floor", []],
      ["watch", []],
    ];
    for (const [name, args] of scripts) {
      if (!ONLY.has(name)) continue;
      const r = spawnSync("node", [join(ROOT, "dist-test", "bench", `${name}.js`), ...args], { stdio: "inherit" });
      if (r.status !== 0) throw new Error(`${name} benchmark failed (${r.status ?? r.signal})`);
    }
  } finally {
    await pool.stopAll();
    rmSync(tmp, { recursive: true, force: true });
  }
  process.stdout.write(
    `Machine: ${Object.entries(info)
      .map(([k, v]) => `${k}: ${v}`)
      .join("; ")}\n`,
  );
  if (process.env.BENCH_JSON)
    writeFileSync(process.env.BENCH_JSON, JSON.stringify({ machine: info, ls, shim }, null, 1));
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
