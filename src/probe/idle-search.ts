/**
 * The search behind `tcpka idle-timeout`, apart from sockets and clocks: which idle times to probe next, on
 * which connection, and what the results so far bound the path's idle timeout to. The unit tests drive it
 * with a simulated clock; measure.ts drives it with real connections to an echo server.
 */

/** One connection as the search sees it. Times in milliseconds on one monotonic clock. */
export interface Slot {
  /** When it last saw traffic: its age is now - since. */
  since: number;
  /** false while it is being (re)connected. */
  ready: boolean;
  /** The idle time of the probe in flight, or null. */
  probing: number | null;
  /** The idle time at which to probe it next, or null: it just ages. */
  point: number | null;
}

export interface SearchOptions {
  maxMs: number;
  /** Ladder of the exploring waves: firstMs, firstMs × ratio, …; defaults 1000 and 1.2. */
  firstMs?: number;
  ratio?: number;
}

export class IdleSearch {
  /** The longest idle time (ms) after which a connection still answered. */
  longestAlive = 0;
  /** The shortest idle time (ms) after which a connection was dropped. */
  shortestDropped = Number.POSITIVE_INFINITY;
  /** An idle time survived that is longer than one that was dropped: the path is not monotonic. */
  inconsistent = false;
  /**
   * Idle times of probes in flight that are already late (no pong after several round trips): most likely
   * dropped. Planning treats them as drops, so that narrowing starts without waiting for --probe-timeout;
   * the bounds only change when the verdict comes.
   */
  private readonly suspects: number[] = [];
  readonly maxMs: number;
  private readonly firstMs: number;
  private readonly ratio: number;

  constructor(opts: SearchOptions) {
    this.maxMs = opts.maxMs;
    this.firstMs = opts.firstMs ?? 1000;
    this.ratio = opts.ratio ?? 1.2;
  }

  /** How close the bounds must come: 1s, or 5% of the timeout for long ones. */
  resolution(): number {
    return Math.max(1000, 0.05 * this.longestAlive);
  }

  get found(): boolean {
    return Number.isFinite(this.shortestDropped);
  }

  get done(): boolean {
    return (
      this.inconsistent ||
      this.longestAlive >= this.maxMs ||
      this.shortestDropped - this.longestAlive <= this.resolution()
    );
  }

  /** A probe at this idle time is late; `settled` once its verdict came. */
  suspect(idleMs: number): void {
    this.suspects.push(idleMs);
  }

  settled(idleMs: number): void {
    const i = this.suspects.indexOf(idleMs);
    if (i >= 0) this.suspects.splice(i, 1);
  }

  alive(idleMs: number): void {
    this.settled(idleMs);
    if (idleMs >= this.shortestDropped) this.inconsistent = true;
    this.longestAlive = Math.max(this.longestAlive, idleMs);
  }

  dropped(idleMs: number): void {
    this.settled(idleMs);
    if (idleMs <= this.longestAlive) this.inconsistent = true;
    this.shortestDropped = Math.min(this.shortestDropped, idleMs);
  }

  /**
   * Decide, at `now`, which connections to probe at which idle time (sets `point`), and return the idle ones
   * to replace: those already older than the shortest drop.
   */
  plan<S extends Slot>(slots: readonly S[], now: number): S[] {
    const lo = this.longestAlive;
    const hi = this.planningHi();
    const replace: S[] = [];
    const free: S[] = [];
    for (const s of slots) {
      if (!s.ready || s.probing !== null) continue;
      if (s.point !== null && (s.point <= lo || s.point >= hi)) s.point = null;
      if (s.point !== null) continue;
      if (now - s.since >= this.shortestDropped) replace.push(s);
      else free.push(s);
    }
    if (this.done || free.length === 0) return replace;
    if (!Number.isFinite(hi)) this.explore(slots, free, now);
    else this.narrow(slots, free, now, hi);
    return replace;
  }

  /** The shortest drop, or a shorter suspected one. */
  private planningHi(): number {
    return Math.min(this.shortestDropped, ...this.suspects);
  }

  /** A new wave on the ladder once the previous one is over; the one connection at --max stays out. */
  private explore(slots: readonly Slot[], free: Slot[], now: number): void {
    const lo = this.longestAlive;
    if (slots.some((s) => s.probing !== null || (s.point !== null && s.point < this.maxMs))) return;
    const sentinel = slots.some((s) => s.point === this.maxMs || (s.probing !== null && s.probing >= this.maxMs));
    const points: number[] = [];
    let p = this.firstMs;
    while (points.length < free.length - (sentinel ? 0 : 1)) {
      if (p >= this.maxMs) break;
      if (p > lo) points.push(p);
      p = Math.round(p * this.ratio);
    }
    if (!sentinel) points.push(this.maxMs);
    const left = new Set(free);
    for (const point of points) {
      // The oldest connection that can still reach this idle time gets it: it answers soonest.
      let best: Slot | undefined;
      for (const s of left) if (now - s.since <= point && (!best || s.since < best.since)) best = s;
      if (!best) continue;
      best.point = point;
      left.delete(best);
    }
  }

  /** Split every gap wider than the resolution, with the connection that reaches its middle soonest. */
  private narrow(slots: readonly Slot[], free: Slot[], now: number, hi: number): void {
    const lo = this.longestAlive;
    const res = this.resolution();
    const left = new Set(free);
    for (;;) {
      const marks = [lo, hi];
      for (const s of slots) {
        const x = s.probing ?? s.point;
        if (x !== null && x > lo && x < hi) marks.push(x);
      }
      marks.sort((a, b) => a - b);
      const gaps: [number, number][] = [];
      for (let i = 0; i + 1 < marks.length; i++) {
        const a = marks[i] as number;
        const b = marks[i + 1] as number;
        if (b - a > res) gaps.push([a, b]);
      }
      gaps.sort((g, h) => h[1] - h[0] - (g[1] - g[0]));
      let placed = false;
      for (const [a, b] of gaps) {
        const mid = (a + b) / 2;
        let best: Slot | undefined;
        let bestPoint = 0;
        let bestWait = Number.POSITIVE_INFINITY;
        for (const s of left) {
          const age = now - s.since;
          const point = Math.max(age, mid);
          if (point >= b - 1) continue; // already too old for this gap
          if (point - age < bestWait) {
            best = s;
            bestPoint = point;
            bestWait = point - age;
          }
        }
        if (!best) continue;
        best.point = Math.max(bestPoint, a + 1);
        left.delete(best);
        placed = true;
        break;
      }
      if (!placed) return;
    }
  }
}

/**
 * Keepalive that keeps connections open through a path that drops them after `safeMs` of idleness: the first
 * probe at half of it or earlier (whole seconds), a fifth of that between probes, and as many probes as fit
 * before the timeout (3 to 9). null when even 1s is too long.
 */
export function recommend(safeMs: number): { idle: number; interval: number; count: number } | null {
  const half = safeMs / 2000;
  if (half < 1) return null;
  const idle = niceFloor(half);
  const interval = Math.max(1, niceFloor(idle / 5));
  const count = Math.min(9, Math.max(3, Math.floor((safeMs / 1000 - idle) / interval) - 1));
  return { idle, interval, count };
}

/** Whole seconds, rounded down to 5s above 10s and to 10s above 2 minutes. */
function niceFloor(s: number): number {
  if (s < 10) return Math.floor(s);
  if (s < 120) return Math.floor(s / 5) * 5;
  return Math.floor(s / 10) * 10;
}
