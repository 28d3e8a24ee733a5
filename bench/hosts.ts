/**
 * A host of the bench's own for `tcpka ls --all-netns`: a pid and a mount namespace (unshare) whose only
 * processes are socket holders (holders.ts), each started with `ip netns exec` in a network namespace the
 * bench made (test/helpers/netns.ts: unique names, lo up, removed on every exit path). Inside it, /proc is a
 * procfs of its pid namespace and a tmpfs covers /run/netns, so `tcpka ls --all-netns` run there (nsenter,
 * into its first network namespace) finds exactly the holders' namespaces, and its task_file walk only their
 * tasks (the task iterator walks the pid namespace of its reader). Two such hosts, one with its sockets in 50
 * namespaces and one with as many in one, then live side by side and are timed in interleaved rounds, and
 * neither sees the other's sockets nor the machine's.
 *
 * A host's init (WORLD_PY) starts the holders, learns their pids as the machine sees them, and only then mounts
 * the new /proc and the tmpfs; the mounts are private to its mount namespace (unshare --propagation private).
 * It holds until its stdin closes (the bench ended or died); unshare --kill-child kills it with unshare, and
 * when it dies the kernel kills every process of its pid namespace (zap_pid_ns_processes()). The bench also
 * kills each holder by pid before that.
 */
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Netns } from "../test/helpers/netns.js";
import type { Process } from "../test/helpers/processes.js";
import { holderScript, MAX_CONNECTIONS_PER_HOLDER } from "./holders.js";

const WORLD_PY = `import json, subprocess, sys
spec = json.loads(sys.stdin.readline())
def host_pid():
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("NSpid:")))
init = host_pid()
procs = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, spec["holder"], str(n)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) for ns, n in spec["holders"]]
holders = []
for p, (ns, n) in zip(procs, spec["holders"]):
    f = p.stdout.readline().split()
    if len(f) != 4 or f[0] != b"ready":
        sys.exit("a holder in %s did not start" % ns)
    holders.append({"netns": ns, "port": int(f[1]), "connections": int(f[2]), "pid": int(f[3])})
# From here on this pid namespace's processes are all that /proc shows, and no namespace of the machine's
# /run/netns is seen.
subprocess.run(["mount", "-t", "proc", "proc", "/proc"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run/netns"], check=True)
print(json.dumps({"init": init, "holders": holders}), flush=True)
sys.stdin.read()
`;

export interface HostHolder {
  /** its network namespace's name and inode number */
  netns: string;
  inum: number;
  port: number;
  connections: number;
  /** its pid as the machine sees it */
  pid: number;
}

const live = new Set<BenchHost>();
// Before netns.ts's own handler, which kills the inits: the holders' pids are only safe to signal until then.
process.prependOnceListener("exit", () => {
  for (const h of live) h.destroy();
});

export class BenchHost {
  private constructor(
    readonly namespaces: readonly Netns[],
    private readonly init: Process,
    /** the init's pid as the machine sees it: what nsenter enters */
    private readonly initPid: number,
    readonly holders: readonly HostHolder[],
  ) {}

  /**
   * A host with `namespaces` network namespaces and `connections` connections (2 sockets each) spread evenly
   * over them, a namespace's share over as few holders as RLIMIT_NOFILE allows.
   */
  static async start(tmpDir: string, namespaces: number, connections: number): Promise<BenchHost> {
    const nss: Netns[] = [];
    let init: Process | undefined;
    try {
      for (let i = 0; i < namespaces; i++) nss.push(Netns.create());
      const holders: [string, number][] = [];
      nss.forEach((ns, i) => {
        const share = Math.floor(connections / namespaces) + (i < connections % namespaces ? 1 : 0);
        const n = Math.ceil(share / MAX_CONNECTIONS_PER_HOLDER);
        for (let k = 0; k < n; k++) holders.push([ns.name, Math.floor(share / n) + (k < share % n ? 1 : 0)]);
      });
      const script = join(tmpDir, "world.py");
      writeFileSync(script, WORLD_PY);
      const first = nss[0] as Netns;
      init = first.spawn([
        "unshare",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--propagation",
        "private",
        "python3",
        script,
      ]);
      init.send(`${JSON.stringify({ holder: holderScript(tmpDir), holders })}\n`);
      const line = (await init.waitFor(/^\{.*\}$/m, 120_000))[0];
      const ready = JSON.parse(line) as { init: number; holders: Omit<HostHolder, "inum">[] };
      const inums = new Map(nss.map((ns) => [ns.name, statSync(`/run/netns/${ns.name}`).ino]));
      const host = new BenchHost(
        nss,
        init,
        ready.init,
        ready.holders.map((h) => ({ ...h, inum: inums.get(h.netns) as number })),
      );
      live.add(host);
      return host;
    } catch (e) {
      init?.kill();
      for (const ns of nss) ns.destroy();
      throw e;
    }
  }

  get connections(): number {
    return this.holders.reduce((n, h) => n + h.connections, 0);
  }

  /** A command run inside: in the host's pid and mount namespaces and its first network namespace. */
  argv(command: readonly string[]): string[] {
    return ["nsenter", "-t", String(this.initPid), "-p", "-m", "-n", "--", ...command];
  }

  /**
   * Kill every holder by pid while the init still runs (until it dies nothing reaps them, so no pid is reused),
   * then the init, and remove the namespaces. Synchronous, for process "exit" too.
   */
  destroy(): void {
    if (!live.delete(this)) return;
    if (this.init.running) {
      for (const h of this.holders) {
        try {
          process.kill(h.pid, "SIGKILL");
        } catch {
          // gone already
        }
      }
    }
    this.init.kill();
    for (const ns of this.namespaces) ns.destroy();
  }

  /** destroy(), then wait until the init has exited (and so every process of its pid namespace). */
  async stop(): Promise<void> {
    this.destroy();
    await this.init.done.catch(() => {});
  }
}
