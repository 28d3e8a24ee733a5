/**
 * `tcpka watch`'s engine: the tracing programs of src/bpf/keepalive-watch.ts attached, their ring buffer read
 * every POLL_MS, each record decoded into a WatchEvent with its owner (the socket's inode looked up in /proc, once
 * per socket). Everything is closed by stop(): the links detach with their fds, the maps go with the programs.
 *
 * The ring buffer's layout is the kernel's (kernel/bpf/ringbuf.c): mapped at offset 0 one page holding the
 * consumer's position (written here), at one page the producer's position and then the data, mapped twice in a
 * row so that a record never wraps. Each record starts with an 8-byte header: its length, with BUSY (1 << 31:
 * still being written) and DISCARD (1 << 30), then the data, the whole rounded up to 8 bytes.
 */

import { readFileSync } from "node:fs";
import { ipv4, ipv6 } from "../addresses.js";
import { assemble, Listing } from "../bpf/asm.js";
import { KIND, LOST, RECORD, watchOffsets, watchPrograms } from "../bpf/keepalive-watch.js";
import { TcpkaError } from "../errors.js";
import { AF_INET, BPF_TRACE_RAW_TP } from "../kernel/constants.js";
import {
  bpfCapable,
  counterMapCreate,
  counterRead,
  hashMapCreate,
  ringbufCreate,
  tracingAttach,
  tracingProgLoad,
} from "../sys/bpf.js";
import { CachedBtf } from "../sys/btf.js";
import { close, kernelHz, mapShared } from "../sys/libc.js";
import type { SocketOwner } from "./owners.js";
import { findOwners } from "./owners.js";

export type WatchEventKind = "probe" | "answered" | "killed" | "timed-out";

export interface WatchEvent {
  kind: WatchEventKind;
  /** Date.now() when it was read (the kernel's own time is in `ns`) */
  at: number;
  /** bpf_ktime_get_ns (CLOCK_MONOTONIC) of the event */
  ns: bigint;
  family: 4 | 6;
  netns: number;
  localAddress: string;
  localPort: number;
  peerAddress: string;
  peerPort: number;
  inode: number;
  owners: SocketOwner[];
  /** probe: its number (1 for the first unanswered one); killed: the probes that went unanswered */
  probe: number;
  /** the probes it gives up after (the socket's, else its namespace's) */
  count: number;
  /** answered: milliseconds since the probe */
  answeredMs?: number;
  /** killed, timed out: the error the program gets (ETIMEDOUT, or a soft error such as EHOSTUNREACH) */
  errno?: number;
  /** seconds since the peer was last heard */
  silentS: number;
  userTimeoutMs: number;
  /** the task that ran: for a setsockopt the caller; for timers and packets whoever the CPU interrupted */
  pid: number;
  comm: string;
}

const RING_SIZE = 1 << 20; // 1 MiB: about 9,000 records between two polls
const POLL_MS = 100;
const PAGE = 4096;
const BUSY = 0x8000_0000;
const DISCARD = 0x4000_0000;
const KIND_NAMES: Record<number, WatchEventKind> = {
  [KIND.probe]: "probe",
  [KIND.answered]: "answered",
  [KIND.killed]: "killed",
  [KIND.timedOut]: "timed-out",
};

/**
 * The address of tcp_keepalive_timer, the function of every TCP socket's sk_timer, from /proc/kallsyms (root
 * reads the real addresses; others read zeros, kptr_restrict).
 */
function keepaliveTimerAddress(): bigint {
  const m = /^([0-9a-f]+) [tT] tcp_keepalive_timer$/m.exec(readFileSync("/proc/kallsyms", "latin1"));
  const a = m ? BigInt(`0x${m[1]}`) : 0n;
  if (a === 0n) throw new Error("no address of tcp_keepalive_timer in /proc/kallsyms");
  return a;
}

export class KeepaliveWatch {
  private timer: NodeJS.Timeout | undefined;
  private readonly owners = new Map<number, SocketOwner[]>();
  /** the local port each socket had when last seen: a closing socket has lost it (inet_put_port) by the event */
  private readonly ports = new Map<number, number>();
  private lostSeen = 0n;

  private constructor(
    private readonly fds: number[],
    private readonly flags: number,
    private readonly consumer: { memory: ArrayBuffer; unmap: () => void },
    private readonly producer: { memory: ArrayBuffer; unmap: () => void },
    private readonly hz: number,
  ) {}

  /** Load and attach everything; throws TcpkaError("unsupported" or "permission") with why not. */
  static start(): KeepaliveWatch {
    if (!bpfCapable()) {
      throw new TcpkaError("permission", "tcpka watch traces the kernel: it needs root (CAP_BPF and CAP_PERFMON)", {
        hint: "sudo tcpka watch",
      });
    }
    const fds: number[] = [];
    let consumer: { memory: ArrayBuffer; unmap: () => void } | undefined;
    let producer: { memory: ArrayBuffer; unmap: () => void } | undefined;
    try {
      const btf = CachedBtf.open();
      const o = watchOffsets(btf);
      const ring = ringbufCreate("tcpka_w_ring", RING_SIZE);
      fds.push(ring);
      const flags = counterMapCreate("tcpka_w_flags", 2);
      fds.push(flags);
      const probing = hashMapCreate("tcpka_w_probing", 8, 8, 65536);
      fds.push(probing);
      const programs = watchPrograms(o, { ring, flags, probing }, keepaliveTimerAddress());
      const ids = programs.map((p) => btf.typeId("TYPEDEF", `btf_trace_${p.target}`));
      btf.save();
      programs.forEach((p, i) => {
        const prog = tracingProgLoad({
          name: p.name,
          insns: assemble(p.insns),
          listing: new Listing(p.insns),
          attachType: BPF_TRACE_RAW_TP,
          attachBtfId: ids[i] as number,
        });
        fds.push(prog);
        fds.push(tracingAttach(prog));
      });
      consumer = mapShared(ring, PAGE, 0, true);
      producer = mapShared(ring, PAGE + 2 * RING_SIZE, PAGE, false);
      return new KeepaliveWatch(fds, flags, consumer, producer, kernelHz());
    } catch (e) {
      consumer?.unmap();
      producer?.unmap();
      for (const fd of fds.reverse()) close(fd);
      if (e instanceof TcpkaError) throw e;
      throw new TcpkaError("unsupported", `cannot trace keepalive in this kernel: ${(e as Error).message}`, {
        hint: "tcpka watch needs BTF and fentry (Linux 5.9 or later, CONFIG_DEBUG_INFO_BTF)",
      });
    }
  }

  /** Read the ring every POLL_MS until stop(); `lost` gets how many records the ring had no room for since. */
  run(onEvent: (e: WatchEvent) => void, onLost: (n: number) => void): void {
    this.timer = setInterval(() => {
      this.poll(onEvent);
      const lost = counterRead(this.flags, LOST);
      if (lost > this.lostSeen) {
        onLost(Number(lost - this.lostSeen));
        this.lostSeen = lost;
      }
    }, POLL_MS);
  }

  /** Take every record in the ring now; the owners of sockets not seen before are looked up in one /proc scan. */
  poll(onEvent: (e: WatchEvent) => void): void {
    const cons = new BigUint64Array(this.consumer.memory, 0, 1);
    const prod = new BigUint64Array(this.producer.memory, 0, 1);
    const data = new DataView(this.producer.memory, PAGE);
    const bytes = Buffer.from(this.producer.memory, PAGE);
    let c = cons[0] as bigint;
    const p = prod[0] as bigint;
    const mask = BigInt(RING_SIZE - 1);
    const events: WatchEvent[] = [];
    while (c < p) {
      const at = Number(c & mask);
      const len = data.getUint32(at, true);
      if (len & BUSY) break;
      const size = ((len & 0x3fff_ffff) + 8 + 7) & ~7;
      if (!(len & DISCARD) && (len & 0x3fff_ffff) >= RECORD) {
        const e = this.decode(bytes, at + 8);
        if (e) events.push(e);
      }
      c += BigInt(size);
    }
    cons[0] = c; // the space is the kernel's again: everything needed was copied out
    if (!events.length) return;
    const unknown = new Set<number>();
    for (const e of events) if (e.inode !== 0 && !this.owners.has(e.inode)) unknown.add(e.inode);
    if (unknown.size) {
      const found = findOwners(unknown).owners;
      if (this.owners.size > 100_000) this.owners.clear();
      for (const inode of unknown) this.owners.set(inode, found.get(inode) ?? []);
    }
    for (const e of events) {
      e.owners = this.owners.get(e.inode) ?? [];
      if (e.inode !== 0) {
        if (e.localPort === 0) e.localPort = this.ports.get(e.inode) ?? 0;
        else {
          if (this.ports.size > 100_000) this.ports.clear();
          this.ports.set(e.inode, e.localPort);
        }
        if (e.kind === "killed" || e.kind === "timed-out") this.ports.delete(e.inode);
      }
      onEvent(e);
    }
  }

  private decode(b: Buffer, at: number): WatchEvent | undefined {
    const kind = KIND_NAMES[b[at] as number];
    if (!kind) return undefined;
    const family = b[at + 1] === AF_INET ? 4 : 6;
    const commEnd = b.indexOf(0, at + 64);
    const value = b.readUInt32LE(at + 56);
    const e: WatchEvent = {
      kind,
      at: Date.now(),
      ns: b.readBigUInt64LE(at + 8),
      family,
      netns: b.readUInt32LE(at + 16),
      localPort: b.readUInt16LE(at + 20),
      peerPort: b.readUInt16BE(at + 22),
      localAddress: family === 4 ? ipv4(b, at + 24) : ipv6(b, at + 24),
      peerAddress: family === 4 ? ipv4(b, at + 40) : ipv6(b, at + 40),
      inode: Number(b.readBigUInt64LE(at + 80)),
      owners: [],
      probe: (b[at + 2] as number) + (kind === "probe" ? 1 : 0),
      count: (b[at + 3] as number) || (b[at + 92] as number),
      silentS: b.readUInt32LE(at + 60) / this.hz,
      userTimeoutMs: b.readUInt32LE(at + 88),
      pid: b.readUInt32LE(at + 4),
      comm: b.toString("latin1", at + 64, commEnd >= 0 && commEnd < at + 80 ? commEnd : at + 80),
    };
    if (kind === "answered") e.answeredMs = value / 1000;
    else if (kind === "killed" || kind === "timed-out") e.errno = value;
    return e;
  }

  stop(): void {
    clearInterval(this.timer);
    this.consumer.unmap();
    this.producer.unmap();
    for (const fd of this.fds.reverse()) close(fd);
    this.fds.length = 0;
  }
}
