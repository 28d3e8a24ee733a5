/**
 * A host of the bench's own for `tcpka ls --all-netns`: a pid and a mount namespace (unshare) whose only
 * processes are socket holders (holders.ts), each started with `ip netns exec` in one of the network namespaces
 * it is given (test/helpers/netns.ts: unique names, lo up, removed on every exit path). Inside it, /proc is a
 * procfs of its pid namespace and a tmpfs covers /run/netns, so `tcpka ls --all-netns` run there (nsenter, into
 * its first network namespace) finds exactly the holders' namespaces, not the machine's (other sessions'
 * containers and test namespaces), and its task_file walk only their tasks (the task iterator walks the pid
 * namespace of its reader).
 *
 * Only one such host should live at a time: every namespace's TCP walk scans the one established hash of the
 * whole machine (tcp_child_ehash_entries is 0, so every namespace shares tcp_hashinfo) and skips the sockets of
 * other namespaces (seq_sk_match() in net/ipv4/tcp_ipv4.c), about 14 ms per 100,000 of them per walk here, so
 * a second host's sockets would slow each of the first one's walks.
 *
 * The host's init (WORLD_PY) starts the holders, learns their pids as the machine sees them, and only then
 * mounts the new /proc and the tmpfs; the mounts are private to its mount namespace (unshare --propagation
 * private). It holds until its stdin closes (the bench ended or died); unshare --kill-child kills it with
 * unshare, and when it dies the kernel kills every process of its pid namespace (zap_pid_ns_processes()). The
 * bench kills each holder by pid before that.
 */
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Netns } from "../test/helpers/netns.js";
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
    private readonly init: Process,
    /** the init's pid as the machine sees it: what nsenter enters */
    private readonly initPid: number,
    readonly holders: readonly HostHolder[],
  ) {}

  /**
   * A host over these network namespaces (which stay when it stops) with `connections` connections (2 sockets
   * each) spread evenly over them, a namespace's share over as few holders as RLIMIT_NOFILE allows.
   */
  static async start(tmpDir: string, namespaces: readonly Netns[], connections: number): Promise<BenchHost> {
    const holders: [string, number][] = [];
    namespaces.forEach((ns, i) => {
      const share = Math.floor(connections / namespaces.length) + (i < connections % namespaces.length ? 1 : 0);
      const n = Math.ceil(share / MAX_CONNECTIONS_PER_HOLDER);
      for (let k = 0; k < n; k++) holders.push([ns.name, Math.floor(share / n) + (k < share % n ? 1 : 0)]);
    });
    const script = join(tmpDir, "world.py");
    writeFileSync(script, WORLD_PY);
    const first = namespaces[0] as Netns;
    const unshare = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private"];
    const init = first.spawn([...unshare, "python3", script]);
    try {
      init.send(`${JSON.stringify({ holder: holderScript(tmpDir), holders })}\n`);
      const line = (await init.waitFor(/^\{.*\}$/m, 120_000))[0];
      const ready = JSON.parse(line) as { init: number; holders: Omit<HostHolder, "inum">[] };
      const inums = new Map(namespaces.map((ns) => [ns.name, statSync(`/run/netns/${ns.name}`).ino]));
      const host = new BenchHost(
        init,
        ready.init,
        ready.holders.map((h) => ({ ...h, inum: inums.get(h.netns) as number })),
      );
      live.add(host);
      return host;
    } catch (e) {
      init.kill(); // --kill-child: its pid namespace goes with it
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
   * then the init. Synchronous, for process "exit" too.
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
  }

  /** destroy(), then wait until the init has exited (and so every process of its pid namespace). */
  async stop(): Promise<void> {
    this.destroy();
    await this.init.done.catch(() => {});
  }
}
