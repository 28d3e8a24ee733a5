/**
 * Which processes hold which sockets: every /proc/PID/fd/N that reads "socket:[INODE]" (what `ss -p` does), or,
 * as root on a machine with many open fds, the BPF iterator of socket-fds.ts, which reads a process's TCP sockets
 * in one pass. A socket shared across fork() has several owners. Processes whose fd table this user may not read
 * are counted, so the caller can say that some owners are unknown and how to see them.
 */
import { closeSync, constants, openSync, statSync } from "node:fs";
import type { OwnersMap } from "../bpf/tcp-sockets.js";
import { bpfCapable } from "../sys/bpf.js";
import { procFdSockets, procFds, SysError } from "../sys/libc.js";
import type { ReadAhead } from "../sys/read-ahead.js";
import { commOf, listPids } from "./processes.js";
import { type FileWalk, SocketFdIterator } from "./socket-fds.js";

export interface SocketOwner {
  pid: number;
  fd: number;
  comm: string;
}

/** inode -> the processes and fds that hold it (a Map, or the compact OwnerTable) */
export interface OwnerLookup {
  get(inode: number): SocketOwner[] | undefined;
  entries(): IterableIterator<[number, SocketOwner[]]>;
}

export interface OwnerScan {
  owners: OwnerLookup;
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
 * per process that owns at least one of them, when its sockets' owners are first asked for (OwnerTable). `via`
 * chooses how (tests compare the two); "auto" takes the BPF iterator from ITERATE_FROM open fds on, where it loads.
 */
export function findOwners(
  inodes: ReadonlySet<number>,
  pids: readonly number[] = listPids(),
  via: "auto" | "iterator" | "proc" = "auto",
): OwnerScan {
  // An OwnerTable, not a Map of arrays of objects: at 100,000 sockets (ls --via netlink) the Map kept ~12 MB more
  // on the heap, all of it surviving into the old generation, and grew the young one to its largest.
  let owners = new OwnerTable();
  const unreadable: number[] = [];
  // flat: fd, inode, fd, inode, ...
  const add = (pid: number, flat: readonly number[]): void => {
    for (let i = 0; i < flat.length; i += 2) {
      const inode = flat[i + 1] as number;
      if (inodes.has(inode)) owners.add(inode, pid, flat[i] as number);
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
      owners = new OwnerTable(); // the iterator failed part-way: /proc below, from the start
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
  const walk = TcpOwnerWalk.start();
  if (!walk) return null;
  try {
    return walk.finish();
  } finally {
    walk.close();
  }
}

/**
 * allTcpOwners() in two steps: start() makes the iterator (which a ReadAhead then reads while this thread does
 * other work), finish() builds the map from its records. close() after the ReadAhead stopped.
 */
export class TcpOwnerWalk {
  private constructor(
    private readonly lister: SocketFdIterator,
    private readonly walk: FileWalk,
    /** whether the walk brings the held namespaces' sockets (start()'s `held`) */
    readonly holds: boolean,
  ) {}

  /**
   * null where the iterator cannot load. With `held` (network namespace inodes), the sockets of those
   * namespaces come whole as well (SocketFdIterator.open), to finish()'s `held`. With `owners` (the owners' map,
   * kernel-sockets.ts `ownersMap`), each socket's first owner goes into that map instead of finish()'s table.
   */
  static start(ahead?: ReadAhead, held: readonly number[] = [], owners?: OwnersMap): TcpOwnerWalk | null {
    let lister: SocketFdIterator;
    let holds = held.length > 0;
    try {
      if (!bpfCapable()) return null;
      try {
        lister = SocketFdIterator.open(held, owners);
      } catch (e) {
        if (!holds && owners === undefined) throw e;
        // A kernel that refuses the held records' or the owners' map's program may still run the plain one: the
        // held namespaces are then walked, and every owner comes as a record (the TCP walk finds the map empty).
        lister = SocketFdIterator.open();
        holds = false;
      }
    } catch {
      return null;
    }
    try {
      return new TcpOwnerWalk(lister, lister.prepareAll(ahead), holds);
    } catch (e) {
      lister.close();
      throw e;
    }
  }

  /** `held(buf, at, requests)`: the TCP record of a held socket, once per socket (at its first owner). */
  finish(held?: (buf: Buffer, at: number, requests: number) => void): OwnerScan {
    const owners = new OwnerTable();
    let first = false;
    this.lister.listAll(
      (pid, fd, inode) => {
        first = owners.add(inode, pid, fd);
      },
      this.walk,
      held &&
        ((buf, at, requests) => {
          if (first) held(buf, at, requests);
        }),
    );
    return { owners, unreadable: [] };
  }

  close(): void {
    this.walk.close();
    this.lister.close();
  }
}

function openIterator(): SocketFdIterator | null {
  try {
    return SocketFdIterator.possible() ? SocketFdIterator.open() : null;
  } catch {
    return null; // no BTF, or the kernel refused: /proc gives the same answer
  }
}

/**
 * The owners of every socket on the host, kept as numbers: an open-addressing hash of inode to its first owner's
 * pid and fd, in one typed array, and the further owners of a socket (shared across fork()) in typed arrays of
 * their own. A SocketOwner is made only when a socket's owners are asked for. At 100,000 sockets a Map of arrays
 * of objects kept 18 MB on the heap, and copying it out of the young generation cost more than building it; a Map
 * of numbers still cost 0.3 µs a socket in growing. ls asks for the owners of each socket in the TCP walk's order,
 * which is not the owners' walk's: each ask is a cache miss, so a slot's key and first owner share one 16-byte
 * slot (one cache line) rather than five arrays (five misses).
 */
export class OwnerTable implements OwnerLookup {
  // slots[4h..4h+3]: an inode (0: empty; sockfs numbers its inodes from 1, get_next_ino in fs/inode.c; stored
  // as int32), its first owner's pid and fd, and its second owner's index in the arrays below (-1: none)
  private slots = new Int32Array(4 << 14);
  private shift = 32 - 14;
  private inodes = 0;
  /** inodes that do not fit 32 bits (not sockfs's, which numbers them in an unsigned int): never seen so far */
  private readonly wide = new Map<number, number>();
  // owners past the first: pid, fd, and the next owner of the same socket (-1: the last); a wide inode's
  // owners are all here
  private pids = new Int32Array(1 << 8);
  private fds = new Int32Array(1 << 8);
  private next = new Int32Array(1 << 8);
  private extra = 0;
  private readonly comms = new Map<number, string>();
  private lastPid = -1;
  private lastComm = "";
  /** the owner objects that getInto() refills */
  private readonly spare: SocketOwner[] = [];

  /** Whether this is the socket's first owner. */
  add(inode: number, pid: number, fd: number): boolean {
    if (inode === 0 || inode > 0xffff_ffff) {
      const i = this.more(pid, fd);
      const first = this.wide.get(inode);
      if (first === undefined) this.wide.set(inode, i);
      else this.append(first, i);
      return first === undefined;
    }
    const at = this.slot(inode) * 4;
    const slots = this.slots;
    if (slots[at] !== 0) {
      // A socket shared across fork(): owners in the order the walk met them.
      const i = this.more(pid, fd);
      const second = slots[at + 3] as number;
      if (second < 0) slots[at + 3] = i;
      else this.append(second, i);
      return false;
    }
    slots[at] = inode | 0;
    slots[at + 1] = pid;
    slots[at + 2] = fd;
    slots[at + 3] = -1;
    if (++this.inodes * 2 > slots.length / 4) this.rehash();
    return true;
  }

  get(inode: number): SocketOwner[] | undefined {
    const out: SocketOwner[] = [];
    this.each(inode, (pid, fd) => {
      out.push({ pid, fd, comm: this.comm(pid) });
    });
    return out.length ? out : undefined;
  }

  /**
   * get() into `into` (emptied first), whose owner objects are refilled rather than made anew: for a caller
   * that keeps neither (ls, streaming). Returns `into`.
   */
  getInto(inode: number, into: SocketOwner[]): SocketOwner[] {
    return this.fill(inode, 0, into);
  }

  /**
   * getInto() for a socket whose first owner came from elsewhere (the owners' map of src/bpf/tcp-sockets.ts):
   * that one, then those this table holds for the inode (the further owners, which the walk wrote as records).
   */
  getIntoAfter(pid: number, fd: number, inode: number, into: SocketOwner[]): SocketOwner[] {
    this.refill(0, pid, fd);
    // With the owners joined in the kernel the table holds only shared sockets' further owners, often none.
    if (this.inodes === 0 && this.wide.size === 0) {
      into[0] = this.spare[0] as SocketOwner;
      if (into.length !== 1) into.length = 1;
      return into;
    }
    return this.fill(inode, 1, into);
  }

  /** get() for a socket whose first owner came from elsewhere, as getIntoAfter(), in new objects. */
  getAfter(pid: number, fd: number, inode: number): SocketOwner[] {
    return [{ pid, fd, comm: this.comm(pid) }, ...(this.get(inode) ?? [])];
  }

  /** The spare owners from `n` on refilled with inode's owners here; `into` gets the first n + those. */
  private fill(inode: number, from: number, into: SocketOwner[]): SocketOwner[] {
    let n = from;
    let i = -1;
    if (inode === 0 || inode > 0xffff_ffff) i = this.wide.get(inode) ?? -1;
    else {
      const at = this.slot(inode) * 4;
      const slots = this.slots;
      if (slots[at] !== 0) {
        this.refill(n++, slots[at + 1] as number, slots[at + 2] as number);
        i = slots[at + 3] as number;
      }
    }
    for (; i >= 0; i = this.next[i] as number) this.refill(n++, this.pids[i] as number, this.fds[i] as number);
    for (let k = 0; k < n; k++) into[k] = this.spare[k] as SocketOwner;
    if (into.length !== n) into.length = n; // a store to length is a call into the runtime, even to the same
    return into;
  }

  *entries(): IterableIterator<[number, SocketOwner[]]> {
    const slots = this.slots;
    for (let at = 0; at < slots.length; at += 4) {
      const k = (slots[at] as number) >>> 0;
      if (k !== 0) yield [k, this.get(k) as SocketOwner[]];
    }
    for (const k of this.wide.keys()) yield [k, this.get(k) as SocketOwner[]];
  }

  private each(inode: number, f: (pid: number, fd: number) => void): void {
    let i = -1;
    if (inode === 0 || inode > 0xffff_ffff) i = this.wide.get(inode) ?? -1;
    else {
      const at = this.slot(inode) * 4;
      if (this.slots[at] !== 0) {
        f(this.slots[at + 1] as number, this.slots[at + 2] as number);
        i = this.slots[at + 3] as number;
      }
    }
    for (; i >= 0; i = this.next[i] as number) f(this.pids[i] as number, this.fds[i] as number);
  }

  private refill(n: number, pid: number, fd: number): void {
    const o = this.spare[n];
    if (o === undefined) this.spare.push({ pid, fd, comm: this.comm(pid) });
    else {
      o.pid = pid;
      o.fd = fd;
      o.comm = this.comm(pid);
    }
  }

  /** A further owner: its index in pids/fds/next. */
  private more(pid: number, fd: number): number {
    const i = this.extra++;
    if (i === this.pids.length) {
      this.pids = grown(this.pids);
      this.fds = grown(this.fds);
      this.next = grown(this.next);
    }
    this.pids[i] = pid;
    this.fds[i] = fd;
    this.next[i] = -1;
    return i;
  }

  /** Where inode is, or the empty slot where it goes (linear probing from a Fibonacci hash), as a slot number. */
  private slot(inode: number): number {
    const key = inode | 0;
    const mask = (this.slots.length >> 2) - 1;
    let h = Math.imul(inode, 0x9e3779b1) >>> this.shift;
    for (;;) {
      const k = this.slots[h * 4] as number;
      if (k === key || k === 0) return h;
      h = (h + 1) & mask;
    }
  }

  /** Four times larger: a host's hundred thousand sockets then cost two of these, not five. */
  private rehash(): void {
    const old = this.slots;
    this.slots = new Int32Array(old.length * 4);
    this.shift -= 2;
    for (let at = 0; at < old.length; at += 4) {
      const k = old[at] as number;
      if (k === 0) continue;
      const to = this.slot(k >>> 0) * 4;
      this.slots.set(old.subarray(at, at + 4), to);
    }
  }

  private append(first: number, i: number): void {
    let last = first;
    while ((this.next[last] as number) >= 0) last = this.next[last] as number;
    this.next[last] = i;
  }

  /** Read once per process that holds a socket; the last one kept at hand (most rows, where one process holds most sockets). */
  private comm(pid: number): string {
    if (pid === this.lastPid) return this.lastComm;
    let comm = this.comms.get(pid);
    if (comm === undefined) {
      comm = commOf(pid);
      this.comms.set(pid, comm);
    }
    this.lastPid = pid;
    this.lastComm = comm;
    return comm;
  }
}

function grown(a: Int32Array<ArrayBuffer>): Int32Array<ArrayBuffer> {
  const b = new Int32Array(a.length * 2);
  b.set(a);
  return b;
}
