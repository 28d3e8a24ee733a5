/**
 * Wall time and peak RSS of whole commands, measured by a tiny python3 wrapper: it posix_spawn()s each command
 * with stdin and stdout on /dev/null, waits for it with os.wait4() (whose rusage is that child's alone, so
 * ru_maxrss is the child's peak resident set in KiB), and times spawn-to-reap with perf_counter. Commands are
 * interleaved round by round, after one warm-up round that is not counted, so a slow period of the machine
 * hits every tool alike.
 */
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

const MEASURE_PY = `import json, os, sys, time
spec = json.load(sys.stdin)
cmds, runs, warmup, errdir = spec["commands"], spec["runs"], spec["warmup"], spec["errdir"]
results = {c["name"]: [] for c in cmds}
for r in range(warmup + runs):
    for i, c in enumerate(cmds):
        errpath = os.path.join(errdir, "stderr.%d" % i)
        fa = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, errpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        ]
        t0 = time.perf_counter()
        pid = os.posix_spawnp(c["argv"][0], c["argv"], os.environ, file_actions=fa)
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        with open(errpath, "rb") as f:
            err = f.read(2000).decode("utf8", "replace")
        if r >= warmup:
            results[c["name"]].append({"wall_ms": wall * 1000, "maxrss_kb": ru.ru_maxrss,
                "user_ms": ru.ru_utime * 1000, "sys_ms": ru.ru_stime * 1000, "exit": code, "stderr": err})
json.dump(results, sys.stdout)
`;

export interface Run {
  wall_ms: number;
  maxrss_kb: number;
  user_ms: number;
  sys_ms: number;
  exit: number;
  stderr: string;
}

export interface Command {
  name: string;
  argv: string[];
}

export interface Stats {
  median: number;
  min: number;
  max: number;
}

export function stats(xs: readonly number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
  return { median, min: s[0] as number, max: s[s.length - 1] as number };
}

/**
 * The ratio of two commands' figures round by round (a[i] / b[i]: the runs of one round are neighbours in time,
 * so a slow moment of the machine divides out), e.g. stats(ratios(tcpka, ss)).
 */
export function ratios(a: readonly Run[], b: readonly Run[], key: "wall_ms" | "maxrss_kb" = "wall_ms"): number[] {
  if (a.length !== b.length) throw new Error(`ratios of ${a.length} and ${b.length} runs`);
  return a.map((x, i) => x[key] / (b[i] as Run)[key]);
}

/** The first quartile, median and third quartile (linear interpolation). */
export function quartiles(xs: readonly number[]): [number, number, number] {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => {
    const i = q * (s.length - 1);
    const lo = Math.floor(i);
    return (s[lo] as number) + ((s[Math.ceil(i)] as number) - (s[lo] as number)) * (i - lo);
  };
  return [at(0.25), at(0.5), at(0.75)];
}

export class Measurer {
  private readonly script: string;

  constructor(private readonly tmpDir: string) {
    this.script = join(tmpDir, "measure.py");
    writeFileSync(this.script, MEASURE_PY);
  }

  /** Run every command `runs` times (after `warmup` uncounted rounds), interleaved; fail on a non-zero exit. */
  run(commands: readonly Command[], runs: number, warmup = 1): Map<string, Run[]> {
    const spec = JSON.stringify({ commands, runs, warmup, errdir: this.tmpDir });
    const r = spawnSync("python3", [this.script], { input: spec, encoding: "utf8", maxBuffer: 1 << 26 });
    if (r.status !== 0) throw new Error(`measure.py failed (${r.status ?? r.signal}): ${r.stderr}`);
    const out = JSON.parse(r.stdout) as Record<string, Run[]>;
    const m = new Map<string, Run[]>();
    for (const c of commands) {
      const runsOf = out[c.name] ?? [];
      const bad = runsOf.find((x) => x.exit !== 0);
      if (bad) throw new Error(`${c.argv.join(" ")} exited ${bad.exit}: ${bad.stderr}`);
      m.set(c.name, runsOf);
    }
    return m;
  }
}
