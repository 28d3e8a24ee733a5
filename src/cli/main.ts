/**
 * The tcpka command: dispatch to a subcommand, print expected failures as `tcpka: message` + `hint: ...` on
 * stderr with exit code 2 (bad usage or input) or 1 (failure), and never show a stack trace for them.
 */
import { readFileSync } from "node:fs";
import { TcpkaError } from "../errors.js";
import { Out, reportError } from "../ui/format.js";

export const HELP = `tcpka: find TCP connections without keepalive, and turn keepalive on without changing the program.

Stateful firewalls, NAT gateways and load balancers drop connections that stay idle longer than their timeout,
and a peer that vanished goes unnoticed for 2h11m15s by default, or forever when keepalive is off (the default
for every socket that does not ask for it).

Usage: tcpka [COMMAND] [OPTIONS]

Commands:
  (none)        a summary: how many connections lack keepalive, whose they are, and how to fix them;
                'tcpka --all-netns' for the whole host, grouped by container or pod
  ls            every TCP socket with its keepalive state, real settings and owning process
  run           run a program with keepalive turned on for its connections (LD_PRELOAD), no code change
  trace         run a program and report, socket by socket, what keepalive it set itself
  enable        turn keepalive on for the live connections of running processes (in the kernel, or pidfd_getfd), no restart
  disable       turn it off again
  enforce       keepalive for every new connection of a cgroup (BPF sock_ops), for any program
  sysctl        the namespace's keepalive defaults, what they mean, and --set to change them
  idle-timeout  measure how long a path (firewall, NAT) lets a connection idle, and the keepalive to use
  echo          the echo server that idle-timeout measures against
  agent         keep the host to a keepalive policy file (rules by container, pod, unit, cgroup, process);
                --check validates the file, --explain PID says which rule applies to a process
  status        what the agent covers now: each rule, its targets, connections set up, what is failing
  watch         keepalive at work, live: probes sent and answered, connections killed, on every connection
  metrics       Prometheus metrics: connections by keepalive state and owner, detection times, probes sent

Options:
  -h, --help      this help; 'tcpka help COMMAND' or 'tcpka COMMAND --help' for the options of a command
  -V, --version   the version of tcpka

Exact per-socket answers need root (or CAP_SYS_PTRACE); without, tcpka shows the kernel's keepalive timer as
a hint.
`;

type Command = (argv: readonly string[], out: Out) => number | Promise<number>;

// Each command's module is loaded only when it runs: start-up time is most of a small `tcpka ls`.
const COMMANDS: Record<string, () => Promise<Command>> = {
  ls: async () => (await import("./ls.js")).runLs,
  run: async () => (await import("./run.js")).runRun,
  trace: async () => (await import("./trace.js")).runTrace,
  enable: async () => (await import("./enable.js")).runEnable,
  disable: async () => (await import("./enable.js")).runDisable,
  enforce: async () => (await import("./enforce.js")).runEnforce,
  sysctl: async () => (await import("./sysctl.js")).runSysctl,
  "idle-timeout": async () => (await import("./idle-timeout.js")).runIdleTimeout,
  echo: async () => (await import("./echo.js")).runEcho,
  agent: async () => (await import("./agent.js")).runAgent,
  status: async () => (await import("./status.js")).runStatus,
  metrics: async () => (await import("./metrics.js")).runMetrics,
  watch: async () => (await import("./watch.js")).runWatch,
};

const CHANGERS = new Set(["enable", "disable", "enforce", "agent"]);

export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
  return pkg.version;
}

export async function main(argv: readonly string[]): Promise<number> {
  const out = new Out(1);
  try {
    let [first, ...rest] = argv;
    // In a container with the host's pid namespace (a DaemonSet): cgroup paths as the host has them, before any
    // thread is made or any path read.
    if (process.geteuid?.() === 0) await (await import("../sys/cgroupns.js")).joinHostCgroupNamespace();
    // The inspecting commands: a reader thread for the kernel's walks starts while their code loads.
    const inspects = first === undefined || first === "ls" || (first === "--all-netns" && rest.length === 0);
    const syscallsOnly = argv.some(
      (a, i) => /^--via=(netlink|proc)$/.test(a) || (a === "--via" && argv[i + 1] !== "bpf"),
    );
    if (inspects && !syscallsOnly && !argv.some((a) => a === "-h" || a === "--help")) {
      const everywhere = argv.some((a) => /^--(all-netns|container|pod|unit)(=|$)/.test(a));
      (await import("../sys/read-ahead.js")).ReadAhead.warm(everywhere ? "all" : "one");
    }
    if (first === undefined) return (await import("./summary.js")).runSummary(out);
    if (first === "--all-netns" && rest.length === 0)
      return (await import("./summary.js")).runSummary(out, { allNetns: true });
    // "tcpka help ls" is "tcpka ls --help".
    if (first === "help" && rest[0] !== undefined && rest[0] !== "help") [first, rest] = [rest[0], ["--help"]];
    if (first === "-h" || first === "--help" || first === "help") {
      out.write(HELP);
      return 0;
    }
    if (first === "-V" || first === "--version") {
      out.write(`tcpka ${version()}\n`);
      return 0;
    }
    const load = COMMANDS[first];
    // The commands that change other programs' sockets go by tcpka's own name (/proc/PID/comm, not "node"):
    // what `tcpka watch` says did it, and what ps and top show.
    if (CHANGERS.has(first) && !rest.some((a) => a === "-h" || a === "--help"))
      (await import("../sys/libc.js")).nameThread("tcpka");
    if (!load) {
      const what = first.startsWith("-") ? `unknown option ${first}` : `unknown command ${first}`;
      throw new TcpkaError("usage", what, { hint: `commands: ${Object.keys(COMMANDS).join(", ")}; see tcpka --help` });
    }
    return await (await load())(rest, out);
  } catch (e) {
    out.end();
    return reportError(e);
  } finally {
    out.end();
  }
}
