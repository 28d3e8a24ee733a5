/**
 * Every TCP socket of this network namespace, read through NETLINK_SOCK_DIAG (what `ss` uses) or, as a
 * fallback, parsed from /proc/net/tcp and /proc/net/tcp6. Both give the same facts: state, addresses, the
 * pending timer (retransmit, keepalive, zero-window probe, TIME_WAIT), its time left and count, uid and inode.
 * Neither tells whether SO_KEEPALIVE is set: see exact.ts for that.
 */
import { readFileSync } from "node:fs";
import { TcpkaError } from "../errors.js";
import { AF_INET, AF_INET6, INET_DIAG_MSG_LEN, TCP_STATES, TIMER_CODES } from "../sys/constants.js";
import { inetDiagDump } from "../sys/netlink.js";

export type TcpStateName =
  | "ESTAB"
  | "SYN-SENT"
  | "SYN-RECV"
  | "FIN-WAIT-1"
  | "FIN-WAIT-2"
  | "TIME-WAIT"
  | "CLOSE"
  | "CLOSE-WAIT"
  | "LAST-ACK"
  | "LISTEN"
  | "CLOSING";

/** State names as `ss` prints them, indexed by the kernel's state number (include/net/tcp_states.h). */
export const STATE_NAMES: readonly (TcpStateName | undefined)[] = [
  undefined,
  "ESTAB",
  "SYN-SENT",
  "SYN-RECV",
  "FIN-WAIT-1",
  "FIN-WAIT-2",
  "TIME-WAIT",
  "CLOSE",
  "CLOSE-WAIT",
  "LAST-ACK",
  "LISTEN",
  "CLOSING",
  "SYN-RECV", // TCP_NEW_SYN_RECV: a request socket, shown as SYN-RECV like ss does
];

export type TimerName = (typeof TIMER_CODES)[keyof typeof TIMER_CODES];

export interface TcpSocket {
  family: 4 | 6;
  state: TcpStateName;
  localAddress: string;
  localPort: number;
  peerAddress: string;
  peerPort: number;
  /** The pending timer the kernel reports; "keepalive" only when no retransmit/probe timer hides it. */
  timer: TimerName;
  /** Time left on that timer, in milliseconds (0 when none). */
  timerMs: number;
  /** For keepalive and persist timers: unanswered probes sent; for retransmit: retransmissions. */
  timerCount: number;
  sendQueue: number;
  recvQueue: number;
  uid: number;
  /** Inode of the socket; 0 for TIME_WAIT and request sockets, which have no file. */
  inode: number;
}

/** What identifies a connection and its state: all that `tcpka enable` needs of a socket to filter and report it. */
export type TcpEndpoints = Pick<
  TcpSocket,
  "family" | "state" | "localAddress" | "localPort" | "peerAddress" | "peerPort" | "inode"
>;

/** Bitmask of all states, TCP_NEW_SYN_RECV included. */
export const ALL_STATES = 0x1ffe;

export function stateMask(names: Iterable<TcpStateName>): number {
  let mask = 0;
  for (const n of names) {
    for (let i = 1; i < STATE_NAMES.length; i++) if (STATE_NAMES[i] === n) mask |= 1 << i;
  }
  return mask;
}

export interface ReadOptions {
  /** Bitmask of 1 << TCP state; default: established only. */
  states?: number;
  /** Which families to read; default both. */
  families?: readonly (4 | 6)[];
  /** "netlink" (default) or the /proc/net/tcp fallback. */
  via?: "netlink" | "proc";
  /**
   * Read the network namespace of this process instead of tcpka's own, through /proc/PID/net/tcp{,6}
   * (sock_diag only answers for the namespace of the socket it is asked on).
   */
  netnsOf?: number;
}

/** Read the TCP sockets of this network namespace. Falls back to /proc when sock_diag is unavailable. */
export function readSockets(opts: ReadOptions = {}): TcpSocket[] {
  const states = opts.states ?? 1 << TCP_STATES.ESTABLISHED;
  const families = opts.families ?? [4, 6];
  if (opts.netnsOf !== undefined) return readProc(states, families, `/proc/${opts.netnsOf}/net`);
  if (opts.via === "proc") return readProc(states, families);
  try {
    return readNetlink(states, families);
  } catch (e) {
    if (opts.via === "netlink") throw e;
    return readProc(states, families);
  }
}

/** The local ports of the listening TCP sockets in a network namespace (tcpka's own, or that of opts.netnsOf). */
export function listeningPorts(opts: ReadOptions = {}): Set<number> {
  return new Set(readSockets({ ...opts, states: 1 << TCP_STATES.LISTEN, families: [4, 6] }).map((s) => s.localPort));
}

export function readNetlink(states: number, families: readonly (4 | 6)[]): TcpSocket[] {
  const out: TcpSocket[] = [];
  // A request socket (TCP_NEW_SYN_RECV) is only dumped when its own bit is asked for.
  const mask = states & (1 << TCP_STATES.SYN_RECV) ? states | (1 << TCP_STATES.NEW_SYN_RECV) : states;
  for (const fam of families) {
    inetDiagDump({ family: fam === 4 ? AF_INET : AF_INET6, states: mask }, (buf, off, len) => {
      if (len < INET_DIAG_MSG_LEN) return;
      const s = parseInetDiagMsg(buf, off);
      if (s) out.push(s);
    });
  }
  return out;
}

/** Decode one struct inet_diag_msg (include/uapi/linux/inet_diag.h). */
export function parseInetDiagMsg(buf: Buffer, o: number): TcpSocket | undefined {
  const family = buf[o] === AF_INET ? 4 : 6;
  const state = STATE_NAMES[buf[o + 1] as number];
  if (!state) return undefined;
  const timerCode = buf[o + 2] as number;
  return {
    family,
    state,
    localAddress: family === 4 ? ipv4(buf, o + 8) : ipv6(buf, o + 8),
    localPort: buf.readUInt16BE(o + 4),
    peerAddress: family === 4 ? ipv4(buf, o + 24) : ipv6(buf, o + 24),
    peerPort: buf.readUInt16BE(o + 6),
    timer: timerName(timerCode),
    timerMs: timerCode === 0 ? 0 : buf.readUInt32LE(o + 52),
    timerCount: buf[o + 3] as number,
    recvQueue: buf.readUInt32LE(o + 56),
    sendQueue: buf.readUInt32LE(o + 60),
    uid: buf.readUInt32LE(o + 64),
    inode: buf.readUInt32LE(o + 68),
  };
}

function timerName(code: number): TimerName {
  return TIMER_CODES[code as keyof typeof TIMER_CODES] ?? "off";
}

// Addresses repeat (a host has few local addresses and talks to few peers): their text is cached, which at
// 100,000 sockets saves most of the parsing time and garbage. Bounded so that a scan of a huge table cannot grow
// it without limit.
const CACHE_LIMIT = 1 << 16;
const v4Text = new Map<number, string>();
const v6Text = new Map<string, string>();

/** An IPv4 address in network order at buf[o], as text (cached: a table repeats few addresses many times). */
export function ipv4(buf: Buffer, o: number): string {
  const key = buf.readUInt32BE(o);
  let text = v4Text.get(key);
  if (text === undefined) {
    text = `${buf[o]}.${buf[o + 1]}.${buf[o + 2]}.${buf[o + 3]}`;
    if (v4Text.size >= CACHE_LIMIT) v4Text.clear();
    v4Text.set(key, text);
  }
  return text;
}

/** An IPv6 address at buf[o], as text (cached). */
export function ipv6(buf: Buffer, o: number): string {
  const key = buf.toString("latin1", o, o + 16);
  let text = v6Text.get(key);
  if (text === undefined) {
    const words: number[] = [];
    for (let i = 0; i < 8; i++) words.push(buf.readUInt16BE(o + 2 * i));
    text = formatIPv6(words);
    if (v6Text.size >= CACHE_LIMIT) v6Text.clear();
    v6Text.set(key, text);
  }
  return text;
}

/** RFC 5952 text of eight 16-bit words; IPv4-mapped addresses end in dotted quad (::ffff:192.0.2.1). */
export function formatIPv6(w: readonly number[]): string {
  if (w[0] === 0 && w[1] === 0 && w[2] === 0 && w[3] === 0 && w[4] === 0 && w[5] === 0xffff) {
    const a = w[6] as number;
    const b = w[7] as number;
    return `::ffff:${a >> 8}.${a & 255}.${b >> 8}.${b & 255}`;
  }
  // Longest run of at least two zero words, the first one on a tie.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (w[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && w[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (ws: readonly number[]) => ws.map((x) => x.toString(16)).join(":");
  if (bestStart < 0) return hex(w);
  return `${hex(w.slice(0, bestStart))}::${hex(w.slice(bestStart + bestLen))}`;
}

// USER_HZ: /proc/net/tcp prints timers in clock_t ticks (jiffies_delta_to_clock_t); 100 on every Linux port
// that tcpka runs on (x86_64, arm64).
const USER_HZ = 100;

export function readProc(states: number, families: readonly (4 | 6)[], dir = "/proc/net"): TcpSocket[] {
  const out: TcpSocket[] = [];
  for (const fam of families) {
    const path = fam === 4 ? `${dir}/tcp` : `${dir}/tcp6`;
    let text: string;
    try {
      text = readFileSync(path, "latin1");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") continue; // IPv6 disabled
      throw new TcpkaError("system", `cannot read ${path}: ${(e as Error).message}`);
    }
    parseProcNetTcp(text, fam, states, out);
  }
  return out;
}

/**
 * Parse the text of /proc/net/tcp or tcp6 (get_tcp4_sock, get_timewait4_sock, get_openreq4 in
 * net/ipv4/tcp_ipv4.c and their tcp6 twins), keeping sockets whose state bit is in `states`.
 */
export function parseProcNetTcp(text: string, family: 4 | 6, states: number, out: TcpSocket[] = []): TcpSocket[] {
  let pos = text.indexOf("\n") + 1; // skip the header line
  while (pos < text.length) {
    let end = text.indexOf("\n", pos);
    if (end < 0) end = text.length;
    const line = text.slice(pos, end);
    pos = end + 1;
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const st = Number.parseInt(f[3] as string, 16);
    const state = STATE_NAMES[st];
    if (!state || !(states & (1 << st))) continue;
    const [local, localPort] = procAddress(f[1] as string, family);
    const [peer, peerPort] = procAddress(f[2] as string, family);
    const [tx, rx] = (f[4] as string).split(":");
    const [tr, when] = (f[5] as string).split(":");
    const timerCode = Number.parseInt(tr as string, 16);
    const timer = timerName(timerCode);
    // keepalive and zero-window probe timers count probes (the `timeout` column, icsk_probes_out); the others
    // count retransmissions (`retrnsmt`), which is what inet_diag reports in idiag_retrans for each.
    const count = timerCode === 0 ? "0" : timerCode === 2 || timerCode === 4 ? f[8] : f[6];
    out.push({
      family,
      state,
      localAddress: local,
      localPort,
      peerAddress: peer,
      peerPort,
      timer,
      timerMs: timerCode === 0 ? 0 : (Number.parseInt(when as string, 16) * 1000) / USER_HZ,
      timerCount: Number.parseInt(count as string, 16) || 0,
      sendQueue: Number.parseInt(tx as string, 16),
      recvQueue: Number.parseInt(rx as string, 16),
      uid: Number(f[7]),
      inode: Number(f[9]),
    });
  }
  return out;
}

/**
 * "0100007F:0016" -> ["127.0.0.1", 22]; the address is each be32 word printed as a host-order integer, so on
 * the little-endian machines tcpka supports writing it back little-endian restores the network byte order.
 */
function procAddress(field: string, family: 4 | 6): [string, number] {
  const colon = field.indexOf(":");
  const hex = field.slice(0, colon);
  const port = Number.parseInt(field.slice(colon + 1), 16);
  const bytes = Buffer.alloc(hex.length / 2);
  for (let i = 0; i < hex.length / 8; i++) {
    bytes.writeUInt32LE(Number.parseInt(hex.slice(i * 8, i * 8 + 8), 16), i * 4);
  }
  return [family === 4 ? ipv4(bytes, 0) : ipv6(bytes, 0), port];
}
