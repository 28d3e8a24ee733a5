/** The compiled fixtures: C (gcc) and Java (javac) sources of test/fixtures/, built into a test's directory. */
import assert from "node:assert/strict";
import { closeSync, openSync, readSync } from "node:fs";
import { join } from "node:path";
import { fixture } from "./paths.js";
import { runSync } from "./processes.js";

function build(argv: readonly string[]): void {
  const r = runSync(argv, { timeoutMs: 60_000 });
  assert.equal(r.status, 0, `${argv.join(" ")}: ${r.stderr}`);
}

/** Compile the C fixture `source` (a path below test/fixtures) with gcc into DIR/OUT; returns the executable's path. */
export function compileC(dir: string, source: string, out: string, flags: readonly string[] = []): string {
  const exe = join(dir, out);
  build(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", exe, fixture(source), ...flags]);
  return exe;
}

/** Compile the Java fixture `source` (a path below test/fixtures) into DIR; run it with `java -cp DIR CLASS`. */
export function compileJava(dir: string, source: string): void {
  build(["javac", "-d", dir, fixture(source)]);
}

/** True when the ELF file has no PT_INTERP program header: the dynamic loader (and LD_PRELOAD) never runs. */
export function isStaticElf(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const head = Buffer.alloc(64);
    readSync(fd, head, 0, 64, 0);
    assert.equal(head.toString("latin1", 0, 4), "\x7fELF");
    assert.equal(head[4], 2, "ELF64");
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3) return false; // PT_INTERP
    return true;
  } finally {
    closeSync(fd);
  }
}
