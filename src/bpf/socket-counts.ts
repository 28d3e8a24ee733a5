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
 *   16 u32 the tgid of its first owner: 0 in the TCP walk's counts, the process's in the owners' walk's
 *   20 u32 icsk_user_timeout (ms)   24 u32 keepalive_time   28 u32 keepalive_intvl (jiffies)   32 u8 probes
 *          (keepalive on only; each resolved to the namespace's sysctl where the socket's own is 0, as
 *          keepalive_time_when() and friends in include/net/tcp.h do)
 *
 * The listeners' map: key (u32 namespace inode, u32 port), value u64 1; user space empties both maps after each
 * walk (BPF_MAP_LOOKUP_AND_DELETE_BATCH). The config array's one value (CONFIG_SIZE): u32 the scrape's generation
 * (the owners' marks of this scrape carry it), u32 how many sockets could not be counted because a map was full,
 * u32 the counted namespace's inode number (0: none), u32 how many of its hashed sockets the owners' walk saw.
 *
 * The owners (for the process label): after the TCP walks, a task_file iterator program (ownerCountsProgram)
 * counts each ESTABLISHED socket that a process's main thread holds once more, with the same key and the
 * process's tgid: user space then has, for each key, all its sockets (tgid 0, the TCP walk's) and those of each
 * first owner, and the difference is the sockets that no process showed (comm "", as in the record path). A
 * socket whose file more than one reference holds (several fd tables, a dup) is counted for the first process
 * only, through a mark that carries the scrape's generation: an LRU hash of the socket's inode number (it was
 * socket local storage until a 6.18 verifier refused bpf_sk_storage_get the file's socket, an untrusted pointer
 * to it: tcp-sockets.ts TcpSockCast). A socket that one fd alone holds needs no mark (marking every socket,
 * and reading the mark back in the TCP walk, cost ~40 ms more in each walk at 100,000 sockets: BENCHMARKS.md §7).
 *
 * The counted namespace (tcpka's own, with the owners): tcpCountsProgram's listeners-only variant counts its
 * listeners, owned or not, with the owner field ALL_SOCKETS (as the TCP walk would with 0); the owners' walk counts
 * each of its ESTABLISHED sockets under its first owner (as any other namespace's), which user space sums into what
 * the TCP walk's counts would be; and both count how many of its hashed sockets (any state but CLOSE, as sockstat's
 * inuse counts them: sock_prot_inuse_add in __inet_hash, inet_ehash_nolisten and inet_unhash) they met, each once.
 * Where that equals sockstat's inuse, no socket of the namespace was missed (none unaccepted, orphaned, a kernel's,
 * or held by a thread with a file table of its own; a listener that no process shows is the listeners' walk's) and
 * its TCP walk, 45-87 ms of the kernel's at 100,000 sockets whatever its program does, is not made. Else user space
 * drops the listeners' counts and walks it after all (src/inspect/socket-counts.ts).
 *
 * Kernel needs: the TCP iterator and bpf_skc_to_tcp_sock (5.9); for the owners the task_file iterator with
 * bpf_sock_from_file (5.11), and bpf_rdonly_cast (6.2) where the kernel has it; BPF_MAP_LOOKUP_AND_DELETE_BATCH
 * (5.6, else one entry at a time); the kernel's BTF.
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
import { emitHeld, type HeldOffsets, RECORD_SIZE, type TaskFileOffsets } from "./socket-fds.js";
import { emitCgroupId, emitTcpSockOf, keepOpen, type TcpSockCast, type TcpSocketOffsets } from "./tcp-sockets.js";

export const COUNT_KEY_SIZE = 40;
export const LISTEN_KEY_SIZE = 8;
export const KIND_ESTABLISHED = 1;
export const KIND_LISTEN = 2;
/** The owner field of the listeners' walk's counts of the counted namespace's listeners (no tgid is this). */
export const ALL_SOCKETS = 0xffff_ffff;
/** The config array's value: generation, overflow, the counted namespace, its hashed sockets seen (u32 each). */
export const CONFIG_SIZE = 16;

const KEY = -COUNT_KEY_SIZE; // the count key on the stack, from r10
const LKEY = KEY - LISTEN_KEY_SIZE;
const ONE = LKEY - 8; // a u64 1: a new key's first count; and the listeners' value
const CFG = ONE - 8; // the config array's key, 0
const TGID = CFG - 8; // the owners' walk: the process (u32)
const COUNTED = TGID - 8; // the owners' walk: u32 1 where the socket is of the counted namespace
const INODE = COUNTED - 8; // the owners' walk: the mark's key, the socket's inode number (u64)
const MARK = INODE - 8; // the owners' walk: a new mark's value, the generation (u32)
const FD_RECORD = -RECORD_SIZE; // the owners' walk: a held socket's fd record (socket-fds.ts), from r10

const BPF_NOEXIST = 1;

export interface CountMaps {
  counts: number;
  listeners: number;
  config: number;
  /** the owners' marks (an LRU hash: a socket's u64 inode number to the u32 generation that counted it) */
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

/**
 * The count key of the socket in r7 (sock_common), r9 (its tcp_sock), r8 (its state), then its count added:
 * r6 is the config array's value. With `listeners`, a LISTEN socket goes into the listeners' map and is
 * counted by its own port; without, only ESTABLISHED sockets may reach here. Then on to `done` (emitBump).
 */
function emitCount(b: ProgramBuilder, o: TcpSocketOffsets, maps: CountMaps, listeners: boolean, done = "out"): void {
  b.emit(
    LoadMem(R2, R7, o.skcNet, "DW"),
    LoadMem(R3, R2, o.netInum, "W"),
    StoreMem(R10, KEY, R3, "W"),
    StoreMem(R10, LKEY, R3, "W"),
    LoadMem(R3, R7, o.skcNum, "H"),
    StoreMem(R10, LKEY + 4, R3, "W"),
    ...keepOpen(o, R2, R9),
    StoreMem(R10, KEY + 5, R2, "B"),
  );
  if (listeners) b.emit(JEq32.Imm(R8, TCP_STATES.LISTEN, "listener"));
  b.emit(
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
  emitCgroupId(b, o, R9, KEY + 8, "port");
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
  if (listeners) {
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
  }
  // r3: the port
  b.label("count").emit(StoreMem(R10, KEY + 6, R3, "H"));
  emitBump(b, maps, "", done);
}

/**
 * The key on the stack counted once more: its entry in the count map added to, or made. Labels carry the prefix
 * `p`; on to `done`, which the caller emits right after (a map that is full falls through to it as well).
 */
function emitBump(b: ProgramBuilder, maps: CountMaps, p: string, done: string): void {
  b.label(`${p}bump`).emit(
    ...LoadMapFd(R1, maps.counts),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, `${p}new`),
    Mov.Imm(R2, 1),
    AtomicAdd64(R0, 0, R2),
    Ja(done),
  );
  b.label(`${p}new`).emit(
    StoreImm(R10, ONE, 1, "DW"),
    ...LoadMapFd(R1, maps.counts),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Mov.Reg(R3, R10),
    Add.Imm(R3, ONE),
    Mov.Imm(R4, BPF_NOEXIST),
    Call(Fn.mapUpdateElem),
    JEq.Imm(R0, 0, done),
  );
  // A map is full (E2BIG): count it, so that user space takes the record path for this scrape.
  b.label(`${p}full`).emit(LoadMem(R2, R6, 4, "W"), Add.Imm(R2, 1), StoreMem(R6, 4, R2, "W"));
}

/**
 * The TCP iterator's counting program (bpf_iter_tcp, bpf_iter_tcp_seq_show in net/ipv4/tcp_ipv4.c): every
 * ESTABLISHED and LISTEN socket, with no owner (tgid 0).
 *
 * `listenersOnly`: the listeners' program of the counted namespace (tcpka's own, for the owners' walk that counts
 * it in the TCP walk's stead: ownerCountsProgram). Each LISTEN socket goes into the listeners' map and is counted
 * (owner ALL_SOCKETS, one more seen in the config); then the walk stops at the first socket that is not one.
 * bpf_iter_tcp walks the listening hash before the established one (bpf_iter_tcp_batch, net/ipv4/tcp_ipv4.c),
 * and a program that returns 1 ends the read with EAGAIN when it wrote nothing (bpf_iter_run_prog, bpf_seq_read
 * in kernel/bpf/bpf_iter.c), so the walk costs the listening hash and the established hash up to its first
 * socket of the namespace, not the whole established hash.
 */
export function tcpCountsProgram(o: TcpSocketOffsets, maps: CountMaps, listenersOnly = false): Instruction[] {
  const b = new ProgramBuilder();
  b.emit(
    LoadMem(R7, R1, 8, "DW"), // sk_common, NULL once the walk is over
    JEq.Imm(R7, 0, "out"),
    LoadMem(R8, R7, o.skcState, "B"),
  );
  if (listenersOnly) b.emit(JNE32.Imm(R8, TCP_STATES.LISTEN, "stop"));
  else b.emit(JEq32.Imm(R8, TCP_STATES.ESTABLISHED, "wanted"), JNE32.Imm(R8, TCP_STATES.LISTEN, "out"));
  b.label("wanted");
  loadConfig(b, maps.config);
  for (let at = 0; at < COUNT_KEY_SIZE; at += 8) b.emit(StoreImm(R10, KEY + at, 0, "DW"));
  b.emit(
    Mov.Reg(R1, R7),
    Call(Fn.skcToTcpSock), // every ESTABLISHED or LISTEN socket is a full one
    JEq.Imm(R0, 0, "out"),
    Mov.Reg(R9, R0),
  );
  if (listenersOnly)
    b.emit(
      StoreImm(R10, KEY + 16, ALL_SOCKETS, "W"),
      // one more hashed socket of the counted namespace seen (the config's u32 at 12)
      LoadMem(R2, R6, 12, "W"),
      Add.Imm(R2, 1),
      StoreMem(R6, 12, R2, "W"),
    );
  emitCount(b, o, maps, true);
  b.label("out").emit(Mov.Imm(R0, 0), Return());
  if (listenersOnly) b.label("stop").emit(Mov.Imm(R0, 1), Return());
  return b.build();
}

/** How the owners' program tells a file that one fd table alone holds (struct file's reference count). */
export interface FileRef {
  /** the offset of file->f_ref.refcnt (Linux 6.13) or file->f_count (before), a long */
  offset: number;
  /**
   * its value when the fd table and the iterator hold the only references (task_file_seq_get_next takes one
   * for the program's run): 1 for a file_ref_t (FILE_REF_ONEREF is 0, include/linux/file_ref.h), 2 for f_count
   */
  unique: number;
}

/**
 * The owners' walk (bpf_iter_task_file, kernel/bpf/task_iter.c): each ESTABLISHED TCP socket that a process's
 * main thread holds, counted under its tgid with the same key as the TCP walk's (the listeners' map filled by
 * it). A socket is counted once, for the first process of the walk: a file that only one fd table holds (its
 * reference count says so) at once; one that more hold (fork, dup, SCM_RIGHTS, a thread in a system call on
 * it) only where the socket's mark (`maps.owners`, an LRU hash of u64 inode number to u32 generation) is not of
 * this scrape's generation yet.
 *
 * A socket of the counted namespace (the config's inode number) is counted under its owner where ESTABLISHED (as
 * any), not at all where LISTEN (the listeners' walk's); each of its other hashed sockets adds one to the config's
 * seen count (see the top of this file).
 *
 * With `held`, a socket of a namespace in that map is not counted but written whole (socket-fds.ts `emitHeld`:
 * its fd record, then the TCP walk's record of it), for user space to count: those namespaces get no TCP walk
 * (src/inspect/socket-counts.ts). `held.only`: nothing else is counted (a scrape without the process label).
 */
export function ownerCountsProgram(
  o: TcpSocketOffsets & TaskFileOffsets,
  maps: CountMaps & { owners: number },
  ref: FileRef | undefined,
  cast: TcpSockCast | undefined,
  held?: { offsets: HeldOffsets; netns: number; only: boolean },
): Instruction[] {
  const b = new ProgramBuilder();
  b.emit(
    LoadMem(R6, R1, 0, "DW"), // meta
    LoadMem(R2, R1, 16, "DW"), // fd
    StoreMem(R10, FD_RECORD, R2, "W"),
    LoadMem(R7, R1, 8, "DW"), // task, NULL once the walk is over
    LoadMem(R9, R1, 24, "DW"), // file
    JEq.Imm(R9, 0, "out"),
    JEq.Imm(R7, 0, "out"),
    LoadMem(R2, R7, o.taskPid, "W"),
    LoadMem(R8, R7, o.taskTgid, "W"),
    JNE32.Reg(R2, R8, "out"), // a thread with a file table of its own: not in /proc/PID/fd (socket-fds.ts)
    StoreMem(R10, FD_RECORD + 20, R8, "W"),
    StoreMem(R10, TGID, R8, "W"),
    Mov.Reg(R1, R9),
    Call(Fn.sockFromFile),
    JEq.Imm(R0, 0, "out"),
    LoadMem(R7, R0, o.socketSk, "DW"),
    JEq.Imm(R7, 0, "out"),
    LoadMem(R2, R7, o.skType, "H"),
    JNE32.Imm(R2, SOCK_STREAM, "out"),
    LoadMem(R2, R7, o.skProtocol, "H"),
    JNE32.Imm(R2, IPPROTO_TCP, "out"),
  );
  if (held) emitHeld(b, held.offsets, held.netns, held.only ? "out" : "established", "out");
  if (held?.only) {
    b.label("out").emit(Mov.Imm(R0, 0), Return());
    return b.build();
  }
  b.label("established");
  loadConfig(b, maps.config);
  // The counted namespace (the config's u32 at 8; 0: none): every hashed socket of it, once.
  b.emit(
    LoadMem(R2, R7, o.skcNet, "DW"),
    LoadMem(R3, R2, o.netInum, "W"),
    LoadMem(R4, R6, 8, "W"),
    StoreImm(R10, COUNTED, 0, "W"),
    LoadMem(R8, R7, o.skcState, "B"),
    JNE32.Reg(R3, R4, "foreign"),
    StoreImm(R10, COUNTED, 1, "W"),
    // not hashed: not in sockstat's inuse, and no TCP walk would count it (inet_unhash)
    JEq32.Imm(R8, TCP_STATES.CLOSE, "out"),
    // its listeners are the listeners' walk's (tcpCountsProgram, listenersOnly), owned or not
    JEq32.Imm(R8, TCP_STATES.LISTEN, "out"),
    Ja("first"),
  );
  b.label("foreign").emit(JNE32.Imm(R8, TCP_STATES.ESTABLISHED, "out"));
  b.label("first");
  for (let at = 0; at < COUNT_KEY_SIZE; at += 8) b.emit(StoreImm(R10, KEY + at, 0, "DW"));
  if (ref) b.emit(LoadMem(R2, R9, ref.offset, "DW"), JEq.Imm(R2, ref.unique, "unique"));
  // A file that more references hold: counted where its mark (the socket's inode number in the marks' map) is
  // not of this scrape's generation yet.
  b.emit(
    LoadMem(R2, R9, o.fileInode, "DW"),
    JEq.Imm(R2, 0, "out"),
    LoadMem(R3, R2, o.inodeIno, "DW"),
    StoreMem(R10, INODE, R3, "DW"),
    ...LoadMapFd(R1, maps.owners),
    Mov.Reg(R2, R10),
    Add.Imm(R2, INODE),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, "mark"),
    LoadMem(R2, R0, 0, "W"),
    LoadMem(R3, R6, 0, "W"),
    JEq32.Reg(R2, R3, "out"), // counted in this generation already: the first owner keeps it
    StoreMem(R0, 0, R3, "W"),
    Ja("unique"),
  );
  // No mark yet, or (full) none to be had: counted (an LRU map that forgot one counts it twice: user space cuts
  // owners to the TCP walk's totals, and the own namespace's seen count then exceeds sockstat's, so it is walked).
  b.label("mark").emit(
    LoadMem(R3, R6, 0, "W"),
    StoreMem(R10, MARK, R3, "W"),
    ...LoadMapFd(R1, maps.owners),
    Mov.Reg(R2, R10),
    Add.Imm(R2, INODE),
    Mov.Reg(R3, R10),
    Add.Imm(R3, MARK),
    Mov.Imm(R4, 0), // BPF_ANY
    Call(Fn.mapUpdateElem),
  );
  b.label("unique").emit(
    LoadMem(R2, R10, TGID, "W"),
    StoreMem(R10, KEY + 16, R2, "W"),
    LoadMem(R2, R10, COUNTED, "W"),
    JEq32.Imm(R2, 0, "socket"),
    // One more hashed socket of the counted namespace seen (the config's u32 at 12), for user space to hold
    // against sockstat. Its ESTABLISHED ones count under their owner alone (user space sums those into the
    // totals).
    LoadMem(R2, R6, 12, "W"),
    Add.Imm(R2, 1),
    StoreMem(R6, 12, R2, "W"),
    JNE32.Imm(R8, TCP_STATES.ESTABLISHED, "out"),
  );
  b.label("socket");
  emitTcpSockOf(b, R7, cast, "out");
  b.emit(Mov.Reg(R9, R0));
  emitCount(b, o, maps, false);
  b.label("out").emit(Mov.Imm(R0, 0), Return());
  return b.build();
}
