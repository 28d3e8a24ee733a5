/**
 * Keepalive settings: parsing of durations, the kernel's limits, and the time a dead peer goes unnoticed.
 * One source of truth for every command and mechanism of tcpka.
 */
import { invalid } from "./errors.js";
import { MAX_TCP_KEEPCNT, MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_USER_TIMEOUT_MS } from "./kernel/constants.js";
import { APPLY_ORDER, type OptionName } from "./kernel/sockopts.js";

/** Requested keepalive settings. An absent field means "leave it to the system default". */
export interface KeepAliveSettings {
  /** TCP_KEEPIDLE: seconds of idleness before the first probe (1..32767). */
  idle?: number;
  /** TCP_KEEPINTVL: seconds between unanswered probes (1..32767). */
  interval?: number;
  /** TCP_KEEPCNT: unanswered probes before the connection is dropped (1..127). */
  count?: number;
  /** TCP_USER_TIMEOUT: milliseconds; 0 means "use the normal rules". */
  userTimeout?: number;
}

/** What a socket really does: keepalive on or off, and the effective values getsockopt reports. */
export interface EffectiveKeepAlive {
  keepalive: boolean;
  idle: number;
  interval: number;
  count: number;
  userTimeout: number;
}

/**
 * One settings object per combination without a user timeout, for the many sockets that have the same: at
 * 100,000 sockets that spares 100,000 objects (and the JSON made of each). The objects are shared: nobody may
 * change one. A value beyond the kernel's limits (a sysctl may hold more) or a user timeout gets its own.
 */
export class SharedSettings {
  private readonly known = new Map<number, EffectiveKeepAlive>();

  of(keepalive: boolean, idle: number, interval: number, count: number, userTimeout: number): EffectiveKeepAlive {
    // idle and interval fit 15 bits (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL), count 7 (MAX_TCP_KEEPCNT): the key
    // is exact below 2^38.
    if (userTimeout !== 0 || idle > 0x7fff || interval > 0x7fff || count > 0x7f || idle < 0 || interval < 0) {
      return { keepalive, idle, interval, count, userTimeout };
    }
    const key = (keepalive ? 1 : 0) + 2 * (count + 128 * (interval + 32768 * idle));
    let e = this.known.get(key);
    if (e === undefined) {
      e = { keepalive, idle, interval, count, userTimeout: 0 };
      this.known.set(key, e);
    }
    return e;
  }
}

/** The namespace's sysctl defaults (net.ipv4.tcp_keepalive_time / _intvl / _probes). */
export interface SystemDefaults {
  idle: number;
  interval: number;
  count: number;
}

const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION = /^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))+$/;
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/g;

/**
 * Parse "75", "75s", "2m", "1h30m", "500ms" into milliseconds. A bare number means seconds. Returns undefined
 * for text that is not a duration; the caller words the error for its flag.
 */
export function parseDurationMs(text: string): number | undefined {
  const t = text.trim();
  if (/^\d+(?:\.\d+)?$/.test(t)) return Math.round(Number(t) * 1000 * 1000) / 1000;
  if (!DURATION.test(t)) return undefined;
  let ms = 0;
  for (const m of t.matchAll(PART)) ms += Number(m[1]) * (UNIT_MS[m[2] as string] as number);
  return Math.round(ms * 1000) / 1000;
}

/** What tcpka sets where nothing else is said: a dead peer is noticed within 2 minutes. */
export const DEFAULT_SETTINGS = { idle: 60, interval: 10, count: 6 } as const;

/** Parse a duration the kernel counts in whole seconds (TCP_KEEPIDLE, TCP_KEEPINTVL), within [1, max]. */
export function parseSeconds(flag: string, text: string, max: number): number {
  const { ms, negative } = signedDurationMs(text);
  if (ms === undefined) {
    throw invalid(`${label(flag, text)}: not a duration`, `use seconds or a unit: 75, 75s, 2m, 1h30m`);
  }
  // The range first: a huge number is not "a fraction" because floating point lost its last digits.
  const s = ms / 1000;
  if (!negative && s <= max && ms % 1000 !== 0) {
    throw invalid(`${label(flag, text)}: the kernel counts keepalive ${what(flag)} in whole seconds (1 to ${max})`);
  }
  if (negative || s < 1 || s > max) {
    throw invalid(`${label(flag, text)}: out of range; the kernel accepts 1 to ${max} seconds (${formatSeconds(max)})`);
  }
  return s;
}

/** A duration that may carry a minus sign, so that "-1" is called out of range rather than not a duration. */
function signedDurationMs(text: string): { ms: number | undefined; negative: boolean } {
  const t = text.trim();
  const negative = t.startsWith("-");
  return { ms: parseDurationMs(negative ? t.slice(1) : t), negative };
}

/** "--idle 1.5s" or, for KEY=VALUE input, "idle=1.5s". */
function label(flag: string, text: string): string {
  return flag.endsWith("=") ? `${flag}${text}` : `${flag} ${text}`;
}

function what(flag: string): string {
  return flag.includes("interval") ? "intervals" : "idle time";
}

export function parseIdle(text: string, flag = "--idle"): number {
  return parseSeconds(flag, text, MAX_TCP_KEEPIDLE);
}

export function parseInterval(text: string, flag = "--interval"): number {
  return parseSeconds(flag, text, MAX_TCP_KEEPINTVL);
}

export function parseCount(text: string, flag = "--count"): number {
  const t = text.trim();
  if (!/^-?\d+$/.test(t)) throw invalid(`${label(flag, text)}: not a whole number of probes`);
  const n = Number(t);
  if (n < 1 || n > MAX_TCP_KEEPCNT) {
    throw invalid(`${label(flag, text)}: out of range; the kernel accepts 1 to ${MAX_TCP_KEEPCNT} probes`);
  }
  return n;
}

/** TCP_USER_TIMEOUT is in milliseconds; "0" turns it off. */
export function parseUserTimeout(text: string, flag = "--user-timeout"): number {
  const { ms, negative } = signedDurationMs(text);
  if (ms === undefined) throw invalid(`${label(flag, text)}: not a duration`, "use 90s, 2m or 500ms; 0 turns it off");
  if ((negative && ms > 0) || ms > MAX_TCP_USER_TIMEOUT_MS)
    throw invalid(`${label(flag, text)}: out of range; 0 (off) to ${MAX_TCP_USER_TIMEOUT_MS} ms`);
  if (!Number.isInteger(ms))
    throw invalid(`${label(flag, text)}: the kernel counts the user timeout in whole milliseconds`);
  return ms;
}

/**
 * How long, in seconds, a peer that vanished without a word goes unnoticed on an idle connection; null when
 * never (keepalive off). Follows tcp_keepalive_timer() in net/ipv4/tcp_timer.c: the first probe goes out after
 * `idle`, then one every `interval`; without TCP_USER_TIMEOUT the connection is aborted when `count` probes are
 * unanswered, with it at the first probe time at which the connection has been silent for at least the user
 * timeout and one probe has gone out (KEEPCNT is then ignored).
 */
export function deadPeerAfter(e: EffectiveKeepAlive): number | null {
  if (!e.keepalive) return null;
  if (e.userTimeout > 0) {
    const ut = e.userTimeout / 1000;
    const probes = Math.max(1, Math.ceil((ut - e.idle) / e.interval));
    return e.idle + e.interval * probes;
  }
  return e.idle + e.interval * e.count;
}

/** "2h11m15s", "10m", "1m30s", "45s", "0s". */
export function formatSeconds(total: number): string {
  if (!Number.isFinite(total)) return "never";
  let s = Math.round(total);
  if (s === 0) return "0s";
  const neg = s < 0;
  s = Math.abs(s);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  let out = "";
  if (d) out += `${d}d`;
  if (h) out += `${h}h`;
  if (m) out += `${m}m`;
  if (sec) out += `${sec}s`;
  return (neg ? "-" : "") + out;
}

/** Milliseconds as a duration; below 10 s keeps tenths ("1.5s"), below 1 s prints "ms". */
export function formatMs(ms: number): string {
  const whole = Math.round(ms);
  if (whole < 1000) return `${whole}ms`;
  const tenths = Math.round(whole / 100);
  if (tenths < 100 && tenths % 10 !== 0) return `${(tenths / 10).toFixed(1)}s`;
  return formatSeconds(whole / 1000);
}

/** "7200s + 75s × 9": how the detection time is made up. */
export function describeSettings(e: { idle: number; interval: number; count: number }): string {
  return `${e.idle}s + ${e.interval}s × ${e.count}`;
}

/** How requested settings meet a socket's own: `strengthen` never weakens, `force` sets exactly. */
export type ApplyMode = "strengthen" | "force";

export type { OptionName };

export interface Change {
  option: OptionName;
  from: number;
  to: number;
}

/**
 * The strengthen rule: what a socket gets when the request meets what it has now (`have`: the program's own
 * values, or the namespace defaults for what it never set; keepalive off counts the same). Keepalive on; idle the
 * smaller of the two; interval and count together from whichever of the two detects a dead peer sooner on its
 * own (idle + interval × count), a tie keeping the socket's: so the probes that declare a peer dead are always one
 * side's own choice, never one side's interval with the other's count (a program's 1 s / 1 s / 10 and a request
 * of 30 s / 5 s / 3 give 1 s / 1 s / 10, not 1 s / 1 s / 3); the user timeout the smaller non-zero one. Where the
 * request has no value, the socket's stays. native/preload.c (strengthen) and src/bpf/keepalive.ts apply the
 * same rule.
 */
export function strengthen(have: EffectiveKeepAlive, want: KeepAliveSettings): EffectiveKeepAlive {
  const idle = want.idle ?? have.idle;
  const interval = want.interval ?? have.interval;
  const count = want.count ?? have.count;
  const sooner = idle + interval * count < have.idle + have.interval * have.count;
  const ut = want.userTimeout ?? 0;
  return {
    keepalive: true,
    idle: Math.min(idle, have.idle),
    interval: sooner ? interval : have.interval,
    count: sooner ? count : have.count,
    userTimeout: ut === 0 || (have.userTimeout !== 0 && have.userTimeout < ut) ? have.userTimeout : ut,
  };
}

/**
 * The setsockopt calls that bring a socket from `current` to the request, in the order they must be made
 * (APPLY_ORDER): `force` sets every requested value, `strengthen` what the rule above gives.
 */
export function planChanges(current: EffectiveKeepAlive, want: KeepAliveSettings, mode: ApplyMode): Change[] {
  const target =
    mode === "force"
      ? {
          keepalive: true,
          idle: want.idle ?? current.idle,
          interval: want.interval ?? current.interval,
          count: want.count ?? current.count,
          userTimeout: want.userTimeout ?? current.userTimeout,
        }
      : strengthen(current, want);
  const changes: Change[] = [];
  for (const option of APPLY_ORDER) {
    const from = Number(current[option]);
    const to = Number(target[option]);
    if (from !== to) changes.push({ option, from, to });
  }
  return changes;
}

/** What a socket has once `changes` (from planChanges) are made on it. */
export function afterChanges(before: EffectiveKeepAlive, changes: readonly Change[]): EffectiveKeepAlive {
  const after = { ...before };
  for (const c of changes) {
    if (c.option === "keepalive") after.keepalive = c.to !== 0;
    else after[c.option] = c.to;
  }
  return after;
}

/** How long a dead peer goes unnoticed (deadPeerAfter) before and after `changes`, in seconds; Infinity: never. */
export function deadPeerChange(before: EffectiveKeepAlive, changes: readonly Change[]): [number, number] {
  const never = Number.POSITIVE_INFINITY;
  return [deadPeerAfter(before) ?? never, deadPeerAfter(afterChanges(before, changes)) ?? never];
}
