/**
 * Run a command as tcpka's child so that, to its caller, it behaves like the command itself: same stdio, exit
 * code passed through, and death by a signal passed through (tcpka re-raises it on itself). Signals sent to
 * tcpka are forwarded; SIGINT and SIGQUIT from a terminal already reach the whole foreground process group, so
 * they are not forwarded twice.
 */
import { type StdioOptions, spawn } from "node:child_process";
import { readdirSync, readlinkSync } from "node:fs";
import { constants } from "node:os";
import { isatty } from "node:tty";
import { TcpkaError } from "../errors.js";

const FORWARD: NodeJS.Signals[] = ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGINT", "SIGQUIT"];

/** What each open fd above 2 refers to (readlink of /proc/self/fd/N). */
function fdTargets(): Map<number, string> {
  const targets = new Map<number, string>();
  for (const name of readdirSync("/proc/self/fd")) {
    const fd = Number(name);
    if (fd < 3) continue;
    try {
      targets.set(fd, readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      /* the directory's own fd, closed by now */
    }
  }
  return targets;
}

/**
 * The fds as tcpka's caller passed them, taken when this module loads (before the command opens anything): a
 * file that tcpka opens itself while CMD runs (a lock, trace's report file, a pipe to a helper) is not its
 * caller's and must not reach CMD.
 */
const AT_START = fdTargets();

/**
 * The fds above 2 that tcpka's caller passed on to it: Node marks them close-on-exec at start-up, so they are
 * handed to the child explicitly, as exec would (inherited listeners, socket activation, `5<file`). Only those
 * still open as they were at start-up; Node's own fds are left out: anonymous inodes (epoll, eventfd),
 * self-pipes (both ends held) and /dev/null.
 */
function inheritedFds(): number[] {
  const targets = fdTargets();
  const pipeEnds = new Map<string, number>();
  for (const t of targets.values()) if (t.startsWith("pipe:")) pipeEnds.set(t, (pipeEnds.get(t) ?? 0) + 1);
  return [...targets]
    .filter(
      ([fd, t]) =>
        AT_START.get(fd) === t &&
        !t.startsWith("anon_inode:") &&
        t !== "/dev/null" &&
        !(t.startsWith("pipe:") && pipeEnds.get(t) !== 1),
    )
    .map(([fd]) => fd)
    .sort((a, b) => a - b);
}

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  pid: number;
}

export function runChild(
  file: string,
  argv0: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  onStart?: (pid: number) => void,
): Promise<ChildResult> {
  return new Promise((resolveResult, reject) => {
    const stdio: StdioOptions = ["inherit", "inherit", "inherit"];
    for (const fd of inheritedFds()) {
      while (stdio.length < fd) stdio.push("ignore");
      stdio[fd] = fd;
    }
    // Socket activation: the fds are for the process whose pid is LISTEN_PID, which must become the child's.
    const activation = env.LISTEN_FDS !== undefined && env.LISTEN_PID === String(process.pid);
    const child = activation
      ? spawn("/bin/sh", ["-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"', file, ...args], { stdio, env })
      : spawn(file, args, { stdio, env, argv0 });
    // isatty(0), not process.stdin: touching process.stdin opens it as a libuv stream, which makes a pipe
    // that the child shares non-blocking.
    const fromTty = isatty(0);
    const handlers = new Map<NodeJS.Signals, () => void>();
    for (const sig of FORWARD) {
      const h = () => {
        if (fromTty && (sig === "SIGINT" || sig === "SIGQUIT")) return;
        child.kill(sig);
      };
      handlers.set(sig, h);
      process.on(sig, h);
    }
    const cleanup = () => {
      for (const [sig, h] of handlers) process.off(sig, h);
    };
    child.once("spawn", () => onStart?.(child.pid as number));
    child.once("error", (e: NodeJS.ErrnoException) => {
      cleanup();
      reject(
        new TcpkaError("system", `cannot start ${file}: ${e.code ?? e.message}`, {
          exitCode: e.code === "ENOENT" ? 127 : 126,
        }),
      );
    });
    child.once("exit", (code, signal) => {
      cleanup();
      resolveResult({ code, signal, pid: child.pid as number });
    });
  });
}

/** Turn a child's end into tcpka's: its exit code, or the same signal raised on tcpka itself. */
export function passThrough(r: ChildResult): number {
  if (r.signal) {
    process.removeAllListeners(r.signal);
    process.kill(process.pid, r.signal);
    // If the signal is ignored or only stops us, exit as a shell would report it.
    return 128 + (constants.signals[r.signal] ?? 0);
  }
  return r.code ?? 1;
}
