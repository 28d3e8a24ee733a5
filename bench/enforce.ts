/**
 * The cost of `tcpka enforce` on connection setup. Issue: "Connections per second (connect/accept/close on loopback)
 * inside the cgroup with and without enforcement: target overhead under 5%".
 *
 *   npm run build && npm run build:test && node dist-test/bench/enforce.js [--cycles N] [--rounds R] [--json FILE]
 *
 * As root. bench/enforce-cycle.c (compiled with gcc -O2 into a temporary directory) makes N loopback connections
 * (socket + connect + accept + close both ends, SO_LINGER 0: no TIME-WAIT) in one thread pinned to one CPU
 * (taskset), inside a fresh cgroup (tcpka-t-<pid>-<random> under the cgroup2 mount) and a fresh network namespace
 * (loopback only, no firewall rules). Both ends of every connection are in the cgroup, so the program runs for both.
 * Variants: no enforcement; `tcpka enforce --force`; `tcpka enforce` (strengthen: bpf_getsockopt before each time
 * and count), both with --idle 60s --interval 10s --count 6; and three references: an empty sock_ops program (the
 * floor of any sock_ops mechanism: the kernel calls it at every TCP event), tcpka's program with no setting but
 * SO_KEEPALIVE (what turning keepalive on costs at all: a keepalive timer on both ends), and the program setting the
 * same options itself with setsockopt (what keepalive costs without BPF). The enforcement is made before a run and
 * removed after it, so its setup is not timed; the program's own clock times only its N cycles (after 1000 warm-up
 * cycles), wall time and CPU time. Runs are interleaved round by round, the order rotating every round, after one
 * round that is not counted, so a slow period of the machine hits every variant alike. Every run checks from inside
 * that its sockets did (or did not) get the settings. Reports per variant the median, min and max connections per
 * second over the rounds, and the overhead against no enforcement: of the medians, and the median of each round's
 * paired overhead (wall and CPU).
 *
 * Cleans up on every exit path: the enforcement (tcpka enforce --remove), the cgroup, the namespace, the directory.
 */
import { spawn, spawnSync } from "node:child_process";
import { closeSync, constants, existsSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { assemble, type Instruction, Mov, Mov32, R0, R1, R2, Return, StoreMem } from "../src/bpf/asm.js";
import { keepaliveProgram } from "../src/bpf/keepalive.js";
import { pinName } from "../src/enforce/cgroup.js";
import {
  BPF_CGROUP_SETSOCKOPT,
  BPF_CGROUP_SOCK_OPS,
  BPF_PROG_TYPE_CGROUP_SOCKOPT,
  BPF_PROG_TYPE_SOCK_OPS,
} from "../src/kernel/constants.js";
import { enableRunTimeStats, linkCreate, progId, progLoad, progRunStats } from "../src/sys/bpf.js";
import { TestCgroup } from "../test/helpers/cgroup.js";
import { bpffsRestorer } from "../test/helpers/enforce.js";
import { Netns } from "../test/helpers/netns.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url)); // dist-test/bench -> project root
const TCPKA = join(ROOT, "bin", "tcpka.js");
const SETTINGS = ["--idle", "60s", "--interval", "10s", "--count", "6"];
const WANT = { keepalive: 1, idle: 60, interval: 10, count: 6 };
/** How often a timed run samples its programs' run time, and the fewest runs an interval must have to count. */
const SAMPLE_MS = 20;
const MIN_SAMPLE_RUNS = 2000;
/** Interleaved runs of sockopt-cycle per variant. */
const SOCKOPT_ROUNDS = Number(process.env.BENCH_SOCKOPT_ROUNDS ?? 9);

interface SockoptRun {
  nodelay_ns: number;
  keepidle_ns: number;
  keepalive_ns: number;
  idle: number;
  hook_ns_per_run?: number;
}

/** enforce-cycle's warm-up cycles before the counted ones. */
const WARMUP = 1000;
/** Rounds with the kernel timing every program run (after the others). */
const TIMED_ROUNDS = Number(process.env.BENCH_TIMED_ROUNDS ?? 11);
/** The CPU the loop runs on: the last one, away from where interrupts and the shell tend to run. */
const CPU = String(cpus().length - 1);

/** What a variant attached: how to take it off, and the ids of its BPF programs (for their run times). */
interface Attached {
  detach: () => void;
  progs: number[];
}

interface Variant {
  name: string;
  /** what to attach before a run, or nothing */
  attach?: (cg: TestCgroup) => Attached;
  /** enforce-cycle's own arguments after N */
  own?: boolean;
  /** what its sockets must end up with */
  want: Opts;
}

const UNTOUCHED = { keepalive: 0, idle: 7200, interval: 75, count: 9 };

/** `tcpka enforce ARGS` on the cgroup; taken off with `tcpka enforce --remove`. */
function enforcing(args: string[]) {
  return (cg: TestCgroup) => {
    tcpka(["--cgroup", cg.path, ...args]);
    const listed = JSON.parse(tcpkaOut(["--list", "--json"])) as {
      cgroup: string;
      prog_id?: number;
      setsockopt_prog_id?: number;
    }[];
    const e = listed.find((l) => l.cgroup === cg.path);
    const progs = [e?.prog_id, e?.setsockopt_prog_id].filter((id): id is number => id !== undefined);
    return { detach: () => tcpka(["--remove", "--cgroup", cg.path]), progs };
  };
}

/** A sock_ops program that does nothing (returns 1): the floor of any sock_ops mechanism. */
function emptyProgram(cg: TestCgroup): Attached {
  return attachProgram(cg, [Mov.Imm(R0, 1), Return()]);
}

/** Load a sock_ops program and link it to the cgroup; detached by closing the link. */
function attachProgram(cg: TestCgroup, program: Instruction[], setsockopt = false): Attached {
  const insns = assemble(program);
  const prog = progLoad({
    type: setsockopt ? BPF_PROG_TYPE_CGROUP_SOCKOPT : BPF_PROG_TYPE_SOCK_OPS,
    ...(setsockopt ? { expectedAttachType: BPF_CGROUP_SETSOCKOPT } : {}),
    insns,
    license: "GPL",
    name: "tcpka_bench_ref",
  });
  try {
    const dir = openSync(cg.dir, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      const link = linkCreate(prog, dir, setsockopt ? BPF_CGROUP_SETSOCKOPT : BPF_CGROUP_SOCK_OPS);
      // The setsockopt program second, as an enforcement lists it.
      return { detach: () => closeSync(link), progs: setsockopt ? [0, progId(prog)] : [progId(prog)] };
    } finally {
      closeSync(dir);
    }
  } finally {
    closeSync(prog);
  }
}

/** tcpka's own program with no setting but SO_KEEPALIVE: what keepalive itself costs, through sock_ops. */
function keepaliveOnly(cg: TestCgroup): Attached {
  return attachProgram(cg, keepaliveProgram({ settings: {}, mode: "force", only: [], except: [] }));
}

/**
 * setsockopt programs that do nothing: returning 1 with ctx->optlen set to 0 (the kernel's handler then reads the
 * caller's buffer, as without a program), and returning 1 alone (the kernel then hands its handler a kmalloc'd
 * copy of its buffer): the floor of any setsockopt hook.
 */
const SOCKOPT_REFERENCES: Variant[] = [
  {
    name: "reference: an empty setsockopt program (optlen 0)",
    attach: (cg) => attachProgram(cg, [Mov32.Imm(R2, 0), StoreMem(R1, 32, R2, "W"), Mov.Imm(R0, 1), Return()], true),
    want: UNTOUCHED,
  },
  {
    name: "reference: an empty setsockopt program (optlen kept)",
    attach: (cg) => attachProgram(cg, [Mov.Imm(R0, 1), Return()], true),
    want: UNTOUCHED,
  },
];

const VARIANTS: Variant[] = [
  { name: "no enforcement", want: UNTOUCHED },
  { name: "tcpka enforce --force", attach: enforcing([...SETTINGS, "--force"]), want: WANT },
  { name: "tcpka enforce (strengthen)", attach: enforcing(SETTINGS), want: WANT },
  { name: "reference: an empty sock_ops program", attach: emptyProgram, want: UNTOUCHED },
  {
    name: "reference: a sock_ops program that only turns SO_KEEPALIVE on",
    attach: keepaliveOnly,
    want: { ...UNTOUCHED, keepalive: 1 },
  },
  { name: "reference: the program sets the options itself", own: true, want: WANT },
];

interface Opts {
  keepalive: number;
  idle: number;
  interval: number;
  count: number;
}

interface Run {
  connections: number;
  seconds: number;
  per_second: number;
  batch_per_second: number;
  cpu_us: number;
  /** with own: ns in the program's four setsockopt calls per connection */
  own_ns: number;
  /** in the timed rounds: the kernel's run time of the variant's BPF programs, per connection, and their runs */
  bpf_ns?: number;
  bpf_runs?: number;
  client: Opts;
  accepted: Opts;
}

interface Stats {
  median: number;
  min: number;
  max: number;
}

function stats(xs: readonly number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median, min: s[0]!, max: s[s.length - 1]! };
}

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : dflt;
}

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  return (r.stdout || r.stderr || "").trim();
}

function tcpka(args: string[]): void {
  tcpkaOut(args);
}

function tcpkaOut(args: string[]): string {
  const r = spawnSync(process.execPath, [TCPKA, "enforce", ...args], { encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) throw new Error(`tcpka enforce ${args.join(" ")} exited ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

function same(a: Opts, b: Opts): boolean {
  return a.keepalive === b.keepalive && a.idle === b.idle && a.interval === b.interval && a.count === b.count;
}

async function main(): Promise<number> {
  const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
  if (process.geteuid?.() !== 0) {
    log("run as root (tcpka enforce loads a BPF program)");
    return 1;
  }
  for (const tool of ["gcc", "ip", "taskset"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) {
      log(`needs ${tool}`);
      return 1;
    }
  }
  const cycles = Number(arg("--cycles", "10000"));
  const rounds = Number(arg("--rounds", "30"));
  const jsonFile = process.argv.includes("--json") ? arg("--json", "") : "";
  if (!Number.isInteger(cycles) || cycles < 1000 || !Number.isInteger(rounds) || rounds < 1) {
    log("usage: node dist-test/bench/enforce.js [--cycles N >= 1000] [--rounds R >= 1] [--json FILE]");
    return 2;
  }

  let stop = false;
  const onSignal = (sig: NodeJS.Signals) => {
    log(`${sig}: stopping after this run`);
    stop = true;
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const tmp = mkdtempSync(join(tmpdir(), "tcpka-bench-"));
  // tcpka enforce mounts the BPF file system when it is missing: unmount it again afterwards in that case.
  const restoreBpffs = bpffsRestorer();
  let ns: Netns | undefined;
  let cg: TestCgroup | undefined;
  try {
    const bin = join(tmp, "enforce-cycle");
    const sockoptBin = join(tmp, "sockopt-cycle");
    for (const [out, src] of [
      [bin, "enforce-cycle.c"],
      [sockoptBin, "sockopt-cycle.c"],
    ] as const) {
      const cc = spawnSync("gcc", ["-O2", "-Wall", "-Werror", "-o", out, join(ROOT, "bench", src)], {
        encoding: "utf8",
      });
      if (cc.status !== 0) throw new Error(`gcc: ${cc.stderr}`);
    }
    ns = Netns.create();
    cg = TestCgroup.create();
    const cgroup = cg;
    const netns = ns;
    const pinDir = join("/sys/fs/bpf/tcpka", pinName(cgroup.path));

    const cycleArgv = (v: Variant) => {
      // Pinned to one CPU: the loop is one thread, and moving between CPUs adds noise of several percent.
      const argv = ["ip", "netns", "exec", netns.name, "taskset", "-c", CPU, bin, `${cycles}`];
      if (v.own) argv.push("own");
      return ["-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup.dir, ...argv];
    };
    const check = (v: Variant, r: Run) => {
      if (!same(r.client, v.want) || !same(r.accepted, v.want)) {
        throw new Error(`${v.name}: the sockets got ${JSON.stringify(r)}, expected ${JSON.stringify(v.want)}`);
      }
      return r;
    };
    const run = (v: Variant): Run => {
      const attached = v.attach?.(cgroup);
      let r: Run;
      try {
        const p = spawnSync("sh", cycleArgv(v), { encoding: "utf8", timeout: 600_000, killSignal: "SIGKILL" });
        if (p.status !== 0) throw new Error(`${v.name}: enforce-cycle exited ${p.status}: ${p.stderr}`);
        r = JSON.parse(p.stdout) as Run;
      } finally {
        attached?.detach();
      }
      return check(v, r);
    };
    // A timed run: while the loop runs, the programs' run time and runs are sampled every SAMPLE_MS; the time per
    // run is the median over those intervals (a burst of steal time spoils one interval, not the run), times the
    // runs per connection of the whole run.
    const timedRun = async (v: Variant): Promise<Run> => {
      const attached = v.attach?.(cgroup);
      try {
        const total = () => {
          let ns = 0n;
          let runs = 0n;
          for (const id of attached?.progs.filter((p) => p > 0) ?? []) {
            const s = progRunStats(id);
            ns += s.ns;
            runs += s.runs;
          }
          return { ns: Number(ns), runs: Number(runs) };
        };
        const samples = [total()];
        const child = spawn("sh", cycleArgv(v), { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        let err = "";
        child.stdout.on("data", (d) => {
          out += d;
        });
        child.stderr.on("data", (d) => {
          err += d;
        });
        const timer = attached ? setInterval(() => samples.push(total()), SAMPLE_MS) : undefined;
        const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
        clearInterval(timer);
        if (code !== 0) throw new Error(`${v.name}: enforce-cycle exited ${code}: ${err}`);
        const r = JSON.parse(out) as Run;
        if (attached) {
          const end = total();
          const perRun: number[] = [];
          for (let i = 1; i < samples.length; i++) {
            const runs = samples[i]!.runs - samples[i - 1]!.runs;
            if (runs >= MIN_SAMPLE_RUNS) perRun.push((samples[i]!.ns - samples[i - 1]!.ns) / runs);
          }
          // Every run of the programs since they were loaded: the counted cycles, the warm-up and the last check.
          r.bpf_runs = end.runs / (cycles + WARMUP + 1);
          r.bpf_ns = (perRun.length ? stats(perRun).median : end.ns / end.runs) * r.bpf_runs;
        }
        return check(v, r);
      } finally {
        attached?.detach();
      }
    };

    const results = new Map<string, Run[]>(VARIANTS.map((v) => [v.name, []]));
    log(`${rounds} rounds (+1 warm-up) of ${VARIANTS.length} variants, ${cycles} connections each`);
    for (let round = 0; round <= rounds && !stop; round++) {
      const order = VARIANTS.map((_, i) => VARIANTS[(i + round) % VARIANTS.length]!);
      for (const v of order) {
        if (stop) break;
        const r = run(v);
        if (round > 0) results.get(v.name)!.push(r);
        log(`round ${round}${round === 0 ? " (warm-up)" : ""}: ${v.name}: ${Math.round(r.per_second)} conn/s`);
      }
    }
    // The setsockopt program's cost on every setsockopt call of the cgroup: sockopt-cycle times three calls
    // (an option it lets through, TCP_KEEPIDLE that it decides on and here replaces, SO_KEEPALIVE), without and
    // with the enforcement, round by round; then, with the kernel timing programs, the program's own run time.
    const SOCKOPT_CALLS = 200_000;
    const sockoptRun = (v: Variant, timed = false): SockoptRun => {
      const attached = v.attach?.(cgroup);
      try {
        const argv = ["ip", "netns", "exec", netns.name, "taskset", "-c", CPU, sockoptBin, `${SOCKOPT_CALLS}`];
        const p = spawnSync("sh", ["-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup.dir, ...argv], {
          encoding: "utf8",
          timeout: 600_000,
          killSignal: "SIGKILL",
        });
        if (p.status !== 0) throw new Error(`${v.name}: sockopt-cycle exited ${p.status}: ${p.stderr}`);
        const r = JSON.parse(p.stdout) as SockoptRun;
        const wantIdle = v.want === WANT ? WANT.idle : 3600;
        if (r.idle !== wantIdle) throw new Error(`${v.name}: sockopt-cycle ended with idle ${r.idle}, not ${wantIdle}`);
        if (timed && attached) {
          // The second program is the setsockopt one (attachments list the sock_ops program first).
          const hook = attached.progs[1];
          if (hook !== undefined) {
            const s = progRunStats(hook);
            r.hook_ns_per_run = Number(s.ns) / Number(s.runs);
          }
        }
        return r;
      } finally {
        attached?.detach();
      }
    };
    const SOCKOPT_VARIANTS = [...VARIANTS.slice(0, 3), ...SOCKOPT_REFERENCES];
    const sockoptResults = new Map<string, SockoptRun[]>(SOCKOPT_VARIANTS.map((v) => [v.name, []]));
    for (let round = 0; round < SOCKOPT_ROUNDS && !stop; round++) {
      for (const v of SOCKOPT_VARIANTS) sockoptResults.get(v.name)!.push(sockoptRun(v));
    }

    // Timed rounds: the kernel times every program run (BPF_ENABLE_STATS) while the fd is open, which adds two
    // clock reads to each run, so these rounds are apart from the ones above. The time of the programs is the
    // mechanism's own cost, measured by the kernel around each run: steal time of the VM hardly lands in a
    // few hundred nanoseconds, so it is far steadier than connections per second.
    const timedResults = new Map<string, Run[]>(VARIANTS.map((v) => [v.name, []]));
    const statsFd = enableRunTimeStats();
    try {
      for (let round = 0; round < TIMED_ROUNDS && !stop; round++) {
        for (const v of VARIANTS) timedResults.get(v.name)!.push(await timedRun(v));
      }
      for (let round = 0; round < TIMED_ROUNDS && !stop; round++) {
        for (const v of SOCKOPT_VARIANTS.slice(1)) sockoptResults.get(v.name)!.push(sockoptRun(v, true));
      }
    } finally {
      closeSync(statsFd);
    }
    if (stop) return 130;

    const base = results.get(VARIANTS[0]!.name)!;
    const baseMedian = stats(base.map((r) => r.per_second)).median;
    const fmt = (x: number) => Math.round(x).toLocaleString("en-US");
    const pct = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(1)}%`;
    const lines = [
      `Connections per second, ${cycles} loopback connect+accept+close per run, ${rounds} interleaved runs per variant`,
      "",
      "| variant | median conn/s | min | max | overhead (medians) | overhead (paired rounds, median) | CPU µs/conn (median) | CPU overhead (paired rounds, median) |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
    ];
    const summary: Record<string, unknown> = {};
    for (const v of VARIANTS) {
      const rs = results.get(v.name)!;
      const s = stats(rs.map((r) => r.per_second));
      const cpu = stats(rs.map((r) => r.cpu_us)).median;
      const paired = stats(rs.map((r, i) => (1 - r.per_second / base[i]!.per_second) * 100)).median;
      const over = (1 - s.median / baseMedian) * 100;
      const overCpu = stats(rs.map((r, i) => (r.cpu_us / base[i]!.cpu_us - 1) * 100)).median;
      const dash = (x: string) => (v === VARIANTS[0] ? "—" : x);
      lines.push(
        `| ${v.name} | ${fmt(s.median)} | ${fmt(s.min)} | ${fmt(s.max)} | ${dash(pct(over))} | ${dash(pct(paired))} | ${cpu.toFixed(2)} | ${dash(pct(overCpu))} |`,
      );
      summary[v.name] = {
        per_second: s,
        overhead_pct: over,
        paired_overhead_pct: paired,
        cpu_us_median: cpu,
        cpu_overhead_pct: overCpu,
      };
    }
    lines.push(
      "",
      `The mechanism's own time per connection, ${TIMED_ROUNDS} more runs of each: the kernel's run time of the variant's BPF programs (BPF_ENABLE_STATS), and for the program that sets the options itself the time of its four setsockopt calls (its own clock)`,
      "",
      "| variant | program runs per connection | ns per connection, median | min | max | interquartile range | share of the run's CPU time per connection, median | its interquartile range, points |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
    );
    const iqrOf = (xs: readonly number[]) => {
      const sorted = [...xs].sort((a, b) => a - b);
      const q = (f: number) => sorted[Math.min(sorted.length - 1, Math.floor(f * sorted.length))] ?? 0;
      return q(0.75) - q(0.25);
    };
    for (const v of VARIANTS) {
      const rs = timedResults.get(v.name)!;
      const ns = v.own ? rs.map((r) => r.own_ns) : rs.map((r) => r.bpf_ns ?? 0);
      const s = stats(ns);
      // Each run's mechanism time as a share of that run's own CPU time per connection: a slower period of the
      // machine slows both alike, so the share moves less from run to run than the nanoseconds.
      const shares = rs.map((r, i) => ((ns[i] as number) / (r.cpu_us * 1000)) * 100);
      const runs = v.own ? "—" : stats(rs.map((r) => r.bpf_runs ?? 0)).median.toFixed(2);
      lines.push(
        `| ${v.name} | ${runs} | ${s.median.toFixed(0)} | ${s.min.toFixed(0)} | ${s.max.toFixed(0)} | ${iqrOf(ns).toFixed(0)} | ${stats(shares).median.toFixed(2)}% | ${iqrOf(shares).toFixed(2)} |`,
      );
      (summary[v.name] as Record<string, unknown>).mechanism_ns = s;
    }
    const sockBase = sockoptResults.get(SOCKOPT_VARIANTS[0]!.name)!;
    lines.push(
      "",
      `One setsockopt call on a connected socket in the cgroup, ns (median of ${SOCKOPT_CALLS / 1000} batches of 1,000 calls per run, then the median of ${SOCKOPT_ROUNDS} interleaved runs; added: paired with the run without enforcement of the same round), and the setsockopt program's own run time per call (kernel's run_time_ns / run_cnt, ${TIMED_ROUNDS} runs)`,
      "",
      "| variant | TCP_NODELAY 1 | added | TCP_KEEPIDLE 3600 | added | SO_KEEPALIVE 1 | added | setsockopt program per call |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
    );
    for (const v of SOCKOPT_VARIANTS) {
      const rs = sockoptResults.get(v.name)!;
      const counted = rs.slice(0, SOCKOPT_ROUNDS);
      const cell = (k: "nodelay_ns" | "keepidle_ns" | "keepalive_ns") => {
        const m = stats(counted.map((r) => r[k])).median;
        const added = stats(counted.map((r, i) => r[k] - sockBase[i]![k])).median;
        return `${m.toFixed(0)} | ${v === SOCKOPT_VARIANTS[0] ? "—" : `${added >= 0 ? "+" : ""}${added.toFixed(0)}`}`;
      };
      const hook = rs.slice(SOCKOPT_ROUNDS).map((r) => r.hook_ns_per_run ?? 0);
      const hookCell = hook.length
        ? `${stats(hook).median.toFixed(0)} (${stats(hook).min.toFixed(0)}–${stats(hook).max.toFixed(0)})`
        : "—";
      lines.push(
        `| ${v.name} | ${cell("nodelay_ns")} | ${cell("keepidle_ns")} | ${cell("keepalive_ns")} | ${hookCell} |`,
      );
    }
    const machine = {
      date: new Date().toISOString(),
      nproc: sh("nproc", []),
      cpu: cpus()[0]?.model ?? "?",
      kernel: sh("uname", ["-r"]),
      node: process.version,
      gcc: sh("gcc", ["-dumpfullversion"]),
    };
    lines.push(
      "",
      `Machine: ${machine.nproc} CPUs (${machine.cpu}), Linux ${machine.kernel}, gcc ${machine.gcc}, ${machine.date}.`,
      `Command: node dist-test/bench/enforce.js --cycles ${cycles} --rounds ${rounds}`,
    );
    process.stdout.write(`${lines.join("\n")}\n`);
    if (jsonFile) {
      writeFileSync(
        jsonFile,
        `${JSON.stringify({ machine, cycles, rounds, summary, runs: Object.fromEntries(results) })}\n`,
      );
    }
    if (existsSync(pinDir)) throw new Error(`a pin is left at ${pinDir}`);
    return 0;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    if (cg && existsSync(join("/sys/fs/bpf/tcpka", pinName(cg.path)))) {
      try {
        tcpka(["--remove", "--cgroup", cg.path]);
      } catch (e) {
        log(`cleanup: ${(e as Error).message}`);
      }
    }
    cg?.destroy();
    ns?.destroy();
    rmSync(tmp, { recursive: true, force: true });
    restoreBpffs();
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    process.exit(1);
  },
);
