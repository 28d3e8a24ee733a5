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
 *   68 u32 zero
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
import { APPLY_ORDER, SOCKOPTS } from "../kernel/sockopts.js";
import type { ApplyMode, KeepAliveSettings, OptionName } from "../settings.js";
import {
  Add,
  Call,
  Div,
  Fn,
  type Instruction,
  JEq,
  JGE,
  JLE,
  JNE,
  JNE32,
  LoadMapFd,
  LoadMem,
  Mov,
  Mul,
  ProgramBuilder,
  R0,
  R1,
  R2,
  R3,
  R4,
  R5,
  R6,
  R7,
  R8,
  R10,
  type Reg,
  Return,
  StoreImm,
  StoreMem,
} from "./asm.js";
import { emitInode, keepOpen, type TcpSocketOffsets } from "./tcp-sockets.js";

export const BULK_RECORD_SIZE = 72;
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

export type BulkOffsets = Pick<
  TcpSocketOffsets,
  | "metaSeq"
  | "skcNet"
  | "netKeepaliveTime"
  | "netKeepaliveIntvl"
  | "netKeepaliveProbes"
  | "tcpFlags"
  | "keepOpenBit"
  | "tcpKeepaliveTime"
  | "tcpKeepaliveIntvl"
  | "tcpKeepaliveProbes"
  | "tcpUserTimeout"
  | "tcpSocket"
  | "socketFile"
  | "fileInode"
  | "inodeIno"
>;

export interface BulkSpec {
  /** the targets: a hash map whose keys are socket inodes (u64) */
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
    ...LoadMapFd(R1, spec.mapFd),
    Mov.Reg(R2, R10),
    Add.Imm(R2, KEY),
    Call(Fn.mapDeleteElem),
    LoadMem(R2, R10, KEY, "DW"),
    StoreMem(R10, REC, R2, "DW"),
    StoreImm(R10, REC + 68, 0, "W"),
  );
  for (const option of APPLY_ORDER) b.emit(StoreImm(R10, at(option, "rc"), NOT_CALLED, "W"));

  // Before: what getsockopt would answer.
  b.emit(...keepOpen(o, R2, R7), StoreMem(R10, at("keepalive", "before"), R2, "W"));
  const seconds = (option: OptionName, own: number, net: number) => {
    b.emit(LoadMem(R2, R7, own, "W"), JNE32.Imm(R2, 0, `${option}_own`), LoadMem(R2, R8, net, "W"));
    b.label(`${option}_own`).emit(Div.Imm(R2, spec.hz), StoreMem(R10, at(option, "before"), R2, "W"));
  };
  seconds("idle", o.tcpKeepaliveTime, o.netKeepaliveTime);
  seconds("interval", o.tcpKeepaliveIntvl, o.netKeepaliveIntvl);
  b.emit(
    LoadMem(R2, R7, o.tcpKeepaliveProbes, "B"),
    JNE32.Imm(R2, 0, "count_own"),
    LoadMem(R2, R8, o.netKeepaliveProbes, "B"),
  );
  b.label("count_own").emit(
    StoreMem(R10, at("count", "before"), R2, "W"),
    LoadMem(R2, R7, o.tcpUserTimeout, "W"),
    StoreMem(R10, at("userTimeout", "before"), R2, "W"),
  );
  // After: the socket's own, then what the rule changes.
  for (const option of APPLY_ORDER) {
    b.emit(LoadMem(R2, R10, at(option, "before"), "W"), StoreMem(R10, at(option, "after"), R2, "W"));
  }
  if (spec.onlyOff) b.emit(LoadMem(R2, R10, at("keepalive", "before"), "W"), JNE32.Imm(R2, 0, "write"));
  const changed = decide(b, spec);
  if (!spec.dryRun) for (const option of APPLY_ORDER) if (changed.has(option)) apply(b, option);
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

/** Emit the rule that sets the record's after-values; returns the options it may change. */
function decide(b: ProgramBuilder, spec: BulkSpec): Set<OptionName> {
  const set = (option: OptionName, value: number) => b.emit(StoreImm(R10, at(option, "after"), value, "W"));
  if (spec.disable) {
    set("keepalive", 0);
    return new Set(["keepalive"]);
  }
  const s = spec.settings;
  const named = (["idle", "interval", "count", "userTimeout"] as const).filter((k) => s[k] !== undefined);
  set("keepalive", 1);
  if (spec.mode === "force") {
    for (const k of named) set(k, s[k] as number);
    return new Set(["keepalive", ...named]);
  }
  // strengthen (settings.ts strengthen): 64-bit arithmetic, since a sysctl may hold more than the kernel's
  // option limits, and idle + interval × count of such values does not fit 32 bits.
  const have = (option: OptionName, reg: Reg) => LoadMem(reg, R10, at(option, "before"), "W");
  if (s.idle !== undefined) {
    b.emit(have("idle", R2), JLE.Imm(R2, s.idle, "idle_kept"));
    set("idle", s.idle);
    b.label("idle_kept");
  }
  if (s.interval !== undefined || s.count !== undefined) {
    // r3 = the socket's detection time, r4 = the request's (a value it does not name is the socket's).
    const want = (option: "idle" | "interval" | "count", reg: Reg) => {
      const v = s[option];
      return v === undefined ? have(option, reg) : Mov.Imm(reg, v);
    };
    b.emit(
      have("interval", R3),
      have("count", R4),
      Mul.Reg(R3, R4),
      have("idle", R4),
      Add.Reg(R3, R4),
      want("interval", R4),
      want("count", R5),
      Mul.Reg(R4, R5),
      want("idle", R5),
      Add.Reg(R4, R5),
      JGE.Reg(R4, R3, "pair_kept"),
    );
    if (s.interval !== undefined) set("interval", s.interval);
    if (s.count !== undefined) set("count", s.count);
    b.label("pair_kept");
  }
  // A requested 0 (or none) keeps the socket's user timeout; else the smaller non-zero one.
  if (s.userTimeout) {
    b.emit(have("userTimeout", R2), JEq.Imm(R2, 0, "ut_set"), JLE.Imm(R2, s.userTimeout, "ut_kept"));
    b.label("ut_set");
    set("userTimeout", s.userTimeout);
    b.label("ut_kept");
  }
  return new Set(["keepalive", ...named]);
}

/** bpf_setsockopt of one option where its after-value differs from its before-value; to `write` if it fails. */
function apply(b: ProgramBuilder, option: OptionName): void {
  const [level, name] = SOCKOPTS[option];
  b.emit(
    LoadMem(R2, R10, at(option, "after"), "W"),
    LoadMem(R3, R10, at(option, "before"), "W"),
    JEq.Reg(R2, R3, `${option}_done`),
    StoreMem(R10, VALUE, R2, "W"),
    Mov.Reg(R1, R7),
    Mov.Imm(R2, level),
    Mov.Imm(R3, name),
    Mov.Reg(R4, R10),
    Add.Imm(R4, VALUE),
    Mov.Imm(R5, 4),
    Call(Fn.setsockopt),
    StoreMem(R10, at(option, "rc"), R0, "W"),
    JNE.Imm(R0, 0, "write"),
  );
  b.label(`${option}_done`);
}
