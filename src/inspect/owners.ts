/**
 * Which processes hold which sockets: every /proc/PID/fd/N that reads "socket:[INODE]" (what `ss -p` does).
 * A socket shared across fork() has several owners. Processes whose fd table this user may not read are
 * counted, so the caller can say that some owners are unknown and how to see them.
 */
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

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

export function processExists(pid: number): boolean {
  try {
    readFileSync(`/proc/${pid}/stat`);
    return true;
  } catch {
    return false;
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

/** The socket inodes among a process's open fds, as [fd, inode] pairs; null when the table cannot be read. */
export function socketFds(pid: number): [number, number][] | null {
  const dir = `/proc/${pid}/fd/`;
  let fds: string[];
  try {
    fds = readdirSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === "EACCES" || code === "EPERM" ? null : [];
  }
  const out: [number, number][] = [];
  for (const fd of fds) {
    let target: string;
    try {
      target = readlinkSync(dir + fd);
    } catch {
      continue; // closed since readdir
    }
    // "socket:[12345]"
    if (target.charCodeAt(0) === 115 && target.startsWith("socket:[")) {
      out.push([Number(fd), Number(target.slice(8, -1))]);
    }
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
