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
import { spawnSync } from "node:child_process";
import { closeSync, constants, existsSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { assemble, type Instruction, Mov, R0, Return } from "../src/bpf/asm.js";
import { keepaliveProgram } from "../src/bpf/keepalive.js";
import { BPF_CGROUP_SOCK_OPS, BPF_PROG_TYPE_SOCK_OPS } from "../src/kernel/constants.js";
import { linkCreate, progLoad } from "../src/sys/bpf.js";
import { TestCgroup } from "../test/helpers/cgroup.js";
import { bpffsRestorer } from "../test/helpers/enforce.js";
import { Netns } from "../test/helpers/netns.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url)); // dist-test/bench -> project root
const TCPKA = join(ROOT, "bin", "tcpka.js");
const SETTINGS = ["--idle", "60s", "--interval", "10s", "--count", "6"];
const WANT = { keepalive: 1, idle: 60, interval: 10, count: 6 };
/** The CPU the loop runs on: the last one, away from where interrupts and the shell tend to run. */
const CPU = String(cpus().length - 1);

interface Variant {
  name: string;
  /** what to attach before a run (returns how to take it off after), or nothing */
  attach?: (cg: TestCgroup) => () => void;
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
    return () => tcpka(["--remove", "--cgroup", cg.path]);
  };
}

/** A sock_ops program that does nothing (returns 1): the floor of any sock_ops mechanism. */
function emptyProgram(cg: TestCgroup): () => void {
  return attachProgram(cg, [Mov.Imm(R0, 1), Return()]);
}

/** Load a sock_ops program and link it to the cgroup; detached by closing the link. */
function attachProgram(cg: TestCgroup, program: Instruction[]): () => void {
  const insns = assemble(program);
  const prog = progLoad({ type: BPF_PROG_TYPE_SOCK_OPS, insns, license: "GPL", name: "tcpka_bench_ref" });
  try {
    const dir = openSync(cg.dir, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      const link = linkCreate(prog, dir, BPF_CGROUP_SOCK_OPS);
      return () => closeSync(link);
    } finally {
      closeSync(dir);
    }
  } finally {
    closeSync(prog);
  }
}

/** tcpka's own program with no setting but SO_KEEPALIVE: what keepalive itself costs, through sock_ops. */
function keepaliveOnly(cg: TestCgroup): () => void {
  return attachProgram(cg, keepaliveProgram({ settings: {}, mode: "force", only: [], except: [] }));
}

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
  const r = spawnSync(process.execPath, [TCPKA, "enforce", ...args], { encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) throw new Error(`tcpka enforce ${args.join(" ")} exited ${r.status}: ${r.stderr.trim()}`);
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
    const cc = spawnSync("gcc", ["-O2", "-Wall", "-Werror", "-o", bin, join(ROOT, "bench", "enforce-cycle.c")], {
      encoding: "utf8",
    });
    if (cc.status !== 0) throw new Error(`gcc: ${cc.stderr}`);
    ns = Netns.create();
    cg = TestCgroup.create();
    const cgroup = cg;
    const netns = ns;
    const pinDir = join("/sys/fs/bpf/tcpka", cgroup.path.slice(1));

    const run = (v: Variant): Run => {
      const detach = v.attach?.(cgroup);
      let r: Run;
      try {
        // Pinned to one CPU: the loop is one thread, and moving between CPUs adds noise of several percent.
        const argv = ["ip", "netns", "exec", netns.name, "taskset", "-c", CPU, bin, `${cycles}`];
        if (v.own) argv.push("own");
        const p = spawnSync("sh", ["-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup.dir, ...argv], {
          encoding: "utf8",
          timeout: 600_000,
          killSignal: "SIGKILL",
        });
        if (p.status !== 0) throw new Error(`${v.name}: enforce-cycle exited ${p.status}: ${p.stderr}`);
        r = JSON.parse(p.stdout) as Run;
      } finally {
        detach?.();
      }
      if (!same(r.client, v.want) || !same(r.accepted, v.want)) {
        throw new Error(`${v.name}: the sockets got ${JSON.stringify(r)}, expected ${JSON.stringify(v.want)}`);
      }
      return r;
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
    if (cg && existsSync(join("/sys/fs/bpf/tcpka", cg.path.slice(1)))) {
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
