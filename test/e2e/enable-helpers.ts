/**
 * Shared by the end-to-end tests of `tcpka enable` and `tcpka disable` (enable*.test.ts): the fixtures of
 * test/fixtures/enable/ (compiled into a temporary directory), what they report about their own sockets, tcpka
 * started in the background, and the text of its summary. Every process started here is ended by pid, and every
 * temporary directory removed, when the test that made it ends.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmodSync, closeSync, mkdtempSync, openSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Netns, type Process, REPO, type Result, TCPKA } from "../helpers/netns.js";

export const FIXTURES = join(REPO, "test", "fixtures", "enable");

/** Distinctive settings that no program or default has: what enable is asked for. */
export const WANT = { keepalive: 1, idle: 7, interval: 3, count: 4 };
export const WANT_FLAGS = ["--idle", "7s", "--interval", "3s", "--count", "4"];
/** What a socket that never asked for keepalive reports in a fresh namespace (compiled-in sysctl defaults). */
export const UNTOUCHED = { keepalive: 0, idle: 7200, interval: 75, count: 9 };

/** What ends and then runs cleanups: a TestContext, or `{ after }` of node:test for a whole file. */
export interface Scope {
  after(fn: () => void | Promise<void>): void;
}

/** A temporary directory that every user may read (for programs run as nobody), removed when `scope` ends. */
export function tempDir(scope: Scope): string {
  const dir = mkdtempSync(join(tmpdir(), "tcpka-enable-"));
  scope.after(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  return dir;
}

function run(argv: readonly string[]): void {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8", timeout: 60_000, killSignal: "SIGKILL" });
  assert.equal(r.status, 0, `${argv.join(" ")}: ${r.error?.message ?? ""}${r.stderr}`);
}

/** Compile test/fixtures/enable/NAME.c into DIR/NAME, statically linked when asked. */
export function compileC(dir: string, name: string, opts: { static?: boolean } = {}): string {
  const out = join(dir, name);
  run(["gcc", ...(opts.static ? ["-static"] : []), "-O2", "-Wall", "-Werror", "-o", out, join(FIXTURES, `${name}.c`)]);
  return out;
}

/** Compile test/fixtures/enable/NAME.java into DIR; run it with `java -cp DIR NAME`. */
export function compileJava(dir: string, name: string): void {
  run(["javac", "-d", dir, join(FIXTURES, `${name}.java`)]);
}

/** True when the ELF file has no PT_INTERP program header: the dynamic loader (and LD_PRELOAD) never runs. */
export function isStaticElf(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const head = Buffer.alloc(64);
    readSync(fd, head, 0, 64, 0);
    assert.equal(head.toString("latin1", 0, 4), "\x7fELF");
    assert.equal(head[4], 2, "ELF64");
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3) return false; // PT_INTERP
    return true;
  } finally {
    closeSync(fd);
  }
}

/** One socket as its owner reports it (getsockopt from inside); the fields beyond these vary by fixture. */
export interface Reported {
  role: "listen" | "client" | "accepted";
  label?: string;
  fd?: number;
  inode?: number;
  keepalive: number;
  idle: number;
  interval: number;
  count: number;
}

export interface Report<S extends Reported = Reported> {
  pid: number;
  sockets: S[];
}

/** Ask a holder fixture (holder.py, holder.c, Holder.java) what getsockopt says about its sockets now. */
export async function report<S extends Reported = Reported>(p: Process, timeoutMs = 10_000): Promise<Report<S>> {
  p.send("report\n");
  const line = await p.line(timeoutMs);
  const r = JSON.parse(line) as Report<S>;
  assert.equal(r.pid, p.pid, "the fixture is the process tcpka was pointed at");
  return r;
}

/** The keepalive facts of a socket, for comparison with WANT and UNTOUCHED. */
export function settings(s: Reported): { keepalive: number; idle: number; interval: number; count: number } {
  return { keepalive: s.keepalive, idle: s.idle, interval: s.interval, count: s.count };
}

/** Every socket of the report has exactly `want`, each named in the failure message. */
export function assertAll(sockets: readonly Reported[], want: typeof WANT, what: string): void {
  assert.notEqual(sockets.length, 0, `${what}: some sockets`);
  for (const s of sockets) {
    assert.deepEqual(settings(s), want, `${what}: ${s.label ?? ""} ${s.role} fd ${s.fd ?? "?"}`);
  }
}

/** The summary tcpka enable/disable prints after its per-socket lines. */
export interface Summary {
  sockets: number;
  processes: number;
  /** "changed", "already as strong", "listening", "gone", "failed", ... -> count */
  rows: Record<string, number>;
  /** the note after a row's count, e.g. "keepalive on, 7s / 3s / 4" */
  notes: Record<string, string>;
  /** "dead peers are now noticed after at most 19s (before: never)", if printed */
  deadPeers: string | null;
}

export function summary(stdout: string): Summary {
  const lines = stdout.split("\n");
  const start = lines.findIndex((l) => /^\d+ TCP sockets? in \d+ process(es)?$/.test(l));
  assert.notEqual(start, -1, `a summary in: ${stdout}`);
  const [, sockets, processes] = /^(\d+) TCP sockets? in (\d+)/.exec(lines[start]!)!;
  const out: Summary = { sockets: Number(sockets), processes: Number(processes), rows: {}, notes: {}, deadPeers: null };
  for (const line of lines.slice(start + 1)) {
    const row = /^ {2}([a-z][a-z ]*?) +(\d+)(?: {2}(.*))?$/.exec(line);
    if (row) {
      out.rows[row[1]!] = Number(row[2]);
      if (row[3]) out.notes[row[1]!] = row[3];
    } else if (line.startsWith("dead peers ")) out.deadPeers = line;
  }
  return out;
}

/**
 * stderr is exactly `tcpka: <message>` and at most one `hint:` line; the right exit code; no stack trace and
 * nothing on stdout.
 */
export function assertOneLineError(r: Result, status: 1 | 2, message: RegExp): void {
  assert.equal(r.status, status, `exit code; stdout: ${r.stdout} stderr: ${r.stderr}`);
  assert.match(r.stderr, /^tcpka: [^\n]+\n(hint: [^\n]+\n)?$/);
  assert.match(r.stderr.split("\n")[0]!, message);
  assert.ok(!/\n\s+at /.test(r.stderr), "no stack trace");
  assert.equal(r.stdout, "");
}

/** `timer:(kind,left,probes)` of `ss -tanoe`, by inode; null for a socket without a timer. */
export function ssTimers(ns: Netns): Map<number, { kind: string; leftMs: number } | null> {
  // ss -e under ip netns exec complains on stderr that it cannot find the cgroup2 mount: ignored.
  const text = ns.run(["ss", "-tanoe"]);
  const out = new Map<number, { kind: string; leftMs: number } | null>();
  for (const line of text.split("\n")) {
    const ino = /\bino:(\d+)/.exec(line);
    if (!ino) continue;
    const t = /\btimer:\((\w+),(?:(\d+)min)?(?:(\d+)(?:sec|\.))?(?:(\d+)ms)?,\d+\)/.exec(line);
    const ms = t ? Number(t[2] ?? 0) * 60_000 + Number(t[3] ?? 0) * 1000 + Number(t[4] ?? 0) : 0;
    out.set(Number(ino[1]), t ? { kind: t[1]!, leftMs: ms } : null);
  }
  return out;
}

/** tcpka started in the background inside a namespace (for --watch): its output, its end, signals by pid. */
export class Background {
  stdout = "";
  stderr = "";
  readonly pid: number;
  readonly done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;

  constructor(scope: Scope, ns: Netns, args: readonly string[]) {
    // `ip netns exec` execs its command: the pid is node's own, and a signal sent to it reaches tcpka.
    this.child = spawn("ip", ["netns", "exec", ns.name, process.execPath, TCPKA, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    if (this.child.pid === undefined) throw new Error("cannot start tcpka");
    this.pid = this.child.pid;
    this.child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      this.stdout += d;
    });
    this.child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      this.stderr += d;
    });
    this.done = new Promise((resolve, reject) => {
      this.child.once("error", reject);
      this.child.once("close", (code, signal) => resolve({ code, signal }));
    });
    this.done.catch(() => {});
    scope.after(async () => {
      this.signal("SIGKILL");
      await this.done.catch(() => {});
    });
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Signal it by pid, unless it has already exited (then the pid may be someone else's). */
  signal(sig: NodeJS.Signals): void {
    if (this.running) this.child.kill(sig);
  }

  /** Wait until stdout matches `re`; fails after `timeoutMs` or when it exits first. */
  async waitFor(re: RegExp, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!re.test(this.stdout)) {
      if (!this.running) throw new Error(`tcpka exited without printing ${re}: ${this.stdout}${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`tcpka printed no ${re} in ${timeoutMs} ms: ${this.stdout}`);
      await sleep(20);
    }
  }

  /** Its exit, or an error (and SIGKILL) when it has not exited within `timeoutMs`. */
  async exit(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.signal("SIGKILL");
        reject(new Error(`tcpka still running after ${timeoutMs} ms; stdout: ${this.stdout} stderr: ${this.stderr}`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.done, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
