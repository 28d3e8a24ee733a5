/**
 * The assembler's listing: each instruction prints itself as the verifier's log prints it (print_bpf_insn in
 * kernel/bpf/disasm.c), a jump with its label; a program prints with its labels and instruction numbers, and
 * names the label that an instruction number stands at (what a verifier error says). The e2e test
 * verifier-error.test.ts holds the same text against the kernel's own log.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  Add,
  And32,
  Call,
  Fn,
  type Instruction,
  Ja,
  JEq32,
  JGE32,
  JNE,
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
  R6,
  R7,
  R10,
  Return,
  Rsh32,
  StoreImm,
  StoreMem,
  ToBE,
} from "../../src/bpf/asm.js";
import { keepaliveProgram } from "../../src/bpf/keepalive.js";
import { parseRules } from "../../src/filter.js";

describe("an instruction as the verifier's log prints it", () => {
  const cases: [Instruction, string][] = [
    [Mov.Reg(R6, R1), "r6 = r1"],
    [Mov.Imm(R0, 1), "r0 = 1"],
    [Mov32.Reg(R1, R2), "w1 = w2"],
    [Add.Imm(R4, -8), "r4 += -8"],
    [Rsh32.Imm(R7, 16), "w7 >>= 16"],
    [And32.Imm(R2, 0xffffff00), "w2 &= -256"],
    [ToBE(R7, 16), "r7 = be16 r7"],
    [LoadMem(R2, R6, 64, "W"), "r2 = *(u32 *)(r6 +64)"],
    [LoadMem(R3, R1, 0, "B"), "r3 = *(u8 *)(r1 +0)"],
    [StoreMem(R10, -16, R3, "DW"), "*(u64 *)(r10 -16) = r3"],
    [StoreImm(R10, -8, 1, "H"), "*(u16 *)(r10 -8) = 1"],
    [Call(Fn.setsockopt), "call bpf_setsockopt#49"],
    [Call(Fn.sockFromFile), "call bpf_sock_from_file#162"],
    [Return(), "exit"],
    [JEq32.Imm(R2, 0xffff0000, "mapped"), "if w2 == 0xffff0000 goto mapped"],
    [JGE32.Reg(R2, R3, "big"), "if w2 >= w3 goto big"],
    [JNE.Imm(R0, -1, "failed"), "if r0 != 0xffffffff goto failed"],
    [Ja("out"), "goto out"],
  ];
  for (const [insn, text] of cases) test(text, () => assert.equal(String(insn), text));

  test("the label an instruction carries is the listing's, not part of its text", () => {
    assert.equal(String(Return().withSymbol("out")), "exit");
  });
});

describe("a program's listing", () => {
  const program = new ProgramBuilder()
    .emit(Mov.Reg(R6, R1))
    .label("check")
    .emit(LoadMem(R2, R6, 0, "W"), JEq32.Imm(R2, 4, "done"), Mov.Imm(R0, 0))
    .label("done")
    .label("out") // a second name of the same instruction: jumps to it name the first
    .emit(Mov.Imm(R0, 1), Ja("out"), Return())
    .build();
  const listing = new Listing(program);

  test("every instruction with its number, under the label that starts there", () => {
    assert.equal(
      String(listing),
      [
        "  0: r6 = r1",
        "check:",
        "  1: r2 = *(u32 *)(r6 +0)",
        "  2: if w2 == 0x4 goto done",
        "  3: r0 = 0",
        "done:",
        "  4: r0 = 1",
        "  5: goto done",
        "  6: exit",
      ].join("\n"),
    );
  });

  test("the label of an instruction: its own, or the one before it and how far; none before the first", () => {
    assert.deepEqual(
      program.map((_, i) => listing.nameOf(i)),
      [undefined, "check", "check+1", "check+2", "done", "done+1", "done+2"],
    );
  });

  test("the lines around an instruction, kept within the program, the one asked about marked", () => {
    assert.deepEqual(listing.lines(1, 3, 2), [
      "check:",
      "  1: r2 = *(u32 *)(r6 +0)",
      "> 2: if w2 == 0x4 goto done",
      "  3: r0 = 0",
    ]);
    assert.deepEqual(listing.lines(5, 9, 6), ["  5: goto done", "> 6: exit"]);
    assert.deepEqual(listing.lines(-3, 0, 0), ["> 0: r6 = r1"]);
  });

  test("numbers are right-aligned to the widest one shown", () => {
    const long = new Listing(Array.from({ length: 12 }, () => Mov.Imm(R0, 0)));
    assert.deepEqual(long.lines(8, 10, 9), ["   8: r0 = 0", ">  9: r0 = 0", "  10: r0 = 0"]);
  });

  test("tcpka enforce's program: one line per instruction, and every jump's label is in the listing", () => {
    const p = keepaliveProgram({
      settings: { idle: 7, interval: 3, count: 4, userTimeout: 1500 },
      mode: "strengthen",
      ...parseRules(["10.0.0.0/8:5432", "[2001:db8::/32]:443"], ["::1/128"]),
    });
    const lines = String(new Listing(p)).split("\n");
    const insns = lines.filter((l) => /^ +\d+: /.test(l));
    assert.equal(insns.length, p.length);
    const labels = new Set(lines.filter((l) => l.endsWith(":")).map((l) => l.slice(0, -1)));
    const targets = insns.map((l) => / goto (\S+)$/.exec(l)?.[1]).filter((t) => t !== undefined);
    assert.ok(targets.length > 10, `${targets.length} jumps`);
    assert.deepEqual(
      targets.filter((t) => !labels.has(t)),
      [],
    );
  });
});
