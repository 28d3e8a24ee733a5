/**
 * The running kernel's BTF as the BPF programs read it: member paths through nested structs, enum values, the
 * helper numbers the assembler calls (each checked against the kernel's own enum bpf_func_id), and the answers
 * kept from one run to the next.
 */
import assert from "node:assert/strict";
import {
  chmodSync,
  chownSync,
  existsSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Fn } from "../../src/bpf/asm.js";
import { Btf, CachedBtf } from "../../src/sys/btf.js";
import { tempDir } from "../helpers/scope.js";

const VMLINUX = "/sys/kernel/btf/vmlinux";

test("the assembler's helper numbers are the running kernel's", (t) => {
  if (!existsSync(VMLINUX)) return t.skip(`${VMLINUX} is missing: this kernel has no BTF`);
  const btf = Btf.vmlinux();
  for (const [name, id] of Object.entries(Fn)) {
    const kernelName = `BPF_FUNC_${name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}`;
    assert.equal(btf.enumValue("bpf_func_id", kernelName), id, kernelName);
  }
});

test("a member path adds up the offsets of the structs it goes through", (t) => {
  if (!existsSync(VMLINUX)) return t.skip(`${VMLINUX} is missing: this kernel has no BTF`);
  const btf = Btf.vmlinux();
  const nested =
    btf.memberOffset("tcp_sock", "inet_conn") +
    btf.memberOffset("inet_connection_sock", "icsk_inet") +
    btf.memberOffset("inet_sock", "sk") +
    btf.memberOffset("sock", "sk_timer") +
    btf.memberOffset("timer_list", "expires");
  assert.equal(btf.memberOffset("tcp_sock", "inet_conn.icsk_inet.sk.sk_timer.expires"), nested);
  assert.equal(btf.offsetOf("tcp_sock", "inet_conn.no_such_member"), undefined);
  assert.throws(() => btf.memberOffset("tcp_sock", "no_such_member"), /has no member no_such_member/);
  // SOCK_KEEPOPEN: the flag behind SO_KEEPALIVE (include/net/sock.h, enum sock_flags), 3 since Linux 2.6.
  assert.equal(btf.enumValue("sock_flags", "SOCK_KEEPOPEN"), 3);
  assert.throws(() => btf.enumValue("sock_flags", "NO_SUCH_FLAG"), /has no NO_SUCH_FLAG/);
});

test("the BTF's answers are kept for the next run, and a file someone else could have written is not read", (t) => {
  if (!existsSync(VMLINUX)) return t.skip(`${VMLINUX} is missing: this kernel has no BTF`);
  const dir = tempDir(t);
  const first = CachedBtf.open(dir);
  const offset = first.memberOffset("tcp_sock", "inet_conn.icsk_pending");
  assert.equal(first.offsetOf("tcp_sock", "no_such_member"), undefined);
  first.save();
  const [file, ...others] = readdirSync(dir);
  assert.deepEqual(others, []);
  assert.match(file ?? "", /^btf-[0-9a-f-]{36}-\d+\.json$/);
  const path = join(dir, file as string);
  assert.equal(statSync(path).mode & 0o777, 0o600);
  assert.deepEqual(JSON.parse(readFileSync(path, "utf8")), {
    "offset tcp_sock inet_conn.icsk_pending": offset,
    "offset tcp_sock no_such_member": null,
  });

  // What the file says is what the next run answers, without reading the BTF: a planted number shows it.
  writeFileSync(path, JSON.stringify({ "offset tcp_sock inet_conn.icsk_pending": 7 }), { mode: 0o600 });
  assert.equal(CachedBtf.open(dir).memberOffset("tcp_sock", "inet_conn.icsk_pending"), 7);
  // The same file writable by others, owned by another user, or not numbers: ignored, the BTF answers.
  chmodSync(path, 0o666);
  assert.equal(CachedBtf.open(dir).memberOffset("tcp_sock", "inet_conn.icsk_pending"), offset);
  chmodSync(path, 0o600);
  if (process.geteuid?.() === 0) {
    chownSync(path, 65534, 65534);
    assert.equal(CachedBtf.open(dir).memberOffset("tcp_sock", "inet_conn.icsk_pending"), offset);
    chownSync(path, 0, 0);
  }
  writeFileSync(path, JSON.stringify({ "offset tcp_sock inet_conn.icsk_pending": "7" }));
  assert.equal(CachedBtf.open(dir).memberOffset("tcp_sock", "inet_conn.icsk_pending"), offset);
  // A symlink in its place is not followed.
  rmSync(path);
  const elsewhere = join(dir, "elsewhere.json");
  writeFileSync(elsewhere, JSON.stringify({ "offset tcp_sock inet_conn.icsk_pending": 7 }), { mode: 0o600 });
  symlinkSync(elsewhere, path);
  assert.equal(CachedBtf.open(dir).memberOffset("tcp_sock", "inet_conn.icsk_pending"), offset);
});
