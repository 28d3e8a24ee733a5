/**
 * The keepalive rule in BPF, shared by the programs that change sockets: the bulk change's TCP iterator
 * (bulk-keepalive.ts) and enforce's sock_ops program (keepalive.ts). Three steps, each on 4-byte stack slots of
 * the caller's choosing, one "before" and one "after" per option:
 *
 *  1. emitRead: a socket's settings straight from its struct tcp_sock (a BTF pointer) and its struct net, as
 *     getsockopt answers them (do_tcp_getsockopt): SO_KEEPALIVE from SOCK_KEEPOPEN in sk_flags; keepalive_time /
 *     keepalive_intvl / keepalive_probes, where 0 stands for the namespace's sysctl (keepalive_time_when() and
 *     friends, include/net/tcp.h), the two times divided by HZ; icsk_user_timeout. With `own`, a 0 stays 0: what
 *     the socket was given itself, which force compares with, so that a socket left to a sysctl that happens to
 *     equal the request is still given the request (and does not follow a later change of the sysctl).
 *  2. emitDecide: the rule of src/settings.ts on them (strengthen: idle the smaller, interval and count as a pair
 *     from whichever side detects a dead peer sooner, a tie keeping the socket's, the user timeout the smaller
 *     non-zero; force: the requested values; disable: keepalive off), into the after-slots.
 *  3. emitApply, option by option in APPLY_ORDER: bpf_setsockopt where after differs from before.
 */
import { SOCKOPTS } from "../kernel/sockopts.js";
import type { ApplyMode, KeepAliveSettings, OptionName } from "../settings.js";
import {
  Add,
  Call,
  Div,
  Fn,
  JEq,
  JGE,
  JLE,
  JNE,
  JNE32,
  LoadMem,
  Mov,
  Mul,
  type ProgramBuilder,
  R0,
  R1,
  R2,
  R3,
  R4,
  R5,
  R10,
  type Reg,
  StoreImm,
  StoreMem,
} from "./asm.js";
import { keepOpen, type TcpSocketOffsets } from "./tcp-sockets.js";

export type RuleOffsets = Pick<
  TcpSocketOffsets,
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
>;

/** Where the rule keeps its values: the stack offset (from r10) of an option's before, after and return code. */
export interface RuleSlots {
  at(option: OptionName, which: "before" | "after" | "rc"): number;
  /** a free 4-byte slot for a value to set */
  value: number;
}

export interface RuleSpec {
  disable: boolean;
  settings: KeepAliveSettings;
  mode: ApplyMode;
}

/**
 * Step 1: `tcp` holds a struct tcp_sock pointer, `net` its struct net (sk->__sk_common.skc_net). Uses r2.
 * `id` makes the labels unique in the program.
 */
export function emitRead(
  b: ProgramBuilder,
  o: RuleOffsets,
  slots: RuleSlots,
  hz: number,
  tcp: Reg,
  net: Reg,
  own = false,
  id = "r",
): void {
  if (!Number.isInteger(hz) || hz <= 0) throw new Error(`keepalive rule: HZ ${hz}`);
  const before = (option: OptionName) => slots.at(option, "before");
  b.emit(...keepOpen(o, R2, tcp), StoreMem(R10, before("keepalive"), R2, "W"));
  const seconds = (option: OptionName, field: number, sysctl: number) => {
    b.emit(LoadMem(R2, tcp, field, "W"));
    if (!own) b.emit(JNE32.Imm(R2, 0, `${id}_${option}_own`), LoadMem(R2, net, sysctl, "W"));
    b.label(`${id}_${option}_own`).emit(Div.Imm(R2, hz), StoreMem(R10, before(option), R2, "W"));
  };
  seconds("idle", o.tcpKeepaliveTime, o.netKeepaliveTime);
  seconds("interval", o.tcpKeepaliveIntvl, o.netKeepaliveIntvl);
  b.emit(LoadMem(R2, tcp, o.tcpKeepaliveProbes, "B"));
  if (!own) b.emit(JNE32.Imm(R2, 0, `${id}_count_own`), LoadMem(R2, net, o.netKeepaliveProbes, "B"));
  b.label(`${id}_count_own`).emit(
    StoreMem(R10, before("count"), R2, "W"),
    LoadMem(R2, tcp, o.tcpUserTimeout, "W"),
    StoreMem(R10, before("userTimeout"), R2, "W"),
  );
}

/** Between steps 1 and 2: every after-slot starts as its before-slot (what nothing changes). */
export function emitKeep(b: ProgramBuilder, slots: RuleSlots): void {
  for (const option of ["keepalive", "idle", "interval", "count", "userTimeout"] as const) {
    b.emit(LoadMem(R2, R10, slots.at(option, "before"), "W"), StoreMem(R10, slots.at(option, "after"), R2, "W"));
  }
}

/** Step 2, after emitKeep: the after-slots the rule changes. Returns the options it may change. */
export function emitDecide(b: ProgramBuilder, spec: RuleSpec, slots: RuleSlots, id = "r"): Set<OptionName> {
  const at = (option: OptionName, which: "before" | "after") => slots.at(option, which);
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
    b.emit(have("idle", R2), JLE.Imm(R2, s.idle, `${id}_idle_kept`));
    set("idle", s.idle);
    b.label(`${id}_idle_kept`);
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
      JGE.Reg(R4, R3, `${id}_pair_kept`),
    );
    if (s.interval !== undefined) set("interval", s.interval);
    if (s.count !== undefined) set("count", s.count);
    b.label(`${id}_pair_kept`);
  }
  // A requested 0 (or none) keeps the socket's user timeout; else the smaller non-zero one.
  if (s.userTimeout) {
    b.emit(have("userTimeout", R2), JEq.Imm(R2, 0, `${id}_ut_set`), JLE.Imm(R2, s.userTimeout, `${id}_ut_kept`));
    b.label(`${id}_ut_set`);
    set("userTimeout", s.userTimeout);
    b.label(`${id}_ut_kept`);
  }
  return new Set(["keepalive", ...named]);
}

/**
 * Step 3 for one option: bpf_setsockopt(`sock`, …) where its after-value differs from its before-value. `sock` is
 * what the program type's helper takes (the iterator's tcp_sock, sock_ops' context). With `rc`, the return code is
 * kept in the option's rc-slot and a failure jumps to `fail`; without, a failure is passed by.
 */
export function emitApply(
  b: ProgramBuilder,
  option: OptionName,
  slots: RuleSlots,
  sock: Reg,
  opts: { fail?: string; rc?: boolean; id?: string } = {},
): void {
  const [level, name] = SOCKOPTS[option];
  const done = `${opts.id ?? "r"}_${option}_done`;
  b.emit(
    LoadMem(R2, R10, slots.at(option, "after"), "W"),
    LoadMem(R3, R10, slots.at(option, "before"), "W"),
    JEq.Reg(R2, R3, done),
    StoreMem(R10, slots.value, R2, "W"),
    Mov.Reg(R1, sock),
    Mov.Imm(R2, level),
    Mov.Imm(R3, name),
    Mov.Reg(R4, R10),
    Add.Imm(R4, slots.value),
    Mov.Imm(R5, 4),
    Call(Fn.setsockopt),
  );
  if (opts.rc) b.emit(StoreMem(R10, slots.at(option, "rc"), R0, "W"));
  if (opts.fail) b.emit(JNE.Imm(R0, 0, opts.fail));
  b.label(done);
}
