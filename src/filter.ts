/**
 * Which sockets a command touches: states, address families, ports, CIDRs, owning pid and process name,
 * keepalive state. Parsing turns user text into a SocketFilter or throws a usage error that names the flag.
 */
import { createRequire } from "node:module";
import type { BlockList } from "node:net";
import { addressBytes, formatIPv6, inNet, MAPPED, maskBytes } from "./addresses.js";
import { usage } from "./errors.js";
import { ALL_STATES, stateMask, type TcpStateName } from "./kernel/states.js";

// node:net (BlockList, isIP) is loaded when a filter names an address, not by every command that filters: it
// loads the whole of node:stream, ~9 ms of a start-up.
const require = createRequire(import.meta.url);
const nodeNet = () => require("node:net") as typeof import("node:net");

/**
 * What identifies a connection and its state: what the filters match, and all that `tcpka enable` needs of a
 * socket to filter and report it. inspect/sockets.ts lists them (TcpSocket adds the timer and queues).
 */
export interface TcpEndpoints {
  family: 4 | 6;
  state: TcpStateName;
  localAddress: string;
  localPort: number;
  peerAddress: string;
  peerPort: number;
  /** Inode of the socket; 0 for TIME_WAIT and request sockets, which have no file. */
  inode: number;
}

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
  /** --only / --except rules, as tcpka run, trace and enforce take them; empty: every socket. */
  only: EndpointRule[];
  except: EndpointRule[];
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
  only: [],
  except: [],
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

/** A TCP port a connection can have: 1 to 65535 (port 0 only asks bind() to pick one). */
function isPort(n: number): boolean {
  return n >= 1 && n <= 65535;
}

/** Does the range hold the port (both ends included)? */
function inRange(port: number, r: PortRange): boolean {
  return port >= r.from && port <= r.to;
}

/** One port, "7007" (the port of HOST:PORT); `what` names the input in the error. */
export function parsePort(what: string, text: string): number {
  if (!/^\d+$/.test(text)) throw usage(`${what}: ${text || "(empty)"} is not a port number`, "a port is 1 to 65535");
  const port = Number(text);
  if (port === 0) throw usage(`${what}: port 0 is not a usable port`, "give a port from 1 to 65535");
  if (!isPort(port)) throw usage(`${what}: port ${port} is out of range`, "a port is 1 to 65535");
  return port;
}

const PORTS_HINT = "use a number from 1 to 65535, a range like 8000-8100, or a list";

/** "5432", ":5432", "8000-8100", or a comma-separated list of those. */
export function parsePorts(flag: string, text: string): PortRange[] {
  return portList(`${flag} ${text}`, text, PORTS_HINT);
}

/** The ports of `text`; errors start with `what` (the flag and all of its value). */
function portList(what: string, text: string, hint: string): PortRange[] {
  const out: PortRange[] = [];
  for (const part of text.split(",")) {
    const m = /^:?(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw usage(`${what}: not a port`, hint);
    const from = Number(m[1]);
    const to = m[2] === undefined ? from : Number(m[2]);
    for (const p of [from, to]) {
      if (!isPort(p)) throw usage(`${what}: port ${p} is out of range (1 to 65535)`);
    }
    if (to < from) throw usage(`${what}: the range ends before it starts`);
    out.push({ from, to });
  }
  return out;
}

/** "198.18.0.0/15", "2001:db8::/32", or a single address (a /32 or /128). */
export function parseCidr(flag: string, text: string): Cidr {
  return cidrOf(`${flag} ${text}`, text, "use e.g. 198.18.0.0/15, 2001:db8::/32 or 192.0.2.7");
}

function cidrOf(what: string, text: string, hint: string): Cidr {
  const slash = text.indexOf("/");
  const address = (slash < 0 ? text : text.slice(0, slash)).replace(/^\[(.*)\]$/, "$1");
  const family = nodeNet().isIP(address);
  if (family !== 4 && family !== 6) throw usage(`${what}: not an IP address or CIDR`, hint);
  const max = family === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d+$/.test(p) || Number(p) > max) {
      throw usage(`${what}: the prefix length must be 0 to ${max} for IPv${family}`);
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
  for (const r of ranges) if (inRange(port, r)) return true;
  return false;
}

function blockList(cidrs: readonly Cidr[]): BlockList | undefined {
  if (cidrs.length === 0) return undefined;
  const bl = new (nodeNet().BlockList)();
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
 * A rule of `--only` / `--except`, parsed once here for every mechanism (the preload shim reads its canonical
 * text, enforce's BPF program is generated from it, the listed-socket matcher below runs it): a peer network
 * and/or a range of service ports (the peer port of a connection made by connect(), the local port of an accepted
 * one or of a listener). A port list in the text gives one rule per range.
 */
export interface EndpointRule {
  /** Canonical: host bits cleared, and an IPv4-mapped IPv6 network is the IPv4 one. */
  cidr?: Cidr;
  ports?: PortRange;
}

/** At most this many rules in all, --only and --except together, each range of a port list counting as one. */
export const MAX_RULES = 32;

const RULE_HINT =
  "use CIDR, CIDR:PORTS, [IPv6CIDR]:PORTS or :PORTS, e.g. 198.18.0.0/15, 198.18.0.1:5432, [2001:db8::/32]:443, :8000-8100, :80,443";

/**
 * One --only/--except value: `198.18.0.0/15`, `198.18.0.1:80-90`, `2001:db8::1`, `[2001:db8::/32]:443`, `:5432`,
 * `:80,443`. Refused, each with its reason: a zone id (`fe80::1%lo`: the BPF program cannot see a connection's
 * interface, so no mechanism could honour it); an unbracketed IPv6 address whose last group could be a port
 * (`::1:443`); a port after an unbracketed IPv6 network.
 */
export function parseEndpointRule(flag: string, text: string): EndpointRule[] {
  const what = `${flag} ${text}`;
  const t = text.trim();
  const zone = /%[^\]/]*/.exec(t);
  if (zone) {
    throw usage(
      `${what}: zone ids (${zone[0]}) are not supported: tcpka enforce's BPF program cannot see a connection's interface`,
      `leave the zone out: ${t.replace(zone[0], "")} matches that address on every interface`,
    );
  }
  let net: string | undefined;
  let ports: string | undefined;
  const bracket = /^\[([^\]]*)\](\/[^:]*)?(?::(.*))?$/.exec(t);
  if (bracket) {
    net = `${bracket[1]}${bracket[2] ?? ""}`;
    ports = bracket[3];
  } else if (t.startsWith(":") && !t.startsWith("::")) {
    ports = t.slice(1);
  } else if (t.split(":").length === 2) {
    [net, ports] = t.split(":");
  } else {
    net = t;
    if (t.includes(":")) refuseUnbracketedPort(what, t);
  }
  if (net === "" || (net === undefined && ports === undefined))
    throw usage(`${what}: not a network or port`, RULE_HINT);
  const cidr = net === undefined ? undefined : canonical(cidrOf(what, net, RULE_HINT));
  if (ports === undefined) return [{ cidr }];
  if (ports === "") throw usage(`${what}: no port after ':'`, RULE_HINT);
  return portList(what, ports, RULE_HINT).map((p) => (cidr ? { cidr, ports: p } : { ports: p }));
}

/** An unbracketed IPv6 address takes no port: refuse what reads as one (`::1:443`, `2001:db8::/32:443`). */
function refuseUnbracketedPort(what: string, t: string): void {
  const net = /^([^/]*\/\d*):(.+)$/.exec(t);
  if (net) throw usage(`${what}: a port after an IPv6 network needs brackets`, `write [${net[1]}]:${net[2]}`);
  const i = t.lastIndexOf(":");
  const head = t.slice(0, i);
  const tail = t.slice(i + 1);
  if (!/^\d{1,5}$/.test(tail) || nodeNet().isIP(head) !== 6) return;
  if (nodeNet().isIP(t) !== 6)
    throw usage(`${what}: a port after an IPv6 address needs brackets`, `write [${head}]:${tail}`);
  throw usage(
    `${what}: ambiguous: the IPv6 address ${t}, or port ${tail} of ${head}?`,
    `write [${head}]:${tail} for the port, or [${t}] for the address`,
  );
}

/** --only and --except as every command takes them, with the limit of MAX_RULES. */
export function parseRules(
  only: readonly string[],
  except: readonly string[],
): { only: EndpointRule[]; except: EndpointRule[] } {
  const rules = {
    only: only.flatMap((r) => parseEndpointRule("--only", r)),
    except: except.flatMap((r) => parseEndpointRule("--except", r)),
  };
  const n = rules.only.length + rules.except.length;
  if (n > MAX_RULES) {
    throw usage(
      `--only/--except: ${n} rules, more than the ${MAX_RULES} that the preload library and the BPF program hold`,
      "each range of a port list counts as one rule: cover more with a wider network or a port range",
    );
  }
  return rules;
}

/**
 * A network as every mechanism matches it: an IPv4-mapped one (::ffff:198.18.0.0/111) is the IPv4 network
 * (198.18.0.0/15), because an IPv4 peer of an AF_INET6 socket is an IPv4 peer to the shim and the BPF program;
 * host bits are cleared.
 */
function canonical(c: Cidr): Cidr {
  let bytes = addressBytes(c.address, c.family);
  let { family, prefix } = c;
  if (family === 6 && prefix >= 96 && bytes.subarray(0, 12).equals(MAPPED)) {
    bytes = bytes.subarray(12);
    family = 4;
    prefix -= 96;
  }
  const mask = maskBytes(prefix, bytes.length);
  const net = Buffer.from(bytes.map((b, i) => b & (mask[i] as number)));
  const address =
    family === 4 ? [...net].join(".") : formatIPv6(Array.from({ length: 8 }, (_, i) => net.readUInt16BE(2 * i)));
  return { text: `${address}/${prefix}`, family, address, prefix };
}

/** Does this IPv6 network hold IPv4-mapped addresses (::/0 does)? Those peers are IPv4 peers: it must skip them. */
export function holdsMapped(c: Cidr): boolean {
  return (
    c.family === 6 &&
    inNet(Buffer.concat([MAPPED, Buffer.alloc(4)]), addressBytes(c.address, 6), maskBytes(c.prefix, 16))
  );
}

/** A peer address as the rules see it: 4 bytes for IPv4, also when it is IPv4-mapped (::ffff:a.b.c.d), else 16. */
function peerBytes(address: string): Buffer {
  const b = addressBytes(address, address.includes(":") ? 6 : 4);
  return b.length === 16 && b.subarray(0, 12).equals(MAPPED) ? b.subarray(12) : b;
}

/**
 * The rules as one decision on a connection, given its peer (null for a listener, whose peers are not known yet)
 * and its service port. A rule matches when its ports hold the port and its network the peer; an IPv6 network
 * never holds an IPv4 peer. A connection is taken when it matches an --only rule (or there is none) and no
 * --except rule. A listener is taken only when no rule names an address: otherwise each connection it accepts is
 * decided on its own peer. native/preload.c (wanted, and listen) and the BPF program of src/bpf/keepalive.ts
 * decide the same way.
 */
export function ruleDecision(
  only: readonly EndpointRule[],
  except: readonly EndpointRule[],
): ((peer: Buffer | null, port: number) => boolean) | null {
  if (!only.length && !except.length) return null;
  const compile = ({ cidr, ports }: EndpointRule) => {
    const net = cidr && {
      bytes: addressBytes(cidr.address, cidr.family),
      mask: maskBytes(cidr.prefix, cidr.family === 4 ? 4 : 16),
    };
    return (peer: Buffer | null, port: number): boolean =>
      (!ports || inRange(port, ports)) && (!net || (peer !== null && inNet(peer, net.bytes, net.mask)));
  };
  const yes = only.map(compile);
  const no = except.map(compile);
  const byAddress = [...only, ...except].some((r) => r.cidr);
  return (peer, port) =>
    !(peer === null && byAddress) &&
    (yes.length === 0 || yes.some((m) => m(peer, port))) &&
    !no.some((m) => m(peer, port));
}

/**
 * A predicate over listed sockets (ls, enable, run's fallback, enforce --existing). `listening` gives the local
 * ports listened on in the socket's network namespace; it is asked only when a rule has a port.
 */
export type ListedMatcher = (s: TcpEndpoints, listening: () => ReadonlySet<number>) => boolean;

/**
 * The rules over listed sockets. A listed socket does not say which side opened it: one whose local port is
 * listened on in its network namespace was accepted, and its service port is its local port; any other was made
 * by connect(), and its service port is the peer's.
 */
export function rulesMatcher(only: readonly EndpointRule[], except: readonly EndpointRule[]): ListedMatcher | null {
  const decide = ruleDecision(only, except);
  if (!decide) return null;
  const byPort = [...only, ...except].some((r) => r.ports);
  return (s, listening) => {
    if (s.state === "LISTEN") return decide(null, s.localPort);
    const accepted = byPort && listening().has(s.localPort);
    return decide(peerBytes(s.peerAddress), accepted ? s.localPort : s.peerPort);
  };
}

/** Everything a filter says about a socket's addresses and ports (--sport … --src, --only, --except); null: all. */
export function socketMatcher(f: SocketFilter): ListedMatcher | null {
  const address = addressMatcher(f);
  const rules = rulesMatcher(f.only, f.except);
  if (!address || !rules) return address ?? rules;
  return (s, listening) => address(s) && rules(s, listening);
}

/** The canonical text of a rule, as the shim reads it from TCPKA_ONLY / TCPKA_EXCEPT and --list shows it. */
export function endpointRuleText(r: EndpointRule): string {
  const net = r.cidr ? `${r.cidr.address}/${r.cidr.prefix}` : "";
  if (!r.ports) return net;
  const ports = r.ports.from === r.ports.to ? `${r.ports.from}` : `${r.ports.from}-${r.ports.to}`;
  return r.cidr?.family === 6 ? `[${net}]:${ports}` : `${net}:${ports}`;
}
