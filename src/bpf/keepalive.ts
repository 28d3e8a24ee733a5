/**
 * The sock_ops program of `tcpka enforce`, generated from the settings and the --only/--except rules.
 *
 * It runs for every TCP socket of the cgroup at three points (enum bpf_sock_ops_op, include/uapi/linux/bpf.h):
 * ACTIVE_ESTABLISHED_CB (4, a connect() completed), PASSIVE_ESTABLISHED_CB (5, a connection was accepted) and
 * TCP_LISTEN_CB (11, listen(); accepted sockets inherit). On each it decides with the rules (peer address;
 * service port = the peer port of an outgoing connection, the local port of an accepted one or a listener)
 * and then sets the options with bpf_setsockopt. In strengthen mode it first reads the socket's idle, interval,
 * count and user timeout with bpf_getsockopt and applies the strengthen rule of src/settings.ts (where a read
 * fails it sets the requested value); SO_KEEPALIVE is turned on in both modes.
 * It cannot see a program's own setsockopt calls made after the connection is established.
 */
import { endianness } from "node:os";
import { addressBytes, maskBytes } from "../addresses.js";
import { type EndpointRule, holdsMapped } from "../filter.js";
import { AF_INET, AF_INET6 } from "../kernel/constants.js";
import { APPLY_ORDER, SOCKOPTS } from "../kernel/sockopts.js";
import type { ApplyMode, KeepAliveSettings, OptionName } from "../settings.js";
import {
  Add,
  Add32,
  And32,
  Call,
  Fn,
  type Instruction,
  Ja,
  JEq,
  JEq32,
  JGE32,
  JGT32,
  JLE32,
  JLT32,
  JNE,
  JNE32,
  LoadMapFd,
  LoadMem,
  Mov,
  Mov32,
  Mul32,
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
  Rsh32,
  StoreImm,
  ToBE,
} from "./asm.js";
import { COUNTER, emitCount } from "./counters.js";
import { emitApply, emitDecide, emitKeep, emitRead, type RuleOffsets, type RuleSlots } from "./keepalive-rule.js";

// struct bpf_sock_ops (include/uapi/linux/bpf.h): the u32 fields the program reads.
const CTX = {
  op: 0,
  family: 20,
  remoteIp4: 24,
  remoteIp6: 32,
  remotePort: 64, // network order; in the upper 16 bits on little-endian kernels (sock_ops_convert_ctx_access)
  localPort: 68, // host order
  sk: 184, // __bpf_md_ptr(struct bpf_sock *, sk): PTR_TO_SOCKET_OR_NULL (sock_ops_is_valid_access)
} as const;
const OP = { activeEstablished: 4, passiveEstablished: 5, tcpListen: 11 } as const;
const SCRATCH = -8; // stack slot for option values
/** Where strengthen keeps the socket's idle, interval and count while it decides. */
const STACK = { idle: -16, interval: -24, count: -32 } as const;
const COUNT_SLOT = -56;
/** The rule's slots where the settings are read from the socket itself (keepalive-rule.ts). */
const RULE_SLOTS: RuleSlots = {
  at: (option, which) => {
    const i = ["keepalive", "idle", "interval", "count", "userTimeout"].indexOf(option);
    if (which === "rc") throw new Error("sock_ops program: no rc slots");
    return (which === "before" ? -8 : -28) - 4 * i;
  },
  value: -48,
};

/**
 * How the program reads a socket's settings: from its struct tcp_sock through a BTF pointer (bpf_skc_to_tcp_sock
 * on ctx->sk, Linux 5.10 for sock_ops' sk, BTF), a few loads where bpf_getsockopt costs a helper call each; or,
 * without `direct`, with bpf_getsockopt.
 */
export interface DirectReads {
  offsets: RuleOffsets;
  hz: number;
}

export interface EnforceSpec {
  settings: KeepAliveSettings;
  mode: ApplyMode;
  only: readonly EndpointRule[];
  except: readonly EndpointRule[];
}

/** Network-order bytes as the u32 that a 32-bit load of them gives on this host. */
function word(bytes: Buffer, i: number): number {
  return endianness() === "LE" ? bytes.readUInt32LE(i * 4) : bytes.readUInt32BE(i * 4);
}

/** The third u32 of an IPv4-mapped address (::ffff:a.b.c.d), as loaded from the context. */
const MAPPED_WORD = word(Buffer.from([0, 0, 0xff, 0xff]), 0);

/** Code that falls through when the connection matches `r`, and jumps to `fail` when it does not. */
function ruleCheck(p: ProgramBuilder, r: EndpointRule, fail: string, id: string): void {
  const ports = r.ports;
  if (ports && ports.from === ports.to) p.emit(JNE32.Imm(R7, ports.from, fail));
  else if (ports) p.emit(JLT32.Imm(R7, ports.from, fail), JGT32.Imm(R7, ports.to, fail));
  const cidr = r.cidr;
  if (!cidr) return;
  p.emit(LoadMem(R9, R6, CTX.family, "W"));
  const net = addressBytes(cidr.address, cidr.family);
  const mask = maskBytes(cidr.prefix, net.length);
  if (cidr.family === 4) {
    // An AF_INET6 socket talking to an IPv4 peer has it as ::ffff:a.b.c.d.
    p.emit(
      JEq32.Imm(R9, AF_INET, `${id}_v4`),
      JNE32.Imm(R9, AF_INET6, fail),
      LoadMem(R2, R6, CTX.remoteIp6, "W"),
      JNE32.Imm(R2, 0, fail),
      LoadMem(R2, R6, CTX.remoteIp6 + 4, "W"),
      JNE32.Imm(R2, 0, fail),
      LoadMem(R2, R6, CTX.remoteIp6 + 8, "W"),
      JNE32.Imm(R2, MAPPED_WORD, fail),
      LoadMem(R2, R6, CTX.remoteIp6 + 12, "W"),
      Ja(`${id}_cmp`),
    );
    p.label(`${id}_v4`).emit(LoadMem(R2, R6, CTX.remoteIp4, "W"));
    p.label(`${id}_cmp`).emit(And32.Imm(R2, word(mask, 0)), JNE32.Imm(R2, word(net, 0) & word(mask, 0), fail));
    return;
  }
  p.emit(JNE32.Imm(R9, AF_INET6, fail));
  if (holdsMapped(cidr)) {
    // An IPv4 peer of an AF_INET6 socket (::ffff:a.b.c.d) is an IPv4 peer: no IPv6 network holds it (::/0 neither).
    p.emit(
      LoadMem(R2, R6, CTX.remoteIp6, "W"),
      JNE32.Imm(R2, 0, `${id}_v6`),
      LoadMem(R2, R6, CTX.remoteIp6 + 4, "W"),
      JNE32.Imm(R2, 0, `${id}_v6`),
      LoadMem(R2, R6, CTX.remoteIp6 + 8, "W"),
      JEq32.Imm(R2, MAPPED_WORD, fail),
    );
    p.label(`${id}_v6`); // names the next instruction emitted, which may be the caller's jump (::/0)
  }
  for (let k = 0; k < 4; k++) {
    const m = word(mask, k);
    if (m === 0) continue;
    p.emit(
      LoadMem(R2, R6, CTX.remoteIp6 + 4 * k, "W"),
      And32.Imm(R2, m),
      JNE32.Imm(R2, (word(net, k) & m) >>> 0, fail),
    );
  }
}

/** bpf_setsockopt or bpf_getsockopt (ctx, level, name, fp + slot, 4), with the stack slot first holding `value`. */
function sockoptCall(p: ProgramBuilder, fn: number, option: OptionName, value: number, slot = SCRATCH): void {
  const [level, name] = SOCKOPTS[option];
  p.emit(
    StoreImm(R10, slot, value, "W"),
    Mov.Reg(R1, R6),
    Mov.Imm(R2, level),
    Mov.Imm(R3, name),
    Mov.Reg(R4, R10),
    Add.Imm(R4, slot),
    Mov.Imm(R5, 4),
    Call(fn),
  );
}

function setOption(p: ProgramBuilder, option: OptionName, value: number | undefined): void {
  if (value !== undefined) sockoptCall(p, Fn.setsockopt, option, value);
}

/**
 * The strengthen rule of src/settings.ts (strengthen) on idle, interval and count: read the socket's three with
 * bpf_getsockopt (if a read fails, set the requested values); idle is lowered to the requested one; interval and
 * count are set to the requested pair only when the request alone detects a dead peer sooner (idle + interval ×
 * count, in u32: at most 32767 + 32767 × 127), a tie keeping the socket's. Missing requested values are the socket's.
 */
function strengthenTimes(p: ProgramBuilder, s: KeepAliveSettings): void {
  const slots = [
    ["idle", STACK.idle],
    ["interval", STACK.interval],
    ["count", STACK.count],
  ] as const;
  for (const [option, slot] of slots) {
    sockoptCall(p, Fn.getsockopt, option, 0, slot);
    p.emit(JNE.Imm(R0, 0, "times_unread"));
  }
  // r7 = the socket's idle (r6..r9 survive helper calls).
  p.emit(LoadMem(R7, R10, STACK.idle, "W"));
  if (s.idle !== undefined) {
    p.emit(JLE32.Imm(R7, s.idle, "idle_kept"));
    setOption(p, "idle", s.idle);
    p.label("idle_kept");
  }
  if (s.interval !== undefined || s.count !== undefined) {
    // r8 = the socket's detection time, r9 = the request's.
    p.emit(
      LoadMem(R8, R10, STACK.interval, "W"),
      LoadMem(R9, R10, STACK.count, "W"),
      Mul32.Reg(R8, R9),
      Add32.Reg(R8, R7),
      s.interval === undefined ? LoadMem(R9, R10, STACK.interval, "W") : Mov32.Imm(R9, s.interval),
    );
    if (s.count === undefined) p.emit(LoadMem(R2, R10, STACK.count, "W"), Mul32.Reg(R9, R2));
    else p.emit(Mul32.Imm(R9, s.count));
    p.emit(s.idle === undefined ? Add32.Reg(R9, R7) : Add32.Imm(R9, s.idle), JGE32.Reg(R9, R8, "times_done"));
    setOption(p, "interval", s.interval);
    setOption(p, "count", s.count);
  }
  p.emit(Ja("times_done"));
  p.label("times_unread");
  setOption(p, "idle", s.idle);
  setOption(p, "interval", s.interval);
  setOption(p, "count", s.count);
  p.label("times_done");
}

/** The smaller non-zero user timeout: set it unless the socket has one already at most as long (or the read fails). */
function strengthenUserTimeout(p: ProgramBuilder, value: number): void {
  sockoptCall(p, Fn.getsockopt, "userTimeout", 0);
  p.emit(JNE.Imm(R0, 0, "set_ut"), LoadMem(R2, R10, SCRATCH, "W"), JEq32.Imm(R2, 0, "set_ut"));
  p.emit(JLE32.Imm(R2, value, "ut_done"));
  p.label("set_ut");
  setOption(p, "userTimeout", value);
  p.label("ut_done");
}

/**
 * `marksFd`: a socket storage map (sockopt-hook.ts) in which every socket set up here is marked, so that the
 * setsockopt program keeps the rule on exactly these sockets when their program changes its options later (given
 * where rules choose the sockets). `countersFd`: counters.ts's map. `direct`: read the settings from the socket.
 */
export function keepaliveProgram(
  spec: EnforceSpec,
  marksFd?: number,
  countersFd?: number,
  direct?: DirectReads,
): Instruction[] {
  const p = new ProgramBuilder();
  const rules = [...spec.only, ...spec.except];
  // A listener has no peer yet: set it up only when no rule depends on the peer's address, as the shim does.
  const listeners = !rules.some((r) => r.cidr);

  p.emit(
    Mov.Reg(R6, R1),
    LoadMem(R2, R6, CTX.op, "W"),
    JEq32.Imm(R2, OP.activeEstablished, "active"),
    JEq32.Imm(R2, OP.passiveEstablished, "local_port"),
  );
  if (listeners) p.emit(JEq32.Imm(R2, OP.tcpListen, "local_port"));
  p.emit(Ja("out"));

  // The service port, in host order, in r7.
  p.label("active").emit(
    LoadMem(R7, R6, CTX.remotePort, "W"),
    JLE32.Imm(R7, 0xffff, "swap"), // kernels that do not shift it up
    Rsh32.Imm(R7, 16),
  );
  p.label("swap").emit(ToBE(R7, 16), Ja("filter"));
  p.label("local_port").emit(LoadMem(R7, R6, CTX.localPort, "W"));

  p.label("filter");
  spec.except.forEach((r, i) => {
    ruleCheck(p, r, `except_${i}_no`, `except_${i}`);
    p.emit(Ja("out"));
    p.label(`except_${i}_no`);
  });
  if (spec.only.length) {
    spec.only.forEach((r, i) => {
      ruleCheck(p, r, `only_${i}_no`, `only_${i}`);
      p.emit(Ja("apply"));
      p.label(`only_${i}_no`);
    });
    p.emit(Ja("out"));
  }

  p.label("apply");
  if (direct) applyDirect(p, spec, direct);
  else applyThroughHelpers(p, spec);
  if (countersFd !== undefined) emitCount(p, countersFd, COUNTER.setUp, COUNT_SLOT, "counted");
  if (marksFd !== undefined) {
    // bpf_sk_storage_get(marks, ctx->sk, NULL, BPF_SK_STORAGE_GET_F_CREATE): the storage is the mark.
    p.emit(
      LoadMem(R2, R6, CTX.sk, "DW"),
      JEq.Imm(R2, 0, "out"),
      ...LoadMapFd(R1, marksFd),
      Mov.Imm(R3, 0),
      Mov.Imm(R4, 1),
      Call(Fn.skStorageGet),
    );
  }
  // sock_ops programs return 1 (the reply is not used for these ops).
  p.label("out").emit(Mov.Imm(R0, 1), Return());
  return p.build();
}

/**
 * The settings read from the socket, the rule decided on them, and bpf_setsockopt only where a value changes,
 * in APPLY_ORDER (SO_KEEPALIVE last): an accepted socket that inherited its listener's settings costs no call.
 * Force compares with what the socket was given itself, strengthen with what getsockopt would answer.
 */
function applyDirect(p: ProgramBuilder, spec: EnforceSpec, d: DirectReads): void {
  p.emit(
    LoadMem(R2, R6, CTX.sk, "DW"),
    JEq.Imm(R2, 0, "out"),
    Mov.Reg(R1, R2),
    Call(Fn.skcToTcpSock),
    JEq.Imm(R0, 0, "out"),
    Mov.Reg(R7, R0),
    LoadMem(R8, R7, d.offsets.skcNet, "DW"), // tcp_sock begins with sock_common
  );
  emitRead(p, d.offsets, RULE_SLOTS, d.hz, R7, R8, spec.mode === "force");
  emitKeep(p, RULE_SLOTS);
  const changed = emitDecide(p, { disable: false, settings: spec.settings, mode: spec.mode }, RULE_SLOTS);
  for (const option of APPLY_ORDER) if (changed.has(option)) emitApply(p, option, RULE_SLOTS, R6);
}

/** The settings set (force) or read and decided on (strengthen) through bpf_setsockopt and bpf_getsockopt. */
function applyThroughHelpers(p: ProgramBuilder, spec: EnforceSpec): void {
  const s = spec.settings;
  // SO_KEEPALIVE last: on a socket with keepalive already on, each TCP_KEEPIDLE re-arms the keepalive timer
  // (tcp_sock_set_keepidle_locked); turning it on last arms it once, with the new idle time (tcp_set_keepalive ->
  // keepalive_time_when). It is set without being read, in both modes: on a socket that has it on already,
  // tcp_set_keepalive does nothing, and one call is cheaper than two.
  if (spec.mode === "force") {
    setOption(p, "idle", s.idle);
    setOption(p, "interval", s.interval);
    setOption(p, "count", s.count);
    setOption(p, "userTimeout", s.userTimeout);
  } else {
    if (s.idle !== undefined || s.interval !== undefined || s.count !== undefined) strengthenTimes(p, s);
    // A requested 0 means no user timeout: the socket's own stays.
    if (s.userTimeout) strengthenUserTimeout(p, s.userTimeout);
  }
  setOption(p, "keepalive", 1);
}
