/**
 * The cgroup setsockopt program of `tcpka enforce` (BPF_PROG_TYPE_CGROUP_SOCKOPT at BPF_CGROUP_SETSOCKOPT), so that
 * enforce keeps its rule when a program changes its keepalive options after connecting, as `tcpka run`'s shim
 * does (native/preload.c, setsockopt).
 *
 * The kernel runs it before its own handler of every setsockopt(2) of the cgroup's processes, with the socket
 * locked and the option's value copied into a kernel buffer that the program may rewrite
 * (__cgroup_bpf_run_filter_setsockopt, kernel/bpf/cgroup.c): returning 1 with ctx->optlen unchanged runs the
 * kernel's handler on that buffer, so the program's call goes on as it would have, with the value tcpka's rule
 * gives. What it does:
 * - on the cgroup's TCP sockets, from the moment it is attached (also those made before); where --only or --except
 *   rules choose the connections, only on those that the sock_ops program chose (keepalive.ts marks them in the
 *   socket storage map `marks`): other sockets, other processes and other options go through untouched;
 * - only for SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT and TCP_USER_TIMEOUT with at least 4 bytes and a value the
 *   kernel accepts (1..32767 s, 1..127 probes, a user timeout ≥ 0): an invalid one reaches the kernel as it
 *   was, so the program gets the kernel's EINVAL; a valid one is replaced at most by another valid one, so no
 *   return value or errno changes;
 * - SO_KEEPALIVE 0 becomes 1 (both modes); force replaces each requested option's value by the requested one;
 *   strengthen applies the rule of src/settings.ts (strengthen) to the socket's values as they will be after the
 *   call (read with bpf_getsockopt, the program's new value in its place): idle the smaller, interval and count
 *   together from whichever side detects a dead peer sooner, the smaller non-zero user timeout. Where the pair
 *   changes sides, the other option of the pair is set with bpf_setsockopt (allowed in this hook since 5.15).
 * Where a read fails, the call goes on unchanged.
 */
import {
  IPPROTO_TCP,
  MAX_TCP_KEEPCNT,
  MAX_TCP_KEEPIDLE,
  MAX_TCP_KEEPINTVL,
  SO_KEEPALIVE,
  SOL_SOCKET,
  SOL_TCP,
  TCP_KEEPCNT,
  TCP_KEEPIDLE,
  TCP_KEEPINTVL,
  TCP_USER_TIMEOUT,
} from "../kernel/constants.js";
import { APPLY_ORDER, SOCKOPTS } from "../kernel/sockopts.js";
import type { OptionName } from "../settings.js";
import {
  Add,
  Call,
  Fn,
  type Instruction,
  Ja,
  JEq,
  JEq32,
  JGT,
  JGT32,
  JLE32,
  JLT32,
  JNE,
  JNE32,
  LoadMapFd,
  LoadMem,
  Mov,
  Mov32,
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
  R9,
  R10,
  Return,
  StoreImm,
  StoreMem,
} from "./asm.js";
import { COUNTER, emitCount } from "./counters.js";
import type { EnforceSpec } from "./keepalive.js";
import { emitApply, emitDecide, emitKeep, type RuleSlots } from "./keepalive-rule.js";

// struct bpf_sockopt (include/uapi/linux/bpf.h): sk, optval, optval_end (__bpf_md_ptr, 8 bytes each), then s32s.
const CTX = { sk: 0, optval: 8, optvalEnd: 16, level: 24, optname: 28, optlen: 32 } as const;

/**
 * Stack slots: one for a value to set, the program's own value, and the counter's key (the rule's before and
 * after slots are RULE_SLOTS, further down).
 */
const STACK = { value: -32, own: -40, key: -48 } as const;

type Times = "idle" | "interval" | "count";
const TIMES: readonly Times[] = ["idle", "interval", "count"];
const MAX: Record<Times, number> = { idle: MAX_TCP_KEEPIDLE, interval: MAX_TCP_KEEPINTVL, count: MAX_TCP_KEEPCNT };

/**
 * The setsockopt program for `spec`. `marksFd`: the socket storage map that the sock_ops program marks the sockets
 * it chose in, where rules choose them; without it (no rules), every TCP socket of the cgroup is looked after.
 */
export function setsockoptProgram(spec: EnforceSpec, marksFd: number | undefined, countersFd?: number): Instruction[] {
  const p = new ProgramBuilder();
  const s = spec.settings;
  p.emit(
    Mov.Reg(R6, R1),
    LoadMem(R2, R6, CTX.level, "W"),
    LoadMem(R3, R6, CTX.optname, "W"),
    JEq32.Imm(R2, SOL_TCP, "tcp"),
    JNE32.Imm(R2, SOL_SOCKET, "out"),
    JEq32.Imm(R3, SO_KEEPALIVE, "opt_keepalive"),
    Ja("out"),
  );
  p.label("tcp").emit(
    JEq32.Imm(R3, TCP_KEEPIDLE, "opt_idle"),
    JEq32.Imm(R3, TCP_KEEPINTVL, "opt_interval"),
    JEq32.Imm(R3, TCP_KEEPCNT, "opt_count"),
    JEq32.Imm(R3, TCP_USER_TIMEOUT, "opt_userTimeout"),
    Ja("out"),
  );

  // Each option's code starts with `value`: is the socket marked, are 4 bytes there; r7 = optval, r8 = the value.
  const value = (label: string) => {
    p.label(label).emit(
      LoadMem(R2, R6, CTX.optlen, "W"),
      JLT32.Imm(R2, 4, "out"), // the kernel answers EINVAL (a negative optlen never reaches the hook)
    );
    if (marksFd !== undefined) {
      p.emit(
        ...LoadMapFd(R1, marksFd),
        LoadMem(R2, R6, CTX.sk, "DW"),
        Mov.Imm(R3, 0),
        Mov.Imm(R4, 0),
        Call(Fn.skStorageGet),
        JEq.Imm(R0, 0, "out"), // not a socket the sock_ops program chose
      );
    } else {
      // Every TCP socket (struct bpf_sock: protocol @12): not UDP, UNIX or MPTCP ones.
      p.emit(LoadMem(R2, R6, CTX.sk, "DW"), LoadMem(R2, R2, 12, "W"), JNE32.Imm(R2, IPPROTO_TCP, "out"));
    }
    p.emit(
      LoadMem(R7, R6, CTX.optval, "DW"),
      LoadMem(R2, R6, CTX.optvalEnd, "DW"),
      Mov.Reg(R3, R7),
      Add.Imm(R3, 4),
      JGT.Reg(R3, R2, "out"),
      LoadMem(R8, R7, 0, "W"),
      StoreMem(R10, STACK.own, R8, "W"),
    );
  };

  value("opt_keepalive");
  p.emit(JNE32.Imm(R8, 0, "out"), StoreImm(R7, 0, 1, "W"), Ja("done"));

  for (const o of TIMES) {
    value(`opt_${o}`);
    p.emit(JLT32.Imm(R8, 1, "out"), JGT32.Imm(R8, MAX[o], "out")); // invalid: the kernel's EINVAL
    if (spec.mode === "force") {
      const want = s[o];
      if (want !== undefined) p.emit(StoreImm(R7, 0, want, "W"));
      p.emit(Ja("done"));
    } else {
      strengthenTimes(p, spec, o);
    }
  }

  value("opt_userTimeout");
  const ut = s.userTimeout;
  p.emit(JGT32.Imm(R8, 0x7fffffff, "out")); // negative: the kernel's EINVAL
  if (spec.mode === "force") {
    if (ut !== undefined) p.emit(StoreImm(R7, 0, ut, "W"));
  } else if (ut) {
    // 0 (none) or a longer one than requested becomes the request.
    p.emit(JEq32.Imm(R8, 0, "ut_set"), JLE32.Imm(R8, ut, "out"));
    p.label("ut_set").emit(StoreImm(R7, 0, ut, "W"));
  }
  p.emit(Ja("done"));

  // Every option's code ends here with r7 = optval: counted where the value was replaced.
  p.label("done").emit(LoadMem(R2, R7, 0, "W"), LoadMem(R3, R10, STACK.own, "W"), JEq32.Reg(R2, R3, "out"));
  if (countersFd !== undefined) emitCount(p, countersFd, COUNTER.rewritten, STACK.key, "counted");
  // Returning 1 lets the kernel's handler run (0 would fail the call with EPERM), here on the replaced value.
  p.emit(Mov.Imm(R0, 1), Return());

  // A call passed through: ctx->optlen 0 tells the kernel to use the program's own buffer, as without the hook.
  // Any other optlen, also the unchanged one, makes it kmalloc a copy of the kernel's buffer for its handler
  // (__cgroup_bpf_run_filter_setsockopt): about 70 ns more on every setsockopt call of the cgroup (bench/enforce.ts).
  p.label("out").emit(Mov32.Imm(R2, 0), StoreMem(R6, CTX.optlen, R2, "W"), Mov.Imm(R0, 1), Return());
  return p.build();
}

/** r1..r5 for bpf_{get,set}sockopt(ctx->sk, level, name, fp + slot, 4). */
function sockoptArgs(p: ProgramBuilder, option: OptionName, slot: number): void {
  const [level, name] = SOCKOPTS[option];
  p.emit(
    LoadMem(R1, R6, CTX.sk, "DW"),
    Mov.Imm(R2, level),
    Mov.Imm(R3, name),
    Mov.Reg(R4, R10),
    Add.Imm(R4, slot),
    Mov.Imm(R5, 4),
  );
}

/** The rule's slots (keepalive-rule.ts): before and after for each option, 4 bytes each, below STACK's. */
const RULE_SLOTS: RuleSlots = {
  at: (option, which) => {
    if (which === "rc") throw new Error("setsockopt program: no rc slots");
    const i = ["keepalive", "idle", "interval", "count", "userTimeout"].indexOf(option);
    return (which === "before" ? -56 : -76) - 4 * i;
  },
  value: STACK.value,
};

/**
 * Strengthen when the program sets `o` of the three times to r8 (valid): the socket's other two read with
 * bpf_getsockopt, r8 in o's place, and the rule of keepalive-rule.ts (the one the sock_ops program and the bulk
 * change use) on the three; o's new value goes into optval, the other two are set where the rule changes them.
 * The user timeout and SO_KEEPALIVE are decided by their own calls, not here.
 */
function strengthenTimes(p: ProgramBuilder, spec: EnforceSpec, o: Times): void {
  const id = `st_${o}`;
  const before = (t: OptionName) => RULE_SLOTS.at(t, "before");
  for (const t of TIMES) {
    if (t === o) {
      p.emit(StoreMem(R10, before(t), R8, "W"));
      continue;
    }
    sockoptArgs(p, t, before(t));
    p.emit(Call(Fn.getsockopt), JNE.Imm(R0, 0, "out"));
  }
  // The two options the rule leaves alone here, so that every slot it copies is written.
  p.emit(StoreImm(R10, before("keepalive"), 1, "W"), StoreImm(R10, before("userTimeout"), 0, "W"));
  const { idle, interval, count } = spec.settings;
  emitKeep(p, RULE_SLOTS);
  emitDecide(p, { disable: false, settings: { idle, interval, count }, mode: "strengthen" }, RULE_SLOTS, id);
  p.emit(LoadMem(R2, R10, RULE_SLOTS.at(o, "after"), "W"), StoreMem(R7, 0, R2, "W"), LoadMem(R9, R6, CTX.sk, "DW"));
  for (const t of APPLY_ORDER)
    if (t !== o && (TIMES as readonly string[]).includes(t)) emitApply(p, t, RULE_SLOTS, R9, { id });
  p.emit(Ja("done"));
}
