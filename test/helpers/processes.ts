/**
 * Starting programs and waiting for them. A Process collects everything its program prints and is read in either
 * of two ways: a line at a time (a fixture that answers commands on its stdin), or by waiting for a pattern. A
 * process is only ever signalled by its pid, and only while it runs: once it has exited, its pid may be someone
 * else's.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { SHIM } from "./paths.js";
import type { Scope } from "./scope.js";

/** A program run to its end and waited for synchronously, as spawnSync reports it. */
export interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** The end of a Process. */
export interface Done {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** How long it ran. */
  ms: number;
}

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Killed (SIGKILL, by pid) after this long; the wait then rejects. */
  timeoutMs?: number;
}

/** A running program: its output so far, its stdin, and its end. */
export class Process {
  readonly pid: number;
  stdout = "";
  stderr = "";
  readonly done: Promise<Done>;
  private ended = false;
  private timedOut = false;
  /** Where in stdout the next line() starts. */
  private read = 0;
  private readonly waiters = new Set<() => void>();

  /** `timeoutMs`: killed after this long, and `done` rejects; without it, it may run until its scope ends. */
  constructor(
    private readonly child: ChildProcess,
    readonly what: string,
    timeoutMs?: number,
  ) {
    if (child.pid === undefined) throw new Error(`cannot start ${what}`);
    this.pid = child.pid;
    const t0 = performance.now();
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      this.stdout += d;
      this.wake();
    });
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      this.stderr += d;
      this.wake();
    });
    child.stdin?.on("error", () => {}); // the program may exit without reading its stdin
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            this.timedOut = true;
            this.kill();
          }, timeoutMs);
    this.done = new Promise((resolve, reject) => {
      child.once("error", reject);
      const finish = (code: number | null, signal: NodeJS.Signals | null, ms: number) => {
        if (this.ended) return;
        clearTimeout(timer);
        this.ended = true;
        this.wake();
        if (this.timedOut) {
          reject(
            new Error(`${what}: still running after ${timeoutMs} ms; stdout: ${this.stdout} stderr: ${this.stderr}`),
          );
        } else {
          resolve({ code, signal, stdout: this.stdout, stderr: this.stderr, ms });
        }
      };
      child.once("close", (code, signal) => finish(code, signal, performance.now() - t0));
      // Its output is complete at "close"; but a process it forked may hold the pipes open after it exited.
      child.once("exit", (code, signal) => {
        const ms = performance.now() - t0;
        setTimeout(() => finish(code, signal, ms), 2000).unref();
      });
    });
    this.done.catch(() => {}); // a timeout is reported to whoever awaits it
  }

  get running(): boolean {
    return !this.ended && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Wait until stdout (or stderr) has a match for `re`, searched from the start; returns the match. */
  async waitFor(re: RegExp, timeoutMs = 15_000, stream: "stdout" | "stderr" = "stdout"): Promise<RegExpMatchArray> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this[stream]);
      if (m) return m;
      if (this.ended) {
        throw new Error(`${this.what} ended without printing ${re}; stdout: ${this.stdout} stderr: ${this.stderr}`);
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new Error(`${this.what}: no ${re} after ${timeoutMs} ms; stdout: ${this.stdout} stderr: ${this.stderr}`);
      }
      await this.change(left);
    }
  }

  /** The next line of stdout that line() has not returned yet; fails if none comes within `timeoutMs`. */
  async line(timeoutMs = 10_000): Promise<string> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const end = this.stdout.indexOf("\n", this.read);
      if (end >= 0 || (this.ended && this.read < this.stdout.length)) {
        const stop = end >= 0 ? end : this.stdout.length;
        const line = this.stdout.slice(this.read, stop);
        this.read = stop + 1;
        return line.endsWith("\r") ? line.slice(0, -1) : line;
      }
      if (this.ended) throw new Error(`${this.what} ended without a line; stderr: ${this.stderr.trim()}`);
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`${this.what}: no output for ${timeoutMs} ms`);
      await this.change(left);
    }
  }

  /** The lines of stdout that are JSON objects, parsed. */
  json<T = Record<string, unknown>>(): T[] {
    return this.stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as T);
  }

  /** Its end as a Result (`status` for its exit code), as a synchronous run would report it. */
  async result(): Promise<Result> {
    const d = await this.done;
    return { status: d.code, stdout: d.stdout, stderr: d.stderr };
  }

  /** Write to its stdin. */
  send(text: string): void {
    this.child.stdin?.write(text);
  }

  /**
   * Close its stdin (the fixtures that hold connections then finish) and wait for its end; with `timeoutMs`, it
   * is killed (SIGKILL) if it has not ended by then, and its end is what that kill makes of it.
   */
  async finish(timeoutMs?: number): Promise<Done> {
    this.child.stdin?.end();
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => this.kill(), timeoutMs);
    try {
      return await this.done;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Signal it by pid, unless it has already ended (then the pid may be someone else's). */
  kill(signal: NodeJS.Signals = "SIGKILL"): void {
    if (this.running) this.child.kill(signal);
  }

  /** End it for good: close stdin, SIGTERM, then SIGKILL if it is still there after `graceMs`. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return;
    this.child.stdin?.end();
    this.kill("SIGTERM");
    const timer = setTimeout(() => this.kill(), graceMs);
    await this.done.catch(() => {});
    clearTimeout(timer);
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Resolves when it prints something or ends, or after `ms`. */
  private change(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(done);
    });
  }
}

/** Start a program; it is stopped (by pid) when the scope ends if it is still running. */
export function start(scope: Scope, argv: readonly string[], opts: StartOptions = {}): Process {
  const [file, ...args] = argv;
  if (!file) throw new Error("start: empty command");
  const child = spawn(file, args, { env: opts.env ?? cleanEnv(), cwd: opts.cwd, stdio: ["pipe", "pipe", "pipe"] });
  const p = new Process(child, argv.join(" "), opts.timeoutMs ?? 60_000);
  scope.after(() => p.stop());
  return p;
}

/** Run a program to its end (stdin closed at once unless `input` is given). */
export async function exec(
  scope: Scope,
  argv: readonly string[],
  opts: StartOptions & { input?: string } = {},
): Promise<Done> {
  const p = start(scope, argv, { timeoutMs: 30_000, ...opts });
  if (opts.input !== undefined) p.send(opts.input);
  return p.finish();
}

/** A program started elsewhere (TestCgroup.spawn): close its stdin and wait for its end. */
export function finished(child: ChildProcess): Promise<Result> {
  child.stdin?.end();
  return new Process(child, child.spawnargs.join(" ")).result();
}

/** Run a command in this process's namespaces and wait for it; throws only when it cannot run or times out. */
export function runSync(argv: readonly string[], opts: { input?: string; timeoutMs?: number } = {}): Result {
  const r = spawnSync(argv[0]!, argv.slice(1), {
    input: opts.input,
    encoding: "utf8",
    timeout: opts.timeoutMs ?? 30_000,
    killSignal: "SIGKILL",
    maxBuffer: 64 * 1024 * 1024, // tcpka --json on 10,000 sockets prints about 3 MB
  });
  if (r.error) throw new Error(`${argv.join(" ")}: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** SIGKILL a pid that this test found running in something it made (its cgroup, its namespace). */
export function killPid(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    /* exited meanwhile */
  }
}

/** Kill (by pid) a process that a program under test left behind, if it is still the one whose command has `marker`. */
export function killLeftover(pid: number, marker: string): void {
  try {
    if (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker)) process.kill(pid, "SIGKILL");
  } catch {
    /* gone */
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Poll `check` every 20 ms until it gives something other than undefined or false, and return that; fail saying
 * `what` once `timeoutMs` have passed.
 */
export async function until<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what} (${timeoutMs} ms)`);
    await sleep(20);
  }
}

/** This process's environment without anything that would load or configure the shim. */
export function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("TCPKA_") && k !== "LD_PRELOAD") env[k] = v;
  }
  return { ...env, ...extra };
}

/** The environment that loads the shim by hand, with these TCPKA_ variables. */
export function shimEnv(vars: Record<string, string>): NodeJS.ProcessEnv {
  return cleanEnv({ LD_PRELOAD: SHIM, ...vars });
}
