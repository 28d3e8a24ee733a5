/**
 * The counters of an enforcement, which --list shows so that an operator sees it working: a per-CPU array
 * (sys/bpf.ts counterMapCreate) that the sock_ops program and the setsockopt program add to, pinned beside their
 * links as "counters" and kept across updates. Per-CPU, so that two CPUs setting up connections at once never
 * share a cache line; each add is atomic all the same (a program in process context may be interrupted by one in
 * softirq context on the same CPU).
 */
import {
  Add,
  AtomicAdd64,
  Call,
  Fn,
  JEq,
  LoadMapFd,
  Mov,
  type ProgramBuilder,
  R0,
  R1,
  R2,
  R10,
  StoreImm,
} from "./asm.js";

export const COUNTER = {
  /** connections and listeners that the sock_ops program set up */
  setUp: 0,
  /** setsockopt calls of programs whose value the setsockopt program replaced */
  rewritten: 1,
} as const;
export const COUNTERS = 2;

/** Add 1 to counter `index` of the map `fd` (clobbers r0-r5; `slot` is a free 4-byte stack slot). */
export function emitCount(p: ProgramBuilder, fd: number, index: number, slot: number, skip: string): void {
  p.emit(
    StoreImm(R10, slot, index, "W"),
    ...LoadMapFd(R1, fd),
    Mov.Reg(R2, R10),
    Add.Imm(R2, slot),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, skip),
    Mov.Imm(R1, 1),
    AtomicAdd64(R0, 0, R1),
  );
  p.label(skip);
}
