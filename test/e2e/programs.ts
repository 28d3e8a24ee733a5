/**
 * Shared by the end-to-end tests of `tcpka run` and `tcpka trace`: starting real programs (with or without the
 * shim) and waiting for them, compiling the fixtures of test/fixtures/, small loopback servers in this process,
 * and the two outside views of a socket's keepalive: `tcpka ls --json --pid` (exact getsockopt through
 * pidfd_getfd) and `ss -tnoe` timers. Every process started here is ended by pid when its test ends.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root: this file runs as dist-test/test/e2e/programs.js. */
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const TCPKA = join(REPO, "bin", "tcpka.js");
export const SHIM = join(REPO, "native", "build", "libtcpka.so");
export const FIXTURES = join(REPO, "test", "fixtures");

/** Distinctive settings that no program or default has: what `run` is asked for in these tests. */
export const WANT = { idle: 7, interval: 3, count: 4 };
export const WANT_FLAGS = ["--idle", "7s", "--interval", "3s", "--count", "4"];

/** What end-of-test cleanups are registered on: a TestContext, or `{ after }` of node:test for a file. */
export interface Scope {
  after(fn: () => void | Promise<void>): void;
}

/** A private temporary directory, removed when the scope ends. */
export function tempDir(scope: Scope, prefix = "tcpka-e2e-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scope.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface Done {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Killed (SIGKILL, by pid) after this long; the wait then rejects. */
  timeoutMs?: number;
}

/** A running program: its output so far, its stdin, and its end. */
export class Started {
  readonly pid: number;
  stdout = "";
  stderr = "";
  readonly done: Promise<Done>;
  private ended = false;
  private waiters: (() => void)[] = [];

  constructor(
    private readonly child: ChildProcess,
    readonly what: string,
    timeoutMs: number,
  ) {
    if (child.pid === undefined) throw new Error(`cannot start ${what}`);
    this.pid = child.pid;
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      this.stdout += d;
      this.wake();
    });
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      this.stderr += d;
    });
    child.stdin?.on("error", () => {}); // the program may exit without reading its stdin
    const timer = setTimeout(() => {
      this.timedOut = true;
      this.kill("SIGKILL");
    }, timeoutMs);
    this.done = new Promise((resolve, reject) => {
      child.once("error", reject);
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.ended) return;
        clearTimeout(timer);
        this.ended = true;
        this.wake();
        if (this.timedOut) {
          reject(
            new Error(`${what}: still running after ${timeoutMs} ms; stdout: ${this.stdout} stderr: ${this.stderr}`),
          );
        } else {
          resolve({ code, signal, stdout: this.stdout, stderr: this.stderr });
        }
      };
      child.once("close", finish);
      // Its output is complete at "close"; but a process it forked may hold the pipes open after it exited.
      child.once("exit", (code, signal) => setTimeout(() => finish(code, signal), 2000).unref());
    });
    this.done.catch(() => {}); // a timeout is reported to whoever awaits it
  }

  private timedOut = false;

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Wait until stdout has a line matching `re` (searched from the start); returns the match. */
  async waitFor(re: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.stdout);
      if (m) return m;
      if (this.ended) {
        throw new Error(`${this.what} ended without printing ${re}; stdout: ${this.stdout} stderr: ${this.stderr}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.what}: no ${re} after ${timeoutMs} ms; stdout: ${this.stdout}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** The lines of stdout that are JSON objects, parsed. */
  json<T = Record<string, unknown>>(): T[] {
    return this.stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as T);
  }

  send(text: string): void {
    this.child.stdin?.write(text);
  }

  /** Close its stdin (the fixtures that hold connections then finish) and wait for its end. */
  finish(): Promise<Done> {
    this.child.stdin?.end();
    return this.done;
  }

  get running(): boolean {
    return !this.ended && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Signal it by pid, unless it has already ended (then the pid may be someone else's). */
  kill(signal: NodeJS.Signals = "SIGTERM"): void {
    if (this.running) this.child.kill(signal);
  }

  /** End it for good: close stdin, SIGTERM, then SIGKILL if it is still there after `graceMs`. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return;
    this.child.stdin?.end();
    this.kill("SIGTERM");
    const timer = setTimeout(() => this.kill("SIGKILL"), graceMs);
    await this.done.catch(() => {});
    clearTimeout(timer);
  }
}

/** Start a program; it is stopped (by pid) when the scope ends if it is still running. */
export function start(scope: Scope, argv: readonly string[], opts: StartOptions = {}): Started {
  const [file, ...args] = argv;
  if (!file) throw new Error("start: empty command");
  const child = spawn(file, args, { env: opts.env ?? cleanEnv(), cwd: opts.cwd, stdio: ["pipe", "pipe", "pipe"] });
  const p = new Started(child, argv.join(" "), opts.timeoutMs ?? 60_000);
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

/**
 * TMPDIR for tcpka and the programs it runs (`tcpka trace` keeps its event file in a directory there): whatever
 * a killed tcpka leaves behind goes with this directory when the test process exits.
 */
let tcpkaTmp: string | undefined;
function tcpkaEnv(): NodeJS.ProcessEnv {
  if (tcpkaTmp === undefined) {
    const dir = mkdtempSync(join(tmpdir(), "tcpka-e2e-tmp-"));
    process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
    tcpkaTmp = dir;
  }
  return cleanEnv({ TMPDIR: tcpkaTmp });
}

/** The tcpka CLI, as `node bin/tcpka.js ARGS...`. */
export function tcpka(scope: Scope, args: readonly string[], opts: StartOptions & { input?: string } = {}) {
  return exec(scope, [process.execPath, TCPKA, ...args], { env: tcpkaEnv(), ...opts });
}

/** The tcpka CLI started in the background (for `run` with a program that holds its connections). */
export function startTcpka(scope: Scope, args: readonly string[], opts: StartOptions = {}): Started {
  return start(scope, [process.execPath, TCPKA, ...args], { env: tcpkaEnv(), ...opts });
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

let pythonPath: string | undefined;

/**
 * The real python3 binary. `python3` may be a wrapper script (pyenv shims are shell scripts that exec the real
 * interpreter), which would add a process and a shell to everything a test watches.
 */
export function python(): string {
  if (pythonPath === undefined) {
    const r = spawnSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`python3: ${r.stderr}`);
    pythonPath = r.stdout.trim();
  }
  return pythonPath;
}

/** Compile a C fixture with gcc into `dir`; returns the executable's path. */
export function compileC(dir: string, source: string, out: string, flags: readonly string[] = []): string {
  const exe = join(dir, out);
  const r = spawnSync("gcc", ["-O2", "-Wall", "-Wextra", "-o", exe, join(FIXTURES, source), ...flags], {
    encoding: "utf8",
  });
  assert.equal(r.status, 0, `gcc ${source}: ${r.stderr}`);
  return exe;
}

/** A fixture's path. */
export function fixture(name: string): string {
  return join(FIXTURES, name);
}

export interface Listener {
  port: number;
  host: string;
  /** Connections accepted so far (still open unless the peer closed them). */
  sockets: Socket[];
  /** Data received per connection, in accept order. */
  received: string[];
  /** Resolves once `n` connections have been accepted (and each has sent something when `withData`). */
  accepted(n: number, withData?: boolean, timeoutMs?: number): Promise<void>;
}

/**
 * A TCP listener in this process on `host` and an ephemeral port. It accepts and holds every connection until
 * the scope ends (a program that connects never has to wait for it); the test answers through `sockets`. The test
 * must not block its event loop (spawnSync) while a program talks to it.
 */
export async function listener(scope: Scope, host = "127.0.0.1"): Promise<Listener> {
  const sockets: Socket[] = [];
  const received: string[] = [];
  const waiters: (() => void)[] = [];
  const server: Server = createServer((s) => {
    const i = sockets.push(s) - 1;
    received[i] = "";
    s.on("error", () => {});
    s.setEncoding("utf8");
    s.on("data", (d: string) => {
      received[i] += d;
      for (const w of waiters.splice(0)) w();
    });
    for (const w of waiters.splice(0)) w();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host, port: 0, backlog: 4096 }, resolve);
  });
  scope.after(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("listener: no address");
  return {
    port: address.port,
    host,
    sockets,
    received,
    async accepted(n, withData = false, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      const ok = () => sockets.length >= n && (!withData || received.slice(0, n).every((r) => r !== ""));
      while (!ok()) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`listener ${host}:${address.port}: ${sockets.length} of ${n} connections`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
    },
  };
}

/** One connection as `tcpka ls --json` reports it. */
export interface LsConnection {
  state: string;
  family: 4 | 6;
  local_address: string;
  local_port: number;
  peer_address: string;
  peer_port: number;
  keepalive: boolean | null;
  source: "exact" | "timer";
  idle_s: number | null;
  interval_s: number | null;
  count: number | null;
  user_timeout_ms: number | null;
  processes: { pid: number; comm: string; fd: number }[];
}

/** The established connections of `pid`, read from outside with exact getsockopt (`tcpka ls --json --pid`). */
export async function exactConnections(scope: Scope, pid: number, extra: readonly string[] = []) {
  const r = await tcpka(scope, ["ls", "--json", "--pid", String(pid), ...extra]);
  assert.equal(r.code, 0, `tcpka ls --pid ${pid}: ${r.stderr}`);
  const doc = JSON.parse(r.stdout) as { connections: LsConnection[] };
  return doc.connections;
}

/** The settings of a connection in the shape the fixtures print them, for one deepEqual. */
export function settingsOf(c: LsConnection) {
  assert.equal(c.source, "exact", `${c.local_address}:${c.local_port}: not read exactly`);
  return { keepalive: c.keepalive ? 1 : 0, idle: c.idle_s, interval: c.interval_s, count: c.count };
}

export interface SsTimer {
  local: string;
  peer: string;
  /** keepalive, on (retransmit), persist, timewait, or null when no timer runs. */
  timer: string | null;
  ms: number | null;
}

/** `ss -tnoe` for established connections that match an ss filter expression, with their timers. */
export function ssTimers(filter: string): SsTimer[] {
  const r = spawnSync("ss", ["-Htnoe", "state", "established", filter], { encoding: "utf8" });
  assert.equal(r.status, 0, `ss: ${r.stderr}`);
  return r.stdout
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => {
      const cols = l.trim().split(/\s+/);
      const m = /timer:\((\w+),([^,]+),\d+\)/.exec(l);
      return { local: cols[2] ?? "", peer: cols[3] ?? "", timer: m?.[1] ?? null, ms: m ? ssDuration(m[2]!) : null };
    });
}

/** ss's timer durations: "6.9sec", "999ms", "1min2sec", "119min", "2h3min". */
export function ssDuration(text: string): number {
  let ms = 0;
  for (const [, n, unit] of text.matchAll(/([\d.]+)(ms|sec|min|h|d)/g)) {
    const v = Number(n);
    ms += v * { ms: 1, sec: 1000, min: 60_000, h: 3_600_000, d: 86_400_000 }[unit as "ms" | "sec" | "min" | "h" | "d"];
  }
  return ms;
}

/**
 * `n` established connections match the ss filter and every one has a keepalive timer due within `idle` seconds.
 * Looked at for up to 2 s: right after data was sent, a retransmission timer hides the keepalive timer until the
 * peer's ACK arrives.
 */
export async function assertKeepaliveTimers(filter: string, n: number, idle: number): Promise<void> {
  const ok = (t: SsTimer) => t.timer === "keepalive" && t.ms !== null && t.ms > 0 && t.ms <= idle * 1000;
  const deadline = Date.now() + 2000;
  let timers = ssTimers(filter);
  while ((timers.length !== n || !timers.every(ok)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    timers = ssTimers(filter);
  }
  assert.equal(timers.length, n, `ss: ${JSON.stringify(timers)}`);
  for (const t of timers) {
    assert.equal(t.timer, "keepalive", `${t.local} -> ${t.peer}: timer ${t.timer}`);
    assert.ok(ok(t), `${t.local} -> ${t.peer}: keepalive in ${t.ms} ms, want 0 < ms <= ${idle * 1000}`);
  }
}
