/**
 * The tracing programs of `tcpka watch` (src/inspect/watch.ts): what keepalive does on every TCP socket of the
 * host, as it happens, one record per event into a ring buffer. All but two (a program's setsockopt, below) are
 * BPF_PROG_TYPE_TRACING programs on BTF tracepoints (tp_btf: Linux 5.5; the ring buffer: 5.8;
 * bpf_skc_to_tcp_sock: 5.9) — not fentry on the keepalive functions: this machine's kernel (6.18, lockdown
 * integrity) refuses fentry and fexit programs with EPERM before the verifier runs, while tp_btf loads.
 *
 *   timer_expire_entry / _exit  a per-CPU slot holds the socket whose keepalive timer runs on this CPU (a
 *                               timer_list whose function is tcp_keepalive_timer: sk_timer of a struct sock,
 *                               address from /proc/kallsyms), from its entry to its exit: a timer runs to its
 *                               end on one CPU, in softirq (kernel/time/timer.c call_timer_fn)
 *   net_dev_queue               a packet of that socket queued while its keepalive timer runs: the probe
 *                               (tcp_keepalive_timer → tcp_write_wakeup → tcp_xmit_probe_skb sends it
 *                               synchronously), unless it is the RST the timer sends when it gives up;
 *                               icsk_probes_out is counted after it, so the probe's number is probes_out + 1.
 *                               The socket is remembered in a hash map with the time
 *   tcp_probe                   a segment arrives on an established socket (tcp_rcv_established): if the
 *                               socket has a probe out, this is its answer
 *   inet_sock_set_state         a socket closes (TCP_CLOSE) with an error: inside its keepalive timer, killed by
 *                               keepalive (or by the user timeout while probing); elsewhere with ETIMEDOUT, by
 *                               retransmissions or the user timeout (tcp_write_err, inlined, sets sk_err before
 *                               tcp_done sets the state). And a connection established (from SYN-SENT or
 *                               SYN-RECV): the socket goes into this CPU's CONNECTED slot, for timer_start below
 *   timer_start                 a keepalive timer armed, outside its own expiry, on an established (or
 *                               CLOSE-WAIT) socket: keepalive turned on (tcp_set_keepalive: SOCK_KEEPOPEN is set
 *                               only after it, in sk_setsockopt), re-armed by a new idle time
 *                               (tcp_sock_set_keepidle_locked), or armed as the connection is established (the
 *                               CONNECTED slot, see there). By setsockopt(2), by a BPF program's bpf_setsockopt (tcpka
 *                               enforce's, the bulk iterator's), by the kernel itself: every path goes through
 *                               the timer. The new expiry is the tracepoint's second argument
 *   timer_cancel                that timer removed while keepalive is on: turned off (tcp_set_keepalive(sk, 0)
 *                               → sk_stop_timer) — or the first half of a re-arm to another wheel bucket
 *                               (__mod_timer → detach_if_pending, then timer_start): user space pairs them.
 *                               Not the timer's own expiry, which detaches it first (expire_timers →
 *                               detach_timer traces timer_cancel, then timer_expire_entry): that comes once
 *                               jiffies has reached the timer's bucket (timerDue), a program's change before.
 *                               A re-arm within the same bucket of the timer wheel traces nothing (__mod_timer
 *                               only updates expires), and TCP_KEEPINTVL / TCP_KEEPCNT touch no timer at all:
 *                               the setsockopt programs below see those
 *
 * The timer's tracepoints give a struct timer_list; its socket is at a negative offset from it, which the
 * verifier does not let a program read through, so bpf_rdonly_cast (a kfunc, Linux 6.2) makes the address a
 * struct sock and a struct tcp_sock whose loads cannot fault (PTR_UNTRUSTED: a bad one reads as zero).
 *
 * And two BPF_PROG_TYPE_TRACEPOINT programs on the setsockopt syscall's own trace events
 * (syscalls:sys_enter_setsockopt and sys_exit_setsockopt, through perf events: sys/perf.ts), for what a program's
 * setsockopt(2) changes without a timer to show it:
 *
 *   sys_enter_setsockopt        SO_KEEPALIVE, or TCP_KEEPIDLE / INTVL / CNT: fd, optname and level stashed in a
 *                               hash map by the thread's pid_tgid; any other option leaves at the first compares
 *   sys_exit_setsockopt         the thread's stash taken out (a hash lookup for every setsockopt); when the call
 *                               returned 0, the socket of the fd (current->files->fdt->fd[fd], the file that
 *                               __sys_setsockopt found; a socket's as sock_from_file knows it: its inode is
 *                               sockfs's, its private_data a struct socket that points back to it) — a TCP socket
 *                               (sk_protocol, sk_type, family), established or in CLOSE-WAIT — to a `set` record
 *                               with what it has now (do_tcp_setsockopt → tcp_sock_set_keepintvl, _keepcnt,
 *                               _keepidle_locked; sk_setsockopt → tcp_set_keepalive, then SOCK_KEEPOPEN) and when
 *                               its timer is due
 *
 * User space (inspect/watch.ts) folds a set record with the timer's records of the same call, which come first,
 * from inside it: one line per call. This is the narrowest hook the kernel leaves here: fentry/fexit on
 * do_tcp_setsockopt are refused (EPERM) and kprobes are not built in; a tp_btf on the raw sys_enter/sys_exit
 * tracepoints would run a program on every system call of the host; the cgroup setsockopt hook (tcpka enforce's)
 * runs before the kernel's handler, so it knows neither success nor what the socket keeps. Its price: while a
 * syscall trace event is enabled, every task of the host takes the traced path of every system call
 * (SYSCALL_WORK_SYSCALL_TRACEPOINT: syscall_trace_enter and syscall_exit_work call perf_syscall_enter and
 * perf_syscall_exit, which test the call's bit in enabled_perf_{enter,exit}_syscalls and return) — measured here
 * about 75 ns more per system call (getpid() in a loop: 150–200 ns without, 225–280 ns with; 2 cores, Linux 6.18).
 * Not seen so: setsockopt through io_uring (IORING_OP_URING_CMD calls do_sock_setsockopt itself), 32-bit programs'
 * compat calls (the syscall trace events leave them out: ARCH_TRACE_IGNORE_COMPAT_SYSCALLS), and BPF programs'
 * bpf_setsockopt (tcpka enforce's, the bulk iterator's): no system call; the timer's records show what those do to
 * the timer.
 *
 * The record (RECORD bytes):
 *    0 u8 kind (KIND)   1 u8 family   2 u8 icsk_probes_out   3 u8 keepalive_probes (0: the namespace's)
 *    4 u32 tgid of the task the CPU was running
 *    8 u64 bpf_ktime_get_ns   16 u32 network namespace inode   20 u16 local port (host order)
 *   22 u16 peer port (network order)   24 16 bytes local address   40 16 bytes peer address
 *   56 u32 value: answered: µs since the probe; killed, timed out: sk_err
 *   60 u32 jiffies since the peer was last heard (now - tp->rcv_tstamp)
 *   64 16 bytes comm of that task   80 u64 socket inode (0: no file)   88 u32 icsk_user_timeout (ms)
 *   92 u8 the namespace's tcp_keepalive_probes   93 u8 on, retuned: 1 armed as the connection was established
 *   94..95 zero
 *   96 u64 the socket's cgroup v2 id (0: unknown)   104 u32 keepalive_time (jiffies; 0: the namespace's)
 *  108 u32 the namespace's tcp_keepalive_time (jiffies)
 *  112 u32 keepalive_intvl (jiffies; 0: the namespace's)   116 u32 the namespace's tcp_keepalive_intvl (jiffies)
 *  120 u8 set: the option's optname   121 u8 set: its level   122 u8 set: SO_KEEPALIVE on after it
 *  123..127 zero
 * For on and retuned, value (56) is the jiffies until the timer's new expiry (its bucket's); for set, until the
 * timer is due (timerDue: a re-arm within its wheel bucket changes only sk_timer.expires) when keepalive is on,
 * else 0.
 * A record that does not fit in the ring is counted in the per-CPU counter LOST of the flags map.
 */
import {
  AF_INET,
  AF_INET6,
  IPPROTO_TCP,
  SO_KEEPALIVE,
  SOCK_STREAM,
  SOCKFS_MAGIC,
  SOL_SOCKET,
  SOL_TCP,
  TCP_KEEPCNT,
  TCP_KEEPIDLE,
} from "../kernel/constants.js";
import { TCP_STATES } from "../kernel/states.js";
import type { BtfFacts } from "../sys/btf.js";
import {
  Add,
  And32,
  Call,
  Div,
  Fn,
  type Instruction,
  Ja,
  JEq,
  JEq32,
  JGE,
  JGT,
  JGT32,
  JLT32,
  JNE,
  JNE32,
  KfuncCall,
  LoadImm64,
  LoadMapFd,
  LoadMem,
  Lsh,
  Mov,
  Mov32,
  Mul32,
  ProgramBuilder,
  R0,
  R1,
  R2,
  R3,
  R4,
  R6,
  R7,
  R8,
  R9,
  R10,
  type Reg,
  Return,
  Rsh,
  Rsh32,
  StoreImm,
  StoreMem,
  Sub,
} from "./asm.js";
import { emitAddresses } from "./endpoints.js";
import { emitCgroupId, emitInode, keepOpen, type TcpSocketOffsets, tcpSocketOffsets } from "./tcp-sockets.js";

export const RECORD = 128;
const REC = -RECORD;
/** Scratch on the stack below the record: a map key (u32 or a socket's address) and a value. */
const KEY = REC - 8;
const VALUE = REC - 16;

export const KIND = {
  probe: 1,
  answered: 2,
  killed: 3,
  timedOut: 4,
  on: 5,
  retuned: 6,
  off: 7,
  /** a successful setsockopt of SO_KEEPALIVE or TCP_KEEPIDLE/INTVL/CNT, with what the socket has after it */
  set: 8,
} as const;

/** Index of the flags map (a per-CPU array of u64): the socket whose keepalive timer runs here; records lost. */
export const IN_TIMER = 0;
export const LOST = 1;
/**
 * …the socket whose connection was established last on this CPU, and when (bpf_ktime_get_ns): until the
 * handshake's last ACK leaves (net_dev_queue of its packet) and for at most ESTABLISHING_NS, its keepalive timer
 * armed is the kernel's doing at the connection's start — tcp_finish_connect arming it for a socket that had
 * keepalive on before connect(), or a sock_ops program's bpf_setsockopt in its established callback (tcp_init_transfer,
 * tcpka enforce's) — not the task's that the CPU happens to run.
 */
export const CONNECTED = 2;
export const CONNECTED_AT = 3;
export const FLAGS = 4;
const ESTABLISHING_NS = 200_000;

/** The ETIMEDOUT of include/uapi/asm-generic/errno.h, which tcp_write_err sets when no soft error is pending. */
const ETIMEDOUT = 110;

export interface WatchOffsets extends TcpSocketOffsets {
  skErr: number;
  skTimer: number;
  timerFunction: number;
  skbSk: number;
  skbHead: number;
  skbTransportHeader: number;
  tcpRcvTstamp: number;
  skcState: number;
  /** struct sock: sk_timer.flags (the timer's wheel bucket in the upper 10 bits) */
  skTimerFlags: number;
}

export function watchOffsets(btf: BtfFacts): WatchOffsets {
  return {
    ...tcpSocketOffsets(btf),
    skErr: btf.memberOffset("sock", "sk_err"),
    skTimer: btf.memberOffset("sock", "sk_timer"),
    timerFunction: btf.memberOffset("timer_list", "function"),
    skbSk: btf.memberOffset("sk_buff", "sk"),
    skbHead: btf.memberOffset("sk_buff", "head"),
    skbTransportHeader: btf.memberOffset("sk_buff", "transport_header"),
    tcpRcvTstamp: btf.memberOffset("tcp_sock", "rcv_tstamp"),
    skcState: btf.memberOffset("sock_common", "skc_state"),
    skTimerFlags: btf.memberOffset("sock", "sk_timer.flags"),
  };
}

export interface WatchMaps {
  ring: number;
  /** per-CPU array, FLAGS entries: IN_TIMER, LOST, CONNECTED */
  flags: number;
  /** hash: socket address (u64) → bpf_ktime_get_ns of its last probe */
  probing: number;
}

/** One program: where it attaches and its instructions. */
export interface WatchProgram {
  name: string;
  /** the tracepoint (its btf_trace_ typedef is what the program attaches to) */
  target: string;
  insns: Instruction[];
}

/** `r0` = the flags map's entry `index` (this CPU's u64), or exit when the lookup fails. Uses r1, r2. */
function flagEntry(b: ProgramBuilder, m: WatchMaps, index: number, out: string): void {
  b.emit(
    StoreImm(R10, KEY, index, "W"),
    ...LoadMapFd(R1, m.flags),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, out),
  );
}

/**
 * timer_expire_entry(struct timer_list *timer, unsigned long baseclk): this CPU's IN_TIMER slot = the socket of
 * a keepalive timer (the timer minus sk_timer's offset), else 0; timer_expire_exit(timer): 0.
 */
function timerSlot(o: WatchOffsets, m: WatchMaps, keepaliveTimer: bigint | null): Instruction[] {
  const b = new ProgramBuilder();
  b.emit(LoadMem(R6, R1, 0, "DW"));
  flagEntry(b, m, IN_TIMER, "out");
  if (keepaliveTimer === null) {
    b.emit(StoreImm(R0, 0, 0, "DW"));
  } else {
    b.emit(
      StoreImm(R0, 0, 0, "DW"),
      LoadMem(R2, R6, o.timerFunction, "DW"),
      ...LoadImm64(R3, keepaliveTimer),
      JNE.Reg(R2, R3, "out"),
      Mov.Reg(R2, R6),
      Add.Imm(R2, -o.skTimer),
      StoreMem(R0, 0, R2, "DW"),
    );
  }
  b.label("out").emit(Mov.Imm(R0, 0), Return());
  return b.build();
}

/**
 * `size` bytes at `off` of the tcp_sock whose struct sock is in r6, to the stack at r10 + `slot`, read with
 * bpf_probe_read_kernel: for a socket that the verifier knows only as a struct sock under RCU (skb->sk), which
 * bpf_skc_to_tcp_sock does not take. Uses r1-r3.
 */
function readTcp(off: number, size: number, slot: number): Instruction[] {
  return [
    Mov.Reg(R1, R10),
    Add.Imm(R1, slot),
    Mov.Imm(R2, size),
    Mov.Reg(R3, R6),
    Add.Imm(R3, off),
    Call(Fn.probeReadKernel),
  ];
}

/**
 * The record of the socket in r6 (a struct sock) with its tcp_sock in r7 (or, with `viaRead`, r7 = r6 and the
 * tcp_sock's own fields read with readTcp): zeroed, then kind, time, the task, the socket's identity and
 * keepalive state. Calls helpers (r1-r5 lost); r6, r7 and r8 are kept.
 */
function emitRecord(b: ProgramBuilder, o: WatchOffsets, kind: number, next: string, viaRead = false): void {
  for (let at = 0; at < RECORD; at += 8) b.emit(StoreImm(R10, REC + at, 0, "DW"));
  b.emit(
    StoreImm(R10, REC, kind, "B"),
    Call(Fn.ktimeGetNs),
    StoreMem(R10, REC + 8, R0, "DW"),
    Call(Fn.getCurrentPidTgid),
    Rsh.Imm(R0, 32), // the tgid is the upper half
    StoreMem(R10, REC + 4, R0, "W"),
    Mov.Reg(R1, R10),
    Add.Imm(R1, REC + 64),
    Mov.Imm(R2, 16),
    Call(Fn.getCurrentComm),
  );
  if (viaRead) {
    b.emit(
      ...readTcp(o.tcpRcvTstamp, 4, REC + 60),
      ...readTcp(o.tcpProbesOut, 1, REC + 2),
      ...readTcp(o.tcpKeepaliveProbes, 1, REC + 3),
      ...readTcp(o.tcpUserTimeout, 4, REC + 88),
      ...readTcp(o.tcpKeepaliveTime, 4, REC + 104),
      ...readTcp(o.tcpKeepaliveIntvl, 4, REC + 112),
      Call(Fn.jiffies64),
      LoadMem(R3, R10, REC + 60, "W"),
      Sub.Reg(R0, R3),
      StoreMem(R10, REC + 60, R0, "W"),
    );
  } else {
    b.emit(
      Call(Fn.jiffies64),
      LoadMem(R3, R7, o.tcpRcvTstamp, "W"),
      Sub.Reg(R0, R3),
      StoreMem(R10, REC + 60, R0, "W"),
      LoadMem(R3, R7, o.tcpProbesOut, "B"),
      StoreMem(R10, REC + 2, R3, "B"),
      LoadMem(R3, R7, o.tcpKeepaliveProbes, "B"),
      StoreMem(R10, REC + 3, R3, "B"),
      LoadMem(R3, R7, o.tcpUserTimeout, "W"),
      StoreMem(R10, REC + 88, R3, "W"),
      LoadMem(R3, R7, o.tcpKeepaliveTime, "W"),
      StoreMem(R10, REC + 104, R3, "W"),
      LoadMem(R3, R7, o.tcpKeepaliveIntvl, "W"),
      StoreMem(R10, REC + 112, R3, "W"),
    );
  }
  b.emit(
    LoadMem(R3, R6, o.skcNum, "H"),
    StoreMem(R10, REC + 20, R3, "H"),
    LoadMem(R3, R6, o.skcDport, "H"),
    StoreMem(R10, REC + 22, R3, "H"),
    LoadMem(R2, R6, o.skcNet, "DW"),
    LoadMem(R3, R2, o.netInum, "W"),
    StoreMem(R10, REC + 16, R3, "W"),
    LoadMem(R3, R2, o.netKeepaliveProbes, "B"),
    StoreMem(R10, REC + 92, R3, "B"),
    LoadMem(R3, R2, o.netKeepaliveTime, "W"),
    StoreMem(R10, REC + 108, R3, "W"),
    LoadMem(R3, R2, o.netKeepaliveIntvl, "W"),
    StoreMem(R10, REC + 116, R3, "W"),
  );
  // The cgroup the socket is charged to: struct sock's own field (the same offset as in tcp_sock, where sk is first).
  emitCgroupId(b, o, R6, REC + 96, `${next}_inode`);
  b.label(`${next}_inode`);
  emitInode(b, o, R7, REC + 80, `${next}_family`);
  b.label(`${next}_family`).emit(LoadMem(R2, R6, o.skcFamily, "H"), StoreMem(R10, REC + 1, R2, "B"));
  emitAddresses(b, o, R6, R2, REC + 24, REC + 40, next);
}

/** Write the record to the ring; count it as lost when it does not fit. Then exit. */
function emitOutput(b: ProgramBuilder, m: WatchMaps): void {
  b.label("output").emit(
    ...LoadMapFd(R1, m.ring),
    Mov.Reg(R2, R10),
    Add.Imm(R2, REC),
    Mov.Imm(R3, RECORD),
    Mov.Imm(R4, 0),
    Call(Fn.ringbufOutput),
    JEq.Imm(R0, 0, "out"),
  );
  flagEntry(b, m, LOST, "out");
  b.emit(LoadMem(R1, R0, 0, "DW"), Add.Imm(R1, 1), StoreMem(R0, 0, R1, "DW"));
  b.label("out").emit(Mov.Imm(R0, 0), Return());
}

/** r7 = the tcp_sock of the struct sock in r6, or exit (not a full TCP socket). */
function emitTcp(b: ProgramBuilder): void {
  b.emit(Mov.Reg(R1, R6), Call(Fn.skcToTcpSock), JEq.Imm(R0, 0, "out"), Mov.Reg(R7, R0));
}

/** The socket's address as a map key at KEY (from r6); r2 = its address on the stack, r1 = the probing map. */
function probingKey(m: WatchMaps): Instruction[] {
  return [StoreMem(R10, KEY, R6, "DW"), ...LoadMapFd(R1, m.probing), Mov.Reg(R2, R10), Add.Imm(R2, KEY)];
}

/**
 * `dst` = when the keepalive timer of the socket in r6 (struct sock) / r7 (tcp_sock) is due, as timer_start's
 * bucket_expiry says it: its expiry rounded up to the granularity of its wheel level (calc_index:
 * ((expires >> 3 * level) + 1) << 3 * level), the level from the bucket index its flags keep (TIMER_ARRAYSHIFT 22,
 * LVL_SIZE 64 buckets a level: kernel/time/timer.c). Uses `tmp`.
 */
function timerDue(o: WatchOffsets, dst: Reg, tmp: Reg): Instruction[] {
  return [
    LoadMem(tmp, R6, o.skTimerFlags, "W"),
    Rsh32.Imm(tmp, 22 + 6),
    Mul32.Imm(tmp, 3),
    And32.Imm(tmp, 63),
    LoadMem(dst, R7, o.tcpSkTimerExpires, "DW"),
    Rsh.Reg(dst, tmp),
    Add.Imm(dst, 1),
    Lsh.Reg(dst, tmp),
  ];
}

/** BTF ids for bpf_rdonly_cast: the kfunc itself and the two types it casts to. */
export interface CastIds {
  rdonlyCast: number;
  sock: number;
  tcpSock: number;
}

/**
 * timer_start(timer, expires) or timer_cancel(timer) of a keepalive timer outside its own expiry, on an
 * ESTABLISHED or CLOSE-WAIT socket (the others' sk_timer is not keepalive's: FIN-WAIT-2's linger, a child's at
 * its SYN-RECV birth, which inherits its listener's settings), to a record: on, retuned or off (see the top).
 */
function timerChange(
  o: WatchOffsets,
  m: WatchMaps,
  keepaliveTimer: bigint,
  ids: CastIds,
  start: boolean,
): Instruction[] {
  const b = new ProgramBuilder();
  if (start) b.emit(LoadMem(R8, R1, 8, "DW")); // the new expiry (jiffies)
  b.emit(
    LoadMem(R6, R1, 0, "DW"),
    LoadMem(R2, R6, o.timerFunction, "DW"),
    ...LoadImm64(R3, keepaliveTimer),
    JNE.Reg(R2, R3, "out"),
    Add.Imm(R6, -o.skTimer), // its socket's address (container_of)
  );
  flagEntry(b, m, IN_TIMER, "out");
  b.emit(
    LoadMem(R2, R0, 0, "DW"),
    JEq.Reg(R2, R6, "out"), // the timer re-arming itself while it runs (tcp_keepalive_timer's own reset)
    Mov.Reg(R1, R6),
    Mov.Imm(R2, ids.tcpSock),
    KfuncCall(ids.rdonlyCast),
    Mov.Reg(R7, R0),
    Mov.Reg(R1, R6),
    Mov.Imm(R2, ids.sock),
    KfuncCall(ids.rdonlyCast),
    Mov.Reg(R6, R0),
    LoadMem(R2, R6, o.skcState, "B"),
    JEq32.Imm(R2, TCP_STATES.ESTABLISHED, "state"),
    JNE32.Imm(R2, TCP_STATES.CLOSE_WAIT, "out"),
  );
  b.label("state");
  if (!start) {
    // Keepalive on: being turned off (the flag is cleared after the timer), or a re-arm's first half. Not the
    // timer expiring: expire_timers detaches it (detach_timer → debug_deactivate traces timer_cancel) before
    // timer_expire_entry, once jiffies has reached its bucket's time; a program's change comes before that (one
    // that comes while an overdue timer waits for its softirq is missed too).
    b.emit(...keepOpen(o, R2, R6), JEq32.Imm(R2, 0, "out"), Call(Fn.jiffies64), Mov.Reg(R8, R0));
    b.emit(...timerDue(o, R4, R3), JGE.Reg(R8, R4, "out"));
    emitRecord(b, o, KIND.off, "output");
    emitOutput(b, m);
    return b.build();
  }
  emitRecord(b, o, KIND.on, "kind");
  b.label("kind");
  flagEntry(b, m, CONNECTED, "flag");
  b.emit(LoadMem(R2, R0, 0, "DW"), JNE.Reg(R2, R6, "flag"));
  flagEntry(b, m, CONNECTED_AT, "flag");
  b.emit(
    LoadMem(R3, R0, 0, "DW"),
    LoadMem(R2, R10, REC + 8, "DW"), // the record's time
    Sub.Reg(R2, R3),
    JGT.Imm(R2, ESTABLISHING_NS, "flag"),
    StoreImm(R10, REC + 93, 1, "B"),
    Ja("expiry"),
  );
  b.label("flag").emit(...keepOpen(o, R2, R6), JEq32.Imm(R2, 0, "expiry"), StoreImm(R10, REC, KIND.retuned, "B"));
  b.label("expiry").emit(Call(Fn.jiffies64), Sub.Reg(R8, R0), StoreMem(R10, REC + 56, R8, "W"));
  emitOutput(b, m);
  return b.build();
}

/**
 * `keepaliveTimer`: the address of tcp_keepalive_timer (/proc/kallsyms); `ids`: for the timer programs, which
 * are left out without them (a kernel before bpf_rdonly_cast).
 */
export function watchPrograms(
  o: WatchOffsets,
  m: WatchMaps,
  keepaliveTimer: bigint,
  ids: CastIds | null,
): WatchProgram[] {
  const out: WatchProgram[] = [
    { name: "tcpka_w_tm_in", target: "timer_expire_entry", insns: timerSlot(o, m, keepaliveTimer) },
    { name: "tcpka_w_tm_out", target: "timer_expire_exit", insns: timerSlot(o, m, null) },
  ];
  if (ids) {
    out.push(
      { name: "tcpka_w_armed", target: "timer_start", insns: timerChange(o, m, keepaliveTimer, ids, true) },
      { name: "tcpka_w_disarm", target: "timer_cancel", insns: timerChange(o, m, keepaliveTimer, ids, false) },
    );
  }

  // A packet queued by the socket whose keepalive timer runs on this CPU: the probe (net_dev_queue(skb)). And
  // the end of a connection's start: its own first packet since (the handshake's last ACK) clears CONNECTED.
  {
    const b = new ProgramBuilder();
    b.emit(LoadMem(R7, R1, 0, "DW"));
    if (ids) {
      flagEntry(b, m, CONNECTED, "timer");
      b.emit(
        LoadMem(R2, R0, 0, "DW"),
        JEq.Imm(R2, 0, "timer"),
        LoadMem(R3, R7, o.skbSk, "DW"),
        JNE.Reg(R3, R2, "timer"),
        StoreImm(R0, 0, 0, "DW"),
      );
      b.label("timer");
    }
    flagEntry(b, m, IN_TIMER, "out");
    b.emit(
      LoadMem(R2, R0, 0, "DW"),
      JEq.Imm(R2, 0, "out"),
      LoadMem(R6, R7, o.skbSk, "DW"),
      JEq.Imm(R6, 0, "out"), // the verifier wants skb->sk (an RCU pointer) known not NULL
      JNE.Reg(R6, R2, "out"),
      // Not the reset that tcp_keepalive_timer sends when it gives up (tcp_send_active_reset, before
      // tcp_write_err): the TCP header's flags byte (offset 13) of a probe has no RST (0x04).
      LoadMem(R3, R7, o.skbHead, "DW"),
      LoadMem(R2, R7, o.skbTransportHeader, "H"),
      Add.Reg(R3, R2),
      Add.Imm(R3, 13),
      Mov.Reg(R1, R10),
      Add.Imm(R1, VALUE),
      Mov.Imm(R2, 1),
      StoreImm(R10, VALUE, 0, "DW"),
      Call(Fn.probeReadKernel),
      LoadMem(R2, R10, VALUE, "B"),
      And32.Imm(R2, 0x04),
      JNE32.Imm(R2, 0, "out"),
      Mov.Reg(R7, R6), // its sk_socket is struct sock's own: emitInode reads it from here
    );
    emitRecord(b, o, KIND.probe, "remember", true);
    b.label("remember").emit(
      LoadMem(R4, R10, REC + 8, "DW"),
      StoreMem(R10, VALUE, R4, "DW"),
      ...probingKey(m),
      Mov.Reg(R3, R10),
      Add.Imm(R3, VALUE),
      Mov.Imm(R4, 0), // BPF_ANY
      Call(Fn.mapUpdateElem),
    );
    emitOutput(b, m);
    out.push({ name: "tcpka_w_probe", target: "net_dev_queue", insns: b.build() });
  }

  // A segment on a socket with a probe out: its answer (tcp_probe(struct sock *sk, struct sk_buff *skb)).
  {
    const b = new ProgramBuilder();
    b.emit(LoadMem(R6, R1, 0, "DW"), ...probingKey(m), Call(Fn.mapLookupElem), JEq.Imm(R0, 0, "out"));
    b.emit(LoadMem(R8, R0, 0, "DW"), ...probingKey(m), Call(Fn.mapDeleteElem));
    emitTcp(b);
    emitRecord(b, o, KIND.answered, "rtt");
    b.label("rtt").emit(
      LoadMem(R3, R10, REC + 8, "DW"),
      Sub.Reg(R3, R8),
      Div.Imm(R3, 1000),
      StoreMem(R10, REC + 56, R3, "W"),
    );
    emitOutput(b, m);
    out.push({ name: "tcpka_w_answer", target: "tcp_probe", insns: b.build() });
  }

  // A socket closed with an error: inet_sock_set_state(const struct sock *sk, int oldstate, int newstate).
  {
    const b = new ProgramBuilder();
    b.emit(
      LoadMem(R6, R1, 0, "DW"),
      LoadMem(R2, R1, 16, "W"),
      JNE32.Imm(R2, TCP_STATES.ESTABLISHED, "close"),
      LoadMem(R2, R1, 8, "W"),
      JEq32.Imm(R2, TCP_STATES.SYN_SENT, "established"),
      JNE32.Imm(R2, TCP_STATES.SYN_RECV, "out"),
    );
    b.label("established");
    flagEntry(b, m, CONNECTED, "out");
    b.emit(StoreMem(R0, 0, R6, "DW"));
    flagEntry(b, m, CONNECTED_AT, "out");
    b.emit(Mov.Reg(R7, R0), Call(Fn.ktimeGetNs), StoreMem(R7, 0, R0, "DW"), Ja("out"));
    b.label("close").emit(
      JNE32.Imm(R2, TCP_STATES.CLOSE, "out"),
      ...probingKey(m),
      Call(Fn.mapDeleteElem),
      LoadMem(R8, R6, o.skErr, "W"),
      JEq32.Imm(R8, 0, "out"),
    );
    flagEntry(b, m, IN_TIMER, "out");
    b.emit(LoadMem(R1, R0, 0, "DW"), JNE.Reg(R1, R6, "elsewhere"));
    emitTcp(b);
    emitRecord(b, o, KIND.killed, "error");
    b.emit(Ja("error"));
    b.label("elsewhere").emit(JNE32.Imm(R8, ETIMEDOUT, "out"));
    emitTcp(b);
    emitRecord(b, o, KIND.timedOut, "error2");
    b.label("error")
      .label("error2")
      .emit(StoreMem(R10, REC + 56, R8, "W"));
    emitOutput(b, m);
    out.push({ name: "tcpka_w_close", target: "inet_sock_set_state", insns: b.build() });
  }
  return out;
}

/** The members the setsockopt programs walk from the calling task to the socket of an fd. */
export interface SetsockoptOffsets {
  taskFiles: number;
  filesFdt: number;
  fdtMaxFds: number;
  fdtFd: number;
  filePrivate: number;
  inodeSb: number;
  sbMagic: number;
  socketSk: number;
  skType: number;
  skProtocol: number;
}

export function setsockoptOffsets(btf: BtfFacts): SetsockoptOffsets {
  return {
    taskFiles: btf.memberOffset("task_struct", "files"),
    filesFdt: btf.memberOffset("files_struct", "fdt"),
    fdtMaxFds: btf.memberOffset("fdtable", "max_fds"),
    fdtFd: btf.memberOffset("fdtable", "fd"),
    filePrivate: btf.memberOffset("file", "private_data"),
    inodeSb: btf.memberOffset("inode", "i_sb"),
    sbMagic: btf.memberOffset("super_block", "s_magic"),
    socketSk: btf.memberOffset("socket", "sk"),
    skType: btf.memberOffset("sock", "sk_type"),
    skProtocol: btf.memberOffset("sock", "sk_protocol"),
  };
}

/** BTF ids of the structs bpf_rdonly_cast makes of the addresses on the way from the task to its socket. */
export interface SetsockoptIds extends CastIds {
  task: number;
  file: number;
  socket: number;
}

/** Where the syscall records (the programs' context) hold the arguments: from the events' format in tracefs. */
export interface SetsockoptFields {
  /** sys_enter_setsockopt: fd, level, optname (unsigned long each; the low 32 bits are read) */
  fd: number;
  level: number;
  optname: number;
  /** sys_exit_setsockopt: ret (long) */
  ret: number;
}

/** One program of a perf trace event: its name, the event (syscalls:NAME) and its instructions. */
export interface SyscallProgram {
  name: string;
  event: "sys_enter_setsockopt" | "sys_exit_setsockopt";
  insns: Instruction[];
}

/** r0 = bpf_rdonly_cast(r1, `type`): the address in r1 as a `type` whose loads cannot fault. */
function cast(ids: SetsockoptIds, type: number): Instruction[] {
  return [Mov.Imm(R2, type), KfuncCall(ids.rdonlyCast)];
}

/**
 * The two programs on the setsockopt syscall's trace events (see the top): the enter stashes fd, optname and
 * level of the keepalive options in `stash` (a hash map keyed by the thread's pid_tgid: value u32 fd, u8 optname,
 * u8 level); every other option leaves at the first compares. The exit takes the thread's stash out and, when the
 * call returned 0, finds the socket of the fd and writes a `set` record of it.
 */
export function setsockoptPrograms(
  o: WatchOffsets,
  so: SetsockoptOffsets,
  m: WatchMaps & { stash: number },
  ids: SetsockoptIds,
  f: SetsockoptFields,
): SyscallProgram[] {
  const enter = new ProgramBuilder();
  enter.emit(
    LoadMem(R2, R1, f.level, "W"),
    LoadMem(R3, R1, f.optname, "W"),
    LoadMem(R6, R1, f.fd, "W"),
    JEq32.Imm(R2, SOL_SOCKET, "sol_socket"),
    JNE32.Imm(R2, SOL_TCP, "out"),
    JLT32.Imm(R3, TCP_KEEPIDLE, "out"),
    JGT32.Imm(R3, TCP_KEEPCNT, "out"), // TCP_KEEPIDLE 4, TCP_KEEPINTVL 5, TCP_KEEPCNT 6
    Ja("stash"),
  );
  enter.label("sol_socket").emit(JNE32.Imm(R3, SO_KEEPALIVE, "out"));
  enter.label("stash").emit(
    StoreImm(R10, VALUE, 0, "DW"),
    StoreMem(R10, VALUE, R6, "W"),
    StoreMem(R10, VALUE + 4, R3, "B"),
    StoreMem(R10, VALUE + 5, R2, "B"),
    Call(Fn.getCurrentPidTgid),
    StoreMem(R10, KEY, R0, "DW"),
    ...LoadMapFd(R1, m.stash),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Mov.Reg(R3, R10),
    Add.Imm(R3, VALUE),
    Mov.Imm(R4, 0), // BPF_ANY: a stash the thread left (none should be) is replaced
    Call(Fn.mapUpdateElem),
  );
  enter.label("out").emit(Mov.Imm(R0, 0), Return());

  const exit = new ProgramBuilder();
  exit.emit(
    LoadMem(R6, R1, f.ret, "DW"),
    Call(Fn.getCurrentPidTgid),
    StoreMem(R10, KEY, R0, "DW"),
    ...LoadMapFd(R1, m.stash),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, "out"),
    LoadMem(R9, R0, 0, "DW"), // the stash: fd, optname, level
    ...LoadMapFd(R1, m.stash),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Call(Fn.mapDeleteElem),
    JNE.Imm(R6, 0, "out"), // failed: nothing changed
    // The file of the fd as __sys_setsockopt found it (fdget: current->files->fdt->fd[fd], bounded by max_fds).
    Call(Fn.getCurrentTask),
    Mov.Reg(R1, R0),
    ...cast(ids, ids.task),
    LoadMem(R2, R0, so.taskFiles, "DW"),
    JEq.Imm(R2, 0, "out"),
    LoadMem(R2, R2, so.filesFdt, "DW"),
    JEq.Imm(R2, 0, "out"),
    LoadMem(R3, R2, so.fdtMaxFds, "W"),
    Mov32.Reg(R4, R9), // the fd: the stash's low 32 bits
    JGE.Reg(R4, R3, "out"),
    LoadMem(R3, R2, so.fdtFd, "DW"),
    JEq.Imm(R3, 0, "out"),
    Lsh.Imm(R4, 3),
    Add.Reg(R3, R4),
    StoreImm(R10, VALUE, 0, "DW"),
    Mov.Reg(R1, R10),
    Add.Imm(R1, VALUE),
    Mov.Imm(R2, 8),
    Call(Fn.probeReadKernel),
    LoadMem(R1, R10, VALUE, "DW"),
    JEq.Imm(R1, 0, "out"),
    ...cast(ids, ids.file),
    Mov.Reg(R8, R0),
    // A socket's file, as sock_from_file knows it (f_op == &socket_file_ops, whose address this kernel's
    // kallsyms does not list): its inode is sockfs's, and its private_data a struct socket that points back to it.
    LoadMem(R2, R8, o.fileInode, "DW"),
    JEq.Imm(R2, 0, "out"),
    LoadMem(R2, R2, so.inodeSb, "DW"),
    JEq.Imm(R2, 0, "out"),
    LoadMem(R2, R2, so.sbMagic, "DW"),
    JNE.Imm(R2, SOCKFS_MAGIC, "out"),
    LoadMem(R1, R8, so.filePrivate, "DW"),
    JEq.Imm(R1, 0, "out"),
    ...cast(ids, ids.socket),
    LoadMem(R2, R0, o.socketFile, "DW"),
    JNE.Reg(R2, R8, "out"),
    LoadMem(R6, R0, so.socketSk, "DW"),
    JEq.Imm(R6, 0, "out"),
    Mov.Reg(R1, R6),
    ...cast(ids, ids.tcpSock),
    Mov.Reg(R7, R0),
    Mov.Reg(R1, R6),
    ...cast(ids, ids.sock),
    Mov.Reg(R6, R0),
    // A TCP socket (tcp_setsockopt's), established or in CLOSE-WAIT: the states whose sk_timer is keepalive's.
    LoadMem(R2, R6, so.skProtocol, "H"),
    JNE32.Imm(R2, IPPROTO_TCP, "out"),
    LoadMem(R2, R6, so.skType, "H"),
    JNE32.Imm(R2, SOCK_STREAM, "out"),
    LoadMem(R2, R6, o.skcFamily, "H"),
    JEq32.Imm(R2, AF_INET, "family"),
    JNE32.Imm(R2, AF_INET6, "out"),
  );
  exit
    .label("family")
    .emit(
      LoadMem(R2, R6, o.skcState, "B"),
      JEq32.Imm(R2, TCP_STATES.ESTABLISHED, "state"),
      JNE32.Imm(R2, TCP_STATES.CLOSE_WAIT, "out"),
    );
  exit.label("state");
  emitRecord(exit, o, KIND.set, "option");
  exit.label("option").emit(
    Mov.Reg(R2, R9),
    Rsh.Imm(R2, 32),
    StoreMem(R10, REC + 120, R2, "B"),
    Rsh.Imm(R2, 8),
    StoreMem(R10, REC + 121, R2, "B"),
    ...keepOpen(o, R2, R6),
    StoreMem(R10, REC + 122, R2, "B"),
    JEq32.Imm(R2, 0, "output"),
    // When the timer is due, as timer_start's bucket_expiry says it.
    Call(Fn.jiffies64),
    Mov.Reg(R8, R0),
    ...timerDue(o, R4, R3),
    Sub.Reg(R4, R8),
    StoreMem(R10, REC + 56, R4, "W"),
  );
  emitOutput(exit, m);
  // The exit is attached first and detached last: no stash is made that its exit does not take out.
  return [
    { name: "tcpka_w_so_exit", event: "sys_exit_setsockopt", insns: exit.build() },
    { name: "tcpka_w_so_enter", event: "sys_enter_setsockopt", insns: enter.build() },
  ];
}
