/**
 * `tcpka` with no arguments: is anything here at risk? The count of established connections with and without
 * keepalive, who owns the ones without, and the commands that fix them.
 */
import { DEFAULT_FILTER } from "../filter.js";
import { type Connection, inspect } from "../inspect/connections.js";
import type { NetNamespace } from "../inspect/namespaces.js";
import { type Detection, detection, ownersWithoutKeepalive, summarize } from "../inspect/summary.js";
import {
  describeSettings,
  type EffectiveKeepAlive,
  formatMs,
  formatSeconds,
  type SystemDefaults,
} from "../settings.js";
import { whereText, writeExactHint } from "../ui/connections.js";
import { hostPort, type Out, paint, plural, printable, table } from "../ui/format.js";

/** How many processes the fix command names: the top rows of the table. */
const FIX_AT_MOST = 5;

/** `tcpka`, or `tcpka --all-netns` for every network namespace of the host. */
export function runSummary(out: Out, opts: { allNetns?: boolean } = {}): number {
  const r = inspect(DEFAULT_FILTER, { allNetns: opts.allNetns });
  const conns = r.connections;
  const sum = summarize(conns);
  const where = opts.allNetns
    ? `on this host (${plural(r.namespaces.size, "network namespace")})`
    : "in this network namespace";
  out.write(`${plural(sum.established, "established TCP connection")} ${where}\n`);
  if (sum.established === 0) return 0;

  const w = String(sum.established).length;
  const row = (label: string, n: number, text: string) =>
    out.write(`  ${label.padEnd(15)}${String(n).padStart(w)}   ${text}`.trimEnd() + "\n");
  row("keepalive on", sum.keepaliveOn, detectionText(detection(conns, r.defaults), r.defaults));
  row(
    "keepalive off",
    sum.keepaliveOff,
    sum.keepaliveOff
      ? paint(out, "red", "dead peer never noticed; idle connections die behind stateful firewalls and NAT")
      : "",
  );
  if (sum.unknown) row("unknown", sum.unknown, "a retransmission hides the keepalive timer");

  const owners = ownersWithoutKeepalive(conns);
  if (owners.length) {
    out.write("\nWithout keepalive:\n");
    table(
      ["PROCESS", "PID", "CONNS", "PEERS"],
      owners.map((g) => [
        printable(g.comm ?? "?"),
        String(g.pid ?? "?"),
        String(g.connections.length),
        peerSummary(g.connections.map((c) => hostPort(c.socket.peerAddress, c.socket.peerPort))),
      ]),
      out,
      "  ",
    );
    writeByWorkload(conns, out);
    // The processes at the top of the table, in its order: the ones that hold most of the connections at risk.
    const top = owners.filter((g) => g.pid !== undefined).slice(0, FIX_AT_MOST);
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

/** The connections without keepalive by container or pod, when any of them is in one. */
function writeByWorkload(conns: readonly Connection[], out: Out): void {
  const groups = new Map<string, Connection[]>();
  for (const c of conns) {
    if (c.keepalive !== false || !c.workload?.container) continue;
    const key = whereText(c, NO_NAMES);
    const g = groups.get(key);
    if (g) g.push(c);
    else groups.set(key, [c]);
  }
  if (!groups.size) return;
  out.write("\nWithout keepalive, by container or pod:\n");
  table(
    ["WHERE", "CONNS", "PEERS"],
    [...groups]
      .sort((a, b) => b[1].length - a[1].length)
      .map(([where, cs]) => [
        where,
        String(cs.length),
        peerSummary(cs.map((c) => hostPort(c.socket.peerAddress, c.socket.peerPort))),
      ]),
    out,
    "  ",
  );
}

const NO_NAMES: ReadonlyMap<number, NetNamespace> = new Map();

/** How soon the connections with keepalive notice a dead peer, and whose settings make it so. */
function detectionText(k: Detection, d: SystemDefaults): string {
  const why = process.geteuid?.() === 0 ? "settings not readable" : "settings not readable without root";
  if (k.known === 0) return k.unreadable ? why : "";
  const range =
    k.fastest === k.slowest ? formatSeconds(k.slowest) : `${formatSeconds(k.fastest)} … ${formatSeconds(k.slowest)}`;
  let source = `system default: ${describeSettings(d)}`;
  if (k.own.length) {
    const programs = new Set(k.own.map((c) => c.owners[0]?.pid)).size === 1 ? "the program's" : "the programs'";
    const values = new Set(k.own.map((c) => settingsText(c.settings as EffectiveKeepAlive)));
    source = `${programs} own settings${values.size === 1 ? `: ${[...values][0]}` : ""}`;
    const byDefault = k.known - k.own.length;
    if (byDefault)
      source = `${byDefault} with the system default ${describeSettings(d)}, ${k.own.length} with ${source}`;
  }
  const text = `dead peer noticed after ${range} (${source})`;
  return k.unreadable ? `${text}; ${k.unreadable} with ${why}` : text;
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
