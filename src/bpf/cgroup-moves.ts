/**
 * The agent's program for processes moved into a cgroup (src/inspect/cgroup-moves.ts): a BTF tracepoint on
 * cgroup_attach_task (kernel/cgroup/cgroup.c cgroup_attach_task → TRACE_CGROUP_PATH(attach_task): one call per
 * process or thread moved by a write to cgroup.procs or cgroup.threads, and by the kernel's own migrations; not at
 * fork, where a child starts in its parent's cgroup). Only moves in the cgroup v2 hierarchy, whose hierarchy_id is
 * 0 (the "0::" of /proc/PID/cgroup); a hybrid host also traces one per v1 hierarchy. Each writes the moved task's
 * tgid into a ring buffer (8 bytes: u32 tgid, u32 zero); a record that does not fit is counted in LOST.
 * tp_btf: Linux 5.5; the ring buffer: 5.8.
 */
import type { BtfFacts } from "../sys/btf.js";
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
  R10,
  Return,
  StoreImm,
  StoreMem,
} from "./asm.js";

export const RECORD = 8;
/** Index of the per-CPU counter of records the ring had no room for. */
export const LOST = 0;

export interface MoveOffsets {
  cgroupRoot: number;
  rootHierarchyId: number;
  taskTgid: number;
}

export function moveOffsets(btf: BtfFacts): MoveOffsets {
  return {
    cgroupRoot: btf.memberOffset("cgroup", "root"),
    rootHierarchyId: btf.memberOffset("cgroup_root", "hierarchy_id"),
    taskTgid: btf.memberOffset("task_struct", "tgid"),
  };
}

/** cgroup_attach_task(struct cgroup *dst_cgrp, const char *path, struct task_struct *task, bool threadgroup) */
export function cgroupMovesProgram(o: MoveOffsets, ring: number, lost: number): Instruction[] {
  const b = new ProgramBuilder();
  b.emit(
    LoadMem(R6, R1, 0, "DW"),
    LoadMem(R7, R1, 16, "DW"),
    LoadMem(R2, R6, o.cgroupRoot, "DW"),
    JEq.Imm(R2, 0, "out"),
    LoadMem(R3, R2, o.rootHierarchyId, "W"),
    JNE32.Imm(R3, 0, "out"),
    StoreImm(R10, -8, 0, "DW"),
    LoadMem(R3, R7, o.taskTgid, "W"),
    StoreMem(R10, -8, R3, "W"),
    ...LoadMapFd(R1, ring),
    Mov.Reg(R2, R10),
    Add.Imm(R2, -8),
    Mov.Imm(R3, RECORD),
    Mov.Imm(R4, 0),
    Call(Fn.ringbufOutput),
    JEq.Imm(R0, 0, "out"),
    StoreImm(R10, -16, LOST, "W"),
    ...LoadMapFd(R1, lost),
    Mov.Reg(R2, R10),
    Add.Imm(R2, -16),
    Call(Fn.mapLookupElem),
    JEq.Imm(R0, 0, "out"),
    LoadMem(R1, R0, 0, "DW"),
    Add.Imm(R1, 1),
    StoreMem(R0, 0, R1, "DW"),
  );
  b.label("out").emit(Mov.Imm(R0, 0), Return());
  return b.build();
}
