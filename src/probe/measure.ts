/**
 * The measurement behind `tcpka idle-timeout`: how long a connection may stay idle on the path to an echo
 * server before a firewall, NAT or load balancer on the way forgets it. The caller sees it through callbacks
 * and stops it with an AbortSignal; it installs no signal handlers and prints nothing.
 *
 * How it searches. Each of N connections (`parallel`) is a clock: its age is the time since it last saw
 * traffic, and probing it ("ping K" -> "pong K") at age x answers "does an idle time of x survive?" — after
 * which an alive connection starts again from age 0, and a dropped one is replaced. A probe that gets no pong
 * within `probeTimeoutMs`, or a reset or close, counts as dropped: a path whose state expired usually drops the
 * packet silently, so the client would only retransmit. The search keeps the longest idle time that survived
 * (lo) and the shortest that did not (hi):
 *  - exploring (no drop seen yet): waves of probes at idle times on a geometric ladder (1s, 1.2s, 1.44s, …),
 *    the oldest connection to the shortest time it can still reach; one connection is kept back for `maxMs`
 *    itself, so "no timeout up to maxMs" is known once maxMs has passed. A wave ends when its probes are
 *    answered or one is dropped.
 *  - narrowing (lo < hi known): every gap between lo, hi and the probes already planned that is wider than the
 *    resolution (1s or 5% of lo) gets a probe at its middle, from the connection that can reach it soonest —
 *    often one that has already aged into the gap while the explorers were out, and is probed at once.
 *  Planned probes outside (lo, hi) are cancelled as results come in; an idle connection older than hi is
 *  replaced (it cannot tell anything new). Simulated over 1s..15m with 8 connections, this ends within about
 *  2× the true timeout (less for short ones), with both bounds within the resolution. The planning is
 *  idle-search.ts's; this file holds the connections and the clock.
 */
import { performance } from "node:perf_hooks";
import { EchoConnection, type PingResult } from "./echo.js";
import { IdleSearch, type Slot } from "./idle-search.js";

/** A pong this late (or 4 round trips, if longer) makes the probe a suspected drop for planning. */
const SUSPECT_MS = 200;

/** One verdict: a connection idle for `idleMs` answered, or was dropped. */
export interface ProbeRecord {
  /** When the verdict came, in ms since the measurement started. */
  atMs: number;
  idleMs: number;
  alive: boolean;
  /** Why it counts as dropped: "no answer within 1.5s", "reset (RST)", "closed by the peer", … */
  reason?: string;
}

export interface IdleTimeoutOptions {
  /** The echo server's IP address: resolve a name first (resolveHost), so that every connection goes there. */
  host: string;
  port: number;
  /** Stop looking beyond this idle time. */
  maxMs: number;
  /** Connections held at once, at least 2 (one of them waits for maxMs). */
  parallel: number;
  /** A ping left this long without a pong counts as dropped (at least 3 round trips are always allowed). */
  probeTimeoutMs: number;
  /** Stops the measurement early: it then returns what it knows, with `interrupted` set. */
  signal?: AbortSignal;
  /** The connections are open and the search begins; `startedAt` is when the measurement began (performance.now()). */
  onStart?: (search: IdleSearch, startedAt: number) => void;
  /** Every verdict as it comes, once the search has counted it. */
  onResult?: (probe: ProbeRecord, search: IdleSearch) => void;
}

export interface IdleTimeoutMeasurement {
  /** The bounds found: longestAlive, shortestDropped, found, inconsistent, done. */
  search: IdleSearch;
  probes: ProbeRecord[];
  elapsedMs: number;
  /** Connections opened in all, the replacements of dropped ones included. */
  connections: number;
  /** The signal stopped it before the search was done. */
  interrupted: boolean;
}

interface LiveSlot extends Slot {
  conn: EchoConnection | undefined;
}

/**
 * Measure the idle timeout of the path to an echo server (`tcpka echo`, or any server that echoes lines). Errors
 * are TcpkaErrors that say what is wrong: nothing listens, the far end does not echo, the path is unreachable.
 */
export async function measureIdleTimeout(o: IdleTimeoutOptions): Promise<IdleTimeoutMeasurement> {
  const t0 = performance.now();
  const search = new IdleSearch({ maxMs: o.maxMs });
  const probes: ProbeRecord[] = [];
  const stopped = () => o.signal?.aborted === true;
  let seq = 0;
  let connections = 0;
  let failure: unknown;
  let finished = false;
  let rttMs = 0;
  let wakeUp: (() => void) | undefined;
  const wake = () => {
    const w = wakeUp;
    wakeUp = undefined;
    w?.();
  };
  o.signal?.addEventListener("abort", wake);
  const slots: LiveSlot[] = [];

  const record = (slot: LiveSlot, idleMs: number, result: PingResult) => {
    const probe: ProbeRecord = { atMs: performance.now() - t0, idleMs, alive: result.alive };
    if (!result.alive) probe.reason = result.reason;
    probes.push(probe);
    if (result.alive) {
      search.alive(idleMs);
      slot.since = result.at;
    } else {
      search.dropped(idleMs);
      slot.conn?.destroy();
      slot.conn = undefined;
      slot.ready = false;
      if (!search.done) reopen(slot);
    }
    o.onResult?.(probe, search);
  };

  const attach = (slot: LiveSlot, conn: EchoConnection) => {
    slot.conn = conn;
    slot.since = conn.lastTraffic;
    slot.ready = true;
    slot.point = null;
    conn.onIdleEnd = (reason) => {
      // Reset or closed while idle: the path (or the server) gave up on it at this age.
      if (slot.conn !== conn || slot.probing !== null || finished) return;
      record(slot, performance.now() - slot.since, { alive: false, reason });
      wake();
    };
  };

  const open = async (): Promise<EchoConnection> => {
    connections++;
    const { conn, rttMs: rtt } = await EchoConnection.open(o.host, o.port, ++seq);
    rttMs = Math.max(rttMs, rtt);
    return conn;
  };

  const reopen = (slot: LiveSlot) => {
    slot.ready = false;
    slot.point = null;
    open().then(
      (conn) => {
        if (search.done || stopped() || failure !== undefined) conn.destroy();
        else attach(slot, conn);
        wake();
      },
      (e: unknown) => {
        failure ??= e;
        wake();
      },
    );
  };

  const probe = (slot: LiveSlot, now: number) => {
    const conn = slot.conn as EchoConnection;
    const idleMs = now - slot.since;
    slot.probing = idleMs;
    slot.point = null;
    const timeoutMs = Math.max(o.probeTimeoutMs, 3 * rttMs);
    const late = setTimeout(
      () => {
        search.suspect(idleMs);
        wake();
      },
      Math.min(timeoutMs / 2, Math.max(SUSPECT_MS, 4 * rttMs)),
    );
    conn.ping(++seq, timeoutMs).then((r) => {
      clearTimeout(late);
      search.settled(idleMs);
      slot.probing = null;
      if (slot.conn === conn && !finished) record(slot, idleMs, r);
      wake();
    });
  };

  try {
    // One connection first: if the far end is unreachable or no echo server, that is one clear error.
    const conns = [await open()];
    const rest = await Promise.allSettled(Array.from({ length: o.parallel - 1 }, () => open()));
    for (const r of rest) if (r.status === "fulfilled") conns.push(r.value);
    const bad = rest.find((r) => r.status === "rejected");
    if (bad) {
      for (const c of conns) c.destroy();
      throw bad.reason;
    }
    for (const conn of conns) {
      const slot: LiveSlot = { since: 0, ready: false, probing: null, point: null, conn: undefined };
      attach(slot, conn);
      slots.push(slot);
    }
    o.onStart?.(search, t0);

    while (!search.done && !stopped()) {
      if (failure !== undefined) throw failure;
      const now = performance.now();
      for (const s of search.plan(slots, now)) {
        s.conn?.destroy();
        s.conn = undefined;
        reopen(s);
      }
      let next = Number.POSITIVE_INFINITY;
      let started = false;
      for (const s of slots) {
        if (!s.ready || s.probing !== null || s.point === null) continue;
        const due = s.since + s.point;
        if (due <= now) {
          probe(s, now);
          started = true;
        } else next = Math.min(next, due);
      }
      if (started) continue; // plan again with these probes in flight
      if (!Number.isFinite(next) && slots.every((s) => s.ready && s.probing === null)) {
        throw new Error(
          `idle-timeout: nothing left to probe between ${search.longestAlive} and ${search.shortestDropped} ms`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = Number.isFinite(next) ? setTimeout(resolve, Math.max(0, next - performance.now())) : undefined;
        wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    if (failure !== undefined && !search.done) throw failure;
  } finally {
    finished = true;
    o.signal?.removeEventListener("abort", wake);
    for (const s of slots) s.conn?.destroy();
  }
  return { search, probes, elapsedMs: performance.now() - t0, connections, interrupted: stopped() };
}
