/**
 * The running kernel's BTF as the BPF programs read it: member paths through nested structs, enum values, and
 * the helper numbers the assembler calls, each checked against the kernel's own enum bpf_func_id.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { test } from "node:test";
import { Fn } from "../../src/bpf/asm.js";
import { Btf } from "../../src/sys/btf.js";

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
