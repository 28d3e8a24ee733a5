/**
 * The established and listening TCP sockets of every network namespace, counted in the kernel (the programs of
 * src/bpf/socket-counts.ts): what a metrics scrape needs, without a record per socket. One TCP iterator walk
 * per namespace, as the inventory's (kernel-sockets.ts), and, for the owners, one task_file walk of every
 * process's files after them; then a few hundred map entries are read and the maps emptied.
 *
 * The answers are those of the record path (KernelSockets with the owners' OwnerTable), which the tests compare
 * them with: the same keepalive flag and effective settings, namespace, cgroup, first owner and service port.
 *
 * Needs what KernelSockets needs (the TCP iterator, Linux 5.9, BTF, CAP_BPF + CAP_PERFMON or root), and for the
 * owners the task_file iterator with bpf_sock_from_file and bpf_sk_storage_get in iterators (5.11). open()
 * throws where the kernel refuses; the caller (metrics/exporter.ts) then scrapes from the records.
 */
import { closeSync, constants, openSync } from "node:fs";
import { release } from "node:os";
import { assemble, Listing } from "../bpf/asm.js";
import {
  COUNT_KEY_SIZE,
  type FileRef,
  KIND_LISTEN,
  LISTEN_KEY_SIZE,
  ownerCountsProgram,
  tcpCountsProgram,
} from "../bpf/socket-counts.js";
import { taskFileMembers } from "../bpf/socket-fds.js";
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
import { tcpInUse } from "./netstat.js";

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
    private readonly maps: { counts: number; listeners: number; config: number; maxKeys: number },
    private readonly tcpLink: number,
    private readonly ownersLink: number | undefined,
    private readonly ownNetns: number,
    private readonly hz: number,
  ) {}

  /** Whether this kernel and these rights may (a cheap check before the BTF is read). */
  static possible(owners: boolean): boolean {
    return kernelAtLeast(5, owners ? 11 : 9) && bpfCapable();
  }

  /**
   * Load the programs (with the owners' walk when `owners`); throws when this kernel or these rights cannot.
   * `maxKeys`: the count map's size (tests make it small to see a scrape that does not fit).
   */
  static open(o: { owners: boolean; maxKeys?: number }): SocketCounter {
    const maxKeys = o.maxKeys ?? MAX_KEYS;
    const fds: number[] = [];
    try {
      const btf = CachedBtf.open();
      const counts = hashMapCreate("tcpka_counts", COUNT_KEY_SIZE, 8, maxKeys);
      fds.push(counts);
      const listeners = hashMapCreate("tcpka_listeners", LISTEN_KEY_SIZE, 8, MAX_LISTENERS);
      fds.push(listeners);
      const config = blobMapCreate("tcpka_count_cfg", 8);
      fds.push(config);
      const offsets = tcpSocketOffsets(btf);
      let ownersLink: number | undefined;
      if (o.owners) {
        const owners = skStorageMapCreate("tcpka_owners");
        fds.push(owners);
        // struct file's reference count: a file_ref_t since Linux 6.13, an atomic_long_t f_count before
        const refcnt = btf.offsetOf("file", "f_ref.refcnt");
        const count = refcnt === undefined ? btf.offsetOf("file", "f_count") : undefined;
        const ref: FileRef | undefined =
          refcnt !== undefined
            ? { offset: refcnt, unique: 1 }
            : count !== undefined
              ? { offset: count, unique: 2 }
              : undefined;
        const program = ownerCountsProgram(
          { ...offsets, ...taskFileMembers(btf) },
          { counts, listeners, config, owners },
          ref,
        );
        const prog = iterProgLoad({
          attachBtfId: btf.typeId("FUNC", "bpf_iter_task_file"),
          insns: assemble(program),
          listing: new Listing(program),
          name: "tcpka_owncounts",
        });
        fds.push(prog);
        ownersLink = iterLinkCreate(prog, Buffer.alloc(16)); // no task filter: every process
        fds.push(ownersLink);
      }
      const program = tcpCountsProgram(offsets, { counts, listeners, config });
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
      return new SocketCounter(fds, { counts, listeners, config, maxKeys }, tcpLink, ownersLink, ownNetns, hz);
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
    try {
      for (const ns of namespaces) {
        if (ns === undefined || ns.own) {
          this.run(iterCreate(this.tcpLink));
          continue;
        }
        // A namespace with no TCP socket hashed (a container without a network, one that only listens on
        // nothing): no walk, which would scan the whole established hash for nothing (~18 ms at 100,000
        // sockets on the host).
        if (ns.pid !== undefined && tcpInUse(ns.pid) === 0) continue;
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
      // After the TCP walks: the owners' program finds each namespace's listeners in the map.
      if (this.ownersLink !== undefined) this.run(iterCreate(this.ownersLink));
    } catch (e) {
      // A walk that failed half-way leaves counts behind: none may be in the next scrape's.
      mapDrain(this.maps.counts, COUNT_KEY_SIZE, 8, this.maps.maxKeys);
      throw e;
    } finally {
      mapDrain(this.maps.listeners, LISTEN_KEY_SIZE, 8, MAX_LISTENERS);
    }
    const { keys, values, count } = mapDrain(this.maps.counts, COUNT_KEY_SIZE, 8, this.maps.maxKeys);
    if (blobMapRead(this.maps.config, 8).readUInt32LE(4) !== 0) return null;
    const out: SocketCount[] = [];
    if (this.ownersLink === undefined) {
      for (let i = 0; i < count; i++) out.push(this.decode(keys, i * COUNT_KEY_SIZE, values, i * 8));
      return out;
    }
    // Each key's sockets: all of them (tgid 0: the TCP walk's) and those of each first owner (the owners'
    // walk). What no owner took is the sockets that no process showed. A socket opened between the two walks
    // may have an owner and no TCP count: the owners' counts are then cut to the TCP walk's total, as the
    // record path lists the TCP walk's sockets only.
    const groups = new Map<string, { all: SocketCount | undefined; owned: SocketCount[] }>();
    for (let i = 0; i < count; i++) {
      const at = i * COUNT_KEY_SIZE;
      const c = this.decode(keys, at, values, i * 8);
      const id = keys.toString("latin1", at, at + 16) + keys.toString("latin1", at + 20, at + COUNT_KEY_SIZE);
      let g = groups.get(id);
      if (!g) {
        g = { all: undefined, owned: [] };
        groups.set(id, g);
      }
      if (c.owner === 0) g.all = c;
      else g.owned.push(c);
    }
    for (const g of groups.values()) {
      if (!g.all) continue; // only sockets the TCP walk did not see (opened since)
      let left = g.all.count;
      g.owned.sort((a, b) => a.owner - b.owner);
      for (const c of g.owned) {
        const n = Math.min(c.count, left);
        if (n === 0) break;
        out.push(n === c.count ? c : { ...c, count: n });
        left -= n;
      }
      if (left > 0) out.push(left === g.all.count ? g.all : { ...g.all, count: left });
    }
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
