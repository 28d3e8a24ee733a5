/**
 * The shim benchmark: what libtcpka.so (native/preload.c and events.c) costs per connection, against what the
 * program's own setsockopt calls would cost. connect-cycle.c, compiled here with gcc -O2, makes loopback connections against
 * its own listener in these variants, interleaved round by round (the first variant rotating):
 *
 *   bare     no keepalive
 *   own      the program sets SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT itself before connect()
 *   shim     bare under LD_PRELOAD=native/build/libtcpka.so with TCPKA_IDLE/INTVL/CNT (strengthen mode)
 *   observe  bare under the shim with TCPKA_MODE=observe: every call goes through the hooks, nothing is set
 *            (a diagnostic: the cost of the interposition alone)
 *
 * Target: shim − bare <= 1.1 × (own − bare), judged on CPU time: the thread's CPU time per connection in a run's
 * median batch of 1,000 connections, median of the runs. Without IRQ time accounting (these kernels) that CPU
 * time includes the loopback softirq work done in the process's context, and it leaves out steal time and the
 * waits for other processes. Wall time is shown too; it moves with whatever else the machine runs. Every run's keepalive options, read back from a client and an accepted socket, are checked.
 * With valgrind, callgrind counts the user-space instructions per connection (the kernel's are not counted).
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { quartiles, type Stats, stats } from "./measure.js";

export const VARIANTS = ["bare", "own", "shim", "observe"] as const;
export type Variant = (typeof VARIANTS)[number];
const KEEPALIVE = { keepalive: 1, idle: 60, interval: 10, count: 5 };

export interface ShimOptions {
  root: string;
  tmp: string;
  /** connections per run at most */
  n: number;
  /** seconds per run at most */
  seconds: number;
  runs: number;
  /** connections per callgrind run; 0: no callgrind */
  callgrindN: number;
  log: (s: string) => void;
}

/** What connect-cycle prints. */
export interface CycleRun {
  connections: number;
  seconds: number;
  batches: number;
  /** per connection, in the median batch */
  wall_ns: number;
  cpu_ns: number;
  client: typeof KEEPALIVE;
  accepted: typeof KEEPALIVE;
}

export interface Callgrind {
  connections: number;
  instructions: number;
  /** [function, object file, instructions]: self cost, largest first */
  functions: [string, string, number][];
}

export interface ShimResult {
  runs: Record<Variant, CycleRun[]>;
  callgrind: Record<Variant, Callgrind> | null;
  checks: string[];
}

function command(o: ShimOptions, exe: string, v: Variant, n: number): { argv: string[]; env: NodeJS.ProcessEnv } {
  const k = KEEPALIVE;
  const argv = [exe, v === "own" ? "own" : "bare", `${n}`, `${o.seconds}`, `${k.idle}`, `${k.interval}`, `${k.count}`];
  if (v === "bare" || v === "own") return { argv, env: process.env };
  const env = {
    ...process.env,
    LD_PRELOAD: join(o.root, "native/build/libtcpka.so"),
    TCPKA_MODE: v === "shim" ? "strengthen" : "observe",
    TCPKA_IDLE: `${k.idle}`,
    TCPKA_INTVL: `${k.interval}`,
    TCPKA_CNT: `${k.count}`,
  };
  return { argv, env };
}

/** Run one variant; check that keepalive is off (bare, observe) or on with the requested values on both ends. */
function run(o: ShimOptions, exe: string, v: Variant, n: number, wrap: string[] = []): CycleRun {
  const { argv, env } = command(o, exe, v, n);
  const [cmd, ...args] = [...wrap, ...argv] as [string, ...string[]];
  const r = spawnSync(cmd, args, { env, encoding: "utf8", timeout: (o.seconds + 300) * 1000 });
  if (r.status !== 0) throw new Error(`${v}: ${cmd} ${args.join(" ")}: ${r.status ?? r.signal} ${r.stderr}`);
  const out = JSON.parse(r.stdout) as CycleRun;
  const off = { keepalive: 0, idle: -1, interval: -1, count: -1 };
  const want = JSON.stringify(v === "own" || v === "shim" ? KEEPALIVE : off);
  for (const end of ["client", "accepted"] as const) {
    if (JSON.stringify(out[end]) !== want) throw new Error(`${v}: the ${end} socket has ${JSON.stringify(out[end])}`);
  }
  return out;
}

/** Instructions inside cycles() (--toggle-collect), in all and per function (callgrind_annotate, self cost). */
function callgrind(o: ShimOptions, exe: string, v: Variant): Callgrind {
  const file = join(o.tmp, `callgrind.${v}`);
  const r = run(o, exe, v, o.callgrindN, [
    "valgrind",
    "--tool=callgrind",
    "--toggle-collect=cycles",
    `--callgrind-out-file=${file}`,
  ]);
  const totals = /^totals: (\d+)/m.exec(readFileSync(file, "utf8"));
  const a = spawnSync("callgrind_annotate", ["--inclusive=no", "--show-percs=no", "--threshold=100", file], {
    encoding: "utf8",
  });
  if (!totals || a.status !== 0) throw new Error(`callgrind ${v}: no totals, or callgrind_annotate: ${a.stderr}`);
  const functions: [string, string, number][] = [];
  for (const line of a.stdout.split("\n")) {
    // "1,404,000  /work/main/native/preload.c:enforce [/work/main/native/build/libtcpka.so]"
    const m = /^\s*([\d,]+)\s+(?:\S+:)?([^\s:]+) \[(.+)\]$/.exec(line);
    if (m) functions.push([m[2] as string, basename(m[3] as string), Number(m[1]?.replaceAll(",", ""))]);
  }
  return { connections: r.connections, instructions: Number(totals[1]), functions };
}

const countTimeWait = () =>
  spawnSync("ss", ["-Htan", "state", "time-wait"], { encoding: "utf8" }).stdout.split("\n").filter(Boolean).length;
const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");

export function benchShim(o: ShimOptions): ShimResult {
  const lib = join(o.root, "native/build/libtcpka.so");
  if (!existsSync(lib)) throw new Error(`${lib} is missing: npm run build (needs a C compiler)`);
  const exe = join(o.tmp, "connect-cycle");
  const src = join(o.root, "bench/connect-cycle.c");
  const cc = spawnSync("gcc", ["-O2", "-Wall", "-Wextra", "-Werror", "-o", exe, src], { encoding: "utf8" });
  if (cc.status !== 0) throw new Error(`gcc failed: ${cc.stderr || cc.error?.message}`);

  const tw0 = countTimeWait();
  const load0 = loadavg();
  const runs: Record<Variant, CycleRun[]> = { bare: [], own: [], shim: [], observe: [] };
  o.log(`shim: ${o.runs} rounds of ${VARIANTS.length} variants, up to ${o.n} connections or ${o.seconds} s each`);
  for (let i = 0; i < o.runs; i++) {
    for (let j = 0; j < VARIANTS.length; j++) {
      const v = VARIANTS[(i + j) % VARIANTS.length] as Variant;
      runs[v].push(run(o, exe, v, o.n));
    }
  }
  const tw1 = countTimeWait();
  if (tw1 - tw0 > 1000) throw new Error(`TIME-WAIT sockets grew from ${tw0} to ${tw1}`);
  const checks = [
    "in every run, keepalive read back from a client and an accepted socket: off for bare and observe, " +
      `on with idle ${KEEPALIVE.idle}, interval ${KEEPALIVE.interval}, count ${KEEPALIVE.count} for own and shim`,
    `TIME-WAIT sockets on the host: ${tw0} before, ${tw1} after; load average ${load0} before, ${loadavg()} after`,
  ];

  let cg: Record<Variant, Callgrind> | null = null;
  if (o.callgrindN > 0 && spawnSync("sh", ["-c", "command -v valgrind"]).status === 0) {
    o.log(`shim: callgrind, ${o.callgrindN} connections per variant`);
    const c = (v: Variant) => callgrind(o, exe, v);
    cg = { bare: c("bare"), own: c("own"), shim: c("shim"), observe: c("observe") };
  } else {
    checks.push(o.callgrindN > 0 ? "valgrind is not installed: no instruction counts" : "callgrind not run");
  }
  return { runs, callgrind: cg, checks };
}

const signed = (x: number) => `${x < 0 ? "−" : "+"}${Math.abs(x).toFixed(0)}`;

export function reportShim(r: ShimResult): string {
  const of = (v: Variant, k: "cpu_ns" | "wall_ns") => stats(r.runs[v].map((x) => x[k]));
  const fmt = (s: Stats) => `${s.median.toFixed(0)} (${s.min.toFixed(0)}–${s.max.toFixed(0)})`;
  const plus = (v: Variant, k: "cpu_ns" | "wall_ns") =>
    v === "bare" ? "–" : signed(of(v, k).median - of("bare", k).median);
  const n = (x: number) => x.toLocaleString("en-US");
  const conns = stats(VARIANTS.flatMap((v) => r.runs[v].map((x) => x.connections)));
  // (shim − bare) / (own − bare) from one statistic of each variant's runs.
  const ratio = (k: "cpu_ns" | "wall_ns", at: (xs: number[]) => number) => {
    const [bare, own, shim] = (["bare", "own", "shim"] as const).map((v) => at(r.runs[v].map((x) => x[k])));
    const x = ((shim as number) - (bare as number)) / ((own as number) - (bare as number));
    return {
      x,
      text: `${x.toFixed(2)}× (${signed((shim as number) - (bare as number))} / ${signed((own as number) - (bare as number))} ns)`,
    };
  };
  const median = (xs: number[]) => stats(xs).median;
  const q1 = (xs: number[]) => quartiles(xs)[0];
  // A run in which the program's own calls came out no dearer than none at all (the VM changed speed during it)
  // says nothing about the ratio: it is no verdict, not a met target.
  const ownCost = median(r.runs.own.map((x) => x.cpu_ns)) - median(r.runs.bare.map((x) => x.cpu_ns));
  const verdict =
    ownCost <= 0
      ? "not measurable in this run (own − bare ≤ 0: too noisy)"
      : ratio("cpu_ns", median).x <= 1.1
        ? "met"
        : "missed";
  // Round by round (the runs of a round ran one after the other): shim − own against 10 % of own − bare.
  const round = (a: Variant, b: Variant) => r.runs[a].map((x, i) => x.cpu_ns - (r.runs[b][i] as CycleRun).cpu_ns);
  const excess = quartiles(round("shim", "own"));
  const allowed = 0.1 * median(round("own", "bare"));
  const lines = [
    `### shim: loopback connect + accept + close, ${r.runs.bare.length} runs per variant of ` +
      `${n(conns.min)}–${n(conns.max)} connections`,
    "",
    "| variant | CPU ns per connection, median (min–max) | vs bare | wall ns per connection, median (min–max) | vs bare |",
    "|---|---|---|---|---|",
    ...VARIANTS.map(
      (v) =>
        `| ${v} | ${fmt(of(v, "cpu_ns"))} | ${plus(v, "cpu_ns")} | ${fmt(of(v, "wall_ns"))} | ${plus(v, "wall_ns")} |`,
    ),
    "",
    "| (shim − bare) / (own − bare), target at most 1.10× | CPU time | wall time |",
    "|---|---|---|",
    `| from the medians of the runs | **${ratio("cpu_ns", median).text}** | ${ratio("wall_ns", median).text} |`,
    `| from the lower quartiles (interference only adds time) | ${ratio("cpu_ns", q1).text} | ${ratio("wall_ns", q1).text} |`,
    "",
    `Target ${verdict} (CPU medians). Round by round, shim − own is ${signed(excess[1])} ns CPU (quartiles ` +
      `${signed(excess[0])} to ${signed(excess[2])}) against an allowance of 10 % × (own − bare) = ${allowed.toFixed(0)} ns.`,
    "",
  ];
  const cg = r.callgrind;
  if (cg) {
    const per = (v: Variant) => cg[v].instructions / cg[v].connections;
    const top = cg.shim.functions.filter(([, , ir]) => ir / cg.shim.connections >= 1);
    lines.push(
      `User-space instructions per connection (callgrind, ${n(cg.bare.connections)} connections per variant):`,
      "",
      `| | ${VARIANTS.join(" | ")} |`,
      `|---|${VARIANTS.map(() => "---").join("|")}|`,
      `| instructions | ${VARIANTS.map((v) => per(v).toFixed(0)).join(" | ")} |`,
      `| vs bare | ${VARIANTS.map((v) => (v === "bare" ? "–" : signed(per(v) - per("bare")))).join(" | ")} |`,
      "",
      `Where the shim variant's go (self cost per connection): ${top
        .map(([f, obj, ir]) => `${f} (${obj}) ${(ir / cg.shim.connections).toFixed(0)}`)
        .join(", ")}.`,
      "",
    );
  }
  lines.push(...r.checks.map((c) => `- check: ${c}`), "");
  return lines.join("\n");
}
