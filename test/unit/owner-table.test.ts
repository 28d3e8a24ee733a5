/**
 * src/inspect/owners.ts OwnerTable, the owners' hash that ls looks every socket up in: against a Map of the same
 * adds, through its growth (4x at half full), with sockets shared across fork() (owners in the order added),
 * inodes at the edges of 32 bits (stored as int32: 0x8000_0000 and up are negative there), and wide ones.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { OwnerTable, type SocketOwner } from "../../src/inspect/owners.js";

const plain = (os: readonly SocketOwner[] | undefined) => os?.map((o) => `${o.pid}/${o.fd}/${o.comm}`);

test("OwnerTable answers as a Map of the same adds, through growth, shared sockets and every inode range", () => {
  const t = new OwnerTable();
  const ref = new Map<number, SocketOwner[]>();
  const comm = (pid: number) => (pid === process.pid ? "node" : pid === 1 ? undefined : "?");
  const add = (inode: number, pid: number, fd: number) => {
    const first = t.add(inode, pid, fd);
    assert.equal(first, !ref.has(inode), `inode ${inode}: first owner`);
    const list = ref.get(inode) ?? [];
    list.push({ pid, fd, comm: comm(pid) ?? "" });
    ref.set(inode, list);
  };
  // 100,000 sockets (past both growths: at 8,192 and 32,768), every 7th shared by a second process and every
  // 50th by a third; a few at the top of 32 bits and past it
  const pids = [process.pid, 1, 999_999_999];
  let n = 0;
  for (let inode = 1; n < 100_000; inode += 3, n++) {
    add(inode, pids[n % 2] as number, 3 + (n % 1000));
    if (n % 7 === 0) add(inode, pids[2] as number, 10);
    if (n % 50 === 0) add(inode, process.pid, 11);
  }
  for (const inode of [0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff, 0x1_0000_0000, 2 ** 40]) {
    add(inode, process.pid, 5);
    add(inode, 1, 6);
  }
  add(0, process.pid, 7); // not sockfs's, but kept apart rather than taken for an empty slot
  const pid1 = t.get(4)?.find((o) => o.pid === 1)?.comm;
  assert.equal(pid1, readFileSync("/proc/1/comm", "utf8").trim(), "pid 1's comm, read from /proc");
  const into: SocketOwner[] = [];
  for (const [inode, want] of ref) {
    const w: SocketOwner[] = want.map((o) => ({ ...o, comm: o.pid === 1 ? (pid1 ?? "") : o.comm }));
    assert.deepEqual(plain(t.get(inode)), plain(w), `get(${inode})`);
    assert.deepEqual(plain(t.getInto(inode, into)), plain(w), `getInto(${inode})`);
  }
  assert.equal(t.get(2), undefined);
  assert.deepEqual(t.getInto(2, into), []);
  assert.equal(into.length, 0, "getInto empties what it is given");
  const seen = new Map([...t.entries()].map(([k, v]) => [k, plain(v)]));
  assert.equal(seen.size, ref.size);
  for (const inode of ref.keys()) assert.ok(seen.has(inode), `entries() has ${inode}`);
});

test("getIntoAfter: a first owner from the kernel, then the table's owners of that socket, into one reused list", () => {
  const into: SocketOwner[] = [];
  const empty = new OwnerTable();
  // Nothing in the table (every socket held by one process): the first owner alone, also after a longer answer.
  into.push({ pid: 1, fd: 1, comm: "x" }, { pid: 2, fd: 2, comm: "y" });
  assert.deepEqual(plain(empty.getIntoAfter(process.pid, 9, 12345, into)), [`${process.pid}/9/node`]);
  assert.equal(into.length, 1);
  const t = new OwnerTable();
  t.add(77, 999_999_999, 4); // a further owner of socket 77 (its first came from the kernel); no such pid: "?"
  t.add(78, 999_999_999, 5);
  t.add(78, 999_999_998, 6);
  assert.deepEqual(plain(t.getIntoAfter(process.pid, 3, 78, into)), [
    `${process.pid}/3/node`,
    "999999999/5/?",
    "999999998/6/?",
  ]);
  assert.deepEqual(plain(t.getIntoAfter(process.pid, 3, 77, into)), [`${process.pid}/3/node`, "999999999/4/?"]);
  assert.deepEqual(plain(t.getIntoAfter(process.pid, 8, 79, into)), [`${process.pid}/8/node`]);
  assert.equal(into.length, 1);
});
