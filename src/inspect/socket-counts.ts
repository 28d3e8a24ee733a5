/**
 * The established and listening TCP sockets of every network namespace, counted in the kernel (the programs of
 * src/bpf/socket-counts.ts): what a metrics scrape needs, without a record per socket. One TCP iterator walk
 * per namespace, as the inventory's (kernel-sockets.ts), and, for the owners, one task_file walk of every
 * process's files after them; then a few hundred map entries are read and the maps emptied. With the owners,
 * tcpka's own namespace gets no TCP walk where the owners' walk met every one of its hashed sockets (sockstat's
 * count), only one of its listeners (tcpCountsProgram's listeners-only variant); the other namespaces are held
 * (HeldSockets).
 *
 * The answers are those of the record path (KernelSockets with the owners' OwnerTable), which the tests compare
 * them with: the same keepalive flag and effective settings, namespace, cgroup, first owner and service port.
 *
 * Needs what KernelSockets needs (the TCP iterator, Linux 5.9, BTF, CAP_BPF + CAP_PERFMON or root), and for the
 * owners the task_file iterator with bpf_sock_from_file (5.11) and bpf_rdonly_cast where there is one. open()
 * throws where the kernel refuses; the caller (metrics/exporter.ts) then scrapes from the records.
 */
import { closeSync, constants, fstatSync, openSync } from "node:fs";
import { release } from "node:os";
import { assemble, Listing } from "../bpf/asm.js";
import {
  ALL_SOCKETS,
  CONFIG_SIZE,
  COUNT_KEY_SIZE,
  type FileRef,
  KIND_ESTABLISHED,
  KIND_LISTEN,
  LISTEN_KEY_SIZE,
  ownerCountsProgram,
  tcpCountsProgram,
} from "../bpf/socket-counts.js";
import { heldOffsets, taskFileMembers } from "../bpf/socket-fds.js";
import { TCP_RECORD_SIZE, tcpSockCast, tcpSocketOffsets } from "../bpf/tcp-sockets.js";
import { BPF_MAP_TYPE_LRU_HASH } from "../kernel/constants.js";
import { TCP_STATES } from "../kernel/states.js";
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
} from "../sys/bpf.js";
import { CachedBtf } from "../sys/btf.js";
import { close, kernelHz } from "../sys/libc.js";
import { readFd } from "../sys/read-ahead-ring.js";
import { type HeldNamespace, HeldSockets, HOLD_WITHOUT_OWNERS } from "./kernel-sockets.js";
import type { NetNamespace } from "./namespaces.js";
import { tcpCounts } from "./netstat.js";
import { fdRecordBuffer, fillHeldNetns, heldNetnsMap, readFdRecords } from "./socket-fds.js";

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
/**
 * Sockets whose file more fds hold that the owners' walk can tell apart in one scrape; beyond, the LRU map forgets
 * some, which then count twice for their owners (cut to the TCP walk's totals) and make the own namespace's seen
 * count exceed sockstat's, so that it is walked.
 */
const MAX_MARKS = 65_536;
/**
 * Once the owners' walk missed a socket of tcpka's own namespace, the scrapes that walk it instead before that
 * walk counts it again: a socket that no process shows for long (a kernel's, or a connection held by a thread with
 * a file table of its own; a listener no longer counts, the listeners' walk sees it) would make every scrape pay
 * both, where most scrapes then pay the walk alone.
 */
const OWN_RETRY = 7;
const EAGAIN = 11;
/** Namespaces a scrape may hold (src/bpf/socket-fds.ts); beyond, they are walked. */
const MAX_HELD = 4_096;

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
  /** where the owners' walk's records are read (fdRecordBuffer), once a scrape holds a namespace */
  private records: Buffer | undefined;
  /** the namespaces other than tcpka's own that the last count() walked (the rest it held or skipped) */
  readonly walked = new Set<number>();
  /** whether the last count() made a TCP walk of tcpka's own namespace (else the owners' walk counted it, or none) */
  walkedOwn = false;
  /** scrapes left that walk tcpka's own namespace before the owners' walk counts it again (OWN_RETRY) */
  private ownRetry = 0;

  private constructor(
    private readonly fds: number[],
    private readonly maps: {
      counts: number;
      listeners: number;
      config: number;
      maxKeys: number;
      held: number;
      holdFrom: number;
    },
    private readonly tcpLink: number,
    /** the owners' walk: counting owners, or (without `owners`) only writing the held namespaces' sockets */
    private readonly ownersLink: number | undefined,
    /** with the owners: the listeners of tcpka's own namespace alone, so that the owners' walk counts the rest */
    private readonly listenersLink: number | undefined,
    private readonly owners: boolean,
    private readonly ownNetns: number,
    private readonly ownInum: number,
    private readonly hz: number,
  ) {}

  /** Whether this kernel and these rights may (a cheap check before the BTF is read). */
  static possible(owners: boolean): boolean {
    return kernelAtLeast(5, owners ? 11 : 9) && bpfCapable();
  }

  /**
   * Load the programs (with the owners' walk when `owners`); throws when this kernel or these rights cannot.
   * `maxKeys`: the count map's size (tests make it small to see a scrape that does not fit). `holdFrom`: without
   * owners, the fewest namespaces that count() holds rather than walks (4; tests make it 1).
   */
  static open(o: { owners: boolean; maxKeys?: number; holdFrom?: number }): SocketCounter {
    const maxKeys = o.maxKeys ?? MAX_KEYS;
    const fds: number[] = [];
    try {
      const btf = CachedBtf.open();
      const counts = hashMapCreate("tcpka_counts", COUNT_KEY_SIZE, 8, maxKeys);
      fds.push(counts);
      const listeners = hashMapCreate("tcpka_listeners", LISTEN_KEY_SIZE, 8, MAX_LISTENERS);
      fds.push(listeners);
      const config = blobMapCreate("tcpka_count_cfg", CONFIG_SIZE);
      fds.push(config);
      const offsets = tcpSocketOffsets(btf);
      let ownersLink: number | undefined;
      // The held namespaces' map: a namespace in it gets no TCP walk, its sockets come from the owners' walk.
      let heldMap = heldNetnsMap(MAX_HELD);
      fds.push(heldMap);
      const loadOwners = (held: boolean): void => {
        // the marks of sockets that more fds hold (few: a listener of forked workers, a child's inherited fds);
        // an LRU map forgets old generations' by itself
        const owners = hashMapCreate("tcpka_owners", 8, 4, MAX_MARKS, BPF_MAP_TYPE_LRU_HASH);
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
          tcpSockCast(btf),
          held ? { offsets: heldOffsets(btf), netns: heldMap, only: !o.owners } : undefined,
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
      };
      if (o.owners) {
        try {
          loadOwners(true);
        } catch {
          heldMap = -1; // this kernel refuses the held records: every namespace is walked
          loadOwners(false);
        }
      } else if (kernelAtLeast(5, 11)) {
        try {
          loadOwners(true); // for the held namespaces alone
        } catch {
          heldMap = -1;
        }
      } else heldMap = -1;
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
      let listenersLink: number | undefined;
      if (o.owners) {
        const listen = tcpCountsProgram(offsets, { counts, listeners, config }, true);
        const lprog = iterProgLoad({
          attachBtfId,
          insns: assemble(listen),
          listing: new Listing(listen),
          name: "tcpka_listeners",
        });
        fds.push(lprog);
        listenersLink = iterLinkCreate(lprog, Buffer.alloc(0));
        fds.push(listenersLink);
      }
      const hz = kernelHz();
      const ownNetns = openSync("/proc/thread-self/ns/net", constants.O_RDONLY);
      return new SocketCounter(
        fds,
        { counts, listeners, config, maxKeys, held: heldMap, holdFrom: o.holdFrom ?? HOLD_WITHOUT_OWNERS },
        tcpLink,
        ownersLink,
        listenersLink,
        o.owners,
        ownNetns,
        fstatSync(ownNetns).ino,
        hz,
      );
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
    // tcpka's own namespace (the host's, where the most sockets are) is counted by the owners' walk, which visits
    // each of its sockets that a process holds anyway; its TCP walk is made only where that walk missed some.
    const wantsOwn = namespaces.some((ns) => ns === undefined || ns.own);
    const countOwn =
      wantsOwn &&
      this.owners &&
      this.ownersLink !== undefined &&
      this.listenersLink !== undefined &&
      this.ownRetry === 0;
    if (wantsOwn && this.ownRetry > 0) this.ownRetry--;
    const cfg = Buffer.alloc(CONFIG_SIZE);
    cfg.writeUInt32LE(this.generation, 0);
    if (countOwn) cfg.writeUInt32LE(this.ownInum, 8);
    blobMapWrite(this.maps.config, cfg);
    this.walkedOwn = false;
    // Each TCP walk of another namespace scans the one established hash that all share (seq_sk_match() in
    // net/ipv4/tcp_ipv4.c): ~12 ms at 100,000 sockets elsewhere. So a namespace is held instead
    // (src/bpf/socket-fds.ts): the owners' walk writes its sockets whole, and they are counted here.
    const held = new Map<number, { ns: NetNamespace; fd: number; empty: () => boolean }>();
    const js = new JsCounts();
    this.walked.clear();
    try {
      for (const ns of namespaces) {
        if (ns === undefined || ns.own) {
          if (countOwn && this.listenersLink !== undefined) this.listen(iterCreate(this.listenersLink));
          else {
            this.walkedOwn = true;
            this.run(iterCreate(this.tcpLink));
          }
          continue;
        }
        // A namespace with no TCP socket hashed (a container without a network; TIME-WAIT ones are not counted)
        // needs no walk, which would scan the whole established hash for nothing.
        const empty = () => ns.pid !== undefined && tcpCounts(ns.pid, ns.inum)?.inuse === 0;
        const holds = ns.pid !== undefined && this.maps.held >= 0 && held.size < MAX_HELD && !held.has(ns.inum);
        if (!holds && empty()) continue;
        let fd: number;
        try {
          fd = openSync(ns.path, constants.O_RDONLY);
        } catch {
          continue; // its last process exited since: nothing of it to count
        }
        if (holds) {
          held.set(ns.inum, { ns, fd, empty });
          continue;
        }
        try {
          this.walkIn(fd, ns.inum);
        } finally {
          closeSync(fd);
        }
      }
      // Without the process label the owners' walk is made for the held namespaces alone: it visits every file
      // of the host (~45 ms at 100,000 sockets, BENCHMARKS §7), about four TCP walks' worth.
      if (!this.owners && held.size < this.maps.holdFrom) {
        for (const [inum, h] of held) if (!h.empty()) this.walkIn(h.fd, inum);
        for (const { fd } of held.values()) closeSync(fd);
        held.clear();
      }
      if (this.maps.held >= 0) {
        mapDrain(this.maps.held, 4, 1, MAX_HELD);
        fillHeldNetns(this.maps.held, [...held.keys()]);
      }
      // After the TCP walks: the owners' program finds each namespace's listeners in the map.
      const sockets = held.size > 0 ? new HeldSockets(held.keys()) : undefined;
      if (this.ownersLink !== undefined && (this.owners || sockets)) this.run(iterCreate(this.ownersLink), sockets);
      if (countOwn) {
        // Every hashed socket of the namespace seen, as sockstat counts them, read once the walk is over: the
        // owners' walk's counts of it make its TCP walk's (ownTotals). Fewer: some have no file that a
        // process's main thread holds (not accepted yet, orphaned, a kernel's), or one opened behind the walk;
        // more: one closed during it. Then the namespace is walked after all and those counts dropped.
        const seen = blobMapRead(this.maps.config, CONFIG_SIZE).readUInt32LE(12);
        if (tcpCounts(process.pid, this.ownInum)?.inuse !== seen) {
          this.walkedOwn = true;
          this.ownRetry = OWN_RETRY;
          this.run(iterCreate(this.tcpLink));
        }
      }
      for (const [inum, { ns, fd }] of held) {
        const h = sockets?.byNetns.get(inum);
        if (!h) continue;
        const complete = h.complete(ns.pid, inum, false);
        // Not all of them held: the namespace is walked after all, and its held sockets are counted only under
        // their owners (the walk counts them all).
        if (!complete) this.walkIn(fd, inum);
        js.add(h, complete, this.owners);
      }
    } catch (e) {
      // A walk that failed half-way leaves counts behind: none may be in the next scrape's.
      mapDrain(this.maps.counts, COUNT_KEY_SIZE, 8, this.maps.maxKeys);
      throw e;
    } finally {
      for (const { fd } of held.values()) closeSync(fd);
      mapDrain(this.maps.listeners, LISTEN_KEY_SIZE, 8, MAX_LISTENERS);
    }
    const drained = mapDrain(this.maps.counts, COUNT_KEY_SIZE, 8, this.maps.maxKeys);
    if (blobMapRead(this.maps.config, CONFIG_SIZE).readUInt32LE(4) !== 0) return null;
    const { keys, values, count } = js.append(countOwn ? ownTotals(drained, this.ownInum, !this.walkedOwn) : drained);
    const out: SocketCount[] = [];
    if (!this.owners) {
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

  /** The listeners' walk (tcpCountsProgram, listenersOnly), which ends with EAGAIN where it stopped itself. */
  private listen(iter: number): void {
    try {
      for (;;) {
        const n = readFd(iter, this.scratch);
        if (n === 0 || n === -EAGAIN) return; // the program's stop (it returned 1), or a walk with no socket past them
        if (n < 0) throw new Error(`reading the kernel's walk of the listeners: errno ${-n}`);
      }
    } finally {
      close(iter);
    }
  }

  /** The TCP walk of namespace `inum`, which the nsfs file `fd` names. */
  private walkIn(fd: number, inum: number): void {
    this.walked.add(inum);
    this.run(iterCreateIn(this.tcpLink, fd, this.ownNetns));
  }

  /**
   * Run a walk to its end. The programs write only the held namespaces' sockets (the owners' walk), which go to
   * `held`, once each, with their first owner; the counting leaves the first read at 0 once it is over.
   */
  private run(iter: number, held?: HeldSockets): void {
    const read = (into: Buffer): number => {
      const n = readFd(iter, into);
      if (n < 0) throw new Error(`reading the kernel's walk: errno ${-n}`);
      return n;
    };
    try {
      if (!held) {
        while (read(this.scratch) > 0);
        return;
      }
      const seen = new Set<number>();
      this.records ??= fdRecordBuffer();
      const b = this.records;
      readFdRecords(read, b, (at, tcp) => {
        if (tcp < 0) return;
        const inode = b.readUInt32LE(at + 8) + b.readUInt32LE(at + 12) * 0x1_0000_0000;
        if (seen.has(inode)) return; // a socket that more fds hold: its first owner's
        seen.add(inode);
        held.add(b, tcp, b.readUInt32LE(at + 16), b.readUInt32LE(at + 20));
      });
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

/**
 * The owners' walk's counts of tcpka's own namespace (`netns`), in the drained entries: where `stand`, they make
 * the TCP walk's (owner 0): its listeners' (owner ALL_SOCKETS) renamed, its ESTABLISHED sockets' (each under its
 * first owner) summed, the owner's field aside. Else (the namespace was walked) the listeners' go.
 */
function ownTotals(d: { keys: Buffer; values: Buffer; count: number }, netns: number, stand: boolean): typeof d {
  let n = 0;
  const totals = new Map<string, bigint>();
  for (let i = 0; i < d.count; i++) {
    const at = i * COUNT_KEY_SIZE;
    const owner = d.keys.readUInt32LE(at + 16);
    if (owner === ALL_SOCKETS) {
      if (!stand) continue;
      d.keys.writeUInt32LE(0, at + 16);
    } else if (stand && owner !== 0 && d.keys.readUInt32LE(at) === netns) {
      const id = d.keys.toString("latin1", at, at + 16) + d.keys.toString("latin1", at + 20, at + COUNT_KEY_SIZE);
      totals.set(id, (totals.get(id) ?? 0n) + d.values.readBigUInt64LE(i * 8));
    }
    if (n !== i) {
      d.keys.copy(d.keys, n * COUNT_KEY_SIZE, at, at + COUNT_KEY_SIZE);
      d.values.copy(d.values, n * 8, i * 8, i * 8 + 8);
    }
    n++;
  }
  if (totals.size === 0) return { keys: d.keys, values: d.values, count: n };
  const keys = Buffer.alloc((n + totals.size) * COUNT_KEY_SIZE);
  const values = Buffer.alloc((n + totals.size) * 8);
  d.keys.copy(keys, 0, 0, n * COUNT_KEY_SIZE);
  d.values.copy(values, 0, 0, n * 8);
  for (const [id, count] of totals) {
    const at = n * COUNT_KEY_SIZE;
    keys.write(id.slice(0, 16), at, "latin1"); // owner 0 at 16 (zeroed)
    keys.write(id.slice(16), at + 20, "latin1");
    values.writeBigUInt64LE(count, n * 8);
    n++;
  }
  return { keys, values, count: n };
}

/**
 * Counts of held namespaces' sockets (HeldNamespace) made here, in the count map's key layout
 * (src/bpf/socket-counts.ts), so that they join the map's own: what the TCP walk would have counted (tgid 0),
 * where the namespace was not walked, and with owners what the owners' walk would have (the first owner's tgid).
 */
class JsCounts {
  private readonly counts = new Map<string, number>();
  private readonly key = Buffer.alloc(COUNT_KEY_SIZE);

  /** `all`: count every socket under tgid 0 too (the namespace was not walked); `owners`: under its owner. */
  add(h: HeldNamespace, all: boolean, owners: boolean): void {
    const r = h.records;
    const k = this.key;
    // The service port, as the TCP walk's program chooses it: the local one where the namespace listens on it.
    const listening = new Set<number>();
    for (let at = 0; at < h.count * TCP_RECORD_SIZE; at += TCP_RECORD_SIZE)
      if (r[at + 2] === TCP_STATES.LISTEN) listening.add(r.readUInt16LE(at + 8));
    for (let i = 0; i < h.count; i++) {
      const at = i * TCP_RECORD_SIZE;
      const state = r[at + 2];
      if (state !== TCP_STATES.ESTABLISHED && state !== TCP_STATES.LISTEN) continue;
      k.fill(0);
      k.writeUInt32LE(r.readUInt32LE(at + 76), 0);
      const keepalive = ((r[at + 5] as number) & 2) !== 0;
      k[5] = keepalive ? 1 : 0;
      if (state === TCP_STATES.LISTEN) {
        k[4] = KIND_LISTEN;
        k.writeUInt16LE(r.readUInt16LE(at + 8), 6);
        if (all) this.bump();
        continue;
      }
      k[4] = KIND_ESTABLISHED;
      const local = r.readUInt16LE(at + 8);
      k.writeUInt16LE(listening.has(local) ? local : r.readUInt16BE(at + 10), 6);
      r.copy(k, 8, at + 80, at + 88);
      if (keepalive) {
        // each resolved to the namespace's where the socket's own is 0 (keepalive_time_when() and friends)
        k.writeUInt32LE(r.readUInt32LE(at + 72), 20);
        k.writeUInt32LE(r.readUInt32LE(at + 56) || r.readUInt32LE(at + 64), 24);
        k.writeUInt32LE(r.readUInt32LE(at + 60) || r.readUInt32LE(at + 68), 28);
        k[32] = (r[at + 6] as number) || (r[at + 7] as number);
      }
      if (all) this.bump();
      if (owners) {
        k.writeUInt32LE(h.owners[i] as number, 16);
        this.bump();
      }
    }
  }

  /** The map's drained entries with these after them. */
  append(d: { keys: Buffer; values: Buffer; count: number }): { keys: Buffer; values: Buffer; count: number } {
    if (this.counts.size === 0) return d;
    const count = d.count + this.counts.size;
    const keys = Buffer.alloc(count * COUNT_KEY_SIZE);
    const values = Buffer.alloc(count * 8);
    d.keys.copy(keys, 0, 0, d.count * COUNT_KEY_SIZE);
    d.values.copy(values, 0, 0, d.count * 8);
    let i = d.count;
    for (const [id, n] of this.counts) {
      keys.write(id, i * COUNT_KEY_SIZE, "latin1");
      values.writeBigUInt64LE(BigInt(n), i * 8);
      i++;
    }
    return { keys, values, count };
  }

  private bump(): void {
    const id = this.key.toString("latin1");
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
  }
}
