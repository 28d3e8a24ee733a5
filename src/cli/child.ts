/**
 * Run a command as tcpka's child so that, to its caller, it behaves like the command itself: same stdio, exit
 * code passed through, and death by a signal passed through (tcpka re-raises it on itself). Signals sent to
 * tcpka are forwarded; SIGINT and SIGQUIT from a terminal already reach the whole foreground process group, so
 * they are not forwarded twice.
 */
import { spawn } from "node:child_process";
import { constants } from "node:os";
import { TcpkaError } from "../errors.js";

const FORWARD: NodeJS.Signals[] = ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGINT", "SIGQUIT"];

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
    const child = spawn(file, args, { stdio: "inherit", env, argv0 });
    const fromTty = process.stdin.isTTY === true;
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
