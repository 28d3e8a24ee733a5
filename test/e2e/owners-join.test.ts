/**
 * The owners joined in the kernel (src/bpf/tcp-sockets.ts, the owners' map): the owners' task_file walk puts each
 * socket's first owner into the map's slot for its inode, the TCP walk reads it into the socket's record, and
 * only the further owners (and those whose slot another socket took) come to user space as records. Against
 * /proc (findOwners) for sockets held by one process and by two (fork()), with a map sized for the host's
 * sockets and with one far too small, where most slots are taken twice and the owners must still reach user
 * space as records.
 */
import assert from "node:assert/strict";
import { closeSync } from "node:fs";
import { test } from "node:test";
import { KernelSockets, ownersMap } from "../../src/inspect/kernel-sockets.js";
import { sockstat } from "../../src/inspect/netstat.js";
import { findOwners, OwnerTable, type SocketOwner, TcpOwnerWalk } from "../../src/inspect/owners.js";
import { ALL_STATES } from "../../src/kernel/states.js";
import { needs, python3 } from "../helpers/env.js";
import { fixture } from "../helpers/paths.js";
import { start } from "../helpers/processes.js";

const byPid = (os: readonly SocketOwner[]) =>
  os.map((o) => `${o.pid}/${o.fd}`).sort((a, b) => a.localeCompare(b, "en", { numeric: true }));

test("a socket's first owner joined in the kernel: the owners /proc shows, also where slots are taken twice", async (t) => {
  if (!needs(t, { root: true, tools: ["python3"] })) return;
  const p = start(t, [python3(), fixture("shared_owners.py")]);
  const held = JSON.parse(await p.line()) as { parent: number; child: number; inodes: number[] };
  assert.equal(held.inodes.length, 71);
  const ours = new Set(held.inodes);
  const oracle = findOwners(ours, [held.parent, held.child]);
  // Sized for every TCP socket of the host's namespace (as ls sizes it), and for two sockets: 64 slots.
  const hostSockets = sockstat(process.pid)?.inuse ?? 0;
  for (const sockets of [hostSockets + ours.size, 2]) {
    const map = ownersMap(sockets);
    let walk: TcpOwnerWalk | null = null;
    let ks: KernelSockets | undefined;
    try {
      walk = TcpOwnerWalk.start(undefined, [], map);
      assert.ok(walk, "the owners' walk loads with the map");
      const table = walk.finish().owners;
      assert.ok(table instanceof OwnerTable);
      ks = KernelSockets.open(ALL_STATES, map);
      const k = ks;
      const got = new Map<number, string[]>();
      let joined = 0;
      k.walk((s) => {
        if (!ours.has(s.inode)) return;
        if (k.ownerPid !== 0) joined++;
        const owners = k.ownerPid !== 0 ? table.getAfter(k.ownerPid, k.ownerFd, s.inode) : (table.get(s.inode) ?? []);
        got.set(s.inode, byPid(owners));
      });
      for (const inode of ours) {
        const want = byPid(oracle.owners.get(inode) ?? []);
        assert.equal(want.length, inode === held.inodes[0] || held.inodes.indexOf(inode) < 61 ? 2 : 1);
        assert.deepEqual(got.get(inode), want, `${sockets} sockets' map, inode ${inode}`);
      }
      // The fixture's sockets have consecutive inodes (sockfs numbers them in turn): in the large map only another
      // socket of the host can have taken one's slot; in 64 slots, at most 64 of the 71 are joined.
      const slots = map.mask + 1;
      if (sockets > 2) assert.ok(joined > ours.size / 2, `${joined} of ${ours.size} joined in ${slots} slots`);
      else assert.ok(joined <= slots && joined < ours.size, `${joined} of ${ours.size} joined in ${slots} slots`);
    } finally {
      ks?.close();
      walk?.close();
      closeSync(map.fd);
    }
  }
});
