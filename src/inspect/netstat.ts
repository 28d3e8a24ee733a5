/**
 * A network namespace's TCP counters as the kernel keeps them (/proc/PID/net/netstat: the TcpExt line of names,
 * then the line of values; net/ipv4/proc.c netstat_seq_show), and how many TCP sockets it has hashed
 * (/proc/PID/net/sockstat and sockstat6), read through a process in it.
 */
import { readFileSync, statSync } from "node:fs";

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
 * The TCP sockets of the namespace of inode `inum` that are in the kernel's hash tables, IPv4 and IPv6 ("inuse"
 * of /proc/PID/net/sockstat's TCP line and sockstat6's TCP6 line: sock_prot_inuse_get of tcp_prot and
 * tcpv6_prot, counted as sockets are hashed and unhashed: every LISTEN to CLOSING one, orphans too), and those in
 * TIME-WAIT ("tw", the namespace's tcp_death_row.tw_refcount, IPv4 and IPv6 alike; where a kernel keeps one death
 * row for the host, a namespace shows the host's count, which only makes tcpka walk where it could have held), read
 * through process `pid`, which must be in that namespace. undefined whenever unsure: the files cannot be read, or the process is no
 * longer in that namespace (setns, or its pid reused) once they have been read. (sockstat's "orphan" is the
 * host's, tcp_orphan_count_sum(), not the namespace's.)
 */
export function tcpCounts(pid: number, inum: number): { inuse: number; tw: number } | undefined {
  const n = sockstat(pid);
  if (n === undefined) return undefined;
  try {
    return statSync(`/proc/${pid}/ns/net`).ino === inum ? n : undefined;
  } catch {
    return undefined;
  }
}

const SOCKSTAT = /^TCP: inuse (\d+) orphan \d+ tw (\d+)/m;
const SOCKSTAT6 = /^TCP6: inuse (\d+)/m;

/** tcpCounts of the namespace that process `pid` is in now (tcpka's own: process.pid), without the check. */
export function sockstat(pid: number): { inuse: number; tw: number } | undefined {
  try {
    const v4 = SOCKSTAT.exec(readFileSync(`/proc/${pid}/net/sockstat`, "latin1"));
    const v6 = SOCKSTAT6.exec(readFileSync(`/proc/${pid}/net/sockstat6`, "latin1"));
    if (!v4 || !v6) return undefined;
    return { inuse: Number(v4[1]) + Number(v6[1]), tw: Number(v4[2]) };
  } catch {
    return undefined;
  }
}
