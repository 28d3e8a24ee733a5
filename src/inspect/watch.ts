/**
 * `tcpka watch`'s engine: the tracing programs of src/bpf/keepalive-watch.ts attached, their ring buffer
 * (sys/ringbuf.ts) read every POLL_MS, each record decoded into a WatchEvent with its owner (the socket's inode
 * looked up in /proc, once per socket). Everything is closed by stop(): the links detach with their fds, the maps
 * go with the programs.
 */

import { readFileSync } from "node:fs";
import { ipv4, ipv6 } from "../addresses.js";
import { assemble, Listing } from "../bpf/asm.js";
import {
  type CastIds,
  FLAGS,
  KIND,
  LOST,
  RECORD,
  type SetsockoptIds,
  setsockoptOffsets,
  setsockoptPrograms,
  type WatchOffsets,
  watchOffsets,
  watchPrograms,
} from "../bpf/keepalive-watch.js";
import { TcpkaError } from "../errors.js";
import { AF_INET, BPF_TRACE_RAW_TP } from "../kernel/constants.js";
import { SOCKOPTS } from "../kernel/sockopts.js";
import {
  bpfCapable,
  counterMapCreate,
  counterRead,
  hashMapCreate,
  tracepointAttach,
  tracepointProgLoad,
  tracingAttach,
  tracingProgLoad,
} from "../sys/bpf.js";
import { CachedBtf } from "../sys/btf.js";
import { close, kernelHz } from "../sys/libc.js";
import { perfTracepointOpen, type TraceEvent, traceEvents } from "../sys/perf.js";
import { RingBuffer } from "../sys/ringbuf.js";
import type { SocketOwner } from "./owners.js";
import { findOwners } from "./owners.js";
import { type Workload, Workloads } from "./workloads.js";

export type WatchEventKind = "probe" | "answered" | "killed" | "timed-out" | "on" | "retuned" | "off";

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
  /** the cgroup v2 id the socket is charged to (0: unknown) */
  cgroup: number;
  /** the idle time in force (seconds: the socket's own, else its namespace's) */
  idleS: number;
  /** the interval between probes in force (seconds: the socket's own, else its namespace's) */
  intervalS: number;
  /**
   * on, retuned, off: the options a program's setsockopt(2) set in this change (the kernel's names:
   * SO_KEEPALIVE, TCP_KEEPIDLE...), in order; empty when only the keepalive timer showed it (a BPF program's
   * bpf_setsockopt, or the setsockopt programs not loaded)
   */
  options?: string[];
  /** on, retuned, off: keepalive on after the change (a retune of a connection without keepalive: false) */
  keepalive?: boolean;
  /** on, retuned: seconds until the first probe (the timer's new expiry) */
  nextProbeS?: number;
  /**
   * on: armed by the kernel as the connection was established — keepalive set on the socket before connect(), or
   * by a sock_ops program (tcpka enforce's) — so no task did it
   */
  atConnect?: boolean;
}

const RING_SIZE = 1 << 20; // 1 MiB: about 9,000 records between two polls
const POLL_MS = 100;
const KIND_NAMES: Record<number, WatchEventKind> = {
  [KIND.probe]: "probe",
  [KIND.answered]: "answered",
  [KIND.killed]: "killed",
  [KIND.timedOut]: "timed-out",
  [KIND.on]: "on",
  [KIND.retuned]: "retuned",
  [KIND.off]: "off",
};
/**
 * How long after a change of a socket the next one is folded into it: a re-arm to another bucket of the timer
 * wheel is a timer_cancel and a timer_start a few microseconds apart on one CPU, under the socket's lock
 * (__mod_timer), and the setsockopt's own record follows them at the syscall's exit; a program's SO_KEEPALIVE
 * then TCP_KEEPIDLE (or Node's four calls) come one right after the other. A group spans at most GROUP_NS.
 */
const PAIR_NS = 2_000_000n;
const GROUP_NS = 20_000_000n;

/** The options of the setsockopt records by "level optname" (kernel/sockopts.ts). */
const OPTION_NAMES = new Map<string, string>(
  (["keepalive", "idle", "interval", "count"] as const).map((n) => {
    const [level, name, text] = SOCKOPTS[n];
    return [`${level} ${name}`, text];
  }),
);

function byTime(a: WatchEvent, b: WatchEvent): number {
  return a.ns < b.ns ? -1 : a.ns > b.ns ? 1 : 0;
}

function isChange(e: WatchEvent): boolean {
  return e.kind === "on" || e.kind === "retuned" || e.kind === "off";
}

/** A record of a program's setsockopt (it names its option), not of the keepalive timer. */
function isSet(e: WatchEvent): boolean {
  return e.options !== undefined;
}

/**
 * One socket's changes, a few microseconds to PAIR_NS apart (oldest first), as the lines to show: the keepalive
 * timer's records (timer_start: on, or retuned where keepalive was on already; timer_cancel: off) and the
 * setsockopt records of the same calls, which come at the syscall's exit, after the timer's, with the values the
 * socket has then. So one setsockopt (or a program's few in a row) is one line:
 * - a timer_cancel right before a timer_start that finds keepalive on is a re-arm (a new TCP_KEEPIDLE:
 *   __mod_timer moving the timer to another wheel bucket), not an off;
 * - a line starts at the group's first record and takes the values of each one after it (the last is what the
 *   socket has), its options added up; its kind is on once the timer is armed for keepalive turned on (the
 *   TCP_KEEPIDLE/INTVL/CNT set before it are the same change: tcpka enable's order), off at a timer_cancel (which
 *   starts a line of its own: a turn on and off within PAIR_NS is two lines);
 * - a setsockopt record that starts the group is a retune (TCP_KEEP*) — of a connection without keepalive too
 *   (`keepalive` false) — or, for SO_KEEPALIVE, a call that changed nothing (1 where it was on, 0 where it was
 *   off: turning it on or off arms or removes the timer, whose record would come first), which shows nothing
 *   unless a TCP_KEEP* of the same group follows.
 */
export function resolveChanges(group: readonly WatchEvent[]): WatchEvent[] {
  const out: WatchEvent[] = [];
  let line: WatchEvent | null = null;
  let noop = false;
  const finish = () => {
    if (line && !noop) {
      if (!line.keepalive) delete line.nextProbeS;
      out.push(line);
    }
    line = null;
    noop = false;
  };
  group.forEach((e, i) => {
    const next = group[i + 1];
    if (!isSet(e) && e.kind === "off" && next && !isSet(next) && next.kind === "retuned") return; // a re-arm
    const keepalive = isSet(e) ? e.keepalive === true : e.kind !== "off";
    if (!isSet(e) && e.kind === "off") {
      finish();
      line = { ...e, options: [], keepalive: false };
      return;
    }
    if (line === null || (!isSet(e) && e.kind === "on" && line.kind === "off")) {
      finish();
      line = { ...e, options: [...(e.options ?? [])], keepalive };
      noop = isSet(e) && e.options?.[0] === "SO_KEEPALIVE";
      if (isSet(e)) line.kind = noop ? (keepalive ? "on" : "off") : "retuned";
      return;
    }
    const l: WatchEvent = line;
    if (!isSet(e) && e.kind === "on") {
      l.kind = "on";
      if (e.atConnect) l.atConnect = true;
      noop = false;
    } else if (noop && (!isSet(e) || e.options?.[0] !== "SO_KEEPALIVE")) {
      l.kind = "retuned";
      noop = false;
    }
    const { kind: _k, ns: _n, at: _a, atConnect: _c, pid: _p, comm: _m, options, nextProbeS, ...values } = e;
    Object.assign(l, values, { keepalive });
    if (nextProbeS !== undefined) l.nextProbeS = nextProbeS;
    if (options) l.options = [...(l.options ?? []), ...options];
  });
  finish();
  return out;
}

/**
 * The address of tcp_keepalive_timer, the function of every TCP socket's sk_timer, from /proc/kallsyms (root
 * reads the real addresses; others read zeros, kptr_restrict).
 */
/**
 * bpf_rdonly_cast (Linux 6.2) and the types it makes of a timer's socket, from the kernel's BTF; null where the
 * kernel has none: watch then runs without the on / retuned / off events.
 */
function castIds(btf: CachedBtf): CastIds | null {
  try {
    return {
      rdonlyCast: btf.typeId("FUNC", "bpf_rdonly_cast"),
      sock: btf.typeId("STRUCT", "sock"),
      tcpSock: btf.typeId("STRUCT", "tcp_sock"),
    };
  } catch {
    return null;
  }
}

function keepaliveTimerAddress(): bigint {
  const m = /^([0-9a-f]+) [tT] tcp_keepalive_timer$/m.exec(readFileSync("/proc/kallsyms", "latin1"));
  const a = m ? BigInt(`0x${m[1]}`) : 0n;
  if (a === 0n) throw new Error("no address of tcp_keepalive_timer in /proc/kallsyms");
  return a;
}

/**
 * The setsockopt programs (bpf/keepalive-watch.ts) loaded and attached to syscalls:sys_exit_setsockopt, then
 * sys_enter_setsockopt (tracefs gives their ids and records, sys/perf.ts), with the stash map they share: the fds
 * to close, in the order to open them (closed in reverse: the enter's first). Throws with why not; then nothing
 * of it stays open.
 */
function attachSetsockopt(
  btf: CachedBtf,
  o: WatchOffsets,
  m: { ring: number; flags: number; probing: number },
  casts: CastIds,
): number[] {
  const fds: number[] = [];
  try {
    const [enter, exit] = traceEvents("syscalls", ["sys_enter_setsockopt", "sys_exit_setsockopt"]) as [
      TraceEvent,
      TraceEvent,
    ];
    // The programs read an argument's low 32 bits (little-endian) and the return value's 64.
    const field = (e: TraceEvent, name: string, size: number) => {
      const f = e.fields.get(name);
      if (!f || f.size < size) throw new Error(`the trace event of setsockopt has no ${size}-byte field ${name} here`);
      return f.offset;
    };
    const fields = {
      fd: field(enter, "fd", 4),
      level: field(enter, "level", 4),
      optname: field(enter, "optname", 4),
      ret: field(exit, "ret", 8),
    };
    const ids: SetsockoptIds = {
      ...casts,
      task: btf.typeId("STRUCT", "task_struct"),
      file: btf.typeId("STRUCT", "file"),
      socket: btf.typeId("STRUCT", "socket"),
    };
    // A stash per thread between its enter and its exit: threads inside setsockopt(2) at once.
    const stash = hashMapCreate("tcpka_w_stash", 8, 8, 4096);
    fds.push(stash);
    for (const p of setsockoptPrograms(o, setsockoptOffsets(btf), { ...m, stash }, ids, fields)) {
      const prog = tracepointProgLoad({ name: p.name, insns: assemble(p.insns), listing: new Listing(p.insns) });
      fds.push(prog);
      const perf = perfTracepointOpen((p.event === "sys_enter_setsockopt" ? enter : exit).id);
      fds.push(perf);
      fds.push(tracepointAttach(prog, perf));
    }
    return fds;
  } catch (e) {
    for (const fd of fds.reverse()) close(fd);
    throw e;
  }
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
    private readonly ring: RingBuffer,
    private readonly hz: number,
    /** null when keepalive turned on, retuned and off are traced (bpf_rdonly_cast: Linux 6.2); else why not */
    readonly changesMissing: string | null,
    /**
     * null when a program's own setsockopt of SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT is traced (the syscall's trace
     * events), or when changes are not traced at all (changesMissing says why); else why not: a new
     * TCP_KEEPINTVL or TCP_KEEPCNT alone is then not seen
     */
    readonly setsockoptMissing: string | null,
    private readonly withOwners: boolean,
  ) {}

  /** Changes held back for PAIR_NS (see there), oldest first. */
  private held: WatchEvent[] = [];

  /**
   * Load and attach everything; throws TcpkaError("unsupported" or "permission") with why not. `owners: false`
   * leaves the events' owners empty (no /proc scan for the sockets seen: the metrics need their cgroup only).
   * `setsockopt: false` leaves the syscall's trace events alone (they put every system call of the host on the
   * traced path while attached, see bpf/keepalive-watch.ts: for the metrics, which count no changes).
   */
  static start(opts: { owners?: boolean; setsockopt?: boolean } = {}): KeepaliveWatch {
    if (!bpfCapable()) {
      throw new TcpkaError("permission", "tcpka watch traces the kernel: it needs root (CAP_BPF and CAP_PERFMON)", {
        hint: "sudo tcpka watch",
      });
    }
    try {
      return KeepaliveWatch.attach(opts, true);
    } catch (e) {
      // The timer programs take the most from the kernel (a kfunc, two more tracepoints): without them, the rest
      // (a verifier that refuses them fails the first try, whatever else it would have taken).
      try {
        return KeepaliveWatch.attach(opts, false, (e as Error).message);
      } catch (again) {
        if (again instanceof TcpkaError) throw again;
        throw new TcpkaError("unsupported", `cannot trace keepalive in this kernel: ${(again as Error).message}`, {
          hint: "tcpka watch needs BTF tracepoints and a BPF ring buffer (Linux 5.9 or later, CONFIG_DEBUG_INFO_BTF)",
        });
      }
    }
  }

  /** Everything loaded and attached, the timer programs too when `changes` (and the kernel has what they need). */
  private static attach(
    opts: { owners?: boolean; setsockopt?: boolean },
    changes: boolean,
    failed?: string,
  ): KeepaliveWatch {
    const fds: number[] = [];
    let ring: RingBuffer | undefined;
    try {
      const btf = CachedBtf.open();
      const o = watchOffsets(btf);
      ring = RingBuffer.create("tcpka_w_ring", RING_SIZE);
      const flags = counterMapCreate("tcpka_w_flags", FLAGS);
      fds.push(flags);
      const probing = hashMapCreate("tcpka_w_probing", 8, 8, 65536);
      fds.push(probing);
      const casts = changes ? castIds(btf) : null;
      const programs = watchPrograms(o, { ring: ring.fd, flags, probing }, keepaliveTimerAddress(), casts);
      const ids = programs.map((p) => btf.typeId("TYPEDEF", `btf_trace_${p.target}`));
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
      let setsockoptWhy: string | null = null;
      if (casts !== null && opts.setsockopt !== false) {
        try {
          fds.push(...attachSetsockopt(btf, o, { ring: ring.fd, flags, probing }, casts));
        } catch (e) {
          setsockoptWhy = (e as Error).message.split("\n")[0] ?? "?";
        }
      }
      btf.save();
      const why =
        casts !== null
          ? null
          : changes
            ? "this kernel's BTF has no bpf_rdonly_cast (Linux 6.2)"
            : `the programs for them did not load here (${(failed ?? "?").split("\n")[0]})`;
      return new KeepaliveWatch(fds, flags, ring, kernelHz(), why, setsockoptWhy, opts.owners ?? true);
    } catch (e) {
      for (const fd of fds.reverse()) close(fd);
      ring?.close();
      throw e;
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
    const events: WatchEvent[] = [];
    // Each record is decoded into its own object before its space is the kernel's again.
    this.ring.take((data, at, length) => {
      if (length < RECORD) return;
      const e = this.decode(data, at);
      if (e) events.push(e);
    });
    this.fold(events, process.hrtime.bigint());
    if (!events.length) return;
    const unknown = new Set<number>();
    if (this.withOwners) for (const e of events) if (e.inode !== 0 && !this.owners.has(e.inode)) unknown.add(e.inode);
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

  /**
   * Fold the changes of `events` (in place) with those held back: the changes of one socket that follow each
   * other within PAIR_NS are one group, which `resolveChanges` makes one line (two for a turn on and off). A
   * group whose last change is younger than PAIR_NS at `now` is held back until the next poll; the rest stay in
   * `events`, in the kernel's order.
   */
  private fold(events: WatchEvent[], now: bigint): void {
    const changes = this.held;
    this.held = [];
    const others: WatchEvent[] = [];
    for (const e of events) (isChange(e) ? changes : others).push(e);
    if (!changes.length) return;
    changes.sort(byTime);
    const open = new Map<string, WatchEvent[]>();
    const done: WatchEvent[] = [];
    for (const e of changes) {
      const key = `${e.netns} ${e.inode} ${e.localAddress} ${e.localPort} ${e.peerAddress} ${e.peerPort}`;
      const g = open.get(key);
      if (g && e.ns - (g.at(-1) as WatchEvent).ns <= PAIR_NS && e.ns - (g[0] as WatchEvent).ns <= GROUP_NS) {
        g.push(e);
        continue;
      }
      if (g) done.push(...resolveChanges(g));
      open.set(key, [e]);
    }
    for (const g of open.values()) {
      if (now - (g.at(-1) as WatchEvent).ns < PAIR_NS) this.held.push(...g);
      else done.push(...resolveChanges(g));
    }
    events.length = 0;
    events.push(...others, ...done);
    events.sort(byTime);
  }

  private decode(b: Buffer, at: number): WatchEvent | undefined {
    const kind = b[at] === KIND.set ? "set" : KIND_NAMES[b[at] as number];
    if (!kind) return undefined;
    const family = b[at + 1] === AF_INET ? 4 : 6;
    const commEnd = b.indexOf(0, at + 64);
    const value = b.readUInt32LE(at + 56);
    const e: WatchEvent = {
      kind: kind === "set" ? "retuned" : kind,
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
      cgroup: Number(b.readBigUInt64LE(at + 96)),
      idleS: (b.readUInt32LE(at + 104) || b.readUInt32LE(at + 108)) / this.hz,
      intervalS: (b.readUInt32LE(at + 112) || b.readUInt32LE(at + 116)) / this.hz,
    };
    if (kind === "set") {
      // A program's setsockopt: which option, and what the socket has after it (resolveChanges makes it a change).
      const option = OPTION_NAMES.get(`${b[at + 121]} ${b[at + 120]}`);
      if (option === undefined) return undefined;
      e.options = [option];
      e.keepalive = b[at + 122] === 1;
      e.kind = e.keepalive ? "retuned" : "off";
      if (e.keepalive) e.nextProbeS = b.readInt32LE(at + 56) / this.hz;
      return e;
    }
    if (kind === "on" || kind === "retuned") {
      e.nextProbeS = b.readInt32LE(at + 56) / this.hz;
      if (b[at + 93] === 1) e.atConnect = true;
    }
    if (kind === "answered") e.answeredMs = value / 1000;
    else if (kind === "killed" || kind === "timed-out") e.errno = value;
    return e;
  }

  stop(): void {
    clearInterval(this.timer);
    // The programs first (their links detach with their fds), then the ring they write into.
    for (const fd of this.fds.reverse()) close(fd);
    this.fds.length = 0;
    this.ring.close();
  }
}

/** The container, pod or unit of an event's socket: by its cgroup, else its namespace's container. */
export class EventWorkloads {
  private w = Workloads.load();
  /** the cgroups (or, without one, namespaces) for which the records were read again already */
  private readonly reread = new Set<number>();

  of(e: WatchEvent): Workload | null {
    let w = this.find(e);
    // A container started since the records were read: read them again, once per cgroup not found.
    const key = e.cgroup || e.netns;
    if (w === null && key !== 0 && !this.reread.has(key)) {
      if (this.reread.size > 10_000) this.reread.clear();
      this.reread.add(key);
      this.w = Workloads.load();
      w = this.find(e);
    }
    return w;
  }

  private find(e: WatchEvent): Workload | null {
    return (e.cgroup ? this.w.ofCgroup(e.cgroup) : null) ?? this.w.ofNetns(e.netns);
  }
}
