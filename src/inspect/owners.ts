/**
 * Which processes hold which sockets: every /proc/PID/fd/N that reads "socket:[INODE]" (what `ss -p` does), or,
 * as root on a machine with many open fds, the BPF iterator of socket-fds.ts, which reads a process's TCP sockets
 * in one pass. A socket shared across fork() has several owners. Processes whose fd table this user may not read
 * are counted, so the caller can say that some owners are unknown and how to see them.
 */
import { closeSync, constants, openSync, statSync } from "node:fs";
import { bpfCapable } from "../sys/bpf.js";
import { procFdSockets, procFds, SysError } from "../sys/libc.js";
import { commOf, listPids } from "./processes.js";
import { SocketFdIterator } from "./socket-fds.js";

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

/**
 * Open /proc/PID/fd and let `read` append numbers to a list: the list; null when this user may not read the
 * fd table. A process that exits before or during the reading gives what was read.
 */
function fromFdDir(pid: number, read: (dirfd: number, out: number[]) => void): number[] | null {
  let dirfd: number; // libuv opens every fd O_CLOEXEC
  try {
    dirfd = openSync(`/proc/${pid}/fd`, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === "EACCES" || code === "EPERM" ? null : [];
  }
  const out: number[] = [];
  try {
    read(dirfd, out);
  } catch (e) {
    if (!(e instanceof SysError)) throw e;
    if (e.errnoName === "EACCES" || e.errnoName === "EPERM") return null;
    if (e.errnoName !== "ENOENT" && e.errnoName !== "ESRCH") throw e;
  } finally {
    closeSync(dirfd);
  }
  return out;
}

/** A process's open fd numbers, ascending; null when this user may not read its fd table, [] once it exited. */
export function fdNumbers(pid: number): number[] | null {
  return fromFdDir(pid, procFds);
}

/** The socket inodes among a process's open fds, as [fd, inode] pairs; null when the table cannot be read. */
export function socketFds(pid: number): [number, number][] | null {
  const flat = fromFdDir(pid, procFdSockets);
  if (flat === null) return null;
  const out: [number, number][] = new Array(flat.length / 2);
  for (let i = 0; i < flat.length; i += 2) out[i / 2] = [flat[i] as number, flat[i + 1] as number];
  return out;
}

/**
 * From this many open fds in all, the BPF iterator finds the owners sooner than /proc does. Loading it costs
 * about 40 ms (the kernel's BTF is read first); a readlinkat of /proc/PID/fd/N costs about 4.5 µs, and there is
 * one per fd of every process, files and pipes included.
 */
const ITERATE_FROM = 10_000;

/** How many fds these processes have open: the sizes of their /proc/PID/fd (Linux 6.2 and later; 0 before). */
export function openFdCount(pids: readonly number[]): number {
  let n = 0;
  for (const pid of pids) {
    try {
      n += statSync(`/proc/${pid}/fd`).size;
    } catch {
      // exited, or not ours to read: the listing says which
    }
  }
  return n;
}

/**
 * Find the owners of the given socket inodes, in the given pids (default: every process). `comm` is read once
 * per process that owns at least one of them. `via` chooses how (tests compare the two); "auto" takes the BPF
 * iterator from ITERATE_FROM open fds on, where it loads.
 */
export function findOwners(
  inodes: ReadonlySet<number>,
  pids: readonly number[] = listPids(),
  via: "auto" | "iterator" | "proc" = "auto",
): OwnerScan {
  const owners = new Map<number, SocketOwner[]>();
  const unreadable: number[] = [];
  // flat: fd, inode, fd, inode, ...
  const add = (pid: number, flat: readonly number[]): void => {
    let comm: string | undefined;
    for (let i = 0; i < flat.length; i += 2) {
      const inode = flat[i + 1] as number;
      if (!inodes.has(inode)) continue;
      comm ??= commOf(pid);
      const o: SocketOwner = { pid, fd: flat[i] as number, comm };
      const list = owners.get(inode);
      if (list) list.push(o);
      else owners.set(inode, [o]);
    }
  };
  const iterate = via === "iterator" || (via === "auto" && inodes.size > 0 && openFdCount(pids) >= ITERATE_FROM);
  const lister = iterate ? openIterator() : null;
  if (lister) {
    try {
      const flat: number[] = [];
      for (const pid of pids) {
        flat.length = 0;
        if (lister.listInodes(pid, flat)) add(pid, flat);
      }
      return { owners, unreadable };
    } catch {
      owners.clear(); // the iterator failed part-way: /proc below, from the start
    } finally {
      lister.close();
    }
  }
  for (const pid of pids) {
    const flat = fromFdDir(pid, procFdSockets);
    if (flat === null) unreadable.push(pid);
    else add(pid, flat);
  }
  return { owners, unreadable };
}

/**
 * The owners of every TCP socket on the host in one walk of every process's files (the task_file iterator
 * without a process filter, Linux 5.11 for bpf_sock_from_file); null where the iterator cannot load. Only TCP
 * sockets are listed, so the map holds nothing else.
 */
export function allTcpOwners(): OwnerScan | null {
  let lister: SocketFdIterator;
  try {
    if (!bpfCapable()) return null;
    lister = SocketFdIterator.open();
  } catch {
    return null;
  }
  const owners = new Map<number, SocketOwner[]>();
  const comms = new Map<number, string>();
  try {
    lister.listAll((pid, fd, inode) => {
      let comm = comms.get(pid);
      if (comm === undefined) {
        comm = commOf(pid);
        comms.set(pid, comm);
      }
      const o: SocketOwner = { pid, fd, comm };
      const list = owners.get(inode);
      if (list) list.push(o);
      else owners.set(inode, [o]);
    });
  } finally {
    lister.close();
  }
  return { owners, unreadable: [] };
}

function openIterator(): SocketFdIterator | null {
  try {
    return SocketFdIterator.possible() ? SocketFdIterator.open() : null;
  } catch {
    return null; // no BTF, or the kernel refused: /proc gives the same answer
  }
}
