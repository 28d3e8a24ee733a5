/**
 * The set-up of the end-to-end tests of `tcpka enforce` (and of the enforce part of the tests that compare the
 * mechanisms): the agent of test/fixtures/enforce_agent.py (a python3 process in a test cgroup, or outside it, that
 * listens, connects and accepts when told and reports each socket's options read with getsockopt from inside),
 * enforcements made and removed with tcpka in this process's namespaces (where the cgroup2 mount and /sys/fs/bpf
 * are visible; `ip netns exec` would remount /sys and hide both), and the pins that an enforcement leaves under
 * /sys/fs/bpf/tcpka. Every agent is killed by pid, and every enforcement a test makes is removed with
 * `tcpka enforce --remove`, when its test ends.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after } from "node:test";
import type { Enforcement } from "../../src/enforce/cgroup.js";
import type { TestCgroup } from "./cgroup.js";
import { UNTOUCHED, WANT } from "./keepalive.js";
import { Netns } from "./netns.js";
import { fixture } from "./paths.js";
import { Process } from "./processes.js";
import { NAME_PREFIX, type Scope } from "./scope.js";
import { tcpkaHere } from "./tcpka.js";

export const AGENT = fixture("enforce_agent.py");
export const PIN_ROOT = "/sys/fs/bpf/tcpka";

/** The options of one socket as the agent reads them with getsockopt. */
export interface Opts {
  keepalive: number;
  idle: number;
  interval: number;
  count: number;
  user_timeout_ms: number;
  nodelay: number;
}

/** WANT and UNTOUCHED as ka() reads a socket: with its user timeout, which WANT_FLAGS leave at 0. */
export const KA_WANT = { ...WANT, user_timeout_ms: 0 };
export const KA_UNTOUCHED = { ...UNTOUCHED, user_timeout_ms: 0 };

/** The keepalive part of a socket's options (everything but nodelay). */
export function ka(o: Opts): Omit<Opts, "nodelay"> {
  const { nodelay: _, ...rest } = o;
  return rest;
}

export interface Sock {
  id: number;
  /** the local port */
  port: number;
  opts: Opts;
  /** for an accepted socket: the peer [address, port] */
  peer?: [string, number];
}

export interface ConnectOptions {
  family?: 4 | 6;
  /** bind the client to this address first (the peer address the server sees) */
  bind?: string;
  /** setsockopt before connect() */
  pre?: Partial<Opts>;
}

export interface ListenOptions {
  port?: number;
  /** 6: an AF_INET6 socket that also accepts IPv4 (IPV6_V6ONLY off), peers then appear as ::ffff:a.b.c.d */
  family?: 4 | 6;
  /** setsockopt before listen() */
  pre?: Partial<Opts>;
}

/** A running enforce_agent.py in the network namespace `ns`, inside `cgroup` or (without it) outside any test one. */
export class Agent {
  readonly pid: number;
  /** its cgroup v2 path, as it read it from /proc/self/cgroup */
  cgroup = "";

  private constructor(private readonly p: Process) {
    this.pid = p.pid;
  }

  static async start(scope: Scope, ns: Netns, cgroup?: TestCgroup): Promise<Agent> {
    const argv = ["ip", "netns", "exec", ns.name, "python3", AGENT];
    const child = cgroup ? cgroup.spawn(argv) : spawn(argv[0]!, argv.slice(1), { stdio: ["pipe", "pipe", "pipe"] });
    const agent = new Agent(new Process(child, `agent ${child.pid}`));
    scope.after(() => agent.kill());
    const hello = JSON.parse(await agent.p.line(15_000)) as { pid: number; cgroup: string };
    assert.equal(hello.pid, agent.pid, "ip netns exec execs the agent: same pid");
    agent.cgroup = hello.cgroup;
    if (cgroup) assert.equal(agent.cgroup, cgroup.path, "the agent runs in the test cgroup");
    return agent;
  }

  private async ask<T>(cmd: Record<string, unknown>): Promise<T> {
    this.p.send(`${JSON.stringify(cmd)}\n`);
    const reply = JSON.parse(await this.p.line(15_000)) as T & { error?: string };
    if (reply.error) throw new Error(`agent ${this.pid}: ${JSON.stringify(cmd)}: ${reply.error}`);
    return reply;
  }

  listen(host: string, o: ListenOptions = {}): Promise<Sock> {
    return this.ask({ op: "listen", host, port: o.port ?? 0, family: o.family ?? 4, pre: o.pre ?? {} });
  }

  connect(host: string, port: number, o: ConnectOptions = {}): Promise<Sock> {
    return this.ask({ op: "connect", host, port, family: o.family ?? 4, bind: o.bind ?? "", pre: o.pre ?? {} });
  }

  accept(listener: Sock): Promise<Sock> {
    return this.ask({ op: "accept", id: listener.id });
  }

  async get(s: Sock): Promise<Opts> {
    return (await this.ask<Sock>({ op: "get", id: s.id })).opts;
  }

  /** setsockopt calls in turn on `s` (options by the agent's names, rcvbuf too): each one's errno, then the options. */
  async calls(s: Sock, calls: readonly [string, number][]): Promise<{ errnos: number[]; opts: Opts }> {
    return this.ask({ op: "calls", id: s.id, calls });
  }

  async close(s: Sock): Promise<void> {
    await this.ask({ op: "close", id: s.id });
  }

  /** SIGKILL by pid, unless it has already exited. */
  kill(): void {
    this.p.kill();
  }
}

/**
 * A connection from `client` to `server`'s listener, both ends as they are once accepted:
 * [client's socket, accepted socket].
 */
export async function connectPair(
  client: Agent,
  server: Agent,
  listener: Sock,
  host: string,
  o: ConnectOptions = {},
): Promise<[Sock, Sock]> {
  const c = await client.connect(host, listener.port, o);
  const a = await server.accept(listener);
  return [c, a];
}

const guarded = new WeakSet<TestCgroup>();

/**
 * Make sure nothing enforced on `cgroup` outlives it: when it is destroyed (before its rmdir), `tcpka enforce
 * --remove` it if --list still shows it; if that fails, delete its pin directory by hand and report the failure.
 */
export function guard(cgroup: TestCgroup): void {
  if (guarded.has(cgroup)) return;
  guarded.add(cgroup);
  cgroup.onDestroy(() => {
    const e = enforcedOn(cgroup);
    if (!e) return;
    const r = tcpkaHere(["enforce", "--remove", "--cgroup", cgroup.path]);
    if (r.status === 0 && !existsSync(join(PIN_ROOT, e.name))) return;
    rmSync(join(PIN_ROOT, e.name), { recursive: true, force: true });
    throw new Error(`cleanup: tcpka enforce --remove --cgroup ${cgroup.path} exited ${r.status}: ${r.stderr}`);
  });
}

/** `tcpka enforce --cgroup CGROUP ARGS...`, which must succeed; its stdout. Removed when the cgroup is destroyed. */
export function enforce(cgroup: TestCgroup, args: readonly string[]): string {
  guard(cgroup);
  const r = tcpkaHere(["enforce", "--cgroup", cgroup.path, ...args]);
  assert.equal(r.status, 0, `tcpka enforce --cgroup ${cgroup.path} ${args.join(" ")}: ${r.stderr}`);
  assert.equal(r.stderr, "");
  return r.stdout;
}

/** `tcpka enforce --remove --cgroup CGROUP`, which must succeed, and leave no pin and no --list entry for it. */
export function remove(cgroup: TestCgroup): string {
  const e = enforcedOn(cgroup);
  assert.ok(e, `${cgroup.path} is enforced on before --remove`);
  const r = tcpkaHere(["enforce", "--remove", "--cgroup", cgroup.path]);
  assert.equal(r.status, 0, `tcpka enforce --remove --cgroup ${cgroup.path}: ${r.stderr}`);
  assert.ok(!existsSync(join(PIN_ROOT, e.name)), `no pin left at ${join(PIN_ROOT, e.name)}`);
  assert.equal(enforcedOn(cgroup), undefined, "--list no longer shows it");
  return r.stdout;
}

/**
 * An entry of `tcpka enforce --list --json`: the description, when the pinned link runs the program it describes
 * (settings_known); otherwise only name, cgroup, cgroup_exists and unknown_reason.
 */
export type Listed = Enforcement & {
  cgroup_exists: boolean;
  settings_known: boolean;
  unknown_reason?: string;
  /** the setsockopt program of these settings is attached beside the sock_ops one */
  setsockopt_hook: boolean;
  /** the counters: connections and listeners set up, programs' calls whose value was replaced */
  connections_set_up?: number;
  calls_kept_to_rule?: number;
};

/** `tcpka enforce --list --json`, parsed. */
export function listJson(): Listed[] {
  const r = tcpkaHere(["enforce", "--list", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as Listed[];
}

/** What --list --json says is enforced on `cgroup` itself, if anything. */
export function enforcedOn(cgroup: TestCgroup): Listed | undefined {
  return listJson().find((e) => e.cgroup === cgroup.path);
}

/**
 * The pins under /sys/fs/bpf/tcpka that belong to this test process's cgroups: every test cgroup's name starts
 * with NAME_PREFIX, which has nothing that a pin name would have to encode, so their pin names start with
 * ":" NAME_PREFIX (or NAME_PREFIX alone, in the naming scheme of earlier versions).
 */
export function ourPins(): string[] {
  try {
    return readdirSync(PIN_ROOT).filter((n) => n.startsWith(`:${NAME_PREFIX}`) || n.startsWith(NAME_PREFIX));
  } catch {
    return [];
  }
}

/** Pass when no pin of this process is left under /sys/fs/bpf/tcpka. */
export function assertNoPinsLeft(): void {
  assert.deepEqual(ourPins(), [], `no pin left under ${PIN_ROOT}`);
}

function bpffsMounted(): boolean {
  return readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .some((l) => l.split(" ")[1] === "/sys/fs/bpf" && l.split(" ")[2] === "bpf");
}

/**
 * tcpka enforce mounts the BPF file system when it is missing (as bpftool does). A test file calls this once at
 * load and uses the returned function in its `after`: when the file system was not there before the tests,
 * it is unmounted again once nothing is pinned in it, so the machine is left as it was found.
 */
export function bpffsRestorer(): () => void {
  const wasMounted = bpffsMounted();
  return () => {
    if (wasMounted || !bpffsMounted() || existsSync(PIN_ROOT)) return;
    spawnSync("umount", ["/sys/fs/bpf"], { stdio: "ignore" });
  };
}

/**
 * The end of a test file that enforces, registered when it loads: `first` (what the file itself made), every
 * namespace removed, no pin of this process left under /sys/fs/bpf/tcpka, /sys/fs/bpf as it was found.
 */
export function afterEnforceTests(first?: () => void): void {
  const restoreBpffs = bpffsRestorer();
  after(() => {
    first?.();
    Netns.destroyAll();
    assertNoPinsLeft();
    restoreBpffs();
  });
}
