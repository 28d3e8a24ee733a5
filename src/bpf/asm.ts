/**
 * A small typed eBPF assembler: instructions are values built by readable constructors, jumps name their
 * target by symbol, and `assemble` resolves the labels into offsets and encodes the bytes
 * (Documentation/bpf/standardization/instruction-set.rst; include/uapi/linux/bpf.h, bpf_common.h). Each
 * instruction prints itself as the verifier's log does (print_bpf_insn, kernel/bpf/disasm.c), a jump with its
 * label where the log has "pc+N"; a Listing prints a program with its labels, so that a verifier error can say
 * where in it the rejected instruction is (VerifierError in src/sys/bpf.ts).
 *
 *   Mov.Reg(R6, R1)                  r6 = r1
 *   LoadMem(R2, R6, 0, "W")          r2 = *(u32 *)(r6 + 0)
 *   JEq32.Imm(R2, 4, "set")          if (u32)r2 == 4 goto set
 *   Call(Fn.setsockopt)              r0 = bpf_setsockopt(r1..r5)
 *   Return().withSymbol("out")       out: exit
 */

export type Reg = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10;
export const R0: Reg = 0;
export const R1: Reg = 1;
export const R2: Reg = 2;
export const R3: Reg = 3;
export const R4: Reg = 4;
export const R5: Reg = 5;
export const R6: Reg = 6;
export const R7: Reg = 7;
export const R8: Reg = 8;
export const R9: Reg = 9;
/** The read-only frame pointer; the stack is the 512 bytes below it. */
export const R10: Reg = 10;

// Instruction classes, sizes, modes, operations (include/uapi/linux/bpf_common.h and bpf.h).
const CLASS = { LD: 0x00, LDX: 0x01, ST: 0x02, STX: 0x03, ALU: 0x04, JMP: 0x05, JMP32: 0x06, ALU64: 0x07 } as const;
const SIZE = { W: 0x00, H: 0x08, B: 0x10, DW: 0x18 } as const;
const MODE_MEM = 0x60;
const LD_IMM64 = CLASS.LD | SIZE.DW; // mode BPF_IMM (0)
const SRC_K = 0x00;
const SRC_X = 0x08;
const ALU_OP = {
  add: 0x00,
  sub: 0x10,
  mul: 0x20,
  div: 0x30,
  or: 0x40,
  and: 0x50,
  lsh: 0x60,
  rsh: 0x70,
  mov: 0xb0,
  end: 0xd0,
} as const;
const JMP_OP = {
  ja: 0x00,
  jeq: 0x10,
  jgt: 0x20,
  jge: 0x30,
  jset: 0x40,
  jne: 0x50,
  call: 0x80,
  exit: 0x90,
  jlt: 0xa0,
  jle: 0xb0,
} as const;

export type Size = keyof typeof SIZE;

/** Helper functions by their number in enum bpf_func_id (include/uapi/linux/bpf.h). */
export const Fn = {
  mapLookupElem: 1,
  mapUpdateElem: 2,
  ktimeGetNs: 5,
  getCurrentPidTgid: 14,
  getCurrentTask: 35,
  getCurrentComm: 16,
  probeReadKernel: 113,
  ringbufOutput: 130,
  mapDeleteElem: 3,
  setsockopt: 49,
  skStorageGet: 107,
  jiffies64: 118,
  getsockopt: 57,
  seqWrite: 127,
  skcToTcpSock: 137,
  skcToTcpTimewaitSock: 138,
  skcToTcpRequestSock: 139,
  sockFromFile: 162,
} as const;

/** How the verifier's log writes each operation (bpf_alu_string and bpf_jmp_string in kernel/bpf/disasm.c). */
const ALU_TEXT = new Map<number, string>([
  [ALU_OP.add, "+="],
  [ALU_OP.sub, "-="],
  [ALU_OP.mul, "*="],
  [ALU_OP.div, "/="],
  [ALU_OP.or, "|="],
  [ALU_OP.and, "&="],
  [ALU_OP.lsh, "<<="],
  [ALU_OP.rsh, ">>="],
  [ALU_OP.mov, "="],
]);
const JMP_TEXT = new Map<number, string>([
  [JMP_OP.jeq, "=="],
  [JMP_OP.jgt, ">"],
  [JMP_OP.jge, ">="],
  [JMP_OP.jset, "&"],
  [JMP_OP.jne, "!="],
  [JMP_OP.jlt, "<"],
  [JMP_OP.jle, "<="],
]);
const SIZE_TEXT = new Map<number, string>([
  [SIZE.W, "u32"],
  [SIZE.H, "u16"],
  [SIZE.B, "u8"],
  [SIZE.DW, "u64"],
]);
/** The kernel's names of the helpers: bpf_setsockopt, bpf_seq_write... */
const FN_TEXT = new Map<number, string>(
  Object.entries(Fn).map(([name, id]) => [id, `bpf_${name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}`]),
);

export class Instruction {
  constructor(
    readonly opcode: number,
    readonly dst: Reg,
    readonly src: Reg,
    readonly off: number,
    readonly imm: number,
    /** The label this jump goes to; resolved into `off` by assemble(). */
    readonly target?: string,
    /** The label of this instruction. */
    readonly symbol?: string,
  ) {}

  /** This instruction, labelled so that jumps can name it. */
  withSymbol(symbol: string): Instruction {
    return new Instruction(this.opcode, this.dst, this.src, this.off, this.imm, this.target, symbol);
  }

  /** As the verifier's log prints it ("r2 = *(u32 *)(r6 +4)", "if w2 == 0x4 goto set"), without the label. */
  toString(): string {
    const cls = this.opcode & 0x07;
    const op = this.opcode & 0xf0;
    const x = (this.opcode & SRC_X) !== 0;
    const mem = (reg: Reg) =>
      `*(${SIZE_TEXT.get(this.opcode & 0x18)} *)(r${reg} ${this.off < 0 ? "" : "+"}${this.off})`;
    switch (cls) {
      case CLASS.ALU:
      case CLASS.ALU64: {
        if (op === ALU_OP.end) return `r${this.dst} = ${x ? "be" : "le"}${this.imm} r${this.dst}`;
        const r = cls === CLASS.ALU ? "w" : "r";
        return `${r}${this.dst} ${ALU_TEXT.get(op)} ${x ? `${r}${this.src}` : this.imm}`;
      }
      case CLASS.JMP:
      case CLASS.JMP32: {
        if (op === JMP_OP.exit) return "exit";
        if (op === JMP_OP.call && this.src === PSEUDO_KFUNC_CALL) return `call kernel-function#${this.imm}`;
        if (op === JMP_OP.call) return `call ${FN_TEXT.get(this.imm) ?? "unknown"}#${this.imm}`;
        const to = `goto ${this.target ?? `pc${this.off < 0 ? "" : "+"}${this.off}`}`;
        if (op === JMP_OP.ja) return to;
        const r = cls === CLASS.JMP32 ? "w" : "r";
        return `if ${r}${this.dst} ${JMP_TEXT.get(op)} ${x ? `${r}${this.src}` : `0x${(this.imm >>> 0).toString(16)}`} ${to}`;
      }
      case CLASS.LDX:
        return `r${this.dst} = ${mem(this.src)}`;
      case CLASS.STX:
        return `${mem(this.dst)} = r${this.src}`;
      case CLASS.ST:
        return `${mem(this.dst)} = ${this.imm}`;
      case CLASS.LD:
        // The verifier's log prints the two slots of a 64-bit load as one line, and the second not at all.
        if (this.opcode === LD_IMM64) return `r${this.dst} = ${this.src === 1 ? `map[fd:${this.imm}]` : this.imm} ll`;
        return "(second half of ld_imm64)";
    }
    return `(${this.opcode.toString(16).padStart(2, "0")})`;
  }
}

function alu(cls: number, op: number) {
  return {
    Imm: (dst: Reg, imm: number) => new Instruction(cls | op | SRC_K, dst, 0, 0, imm | 0),
    Reg: (dst: Reg, src: Reg) => new Instruction(cls | op | SRC_X, dst, src, 0, 0),
  };
}

/** 64-bit ALU operations. */
export const Mov = alu(CLASS.ALU64, ALU_OP.mov);
export const Add = alu(CLASS.ALU64, ALU_OP.add);
export const Sub = alu(CLASS.ALU64, ALU_OP.sub);
export const And = alu(CLASS.ALU64, ALU_OP.and);
export const Lsh = alu(CLASS.ALU64, ALU_OP.lsh);
export const Rsh = alu(CLASS.ALU64, ALU_OP.rsh);
export const Mul = alu(CLASS.ALU64, ALU_OP.mul);
/** Unsigned division; by zero gives 0 (the verifier rejects a zero immediate). */
export const Div = alu(CLASS.ALU64, ALU_OP.div);
/** 32-bit ALU operations (the upper half of dst is zeroed). */
export const Add32 = alu(CLASS.ALU, ALU_OP.add);
export const Sub32 = alu(CLASS.ALU, ALU_OP.sub);
export const Or32 = alu(CLASS.ALU, ALU_OP.or);
export const Lsh32 = alu(CLASS.ALU, ALU_OP.lsh);
export const Mul32 = alu(CLASS.ALU, ALU_OP.mul);
export const And32 = alu(CLASS.ALU, ALU_OP.and);
export const Rsh32 = alu(CLASS.ALU, ALU_OP.rsh);
export const Mov32 = alu(CLASS.ALU, ALU_OP.mov);

/** dst = bswap to big endian of its low `bits` (16, 32 or 64): a network-order value read on a little-endian host. */
export function ToBE(dst: Reg, bits: 16 | 32 | 64): Instruction {
  return new Instruction(CLASS.ALU | ALU_OP.end | SRC_X, dst, 0, 0, bits);
}

function jmp(cls: number, op: number) {
  return {
    Imm: (dst: Reg, imm: number, target: string) => new Instruction(cls | op | SRC_K, dst, 0, 0, imm | 0, target),
    Reg: (dst: Reg, src: Reg, target: string) => new Instruction(cls | op | SRC_X, dst, src, 0, 0, target),
  };
}

/** 32-bit compares: the operands' low halves, immediates not sign-extended (needs Linux 5.1+). */
export const JEq32 = jmp(CLASS.JMP32, JMP_OP.jeq);
export const JNE32 = jmp(CLASS.JMP32, JMP_OP.jne);
export const JGT32 = jmp(CLASS.JMP32, JMP_OP.jgt);
export const JGE32 = jmp(CLASS.JMP32, JMP_OP.jge);
export const JLT32 = jmp(CLASS.JMP32, JMP_OP.jlt);
export const JLE32 = jmp(CLASS.JMP32, JMP_OP.jle);
/** 64-bit compares. */
export const JEq = jmp(CLASS.JMP, JMP_OP.jeq);
export const JNE = jmp(CLASS.JMP, JMP_OP.jne);
/** Unsigned 64-bit compares. */
export const JGE = jmp(CLASS.JMP, JMP_OP.jge);
export const JGT = jmp(CLASS.JMP, JMP_OP.jgt);
export const JLE = jmp(CLASS.JMP, JMP_OP.jle);

export function Ja(target: string): Instruction {
  return new Instruction(CLASS.JMP | JMP_OP.ja, 0, 0, 0, 0, target);
}

/** dst = *(size *)(src + off) */
export function LoadMem(dst: Reg, src: Reg, off: number, size: Size): Instruction {
  return new Instruction(CLASS.LDX | MODE_MEM | SIZE[size], dst, src, off, 0);
}

/** *(size *)(dst + off) = src */
export function StoreMem(dst: Reg, off: number, src: Reg, size: Size): Instruction {
  return new Instruction(CLASS.STX | MODE_MEM | SIZE[size], dst, src, off, 0);
}

/**
 * lock *(u64 *)(dst + off) += src: BPF_STX | BPF_ATOMIC | BPF_DW with imm BPF_ADD (0), the old XADD (Linux 3.18+).
 */
export function AtomicAdd64(dst: Reg, off: number, src: Reg): Instruction {
  return new Instruction(CLASS.STX | 0xc0 | SIZE.DW, dst, src, off, 0);
}

/** *(size *)(dst + off) = imm */
export function StoreImm(dst: Reg, off: number, imm: number, size: Size): Instruction {
  return new Instruction(CLASS.ST | MODE_MEM | SIZE[size], dst, 0, off, imm | 0);
}

/**
 * dst = the map that `mapFd` names: BPF_LD | BPF_IMM | BPF_DW with src BPF_PSEUDO_MAP_FD (1), which the verifier
 * turns into the map's address (resolve_pseudo_ldimm64). Two instruction slots: the second holds the upper half
 * of the immediate (zero) and counts for jumps as the kernel counts it.
 */
export function LoadMapFd(dst: Reg, mapFd: number): [Instruction, Instruction] {
  return [new Instruction(LD_IMM64, dst, 1, 0, mapFd), new Instruction(0, 0, 0, 0, 0)];
}

/** `dst` = a 64-bit constant (an address of the kernel's, say): the two halves of an ld_imm64. */
export function LoadImm64(dst: Reg, value: bigint): [Instruction, Instruction] {
  const low = Number(value & 0xffff_ffffn) | 0;
  const high = Number((value >> 32n) & 0xffff_ffffn) | 0;
  return [new Instruction(LD_IMM64, dst, 0, 0, low), new Instruction(0, 0, 0, 0, high)];
}

export function Call(fn: number): Instruction {
  return new Instruction(CLASS.JMP | JMP_OP.call, 0, 0, 0, fn);
}

/** BPF_PSEUDO_KFUNC_CALL (include/uapi/linux/bpf.h): a call's imm is the BTF id of a kernel function (a kfunc). */
const PSEUDO_KFUNC_CALL = 2;

/**
 * A call of the kernel function whose FUNC type is `btfId` in vmlinux's BTF (off 0: vmlinux, no module), which the
 * kernel allows for the program's type (kfuncs: Linux 5.13; each kfunc says its own version where it is used).
 */
export function KfuncCall(btfId: number): Instruction {
  return new Instruction(CLASS.JMP | JMP_OP.call, 0, PSEUDO_KFUNC_CALL as Reg, 0, btfId);
}

export function Return(): Instruction {
  return new Instruction(CLASS.JMP | JMP_OP.exit, 0, 0, 0, 0);
}

/** Resolve labels and encode: 8 bytes per instruction (opcode, dst/src nibbles, s16 offset, s32 immediate). */
export function assemble(program: readonly Instruction[]): Buffer {
  const at = new Map<string, number>();
  program.forEach((insn, i) => {
    if (insn.symbol === undefined) return;
    if (at.has(insn.symbol)) throw new Error(`bpf asm: label ${insn.symbol} defined twice`);
    at.set(insn.symbol, i);
  });
  const out = Buffer.alloc(program.length * 8);
  program.forEach((insn, i) => {
    let off = insn.off;
    if (insn.target !== undefined) {
      const to = at.get(insn.target);
      if (to === undefined) throw new Error(`bpf asm: jump to undefined label ${insn.target}`);
      off = to - (i + 1);
      if (off < -32768 || off > 32767) throw new Error(`bpf asm: jump to ${insn.target} is too far`);
    }
    out.writeUInt8(insn.opcode, i * 8);
    out.writeUInt8((insn.src << 4) | insn.dst, i * 8 + 1); // little endian: dst in the low nibble
    out.writeInt16LE(off, i * 8 + 2);
    out.writeInt32LE(insn.imm, i * 8 + 4);
  });
  return out;
}

/**
 * A program as text: each instruction with its index, under the label that starts there ("out:"). The one
 * place where a verifier error learns which label an instruction number stands at.
 */
export class Listing {
  constructor(private readonly program: readonly Instruction[]) {}

  /** The label of instruction `i`, or of the nearest one before it with the distance ("set+2"); none before. */
  nameOf(i: number): string | undefined {
    for (let j = Math.min(i, this.program.length - 1); j >= 0; j--) {
      const symbol = this.program[j]?.symbol;
      if (symbol !== undefined) return j === i ? symbol : `${symbol}+${i - j}`;
    }
    return undefined;
  }

  /** The lines of instructions `from` to `to` (both kept within the program), `mark` flagged with ">". */
  lines(from = 0, to = this.program.length - 1, mark?: number): string[] {
    const last = Math.min(to, this.program.length - 1);
    const width = String(last).length;
    const out: string[] = [];
    for (let i = Math.max(from, 0); i <= last; i++) {
      const insn = this.program[i] as Instruction;
      if (insn.symbol !== undefined) out.push(`${insn.symbol}:`);
      out.push(`${i === mark ? ">" : " "} ${String(i).padStart(width)}: ${insn}`);
    }
    return out;
  }

  toString(): string {
    return this.lines().join("\n");
  }
}

/**
 * Builds a program in order: `label(name)` names the next instruction emitted (several labels may name the
 * same one), `emit(...)` appends. build() returns the instructions with every jump pointing at a symbol.
 */
export class ProgramBuilder {
  private readonly insns: Instruction[] = [];
  private pending: string[] = [];
  private readonly alias = new Map<string, string>();

  label(name: string): this {
    this.pending.push(name);
    return this;
  }

  emit(...insns: Instruction[]): this {
    for (let insn of insns) {
      const [first, ...rest] = this.pending;
      if (first !== undefined) {
        if (insn.symbol !== undefined) this.alias.set(first, insn.symbol);
        else insn = insn.withSymbol(first);
        for (const r of rest) this.alias.set(r, insn.symbol as string);
        this.pending = [];
      }
      this.insns.push(insn);
    }
    return this;
  }

  build(): Instruction[] {
    if (this.pending.length) throw new Error(`bpf asm: label ${this.pending[0]} names no instruction`);
    return this.insns.map((i) => {
      const to = i.target === undefined ? undefined : this.alias.get(i.target);
      return to === undefined ? i : new Instruction(i.opcode, i.dst, i.src, i.off, i.imm, to, i.symbol);
    });
  }
}
