/**
 * A network namespace's TCP counters as the kernel keeps them (/proc/PID/net/netstat: the TcpExt line of names,
 * then the line of values; net/ipv4/proc.c netstat_seq_show), read through a process in it.
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
