/**
 * `tcpka agent` as the end-to-end tests run it, and the program its tests watch it through.
 *
 * AgentHost: a mount namespace of the test's own (unshare --mount, private propagation) with a BPF file system
 * and a runtime directory (/run/tcpka: the agent's lock, status and enforce's lock) of its own. The agent, the
 * operator's `tcpka enforce` and `--list` all run in it (nsenter --mount), so they share one bpffs as on a host,
 * and nothing in it is seen by, or sees, another agent or enforce on the machine: a running agent removes every
 * pin of its owner that its policy does not want (another agent's included), takes the host's one agent lock, and
 * writes the host's /run/tcpka/agent.json; and unmounting the bpffs to play a reboot removes only the test's
 * pins. The cgroups, the containers and the programs the kernel runs on them are the host's: every mount the
 * agent reads (the cgroup2 mount, /run/runc, containers/storage) is the host's, copied into the namespace.
 * Mounts that would keep other tests' things alive while the namespace lives (network namespaces' nsfs,
 * containers' overlays) are detached from the copy. When the test ends every agent is stopped, every
 * enforcement in the namespace removed, and the namespace goes with its last process (and with it the bpffs and
 * whatever is still pinned there).
 *
 * KaAgent: test/fixtures/ka_agent.c, a program that never sets keepalive itself and reports its own getsockopt:
 * as a container's init (its output through `podman logs`) or in a test cgroup (through a pipe).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, constants, openSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { TestContext } from "node:test";
import type { AgentStatus } from "../../src/agent/status.js";
import { BPF_CGROUP_SETSOCKOPT, BPF_CGROUP_SOCK_OPS, SYS_bpf } from "../../src/kernel/constants.js";
import { addressOf, syscall } from "../../src/sys/libc.js";
import type { TestCgroup } from "./cgroup.js";
import { compileC } from "./compile.js";
import type { Listed } from "./enforce.js";
import { needs } from "./env.js";
import { TCPKA } from "./paths.js";
import type { TestContainer } from "./podman.js";
import { cleanEnv, Process, type Result, runSync, sleep, until } from "./processes.js";
import { type Scope, tempDir } from "./scope.js";

export const PIN_ROOT = "/sys/fs/bpf/tcpka";

/** What an AgentHost and the ka_agent fixture need: root, util-linux's namespace tools, gcc. */
export function needsAgentHost(t: TestContext): boolean {
  return needs(t, { root: true, tools: ["unshare", "nsenter", "findmnt", "mountpoint", "gcc"] });
}

/**
 * The namespace's set-up, run by unshare's shell before it becomes the holder (sleep): detach the copies of
 * nsfs and overlay mounts, replace the copy of the host's bpffs (however many are stacked) by a new one, and put
 * a new tmpfs on /run/tcpka. A directory that findmnt escapes (\x20) is left as it is: only a copy.
 */
const SETUP = `set -e
for m in $(findmnt -rn -o TARGET -t nsfs,overlay); do umount -l "$m" 2>/dev/null || true; done
n=0
while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf; n=$((n + 1)); [ "$n" -lt 10 ]; done
mount -t bpf bpf /sys/fs/bpf
mkdir -p -m 0700 /run/tcpka
mount -t tmpfs -o mode=0700 tmpfs /run/tcpka
echo ready
exec sleep 900
`;

/** Holders and agents not yet ended; whatever a crash leaves goes when this process exits (by pid). */
const live = new Set<Process>();
process.once("exit", () => {
  for (const p of live) p.kill();
});

export class AgentHost {
  private readonly agents = new Set<RunningAgent>();

  private constructor(private readonly holder: Process) {}

  /** A new namespace, ready; torn down when `scope` ends. */
  static async create(scope: Scope): Promise<AgentHost> {
    const child = spawn("unshare", ["--mount", "--propagation", "private", "--", "sh", "-c", SETUP], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    const host = new AgentHost(new Process(child, "the agent's mount namespace"));
    live.add(host.holder);
    scope.after(() => host.destroy());
    await host.holder.waitFor(/^ready$/m);
    return host;
  }

  get pid(): number {
    return this.holder.pid;
  }

  /** `argv` with nsenter in front: run in the namespace (cwd and root are the namespace's /). */
  argv(cmd: readonly string[]): string[] {
    return ["nsenter", `--mount=/proc/${this.pid}/ns/mnt`, "--", ...cmd];
  }

  /** A command in the namespace, waited for. */
  run(cmd: readonly string[], timeoutMs = 60_000): Result {
    return runSync(this.argv(cmd), { timeoutMs });
  }

  /** The tcpka CLI in the namespace, waited for. */
  tcpka(args: readonly string[]): Result {
    return this.run([process.execPath, TCPKA, ...args]);
  }

  /** `tcpka enforce ARGS...` (an operator's), which must succeed. */
  enforce(args: readonly string[]): void {
    const r = this.tcpka(["enforce", ...args]);
    assert.equal(r.status, 0, `tcpka enforce ${args.join(" ")}: ${r.stderr}`);
  }

  /** A path as the namespace sees it, from this process: /proc/HOLDER/root/PATH. */
  path(p: string): string {
    return `/proc/${this.pid}/root${p}`;
  }

  /** The pin directories under /sys/fs/bpf/tcpka in the namespace, sorted. */
  pinDirs(): string[] {
    try {
      return readdirSync(this.path(PIN_ROOT)).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw e;
    }
  }

  /** What is pinned in one directory, sorted. */
  pinsIn(dir: string): string[] {
    return readdirSync(this.path(join(PIN_ROOT, dir))).sort();
  }

  /** `tcpka enforce --list --json` in the namespace. */
  list(): Listed[] {
    const r = this.tcpka(["enforce", "--list", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as Listed[];
  }

  /** What --list says of the cgroup `path`, if anything. */
  listed(path: string): Listed | undefined {
    return this.list().find((l) => l.cgroup === path);
  }

  /** The agent's status file, /run/tcpka/agent.json in the namespace. */
  status(): AgentStatus {
    return JSON.parse(readFileSync(this.path("/run/tcpka/agent.json"), "utf8")) as AgentStatus;
  }

  /** As at a reboot: the BPF file system unmounted (every pin in it gone) and a new, empty one mounted. */
  rebootBpffs(): void {
    // (An agent that found no bpffs in between mounted one itself, as tcpka enforce does: not a second on top.)
    const r = this.run([
      "sh",
      "-c",
      "umount /sys/fs/bpf && { mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; }",
    ]);
    assert.equal(r.status, 0, `remount the bpffs: ${r.stderr}`);
  }

  /**
   * `tcpka agent --policy FILE --resync RESYNC [EXTRA...]` in the namespace. Returned once its log matches `started` (by
   * default: once it has reconciled at start), or, with `started: null`, as soon as it runs.
   */
  async startAgent(
    policy: string,
    opts: { resync?: string; started?: RegExp | null; extra?: readonly string[] } = {},
  ): Promise<RunningAgent> {
    const argv = this.argv([
      process.execPath,
      TCPKA,
      "agent",
      "--policy",
      policy,
      "--resync",
      opts.resync ?? "2s",
      ...(opts.extra ?? []),
    ]);
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ["pipe", "pipe", "pipe"], env: cleanEnv() });
    const agent = new RunningAgent(child, new Process(child, "tcpka agent"));
    this.agents.add(agent);
    live.add(agent.p);
    // nsenter enters a mount namespace and execs (it forks only to enter a pid namespace): the pid is the agent's.
    await until("the agent to exec", () => {
      assert.ok(agent.p.running, `the agent ended: ${agent.p.stderr}`);
      return readFileSync(`/proc/${agent.pid}/cmdline`, "latin1").includes(TCPKA);
    });
    const started = opts.started === undefined ? /^reconciled \(start\) in \d+ ms: .*$/m : opts.started;
    if (started) await agent.waitLog(started, 0, 20_000);
    if (opts.started === undefined) await this.passesDone();
    return agent;
  }

  /**
   * Once the agent's passes over existing connections have ended: they run behind its reconciles, and the status
   * says "changing" for a target until its pass ends (the agent writes the status before it logs "reconciled").
   */
  async passesDone(timeoutMs = 20_000): Promise<void> {
    await until(
      "the agent's passes over existing connections to end",
      () => this.status().rules.every((r) => r.targets.every((t) => t.existing !== "changing")),
      timeoutMs,
    );
  }

  /**
   * `fn`, and if it fails, the logs of every agent of this namespace added to its error's message: what a
   * failed assertion on a connection's settings needs to be understood.
   */
  async explained(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      if (e instanceof Error) {
        const logs = [...this.agents].map((a) => `--- tcpka agent ${a.pid}:\n${a.log}${a.p.stderr}`).join("\n");
        e.message += `\n${logs}`;
      }
      throw e;
    }
  }

  /** Stop every agent, remove every enforcement in the namespace, end the namespace. */
  private async destroy(): Promise<void> {
    const errors: unknown[] = [];
    for (const a of this.agents) await a.kill();
    if (this.holder.running) {
      const r = this.tcpka(["enforce", "--remove", "--all"]);
      if (r.status !== 0) errors.push(new Error(`tcpka enforce --remove --all in the namespace: ${r.stderr}`));
      await this.holder.stop();
    }
    live.delete(this.holder);
    for (const a of this.agents) live.delete(a.p);
    if (errors.length) throw errors[0];
  }
}

/** A running `tcpka agent`: its log (stdout, one line per action), signals by pid. */
export class RunningAgent {
  constructor(
    private readonly child: ChildProcess,
    readonly p: Process,
  ) {}

  get pid(): number {
    return this.p.pid;
  }

  /** Everything it logged. */
  get log(): string {
    return this.p.stdout;
  }

  /** Where the log ends now: waitLog(re, mark) looks at what comes after. */
  mark(): number {
    return this.p.stdout.length;
  }

  /** The first match of `re` in the log after `from`; failing, what the log and the agent's threads say. */
  async waitLog(re: RegExp, from: number, timeoutMs = 15_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.p.stdout.slice(from));
      if (m) return m;
      assert.ok(this.p.running, `the agent ended without logging ${re}: ${this.p.stdout.slice(from)} ${this.p.stderr}`);
      if (Date.now() > deadline) {
        assert.fail(
          `the agent did not log ${re} within ${timeoutMs} ms; its log after ${from}:\n${this.p.stdout.slice(from)}\n` +
            `stderr: ${this.p.stderr}\nits threads: ${threads(this.pid)}`,
        );
      }
      await sleep(20);
    }
  }

  /** waitLog, and where in the log the match ends: what comes after it (a mark). */
  async waitLogEnd(re: RegExp, from: number, timeoutMs = 15_000): Promise<number> {
    const m = await this.waitLog(re, from, timeoutMs);
    return from + (m.index ?? 0) + m[0].length;
  }

  /** The lines of the log after `from` that match `re`. */
  lines(re: RegExp, from = 0): string[] {
    return this.p.stdout
      .slice(from)
      .split("\n")
      .filter((l) => re.test(l));
  }

  hup(): void {
    this.p.kill("SIGHUP");
  }

  /**
   * SIGKILL it the moment its log after `from` matches `re` (on the output's arrival, not at the next poll: the
   * agent is stopped where that line left it, in the middle of what it was doing). Resolves when it has ended.
   */
  async killWhen(re: RegExp, from: number, timeoutMs = 15_000): Promise<void> {
    const out = this.child.stdout;
    assert.ok(out);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        out.off("data", check);
        reject(
          new Error(`the agent did not log ${re} in ${timeoutMs} ms; its log after ${from}:\n${this.log.slice(from)}`),
        );
      }, timeoutMs);
      // Process's own listener, added first, has appended the data to p.stdout by the time this one runs.
      const check = () => {
        if (!re.test(this.log.slice(from))) return;
        this.p.kill("SIGKILL");
        out.off("data", check);
        clearTimeout(timer);
        resolve();
      };
      out.on("data", check);
      check();
    });
    await this.p.done.catch(() => {});
  }

  /** SIGKILL, and wait for its end. */
  async kill(): Promise<void> {
    this.p.kill("SIGKILL");
    await this.p.done.catch(() => {});
  }

  /** SIGTERM: it says it stopped, leaves the enforcements in force, and exits 0. */
  async stop(): Promise<void> {
    this.p.kill("SIGTERM");
    const d = await this.p.done;
    assert.equal(d.code, 0, `the agent's exit; stderr: ${d.stderr}`);
    assert.match(d.stdout, /\nstopped \(SIGTERM\); the enforcements stay in force\n$/);
  }
}

/** What each thread of a process is doing (state and wait channel), for a failure's message. */
function threads(pid: number): string {
  try {
    return readdirSync(`/proc/${pid}/task`)
      .map((tid) => {
        const read = (f: string) => readFileSync(`/proc/${pid}/task/${tid}/${f}`, "latin1").trim();
        return `${tid} ${read("comm")} ${read("stat").split(") ")[1]?.split(" ")[0]} ${read("wchan")}`;
      })
      .join("; ");
  } catch (e) {
    return String(e);
  }
}

// ---------------------------------------------------------------------------------------------------------
// test/fixtures/ka_agent.c

/** Keepalive as a socket's own getsockopt reads it. */
export interface Ka {
  keepalive: number;
  idle: number;
  interval: number;
  count: number;
}

/** The first line: the first connection, and when it got keepalive. */
export interface First extends Ka {
  at_connect: number;
  /** from the program's start; -1: not within its WAIT_S */
  covered_ms: number;
  /** the program's start, CLOCK_REALTIME in ms */
  start_ms: number;
}

/** One socket of a report. */
export interface Conn extends Ka {
  conn: number;
  end: "client" | "accepted";
  local: string;
  peer: string;
}

function fields(line: string): Record<string, string> {
  return Object.fromEntries(
    line
      .split(" ")
      .filter((kv) => kv.includes("="))
      .map((kv) => kv.split("=", 2) as [string, string]),
  );
}

export function ka(s: Ka): Ka {
  return { keepalive: s.keepalive, idle: s.idle, interval: s.interval, count: s.count };
}

/** ka_agent.c built static (it runs in a busybox image), readable by every user; one per scope. */
export function kaAgentExe(scope: Scope): string {
  return compileC(tempDir(scope, { readable: true }), "ka_agent.c", "ka_agent", ["-static"]);
}

/** A running ka_agent: its first line, and reports and pings on signals. */
export class KaAgent {
  private reports = 0;
  private pings = 0;

  private constructor(
    /** the program's pid, as this process sees it */
    readonly pid: number,
    private readonly output: () => string,
    readonly what: string,
  ) {}

  /** As the init of `container` (started with `/ka_agent WAIT_S [HOST PORT]`). */
  static inContainer(c: TestContainer): KaAgent {
    return new KaAgent(c.pid, () => c.logs(), `container ${c.name}`);
  }

  /** In the cgroup `cg`, in this process's network namespace; killed by pid when `scope` ends. */
  static inCgroup(scope: Scope, cg: TestCgroup, exe: string, waitS = 0): KaAgent {
    const p = new Process(cg.spawn([exe, String(waitS)]), `ka_agent in ${cg.path}`);
    scope.after(() => p.kill());
    return new KaAgent(p.pid, () => p.stdout, `ka_agent in ${cg.path}`);
  }

  private async lineOf(re: RegExp, timeoutMs: number): Promise<{ text: string; at: number }> {
    return until(
      `${this.what} to print ${re}`,
      () => {
        const text = this.output();
        const m = re.exec(text);
        return m ? { text, at: m.index } : undefined;
      },
      timeoutMs,
    );
  }

  async first(timeoutMs = 15_000): Promise<First> {
    const { text, at } = await this.lineOf(/^first .*$/m, timeoutMs);
    const f = fields(text.slice(at).split("\n")[0]!);
    const n = (k: string) => Number(f[k]);
    return {
      at_connect: n("at_connect"),
      covered_ms: n("covered_ms"),
      start_ms: n("start_ms"),
      keepalive: n("keepalive"),
      idle: n("idle"),
      interval: n("interval"),
      count: n("count"),
    };
  }

  /** One more connection (SIGUSR1), then every socket it holds as its getsockopt reads them. */
  async report(timeoutMs = 10_000): Promise<Conn[]> {
    const n = ++this.reports;
    process.kill(this.pid, "SIGUSR1");
    const { text, at } = await this.lineOf(new RegExp(`^report=${n}$`, "m"), timeoutMs);
    const start = n === 1 ? 0 : text.indexOf(`report=${n - 1}\n`) + `report=${n - 1}\n`.length;
    return text
      .slice(start, at)
      .split("\n")
      .filter((l) => l.startsWith("conn="))
      .map((l) => {
        const f = fields(l);
        return {
          conn: Number(f.conn),
          end: f.end as Conn["end"],
          local: f.local ?? "",
          peer: f.peer ?? "",
          keepalive: Number(f.keepalive),
          idle: Number(f.idle),
          interval: Number(f.interval),
          count: Number(f.count),
        };
      });
  }

  /** Each connection to HOST:PORT sends a line and waits up to 3 s for its echo (SIGUSR2). */
  async ping(timeoutMs = 15_000): Promise<{ conn: number; ok: boolean; error?: string }[]> {
    const n = ++this.pings;
    process.kill(this.pid, "SIGUSR2");
    const { text, at } = await this.lineOf(new RegExp(`^pinged=${n}$`, "m"), timeoutMs);
    const start = n === 1 ? 0 : text.indexOf(`pinged=${n - 1}\n`);
    return text
      .slice(Math.max(0, start), at)
      .split("\n")
      .filter((l) => l.startsWith("alive "))
      .map((l) => {
        const f = fields(l);
        return { conn: Number(f.conn), ok: f.ok === "1", ...(f.error ? { error: f.error } : {}) };
      });
  }
}

// ---------------------------------------------------------------------------------------------------------
// What the kernel has attached to a cgroup.

/** bpf(2) BPF_PROG_QUERY (include/uapi/linux/bpf.h, enum bpf_cmd). */
const BPF_PROG_QUERY = 16;

/**
 * How many programs are attached to the cgroup directory `dir` itself at `attachType` (BPF_PROG_QUERY without
 * BPF_F_QUERY_EFFECTIVE: links and attachments of that cgroup, not its parents'): what shows that nothing was
 * attached twice, whatever the pins say.
 */
export function attachedCount(dir: string, attachType: number): number {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    // the query's part of union bpf_attr: target_fd, attach_type, query_flags, attach_flags, prog_ids, prog_cnt
    const attr = Buffer.alloc(64);
    attr.writeUInt32LE(fd, 0);
    attr.writeUInt32LE(attachType, 4);
    syscall("bpf(PROG_QUERY)", SYS_bpf, BPF_PROG_QUERY, addressOf(attr), attr.length);
    return attr.readUInt32LE(24);
  } finally {
    closeSync(fd);
  }
}

/** The sock_ops and setsockopt programs attached to a cgroup directory. */
export function attached(dir: string): { sockOps: number; setsockopt: number } {
  return { sockOps: attachedCount(dir, BPF_CGROUP_SOCK_OPS), setsockopt: attachedCount(dir, BPF_CGROUP_SETSOCKOPT) };
}

/** Write `text` to `file` atomically, as an editor does: a temporary file in the same directory, renamed over it. */
export function writeAtomically(file: string, text: string): void {
  const tmp = join(dirname(file), `.${basename(file)}.${process.pid}.tmp`);
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}
