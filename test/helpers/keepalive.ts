/**
 * A socket's keepalive, as the tests ask for it and as they read it back three ways: from inside the program
 * that holds it (the fixtures report their own getsockopt), from outside with exact getsockopt
 * (`tcpka ls --json --pid`, through pidfd_getfd), and as the kernel's timer (`ss -tnoe`).
 */
import assert from "node:assert/strict";
import { type Process, runSync, sleep } from "./processes.js";
import type { Scope } from "./scope.js";
import { tcpka } from "./tcpka.js";

/** Distinctive settings that no program or default has: what the tests ask for... */
export const WANT_FLAGS = ["--idle", "7s", "--interval", "3s", "--count", "4"];
/** ...and what getsockopt then reads. */
export const WANT = { keepalive: 1, idle: 7, interval: 3, count: 4 };
/** A socket that never asked for keepalive, in a fresh network namespace (compiled-in sysctl defaults). */
export const UNTOUCHED = { keepalive: 0, idle: 7200, interval: 75, count: 9 };

// ---------------------------------------------------------------------------------------------------------
// From inside: what a fixture's own getsockopt says.

/** One socket as its owner reports it (getsockopt from inside); the fields beyond these vary by fixture. */
export interface Reported {
  role: "listen" | "client" | "accepted";
  label?: string;
  fd?: number;
  inode?: number;
  keepalive: number;
  idle: number;
  interval: number;
  count: number;
}

export interface Report<S extends Reported = Reported> {
  pid: number;
  sockets: S[];
}

/**
 * Ask a holder fixture (enable/holder.py, enable/holder.c, enable/Holder.java) what getsockopt says about its
 * sockets now.
 */
export async function report<S extends Reported = Reported>(p: Process, timeoutMs = 10_000): Promise<Report<S>> {
  p.send("report\n");
  const line = await p.line(timeoutMs);
  const r = JSON.parse(line) as Report<S>;
  assert.equal(r.pid, p.pid, "the fixture is the process tcpka was pointed at");
  return r;
}

/** The keepalive facts of a socket, for comparison with WANT and UNTOUCHED. */
export function settings(s: Reported): { keepalive: number; idle: number; interval: number; count: number } {
  return { keepalive: s.keepalive, idle: s.idle, interval: s.interval, count: s.count };
}

/** Every socket of the report has exactly `want`, each named in the failure message. */
export function assertAll(sockets: readonly Reported[], want: typeof WANT, what: string): void {
  assert.notEqual(sockets.length, 0, `${what}: some sockets`);
  for (const s of sockets) {
    assert.deepEqual(settings(s), want, `${what}: ${s.label ?? ""} ${s.role} fd ${s.fd ?? "?"}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// From outside: tcpka ls --json --pid.

/** One connection as `tcpka ls --json` reports it. */
export interface LsConnection {
  state: string;
  family: 4 | 6;
  local_address: string;
  local_port: number;
  peer_address: string;
  peer_port: number;
  keepalive: boolean | null;
  source: "exact" | "timer";
  idle_s: number | null;
  interval_s: number | null;
  count: number | null;
  user_timeout_ms: number | null;
  processes: { pid: number; comm: string; fd: number }[];
}

/** The established connections of `pid`, read from outside with exact getsockopt (`tcpka ls --json --pid`). */
export async function exactConnections(scope: Scope, pid: number, extra: readonly string[] = []) {
  const r = await tcpka(scope, ["ls", "--json", "--pid", String(pid), ...extra]);
  assert.equal(r.code, 0, `tcpka ls --pid ${pid}: ${r.stderr}`);
  const doc = JSON.parse(r.stdout) as { connections: LsConnection[] };
  return doc.connections;
}

/** The settings of a connection in the shape the fixtures print them, for one deepEqual. */
export function settingsOf(c: LsConnection) {
  assert.equal(c.source, "exact", `${c.local_address}:${c.local_port}: not read exactly`);
  return { keepalive: c.keepalive ? 1 : 0, idle: c.idle_s, interval: c.interval_s, count: c.count };
}

// ---------------------------------------------------------------------------------------------------------
// The kernel's timer: ss -tnoe.

/** A `timer:(kind,left,count)` of ss, with the time left as the range that ss rounded. */
export interface SsTimer {
  /** keepalive, on (retransmit), persist, timewait... */
  kind: string;
  fromMs: number;
  toMs: number;
  count: number;
}

/** The timer of one line of `ss -o`; null when none runs. */
function timerOf(line: string): SsTimer | null {
  const t = /\btimer:\((\w+),([^,]*),(\d+)\)/.exec(line);
  return t ? { kind: t[1]!, ...ssTime(t[2]!), count: Number(t[3]) } : null;
}

/** The timers in the text of `ss -tanoe`, by inode; null for a socket without one. */
export function ssTimers(text: string): Map<number, SsTimer | null> {
  const out = new Map<number, SsTimer | null>();
  for (const line of text.split("\n")) {
    const ino = /\bino:(\d+)/.exec(line);
    if (ino) out.set(Number(ino[1]), timerOf(line));
  }
  return out;
}

/**
 * "1min39sec", "20min", "59sec", "5.123ms" (5.123 s), "316ms" as print_ms_timer() in iproute2's misc/ss.c
 * writes them: from 10 minutes on without seconds, from 10 seconds or 1 minute on without milliseconds.
 */
export function ssTime(text: string): { fromMs: number; toMs: number } {
  const m = /^(?:(\d+)min)?(?:(\d+)(?:sec|\.))?(?:(\d+)ms)?$/.exec(text);
  assert.ok(m, `ss time ${text}`);
  const [min, sec, ms] = [m[1], m[2], m[3]].map((x) => Number(x ?? 0)) as [number, number, number];
  const fromMs = min * 60_000 + sec * 1000 + ms;
  return { fromMs, toMs: fromMs + (min > 9 ? 60_000 : min > 0 || sec > 9 ? 1000 : 1) };
}

/** The established connections in this namespace that match an ss filter expression, with their timers. */
function established(filter: string): { local: string; peer: string; timer: SsTimer | null }[] {
  const r = runSync(["ss", "-Htnoe", "state", "established", filter]);
  assert.equal(r.status, 0, `ss: ${r.stderr}`);
  return r.stdout
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => {
      const cols = l.trim().split(/\s+/);
      return { local: cols[2] ?? "", peer: cols[3] ?? "", timer: timerOf(l) };
    });
}

/**
 * `n` established connections match the ss filter and every one has a keepalive timer due within `idle` seconds.
 * Looked at for up to 2 s: right after data was sent, a retransmission timer hides the keepalive timer until the
 * peer's ACK arrives.
 */
export async function assertKeepaliveTimers(filter: string, n: number, idle: number): Promise<void> {
  const ok = (c: { timer: SsTimer | null }) =>
    c.timer?.kind === "keepalive" && c.timer.fromMs > 0 && c.timer.fromMs <= idle * 1000;
  const deadline = Date.now() + 2000;
  let conns = established(filter);
  while ((conns.length !== n || !conns.every(ok)) && Date.now() < deadline) {
    await sleep(50);
    conns = established(filter);
  }
  assert.equal(conns.length, n, `ss: ${JSON.stringify(conns)}`);
  for (const c of conns) {
    assert.equal(c.timer?.kind, "keepalive", `${c.local} -> ${c.peer}: timer ${c.timer?.kind}`);
    assert.ok(ok(c), `${c.local} -> ${c.peer}: keepalive in ${c.timer?.fromMs} ms, want 0 < ms <= ${idle * 1000}`);
  }
}
