/**
 * What a LiveSession gives: a result for each socket it handled, and over all its rounds a summary: how many
 * sockets each outcome had, why the failures failed, which processes held them or could not be read, and the
 * longest time a dead peer goes unnoticed, before and after.
 */
import type { TcpEndpoints } from "../../filter.js";
import { type Change, deadPeerChange, type EffectiveKeepAlive } from "../../settings.js";
import type { Outcome } from "./batch.js";

export interface LiveSocket {
  pid: number;
  comm: string;
  fd: number;
  socket: TcpEndpoints;
}

export interface LiveResult {
  socket: LiveSocket;
  outcome: Outcome;
}

export interface LiveSummary {
  /** changed, or that would be in a dry run */
  changed: number;
  /** had what was asked already */
  unchanged: number;
  /** of the changed and unchanged, the listening sockets: the connections they accept inherit the settings */
  listening: number;
  /** TCP sockets in a wanted state that the filters left out */
  filtered: number;
  /** closed, or their process exited, before they could be changed */
  gone: number;
  failed: number;
  /** the failures by system call and errno ("setsockopt: EPERM"), in the order first seen */
  errors: Record<string, number>;
  /** the processes that hold a socket that was handled */
  processes: number[];
  /** target processes whose fds this user may not read: their sockets were skipped */
  unreadable: number[];
  /**
   * The longest time, in seconds, that a dead peer goes unnoticed on a connection handled (listeners aside),
   * before and after: Infinity when on one it never is, null when no connection was handled.
   */
  deadPeerBefore: number | null;
  deadPeerAfter: number | null;
}

function worst(a: number | null, b: number): number {
  return a === null ? b : Math.max(a, b);
}

/** What one round of a LiveSession gives. */
export interface Round {
  /** the sockets not seen in an earlier round */
  results: LiveResult[];
  /** new TCP sockets in a wanted state that the filters left out */
  filtered: number;
  /** target processes whose fds this user may not read */
  unreadable: number[];
  /** processes holding a socket handled in this round, also one shared with an earlier holder in the round */
  holders: Set<number>;
}

/** A LiveSummary being summed, round by round. */
export class Tally {
  private readonly s: Omit<LiveSummary, "processes" | "unreadable"> = {
    changed: 0,
    unchanged: 0,
    listening: 0,
    filtered: 0,
    gone: 0,
    failed: 0,
    errors: {},
    deadPeerBefore: null,
    deadPeerAfter: null,
  };
  private readonly processes = new Set<number>();
  private readonly unreadable = new Set<number>();

  /** Whether any socket was handled yet. */
  get handledAny(): boolean {
    return this.processes.size > 0;
  }

  add(round: Round): void {
    const s = this.s;
    for (const p of round.unreadable) this.unreadable.add(p);
    s.filtered += round.filtered;
    for (const pid of round.holders) this.processes.add(pid);
    // Outcomes share their `before` and `changes` objects (batch.ts, kernel-apply.ts): work each pair out once,
    // and results come in runs of one process and of one outcome: the last of each is kept at hand.
    const times = new Map<EffectiveKeepAlive, Map<readonly Change[], [number, number]>>();
    let lastPid = -1;
    let lastOutcome: Outcome | undefined;
    for (const { socket, outcome } of round.results) {
      if (socket.pid !== lastPid) {
        lastPid = socket.pid;
        this.processes.add(lastPid);
      }
      if (outcome.result === "gone") {
        s.gone++;
        continue;
      }
      if (outcome.result === "failed") {
        s.failed++;
        const key = `${outcome.error.syscall}: ${outcome.error.errnoName}`;
        s.errors[key] = (s.errors[key] ?? 0) + 1;
        continue;
      }
      if (outcome.result === "unchanged") s.unchanged++;
      else s.changed++;
      if (socket.socket.state === "LISTEN") {
        s.listening++;
        continue;
      }
      if (outcome === lastOutcome) continue; // its times are in the worst already
      lastOutcome = outcome;
      let byChanges = times.get(outcome.before);
      if (!byChanges) {
        byChanges = new Map();
        times.set(outcome.before, byChanges);
      }
      let pair = byChanges.get(outcome.changes);
      if (!pair) {
        pair = deadPeerChange(outcome.before, outcome.changes);
        byChanges.set(outcome.changes, pair);
      }
      s.deadPeerBefore = worst(s.deadPeerBefore, pair[0]);
      s.deadPeerAfter = worst(s.deadPeerAfter, pair[1]);
    }
  }

  summary(): LiveSummary {
    return {
      ...this.s,
      errors: { ...this.s.errors },
      processes: [...this.processes],
      unreadable: [...this.unreadable],
    };
  }
}
