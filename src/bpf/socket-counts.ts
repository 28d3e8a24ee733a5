/**
 * The counting programs behind a metrics scrape (src/inspect/socket-counts.ts): the same walks as the inventory's
 * (tcp-sockets.ts, socket-fds.ts), but instead of writing a record per socket for Node to decode, the TCP
 * iterator program adds each ESTABLISHED or LISTEN socket to a hash map keyed by what the exporter's labels are
 * made of, so that user space reads a few hundred entries after the walk instead of 100,000 records
 * (BENCHMARKS.md §7: the records and their decoding were half of a scrape's CPU).
 *
 * The count map's key (COUNT_KEY_SIZE bytes, zero where not known or not wanted), its value a u64 count:
 *
 *    0 u32 the network namespace's inode number (net->ns.inum)
 *    4 u8 kind: 1 an ESTABLISHED socket, 2 a LISTEN one   5 u8 SO_KEEPALIVE (SOCK_KEEPOPEN in sk_flags)
 *    6 u16 port (host order): a listener's own; an established socket's service port, its local port where its
 *          namespace listens on it (a listener walked before it: bpf_iter_tcp_batch takes the listening hash
 *          before the established one, net/ipv4/tcp_ipv4.c), else its peer's
 *    8 u64 the socket's cgroup v2 id (sk_cgrp_data's cgroup->kn->id; established only)
 *   16 u32 the tgid of its first owner, from the owners' marks (established, with owners only)
 *   20 u32 icsk_user_timeout (ms)   24 u32 keepalive_time   28 u32 keepalive_intvl (jiffies)   32 u8 probes
 *          (keepalive on only; each resolved to the namespace's sysctl where the socket's own is 0, as
 *          keepalive_time_when() and friends in include/net/tcp.h do)
 *
 * The listeners' map: key (u32 namespace inode, u32 port), value u64 1; user space empties both maps after each
 * walk (BPF_MAP_LOOKUP_AND_DELETE_BATCH). The config array's one value: u32 the scrape's generation (the owners'
 * marks of this scrape carry it), u32 how many sockets could not be counted because the count map was full.
 *
 * The owners: before the TCP walks, a task_file iterator program (bpf_iter_task_file, kernel/bpf/task_iter.c)
 * marks each TCP socket that a process's main thread holds with that process's tgid, in socket local storage
 * (bpf_sk_storage_get is allowed in iterators: bpf_sk_storage_tracing_allowed, net/core/bpf_sk_storage.c), once
 * per generation: the first process of the walk keeps it, as the first owner of the record path's OwnerTable.
 * The TCP program reads the mark back (without creating one). The storage stays with the socket between
 * scrapes, so a scrape allocates only for new sockets; it is freed with the socket or with the map.
 *
 * Kernel needs: the TCP iterator and bpf_skc_to_tcp_sock (5.9), bpf_sk_storage_get from iterators (5.11),
 * bpf_sock_from_file (5.11), BPF_MAP_LOOKUP_AND_DELETE_BATCH (5.6, else one entry at a time), the BTF.
 */
import { IPPROTO_TCP, SOCK_STREAM } from "../kernel/constants.js";
import { TCP_STATES } from "../kernel/states.js";
import {
  Add,
  AtomicAdd64,
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
  R4,
  R6,
  R7,
  R8,
  R9,
  R10,
  Return,
  StoreImm,
  StoreMem,
  ToBE,
} from "./asm.js";
import type { TaskFileOffsets } from "./socket-fds.js";
import { keepOpen, type TcpSocketOffsets } from "./tcp-sockets.js";

export const COUNT_KEY_SIZE = 40;
export const LISTEN_KEY_SIZE = 8;
export const KIND_ESTABLISHED = 1;
export const KIND_LISTEN = 2;

const KEY = -COUNT_KEY_SIZE; // the count key on the stack, from r10
const LKEY = KEY - LISTEN_KEY_SIZE;
const ONE = LKEY - 8; // a u64 1: a new key's first count; and the listeners' value
const CFG = ONE - 8; // the config array's key, 0

const BPF_NOEXIST = 1;
const BPF_SK_STORAGE_GET_F_CREATE = 1;

export interface CountMaps {
  counts: number;
  listeners: number;
  config: number;
  /** the owners' marks (a socket storage map of u32 generation, u32 tgid); undefined: no owners */
  owners?: number;
}

/** r6 = the config array's value (generation @0, overflow @4), or to `out` when it cannot be had. */
function loadConfig(b: ProgramBuilder, config: number): void {
  b.emit(
    StoreImm(R10, CFG, 0, "W"),
    ...LoadMapFd(R1, config),
    Mov.Reg(R2, R10),
    Add.Imm(R2, CFG),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, "out"),
    Mov.Reg(R6, R0),
  );
}

/** The TCP iterator's counting program (bpf_iter_tcp, bpf_iter_tcp_seq_show in net/ipv4/tcp_ipv4.c). */
export function tcpCountsProgram(o: TcpSocketOffsets, maps: CountMaps): Instruction[] {
  const b = new ProgramBuilder();
  b.emit(
    LoadMem(R7, R1, 8, "DW"), // sk_common, NULL once the walk is over
    JEq.Imm(R7, 0, "out"),
    LoadMem(R8, R7, o.skcState, "B"),
    JEq32.Imm(R8, TCP_STATES.ESTABLISHED, "wanted"),
    JNE32.Imm(R8, TCP_STATES.LISTEN, "out"),
  );
  b.label("wanted");
  loadConfig(b, maps.config);
  for (let at = 0; at < COUNT_KEY_SIZE; at += 8) b.emit(StoreImm(R10, KEY + at, 0, "DW"));
  b.emit(
    LoadMem(R2, R7, o.skcNet, "DW"),
    LoadMem(R3, R2, o.netInum, "W"),
    StoreMem(R10, KEY, R3, "W"),
    StoreMem(R10, LKEY, R3, "W"),
    LoadMem(R3, R7, o.skcNum, "H"),
    StoreMem(R10, LKEY + 4, R3, "W"),
    Mov.Reg(R1, R7),
    Call(Fn.skcToTcpSock), // every ESTABLISHED or LISTEN socket is a full one
    JEq.Imm(R0, 0, "out"),
    Mov.Reg(R9, R0),
    ...keepOpen(o, R2, R9),
    StoreMem(R10, KEY + 5, R2, "B"),
    JEq32.Imm(R8, TCP_STATES.LISTEN, "listener"),
    StoreImm(R10, KEY + 4, KIND_ESTABLISHED, "B"),
    JEq32.Imm(R2, 0, "cgroup"),
    // keepalive on: the settings that getsockopt would answer
    LoadMem(R4, R7, o.skcNet, "DW"),
    LoadMem(R3, R9, o.tcpUserTimeout, "W"),
    StoreMem(R10, KEY + 20, R3, "W"),
    LoadMem(R3, R9, o.tcpKeepaliveTime, "W"),
    JNE32.Imm(R3, 0, "time"),
    LoadMem(R3, R4, o.netKeepaliveTime, "W"),
  );
  b.label("time").emit(
    StoreMem(R10, KEY + 24, R3, "W"),
    LoadMem(R3, R9, o.tcpKeepaliveIntvl, "W"),
    JNE32.Imm(R3, 0, "intvl"),
    LoadMem(R3, R4, o.netKeepaliveIntvl, "W"),
  );
  b.label("intvl").emit(
    StoreMem(R10, KEY + 28, R3, "W"),
    LoadMem(R3, R9, o.tcpKeepaliveProbes, "B"),
    JNE32.Imm(R3, 0, "probes"),
    LoadMem(R3, R4, o.netKeepaliveProbes, "B"),
  );
  b.label("probes").emit(StoreMem(R10, KEY + 32, R3, "B"));
  b.label("cgroup");
  if (o.tcpCgroup !== undefined) {
    b.emit(
      LoadMem(R2, R9, o.tcpCgroup, "DW"),
      JEq.Imm(R2, 0, "owner"),
      LoadMem(R2, R2, o.cgroupKn, "DW"),
      JEq.Imm(R2, 0, "owner"),
      LoadMem(R3, R2, o.kernfsId, "DW"),
      StoreMem(R10, KEY + 8, R3, "DW"),
    );
  }
  b.label("owner");
  if (maps.owners !== undefined) {
    b.emit(
      ...LoadMapFd(R1, maps.owners),
      Mov.Reg(R2, R9), // a tcp_sock begins with its struct sock
      Mov.Imm(R3, 0),
      Mov.Imm(R4, 0), // no flags: read a mark, make none
      Call(Fn.skStorageGet),
      JEq.Imm(R0, 0, "port"),
      LoadMem(R2, R0, 0, "W"),
      LoadMem(R3, R6, 0, "W"),
      JNE32.Reg(R2, R3, "port"), // a mark of an earlier scrape: its owner may have closed it since
      LoadMem(R2, R0, 4, "W"),
      StoreMem(R10, KEY + 16, R2, "W"),
    );
  }
  // The service port: the local one where this namespace listens on it, else the peer's.
  b.label("port").emit(
    ...LoadMapFd(R1, maps.listeners),
    Mov.Reg(R2, R10),
    Add.Imm(R2, LKEY),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, "peer"),
    LoadMem(R3, R10, LKEY + 4, "W"),
    Ja("count"),
  );
  b.label("peer").emit(
    LoadMem(R3, R7, o.skcDport, "H"), // network order
    ToBE(R3, 16),
    Ja("count"),
  );
  b.label("listener").emit(
    StoreImm(R10, KEY + 4, KIND_LISTEN, "B"),
    StoreImm(R10, ONE, 1, "DW"),
    ...LoadMapFd(R1, maps.listeners),
    Mov.Reg(R2, R10),
    Add.Imm(R2, LKEY),
    Mov.Reg(R3, R10),
    Add.Imm(R3, ONE),
    Mov.Imm(R4, 0), // BPF_ANY
    Call(Fn.mapUpdateElem),
    JNE.Imm(R0, 0, "full"),
    LoadMem(R3, R10, LKEY + 4, "W"),
  );
  // r3: the port
  b.label("count").emit(
    StoreMem(R10, KEY + 6, R3, "H"),
    ...LoadMapFd(R1, maps.counts),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, "new"),
    Mov.Imm(R2, 1),
    AtomicAdd64(R0, 0, R2),
    Ja("out"),
  );
  b.label("new").emit(
    StoreImm(R10, ONE, 1, "DW"),
    ...LoadMapFd(R1, maps.counts),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Mov.Reg(R3, R10),
    Add.Imm(R3, ONE),
    Mov.Imm(R4, BPF_NOEXIST),
    Call(Fn.mapUpdateElem),
    JEq.Imm(R0, 0, "out"),
  );
  // The map is full (E2BIG): count it, so that user space takes the record path for this scrape.
  b.label("full").emit(LoadMem(R2, R6, 4, "W"), Add.Imm(R2, 1), StoreMem(R6, 4, R2, "W"));
  b.label("out").emit(Mov.Imm(R0, 0), Return());
  return b.build();
}

/** The owners' marks: each TCP socket a main thread holds, marked with its tgid once per generation. */
export function ownerMarksProgram(
  o: TaskFileOffsets,
  maps: Required<Pick<CountMaps, "config" | "owners">>,
): Instruction[] {
  const b = new ProgramBuilder();
  b.emit(
    LoadMem(R7, R1, 8, "DW"), // task, NULL once the walk is over
    LoadMem(R9, R1, 24, "DW"), // file
    JEq.Imm(R9, 0, "out"),
    JEq.Imm(R7, 0, "out"),
    LoadMem(R2, R7, o.taskPid, "W"),
    LoadMem(R8, R7, o.taskTgid, "W"),
    JNE32.Reg(R2, R8, "out"), // a thread with a file table of its own: not in /proc/PID/fd (socket-fds.ts)
  );
  loadConfig(b, maps.config);
  b.emit(
    Mov.Reg(R1, R9),
    Call(Fn.sockFromFile),
    JEq.Imm(R0, 0, "out"),
    LoadMem(R7, R0, o.socketSk, "DW"),
    JEq.Imm(R7, 0, "out"),
    LoadMem(R2, R7, o.skType, "H"),
    JNE32.Imm(R2, SOCK_STREAM, "out"),
    LoadMem(R2, R7, o.skProtocol, "H"),
    JNE32.Imm(R2, IPPROTO_TCP, "out"),
    ...LoadMapFd(R1, maps.owners),
    Mov.Reg(R2, R7),
    Mov.Imm(R3, 0),
    Mov.Imm(R4, BPF_SK_STORAGE_GET_F_CREATE),
    Call(Fn.skStorageGet),
    JEq.Imm(R0, 0, "out"),
    LoadMem(R2, R0, 0, "W"),
    LoadMem(R3, R6, 0, "W"),
    JEq32.Reg(R2, R3, "out"), // marked in this generation already: the first owner stays
    StoreMem(R0, 0, R3, "W"),
    StoreMem(R0, 4, R8, "W"),
  );
  b.label("out").emit(Mov.Imm(R0, 0), Return());
  return b.build();
}
