/**
 * `tcpka` with no arguments: is anything here at risk? The count of established connections with and without
 * keepalive, who owns the ones without, and the commands that fix them.
 */

import { DEFAULT_FILTER } from "../filter.js";
import { inspect } from "../inspect/connections.js";
import { formatSeconds } from "../settings.js";
import { hostPort, type Out, paint, printable, table } from "./format.js";
import { summarize, writeExactHint } from "./ls.js";

export function runSummary(out: Out): number {
  const r = inspect(DEFAULT_FILTER);
  const conns = r.connections;
  const sum = summarize(conns);
  const d = r.defaults;
  out.write(`${sum.total} established TCP connection${sum.total === 1 ? "" : "s"} in this network namespace\n`);
  if (sum.total === 0) return 0;

  let fastest = Number.POSITIVE_INFINITY;
  let slowest = 0;
  for (const c of conns) {
    if (c.deadPeerAfter === null) continue;
    fastest = Math.min(fastest, c.deadPeerAfter);
    slowest = Math.max(slowest, c.deadPeerAfter);
  }
  const range =
    slowest > 0
      ? fastest === slowest
        ? formatSeconds(slowest)
        : `${formatSeconds(fastest)} … ${formatSeconds(slowest)}`
      : "";
  const sys = `system default: ${d.idle}s + ${d.interval}s × ${d.count}`;
  const w = String(sum.total).length;
  out.write(
    `  keepalive on   ${String(sum.keepaliveOn).padStart(w)}   ${range ? `dead peer noticed after ${range} (${sys})` : `(${sys})`}\n`,
  );
  out.write(
    `  keepalive off  ${String(sum.keepaliveOff).padStart(w)}   ${sum.keepaliveOff ? paint(out, "red", "dead peer never noticed; idle connections die behind stateful firewalls and NAT") : ""}\n`.replace(
      / +\n$/,
      "\n",
    ),
  );
  if (sum.unknown)
    out.write(`  unknown        ${String(sum.unknown).padStart(w)}   a retransmission hides the keepalive timer\n`);

  const off = conns.filter((c) => c.keepalive === false);
  if (off.length) {
    // Group by owning process; peers summarised as up to three addresses or networks.
    const groups = new Map<string, { comm: string; pid: string; peers: string[] }>();
    for (const c of off) {
      const o = c.owners[0];
      const key = o ? String(o.pid) : "?";
      let g = groups.get(key);
      if (!g) {
        g = { comm: o?.comm ?? "?", pid: o ? String(o.pid) : "?", peers: [] };
        groups.set(key, g);
      }
      g.peers.push(hostPort(c.socket.peerAddress, c.socket.peerPort));
    }
    const rows = [...groups.values()]
      .sort((a, b) => b.peers.length - a.peers.length)
      .map((g) => [printable(g.comm), g.pid, String(g.peers.length), peerSummary(g.peers)]);
    out.write("\nWithout keepalive:\n");
    table(["PROCESS", "PID", "CONNS", "PEERS"], rows, out, "  ");
    const top = [...groups.values()].find((g) => g.pid !== "?");
    out.write("\n");
    if (top) out.write(`Fix a running process:  sudo tcpka enable --pid ${top.pid} --idle 60s\n`);
    out.write("Fix at start:           tcpka run --idle 60s -- <command>\n");
  }
  writeExactHint(r, sum.total - sum.exact, out);
  return 0;
}

/** "192.0.2.15:5432" for one peer; "192.0.2.15:5432 (3)" for one repeated; up to three, then "+N more". */
function peerSummary(peers: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const p of peers) counts.set(p, (counts.get(p) ?? 0) + 1);
  const sorted = [...counts].sort((a, b) => b[1] - a[1]);
  const shown = sorted.slice(0, 3).map(([p, n]) => (n > 1 ? `${p} (${n})` : p));
  if (sorted.length > 3) shown.push(`+${sorted.length - 3} more`);
  return shown.join(", ");
}
