/**
 * Every TCP socket of this network namespace, read through NETLINK_SOCK_DIAG (what `ss` uses) or, as a
 * fallback, parsed from /proc/net/tcp and /proc/net/tcp6. Both give the same facts: state, addresses, the
 * pending timer (retransmit, keepalive, zero-window probe, TIME_WAIT), its time left and count, uid and inode.
 * Neither tells whether SO_KEEPALIVE is set: see exact.ts for that.
 */
import { readFileSync } from "node:fs";
import { ipv4, ipv6 } from "../addresses.js";
import { TcpkaError } from "../errors.js";
import type { TcpEndpoints } from "../filter.js";
import { AF_INET, AF_INET6, INET_DIAG_MSG_LEN, TIMER_CODES } from "../kernel/constants.js";
import { STATE_NAMES, TCP_STATES } from "../kernel/states.js";
import { inetDiagDump } from "../sys/netlink.js";

export type TimerName = (typeof TIMER_CODES)[keyof typeof TIMER_CODES];

export interface TcpSocket extends TcpEndpoints {
  /** The pending timer the kernel reports; "keepalive" only when no retransmit/probe timer hides it. */
  timer: TimerName;
  /** Time left on that timer, in milliseconds (0 when none). */
  timerMs: number;
  /** For keepalive and persist timers: unanswered probes sent; for retransmit: retransmissions. */
  timerCount: number;
  sendQueue: number;
  recvQueue: number;
  uid: number;
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
