/**
 * Network namespaces for end-to-end tests against the real kernel. A Netns has a unique name
 * (tcpka-t-<pid>-<random>) and its loopback up; commands run inside it through `ip netns exec`, as root or as
 * another user. It is removed, together with every long-lived process it started (killed by pid), when the
 * test or file that created it ends, passed or failed, and at the latest when this process exits.
 *
 * Everything here is meant to grow into the firewall lab of later tests (client, router and server namespaces
 * joined by veth pairs, addresses from 198.18.0.0/15, nftables rulesets): a lab is a few Netns plus links.
 */
import { spawn } from "node:child_process";
import { TCPKA } from "./paths.js";
import { cleanEnv, Process, type Result, runSync } from "./processes.js";
import { type Scope, uniqueName } from "./scope.js";
import { tcpkaFor } from "./tcpka.js";
import { asUser, type User } from "./users.js";

export interface ExecOptions {
  /** Written to the command's stdin. */
  input?: string;
  /** Run as this user instead of root (through setpriv, after entering the namespace). */
  user?: User;
  timeoutMs?: number;
}

/** Namespaces not yet removed; whatever a crash leaves here goes when the process exits. */
const live = new Set<Netns>();
process.once("exit", () => Netns.destroyAll());

export class Netns {
  readonly name = uniqueName();
  private readonly processes: Process[] = [];

  private constructor() {}

  /** A new namespace with lo up, removed when `scope` ends (or by Netns.destroyAll()). */
  static create(scope?: Scope): Netns {
    const ns = new Netns();
    succeeded(runSync(["ip", "netns", "add", ns.name]), "ip netns add");
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
    return runSync(["ip", "netns", "exec", this.name, ...asUser(opts.user), ...argv], opts);
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
    return this.exec([process.execPath, tcpkaFor(opts.user), ...args], opts);
  }

  /** The tcpka CLI started inside, in the background (for --watch); killed with the namespace. */
  startTcpka(args: readonly string[]): Process {
    return this.spawn([process.execPath, TCPKA, ...args], { env: cleanEnv() });
  }

  /** A long-lived process inside; killed (by pid) when the namespace is destroyed, if still running. */
  spawn(argv: readonly string[], opts: { user?: User; env?: NodeJS.ProcessEnv } = {}): Process {
    const child = spawn("ip", ["netns", "exec", this.name, ...asUser(opts.user), ...argv], {
      stdio: ["pipe", "pipe", "pipe"],
      env: opts.env,
    });
    const p = new Process(child, argv.join(" "));
    this.processes.push(p);
    return p;
  }

  /** Kill the processes it started, then delete the namespace. Safe to call twice. */
  destroy(): void {
    for (const p of this.processes) p.kill();
    if (live.delete(this)) runSync(["ip", "netns", "delete", this.name]);
  }
}

/** "net.ipv4.tcp_keepalive_time" -> "/proc/sys/net/ipv4/tcp_keepalive_time". */
export function sysctlPath(name: string): string {
  return `/proc/sys/${name.replaceAll(".", "/")}`;
}

/** The stdout of a command that exited 0; an error with its stderr otherwise. */
function succeeded(r: Result, what: string): string {
  if (r.status !== 0) throw new Error(`${what} exited ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}
