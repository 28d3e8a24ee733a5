/**
 * The ls benchmark: tcpka against ss with idle ESTABLISHED loopback sockets (10,000 and 100,000 by default),
 * side by side:
 *
 *   (a) tcpka ls --json --no-process   vs  ss -tanoe
 *   (b) tcpka ls --json                vs  ss -tanoep   (owners from /proc/*\/fd; tcpka also reads every socket's
 *                                                       settings exactly through pidfd_getfd + getsockopt)
 *
 * then where tcpka's time goes (phases.ts). Wall time is the median of `runs` interleaved runs, after one
 * uncounted warm-up round, with min and max; peak RSS is the child's ru_maxrss (measure.ts). Output goes to
 * /dev/null. The sockets are held by python3 helpers (holders.ts) on 127.0.0.1 in the host network namespace
 * (ss -e under `ip netns exec` prints an error per socket). No sysctl is changed.
 */
import { spawnSync } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { countAllTcp, countEstablished, type HolderPool } from "./holders.js";
import { type Command, Measurer, type Run, type Stats, stats } from "./measure.js";
import type { PhaseResult } from "./phases.js";

export interface LsOptions {
  root: string;
  tmp: string;
  pool: HolderPool;
  sizes: number[];
  runs: number;
  phaseRuns: number;
  log: (s: string) => void;
}

export interface LsResult {
  sockets: number;
  connections: number;
  holders: number;
  /** established sockets on the host besides the holders' */
  otherEstablished: number;
  /** every TCP socket in any state (listeners, TIME-WAIT...), as ss -a lists them */
  allTcp: number;
  runs: Record<string, Run[]>;
  phases: PhaseResult[];
  checks: string[];
}

interface LsCommand extends Command {
  group: "a" | "b";
  tool: "tcpka" | "ss";
}

function commands(root: string): LsCommand[] {
  const tcpka = ["node", join(root, "bin/tcpka.js"), "ls", "--json"];
  return [
    { name: "tcpka ls --json --no-process", argv: [...tcpka, "--no-process"], group: "a", tool: "tcpka" },
    { name: "ss -tanoe", argv: ["ss", "-tanoe"], group: "a", tool: "ss" },
    { name: "tcpka ls --json", argv: tcpka, group: "b", tool: "tcpka" },
    { name: "ss -tanoep", argv: ["ss", "-tanoep"], group: "b", tool: "ss" },
  ];
}

/** What each phase of phases.ts is, in the order it runs. */
const PHASES: [string, string][] = [
  ["boot", "node start until the first line of phases.js"],
  ["import", "loading tcpka's modules (and koffi, libc)"],
  ["sysctl", "readSystemDefaults()"],
  ["dump_raw", "baseline: the sock_diag dump alone (kernel + read), messages not decoded"],
  ["dump_parse", "readSockets(): the dump + a TcpSocket per socket"],
  ["list_pids", "listPids(): readdir /proc"],
  ["readdir_fd", "baseline: readdir /proc/PID/fd of every process, no readlink"],
  ["find_owners", "findOwners(): readdir + readlinkat per fd + comm; as root from 10,000 fds, the BPF iterator"],
  ["borrow", "SocketBorrower.with() per owned socket: pidfd_getfd + fstat + close"],
  ["read_keepalive", "the same + readKeepAlive() (5 getsockopt)"],
  ["inspect", "inspect(): all of the above once more, with the Connection objects"],
  ["json", "connectionJsonText() + addToSummary() of every connection, through Out to /dev/null"],
];

/**
 * Before anything is timed: tcpka lists every holder socket, and with processes reads every one exactly.
 * Returns a line per command for the report.
 */
function checkOutputs(o: LsOptions, holderSockets: number): string[] {
  const file = join(o.tmp, "out.json");
  const notes: string[] = [];
  for (const c of commands(o.root).filter((x) => x.tool === "tcpka")) {
    const fd = openSync(file, "w");
    try {
      const r = spawnSync(c.argv[0] as string, c.argv.slice(1), { stdio: ["ignore", fd, "pipe"], encoding: "utf8" });
      if (r.status !== 0) throw new Error(`${c.name} exited ${r.status ?? r.signal}: ${r.stderr}`);
    } finally {
      closeSync(fd);
    }
    const out = JSON.parse(readFileSync(file, "utf8")) as { connections: Record<string, unknown>[] };
    const ports = o.pool.ports;
    const ours = out.connections.filter((x) => ports.has(x.local_port as number) || ports.has(x.peer_port as number));
    const exact = ours.filter((x) => x.source === "exact").length;
    if (ours.length !== holderSockets) throw new Error(`${c.name} listed ${ours.length} of ${holderSockets}`);
    if (c.group === "b" && exact !== holderSockets) throw new Error(`${c.name} read ${exact} exactly`);
    notes.push(
      `\`${c.name}\` listed ${out.connections.length} connections, all ${ours.length} of the holders'` +
        (c.group === "b" ? `, each read exactly` : ""),
    );
  }
  return notes;
}

/** phases.js, `phaseRuns` times, each in a fresh node. */
function runPhases(o: LsOptions): PhaseResult[] {
  const out: PhaseResult[] = [];
  for (let i = 0; i < o.phaseRuns; i++) {
    const r = spawnSync("node", [join(o.root, "dist-test/bench/phases.js")], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`phases.js failed: ${r.stderr}`);
    out.push(JSON.parse(r.stdout) as PhaseResult);
  }
  return out;
}

export async function benchLs(o: LsOptions): Promise<LsResult[]> {
  const results: LsResult[] = [];
  const measurer = new Measurer(o.tmp);
  for (const sockets of [...o.sizes].sort((a, b) => a - b)) {
    const t0 = Date.now();
    await o.pool.add(sockets / 2 - o.pool.connections);
    const want = o.pool.connections * 2;
    let [ours, all] = countEstablished(o.pool.ports);
    for (let i = 0; i < 20 && ours !== want; i++) {
      await new Promise((r) => setTimeout(r, 250));
      [ours, all] = countEstablished(o.pool.ports);
    }
    if (ours !== want) throw new Error(`expected ${want} established holder sockets, ss counts ${ours}`);
    o.log(`${ours} holder sockets established in ${o.pool.holders.length} holders (${Date.now() - t0} ms)`);
    const checks = checkOutputs(o, want);
    const cmds = commands(o.root);
    o.log(`measuring ${cmds.length} commands × ${o.runs} runs`);
    const runs = Object.fromEntries(measurer.run(cmds, o.runs));
    o.log("timing phases");
    const phases = runPhases(o);
    results.push({
      sockets: want,
      connections: o.pool.connections,
      holders: o.pool.holders.length,
      otherEstablished: all - ours,
      allTcp: countAllTcp(),
      runs,
      phases,
      checks,
    });
  }
  return results;
}

const fmtMs = (s: Stats) => `${Math.round(s.median)} (${Math.round(s.min)}–${Math.round(s.max)})`;

export function reportLs(r: LsResult, root: string): string {
  const n = (x: number) => x.toLocaleString("en-US");
  const lines = [
    `### ls: ${n(r.sockets)} sockets (${n(r.connections)} loopback connections in ${r.holders} holder process` +
      `${r.holders === 1 ? "" : "es"}; ${r.otherEstablished} other established sockets; ss -a sees ${r.allTcp})`,
    "",
    "| | command | wall ms, median (min–max) | user+sys CPU ms | peak RSS MB, max | wall vs ss |",
    "|---|---|---|---|---|---|",
  ];
  const cmds = commands(root);
  for (const c of cmds) {
    const runs = r.runs[c.name] ?? [];
    const ss = cmds.find((x) => x.group === c.group && x.tool === "ss") as LsCommand;
    const wall = stats(runs.map((x) => x.wall_ms));
    const ssWall = stats((r.runs[ss.name] ?? []).map((x) => x.wall_ms)).median;
    const cpu = stats(runs.map((x) => x.user_ms + x.sys_ms)).median;
    const rss = stats(runs.map((x) => x.maxrss_kb)).max / 1024;
    const ratio = c.tool === "ss" ? "1" : `${(wall.median / ssWall).toFixed(2)}×`;
    lines.push(`| (${c.group}) | \`${c.name}\` | ${fmtMs(wall)} | ${Math.round(cpu)} | ${rss.toFixed(0)} | ${ratio} |`);
  }
  const med = (k: string) => stats(r.phases.map((p) => p.ms[k] ?? 0)).median;
  lines.push(
    "",
    `Where the time goes (phases.ts, median of ${r.phases.length} fresh processes):`,
    "",
    "| phase | ms | µs per socket | what |",
    "|---|---|---|---|",
    ...PHASES.map(
      ([k, what]) =>
        `| ${k} | ${med(k).toFixed(0)} | ${k === "boot" || k === "import" ? "–" : ((med(k) * 1000) / r.sockets).toFixed(2)} | ${what} |`,
    ),
    "",
    `Heap kept (MB): ${Object.keys(r.phases[0]?.heapMb ?? {})
      .map((k) => `${k} ${stats(r.phases.map((p) => p.heapMb[k] ?? 0)).median.toFixed(1)}`)
      .join(", ")}.`,
    "",
    ...r.checks.map((c) => `- check: ${c}`),
    "",
  );
  return lines.join("\n");
}
