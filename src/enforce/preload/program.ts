/**
 * A program file as the preload checks see it: whether this user may read it, what its ELF header says about
 * the libraries that can be loaded into it (elf(5)), and the interpreter that a "#!" script names.
 */
import { accessSync, closeSync, constants, openSync, readSync } from "node:fs";

export function readable(file: string): boolean {
  try {
    accessSync(file, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

export interface Elf {
  bits: 32 | 64;
  machine: number;
  /** PT_INTERP: the dynamic loader that runs it; null for a statically linked program. */
  interp: string | null;
}

const PT_INTERP = 3;
/** e_machine values (include/uapi/linux/elf-em.h) by the names people know them by. */
const MACHINES: Record<number, string> = {
  3: "i386",
  8: "mips",
  20: "ppc",
  21: "ppc64",
  22: "s390",
  40: "arm",
  62: "x86-64",
  183: "aarch64",
  243: "riscv",
  258: "loongarch",
};

export function machineName(machine: number): string | undefined {
  return MACHINES[machine];
}

export function machineText(e: Elf): string {
  return `${machineName(e.machine) ?? `machine ${e.machine}`} (${e.bits}-bit)`;
}

function readAt(fd: number, length: number, position: number): Buffer {
  const b = Buffer.alloc(length);
  return b.subarray(0, readSync(fd, b, 0, length, position));
}

/** What of an ELF file decides whether a library can be loaded into it; null when it is not ELF. */
export function readElf(file: string): Elf | null {
  const fd = openSync(file, "r");
  try {
    const h = readAt(fd, 64, 0);
    const is64 = h[4] === 2;
    if (h.length < (is64 ? 64 : 52) || h.readUInt32BE(0) !== 0x7f454c46) return null;
    const le = h[5] === 1;
    const u16 = (b: Buffer, o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
    const u32 = (b: Buffer, o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
    const word = (b: Buffer, o: number) =>
      is64 ? Number(le ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o)) : u32(b, o);
    const phentsize = u16(h, is64 ? 54 : 42);
    const phoff = word(h, is64 ? 32 : 28);
    // A damaged header is not ELF as far as this goes: exec will say what it is.
    if (phentsize < (is64 ? 56 : 32) || !Number.isSafeInteger(phoff)) return null;
    const table = readAt(fd, phentsize * u16(h, is64 ? 56 : 44), phoff);
    let interp: string | null = null;
    for (let at = 0; at + phentsize <= table.length; at += phentsize) {
      if (u32(table, at) !== PT_INTERP) continue;
      const [offset, size] = is64
        ? [word(table, at + 8), word(table, at + 32)]
        : [u32(table, at + 4), u32(table, at + 16)];
      if (!Number.isSafeInteger(offset)) return null;
      interp = readAt(fd, Math.min(size, 4096), offset).toString("latin1").split("\0")[0] ?? "";
    }
    return { bits: is64 ? 64 : 32, machine: u16(h, 18), interp };
  } finally {
    closeSync(fd);
  }
}

/** The interpreter that a "#!" script names, or undefined for anything else. */
export function scriptInterpreter(file: string): string | undefined {
  const fd = openSync(file, "r");
  let h: Buffer;
  try {
    h = readAt(fd, 4096, 0);
  } finally {
    closeSync(fd);
  }
  if (h[0] !== 0x23 || h[1] !== 0x21) return undefined;
  return h.subarray(2).toString("latin1").split("\n")[0]?.trim().split(/\s+/)[0] || undefined;
}
