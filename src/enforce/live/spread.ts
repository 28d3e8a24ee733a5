/**
 * How fast a bulk change may go, so that the keepalive probes it causes never crowd one timer tick (issue 14).
 *
 * Why sockets changed together probe together, and keep doing so (net/ipv4/tcp_timer.c, kernel/time/timer.c):
 * - tcp_keepalive_timer sends a probe once the socket has been idle for keepalive_time_when(), then re-arms for
 *   the interval; when the ACK has come by then, it re-arms for idle − elapsed. The ACK itself does not touch the
 *   timer, so sockets whose timers were armed together stay in step for as long as they stay idle.
 * - The timer wheel rounds every expiry up to the granularity of the level that the delay picks
 *   (calc_wheel_index, calc_index): level n takes delays below 63 << 3n jiffies and rounds to 8^n jiffies. All
 *   timers armed within one such granule G therefore fire in the same jiffy: for max(idle, interval) = 2 s, G is
 *   32 ms at HZ=250 and 64 ms at HZ=1000; for 60 s, 2,048 ms and 4,096 ms.
 * - One jiffy's probes are sent by one CPU's timer softirq and, on loopback and veth, queued together on that
 *   CPU's input_pkt_queue, which enqueue_to_backlog (net/core/dev.c) caps at net.core.netdev_max_backlog. A probe
 *   dropped there was still "sent" (loopback_xmit returns NETDEV_TX_OK), so it counts as unanswered, and after
 *   `count` of them a healthy connection dies with ETIMEDOUT. Measured (2 CPUs, backlog 1,000): no drop at 960
 *   probes per tick, drops from 1,025; 16,000 ends changed in one pass lost a third of their connections.
 *
 * So tcpka changes at most B = floor(netdev_max_backlog / 2) sockets per granule G, one every (G + 2 ticks) / B
 * ms (continuous, not in bursts: the changes of one granule share a tick). Half the backlog leaves room for the
 * host's own traffic and for timers that timer migration (kernel/time/timer_migration.c) runs on another CPU than
 * the one that armed them, which then carries both CPUs' probes. The two ticks are slack for timing: a change may
 * come up to 1 ms late (batch.ts), and where keepalive is already on, a TCP_KEEPIDLE below the time the socket
 * has been idle re-arms its timer to fire at once (tcp_sock_set_keepidle_locked), so that its probe, and the
 * cycle after it, is timed from the tick that runs it, which may be the next one: a granule then gets up to a
 * tick more of changes (measured at 16,000 such sockets, HZ=250: 571 probes in one tick paced at 500 per G, 500 at
 * 500 per G + 1 tick, 450 at 500 per G + 2 ticks; 500 where keepalive was off). The pace is 0.8 B per such slot
 * (PACE_SHARE: a late turn still fits), so N changes take W = N × (G + 2 ticks) / 0.8 B.
 *
 * A window longer than idle does not help: an answered socket probes every idle seconds, so the changes made at t
 * and at t + idle probe in the same tick. So W is at most idle, less two granules (a tenth of it at most) for the
 * timing errors that would otherwise fold its last changes onto its first; when N × G / idle > B, no spread can meet B, and
 * at least N × G / idle probes share a tick (the floor), which the caller warns about. Where timers are re-armed
 * at once, a tick's worth more: N × (G + 1 tick) / idle (measured at 40,000 such sockets, HZ=250, floor 640:
 * 685 and 720; 641 where keepalive was off). Turning SO_KEEPALIVE off and on again after the new idle would arm
 * those timers from the change too (measured: 659), but leaves the socket without keepalive between two calls,
 * and so for good if tcpka is killed there: not done. Changing the order of the
 * setsockopt calls alone saves nothing: it only moves the crowd later (measured: 5,256 of 8,000 connections lost).
 *
 * `tcpka disable` needs no spread: SO_KEEPALIVE 0 deletes the timer (tcp_set_keepalive →
 * inet_csk_delete_keepalive_timer), so no probe can come of it. A dry run changes nothing.
 */
import { readFileSync } from "node:fs";
import type { Change } from "../../settings.js";
import { kernelHz } from "../../sys/libc.js";

/** The HZ values Linux offers (kernel/Kconfig.hz): where HZ is unknown, the largest granularity of these counts. */
export const KNOWN_HZ: readonly number[] = [100, 250, 300, 1000];

/** The kernel's default netdev_max_backlog (net_hotdata.max_backlog), for where the sysctl cannot be read. */
const DEFAULT_BACKLOG = 1000;

/**
 * The granularity in ms of a timer `seconds` ahead at `hz` (kernel/time/timer.c): calc_wheel_index picks level n
 * for a delay below LVL_START(n + 1) = 63 << 3n jiffies, calc_index rounds the expiry up to LVL_GRAN(n) = 8^n
 * jiffies; the last level (LVL_DEPTH 9, or 8 at HZ ≤ 100) takes everything longer.
 */
export function wheelGranularityMs(seconds: number, hz: number): number {
  const delay = seconds * hz;
  const last = hz > 100 ? 8 : 7;
  let level = 0;
  while (level < last && delay >= 63 * 8 ** level) level++;
  return (8 ** level * 1000) / hz;
}

/** The granularity where HZ is known, else the largest over KNOWN_HZ (the longer, safer window). */
export function granularityMs(seconds: number, hz: number | undefined): number {
  if (hz !== undefined) return wheelGranularityMs(seconds, hz);
  return Math.max(...KNOWN_HZ.map((h) => wheelGranularityMs(seconds, h)));
}

/** The time B changes take: a granule and two ticks of slack (see above); unknown HZ, the largest. */
export function granuleSlotMs(seconds: number, hz: number | undefined): number {
  const slot = (h: number) => wheelGranularityMs(seconds, h) + 2000 / h;
  return hz !== undefined ? slot(hz) : Math.max(...KNOWN_HZ.map(slot));
}

/** What the kernel's limits are here: HZ (undefined when unknown) and net.core.netdev_max_backlog. */
export interface TickLimits {
  hz: number | undefined;
  backlog: number;
}

let limits: TickLimits | undefined;

/**
 * HZ and the backlog, read once. HZ: kernelHz (the tick that clock_getres gives any process); where it cannot
 * tell, HZ is unknown and the largest granularity counts. The backlog is global: only the initial network
 * namespace has the sysctl, so inside another one the kernel's default stands in.
 */
export function tickLimits(): TickLimits {
  if (limits) return limits;
  let hz: number | undefined;
  try {
    hz = kernelHz();
  } catch {
    // unknown: the largest granularity counts
  }
  let backlog = DEFAULT_BACKLOG;
  try {
    const n = Number(readFileSync("/proc/sys/net/core/netdev_max_backlog", "utf8").trim());
    if (Number.isInteger(n) && n > 0) backlog = n;
  } catch {
    // another network namespace: the default
  }
  limits = { hz, backlog };
  return limits;
}

/** How one run's changes are spread. */
export interface Spread {
  /** the sockets it changes */
  changes: number;
  /** over how many ms (0: at once) */
  windowMs: number;
  /** ms from one change to the next (0: at once) */
  stepMs: number;
  /** the most probes the changes may put in one timer tick */
  perTick: number;
  /** what a tick should carry at most: half of netdev_max_backlog */
  bound: number;
  /** perTick is above the bound, even spread over a whole idle time */
  floor: boolean;
  /** the window was cut short to what the caller allowed (--spread): perTick is what that gives */
  capped?: boolean;
}

/**
 * The spread cut to at most `maxMs` (tcpka enable --spread): the same changes in less time, so more of them per
 * granule, at least N × G / maxMs per tick (or all N, when maxMs is shorter than one granule).
 */
export function capSpread(s: Spread, maxMs: number, timer: number, l: TickLimits = tickLimits()): Spread {
  if (s.windowMs <= maxMs) return s;
  const granule = granularityMs(timer, l.hz);
  const perTick = maxMs <= granule ? s.changes : Math.ceil((s.changes * granule) / maxMs);
  return {
    ...s,
    windowMs: maxMs,
    stepMs: maxMs > 0 ? maxMs / s.changes : 0,
    perTick,
    floor: false,
    capped: perTick > s.bound,
  };
}

/** The share of B that the changes are paced at, to leave room for timing errors (spreadOf). */
const PACE_SHARE = 0.8;

/** The most probes the changes of one run should put in one tick (B above). */
export function probeBound(l: TickLimits = tickLimits()): number {
  return Math.max(1, Math.floor(l.backlog / 2));
}

/**
 * The spread of `changes` sockets whose shortest idle is `idle` s and whose longest timer (idle or interval) is
 * `timer` s; `atOnce`: some of them have keepalive on already and get a new idle, which may re-arm their timers
 * at once. Up to B changes need none: a tick cannot carry more probes than there are sockets.
 */
export function spreadOf(
  changes: number,
  idle: number,
  timer: number,
  atOnce = false,
  l: TickLimits = tickLimits(),
): Spread {
  const bound = probeBound(l);
  if (changes <= bound) return { changes, windowMs: 0, stepMs: 0, perTick: changes, bound, floor: false };
  // Paced at PACE_SHARE of B: a late turn, a thread that was not scheduled, put up to a fifth more than the pace
  // into some granules (measured: 538 in one tick at 16,000 sockets paced at 500 per slot).
  const pace = Math.max(1, Math.floor(bound * PACE_SHARE));
  const slot = granuleSlotMs(timer, l.hz);
  const windowMs = (changes * slot) / pace;
  // A window of one whole idle time would end where its first changes begin their next cycle: it stops two
  // granules short (a tenth of the idle at most), so that timing errors do not fold the last changes onto the
  // first ones (measured: 1,001 probes in one tick at 40,000 sockets paced over exactly 2 s).
  const granule = granularityMs(timer, l.hz);
  const whole = idle * 1000 - Math.min(2 * granule, idle * 100);
  if (windowMs <= whole) return { changes, windowMs, stepMs: slot / pace, perTick: pace, bound, floor: false };
  const tick = atOnce ? 1000 / (l.hz ?? Math.min(...KNOWN_HZ)) : 0;
  const perTick = Math.ceil((changes * (granule + tick)) / whole);
  return { changes, windowMs: whole, stepMs: whole / changes, perTick, bound, floor: perTick > bound };
}

/**
 * Whether changes (planChanges's) arm the keepalive timer: SO_KEEPALIVE on (tcp_set_keepalive) or a new
 * TCP_KEEPIDLE (tcp_sock_set_keepidle_locked re-arms it). Only those can make a probe; the others only store a
 * value and need no turn.
 */
export function armsTimer(changes: readonly Change[]): boolean {
  for (const c of changes) if (c.option === "idle" || (c.option === "keepalive" && c.to !== 0)) return true;
  return false;
}
