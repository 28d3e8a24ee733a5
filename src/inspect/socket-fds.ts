/**
 * The TCP sockets among a process's fds, with their inode, state and addresses, in one pass in the kernel: a BPF
 * task_file iterator (src/bpf/socket-fds.ts). The other way, a readlinkat(2) of /proc/PID/fd/N per fd (about
 * 4.5 µs each here: the kernel builds a proc dentry and prints "socket:[N]") and then the TCP tables through
 * sock_diag (about 2 µs per socket) to learn which inodes are TCP and where they connect, costs ten times as much
 * for a process with tens of thousands of sockets.
 *
 * It needs the kernel's BTF, BPF iterators with a process filter (Linux 6.1, bpf_iter_link_info.task),
 * bpf_sock_from_file (5.11) and CAP_BPF with CAP_PERFMON (or root). SocketFdIterator.open() throws when any is
 * missing, and callers then read /proc/PID/fd and sock_diag (owners.ts, sockets.ts).
 */
import { existsSync } from "node:fs";
import { release } from "node:os";
import { ipv4, ipv6 } from "../addresses.js";
import { assemble, Listing } from "../bpf/asm.js";
import { endpointOffsets } from "../bpf/endpoints.js";
import { HELD, heldOffsets, RECORD_SIZE, socketFdsProgram, taskFileMembers } from "../bpf/socket-fds.js";
import { type OwnersMap, TCP_RECORD_SIZE } from "../bpf/tcp-sockets.js";
import type { TcpEndpoints } from "../filter.js";
import { AF_INET, AF_INET6 } from "../kernel/constants.js";
import { STATE_NAMES } from "../kernel/states.js";
import { bpfCapable, hashMapCreate, iterCreate, iterLinkCreate, iterProgLoad, mapUpdateAll } from "../sys/bpf.js";
import { CachedBtf } from "../sys/btf.js";
import { close } from "../sys/libc.js";
import { directStream, type ReadAhead, type Stream } from "../sys/read-ahead.js";

const READ_SIZE = 64 * 1024; // bpf_seq_read hands out at most 8 pages per read

export class SocketFdIterator {
  private readonly buf = fdRecordBuffer();
  // little-endian words of the records, which start at multiples of 8
  private readonly u32 = new Uint32Array(this.buf.buffer);
  private readonly info = Buffer.alloc(16); // union bpf_iter_link_info

  private constructor(
    private progFd: number,
    /** the map of namespaces whose sockets come as held records; -1: none */
    private heldMap = -1,
  ) {}

  /** Whether the kernel is new enough (6.1) and this process may load the program (bpfCapable). */
  static possible(): boolean {
    // The process filter of task iterators (bpf_iter_link_info.task) came in Linux 6.1; before, it is ignored.
    const [major = 0, minor = 0] = release()
      .split(".")
      .map((n) => Number.parseInt(n, 10));
    return (major > 6 || (major === 6 && minor >= 1)) && bpfCapable();
  }

  /**
   * Load the program; throws (BtfError, SysError, VerifierError) when this kernel or these rights cannot. With
   * `held` (network namespace inode numbers), the hashed sockets of those namespaces come as held records
   * (src/bpf/socket-fds.ts), which listAll() hands to its `held` callback. With `owners` (the owners' map of
   * src/bpf/tcp-sockets.ts, which stays the caller's), a socket's first owner goes into that map and only the
   * further ones (and those the map has no room for) come as records.
   */
  static open(held: readonly number[] = [], owners?: OwnersMap): SocketFdIterator {
    const btf = CachedBtf.open();
    let heldMap = -1;
    try {
      if (held.length > 0) {
        heldMap = heldNetnsMap(held.length);
        fillHeldNetns(heldMap, held);
      }
      const program = socketFdsProgram(
        { metaSeq: btf.memberOffset("bpf_iter_meta", "seq"), ...taskFileMembers(btf), ...endpointOffsets(btf) },
        heldMap < 0 ? undefined : { offsets: heldOffsets(btf), netns: heldMap },
        owners,
      );
      const attachBtfId = btf.typeId("FUNC", "bpf_iter_task_file");
      btf.save(); // every question asked: the next run reads no BTF
      const progFd = iterProgLoad({
        attachBtfId,
        insns: assemble(program),
        listing: new Listing(program),
        name: "tcpka_sockfds",
      });
      return new SocketFdIterator(progFd, heldMap);
    } catch (e) {
      if (heldMap >= 0) close(heldMap);
      throw e;
    }
  }

  /**
   * Append the TCP sockets of process `pid` to `fds` and `sockets` (entry i: fds[i] is sockets[i]), in fd order.
   * Returns false when the process does not exist (the kernel then walks nothing).
   */
  list(pid: number, fds: number[], sockets: TcpEndpoints[]): boolean {
    return this.walk(pid, (at) => {
      const s = this.record(at);
      if (!s) return;
      fds.push(this.u32[at >> 2] as number);
      sockets.push(s);
    });
  }

  /** The same with only each socket's inode, appended to `out` as fd, inode, fd, inode, ... */
  listInodes(pid: number, out: number[]): boolean {
    return this.walk(pid, (at) => {
      out.push(this.u32[at >> 2] as number, this.inode(at));
    });
  }

  /**
   * Every process's TCP sockets in one walk (the task iterator without a filter walks every task of tcpka's
   * pid namespace): `each(pid, fd, inode)`. The pid is task->tgid, the number in the initial pid namespace.
   * A held record (open()'s `held`) goes to `each` as well, and its TCP record to `held(buf, at, requests)` right
   * after (TCP_RECORD_SIZE bytes at buf[at], valid during the call; `requests`: a listener's request sockets). `walk` is one that prepareAll() made (so that a
   * ReadAhead reads it early); the caller closes it.
   */
  listAll(
    each: (pid: number, fd: number, inode: number) => void,
    walk?: FileWalk,
    held?: (buf: Buffer, at: number, requests: number) => void,
  ): void {
    const w = walk ?? this.prepareAll();
    try {
      this.read(w.stream, 0, (at, tcp) => {
        each(this.u32[(at >> 2) + 5] as number, this.u32[at >> 2] as number, this.inode(at));
        if (tcp >= 0) held?.(this.buf, tcp, this.u32[(at >> 2) + 4] as number);
      });
    } finally {
      if (!walk) w.close();
    }
  }

  /** The iterator of a walk of every process, to be read by listAll(); `ahead` reads it from now on. */
  prepareAll(ahead?: ReadAhead): FileWalk {
    return this.prepare(0, ahead);
  }

  private prepare(pid: number, ahead?: ReadAhead): FileWalk {
    if (this.progFd < 0) throw new Error("SocketFdIterator used after close()");
    this.info.fill(0);
    this.info.writeUInt32LE(pid, 4); // task.pid: this process and its threads (BPF_TASK_ITER_TGID); 0: all
    const link = iterLinkCreate(this.progFd, this.info);
    let iter: number;
    try {
      iter = iterCreate(link);
    } catch (e) {
      close(link);
      throw e;
    }
    return {
      stream: ahead ? ahead.queue(iter) : directStream(iter),
      close: () => {
        close(iter);
        close(link);
      },
    };
  }

  /** Run the iterator over process `pid` (0: every process), handing each record's offset in buf to `each`. */
  private walk(pid: number, each: (at: number) => void): boolean {
    const w = this.prepare(pid);
    let found: boolean;
    try {
      found = this.read(w.stream, pid, each);
    } finally {
      w.close();
    }
    // Nothing at all: the process may be gone, which /proc tells apart.
    return found || existsSync(`/proc/${pid}`);
  }

  /** Read a walk to its end, `each(at, tcp)` per record (tcp: where its TCP record is; -1: none); whether it had any. */
  private read(stream: Stream, pid: number, each: (at: number, tcp: number) => void): boolean {
    let owner = -1;
    return readFdRecords(
      (into) => stream.read(into),
      this.buf,
      (at, tcp) => {
        // Every record of one walk comes from one process: a kernel that ignored the filter walked them all.
        const tgid = this.u32[(at >> 2) + 5] as number;
        if (pid === 0) {
          // every process
        } else if (owner < 0) owner = tgid;
        else if (tgid !== owner) throw new Error("the kernel ignored the task iterator's process filter");
        each(at, tcp);
      },
    );
  }

  /** The inode number of the record at buf[at]: a small integer where it fits, which sets and maps hash faster. */
  private inode(at: number): number {
    const low = this.u32[(at >> 2) + 2] as number;
    const high = this.u32[(at >> 2) + 3] as number;
    return high === 0 ? low : low + high * 0x1_0000_0000;
  }

  /** Decode the socket of the record at buf[at] (layout in src/bpf/socket-fds.ts). */
  private record(at: number): TcpEndpoints | undefined {
    const b = this.buf;
    const w = at >> 2;
    const fam = (this.u32[w + 1] as number) & 0xffff;
    const state = STATE_NAMES[b[at + 6] as number];
    if (!state || (fam !== AF_INET && fam !== AF_INET6)) return undefined;
    const family = fam === AF_INET ? 4 : 6;
    const ports = this.u32[w + 4] as number; // local port (host order), then the peer's (network order)
    return {
      family,
      state,
      localAddress: family === 4 ? ipv4(b, at + 24) : ipv6(b, at + 24),
      localPort: ports & 0xffff,
      peerAddress: family === 4 ? ipv4(b, at + 40) : ipv6(b, at + 40),
      peerPort: ((ports >>> 16) & 0xff) * 256 + (ports >>> 24),
      inode: this.inode(at),
    };
  }

  close(): void {
    if (this.progFd >= 0) close(this.progFd);
    if (this.heldMap >= 0) close(this.heldMap);
    this.progFd = this.heldMap = -1;
  }
}

/** A walk whose iterator exists (the kernel has not run it yet): its bytes, and close() once they are read. */
export interface FileWalk {
  stream: Stream;
  close(): void;
}

/** The buffer readFdRecords() needs: a read's worth, and the part of a record that a read may end in. */
export function fdRecordBuffer(): Buffer {
  return Buffer.from(new ArrayBuffer(READ_SIZE + RECORD_SIZE + TCP_RECORD_SIZE));
}

/**
 * Read a task_file walk to its end through `read` (bytes into the buffer given; 0 at the end) into `buf`
 * (fdRecordBuffer()): `each(at, tcp)` per record, at its offset in buf, with `tcp` where the TCP record of a held
 * one is (-1: none). Whether there was any.
 */
export function readFdRecords(
  read: (into: Buffer) => number,
  buf: Buffer,
  each: (at: number, tcp: number) => void,
): boolean {
  let found = false;
  let have = 0; // bytes in buf; a partial record at the end is carried to the next read
  for (;;) {
    const n = read(buf.subarray(have, have + READ_SIZE));
    if (n === 0) break;
    have += n;
    let at = 0;
    for (;;) {
      if (have - at < RECORD_SIZE) break;
      const size = buf[at + 7] === HELD ? RECORD_SIZE + TCP_RECORD_SIZE : RECORD_SIZE;
      if (have - at < size) break;
      found = true;
      each(at, size === RECORD_SIZE ? -1 : at + RECORD_SIZE);
      at += size;
    }
    buf.copyWithin(0, at, have);
    have -= at;
  }
  return found;
}

/** The map of held namespaces (u32 net->ns.inum to a u8), for `room` of them. */
export function heldNetnsMap(room: number): number {
  return hashMapCreate("tcpka_heldns", 4, 1, room);
}

/** Put these namespaces into a held map that is empty. */
export function fillHeldNetns(mapFd: number, inums: readonly number[]): void {
  const keys = Buffer.alloc(4 * inums.length);
  for (const [i, inum] of inums.entries()) keys.writeUInt32LE(inum, 4 * i);
  mapUpdateAll(mapFd, keys, Buffer.alloc(inums.length), inums.length);
}
