/**
 * The established and listening TCP sockets of every network namespace, counted in the kernel (the programs of
 * src/bpf/socket-counts.ts): what a metrics scrape needs, without a record per socket. One TCP iterator walk
 * per namespace, as the inventory's (kernel-sockets.ts), and, for the owners, one task_file walk of every
 * process's files first; then a few hundred map entries are read and the maps emptied.
 *
 * The answers are those of the record path (KernelSockets with the owners' OwnerTable), which the tests compare
 * them with: the same keepalive flag and effective settings, namespace, cgroup, first owner and service port.
 *
 * Needs what KernelSockets needs (the TCP iterator, Linux 5.9, BTF, CAP_BPF + CAP_PERFMON or root), and for the
 * owners the task_file iterator with bpf_sock_from_file and bpf_sk_storage_get in iterators (5.11). open()
 * throws where the kernel refuses; the caller (metrics/snapshot.ts) then takes the record path.
 */
import { closeSync, constants, openSync } from "node:fs";
import { release } from "node:os";
import { assemble, Listing } from "../bpf/asm.js";
import { endpointOffsets } from "../bpf/endpoints.js";
import {
  COUNT_KEY_SIZE,
  KIND_LISTEN,
  LISTEN_KEY_SIZE,
  ownerMarksProgram,
  tcpCountsProgram,
} from "../bpf/socket-counts.js";
import { tcpSocketOffsets } from "../bpf/tcp-sockets.js";
import { type EffectiveKeepAlive, SharedSettings } from "../settings.js";
import {
  blobMapCreate,
  blobMapRead,
  blobMapWrite,
  bpfCapable,
  hashMapCreate,
  iterCreate,
  iterCreateIn,
  iterLinkCreate,
  iterProgLoad,
  mapDrain,
  skStorageMapCreate,
} from "../sys/bpf.js";
import { CachedBtf } from "../sys/btf.js";
import { close, kernelHz } from "../sys/libc.js";
import { readFd } from "../sys/read-ahead-ring.js";
import type { NetNamespace } from "./namespaces.js";

/** One count: sockets that share all of these. */
export interface SocketCount {
  netns: number;
  /** a LISTEN socket (else ESTABLISHED) */
  listening: boolean;
  keepalive: boolean;
  /** a listener's own port; an established socket's service port (its local one where the namespace listens on it, else the peer's) */
  port: number;
  /** cgroup v2 id; 0 unknown (established only) */
  cgroup: number;
  /** the tgid of the first owner; 0: none, or owners not asked for */
  owner: number;
  /** the effective settings with keepalive on (established only); null otherwise */
  settings: EffectiveKeepAlive | null;
  count: number;
}

/** Distinct keys a scrape may count (label sets × settings × ports): beyond, the scrape takes the record path. */
const MAX_KEYS = 16_384;
const MAX_LISTENERS = 16_384;

function kernelAtLeast(major: number, minor: number): boolean {
  const [a = 0, b = 0] = release()
    .split(".")
    .map((n) => Number.parseInt(n, 10));
  return a > major || (a === major && b >= minor);
}

export class SocketCounter {
  private generation = 0;
  private readonly shared = new SharedSettings();
  private readonly scratch = Buffer.alloc(4096);

  private constructor(
    private readonly fds: number[],
    private readonly maps: { counts: number; listeners: number; config: number },
    private readonly tcpLink: number,
    private readonly ownersLink: number | undefined,
    private readonly ownNetns: number,
    private readonly hz: number,
  ) {}

  /** Whether this kernel and these rights may (a cheap check before the BTF is read). */
  static possible(owners: boolean): boolean {
    return kernelAtLeast(5, owners ? 11 : 9) && bpfCapable();
  }

  /** Load the programs (with the owners' walk when `owners`); throws when this kernel or these rights cannot. */
  static open(o: { owners: boolean }): SocketCounter {
    const fds: number[] = [];
    try {
      const btf = CachedBtf.open();
      const counts = hashMapCreate("tcpka_counts", COUNT_KEY_SIZE, 8, MAX_KEYS);
      fds.push(counts);
      const listeners = hashMapCreate("tcpka_listeners", LISTEN_KEY_SIZE, 8, MAX_LISTENERS);
      fds.push(listeners);
      const config = blobMapCreate("tcpka_count_cfg", 8);
      fds.push(config);
      let owners: number | undefined;
      let ownersLink: number | undefined;
      if (o.owners) {
        owners = skStorageMapCreate("tcpka_owners", 8);
        fds.push(owners);
        const marks = ownerMarksProgram(
          {
            metaSeq: btf.memberOffset("bpf_iter_meta", "seq"),
            taskPid: btf.memberOffset("task_struct", "pid"),
            taskTgid: btf.memberOffset("task_struct", "tgid"),
            fileInode: btf.memberOffset("file", "f_inode"),
            inodeIno: btf.memberOffset("inode", "i_ino"),
            socketSk: btf.memberOffset("socket", "sk"),
            skType: btf.memberOffset("sock", "sk_type"),
            skProtocol: btf.memberOffset("sock", "sk_protocol"),
            ...endpointOffsets(btf),
          },
          { config, owners },
        );
        const prog = iterProgLoad({
          attachBtfId: btf.typeId("FUNC", "bpf_iter_task_file"),
          insns: assemble(marks),
          listing: new Listing(marks),
          name: "tcpka_ownmarks",
        });
        fds.push(prog);
        ownersLink = iterLinkCreate(prog, Buffer.alloc(16)); // no task filter: every process
        fds.push(ownersLink);
      }
      const program = tcpCountsProgram(tcpSocketOffsets(btf), { counts, listeners, config, owners });
      const attachBtfId = btf.typeId("FUNC", "bpf_iter_tcp");
      btf.save();
      const prog = iterProgLoad({
        attachBtfId,
        insns: assemble(program),
        listing: new Listing(program),
        name: "tcpka_counts",
      });
      fds.push(prog);
      const tcpLink = iterLinkCreate(prog, Buffer.alloc(0));
      fds.push(tcpLink);
      const hz = kernelHz();
      const ownNetns = openSync("/proc/thread-self/ns/net", constants.O_RDONLY);
      return new SocketCounter(fds, { counts, listeners, config }, tcpLink, ownersLink, ownNetns, hz);
    } catch (e) {
      for (const fd of fds.reverse()) close(fd);
      throw e;
    }
  }

  /**
   * Count the sockets of these namespaces (undefined: tcpka's own, else an nsfs path). null when the count map
   * filled up (too many distinct keys): the caller reads the records instead.
   */
  count(namespaces: readonly (NetNamespace | undefined)[]): SocketCount[] | null {
    this.generation = (this.generation + 1) >>> 0 || 1;
    const cfg = Buffer.alloc(8);
    cfg.writeUInt32LE(this.generation, 0);
    blobMapWrite(this.maps.config, cfg);
    if (this.ownersLink !== undefined) this.run(iterCreate(this.ownersLink));
    try {
      for (const ns of namespaces) {
        if (ns === undefined || ns.own) {
          this.run(iterCreate(this.tcpLink));
          continue;
        }
        let fd: number;
        try {
          fd = openSync(ns.path, constants.O_RDONLY);
        } catch {
          continue; // its last process exited since: nothing of it to count
        }
        let iter: number;
        try {
          iter = iterCreateIn(this.tcpLink, fd, this.ownNetns);
        } finally {
          closeSync(fd);
        }
        this.run(iter);
      }
    } finally {
      mapDrain(this.maps.listeners, LISTEN_KEY_SIZE, 8, MAX_LISTENERS);
    }
    const { keys, values, count } = mapDrain(this.maps.counts, COUNT_KEY_SIZE, 8, MAX_KEYS);
    if (blobMapRead(this.maps.config, 8).readUInt32LE(4) !== 0) return null;
    const out: SocketCount[] = new Array(count);
    for (let i = 0; i < count; i++) out[i] = this.decode(keys, i * COUNT_KEY_SIZE, values, i * 8);
    return out;
  }

  /** Run a walk to its end: the programs write nothing, so the first read returns 0 once it is over. */
  private run(iter: number): void {
    try {
      for (;;) {
        const n = readFd(iter, this.scratch);
        if (n < 0) throw new Error(`reading the kernel's walk: errno ${-n}`);
        if (n === 0) return;
      }
    } finally {
      close(iter);
    }
  }

  /** One entry of the count map (layout in src/bpf/socket-counts.ts). */
  private decode(k: Buffer, at: number, v: Buffer, vat: number): SocketCount {
    const keepalive = k[at + 5] === 1;
    const listening = k[at + 4] === KIND_LISTEN;
    const hz = this.hz;
    const settings =
      keepalive && !listening
        ? this.shared.of(
            true,
            Math.floor(k.readUInt32LE(at + 24) / hz),
            Math.floor(k.readUInt32LE(at + 28) / hz),
            k[at + 32] as number,
            k.readUInt32LE(at + 20),
          )
        : null;
    return {
      netns: k.readUInt32LE(at),
      listening,
      keepalive,
      port: k.readUInt16LE(at + 6),
      cgroup: k.readUInt32LE(at + 8) + k.readUInt32LE(at + 12) * 0x1_0000_0000,
      owner: k.readUInt32LE(at + 16),
      settings,
      count: Number(v.readBigUInt64LE(vat)),
    };
  }

  close(): void {
    for (const fd of this.fds.reverse()) close(fd);
    this.fds.length = 0;
    closeSync(this.ownNetns);
  }
}
