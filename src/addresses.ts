/**
 * IP addresses as bytes and as text: network-order bytes from text (for the rules and the BPF program), text from
 * the bytes the kernel hands over (sock_diag, /proc/net/tcp, the BPF iterator's records), netmasks, and
 * ADDRESS:PORT as tcpka prints it.
 */

/** The first 12 bytes of an IPv4-mapped IPv6 address, ::ffff:a.b.c.d. */
export const MAPPED = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

/** An IPv4 or IPv6 address (which isIP accepts) in network order: 4 or 16 bytes. */
export function addressBytes(address: string, family: 4 | 6): Buffer {
  if (family === 4) return Buffer.from(address.split(".").map(Number));
  // Expand "::" and any dotted IPv4 tail into eight 16-bit groups.
  let text = address;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const b = addressBytes(dotted[1] as string, 4);
    text = `${text.slice(0, -dotted[0].length)}${b.readUInt16BE(0).toString(16)}:${b.readUInt16BE(2).toString(16)}`;
  }
  const [head, tail] = text.split("::") as [string, string | undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  const out = Buffer.alloc(16);
  for (const [i, g] of groups.entries()) out.writeUInt16BE(Number.parseInt(g, 16), i * 2);
  return out;
}

/** The netmask of a prefix length, `length` bytes long. */
export function maskBytes(prefix: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = (0xff << (8 - Math.max(0, Math.min(8, prefix - 8 * i)))) & 0xff;
  return out;
}

/** Address `a` lies in network `net` of netmask `mask`. */
export function inNet(a: Buffer, net: Buffer, mask: Buffer): boolean {
  return a.length === net.length && mask.every((m, i) => ((a[i] as number) & m) === ((net[i] as number) & m));
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

/** "192.0.2.7:443", "[2001:db8::1]:443", or "0.0.0.0:*" for port 0. */
export function hostPort(address: string, port: number): string {
  return hostPrefix(address) + (port === 0 ? "*" : String(port)); // "*": a listener's peer, as ss prints it
}

/** What stands before the port: "192.0.2.7:", "[2001:db8::1]:". */
export function hostPrefix(address: string): string {
  return address.includes(":") ? `[${address}]:` : `${address}:`;
}
