/**
 * Network namespaces for end-to-end tests against the real kernel. A Netns has a unique name
 * (tcpka-t-<pid>-<random>) and its loopback up; commands run inside it through `ip netns exec`, as root or as
 * another user. It is removed, together with every long-lived process it started (killed by pid), when the
 * test or file that created it ends, passed or failed, and at the latest when this process exits.
 *
 * Everything here is meant to grow into the firewall lab of later tests (client, router and server namespaces
 * joined by veth pairs, addresses from 198.18.0.0/15, nftables rulesets): a lab is a few Netns plus links.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmodSync, cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root: this file runs as dist-test/test/helpers/netns.js. */
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const TCPKA = join(REPO, "bin", "tcpka.js");

export interface User {
  uid: number;
  gid: number;
}

/** The unprivileged user every Linux system has. */
export const NOBODY: User = { uid: 65534, gid: 65534 };

export interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Written to the command's stdin. */
  input?: string;
  /** Run as this user instead of root (through setpriv, after entering the namespace). */
  user?: User;
  timeoutMs?: number;
}

/** What ends and then runs cleanups: a TestContext, or `{ after }` of node:test for a whole file. */
export interface Scope {
  after(fn: () => void): void;
}

/** Namespaces not yet removed; whatever a crash leaves here goes when the process exits. */
const live = new Set<Netns>();
process.once("exit", () => Netns.destroyAll());

export class Netns {
  readonly name = `tcpka-t-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  private readonly processes: Process[] = [];

  private constructor() {}

  /** A new namespace with lo up, removed when `scope` ends (or by Netns.destroyAll()). */
  static create(scope?: Scope): Netns {
    const ns = new Netns();
    succeeded(execHere(["ip", "netns", "add", ns.name]), "ip netns add");
    live.add(ns);
    scope?.after(() => ns.destroy());
    ns.ip("link", "set", "lo", "up");
    return ns;
  }

  /** Remove every namespace this process created and has not removed yet: `after(() => Netns.destroyAll())`. */
  static destroyAll(): void {
    for (const ns of live) ns.destroy();
  }

  /** Run a command inside and wait for it. A non-zero exit is returned, not thrown. */
  exec(argv: readonly string[], opts: ExecOptions = {}): Result {
    return execHere(["ip", "netns", "exec", this.name, ...asUser(opts.user), ...argv], opts);
  }

  /** Run a command inside; throw with its stderr unless it exits 0. Returns its stdout. */
  run(argv: readonly string[], opts: ExecOptions = {}): string {
    return succeeded(this.exec(argv, opts), `in ${this.name}: ${argv.join(" ")}`);
  }

  /** `ip ARGS...` inside the namespace. */
  ip(...args: string[]): string {
    return this.run(["ip", ...args]);
  }

  /** Load an nftables ruleset (the text of `nft -f`) into the namespace. */
  nft(ruleset: string): void {
    this.run(["nft", "-f", "-"], { input: ruleset });
  }

  /** A sysctl of this namespace, e.g. "net.ipv4.tcp_keepalive_time", read from /proc/sys inside it. */
  sysctl(name: string): string {
    return this.run(["cat", sysctlPath(name)]).trim();
  }

  setSysctl(name: string, value: string | number): void {
    this.run(["tee", sysctlPath(name)], { input: `${value}\n` });
  }

  /** The tcpka CLI inside the namespace, as root or as `user`. */
  tcpka(args: readonly string[], opts: Omit<ExecOptions, "input"> = {}): Result {
    return this.exec([process.execPath, opts.user ? readableTcpka() : TCPKA, ...args], opts);
  }

  /** A long-lived process inside; killed (by pid) when the namespace is destroyed, if still running. */
  spawn(argv: readonly string[], opts: { user?: User } = {}): Process {
    const child = spawn("ip", ["netns", "exec", this.name, ...asUser(opts.user), ...argv], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    const p = new Process(child, argv.join(" "));
    this.processes.push(p);
    return p;
  }

  /** Kill the processes it started, then delete the namespace. Safe to call twice. */
  destroy(): void {
    for (const p of this.processes) p.kill();
    if (live.delete(this)) execHere(["ip", "netns", "delete", this.name]);
  }
}

/**
 * A process started by Netns.spawn. `ip netns exec` execs the command, so `pid` is the command's own pid
 * (and stays so across the command's own execs).
 */
export class Process {
  readonly pid: number;
  private stderr = "";
  private readonly lines: AsyncIterator<string>;

  constructor(
    private readonly child: ChildProcess,
    private readonly what: string,
  ) {
    if (child.pid === undefined) throw new Error(`cannot start ${what}`);
    this.pid = child.pid;
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      this.stderr += d;
    });
    this.lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  }

  /** The next line it prints; fails if it ends its output first or prints nothing for `timeoutMs`. */
  async line(timeoutMs = 10_000): Promise<string> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.what}: no output for ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      const next = await Promise.race([this.lines.next(), timeout]);
      if (next.done) throw new Error(`${this.what} ended without a line; stderr: ${this.stderr.trim()}`);
      return next.value;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Write to its stdin. */
  send(text: string): void {
    this.child.stdin?.write(text);
  }

  /** SIGKILL by pid, unless it has already exited (then the pid may belong to someone else). */
  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
  }
}

function asUser(user: User | undefined): string[] {
  return user ? ["setpriv", `--reuid=${user.uid}`, `--regid=${user.gid}`, "--clear-groups", "--"] : [];
}

/** "net.ipv4.tcp_keepalive_time" -> "/proc/sys/net/ipv4/tcp_keepalive_time". */
export function sysctlPath(name: string): string {
  return `/proc/sys/${name.replaceAll(".", "/")}`;
}

/** Run a command in this process's namespace and wait for it; throws only when it cannot run or times out. */
function execHere(argv: readonly string[], opts: ExecOptions = {}): Result {
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

/** The stdout of a command that exited 0; an error with its stderr otherwise. */
function succeeded(r: Result, what: string): string {
  if (r.status !== 0) throw new Error(`${what} exited ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

let readableCopy: string | undefined;

/**
 * bin/tcpka.js in a copy of what it needs at run time (package.json, bin, dist, node_modules) that any user may
 * read: the checkout itself may sit under a directory only root can enter (such as /root). Made once, removed
 * when this process exits.
 */
function readableTcpka(): string {
  if (readableCopy === undefined) {
    const dir = mkdtempSync(join(tmpdir(), "tcpka-t-"));
    process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
    chmodSync(dir, 0o755);
    for (const f of ["package.json", "bin", "dist", "node_modules"]) {
      cpSync(join(REPO, f), join(dir, f), { recursive: true });
    }
    readableCopy = dir;
  }
  return join(readableCopy, "bin", "tcpka.js");
}
