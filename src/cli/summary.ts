/**
 * `tcpka` with no arguments: is anything here at risk? The count of established connections with and without
 * keepalive, who owns the ones without, and the commands that fix them.
 */
import { geteuid } from "node:process";
import { DEFAULT_FILTER } from "../filter.js";
import { type Connection, inspect } from "../inspect/connections.js";
import {
  describeSettings,
  type EffectiveKeepAlive,
  formatMs,
  formatSeconds,
  type SystemDefaults,
} from "../settings.js";
import { hostPort, type Out, paint, plural, printable, table } from "../ui/format.js";
import { summarize, writeExactHint } from "./ls.js";

/** How many processes the fix command names: the top rows of the table. */
const FIX_AT_MOST = 5;

export function runSummary(out: Out): number {
  const r = inspect(DEFAULT_FILTER);
  const conns = r.connections;
  const sum = summarize(conns);
  out.write(`${plural(sum.established, "established TCP connection")} in this network namespace\n`);
  if (sum.established === 0) return 0;

  const w = String(sum.established).length;
  const row = (label: string, n: number, text: string) =>
    out.write(`  ${label.padEnd(15)}${String(n).padStart(w)}   ${text}`.trimEnd() + "\n");
  row("keepalive on", sum.keepaliveOn, detection(conns, r.defaults));
  row(
    "keepalive off",
    sum.keepaliveOff,
    sum.keepaliveOff
      ? paint(out, "red", "dead peer never noticed; idle connections die behind stateful firewalls and NAT")
      : "",
  );
  if (sum.unknown) row("unknown", sum.unknown, "a retransmission hides the keepalive timer");

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
    const sorted = [...groups.values()].sort((a, b) => b.peers.length - a.peers.length);
    out.write("\nWithout keepalive:\n");
    table(
      ["PROCESS", "PID", "CONNS", "PEERS"],
      sorted.map((g) => [printable(g.comm), g.pid, String(g.peers.length), peerSummary(g.peers)]),
      out,
      "  ",
    );
    // The processes at the top of the table, in its order: the ones that hold most of the connections at risk.
    const top = sorted.filter((g) => g.pid !== "?").slice(0, FIX_AT_MOST);
    out.write("\n");
    if (top.length) {
      const label = top.length === 1 ? "Fix a running process:" : "Fix running processes:";
      out.write(`${label}  sudo tcpka enable ${top.map((g) => `--pid ${g.pid}`).join(" ")} --idle 60s\n`);
    }
    out.write("Fix at start:           tcpka run --idle 60s -- <command>\n");
  }
  writeExactHint(r, sum.total - sum.exact, out);
  return 0;
}

/**
 * How soon the connections with keepalive notice a dead peer, and whose settings make it so: the namespace's
 * defaults, or the programs' own. A socket whose values equal the defaults is counted as using them: getsockopt
 * returns the effective value (keepalive_time_when() in include/net/tcp.h), so the two cannot be told apart.
 */
function detection(conns: readonly Connection[], d: SystemDefaults): string {
  const on = conns.filter((c) => c.keepalive === true);
  const known = on.filter((c) => c.settings !== null && c.deadPeerAfter !== null);
  const unreadable = on.length - known.length;
  const why = geteuid?.() === 0 ? "settings not readable" : "settings not readable without root";
  if (known.length === 0) return unreadable ? why : "";

  let fastest = Number.POSITIVE_INFINITY;
  let slowest = 0;
  for (const c of known) {
    fastest = Math.min(fastest, c.deadPeerAfter as number);
    slowest = Math.max(slowest, c.deadPeerAfter as number);
  }
  const range = fastest === slowest ? formatSeconds(slowest) : `${formatSeconds(fastest)} … ${formatSeconds(slowest)}`;
  const own = known.filter((c) => !usesDefaults(c.settings as EffectiveKeepAlive, d));
  let source = `system default: ${describeSettings(d)}`;
  if (own.length) {
    const programs = new Set(own.map((c) => c.owners[0]?.pid)).size === 1 ? "the program's" : "the programs'";
    const values = new Set(own.map((c) => settingsText(c.settings as EffectiveKeepAlive)));
    source = `${programs} own settings${values.size === 1 ? `: ${[...values][0]}` : ""}`;
    const byDefault = known.length - own.length;
    if (byDefault) source = `${byDefault} with the system default ${describeSettings(d)}, ${own.length} with ${source}`;
  }
  const text = `dead peer noticed after ${range} (${source})`;
  return unreadable ? `${text}; ${unreadable} with ${why}` : text;
}

function usesDefaults(e: EffectiveKeepAlive, d: SystemDefaults): boolean {
  return e.idle === d.idle && e.interval === d.interval && e.count === d.count && e.userTimeout === 0;
}

function settingsText(e: EffectiveKeepAlive): string {
  return describeSettings(e) + (e.userTimeout ? `, user timeout ${formatMs(e.userTimeout)}` : "");
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
