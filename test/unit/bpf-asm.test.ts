import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  Add,
  Add32,
  assemble,
  Call,
  Div,
  Fn,
  type Instruction,
  Ja,
  JEq32,
  JGE,
  JGE32,
  JLE,
  LoadMapFd,
  LoadMem,
  Mov,
  Mov32,
  Mul,
  Mul32,
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
  Rsh32,
  StoreImm,
  ToBE,
} from "../../src/bpf/asm.js";
import { keepaliveProgram } from "../../src/bpf/keepalive.js";
import { parseEndpointRule } from "../../src/filter.js";

const hex = (insns: Instruction[]) => assemble(insns).toString("hex");

describe("instruction encoding (opcode, dst|src<<4, s16 offset, s32 immediate)", () => {
  const cases: [string, Instruction, string][] = [
    ["r6 = r1", Mov.Reg(R6, R1), "bf16000000000000"],
    ["r0 = 1", Mov.Imm(R0, 1), "b700000001000000"],
    ["exit", Return(), "9500000000000000"],
    ["r2 = *(u32 *)(r6 + 64)", LoadMem(R2, R6, 64, "W"), "6162400000000000"],
    ["*(u32 *)(r10 - 8) = 1", StoreImm(R10, -8, 1, "W"), "620af8ff01000000"],
    ["call bpf_setsockopt", Call(Fn.setsockopt), "8500000031000000"],
    ["call bpf_getsockopt", Call(Fn.getsockopt), "8500000039000000"],
    ["r4 += -8", Add.Imm(R4, -8), "07040000f8ffffff"],
    ["w7 >>= 16", Rsh32.Imm(R7, 16), "7407000010000000"],
    ["r7 = be16 r7", ToBE(R7, 16), "dc07000010000000"],
    ["r3 *= r4", Mul.Reg(R3, R4), "2f43000000000000"],
    ["r2 /= 250", Div.Imm(R2, 250), "37020000fa000000"],
  ];
  for (const [name, insn, bytes] of cases) test(name, () => assert.equal(hex([insn]), bytes));

  test("64-bit unsigned compares", () => {
    assert.equal(hex([JGE.Reg(R4, R3, "x"), Return().withSymbol("x")]).slice(0, 16), "3d34000000000000");
    assert.equal(hex([JLE.Imm(R2, 7, "x"), Return().withSymbol("x")]).slice(0, 16), "b502000007000000");
  });

  test("a map's fd is a 64-bit load in two slots, the second counted by jumps", () => {
    assert.equal(hex(LoadMapFd(R1, 5)), "18110000050000000000000000000000");
    const bytes = assemble([JEq32.Imm(R2, 0, "out"), ...LoadMapFd(R1, 5), Return().withSymbol("out")]);
    assert.equal(bytes.readInt16LE(2), 2);
    assert.equal(String(LoadMapFd(R1, 5)[0]), "r1 = map[fd:5] ll");
    assert.equal(String(Div.Imm(R2, 250)), "r2 /= 250");
  });

  test("an immediate above 2^31 is stored as its 32-bit pattern", () => {
    assert.equal(hex([JEq32.Imm(R2, 0xffff0000, "x").withSymbol("x")]), "1602ffff0000ffff");
  });
});

describe("labels", () => {
  test("a forward jump's offset counts the instructions in between", () => {
    const bytes = assemble([JEq32.Imm(R2, 4, "out"), Mov.Imm(R0, 0), Mov.Imm(R0, 1).withSymbol("out"), Return()]);
    assert.equal(bytes.readInt16LE(2), 1);
    assert.equal(bytes.subarray(0, 8).toString("hex"), "1602010004000000");
  });

  test("a backward jump has a negative offset", () => {
    const bytes = assemble([Mov.Imm(R0, 0).withSymbol("top"), Ja("top")]);
    assert.equal(bytes.readInt16LE(8 + 2), -2);
  });

  test("undefined and duplicate labels are errors", () => {
    assert.throws(() => assemble([Ja("nowhere")]), /undefined label nowhere/);
    assert.throws(() => assemble([Return().withSymbol("a"), Return().withSymbol("a")]), /defined twice/);
  });

  test("several labels can name one instruction", () => {
    const p = new ProgramBuilder();
    p.emit(Ja("b"), Ja("a"));
    p.label("a").label("b").emit(Return());
    const bytes = assemble(p.build());
    assert.equal(bytes.readInt16LE(2), 1);
    assert.equal(bytes.readInt16LE(10), 0);
  });

  test("a label that names nothing is an error", () => {
    const p = new ProgramBuilder();
    p.emit(Return()).label("dangling");
    assert.throws(() => p.build(), /names no instruction/);
  });
});

describe("the keepalive sock_ops program", () => {
  const calls = (insns: Instruction[], fn: number) => insns.filter((i) => i.opcode === 0x85 && i.imm === fn).length;
  const settings = { idle: 60, interval: 10, count: 6 };

  test("force sets keepalive and each given option once, and reads nothing", () => {
    const p = keepaliveProgram({ settings, mode: "force", only: [], except: [] });
    assert.equal(calls(p, Fn.setsockopt), 4);
    assert.equal(calls(p, Fn.getsockopt), 0);
    assert.ok(assemble(p).length > 0);
  });

  test("strengthen reads idle, interval, count and user timeout, and turns keepalive on unread, last", () => {
    const p = keepaliveProgram({
      settings: { ...settings, userTimeout: 30_000 },
      mode: "strengthen",
      only: [],
      except: [],
    });
    assert.equal(calls(p, Fn.getsockopt), 4);
    // idle when lowered; interval and count when the request detects sooner; the three again where a read failed;
    // the user timeout; SO_KEEPALIVE.
    assert.equal(calls(p, Fn.setsockopt), 8);
    // The last call sets SO_KEEPALIVE (level SOL_SOCKET = 1, name 9): after the others, so that the timer is
    // armed once, with the new idle time.
    const last = p.map((i, n) => [i, n] as const).filter(([i]) => i.opcode === 0x85);
    const [, n] = last[last.length - 1] as readonly [Instruction, number];
    const args = p.slice(n - 8, n);
    assert.ok(
      args.some((i) => i.opcode === 0xb7 && i.dst === 2 && i.imm === 1),
      "level SOL_SOCKET",
    );
    assert.ok(
      args.some((i) => i.opcode === 0xb7 && i.dst === 3 && i.imm === 9),
      "SO_KEEPALIVE",
    );
  });

  test("strengthen takes interval and count together: the socket's idle + interval × count against the request's", () => {
    const p = keepaliveProgram({ settings, mode: "strengthen", only: [], except: [] });
    const at = (want: Instruction) =>
      p.findIndex((i) => i.opcode === want.opcode && i.dst === want.dst && i.src === want.src && i.imm === want.imm);
    const mine = at(Mul32.Reg(R8, R9));
    assert.ok(mine > 0 && p[mine + 1]?.opcode === Add32.Reg(R8, R7).opcode, "r8 = interval × count + idle");
    // 60 s + 10 s × 6
    const theirs = [Mov32.Imm(R9, 10), Mul32.Imm(R9, 6), Add32.Imm(R9, 60)].map(at);
    assert.ok(
      theirs.every((i, k) => i === (theirs[0] as number) + k && i > mine),
      "r9 = 10 × 6 + 60",
    );
    const cmp = at(JGE32.Reg(R9, R8, "x"));
    assert.ok(cmp > (theirs[2] as number), "a tie keeps the socket's pair");
    const sets = p.slice(cmp).filter((i) => i.opcode === 0x85).length;
    assert.ok(sets >= 2, "then interval and count are set");
  });

  test("strengthen leaves the user timeout alone when 0 is requested; force sets it", () => {
    const utSet = (mode: "strengthen" | "force") =>
      keepaliveProgram({ settings: { ...settings, userTimeout: 0 }, mode, only: [], except: [] }).some(
        (i) => i.opcode === 0xb7 && i.dst === 3 && i.imm === 18,
      );
    assert.equal(utSet("strengthen"), false);
    assert.equal(utSet("force"), true);
  });

  test("a port range is two compares; a single port one", () => {
    const ops = (rule: string) =>
      keepaliveProgram({ settings, mode: "force", only: parseEndpointRule("--only", rule), except: [] })
        .filter((i) => i.dst === 7 && (i.opcode & 0x07) === 0x06)
        .slice(1) // the first reads the port: remote_port <= 0xffff on kernels that do not shift it up
        .map((i) => [i.opcode & 0xf0, i.imm]);
    assert.deepEqual(ops(":8000-8100"), [
      [0xa0, 8000], // jlt
      [0x20, 8100], // jgt
    ]);
    assert.deepEqual(ops(":5432"), [[0x50, 5432]]); // jne
  });

  test("an IPv6 network that holds IPv4-mapped addresses (::/0) skips those peers: they are IPv4 peers", () => {
    const mappedWord = 0xffff0000; // 00 00 ff ff loaded as a little-endian u32
    const skips = (rule: string) =>
      keepaliveProgram({ settings, mode: "force", only: parseEndpointRule("--only", rule), except: [] }).some(
        (i) => i.opcode === 0x16 && i.imm === (mappedWord | 0),
      );
    assert.equal(skips("::/0"), true);
    assert.equal(skips("::/64"), true);
    assert.equal(skips("2001:db8::/32"), false);
  });

  test("rules on the peer's address leave listeners alone (their peers are not known yet)", () => {
    const listenOp = (p: Instruction[]) => p.some((i) => i.opcode === 0x16 && i.imm === 11);
    assert.equal(listenOp(keepaliveProgram({ settings, mode: "force", only: [], except: [] })), true);
    const byPort = parseEndpointRule("--only", ":5432");
    assert.equal(listenOp(keepaliveProgram({ settings, mode: "force", only: byPort, except: [] })), true);
    const byNet = parseEndpointRule("--only", "198.18.0.0/15");
    assert.equal(listenOp(keepaliveProgram({ settings, mode: "force", only: byNet, except: [] })), false);
  });

  test("an IPv4 rule compares the masked address as loaded from network order", () => {
    const p = keepaliveProgram({
      settings,
      mode: "force",
      only: parseEndpointRule("--only", "198.18.0.0/15"),
      except: [],
    });
    // 198.18.0.0/15 -> bytes c6 12 00 00, mask ff fe 00 00, read as a little-endian u32.
    assert.ok(p.some((i) => i.opcode === 0x54 && i.imm === 0x0000feff));
    assert.ok(p.some((i) => i.opcode === 0x56 && i.imm === 0x000012c6));
  });
});
