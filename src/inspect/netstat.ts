/**
 * A network namespace's TCP counters as the kernel keeps them (/proc/PID/net/netstat: the TcpExt line of names,
 * then the line of values; net/ipv4/proc.c netstat_seq_show), and how many TCP sockets it has hashed
 * (/proc/PID/net/sockstat and sockstat6), read through a process in it.
 */
import { readFileSync } from "node:fs";

/** TcpExt counters of a netstat file (a line of names, then a line of values), by name; undefined when unreadable. */
export function tcpExt(file: string, names: readonly string[]): Map<string, number> | undefined {
  let text: string;
  try {
    text = readFileSync(file, "latin1");
  } catch {
    return undefined; // the process has gone
  }
  const lines = text.split("\n");
  for (let i = 0; i + 1 < lines.length; i++) {
    const head = lines[i] as string;
    const values = lines[i + 1] as string;
    if (!head.startsWith("TcpExt:") || !values.startsWith("TcpExt:")) continue;
    const keys = head.split(" ");
    const nums = values.split(" ");
    const out = new Map<string, number>();
    for (const name of names) {
      const at = keys.indexOf(name);
      const v = at < 0 ? Number.NaN : Number(nums[at]);
      if (Number.isFinite(v)) out.set(name, v);
    }
    return out;
  }
  return undefined;
}

/**
 * The TCP sockets of the namespace of process `pid` that are in the kernel's hash tables, IPv4 and IPv6: the
 * "inuse" of /proc/PID/net/sockstat's TCP line and sockstat6's TCP6 line (sock_prot_inuse_get of tcp_prot and
 * tcpv6_prot, counted as sockets are hashed and unhashed: every LISTEN and ESTABLISHED one; TIME-WAIT apart).
 * undefined when either cannot be read (the process has gone, no IPv6).
 */
export function tcpInUse(pid: number): number | undefined {
  let n = 0;
  for (const [file, re] of [
    [`/proc/${pid}/net/sockstat`, /^TCP: inuse (\d+)/m],
    [`/proc/${pid}/net/sockstat6`, /^TCP6: inuse (\d+)/m],
  ] as const) {
    let text: string;
    try {
      text = readFileSync(file, "latin1");
    } catch {
      return undefined;
    }
    const m = re.exec(text);
    if (!m) return undefined;
    n += Number(m[1]);
  }
  return n;
}
