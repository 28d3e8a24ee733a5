/**
 * `tcpka enable` on the live sockets of running processes: 10,000 sockets of one process, and 50,000 sockets.
 * One process cannot hold 50,000 here (the hard RLIMIT_NOFILE is 20,000 and CAP_SYS_RESOURCE is missing), so
 * the 50,000 are held by 3 processes and given as three --pid targets; the work per socket is the same.
 *
 * Two commands alternate, `--force --idle 3601` and `--force --idle 3602`, so that every run really changes every
 * socket (pidfd_getfd, inode check, 5 getsockopt, 1 setsockopt, close) instead of finding them done.
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
    const cmd = (idle: number) => ({
      name: `enable --force --idle ${idle}`,
      argv: ["node", join(ROOT, "bin/tcpka.js"), "enable", ...pids, "--force", "--idle", String(idle), "--quiet"],
    });
    // An idle time of an hour, not a minute: 50,000 loopback sockets whose keepalive timers all fire in the same
    // tick overflow the loopback backlog (net.core.netdev_max_backlog), probes are lost, and after the count of
    // probes the connections end with ETIMEDOUT, which would leave later runs fewer sockets.
    // Node's bare start-up, in the same rounds, shows how fast the machine is at the time (it varies by a third).
    const bare = { name: "node -e 0", argv: ["node", "-e", "0"] };
    const results = measurer.run([cmd(3601), cmd(3602), bare], RUNS);
    const node = stats((results.get(bare.name) ?? []).map((r) => r.wall_ms));
    results.delete(bare.name);
    const all = [...results.values()].flat();
    const wall = stats(all.map((r) => r.wall_ms));
    const rss = stats(all.map((r) => r.maxrss_kb / 1024));
    const line = `| ${pool.connections * 2} | ${pool.holders.length} | ${wall.median.toFixed(0)} (${wall.min.toFixed(0)}–${wall.max.toFixed(0)}) | ${((wall.median * 1000) / (pool.connections * 2)).toFixed(1)} | ${rss.median.toFixed(0)} | ${node.median.toFixed(0)} |`;
    rows.push(line);
    console.log(line);
  }
  console.log(
    "\n| sockets | processes | wall ms, median (min–max) | µs per socket | peak RSS MB | `node -e 0` ms, median |",
  );
  console.log("|---|---|---|---|---|---|");
  for (const r of rows) console.log(r);
} finally {
  await pool.stopAll();
  stop();
}
