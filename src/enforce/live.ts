/**
 * Keepalive for the live sockets of running processes: find their TCP sockets, duplicate each with
 * pidfd_getfd, check that the duplicate is still the socket that was listed, read its settings, change them,
 * and close the duplicate at once. Only sockets that the kernel lists as TCP in the process's own network
 * namespace are ever duplicated: a pipe, a Unix socket or a UDP socket is never touched.
 */
import { readKeepAlive, SOCKOPTS } from "../inspect/exact.js";
import { commOf, netnsOf, socketFds } from "../inspect/owners.js";
import { readSockets, type TcpSocket } from "../inspect/sockets.js";
import type { Change, EffectiveKeepAlive } from "../settings.js";
import { SysError, setsockoptInt } from "../sys/libc.js";
import { SocketBorrower } from "../sys/pidfd.js";

export interface LiveSocket {
  pid: number;
  comm: string;
  fd: number;
  socket: TcpSocket;
}

export interface LiveScan {
  sockets: LiveSocket[];
  /** pids whose fd table this user may not read */
  unreadable: number[];
  /** every socket inode the processes hold now, skipped ones included */
  present: Set<number>;
}

/**
 * The TCP sockets in the given states held by these processes, each with the kernel's facts about it (read
 * from the process's own network namespace). Sockets whose inode is in `skip` are left out before anything is
 * read about them, so that a watch loop only pays for new sockets.
 */
export function scanProcesses(pids: readonly number[], states: number, skip?: ReadonlySet<number>): LiveScan {
  const fdsOf = new Map<number, [number, number][]>();
  const unreadable: number[] = [];
  const byNetns = new Map<string, number>(); // netns -> one pid in it
  const present = new Set<number>();
  for (const pid of pids) {
    const fds = socketFds(pid);
    if (fds === null) {
      unreadable.push(pid);
      continue;
    }
    for (const [, inode] of fds) present.add(inode);
    const fresh = skip ? fds.filter(([, inode]) => !skip.has(inode)) : fds;
    if (fresh.length === 0) continue;
    const ns = netnsOf(pid);
    if (ns === undefined) continue;
    fdsOf.set(pid, fresh);
    if (!byNetns.has(ns)) byNetns.set(ns, pid);
  }
  if (fdsOf.size === 0) return { sockets: [], unreadable, present };

  const own = netnsOf(process.pid);
  const tcp = new Map<number, TcpSocket>();
  for (const [ns, pid] of byNetns) {
    const list = readSockets(ns === own ? { states } : { states, netnsOf: pid });
    for (const s of list) if (s.inode) tcp.set(s.inode, s);
  }

  const sockets: LiveSocket[] = [];
  for (const [pid, fds] of fdsOf) {
    let comm: string | undefined;
    for (const [fd, inode] of fds) {
      const socket = tcp.get(inode);
      if (!socket) continue; // not TCP, not in a wanted state, or gone
      comm ??= commOf(pid);
      sockets.push({ pid, comm, fd, socket });
    }
  }
  return { sockets, unreadable, present };
}

export type Outcome =
  | { result: "changed" | "would change"; before: EffectiveKeepAlive; changes: Change[] }
  | { result: "unchanged"; before: EffectiveKeepAlive; changes: [] }
  /** the process exited, or closed or replaced the fd, between listing and changing */
  | { result: "gone"; error: SysError; changes: [] }
  | { result: "failed"; error: SysError; changes: Change[] };

const GONE = new Set(["ESRCH", "EBADF", "ESTALE"]);

/**
 * Apply the changes that `plan` computes from a socket's current settings. A failure part-way reports the
 * changes not made; the duplicate is closed in every case.
 */
export function applyLive(
  borrower: SocketBorrower,
  s: LiveSocket,
  plan: (current: EffectiveKeepAlive) => Change[],
  dryRun: boolean,
): Outcome {
  let pending: Change[] = [];
  try {
    return borrower.with(s.pid, s.fd, s.socket.inode, (dup): Outcome => {
      const before = readKeepAlive(dup);
      const changes = plan(before);
      if (changes.length === 0) return { result: "unchanged", before, changes: [] };
      if (dryRun) return { result: "would change", before, changes };
      pending = [...changes];
      for (const c of changes) {
        const [level, name] = SOCKOPTS[c.option];
        setsockoptInt(dup, level, name, c.to);
        pending.shift();
      }
      return { result: "changed", before, changes };
    });
  } catch (e) {
    if (!(e instanceof SysError)) throw e;
    if (GONE.has(e.errnoName)) return { result: "gone", error: e, changes: [] };
    return { result: "failed", error: e, changes: pending };
  }
}

export interface LiveResult {
  socket: LiveSocket;
  outcome: Outcome;
}

/**
 * One enable/disable run over time: each round lists the targets' sockets, skips the ones already handled,
 * and applies the plan to the rest. A socket in a state that is not wanted yet (still connecting) is looked
 * at again in the next round.
 */
export class LiveSession {
  private readonly seen = new Set<number>();

  constructor(
    private readonly states: number,
    private readonly matches: ((s: TcpSocket) => boolean) | null,
    private readonly plan: (current: EffectiveKeepAlive) => Change[],
    private readonly dryRun: boolean,
  ) {}

  /** One pass over the processes: the results for sockets not seen before, and the pids that were unreadable. */
  round(pids: readonly number[]): {
    results: LiveResult[];
    filtered: number;
    unreadable: number[];
    holders: Set<number>;
  } {
    const scan = scanProcesses(pids, this.states, this.seen);
    // Forget sockets that are gone, so that a long watch does not grow without bound.
    for (const inode of this.seen) if (!scan.present.has(inode)) this.seen.delete(inode);
    const results: LiveResult[] = [];
    const handled = new Set<number>();
    const holders = new Set<number>(); // processes holding a socket handled in this round
    let filtered = 0;
    // pidfds live for one round only: a pid seen again later may be another process.
    const borrower = new SocketBorrower();
    try {
      for (const s of scan.sockets) {
        // A socket shared by several processes (after fork) is one socket: handled once, through its first holder.
        if (this.seen.has(s.socket.inode)) {
          if (handled.has(s.socket.inode)) holders.add(s.pid);
          continue;
        }
        this.seen.add(s.socket.inode);
        if (this.matches && !this.matches(s.socket)) {
          filtered++;
          continue;
        }
        handled.add(s.socket.inode);
        holders.add(s.pid);
        results.push({ socket: s, outcome: applyLive(borrower, s, this.plan, this.dryRun) });
      }
    } finally {
      borrower.close();
    }
    return { results, filtered, unreadable: scan.unreadable, holders };
  }
}
