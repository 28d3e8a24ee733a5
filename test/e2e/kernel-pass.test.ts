/**
 * What the kernel pass costs a run besides its walks: the BTF is read once per boot, not per run. The answers
 * are kept in tcpka's runtime directory (src/sys/btf.ts CachedBtf); a second `tcpka ls` opens no BTF at all.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, statSync } from "node:fs";
import { test } from "node:test";
import { needs } from "../helpers/env.js";
import { TCPKA } from "../helpers/paths.js";
import { runSync } from "../helpers/processes.js";

const VMLINUX = "/sys/kernel/btf/vmlinux";

/** The files that a `tcpka ls --json` opens, by strace (openat of every thread). */
function opened(): string[] {
  const r = runSync(
    ["strace", "-f", "-qq", "-e", "trace=openat", "-e", "signal=none", process.execPath, TCPKA, "ls", "--json"],
    {
      timeoutMs: 60_000,
    },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal((JSON.parse(r.stdout) as { summary: { via: string } }).summary.via, "bpf");
  return [...r.stderr.matchAll(/openat\([^,]+, "([^"]+)"/g)].map((m) => m[1] as string);
}

test("the kernel's BTF is read once: the next tcpka ls takes the offsets from /run/tcpka", (t) => {
  if (!needs(t, { root: true, tools: ["strace"] })) return;
  // Every kernel the CI and these machines run has BTF; a kernel without it takes the other path, untested here.
  assert.ok(existsSync(VMLINUX), `${VMLINUX}: this kernel has no BTF`);
  opened(); // the first run of this boot (or not: the answers may be there already)
  const files = opened();
  assert.ok(!files.includes(VMLINUX), `the second run reads no BTF: ${files.filter((f) => f.startsWith("/sys"))}`);
  const kept = readdirSync("/run/tcpka").filter((f) => /^btf-[0-9a-f-]{36}-\d+\.json$/.test(f));
  assert.equal(kept.length, 1, `one file of answers for this boot and this BTF: ${kept}`);
  const st = statSync(`/run/tcpka/${kept[0]}`);
  assert.deepEqual([st.uid, st.mode & 0o777], [0, 0o600]);
  assert.ok(files.includes(`/run/tcpka/${kept[0]}`), "the run read the answers");
});
