/**
 * What `tcpka watch` costs the connections it watches (issue 17: no more than a tracepoint would): loopback
 * connections per second and CPU per connection (bench/enforce-cycle.c: socket, connect, accept, close — every
 * packet of each goes through net_dev_queue, each established segment through tcp_probe, each close through
 * inet_sock_set_state, the three tracepoints watch's programs run on for every socket of the host) with and
 * without `tcpka watch` running, interleaved, in a network namespace of its own, pinned to one CPU. And what
 * every other system call of the host pays while watch traces programs' setsockopt (the syscall trace events
 * put every system call on the traced path): getpid() through syscall(2) in a loop (bench/syscall-cycle.c),
 * without watch, with `watch --no-setsockopt`, and with watch, in turn.
 *
 *   node dist-test/bench/watch.js [--cycles 20000] [--rounds 7]
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Netns } from "../test/helpers/netns.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values } = parseArgs({
  options: { cycles: { type: "string", default: "20000" }, rounds: { type: "string", default: "7" } },
});
const CYCLES = Number(values.cycles);
const ROUNDS = Number(values.rounds);

interface Run {
  per_second: number;
  batch_per_second: number;
  cpu_us: number;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

async function main(): Promise<void> {
  const log = (s: string) => process.stderr.write(`bench watch: ${s}\n`);
  const tmp = mkdtempSync(join(tmpdir(), "tcpka-bench-watch-"));
  const ns = Netns.create();
  try {
    const bin = join(tmp, "enforce-cycle");
    const cc = spawnSync("gcc", ["-O2", "-Wall", "-Werror", "-o", bin, join(ROOT, "bench", "enforce-cycle.c")], {
      encoding: "utf8",
    });
    if (cc.status !== 0) throw new Error(`gcc: ${cc.stderr}`);
    const sysBin = join(tmp, "syscall-cycle");
    const cc2 = spawnSync("gcc", ["-O2", "-Wall", "-Werror", "-o", sysBin, join(ROOT, "bench", "syscall-cycle.c")], {
      encoding: "utf8",
    });
    if (cc2.status !== 0) throw new Error(`gcc: ${cc2.stderr}`);
    const getpidNs = (): number => {
      const p = spawnSync("taskset", ["-c", "1", sysBin, "2000000"], { encoding: "utf8", timeout: 60_000 });
      if (p.status !== 0) throw new Error(`syscall-cycle: ${p.stderr}`);
      return (JSON.parse(p.stdout) as { ns_per_call: number }).ns_per_call;
    };
    const syscallNs: Record<"none" | "light" | "full", number[]> = { none: [], light: [], full: [] };
    const cycle = (): Run => {
      const p = spawnSync("ip", ["netns", "exec", ns.name, "taskset", "-c", "1", bin, String(CYCLES)], {
        encoding: "utf8",
        timeout: 600_000,
      });
      if (p.status !== 0) throw new Error(`enforce-cycle: ${p.stderr}`);
      return JSON.parse(p.stdout) as Run;
    };
    const without: Run[] = [];
    const withWatch: Run[] = [];
    let events = 0;
    /** `tcpka watch` with `flags` running while `work` runs. */
    const whileWatching = async <T>(flags: string[], work: () => T): Promise<T> => {
      const w = spawn("node", [join(ROOT, "bin", "tcpka.js"), "watch", "--json", ...flags], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let err = "";
      w.stderr.on("data", (b: Buffer) => {
        err += b.toString();
      });
      w.stdout.on("data", (b: Buffer) => {
        events += b.toString().split("\n").length - 1;
      });
      try {
        for (let i = 0; !err.includes("tracing keepalive"); i++) {
          if (i > 300) throw new Error(`tcpka watch did not start: ${err}`);
          await new Promise((r) => setTimeout(r, 50));
        }
        return work();
      } finally {
        w.kill("SIGTERM");
        await new Promise((r) => w.once("exit", r));
      }
    };
    for (let round = 0; round < ROUNDS; round++) {
      without.push(cycle());
      syscallNs.none.push(getpidNs());
      withWatch.push(await whileWatching([], cycle));
      syscallNs.full.push(await whileWatching([], getpidNs));
      syscallNs.light.push(await whileWatching(["--no-setsockopt"], getpidNs));
      log(
        `round ${round + 1}: without ${without.at(-1)?.batch_per_second.toFixed(0)}/s, with ${withWatch.at(-1)?.batch_per_second.toFixed(0)}/s`,
      );
    }
    const rate = (rs: Run[]) => median(rs.map((r) => r.batch_per_second));
    const cpu = (rs: Run[]) => median(rs.map((r) => r.cpu_us));
    const ratios = withWatch.map((r, i) => (without[i] as Run).batch_per_second / r.batch_per_second);
    process.stdout.write(
      [
        "### tcpka watch: what it costs the connections (bench/watch.ts)",
        "",
        `Command: \`node dist-test/bench/watch.js --cycles ${CYCLES} --rounds ${ROUNDS}\``,
        "",
        "| what | without watch | with tcpka watch |",
        "|---|---|---|",
        `| loopback connections per second (median of ${ROUNDS}, batches of 1000) | ${rate(without).toFixed(0)} | ${rate(withWatch).toFixed(0)} |`,
        `| CPU per connection (whole handshake and close, softirqs included) | ${cpu(without).toFixed(2)} µs | ${cpu(withWatch).toFixed(2)} µs |`,
        `| slowdown, pair by pair, median | | ${((median(ratios) - 1) * 100).toFixed(1)} % |`,
        `| events watch printed meanwhile (none of these connections idles) | | ${events} |`,
        "",
        "| getpid() through syscall(2), ns per call (median of rounds) | without watch | `watch --no-setsockopt` | `tcpka watch` |",
        "|---|---|---|---|",
        `| | ${median(syscallNs.none).toFixed(1)} | ${median(syscallNs.light).toFixed(1)} | ${median(syscallNs.full).toFixed(1)} |`,
        `| added, pair by pair, median | | ${median(syscallNs.light.map((v, i) => v - (syscallNs.none[i] as number))).toFixed(1)} | ${median(syscallNs.full.map((v, i) => v - (syscallNs.none[i] as number))).toFixed(1)} |`,
        "",
      ].join("\n"),
    );
  } finally {
    ns.destroy();
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench watch: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
