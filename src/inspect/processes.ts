/**
 * What /proc says of a process: whether it runs, whether it may hold sockets (not a zombie, not a kernel thread),
 * its thread group, its name, its network namespace and its descendants; and the one error for processes whose
 * sockets this user may not reach.
 */
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { TcpkaError } from "../errors.js";

/** All pids in /proc, ascending. */
export function listPids(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    const c = name.charCodeAt(0);
    if (c >= 48 && c <= 57) pids.push(Number(name));
  }
  return pids.sort((a, b) => a - b);
}

/** The network namespace of a process, as "net:[4026531840]"; undefined once it has exited. */
export function netnsOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/net`);
  } catch {
    return undefined;
  }
}

/** The fields of /proc/PID/stat after the name (state first); undefined once the process has gone. */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" "); // "PID (comm) S ...": comm may hold spaces and ")"
  } catch {
    return undefined;
  }
}

/** A running process: /proc/PID exists and it is not a zombie (exited, not yet reaped) or dead. */
export function processExists(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state !== undefined && state !== "Z" && state !== "X";
}

/**
 * When a process started, in clock ticks since boot (field 22 of /proc/PID/stat, what runc and crun record as the
 * container's init_process_start / process-start-time); undefined once it has gone. With the pid it names one
 * process for good: a pid is reused, a (pid, start time) pair is not.
 */
export function startTimeOf(pid: number): number | undefined {
  const t = statFields(pid)?.[19];
  return t === undefined ? undefined : Number(t);
}

/** PF_KTHREAD (include/linux/sched.h) in the flags field of /proc/PID/stat. */
const PF_KTHREAD = 0x00200000;

/**
 * A process that may hold sockets: running, and not a kernel thread (which opens no fds: /proc/PID/fd is
 * empty, and closed to other users than root).
 */
export function mayHoldSockets(pid: number): boolean {
  const f = statFields(pid);
  return f !== undefined && f[0] !== "Z" && f[0] !== "X" && (Number(f[6]) & PF_KTHREAD) === 0;
}

/** The process a thread id belongs to (its thread group id); the pid itself for a process. */
export function processOf(pid: number): number {
  try {
    const m = /^Tgid:\s*(\d+)$/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"));
    return m ? Number(m[1]) : pid;
  } catch {
    return pid;
  }
}

/**
 * The command name of a process (/proc/PID/comm), exactly as the process set it (proc_task_name() adds one
 * newline; a name may end in spaces or hold a newline of its own), or "?" once it has exited.
 */
export function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").replace(/\n$/, "");
  } catch {
    return "?";
  }
}

/**
 * Every descendant of a process (through /proc/PID/task/TID/children, which lists the children of one thread:
 * get_children_pid() in fs/proc/array.c), itself included.
 */
export function withDescendants(root: number): number[] {
  const out: number[] = [];
  const queue = [root];
  while (queue.length) {
    const pid = queue.shift() as number;
    out.push(pid);
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tasks) {
      try {
        for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, "ascii").split(" "))
          if (c.trim()) queue.push(Number(c));
      } catch {
        /* exited */
      }
    }
  }
  return out;
}

/** The error for target processes whose sockets this user may not reach: the first three named. */
export function permissionError(pids: readonly number[]): TcpkaError {
  let who = pids
    .slice(0, 3)
    .map((p) => `${commOf(p)}[${p}]`)
    .join(", ");
  if (pids.length > 3) who += ` and ${pids.length - 3} more`;
  return new TcpkaError("permission", `cannot reach the sockets of ${who}: permission denied`, {
    hint:
      process.geteuid?.() === 0
        ? "a security module (Yama ptrace_scope, SELinux, AppArmor) forbids it"
        : "run as root, or give tcpka CAP_SYS_PTRACE",
  });
}
