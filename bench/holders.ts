/**
 * Socket holders for the benchmark: small python3 processes that each open a listener on 127.0.0.1 (a port of
 * their own, so no destination runs out of ephemeral ports), connect N clients to it and accept them, then hold
 * all 2N ends idle until their stdin closes or they are killed. Every other client end has SO_KEEPALIVE on, so
 * a quarter of the sockets show a keepalive timer. Both ends have SO_LINGER 0, so they leave no TIME-WAIT behind.
 *
 * The hard RLIMIT_NOFILE is 20,000, so one holder keeps at most MAX_CONNECTIONS_PER_HOLDER connections
 * (2 fds each, plus the listener and stdio): 100,000 sockets take six or seven holders.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** 17,800 socket fds + listener + stdio: below the ~18,000 fds the brief allows per process. */
export const MAX_CONNECTIONS_PER_HOLDER = 8900;

const HOLDER_PY = `import resource, socket, struct, sys
n = int(sys.argv[1])
# SO_LINGER 0: when the holder exits (or is killed) its sockets are reset instead of lingering in TIME-WAIT,
# so a second run does not find 50,000 TIME-WAIT sockets that ss -a would list.
linger = struct.pack("ii", 1, 0)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(4096)
port = ls.getsockname()[1]
keep = []
for i in range(n):
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    if i % 2 == 0:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.connect(("127.0.0.1", port))
    s, _ = ls.accept()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    keep.append(c)
    keep.append(s)
# Its pid as the host sees it (the first of NSpid, in the pid namespace of the /proc mounted here): in a pid
# namespace of the bench's (hosts.ts) the bench kills it by that pid.
pid = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("NSpid:"))
sys.stdout.write("ready %d %d %s\\n" % (port, n, pid))
sys.stdout.flush()
sys.stdin.read()  # hold until the bench closes our stdin (or dies) or kills us
`;

/** Write the holder's script into `tmpDir` (once); its path. Run as `python3 PATH CONNECTIONS`. */
export function holderScript(tmpDir: string): string {
  const path = join(tmpDir, "holder.py");
  if (!existsSync(path)) writeFileSync(path, HOLDER_PY);
  return path;
}

/** How many of a holder's 2 × `connections` sockets have SO_KEEPALIVE on: every other client end. */
export function keepaliveOn(connections: number): number {
  return Math.ceil(connections / 2);
}

export interface Holder {
  pid: number;
  port: number;
  connections: number;
  child: ChildProcess;
}

/** All holders started by this process, so that they can be killed on any exit path. */
export class HolderPool {
  readonly holders: Holder[] = [];
  private readonly script: string;
  private readonly starting = new Set<ChildProcess>();

  /** `prefix`: the command that the holders run under (e.g. `ip netns exec NAME`, which execs them in place) */
  constructor(
    tmpDir: string,
    private readonly prefix: readonly string[] = [],
  ) {
    this.script = holderScript(tmpDir);
  }

  get connections(): number {
    return this.holders.reduce((n, h) => n + h.connections, 0);
  }

  get ports(): Set<number> {
    return new Set(this.holders.map((h) => h.port));
  }

  /** Add `connections` more connections (2 sockets each), spread evenly over as few holders as allowed. */
  async add(connections: number): Promise<void> {
    if (connections <= 0) return;
    const n = Math.ceil(connections / MAX_CONNECTIONS_PER_HOLDER);
    const sizes: number[] = [];
    for (let i = 0; i < n; i++) sizes.push(Math.floor(connections / n) + (i < connections % n ? 1 : 0));
    const started = await Promise.all(sizes.map((size) => this.start(size)));
    this.holders.push(...started);
  }

  private start(connections: number): Promise<Holder> {
    const [cmd = "python3", ...args] = [...this.prefix, "python3", this.script, String(connections)];
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "inherit"] });
    this.starting.add(child);
    return new Promise((resolve, reject) => {
      let out = "";
      const fail = (why: string) => {
        child.kill("SIGKILL");
        reject(new Error(`socket holder ${child.pid ?? "?"}: ${why}`));
      };
      const timer = setTimeout(() => fail("not ready after 60 s"), 60_000);
      child.on("error", (e) => {
        clearTimeout(timer);
        fail(e.message);
      });
      child.on("exit", (code, sig) => {
        clearTimeout(timer);
        if (!out.includes("\n")) fail(`exited (${sig ?? code}) before it was ready`);
      });
      child.stdout?.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /^ready (\d+) (\d+) \d+\n/.exec(out);
        if (!m || child.pid === undefined) return;
        clearTimeout(timer);
        this.starting.delete(child);
        resolve({ pid: child.pid, port: Number(m[1]), connections: Number(m[2]), child });
      });
    });
  }

  /** Kill every holder (started or still starting) by pid and wait until each has exited. */
  async stopAll(): Promise<void> {
    const children = [...this.holders.map((h) => h.child), ...this.starting];
    this.holders.length = 0;
    this.starting.clear();
    await Promise.all(
      children.map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once("exit", () => resolve());
            child.kill("SIGKILL");
          }),
      ),
    );
  }

  /** Synchronous last resort for process.on("exit"): SIGKILL by pid, no waiting possible. */
  killAllSync(): void {
    for (const child of [...this.holders.map((h) => h.child), ...this.starting]) {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
  }
}

/**
 * Count the ESTABLISHED sockets that belong to the holders (either end of a connection to one of their listener
 * ports), independently of tcpka: `ss -Htn state established`. Returns [holder sockets, all established].
 */
export function countEstablished(ports: ReadonlySet<number>): [number, number] {
  const r = spawnSync("ss", ["-Htn", "state", "established"], { encoding: "utf8", maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`ss failed: ${r.stderr}`);
  let ours = 0;
  let all = 0;
  for (const line of r.stdout.split("\n")) {
    if (!line) continue;
    all++;
    // Recv-Q Send-Q Local:Port Peer:Port
    const f = line.trim().split(/\s+/);
    const local = f[2] ?? "";
    const peer = f[3] ?? "";
    if (!local.startsWith("127.0.0.1:") || !peer.startsWith("127.0.0.1:")) continue;
    const lp = Number(local.slice(local.lastIndexOf(":") + 1));
    const pp = Number(peer.slice(peer.lastIndexOf(":") + 1));
    if (ports.has(lp) || ports.has(pp)) ours++;
  }
  return [ours, all];
}

/** All TCP sockets of the host namespace, in every state: what `ss -tanoe` lists. */
export function countAllTcp(): number {
  const r = spawnSync("ss", ["-Htan"], { encoding: "utf8", maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`ss failed: ${r.stderr}`);
  return r.stdout.split("\n").filter(Boolean).length;
}
