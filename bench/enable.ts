/**
 * `tcpka enable` on the live sockets of running processes: 10,000 sockets of one process, and 50,000 sockets.
 * One process cannot hold 50,000 here (the hard RLIMIT_NOFILE is 20,000 and CAP_SYS_RESOURCE is missing), so
 * the 50,000 are held by 3 processes and given as three --pid targets; the work per socket is the same.
 *
 * Both ways of changing sockets run side by side: `--via bpf` (the kernel path: a BPF TCP iterator decides and
 * calls setsockopt in one pass) and `--via pidfd` (pidfd_getfd, inode check, 5 getsockopt, setsockopt, close per
 * socket), each with `--force --idle 3601` and `--idle 3602` in turn, so that every run really changes every
 * socket instead of finding them done, and with `--spread 0` (all at once: the work itself). Then one run of
 * each as tcpka does it by default, spread over the kernel's timer wheel (spread.ts), at a 2 s idle.
 * Each holder keeps both ends of its connections, so N connections are 2N sockets. Everything runs on
 * 127.0.0.1 in the host network namespace; holders are killed at the end, on failure and on SIGINT.
 *
 *   node dist-test/bench/enable.js            (BENCH_RUNS, default 5; BENCH_ENABLE_SOCKETS, default 10000,50000)
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { HolderPool } from "./holders.js";
import { Measurer, stats } from "./measure.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const SIZES = (process.env.BENCH_ENABLE_SOCKETS ?? "10000,50000").split(",").map(Number);
// One holder keeps at most this many connections (2 sockets each) below the 20,000-fd limit.
const PER_HOLDER = 8400;

const tmp = mkdtempSync(join(tmpdir(), "tcpka-bench-enable-"));
const pool = new HolderPool(tmp);
const stop = () => {
  pool.killAllSync();
  rmSync(tmp, { recursive: true, force: true });
};
process.once("SIGINT", () => {
  stop();
  process.exit(130);
});

try {
  const measurer = new Measurer(tmp);
  const rows: string[] = [];
  for (const sockets of SIZES) {
    await pool.stopAll();
    const connections = sockets / 2;
    const holders = Math.ceil(connections / PER_HOLDER);
    for (let i = 0; i < holders; i++) await pool.add(Math.round(connections / holders));
    const pids = pool.holders.flatMap((h) => ["--pid", String(h.pid)]);
    const cmd = (via: string, idle: number, spread = ["--spread", "0"]) => ({
      name: `enable --via ${via} --force --idle ${idle} ${spread.join(" ")}`.trim(),
      argv: [
        "node",
        join(ROOT, "bin/tcpka.js"),
        "enable",
        ...pids,
        "--via",
        via,
        "--force",
        "--idle",
        String(idle),
        ...spread,
        "--quiet",
      ],
    });
    // The work itself, both paths side by side: --spread 0 makes every change at once. An idle time of an hour,
    // not a minute: 50,000 loopback sockets whose keepalive timers all fire in the same tick overflow the
    // loopback backlog (net.core.netdev_max_backlog), probes are lost, and after the count of probes the
    // connections end with ETIMEDOUT, which would leave later runs fewer sockets; the bench ends long before.
    // Each command sets another idle than the one before it, so that every run changes every socket.
    // Node's bare start-up, in the same rounds, shows how fast the machine is at the time (it varies by a third).
    const bare = { name: "node -e 0", argv: ["node", "-e", "0"] };
    const work = [cmd("bpf", 3601), cmd("bpf", 3602), cmd("pidfd", 3601), cmd("pidfd", 3602)];
    const results = measurer.run([...work, bare], RUNS);
    const node = stats((results.get(bare.name) ?? []).map((r) => r.wall_ms));
    for (const via of ["bpf", "pidfd"]) {
      const all = work.filter((c) => c.name.includes(`--via ${via} `)).flatMap((c) => results.get(c.name) ?? []);
      rows.push(row(sockets, via, "at once (--spread 0)", all, node.median));
    }
    // As tcpka does it by default: the changes spread so that no timer tick carries more than half the backlog
    // of probes; for this many sockets at a 2 s idle that takes the whole idle time (spread.ts). One run each:
    // its time is the spread's, not the code's.
    const spreadCmds = [cmd("bpf", 2, []), cmd("pidfd", 3601), cmd("pidfd", 2, [])];
    const spread = measurer.run(spreadCmds, 1, 0); // no warm-up: a second run would find every socket done
    for (const c of [spreadCmds[0], spreadCmds[2]] as const) {
      const via = c?.name.includes("--via bpf") ? "bpf" : "pidfd";
      rows.push(row(sockets, via, "spread (the default), idle 2 s", spread.get(c?.name ?? "") ?? [], node.median));
    }
    for (const r of rows.slice(-4)) console.log(r);
  }
  console.log(
    "\n| sockets | path | changes | wall ms, median (min–max) | µs per socket | peak RSS MB | `node -e 0` ms, median |",
  );
  console.log("|---|---|---|---|---|---|---|");
  for (const r of rows) console.log(r);
} finally {
  await pool.stopAll();
  stop();
}

function row(
  sockets: number,
  via: string,
  how: string,
  runs: readonly { wall_ms: number; maxrss_kb: number }[],
  nodeMs: number,
): string {
  const wall = stats(runs.map((r) => r.wall_ms));
  const rss = stats(runs.map((r) => r.maxrss_kb / 1024));
  return `| ${sockets} | ${via} | ${how} | ${wall.median.toFixed(0)} (${wall.min.toFixed(0)}–${wall.max.toFixed(0)}) | ${((wall.median * 1000) / sockets).toFixed(1)} | ${rss.median.toFixed(0)} | ${nodeMs.toFixed(0)} |`;
}
