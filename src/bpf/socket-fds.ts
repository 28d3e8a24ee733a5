/**
 * The task_file iterator program behind `tcpka enable`'s listing (src/inspect/socket-fds.ts). The kernel calls
 * it once per open file of the process it walks (bpf_iter_task_file, kernel/bpf/task_iter.c) with a context of
 * four 8-byte slots: meta, task, fd, file (struct bpf_iter__task_file). For each file that is a TCP socket of the
 * process's main thread it writes one record with bpf_seq_write, all of it from the socket itself:
 *
 *   0 u32 fd              4 u16 family        6 u8 state (enum tcp_state)   7 u8 zero
 *   8 u64 inode number (file->f_inode->i_ino: what /proc/PID/fd shows as socket:[INODE])
 *  16 u16 local port (host order)   18 u16 peer port (network order)        20 u32 task->tgid
 *  24 16 bytes local address       40 16 bytes peer address  (IPv4: the first 4 bytes, network order)
 *
 * That is what sock_diag reports for it (inet_diag_msg_common_fill reads the same fields), so no TCP table needs
 * to be read. A socket is TCP when bpf_sock_from_file finds a struct socket behind the file (Linux 5.11) and its
 * sock is SOCK_STREAM with protocol IPPROTO_TCP (MPTCP's own sockets are not). Other threads are walked only
 * when they have a file table of their own (after unshare(CLONE_FILES)); those files are not in /proc/PID/fd and
 * pidfd_getfd cannot reach them, so they are skipped (task->pid != task->tgid).
 *
 * The struct offsets differ between kernel builds, so they come from the running kernel's BTF (src/sys/btf.ts).
 *
 * Held records. Given a map of network namespaces (a hash of u32 net->ns.inum), a socket of one of them that is in
 * the kernel's hash tables (any state but CLOSE) is written in full instead: its record with byte 7 = 1 and only
 * fd, inode, tgid and, for a listener, at 16 the u32 count of its request sockets set, followed at once by the TCP iterator's record of it (TCP_RECORD_SIZE bytes,
 * tcp-sockets.ts `emitTcpRecord`, uid from sk_uid as sock_i_uid() reads it). The owners' walk, which visits
 * every file of the host anyway, then carries the sockets of small namespaces, whose own TCP walk would scan the
 * one established hash every namespace shares (bpf_iter_tcp filters it by net: seq_sk_match() in
 * net/ipv4/tcp_ipv4.c). User space checks that it saw them all (kernel-sockets.ts `HeldSockets`).
 */

import { IPPROTO_TCP, SOCK_STREAM } from "../kernel/constants.js";
import { TCP_STATES } from "../kernel/states.js";
import type { BtfFacts } from "../sys/btf.js";
import {
  Add,
  Call,
  Fn,
  type Instruction,
  Ja,
  JEq,
  JEq32,
  JNE,
  JNE32,
  LoadMapFd,
  LoadMem,
  Mov,
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
  Return,
  StoreImm,
  StoreMem,
} from "./asm.js";
import { type EndpointOffsets, emitAddresses } from "./endpoints.js";
import {
  emitOwnerSlot,
  emitTcpRecord,
  emitTcpSockOf,
  type OwnersMap,
  TCP_RECORD_SIZE,
  type TcpSockCast,
  type TcpSocketOffsets,
  tcpSockCast,
  tcpSocketOffsets,
} from "./tcp-sockets.js";

/** Offsets, in bytes, of the members the program reads, from the running kernel's BTF. */
export interface TaskFileOffsets extends EndpointOffsets {
  /** struct bpf_iter_meta: seq */
  metaSeq: number;
  /** struct task_struct: pid (the thread's id), tgid (the process's) */
  taskPid: number;
  taskTgid: number;
  /** struct file: f_inode; struct inode: i_ino */
  fileInode: number;
  inodeIno: number;
  /** struct socket: sk */
  socketSk: number;
  /** struct sock: sk_type, sk_protocol (u16 each since Linux 5.6) */
  skType: number;
  skProtocol: number;
}

/** The task_file members the programs read (this one and the metrics' owner counting), from the kernel's BTF. */
export function taskFileMembers(
  btf: BtfFacts,
): Pick<TaskFileOffsets, "taskPid" | "taskTgid" | "fileInode" | "inodeIno" | "socketSk" | "skType" | "skProtocol"> {
  return {
    taskPid: btf.memberOffset("task_struct", "pid"),
    taskTgid: btf.memberOffset("task_struct", "tgid"),
    fileInode: btf.memberOffset("file", "f_inode"),
    inodeIno: btf.memberOffset("inode", "i_ino"),
    socketSk: btf.memberOffset("socket", "sk"),
    skType: btf.memberOffset("sock", "sk_type"),
    skProtocol: btf.memberOffset("sock", "sk_protocol"),
  };
}

export const RECORD_SIZE = 56;
const REC = -RECORD_SIZE; // the record on the stack, from r10
/** byte 7 of a record: a TCP record of the socket follows */
export const HELD = 1;
const NETNS_KEY = -TCP_RECORD_SIZE - 8; // the held namespaces' key, below both records

/** What the held records need besides the task_file members: the TCP record's, and sk_uid. */
export interface HeldOffsets extends TcpSocketOffsets {
  /** struct sock: sk_uid (a kuid_t) */
  skUid: number;
  /** struct tcp_sock: inet_conn.icsk_accept_queue.qlen */
  tcpRequests: number;
  /** how the file's socket is read as a tcp_sock (tcp-sockets.ts TcpSockCast) */
  cast: TcpSockCast | undefined;
}

/** The held records' offsets from the running kernel's BTF. */
export function heldOffsets(btf: BtfFacts): HeldOffsets {
  return {
    ...tcpSocketOffsets(btf),
    skUid: btf.memberOffset("sock", "sk_uid"),
    tcpRequests: btf.memberOffset("tcp_sock", "inet_conn.icsk_accept_queue.qlen"),
    cast: tcpSockCast(btf),
  };
}

/**
 * Where the TCP socket in r7 (struct sock; r9 its file, r6 the iterator's meta) is of a namespace in the map
 * `netns` and hashed: the two records of a held socket, and on to `done`; else on to `notHeld` with r6-r9 as they
 * were. The caller has put the fd at REC + 0 and the tgid at REC + 20 of the record on the stack.
 */
export function emitHeld(b: ProgramBuilder, o: HeldOffsets, netns: number, notHeld: string, done: string): void {
  b.emit(
    LoadMem(R2, R7, o.skcNet, "DW"),
    LoadMem(R3, R2, o.netInum, "W"),
    StoreMem(R10, NETNS_KEY, R3, "W"),
    ...LoadMapFd(R1, netns),
    Mov.Reg(R2, R10),
    Add.Imm(R2, NETNS_KEY),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, notHeld),
    // Not hashed: no TCP walk would meet it (inet_unhash; a socket never bound or connected, or closed).
    LoadMem(R2, R7, o.skcState, "B"),
    JEq32.Imm(R2, TCP_STATES.CLOSE, notHeld),
    LoadMem(R2, R9, o.fileInode, "DW"),
    JEq.Imm(R2, 0, notHeld),
    LoadMem(R3, R2, o.inodeIno, "DW"),
    StoreMem(R10, REC + 8, R3, "DW"),
    StoreImm(R10, REC + 4, 0, "H"),
    StoreImm(R10, REC + 6, 0, "B"),
    StoreImm(R10, REC + 7, HELD, "B"),
    StoreImm(R10, REC + 16, 0, "W"),
    // A listener's request sockets (icsk_accept_queue.qlen: reqsk_queue_added / _removed), which neither sockstat
    // nor the task_file walk counts.
    LoadMem(R2, R7, o.skcState, "B"),
    JNE32.Imm(R2, TCP_STATES.LISTEN, "held_header"),
  );
  emitTcpSockOf(b, R7, o.cast, "held_header");
  b.emit(LoadMem(R2, R0, o.tcpRequests, "W"), StoreMem(R10, REC + 16, R2, "W"));
  b.label("held_header");
  for (let at = 24; at < RECORD_SIZE; at += 8) b.emit(StoreImm(R10, REC + at, 0, "DW"));
  b.emit(
    LoadMem(R1, R6, o.metaSeq, "DW"),
    Mov.Reg(R2, R10),
    Add.Imm(R2, REC),
    Mov.Imm(R3, RECORD_SIZE),
    Call(Fn.seqWrite),
    LoadMem(R8, R7, o.skUid, "W"),
  );
  emitTcpRecord(b, o, "held_", o.cast);
  b.emit(Ja(done));
}

/** Below the records and the held namespaces' key: the owners' map key (a u32, the slot). */
const OWNER_KEY = NETNS_KEY - 8;

/**
 * `held`: the map of namespaces whose sockets get held records (see above), with the offsets they need.
 * `owners`: the owners' map of tcp-sockets.ts (OwnersMap): a plain socket's first owner goes into its empty slot
 * instead of a record; a record is written for every further owner (the slot holds this inode) and for every
 * socket whose slot another one took, so that user space still learns every owner the map does not hold.
 */
export function socketFdsProgram(
  o: TaskFileOffsets,
  held?: { offsets: HeldOffsets; netns: number },
  owners?: OwnersMap,
): Instruction[] {
  const b = new ProgramBuilder();
  b.emit(
    LoadMem(R6, R1, 0, "DW"), // meta
    LoadMem(R7, R1, 8, "DW"), // task, NULL once the walk is over
    LoadMem(R8, R1, 16, "DW"), // fd: a u32 in an 8-byte slot
    LoadMem(R9, R1, 24, "DW"), // file, NULL once the walk is over
    JEq.Imm(R9, 0, "out"),
    JEq.Imm(R7, 0, "out"),
    LoadMem(R2, R7, o.taskPid, "W"),
    LoadMem(R3, R7, o.taskTgid, "W"),
    JNE32.Reg(R2, R3, "out"),
    StoreMem(R10, REC + 20, R3, "W"), // the process, as the kernel numbers it, to check the walk's filter
    StoreMem(R10, REC, R8, "W"),
    Mov.Reg(R1, R9),
    Call(Fn.sockFromFile), // struct socket *, or NULL when the file is no socket
    JEq.Imm(R0, 0, "out"),
    LoadMem(R7, R0, o.socketSk, "DW"),
    JEq.Imm(R7, 0, "out"),
    LoadMem(R2, R7, o.skType, "H"),
    JNE32.Imm(R2, SOCK_STREAM, "out"),
    LoadMem(R2, R7, o.skProtocol, "H"),
    JNE32.Imm(R2, IPPROTO_TCP, "out"),
  );
  if (held) emitHeld(b, held.offsets, held.netns, "plain", "out");
  b.label("plain").emit(
    LoadMem(R2, R9, o.fileInode, "DW"),
    JEq.Imm(R2, 0, "out"),
    LoadMem(R3, R2, o.inodeIno, "DW"),
    StoreMem(R10, REC + 8, R3, "DW"),
  );
  if (owners !== undefined)
    b.emit(
      ...emitOwnerSlot(owners, OWNER_KEY, "record"), // r3: the inode
      LoadMem(R2, R0, 0, "DW"),
      JNE.Imm(R2, 0, "record"), // a further owner, or another socket's slot
      LoadMem(R3, R10, REC + 8, "DW"),
      StoreMem(R0, 0, R3, "DW"),
      LoadMem(R3, R10, REC + 20, "W"),
      StoreMem(R0, 8, R3, "W"),
      StoreMem(R0, 12, R8, "W"),
      Ja("out"),
    );
  b.label("record");
  b.emit(
    LoadMem(R2, R7, o.skcFamily, "H"),
    StoreMem(R10, REC + 4, R2, "H"),
    LoadMem(R3, R7, o.skcState, "B"),
    StoreMem(R10, REC + 6, R3, "B"),
    StoreImm(R10, REC + 7, 0, "B"),
    LoadMem(R3, R7, o.skcNum, "H"),
    StoreMem(R10, REC + 16, R3, "H"),
    LoadMem(R3, R7, o.skcDport, "H"),
    StoreMem(R10, REC + 18, R3, "H"),
  );
  emitAddresses(b, o, R7, R2, REC + 24, REC + 40, "write");
  b.label("write").emit(
    LoadMem(R1, R6, o.metaSeq, "DW"),
    Mov.Reg(R2, R10),
    Add.Imm(R2, REC),
    Mov.Imm(R3, RECORD_SIZE),
    Call(Fn.seqWrite),
  );
  b.label("out").emit(Mov.Imm(R0, 0), Return());
  return b.build();
}
