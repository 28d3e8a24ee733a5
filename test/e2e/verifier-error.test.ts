/**
 * A program the kernel's verifier rejects, loaded through progLoad with its listing: the error names the
 * instruction and its label and shows the listing around it, whether the verifier stopped there while walking
 * the program (its log prints each instruction it walked) or named it before the walk (check_cfg). The
 * instructions the log prints read as the assembler prints them.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  Add,
  And32,
  assemble,
  Call,
  Fn,
  type Instruction,
  JEq32,
  Listing,
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
  R10,
  Return,
  StoreImm,
  StoreMem,
  ToBE,
} from "../../src/bpf/asm.js";
import { BPF_PROG_TYPE_SOCK_OPS } from "../../src/kernel/constants.js";
import { progLoad, VerifierError } from "../../src/sys/bpf.js";
import { needs } from "../helpers/env.js";

/** Load `program` and return the VerifierError it must raise. */
function rejection(program: Instruction[]): VerifierError {
  try {
    progLoad({
      type: BPF_PROG_TYPE_SOCK_OPS,
      insns: assemble(program),
      listing: new Listing(program),
      license: "GPL",
      name: "tcpka_t_reject",
    });
  } catch (e) {
    assert.ok(e instanceof VerifierError, String(e));
    return e;
  }
  assert.fail("the verifier accepted a program that reads a register never written");
}

test("the verifier stops at a read of a register never written: the error names its label and shows it", (t) => {
  if (!needs(t, { root: true })) return;
  const program = new ProgramBuilder()
    .emit(Mov.Reg(R6, R1), LoadMem(R2, R6, 0, "W"), Mov32.Imm(R3, 7), And32.Imm(R3, 0xff), ToBE(R3, 16))
    .emit(StoreMem(R10, -8, R3, "DW"), StoreImm(R10, -16, 5, "W"))
    .emit(Mov.Reg(R1, R6), Mov.Imm(R2, 1), Mov.Imm(R3, 9), Mov.Reg(R4, R10), Add.Imm(R4, -8), Mov.Imm(R5, 4))
    .emit(Call(Fn.getsockopt), JEq32.Imm(R0, 4, "out"))
    .label("read_unset")
    .emit(LoadMem(R0, R7, 0, "W")) // r7 was never written
    .label("out")
    .emit(Mov.Imm(R0, 1), Return())
    .build();
  const bad = program.findIndex((i) => i.symbol === "read_unset");
  const e = rejection(program);

  assert.equal(e.insn, bad);
  assert.equal(
    e.message,
    `the kernel's verifier rejected the BPF program (EACCES) at insn ${bad} (read_unset): R7 !read_ok`,
  );
  const hint = (e.hint ?? "").split("\n");
  assert.equal(hint[0], `the program around insn ${bad}:`);
  assert.deepEqual(hint.slice(1, 7), [
    `    ${bad - 3}: r5 = 4`,
    `    ${bad - 2}: call bpf_getsockopt#57`,
    `    ${bad - 1}: if w0 == 0x4 goto out`,
    "  read_unset:",
    `  > ${bad}: r0 = *(u32 *)(r7 +0)`,
    "  out:",
  ]);
  assert.ok(hint.includes("the last lines of its log:"), e.hint);

  // Every instruction the verifier walked, as its log prints it ("5: (dc) r3 = be16 r3 ; R3=..."), is the
  // assembler's text for it; a jump's target is "pc+N" there and its label here.
  const walked = [...e.log.matchAll(/^(\d+): \([0-9a-f]{2}\) (.*?)(?:\s+;.*)?$/gm)].map(([, n, text]) => [
    Number(n),
    text?.replace(/goto pc[+-]\d+$/, "goto"),
  ]);
  assert.equal(walked.length, bad + 1, e.log);
  assert.deepEqual(
    walked,
    walked.map(([n]) => [n, String(program[n as number]).replace(/goto \S+$/, "goto")]),
  );
});

test("an instruction the verifier finds unreachable before the walk: named by the label before it and how far", (t) => {
  if (!needs(t, { root: true })) return;
  const program = [Mov.Imm(R0, 1).withSymbol("start"), Return(), Mov.Imm(R0, 2), Return()];
  const e = rejection(program);
  assert.equal(e.insn, 2);
  assert.equal(
    e.message,
    "the kernel's verifier rejected the BPF program (EINVAL) at insn 2 (start+2): unreachable insn 2",
  );
  assert.deepEqual((e.hint ?? "").split("\n").slice(0, 6), [
    "the program around insn 2:",
    "  start:",
    "    0: r0 = 1",
    "    1: exit",
    "  > 2: r0 = 2",
    "    3: exit",
  ]);
});
