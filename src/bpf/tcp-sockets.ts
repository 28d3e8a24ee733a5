/**
 * The TCP iterator program behind the kernel-pass inventory (src/inspect/kernel-sockets.ts). The kernel calls it
 * once per TCP socket of one network namespace, listeners first, then the established table (bpf_iter_tcp,
 * bpf_iter_tcp_seq_show in net/ipv4/tcp_ipv4.c, Linux 5.9), with a context of meta, sk_common and uid
 * (struct bpf_iter__tcp; uid is sock_i_uid of the socket, or of the listener for a request socket). For each
 * socket whose state is in the mask it writes one record with bpf_seq_write, read from the socket itself:
 *
 *    0 u16 family        2 u8 state         3 u8 timer (sock_diag's code)  4 u8 timer count
 *    5 u8 flags: 1 a full socket (the options below are its own), 2 SO_KEEPALIVE (SOCK_KEEPOPEN in sk_flags)
 *    6 u8 keepalive_probes (0: the namespace's)   7 u8 the namespace's tcp_keepalive_probes
 *    8 u16 local port (host order)   10 u16 peer port (network order)   12 u32 uid
 *   16 u64 inode (sk_socket->file->f_inode->i_ino; 0 when no file holds it)
 *   24 16 bytes local address   40 16 bytes peer address (IPv4: the first 4 bytes, network order)
 *   56 u32 keepalive_time   60 u32 keepalive_intvl (jiffies; 0: the namespace's)
 *   64 u32 the namespace's tcp_keepalive_time   68 u32 its tcp_keepalive_intvl (jiffies)
 *   72 u32 icsk_user_timeout (ms)   76 u32 the network namespace's inode number (net->ns.inum)
 *   80 u64 the socket's cgroup v2 id (sk_cgrp_data's cgroup->kn->id; 0 when unknown)
 *   88 s64 the timer's expiry minus jiffies now (jiffies)
 *   96 u32 receive queue (rcv_nxt - copied_seq; a listener's accept backlog)
 *  100 u32 send queue (write_seq - snd_una; a listener's maximum backlog)
 *  104 u32 the first owner's tgid, 108 u32 its fd: from the owners' map (below), 0 and 0 when it has none there
 *
 * The owners' map (`owners`, optional; OwnersMap): the first process that the owners' task_file walk
 * (socket-fds.ts) met holding each socket, filled by that walk, which ran to its end before this one began. ls
 * then builds no owner table of its own for the sockets a single process holds.
 *
 * The timer is chosen as inet_sk_diag_fill (net/ipv4/inet_diag.c) chooses it, so the two paths agree: 1 for a
 * pending retransmission (ICSK_TIME_RETRANS, REO_TIMEOUT, LOSS_PROBE) with icsk_retransmits, 4 for a zero-window
 * probe (ICSK_TIME_PROBE0) with icsk_probes_out, else 2 when sk_timer (the keepalive timer) is pending
 * (timer_pending: entry.pprev set) with icsk_probes_out, else 0. A TIME-WAIT socket has timer 3 (tw_timer,
 * inet_twsk_diag_fill) and the state of its substate (TIME-WAIT, or FIN-WAIT-2 for an orphan that waits for
 * its peer's FIN: tcp_time_wait), a request socket timer 1 with num_retrans (rsk_timer, inet_req_diag_fill).
 *
 * Every load goes through the pointers the verifier knows by BTF (tracing programs read them as PTR_TO_BTF_ID,
 * faults read as zero), so the struct offsets come from the running kernel's BTF (src/sys/btf.ts).
 */

import { TCP_STATES } from "../kernel/states.js";
import type { BtfFacts } from "../sys/btf.js";
import {
  Add,
  And,
  And32,
  Call,
  Fn,
  type Instruction,
  Ja,
  JEq,
  JEq32,
  JNE,
  JNE32,
  KfuncCall,
  LoadMapFd,
  LoadMem,
  Lsh,
  Mov,
  Mov32,
  ProgramBuilder,
  R0,
  R1,
  R2,
  R3,
  R6,
  R7,
  R8,
  R9,
  R10,
  type Reg,
  Return,
  Rsh32,
  StoreImm,
  StoreMem,
  Sub,
  Sub32,
} from "./asm.js";
import { type EndpointOffsets, emitAddresses, endpointOffsets } from "./endpoints.js";

/**
 * Offsets, in bytes, from the running kernel's BTF; `tcp` ones from the start of struct tcp_sock. The endpoint
 * ones (struct sock_common) are the identity every kind of TCP socket has.
 */
export interface TcpSocketOffsets extends EndpointOffsets {
  metaSeq: number;
  skcNet: number;
  /** struct net: ns.inum, ipv4.sysctl_tcp_keepalive_{time,intvl,probes} */
  netInum: number;
  netKeepaliveTime: number;
  netKeepaliveIntvl: number;
  netKeepaliveProbes: number;
  /** struct tcp_sock */
  tcpFlags: number;
  /** the bit of SOCK_KEEPOPEN in sk_flags (enum sock_flags) */
  keepOpenBit: number;
  tcpKeepaliveTime: number;
  tcpKeepaliveIntvl: number;
  tcpKeepaliveProbes: number;
  tcpUserTimeout: number;
  tcpPending: number;
  tcpRetransmits: number;
  tcpProbesOut: number;
  /** icsk_timeout, or icsk_retransmit_timer.expires where the kernel keeps it there (6.15 and later) */
  tcpTimeout: number;
  tcpSkTimerPprev: number;
  tcpSkTimerExpires: number;
  tcpSocket: number;
  tcpCgroup: number | undefined;
  tcpAckBacklog: number;
  tcpMaxAckBacklog: number;
  tcpRcvNxt: number;
  tcpCopiedSeq: number;
  tcpWriteSeq: number;
  tcpSndUna: number;
  /** struct socket: file; struct file: f_inode; struct inode: i_ino */
  socketFile: number;
  fileInode: number;
  inodeIno: number;
  /** struct cgroup: kn; struct kernfs_node: id */
  cgroupKn: number;
  kernfsId: number;
  /** struct tcp_timewait_sock: tw_sk.tw_timer.expires, tw_sk.tw_substate */
  twExpires: number;
  twSubstate: number;
  /** struct tcp_request_sock: req.req.rsk_timer.expires, req.req.num_retrans */
  reqExpires: number;
  reqRetrans: number;
}

export const TCP_RECORD_SIZE = 112;
const REC = -TCP_RECORD_SIZE; // the record on the stack, from r10
/** the owners' map's key (a u32), below the record */
const OWNER_KEY = REC - 8;

/**
 * The owners' map: a BPF array of `mask + 1` slots (a power of two), each 16 bytes: u64 inode, u32 tgid, u32 fd.
 * A socket's slot is its inode's low bits; the owners' walk puts into an empty slot the first process it meets
 * holding the socket, and the TCP walk takes the owner from the slot only where the slot holds that inode. A
 * socket whose slot another one took, and every further owner, still comes to user space as a record
 * (socket-fds.ts), so a slot taken twice costs a record, never an answer: no probing, nothing another user's
 * sockets can lengthen. An array, not a hash: a lookup is the verifier's inlined index (array_map_gen_lookup in
 * kernel/bpf/arraymap.c) and a store is the program's own, where a hash update (htab_map_update_elem) took the
 * bucket's lock and an element off the free list: at 100,000 sockets the owners' walk 50-60 ms instead of 58-80,
 * the TCP walk's system time 118-152 ms instead of 140-194, `tcpka ls --json` 0.90x (21 pairs).
 */
export interface OwnersMap {
  fd: number;
  mask: number;
}

/**
 * Find the slot of the inode in r3 (which this clobbers): r0 then points at it, or the program goes to `missing`
 * (the verifier wants the check; an index under max_entries always has a slot). `key` is a free u32 on the stack.
 * Clobbers r1-r5.
 */
export function emitOwnerSlot(owners: OwnersMap, key: number, missing: string): Instruction[] {
  return [
    And.Imm(R3, owners.mask),
    StoreMem(R10, key, R3, "W"),
    ...LoadMapFd(R1, owners.fd),
    Mov.Reg(R2, R10),
    Add.Imm(R2, key),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, missing),
  ];
}

// include/net/inet_connection_sock.h: ICSK_TIME_*
const ICSK_TIME_RETRANS = 1;
const ICSK_TIME_PROBE0 = 3;
const ICSK_TIME_REO_TIMEOUT = 6;
const ICSK_TIME_LOSS_PROBE = 5;

/** The offsets the program needs, from the running kernel's BTF (`btf` answers from its cache where it can). */
export function tcpSocketOffsets(btf: BtfFacts): TcpSocketOffsets {
  const sock = (m: string) => btf.memberOffset("tcp_sock", `inet_conn.icsk_inet.sk.${m}`);
  const icsk = (m: string) => btf.memberOffset("tcp_sock", `inet_conn.${m}`);
  // sk_flags moved into sock_common (skc_flags) in Linux 6.10; before, it is struct sock's own.
  const flags = btf.offsetOf("sock", "sk_flags") ?? btf.memberOffset("sock", "__sk_common.skc_flags");
  return {
    metaSeq: btf.memberOffset("bpf_iter_meta", "seq"),
    ...endpointOffsets(btf),
    skcNet: btf.memberOffset("sock_common", "skc_net"),
    netInum: btf.memberOffset("net", "ns.inum"),
    netKeepaliveTime: btf.memberOffset("net", "ipv4.sysctl_tcp_keepalive_time"),
    netKeepaliveIntvl: btf.memberOffset("net", "ipv4.sysctl_tcp_keepalive_intvl"),
    netKeepaliveProbes: btf.memberOffset("net", "ipv4.sysctl_tcp_keepalive_probes"),
    tcpFlags: sock("__sk_common") + flags,
    keepOpenBit: btf.enumValue("sock_flags", "SOCK_KEEPOPEN"),
    tcpKeepaliveTime: btf.memberOffset("tcp_sock", "keepalive_time"),
    tcpKeepaliveIntvl: btf.memberOffset("tcp_sock", "keepalive_intvl"),
    tcpKeepaliveProbes: btf.memberOffset("tcp_sock", "keepalive_probes"),
    tcpUserTimeout: icsk("icsk_user_timeout"),
    tcpPending: icsk("icsk_pending"),
    tcpRetransmits: icsk("icsk_retransmits"),
    tcpProbesOut: icsk("icsk_probes_out"),
    // Linux 6.15 dropped icsk_timeout for the retransmit timer's own expiry (tcp_timeout_expires()).
    tcpTimeout: btf.offsetOf("tcp_sock", "inet_conn.icsk_timeout") ?? icsk("icsk_retransmit_timer.expires"),
    tcpSkTimerPprev: sock("sk_timer.entry.pprev"),
    tcpSkTimerExpires: sock("sk_timer.expires"),
    tcpSocket: sock("sk_socket"),
    // CONFIG_SOCK_CGROUP_DATA: without it a socket names no cgroup.
    tcpCgroup: btf.offsetOf("tcp_sock", "inet_conn.icsk_inet.sk.sk_cgrp_data.cgroup"),
    tcpAckBacklog: sock("sk_ack_backlog"),
    tcpMaxAckBacklog: sock("sk_max_ack_backlog"),
    tcpRcvNxt: btf.memberOffset("tcp_sock", "rcv_nxt"),
    tcpCopiedSeq: btf.memberOffset("tcp_sock", "copied_seq"),
    tcpWriteSeq: btf.memberOffset("tcp_sock", "write_seq"),
    tcpSndUna: btf.memberOffset("tcp_sock", "snd_una"),
    socketFile: btf.memberOffset("socket", "file"),
    fileInode: btf.memberOffset("file", "f_inode"),
    inodeIno: btf.memberOffset("inode", "i_ino"),
    cgroupKn: btf.memberOffset("cgroup", "kn"),
    kernfsId: btf.memberOffset("kernfs_node", "id"),
    twExpires: btf.memberOffset("tcp_timewait_sock", "tw_sk.tw_timer.expires"),
    twSubstate: btf.memberOffset("tcp_timewait_sock", "tw_sk.tw_substate"),
    reqExpires: btf.memberOffset("tcp_request_sock", "req.req.rsk_timer.expires"),
    reqRetrans: btf.memberOffset("tcp_request_sock", "req.req.num_retrans"),
  };
}

/** `dst` = 1 when the full socket in `tcp` has SO_KEEPALIVE on (SOCK_KEEPOPEN, from the byte of sk_flags that holds it). */
export function keepOpen(o: Pick<TcpSocketOffsets, "tcpFlags" | "keepOpenBit">, dst: Reg, tcp: Reg): Instruction[] {
  return [
    LoadMem(dst, tcp, o.tcpFlags + (o.keepOpenBit >> 3), "B"),
    Rsh32.Imm(dst, o.keepOpenBit & 7),
    And32.Imm(dst, 1),
  ];
}

/**
 * The inode of the full socket in `tcp` (sk_socket->file->f_inode->i_ino, the number /proc/PID/fd shows as
 * socket:[N]) to the stack at r10 + `slot` (u64); to `none` when no file holds the socket. Uses r2 and r3.
 */
export function emitInode(
  b: ProgramBuilder,
  o: Pick<TcpSocketOffsets, "tcpSocket" | "socketFile" | "fileInode" | "inodeIno">,
  tcp: Reg,
  slot: number,
  none: string,
): void {
  b.emit(
    LoadMem(R2, tcp, o.tcpSocket, "DW"),
    JEq.Imm(R2, 0, none),
    LoadMem(R2, R2, o.socketFile, "DW"),
    JEq.Imm(R2, 0, none),
    LoadMem(R2, R2, o.fileInode, "DW"),
    JEq.Imm(R2, 0, none),
    LoadMem(R3, R2, o.inodeIno, "DW"),
    StoreMem(R10, slot, R3, "DW"),
  );
}

/**
 * The id of the cgroup v2 the socket in `sock` (a tcp_sock or its struct sock: sk is first) is charged to
 * (sk_cgrp_data.cgroup->kn->id, what cgroup_id() gives) to the stack at r10 + `slot` (u64); to `none` when the
 * socket names none. Nothing where the kernel keeps no cgroup in sockets (CONFIG_SOCK_CGROUP_DATA unset). Uses
 * r2 and r3.
 */
export function emitCgroupId(
  b: ProgramBuilder,
  o: Pick<TcpSocketOffsets, "tcpCgroup" | "cgroupKn" | "kernfsId">,
  sock: Reg,
  slot: number,
  none: string,
): void {
  if (o.tcpCgroup === undefined) return;
  b.emit(
    LoadMem(R2, sock, o.tcpCgroup, "DW"),
    JEq.Imm(R2, 0, none),
    LoadMem(R2, R2, o.cgroupKn, "DW"),
    JEq.Imm(R2, 0, none),
    LoadMem(R3, R2, o.kernfsId, "DW"),
    StoreMem(R10, slot, R3, "DW"),
  );
}

/**
 * `states`: a mask of 1 << TCP state; the program writes only those sockets. `owners`: the owners' map (see
 * above), whose first owner of each socket goes into its record.
 */
export function tcpSocketsProgram(o: TcpSocketOffsets, states: number, owners?: OwnersMap): Instruction[] {
  const b = new ProgramBuilder();
  b.emit(
    LoadMem(R6, R1, 0, "DW"), // meta
    LoadMem(R7, R1, 8, "DW"), // sk_common, NULL once the walk is over
    JEq.Imm(R7, 0, "out"),
    LoadMem(R8, R1, 16, "W"), // uid
    LoadMem(R2, R7, o.skcState, "B"),
    Mov.Imm(R3, 1),
    Lsh.Reg(R3, R2),
    And32.Imm(R3, states),
    JEq32.Imm(R3, 0, "out"),
  );
  emitTcpRecord(b, o, "", undefined, owners);
  b.label("out").emit(Mov.Imm(R0, 0), Return());
  return b.build();
}

/**
 * bpf_rdonly_cast (a kfunc, Linux 6.2) and struct tcp_sock's BTF id, for the task_file walks, whose socket
 * (socket->sk of bpf_sock_from_file's struct socket) some verifiers mark untrusted: 6.18.44 here refuses it to
 * bpf_skc_to_tcp_sock and bpf_sk_storage_get ("R2 type=untrusted_ptr_ expected=ptr_, trusted_ptr_, rcu_ptr_"),
 * where earlier kernels took it as a plain pointer. A read-only cast may be read through on any of them (the loads
 * become fault-safe probes). Undefined where the kernel has no bpf_rdonly_cast: the helper is called instead.
 */
export interface TcpSockCast {
  rdonlyCast: number;
  tcpSock: number;
}

export function tcpSockCast(btf: BtfFacts): TcpSockCast | undefined {
  try {
    return { rdonlyCast: btf.typeId("FUNC", "bpf_rdonly_cast"), tcpSock: btf.typeId("STRUCT", "tcp_sock") };
  } catch {
    return undefined;
  }
}

/**
 * r0 = the tcp_sock of `sock`, a full TCP socket (a file's, or the TCP walk's LISTEN to CLOSING one), for reading;
 * on to `none` where there is none. With `cast`, bpf_rdonly_cast (the caller has checked sk_type and sk_protocol:
 * it is one); else bpf_skc_to_tcp_sock. Clobbers r1-r5.
 */
export function emitTcpSockOf(b: ProgramBuilder, sock: Reg, cast: TcpSockCast | undefined, none: string): void {
  if (cast) b.emit(Mov.Reg(R1, sock), Mov.Imm(R2, cast.tcpSock), KfuncCall(cast.rdonlyCast));
  else b.emit(Mov.Reg(R1, sock), Call(Fn.skcToTcpSock));
  b.emit(JEq.Imm(R0, 0, none));
}

/**
 * The record of the socket in r7 (a sock_common: any kind of TCP socket) written with bpf_seq_write: r6 is the
 * iterator's meta, r8 the uid to record. Labels are prefixed with `p` (so that a program may hold it beside its
 * own), and it ends with the write: the caller's code follows. Uses every register but r6 and r7; the record
 * takes the TCP_RECORD_SIZE bytes below r10. The task_file walk writes held sockets with it too (socket-fds.ts),
 * with `cast` (a full socket of a file: see TcpSockCast).
 */
export function emitTcpRecord(
  b: ProgramBuilder,
  o: TcpSocketOffsets,
  p: string,
  cast?: TcpSockCast,
  owners?: OwnersMap,
): void {
  const l = (name: string) => `${p}${name}`;
  for (let at = 0; at < TCP_RECORD_SIZE; at += 8) b.emit(StoreImm(R10, REC + at, 0, "DW"));
  b.emit(
    StoreMem(R10, REC + 12, R8, "W"),
    LoadMem(R2, R7, o.skcState, "B"),
    StoreMem(R10, REC + 2, R2, "B"),
    LoadMem(R3, R7, o.skcNum, "H"),
    StoreMem(R10, REC + 8, R3, "H"),
    LoadMem(R3, R7, o.skcDport, "H"),
    StoreMem(R10, REC + 10, R3, "H"),
    LoadMem(R2, R7, o.skcFamily, "H"),
    StoreMem(R10, REC, R2, "H"),
  );
  emitAddresses(b, o, R7, R2, REC + 24, REC + 40, l("net"));
  // The namespace: its number and the defaults that a socket's zero stands for (keepalive_time_when() and
  // friends in include/net/tcp.h read these per call).
  b.label(l("net")).emit(
    LoadMem(R8, R7, o.skcNet, "DW"),
    LoadMem(R3, R8, o.netInum, "W"),
    StoreMem(R10, REC + 76, R3, "W"),
    LoadMem(R3, R8, o.netKeepaliveTime, "W"),
    StoreMem(R10, REC + 64, R3, "W"),
    LoadMem(R3, R8, o.netKeepaliveIntvl, "W"),
    StoreMem(R10, REC + 68, R3, "W"),
    LoadMem(R3, R8, o.netKeepaliveProbes, "B"),
    StoreMem(R10, REC + 7, R3, "B"),
    Call(Fn.jiffies64),
    Mov.Reg(R8, R0), // jiffies now, for the timers
  );
  // A file's socket (`cast`) is a full one: no timewait or request socket, whose helpers the verifier would
  // refuse it.
  if (!cast)
    b.emit(
      LoadMem(R2, R10, REC + 2, "B"),
      JEq32.Imm(R2, TCP_STATES.TIME_WAIT, l("timewait")),
      JEq32.Imm(R2, TCP_STATES.NEW_SYN_RECV, l("request")),
    );
  emitTcpSockOf(b, R7, cast, l("write"));
  b.emit(
    Mov.Reg(R9, R0),
    // flags: a full socket, and SO_KEEPALIVE
    ...keepOpen(o, R2, R9),
    Add.Reg(R2, R2),
    Add.Imm(R2, 1),
    StoreMem(R10, REC + 5, R2, "B"),
    LoadMem(R3, R9, o.tcpKeepaliveTime, "W"),
    StoreMem(R10, REC + 56, R3, "W"),
    LoadMem(R3, R9, o.tcpKeepaliveIntvl, "W"),
    StoreMem(R10, REC + 60, R3, "W"),
    LoadMem(R3, R9, o.tcpKeepaliveProbes, "B"),
    StoreMem(R10, REC + 6, R3, "B"),
    LoadMem(R3, R9, o.tcpUserTimeout, "W"),
    StoreMem(R10, REC + 72, R3, "W"),
  );
  emitCgroupId(b, o, R9, REC + 80, l("inode"));
  b.label(l("inode"));
  emitInode(b, o, R9, REC + 16, l("queues"));
  if (owners !== undefined)
    b.emit(
      LoadMem(R3, R10, REC + 16, "DW"),
      ...emitOwnerSlot(owners, OWNER_KEY, l("queues")),
      LoadMem(R2, R0, 0, "DW"),
      LoadMem(R3, R10, REC + 16, "DW"),
      JNE.Reg(R2, R3, l("queues")), // another socket's slot: this one's owners are records
      LoadMem(R3, R0, 8, "DW"), // tgid, fd
      StoreMem(R10, REC + 104, R3, "DW"),
    );
  // Queues as tcp_diag_get_info reports them.
  b.label(l("queues")).emit(
    LoadMem(R2, R10, REC + 2, "B"),
    JNE32.Imm(R2, TCP_STATES.LISTEN, l("data")),
    LoadMem(R3, R9, o.tcpAckBacklog, "W"),
    StoreMem(R10, REC + 96, R3, "W"),
    LoadMem(R3, R9, o.tcpMaxAckBacklog, "W"),
    StoreMem(R10, REC + 100, R3, "W"),
    Ja(l("timer")),
  );
  b.label(l("data")).emit(
    LoadMem(R3, R9, o.tcpRcvNxt, "W"),
    LoadMem(R2, R9, o.tcpCopiedSeq, "W"),
    Sub32.Reg(R3, R2),
    StoreMem(R10, REC + 96, R3, "W"),
    LoadMem(R3, R9, o.tcpWriteSeq, "W"),
    LoadMem(R2, R9, o.tcpSndUna, "W"),
    Sub32.Reg(R3, R2),
    StoreMem(R10, REC + 100, R3, "W"),
  );
  b.label(l("timer")).emit(
    LoadMem(R2, R9, o.tcpPending, "B"),
    JEq32.Imm(R2, ICSK_TIME_RETRANS, l("retrans")),
    JEq32.Imm(R2, ICSK_TIME_REO_TIMEOUT, l("retrans")),
    JEq32.Imm(R2, ICSK_TIME_LOSS_PROBE, l("retrans")),
    JEq32.Imm(R2, ICSK_TIME_PROBE0, l("probe0")),
    LoadMem(R2, R9, o.tcpSkTimerPprev, "DW"),
    JEq.Imm(R2, 0, l("write")),
    Mov32.Imm(R2, 2),
    LoadMem(R3, R9, o.tcpProbesOut, "B"),
    LoadMem(R1, R9, o.tcpSkTimerExpires, "DW"),
    Ja(l("expires")),
  );
  b.label(l("retrans")).emit(
    Mov32.Imm(R2, 1),
    LoadMem(R3, R9, o.tcpRetransmits, "B"),
    LoadMem(R1, R9, o.tcpTimeout, "DW"),
    Ja(l("expires")),
  );
  b.label(l("probe0")).emit(
    Mov32.Imm(R2, 4),
    LoadMem(R3, R9, o.tcpProbesOut, "B"),
    LoadMem(R1, R9, o.tcpTimeout, "DW"),
    Ja(l("expires")),
  );
  if (!cast) emitOtherTimers(b, o, l);
  // r2: the timer's code, r3: its count, r1: when it expires, r8: jiffies now
  b.label(l("expires")).emit(
    StoreMem(R10, REC + 3, R2, "B"),
    StoreMem(R10, REC + 4, R3, "B"),
    Sub.Reg(R1, R8),
    StoreMem(R10, REC + 88, R1, "DW"),
  );
  b.label(l("write")).emit(
    LoadMem(R1, R6, o.metaSeq, "DW"),
    Mov.Reg(R2, R10),
    Add.Imm(R2, REC),
    Mov.Imm(R3, TCP_RECORD_SIZE),
    Call(Fn.seqWrite),
  );
}

/** emitTcpRecord's timers of a timewait and a request socket (r7), on to its `expires` or `write`. */
function emitOtherTimers(b: ProgramBuilder, o: TcpSocketOffsets, l: (name: string) => string): void {
  b.label(l("timewait")).emit(
    Mov.Reg(R1, R7),
    Call(Fn.skcToTcpTimewaitSock),
    JEq.Imm(R0, 0, l("write")),
    // An orphan in FIN-WAIT-2 waits as a timewait socket too; its state is the substate (inet_twsk_diag_fill).
    LoadMem(R2, R0, o.twSubstate, "B"),
    StoreMem(R10, REC + 2, R2, "B"),
    Mov32.Imm(R2, 3),
    Mov32.Imm(R3, 0),
    LoadMem(R1, R0, o.twExpires, "DW"),
    Ja(l("expires")),
  );
  b.label(l("request")).emit(
    Mov.Reg(R1, R7),
    Call(Fn.skcToTcpRequestSock),
    JEq.Imm(R0, 0, l("write")),
    Mov32.Imm(R2, 1),
    LoadMem(R3, R0, o.reqRetrans, "B"),
    LoadMem(R1, R0, o.reqExpires, "DW"),
  );
}
