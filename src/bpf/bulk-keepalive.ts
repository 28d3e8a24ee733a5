/**
 * The TCP iterator program of a bulk keepalive change made in the kernel (src/enforce/live/kernel-apply.ts): no
 * socket is duplicated into tcpka (pidfd_getfd would also move its net_cls/net_prio to tcpka's cgroup,
 * __receive_sock), no system call is made per socket. The kernel calls it once per TCP socket of one network
 * namespace (bpf_iter_tcp_seq_show in net/ipv4/tcp_ipv4.c), and for each full socket (bpf_skc_to_tcp_sock; request
 * and TIME-WAIT sockets have no options and are passed by) whose inode is a key of the targets map it:
 *
 *  1. deletes the key, so that a socket the walk meets twice (it resumes by bucket and offset after each read,
 *     tcp_seek_last_pos) is changed once;
 *  2. reads its effective settings as src/bpf/tcp-sockets.ts does and getsockopt answers them: SO_KEEPALIVE from
 *     SOCK_KEEPOPEN, keepalive_time / keepalive_intvl / keepalive_probes with 0 standing for the namespace's sysctl
 *     (keepalive_time_when() and friends, include/net/tcp.h), the two times divided by HZ as do_tcp_getsockopt
 *     does, and icsk_user_timeout;
 *  3. decides the new values with the rule of src/settings.ts (strengthen: idle the smaller, interval and count as
 *     a pair from whichever side detects a dead peer sooner, a tie keeping the socket's, the user timeout the
 *     smaller non-zero; force: the requested values; disable: keepalive off);
 *  4. unless it is a dry run, makes the changes with bpf_setsockopt, TCP_KEEPIDLE / KEEPINTVL / KEEPCNT /
 *     TCP_USER_TIMEOUT first and SO_KEEPALIVE last, each only where the value changes, stopping at the first that
 *     fails: where keepalive was off, tcp_set_keepalive (net/ipv4/tcp_timer.c) then arms the timer a full new
 *     idle from now, never earlier; where it was on, a lower TCP_KEEPIDLE re-arms it
 *     (tcp_sock_set_keepidle_locked), which the caller's pacing (reads of a bounded number of records) spreads;
 *  5. writes one record (bpf_seq_write):
 *
 *    0 u64 inode
 *    8 u32 keepalive before (0/1)  12 idle (s)  16 interval (s)  20 count  24 user timeout (ms)
 *   28 u32 keepalive after         32 idle      36 interval      40 count  44 user timeout
 *   48 s32 what bpf_setsockopt returned for SO_KEEPALIVE, 52 TCP_KEEPIDLE, 56 TCP_KEEPINTVL, 60 TCP_KEEPCNT,
 *      64 TCP_USER_TIMEOUT: 0 or -errno; NOT_CALLED where no call was made
 *   68 u32 the target's index: the socket's value in the targets map
 *
 * What it needs of the kernel: the TCP iterator and bpf_skc_to_tcp_sock (5.9, BTF); bpf_setsockopt from a TCP
 * iterator (5.15: bpf_iter_tcp_get_func_proto, which also gives bpf_getsockopt; the iterator holds the socket's
 * lock around the program, lock_sock in bpf_iter_tcp_seq_show, as the helper's sock_owned_by_me wants); the
 * options SO_KEEPALIVE, TCP_KEEPIDLE/KEEPINTVL/KEEPCNT and TCP_USER_TIMEOUT in bpf_setsockopt (5.9; since 6.0
 * sol_socket_sockopt/sol_tcp_sockopt in net/core/filter.c let them through, with optlen == sizeof(int), to
 * sk_setsockopt/do_tcp_setsockopt, the code a user's setsockopt runs; on 5.15-5.19 _bpf_setsockopt has its own
 * copies with the same effect); hash maps from tracing programs (preallocated ones always; bpf_map_lookup_elem
 * and bpf_map_delete_elem). bpf_getsockopt is not used: until 6.0 it answers none of these options.
 */
import { APPLY_ORDER } from "../kernel/sockopts.js";
import type { ApplyMode, KeepAliveSettings, OptionName } from "../settings.js";
import {
  Add,
  Call,
  Fn,
  type Instruction,
  JEq,
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
  R10,
  Return,
  StoreImm,
  StoreMem,
} from "./asm.js";
import { emitApply, emitDecide, emitKeep, emitRead, type RuleOffsets } from "./keepalive-rule.js";
import { emitInode, type TcpSocketOffsets } from "./tcp-sockets.js";

export const BULK_RECORD_SIZE = 72;
/** Where a record holds the target's index (its value in the targets map). */
export const BULK_INDEX = 68;
/** The return-code slot of an option for which no bpf_setsockopt was made. */
export const NOT_CALLED = 1;

/** Where each option sits in a record: before, after, return code. */
export const BULK_SLOTS: Readonly<Record<OptionName, { before: number; after: number; rc: number }>> = {
  keepalive: { before: 8, after: 28, rc: 48 },
  idle: { before: 12, after: 32, rc: 52 },
  interval: { before: 16, after: 36, rc: 56 },
  count: { before: 20, after: 40, rc: 60 },
  userTimeout: { before: 24, after: 44, rc: 64 },
};

const REC = -BULK_RECORD_SIZE; // the record on the stack, from r10
const KEY = REC - 8; // the inode, as the map's key
const VALUE = KEY - 8; // an option's value for bpf_setsockopt

export type BulkOffsets = RuleOffsets &
  Pick<TcpSocketOffsets, "metaSeq" | "tcpSocket" | "socketFile" | "fileInode" | "inodeIno">;

export interface BulkSpec {
  /** the targets: a hash map from socket inode (u64) to the target's index (u32), which its record carries */
  mapFd: number;
  /** jiffies per second (kernelHz in src/sys/libc.ts) */
  hz: number;
  disable: boolean;
  settings: KeepAliveSettings;
  mode: ApplyMode;
  /** only sockets that have keepalive off (--no-keepalive): one with it on is left as it is */
  onlyOff?: boolean;
  /** decide and report, change nothing */
  dryRun: boolean;
  /**
   * A socket storage map of `tcpka enforce` (sockopt-hook.ts) to mark each target in once its changes are made (or
   * found made): its setsockopt program then keeps the rule on the program's later calls, as on the connections
   * that enforce's sock_ops program set up. bpf_sk_storage_get is allowed in iterators
   * (bpf_sk_storage_tracing_allowed), and the tcp_sock pointer stands for the struct sock it begins with.
   */
  marksFd?: number;
}

const at = (option: OptionName, which: "before" | "after" | "rc") => REC + BULK_SLOTS[option][which];
const SLOTS = { at, value: VALUE };

export function bulkKeepaliveProgram(o: BulkOffsets, spec: BulkSpec): Instruction[] {
  if (!Number.isInteger(spec.hz) || spec.hz <= 0) throw new Error(`bulk keepalive program: HZ ${spec.hz}`);
  const b = new ProgramBuilder();
  b.emit(
    LoadMem(R6, R1, 0, "DW"), // meta
    LoadMem(R2, R1, 8, "DW"), // sk_common, NULL once the walk is over
    JEq.Imm(R2, 0, "out"),
    LoadMem(R8, R2, o.skcNet, "DW"), // its namespace, for the sysctls that a zero stands for
    Mov.Reg(R1, R2),
    Call(Fn.skcToTcpSock), // NULL for request and TIME-WAIT sockets
    JEq.Imm(R0, 0, "out"),
    Mov.Reg(R7, R0),
  );
  emitInode(b, o, R7, KEY, "out");
  b.emit(
    ...LoadMapFd(R1, spec.mapFd),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, "out"),
    LoadMem(R2, R0, 0, "W"), // the target's index, read before its element is deleted (and may be reused)
    StoreMem(R10, REC + BULK_INDEX, R2, "W"),
    ...LoadMapFd(R1, spec.mapFd),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Call(Fn.mapDeleteElem),
    LoadMem(R2, R10, KEY, "DW"),
    StoreMem(R10, REC, R2, "DW"),
  );
  for (const option of APPLY_ORDER) b.emit(StoreImm(R10, at(option, "rc"), NOT_CALLED, "W"));

  // Before: what getsockopt would answer. After: the socket's own, then what the rule changes.
  emitRead(b, o, SLOTS, spec.hz, R7, R8);
  emitKeep(b, SLOTS);
  if (spec.onlyOff) b.emit(LoadMem(R2, R10, at("keepalive", "before"), "W"), JNE32.Imm(R2, 0, "write"));
  const changed = emitDecide(b, spec, SLOTS);
  if (!spec.dryRun) {
    for (const option of APPLY_ORDER)
      if (changed.has(option)) emitApply(b, option, SLOTS, R7, { fail: "write", rc: true });
  }
  // A failed change jumps past the mark to "write".
  if (spec.marksFd !== undefined && !spec.disable) {
    b.emit(...LoadMapFd(R1, spec.marksFd), Mov.Reg(R2, R7), Mov.Imm(R3, 0), Mov.Imm(R4, 1), Call(Fn.skStorageGet));
  }

  b.label("write").emit(
    LoadMem(R1, R6, o.metaSeq, "DW"),
    Mov.Reg(R2, R10),
    Add.Imm(R2, REC),
    Mov.Imm(R3, BULK_RECORD_SIZE),
    Call(Fn.seqWrite),
  );
  b.label("out").emit(Mov.Imm(R0, 0), Return());
  return b.build();
}
