/**
 * Every TCP socket of a network namespace with its exact keepalive state, in one pass in the kernel: a BPF TCP
 * iterator (src/bpf/tcp-sockets.ts) reads, for each socket, what getsockopt would answer (SO_KEEPALIVE,
 * TCP_KEEPIDLE/INTVL/CNT with a zero resolved to the namespace's sysctl as keepalive_time_when() and friends
 * in include/net/tcp.h do, TCP_USER_TIMEOUT), the timer that sock_diag reports, the queues, the inode, the
 * socket's network namespace and cgroup. No socket is duplicated into tcpka and no option is read per socket:
 * at 100,000 sockets this replaces 100,000 pidfd_getfd + fstat + five getsockopt calls.
 *
 * It needs the kernel's BTF, the TCP iterator and bpf_skc_to_tcp_sock & co. (Linux 5.9), bpf_jiffies64 (5.5)
 * and CAP_BPF with CAP_PERFMON, or root. KernelSockets.open() throws when any is missing; callers then take
 * sock_diag and getsockopt (connections.ts), which stay the oracle that the tests compare this with.
 *
 * The kernel keeps times in jiffies, and HZ is a build option (100, 250, 300, 1000) that no interface states.
 * tcpka learns it from the kernel itself: it holds a listener of its own whose TCP_KEEPIDLE is 1 s, which
 * tcp_sock_set_keepidle_locked() stores as 1 * HZ jiffies, and reads that number back in the same pass.
 * Listeners come first in the walk (bpf_iter_tcp_batch takes the listening hash before the established one),
 * so only the listeners before it wait for HZ.
 */
import { closeSync, constants, openSync } from "node:fs";
import { release } from "node:os";
import { ipv4, ipv6 } from "../addresses.js";
import { assemble, Listing } from "../bpf/asm.js";
import { type OwnersMap, TCP_RECORD_SIZE, tcpSocketOffsets, tcpSocketsProgram } from "../bpf/tcp-sockets.js";
import {
  AF_INET,
  AF_INET6,
  BPF_MAP_TYPE_ARRAY,
  IP_FREEBIND,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  SOL_IP,
  SOL_TCP,
  TCP_KEEPIDLE,
  TIMER_CODES,
} from "../kernel/constants.js";
import { STATE_NAMES, TCP_STATES } from "../kernel/states.js";
import { type EffectiveKeepAlive, SharedSettings } from "../settings.js";
import { bpfCapable, hashMapCreate, iterCreate, iterCreateIn, iterLinkCreate, iterProgLoad } from "../sys/bpf.js";
import { CachedBtf } from "../sys/btf.js";
import { bindLoopback4, close, kernelHz, listen, setsockoptInt, socket, sockfsInode } from "../sys/libc.js";
import { directStream, type ReadAhead, type Stream } from "../sys/read-ahead.js";
import { tcpCounts } from "./netstat.js";
import type { TcpSocket, TimerName } from "./sockets.js";

/** A socket as the kernel pass sees it: what sock_diag says, and what getsockopt would. */
export interface KernelSocket extends TcpSocket {
  /** The inode number of its network namespace (/proc/PID/ns/net links to net:[N]). */
  netns: number;
  /** Its cgroup v2 id (the inode of the cgroup's directory on the cgroup2 mount); 0 when unknown. */
  cgroup: number;
  /** The effective settings; null for TIME-WAIT and request sockets, which have no options. */
  settings: EffectiveKeepAlive | null;
}

const READ_SIZE = 64 * 1024; // bpf_seq_read hands out at most 8 pages per read
/** Where a record that waited for HZ is decoded: past the read area and the partial record it may carry. */
const SPARE = READ_SIZE + TCP_RECORD_SIZE;

/** The first kernel with everything the program uses: the TCP iterator and bpf_skc_to_tcp_*_sock (5.9). */
const SINCE: readonly [number, number] = [5, 9];

export type { OwnersMap };

/**
 * The owners' map of src/bpf/tcp-sockets.ts (OwnersMap) for about `sockets` sockets: four slots a socket (a
 * power of two; at most 2^22, 64 MiB), so that few sockets' inodes share their low bits with another's (those
 * come to user space as records). Its fd is closed by the caller. 16 bytes of kernel memory a slot while tcpka
 * runs, zeroed when made.
 */
export function ownersMap(sockets: number): OwnersMap {
  let slots = 64;
  while (slots < 4 * sockets && slots < 1 << 22) slots *= 2;
  return { fd: hashMapCreate("tcpka_owners", 4, 16, slots, BPF_MAP_TYPE_ARRAY), mask: slots - 1 };
}

export class KernelSockets {
  private readonly buf = Buffer.from(new ArrayBuffer(READ_SIZE + 2 * TCP_RECORD_SIZE));
  private readonly u32 = new Uint32Array(this.buf.buffer);
  private readonly i32 = new Int32Array(this.buf.buffer);
  /** Jiffies per second; 0 until the probe listener has been read. */
  private hz = 0;
  /** whether a walk of tcpka's own namespace (which holds the HZ probe) was made: one is enough */
  private hzWalkMade = false;
  /** The socket that walks with `reuse` hand out, refilled for each. */
  private reused: KernelSocket | undefined;
  /**
   * The first owner of the socket last handed out, from the owners' map (open()'s `owners`; tcp-sockets.ts):
   * its tgid, 0 where the map had none, and its fd.
   */
  ownerPid = 0;
  ownerFd = 0;
  /** The settings objects that sockets share (settingsOf). */
  private readonly shared = new SharedSettings();

  private constructor(
    /** the states to hand out (1 << kernel state) */
    private readonly wanted: number,
    private progFd: number,
    private linkFd: number,
    /** tcpka's own network namespace, to come back to after a walk elsewhere */
    private readonly ownNetns: number,
    private probeFd: number,
    private readonly probeInode: number,
  ) {}

  /** Whether this kernel and these rights may run it (a cheap check that spares reading the BTF in vain). */
  static possible(): boolean {
    const [major = 0, minor = 0] = release()
      .split(".")
      .map((n) => Number.parseInt(n, 10));
    return (major > SINCE[0] || (major === SINCE[0] && minor >= SINCE[1])) && bpfCapable();
  }

  /**
   * Load the program for the sockets in `states` (a mask of 1 << TCP state, as the filter's). Listeners are
   * always walked, for HZ and for the rules that tell incoming from outgoing connections. Throws (BtfError,
   * SysError, VerifierError) when this kernel or these rights cannot.
   */
  static open(states: number, owners?: OwnersMap): KernelSockets {
    // A request socket (TCP_NEW_SYN_RECV) shows as SYN-RECV, as in sock_diag's dump.
    const wanted = states & (1 << TCP_STATES.SYN_RECV) ? states | (1 << TCP_STATES.NEW_SYN_RECV) : states;
    // The kernel's own state of a waiting FIN-WAIT-2 orphan is TIME_WAIT: let both through to the program's end.
    const walked =
      wanted | (1 << TCP_STATES.LISTEN) | (wanted & (1 << TCP_STATES.FIN_WAIT2) ? 1 << TCP_STATES.TIME_WAIT : 0);
    const btf = CachedBtf.open();
    const program = tcpSocketsProgram(tcpSocketOffsets(btf), walked, owners);
    const attachBtfId = btf.typeId("FUNC", "bpf_iter_tcp");
    btf.save(); // every question asked: the next run reads no BTF
    const progFd = iterProgLoad({
      attachBtfId,
      insns: assemble(program),
      listing: new Listing(program),
      name: "tcpka_tcp",
    });
    const fds: number[] = [progFd];
    try {
      const linkFd = iterLinkCreate(progFd, Buffer.alloc(0));
      fds.push(linkFd);
      const ownNetns = openSync("/proc/thread-self/ns/net", constants.O_RDONLY); // libuv opens every fd O_CLOEXEC
      fds.push(ownNetns);
      const [probeFd, probeInode] = hzProbe();
      return new KernelSockets(wanted, progFd, linkFd, ownNetns, probeFd, probeInode);
    } catch (e) {
      for (const fd of fds) close(fd);
      throw e;
    }
  }

  /**
   * Hand every socket of a network namespace to `each`: tcpka's own, or the one that the nsfs file `netnsFd`
   * names (/proc/PID/ns/net, /run/netns/NAME). The local port of every listener, wanted or not, is added to
   * `listening`: they come before any other socket. `walk` is one that prepare() made; the caller closes it.
   * With `reuse`, every socket is handed out in the same object, refilled: for a caller that keeps none.
   */
  walk(
    each: (s: KernelSocket) => void,
    to: { netnsFd?: number; listening?: Set<number>; reuse?: boolean } = {},
    walk?: TcpWalk,
  ): void {
    const w = walk ?? this.prepare(to.netnsFd);
    try {
      if (w.hzFirst) this.read(w.hzFirst.stream, () => {}, undefined, true);
      this.read(w.stream, each, to.listening, to.reuse === true);
    } finally {
      if (!walk) w.close();
    }
  }

  /**
   * The iterator of a walk of tcpka's namespace or of `netnsFd`'s, to be read by walk(); `ahead` reads it from
   * now on. A TCP iterator walks the namespace of whoever creates it (bpf_iter_init_seq_net takes current's), so
   * for another namespace this thread joins it for the one call to BPF_ITER_CREATE and comes back at once.
   * While HZ is not known, a walk of another namespace is preceded by one of tcpka's own, which holds the
   * probe listener.
   */
  prepare(netnsFd?: number, ahead?: ReadAhead): TcpWalk {
    if (this.progFd < 0) throw new Error("KernelSockets used after close()");
    const hzFirst = this.hz === 0 && netnsFd !== undefined && !this.hzWalkMade ? this.prepare(undefined, ahead) : null;
    let iter: number;
    try {
      iter = netnsFd === undefined ? iterCreate(this.linkFd) : iterCreateIn(this.linkFd, netnsFd, this.ownNetns);
    } catch (e) {
      hzFirst?.close();
      throw e;
    }
    if (netnsFd === undefined) this.hzWalkMade = true;
    return {
      stream: ahead ? ahead.queue(iter) : directStream(iter),
      hzFirst,
      close: () => {
        hzFirst?.close();
        close(iter);
      },
    };
  }

  /** Read a walk to its end, decoding each record; records before HZ is known wait in `early`. */
  private read(
    stream: Stream,
    each: (s: KernelSocket) => void,
    listening: Set<number> | undefined,
    reuse: boolean,
  ): void {
    const into = reuse ? this.scratch() : undefined;
    const early: Buffer[] = [];
    const b = this.buf;
    let have = 0; // bytes in buf; a partial record at the end is carried to the next read
    for (;;) {
      const n = stream.read(b.subarray(have, have + READ_SIZE));
      if (n === 0) break;
      have += n;
      const whole = have - (have % TCP_RECORD_SIZE);
      for (let at = 0; at < whole; at += TCP_RECORD_SIZE) {
        if (this.inode(at) === this.probeInode) {
          this.learnHz(at);
          for (const r of early) {
            b.set(r, SPARE);
            const s = this.record(SPARE, into);
            if (s) each(s);
          }
          early.length = 0;
          continue;
        }
        const state = b[at + 2] as number;
        if (state === TCP_STATES.LISTEN) listening?.add((this.u32[(at + 8) >> 2] as number) & 0xffff);
        if (!(this.wanted & (1 << state))) continue;
        if (this.hz === 0) early.push(Buffer.from(b.subarray(at, at + TCP_RECORD_SIZE)));
        else {
          const s = this.record(at, into);
          if (s) each(s);
        }
      }
      b.copyWithin(0, whole, have);
      have -= whole;
    }
    if (this.hz === 0) throw new Error("the kernel pass did not see tcpka's own listener, so HZ is unknown");
  }

  /**
   * Hand the sockets of `held` (one namespace's held records from the owners' walk) to `each` as walk() would:
   * listeners first (their ports into `listening`), then the rest, in the states that open() was given. HZ,
   * where no walk of tcpka's own namespace learnt it yet, from the coarse clock's tick (kernelHz), which
   * spares a walk of the whole established hash for it.
   */
  readHeld(
    held: HeldNamespace,
    each: (s: KernelSocket) => void,
    to: { listening?: Set<number>; reuse?: boolean } = {},
  ): void {
    if (this.hz === 0) this.hz = kernelHz();
    const into = to.reuse === true ? this.scratch() : undefined;
    const r = held.records;
    for (const listeners of [true, false]) {
      for (let at = 0; at < held.count * TCP_RECORD_SIZE; at += TCP_RECORD_SIZE) {
        const state = r[at + 2] as number;
        if ((state === TCP_STATES.LISTEN) !== listeners) continue;
        if (listeners) to.listening?.add(r.readUInt16LE(at + 8));
        if (!(this.wanted & (1 << state))) continue;
        r.copy(this.buf, SPARE, at, at + TCP_RECORD_SIZE);
        const s = this.record(SPARE, into);
        if (s) each(s);
      }
    }
  }

  /** HZ from the probe listener's keepalive_time: its TCP_KEEPIDLE of 1 s in jiffies. */
  private learnHz(at: number): void {
    const hz = this.u32[(at + 56) >> 2] as number;
    if (hz < 24 || hz > 10_000) throw new Error(`the kernel pass read HZ as ${hz}`);
    this.hz = hz;
  }

  private inode(at: number): number {
    const low = this.u32[(at + 16) >> 2] as number;
    const high = this.u32[(at + 20) >> 2] as number;
    return high === 0 ? low : low + high * 0x1_0000_0000;
  }

  /** Decode the record at buf[at] (layout in src/bpf/tcp-sockets.ts), into `into` if given, else a new object. */
  private record(at: number, into?: KernelSocket): KernelSocket | undefined {
    const b = this.buf;
    const w = at >> 2;
    const family = b[at] === AF_INET ? 4 : b[at] === AF_INET6 ? 6 : 0;
    const state = STATE_NAMES[b[at + 2] as number];
    if (!state || family === 0) return undefined;
    const hz = this.hz;
    const timerCode = b[at + 3] as number;
    const timer = (TIMER_CODES[timerCode as keyof typeof TIMER_CODES] ?? "off") as TimerName;
    // jiffies_delta_to_msecs: a timer already due shows 0; jiffies_to_msecs rounds up.
    const delta = (this.u32[w + 22] as number) + (this.i32[w + 23] as number) * 0x1_0000_0000;
    const flags = b[at + 5] as number;
    const settings = flags & 1 ? this.settingsOf(at, w, flags) : null;
    const ports = this.u32[w + 2] as number; // local port (host order), then the peer's (network order)
    const rq = this.i32[w + 24] as number;
    const localAddress = family === 4 ? ipv4(b, at + 24) : ipv6(b, at + 24);
    const localPort = ports & 0xffff;
    const peerAddress = family === 4 ? ipv4(b, at + 40) : ipv6(b, at + 40);
    const peerPort = ((ports >>> 16) & 0xff) * 256 + (ports >>> 24);
    const timerMs = timerCode === 0 || delta <= 0 ? 0 : Math.ceil((delta * 1000) / hz);
    const timerCount = b[at + 4] as number;
    const recvQueue = state === "LISTEN" || rq > 0 ? rq >>> 0 : 0;
    const sendQueue = this.u32[w + 25] as number;
    const uid = this.u32[w + 3] as number;
    const inode = this.inode(at);
    const netns = this.u32[w + 19] as number;
    const cgroup = (this.u32[w + 20] as number) + (this.u32[w + 21] as number) * 0x1_0000_0000;
    this.ownerPid = this.u32[w + 26] as number;
    this.ownerFd = this.u32[w + 27] as number;
    if (into === undefined) {
      return {
        family,
        state,
        localAddress,
        localPort,
        peerAddress,
        peerPort,
        timer,
        timerMs,
        timerCount,
        recvQueue,
        sendQueue,
        uid,
        inode,
        netns,
        cgroup,
        settings,
      };
    }
    into.family = family;
    into.state = state;
    into.localAddress = localAddress;
    into.localPort = localPort;
    into.peerAddress = peerAddress;
    into.peerPort = peerPort;
    into.timer = timer;
    into.timerMs = timerMs;
    into.timerCount = timerCount;
    into.recvQueue = recvQueue;
    into.sendQueue = sendQueue;
    into.uid = uid;
    into.inode = inode;
    into.netns = netns;
    into.cgroup = cgroup;
    into.settings = settings;
    return into;
  }

  /** The object that reused walks refill (made as record() makes every other, so that both have one shape). */
  private scratch(): KernelSocket {
    this.reused ??= {
      family: 4,
      state: "ESTAB",
      localAddress: "",
      localPort: 0,
      peerAddress: "",
      peerPort: 0,
      timer: "off",
      timerMs: 0,
      timerCount: 0,
      recvQueue: 0,
      sendQueue: 0,
      uid: 0,
      inode: 0,
      netns: 0,
      cgroup: 0,
      settings: null,
    };
    return this.reused;
  }

  /** The effective settings of the full socket at buf[at], as getsockopt computes them (shared objects). */
  private settingsOf(at: number, w: number, flags: number): EffectiveKeepAlive {
    const b = this.buf;
    const hz = this.hz;
    const time = (this.u32[w + 14] as number) || (this.u32[w + 16] as number);
    const intvl = (this.u32[w + 15] as number) || (this.u32[w + 17] as number);
    return this.shared.of(
      (flags & 2) !== 0,
      Math.floor(time / hz),
      Math.floor(intvl / hz),
      (b[at + 6] as number) || (b[at + 7] as number),
      this.u32[w + 18] as number,
    );
  }

  close(): void {
    if (this.progFd < 0) return;
    for (const fd of [this.probeFd, this.linkFd, this.progFd]) close(fd);
    closeSync(this.ownNetns);
    this.progFd = this.probeFd = this.linkFd = -1;
  }
}

/**
 * tcpka's own listener whose keepalive_time is 1 * HZ: 127.0.0.1 on a port the kernel picks, IP_FREEBIND so
 * that it binds even where lo is down, a backlog of 0. Returns its fd and inode.
 */
function hzProbe(): [number, number] {
  const fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  try {
    setsockoptInt(fd, SOL_IP, IP_FREEBIND, 1);
    setsockoptInt(fd, SOL_TCP, TCP_KEEPIDLE, 1);
    bindLoopback4(fd);
    listen(fd, 0);
    return [fd, sockfsInode(fd)];
  } catch (e) {
    close(fd);
    throw e;
  }
}

/** A walk whose iterator exists (the kernel has not run it yet): its bytes, and close() once they are read. */
export interface TcpWalk {
  stream: Stream;
  /** the walk of tcpka's own namespace that must come first to learn HZ */
  hzFirst: TcpWalk | null;
  close(): void;
}

/**
 * The sockets of one network namespace that the owners' walk brought whole (held records, src/bpf/socket-fds.ts):
 * each hashed socket that a process holds, once. They are all of the namespace's full TCP sockets when `count`
 * equals what its sockstat counts as hashed ("inuse"): every socket in the listening and established hashes is
 * then held (an orphan or a kernel socket would make `count` smaller); TIME-WAIT ones are apart (complete()).
 * Request sockets (SYN-RECV) are in neither count: `requests` adds up those of the namespace's listeners.
 */
export class HeldNamespace {
  records = Buffer.alloc(16 * TCP_RECORD_SIZE);
  count = 0;
  requests = 0;
  /** the tgid of each record's first owner, where add() was given it */
  readonly owners: number[] = [];

  /**
   * Whether these are all the hashed TCP sockets of the namespace `inum` that process `pid` is in: as many as its
   * sockstat counts hashed ("inuse") once the walk is over; with `timeWait`, all its sockets: none in TIME-WAIT
   * either. A hashed socket that no process holds (a connection not accepted yet, an orphan closing, a kernel
   * socket, one held by a thread with a file table of its own or by a process outside tcpka's pid namespace)
   * makes them fewer; one closed during the walk after it was met, more. (One opened during the walk where the walk
   * had passed, while another closed after it was met, leaves the count equal: a snapshot's race, as in sock_diag's.)
   */
  complete(pid: number | undefined, inum: number, timeWait: boolean): boolean {
    if (pid === undefined) return false;
    const after = tcpCounts(pid, inum);
    return after !== undefined && after.inuse === this.count && (after.tw === 0 || !timeWait);
  }

  add(buf: Buffer, at: number, requests: number, owner?: number): void {
    if (owner !== undefined) this.owners.push(owner);
    if ((this.count + 1) * TCP_RECORD_SIZE > this.records.length) {
      const more = Buffer.alloc(this.records.length * 2);
      this.records.copy(more);
      this.records = more;
    }
    buf.copy(this.records, this.count * TCP_RECORD_SIZE, at, at + TCP_RECORD_SIZE);
    this.count++;
    this.requests += requests;
  }
}

/**
 * Without owners asked for, the fewest held namespaces worth an owners' walk made for them alone: it visits every
 * file of the host (~45 ms at 100,000 sockets, BENCHMARKS §7), about what four TCP walks of the shared hash cost.
 */
export const HOLD_WITHOUT_OWNERS = 4;

/** The held records of a walk, by namespace (their inode number, at 76 in the record). */
export class HeldSockets {
  readonly byNetns = new Map<number, HeldNamespace>();

  constructor(netns: Iterable<number>) {
    for (const inum of netns) this.byNetns.set(inum, new HeldNamespace());
  }

  /** The owners' walk's `held` callback. */
  readonly add = (buf: Buffer, at: number, requests: number, owner?: number): void => {
    this.byNetns.get(buf.readUInt32LE(at + 76))?.add(buf, at, requests, owner);
  };
}
