/**
 * Which processes hold which sockets: every /proc/PID/fd/N that reads "socket:[INODE]" (what `ss -p` does).
 * A socket shared across fork() has several owners. Processes whose fd table this user may not read are
 * counted, so the caller can say that some owners are unknown and how to see them.
 */
import { closeSync, constants, openSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { readlinkAt } from "../sys/libc.js";

export interface SocketOwner {
  pid: number;
  fd: number;
  comm: string;
}

export interface OwnerScan {
  /** inode -> the processes and fds that hold it */
  owners: Map<number, SocketOwner[]>;
  /** pids whose /proc/PID/fd could not be read (permission), so their sockets show no owner */
  unreadable: number[];
}

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

/** A running process: /proc/PID exists and it is not a zombie (exited, not yet reaped) or dead. */
export function processExists(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    const state = stat[stat.lastIndexOf(")") + 2]; // "PID (comm) S ...": comm may hold spaces and parentheses
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
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

/** The command name of a process (/proc/PID/comm), or "?" once it has exited. */
export function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trimEnd();
  } catch {
    return "?";
  }
}

// "socket:[" as bytes, and a buffer for the link texts: a socket's is at most "socket:[4294967295]".
const SOCKET_PREFIX = Buffer.from("socket:[");
const linkBuf = Buffer.alloc(64);

/** The socket inodes among a process's open fds, as [fd, inode] pairs; null when the table cannot be read. */
export function socketFds(pid: number): [number, number][] | null {
  const dir = `/proc/${pid}/fd`;
  let dirfd: number; // libuv opens every fd O_CLOEXEC
  let fds: string[];
  try {
    dirfd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === "EACCES" || code === "EPERM" ? null : [];
  }
  const out: [number, number][] = [];
  try {
    fds = readdirSync(dir);
    for (const fd of fds) {
      const n = readlinkAt(dirfd, fd, linkBuf);
      if (
        n <= SOCKET_PREFIX.length ||
        linkBuf.compare(SOCKET_PREFIX, 0, SOCKET_PREFIX.length, 0, SOCKET_PREFIX.length) !== 0
      ) {
        continue; // closed since readdir, or not a socket
      }
      let inode = 0;
      for (let i = SOCKET_PREFIX.length; i < n && linkBuf[i] !== 0x5d; i++)
        inode = inode * 10 + (linkBuf[i] as number) - 48;
      out.push([Number(fd), inode]);
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EPERM") return null;
    if (code !== "ENOENT") throw e;
  } finally {
    closeSync(dirfd);
  }
  return out;
}

/**
 * Find the owners of the given socket inodes, in the given pids (default: every process). `comm` is read once
 * per process that owns at least one of them.
 */
export function findOwners(inodes: ReadonlySet<number>, pids: readonly number[] = listPids()): OwnerScan {
  const owners = new Map<number, SocketOwner[]>();
  const unreadable: number[] = [];
  for (const pid of pids) {
    const fds = socketFds(pid);
    if (fds === null) {
      unreadable.push(pid);
      continue;
    }
    let comm: string | undefined;
    for (const [fd, inode] of fds) {
      if (!inodes.has(inode)) continue;
      comm ??= commOf(pid);
      const o: SocketOwner = { pid, fd, comm };
      const list = owners.get(inode);
      if (list) list.push(o);
      else owners.set(inode, [o]);
    }
  }
  return { owners, unreadable };
}
