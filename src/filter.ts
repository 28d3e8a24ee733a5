/**
 * Which sockets a command touches: states, address families, ports, CIDRs, owning pid and process name,
 * keepalive state. Parsing turns user text into a SocketFilter or throws a usage error that names the flag.
 */
import { BlockList, isIP } from "node:net";
import { usage } from "./errors.js";
import { ALL_STATES, stateMask, type TcpEndpoints, type TcpStateName } from "./inspect/sockets.js";

export interface PortRange {
  from: number;
  to: number;
}

export interface Cidr {
  text: string;
  family: 4 | 6;
  address: string;
  prefix: number;
}

export interface SocketFilter {
  /** Bitmask of 1 << kernel TCP state. */
  states: number;
  families: (4 | 6)[];
  sports: PortRange[];
  dports: PortRange[];
  /** Peer (destination) networks; empty means any. */
  dst: Cidr[];
  /** Local (source) networks; empty means any. */
  src: Cidr[];
  pids: number[];
  comms: string[];
  /** Only sockets without keepalive. */
  noKeepalive: boolean;
}

export const DEFAULT_FILTER: Readonly<SocketFilter> = {
  states: 1 << 1, // ESTABLISHED
  families: [4, 6],
  sports: [],
  dports: [],
  dst: [],
  src: [],
  pids: [],
  comms: [],
  noKeepalive: false,
};

/** State names that `--state` accepts, as `ss state` spells them, with the kernel states they mean. */
const STATE_WORDS: Readonly<Record<string, readonly TcpStateName[]>> = {
  established: ["ESTAB"],
  "syn-sent": ["SYN-SENT"],
  "syn-recv": ["SYN-RECV"],
  "fin-wait-1": ["FIN-WAIT-1"],
  "fin-wait-2": ["FIN-WAIT-2"],
  "time-wait": ["TIME-WAIT"],
  closed: ["CLOSE"],
  "close-wait": ["CLOSE-WAIT"],
  "last-ack": ["LAST-ACK"],
  listening: ["LISTEN"],
  closing: ["CLOSING"],
  connected: ["ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSE-WAIT", "LAST-ACK", "CLOSING"],
  synchronized: ["ESTAB", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSE-WAIT", "LAST-ACK", "CLOSING"],
};

export function parseStates(words: readonly string[]): number {
  let mask = 0;
  for (const raw of words) {
    for (const w of raw.split(",")) {
      const word = w.trim().toLowerCase();
      if (word === "all") {
        mask |= ALL_STATES;
        continue;
      }
      const names = Object.hasOwn(STATE_WORDS, word) ? STATE_WORDS[word] : undefined;
      if (!names) {
        throw usage(`--state ${w}: unknown state`, `use one of: all, ${Object.keys(STATE_WORDS).join(", ")}`);
      }
      mask |= stateMask(names);
    }
  }
  return mask;
}

/** "5432", ":5432", "8000-8100", or a comma-separated list of those. */
export function parsePorts(flag: string, text: string): PortRange[] {
  const out: PortRange[] = [];
  for (const part of text.split(",")) {
    const m = /^:?(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m)
      throw usage(`${flag} ${text}: not a port`, "use a number from 1 to 65535, a range like 8000-8100, or a list");
    const from = Number(m[1]);
    const to = m[2] === undefined ? from : Number(m[2]);
    for (const p of [from, to]) {
      if (p < 1 || p > 65535) throw usage(`${flag} ${text}: port ${p} is out of range (1 to 65535)`);
    }
    if (to < from) throw usage(`${flag} ${text}: the range ends before it starts`);
    out.push({ from, to });
  }
  return out;
}

/** "198.18.0.0/15", "2001:db8::/32", or a single address (a /32 or /128). */
export function parseCidr(flag: string, text: string): Cidr {
  const slash = text.indexOf("/");
  const address = (slash < 0 ? text : text.slice(0, slash)).replace(/^\[(.*)\]$/, "$1");
  const family = isIP(address);
  if (family !== 4 && family !== 6) {
    throw usage(`${flag} ${text}: not an IP address or CIDR`, "use e.g. 198.18.0.0/15, 2001:db8::/32 or 192.0.2.7");
  }
  const max = family === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d+$/.test(p) || Number(p) > max) {
      throw usage(`${flag} ${text}: the prefix length must be 0 to ${max} for IPv${family}`);
    }
    prefix = Number(p);
  }
  return { text, family, address, prefix };
}

export function parsePid(flag: string, text: string): number {
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1 || Number(text) > 2 ** 22) {
    throw usage(`${flag} ${text}: not a process id`);
  }
  return Number(text);
}

function inRanges(port: number, ranges: readonly PortRange[]): boolean {
  for (const r of ranges) if (port >= r.from && port <= r.to) return true;
  return false;
}

function blockList(cidrs: readonly Cidr[]): BlockList | undefined {
  if (cidrs.length === 0) return undefined;
  const bl = new BlockList();
  for (const c of cidrs) bl.addSubnet(c.address, c.prefix, c.family === 4 ? "ipv4" : "ipv6");
  return bl;
}

/**
 * A predicate for the address part of a filter (family, ports, networks), or null when it lets every socket
 * through. An IPv4-mapped IPv6 peer (::ffff:192.0.2.1) matches an IPv4 network, as it is the same peer.
 */
export function addressMatcher(f: SocketFilter): ((s: TcpEndpoints) => boolean) | null {
  const dst = blockList(f.dst);
  const src = blockList(f.src);
  const fams = new Set(f.families);
  if (!dst && !src && !f.sports.length && !f.dports.length && fams.has(4) && fams.has(6)) return null;
  return (s) => {
    if (!fams.has(s.family)) return false;
    if (f.sports.length && !inRanges(s.localPort, f.sports)) return false;
    if (f.dports.length && !inRanges(s.peerPort, f.dports)) return false;
    if (dst && !dst.check(s.peerAddress, s.family === 4 ? "ipv4" : "ipv6")) return false;
    if (src && !src.check(s.localAddress, s.family === 4 ? "ipv4" : "ipv6")) return false;
    return true;
  };
}

/**
 * A rule of `--only` / `--except` for the mechanisms that act on connections as they are made (the preload
 * shim, the BPF program): a peer network and/or a service port (the peer port of an outgoing connection, the
 * local port of an accepted one). Forms: 198.18.0.0/15, 198.18.0.1:80, [2001:db8::/32]:443, 2001:db8::1, :5432.
 */
export interface EndpointRule {
  cidr?: Cidr;
  port?: number;
}

export function parseEndpointRule(flag: string, text: string): EndpointRule {
  const t = text.trim();
  const hint = "use CIDR, CIDR:PORT or :PORT, e.g. 198.18.0.0/15, 198.18.0.1:5432, [2001:db8::/32]:443, :5432";
  let addr: string | undefined = t;
  let port: string | undefined;
  const bracket = /^\[([^\]]+)\](?::(.*))?$/.exec(t);
  if (bracket) {
    addr = bracket[1];
    port = bracket[2];
  } else if (/^:\d*$/.test(t)) {
    addr = undefined;
    port = t.slice(1);
  } else if ((t.match(/:/g) ?? []).length === 1) {
    [addr, port] = t.split(":");
  }
  const rule: EndpointRule = {};
  if (port !== undefined) {
    if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
      throw usage(`${flag} ${text}: the port must be 1 to 65535`, hint);
    }
    rule.port = Number(port);
  }
  if (addr !== undefined) {
    if (addr === "") throw usage(`${flag} ${text}: not a network or port`, hint);
    rule.cidr = parseCidr(flag, addr);
  }
  return rule;
}

/**
 * The rules as a predicate over listed sockets (for mechanisms that find sockets after the fact). A listed
 * socket does not say which side opened it, so a rule's port matches either the peer port or the local port.
 * A listener has no peer: it matches only rules without an address, as in the shim.
 */
export function endpointMatcher(
  only: readonly EndpointRule[],
  except: readonly EndpointRule[],
): ((s: TcpEndpoints) => boolean) | null {
  if (!only.length && !except.length) return null;
  const compile = (r: EndpointRule) => {
    const net = r.cidr ? blockList([r.cidr]) : undefined;
    return (s: TcpEndpoints): boolean => {
      if (r.port !== undefined && r.port !== s.peerPort && r.port !== s.localPort) return false;
      if (!net) return true;
      return s.state !== "LISTEN" && net.check(s.peerAddress, s.family === 4 ? "ipv4" : "ipv6");
    };
  };
  const yes = only.map(compile);
  const no = except.map(compile);
  return (s) => (yes.length === 0 || yes.some((m) => m(s))) && !no.some((m) => m(s));
}

/** The canonical text of a rule, as the shim reads it from TCPKA_ONLY / TCPKA_EXCEPT. */
export function endpointRuleText(r: EndpointRule): string {
  const net = r.cidr ? `${r.cidr.address}/${r.cidr.prefix}` : "";
  if (r.port === undefined) return net;
  return r.cidr?.family === 6 ? `[${net}]:${r.port}` : `${net}:${r.port}`;
}
