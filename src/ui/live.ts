/**
 * What enable, disable, run's fallback and enforce --existing print of a LiveSession (enforce/live/): a line per
 * socket as each round ends, then the summary, or everything as one JSON document at the end.
 */
import type { LiveResult, LiveSummary, Spread } from "../enforce/live/session.js";
import { type Change, formatMs, formatSeconds, type KeepAliveSettings } from "../settings.js";
import { hostPort, Out, paint, plural, processText } from "./format.js";

/** A spread shorter than this goes without a word: nobody notices the wait. */
const NOTICEABLE_MS = 500;

/**
 * Settings that a few lost probes defeat, and how many sockets make that likely (a full queue somewhere drops
 * a burst of them): a count of 2 or less, or interval × count under 5 s, on 1,000 sockets or more.
 */
const FRAGILE_COUNT = 2;
const FRAGILE_SECONDS = 5;
const FRAGILE_SOCKETS = 1000;

export interface LiveReportOptions {
  settings: KeepAliveSettings;
  disable?: boolean;
  dryRun?: boolean;
  /** no line per socket, only the summary */
  quiet?: boolean;
  json?: boolean;
}

/** The report of one watch: round() is its onRound, end() prints the summary and gives the exit code. */
export class LiveReport {
  private readonly all: LiveResult[] = [];
  /** where notes and warnings go: with --json, stderr, so that stdout stays one JSON document */
  private readonly notes: Out;

  constructor(
    private readonly out: Out,
    private readonly o: LiveReportOptions,
  ) {
    this.notes = o.json ? new Out(2) : out;
  }

  /** The onSpread of a watch: says how long the changes take and why, before the wait. */
  readonly spread = (s: Spread): void => {
    if (s.windowMs >= NOTICEABLE_MS || s.floor || s.capped) {
      this.notes.write(
        s.windowMs === 0
          ? `changing up to ${plural(s.changes, "socket")} at once (--spread 0)\n`
          : `spreading ${plural(s.changes, "change")} over ${formatMs(s.windowMs)} so that no timer tick carries more than ~${s.perTick} probes tcpka caused\n`,
      );
    }
    if (s.capped) {
      this.notes.write(
        `warning: --spread ${formatMs(s.windowMs)} puts ~${s.perTick} probes in one timer tick, more than half the softnet backlog (net.core.netdev_max_backlog / 2 = ${s.bound}): loopback and veth peers may lose probes, and with a low --count their connections\n`,
      );
    }
    if (s.floor) {
      this.notes.write(
        `warning: ~${s.perTick} is more than half the softnet backlog (net.core.netdev_max_backlog / 2 = ${s.bound}), and spreading longer than one idle time would not help: loopback and veth peers may lose probes\n`,
      );
    }
    this.notes.end();
  };

  readonly round = (results: readonly LiveResult[]): void => {
    if (this.o.json) this.all.push(...results);
    else if (!this.o.quiet) for (const r of results) this.out.write(lineFor(r, this.out));
    this.out.end();
  };

  /** The summary (with --json, the whole document); the exit code: 1 when a socket failed or a process was unreadable. */
  end(s: LiveSummary): number {
    if (this.o.json) {
      this.out.write(
        `${JSON.stringify({
          sockets: this.all.map(resultJson),
          summary: {
            changed: s.changed,
            unchanged: s.unchanged,
            listening: s.listening,
            filtered_out: s.filtered,
            gone: s.gone,
            failed: s.failed,
            unreadable_pids: s.unreadable,
            dead_peer_after_s_before: finite(s.deadPeerBefore),
            dead_peer_after_s: finite(s.deadPeerAfter),
            dry_run: this.o.dryRun === true,
          },
        })}\n`,
      );
    } else {
      writeSummary(s, this.o, this.out);
    }
    const fragile = this.fragile(s.changed);
    if (fragile) {
      this.notes.write(fragile);
      this.notes.end();
    }
    return s.failed > 0 || s.unreadable.length > 0 ? 1 : 0;
  }

  /** The warning line for fragile settings on `changed` sockets, or "". */
  private fragile(changed: number): string {
    const { count, interval } = this.o.settings;
    if (this.o.disable || changed < FRAGILE_SOCKETS || count === undefined || interval === undefined) return "";
    if (count > FRAGILE_COUNT && interval * count >= FRAGILE_SECONDS) return "";
    const probes = `${plural(count, "unanswered probe")} ${interval}s apart`;
    return `warning: giving up after ${probes} is fragile on ${changed} sockets: a probe lost to a full queue counts as unanswered, so a short burst of drops kills healthy connections (sturdier: --count 3 or more and interval × count of 5s or more)\n`;
  }
}

function changeText(c: Change): string {
  if (c.option === "keepalive") return c.to ? "keepalive on" : "keepalive off";
  if (c.option === "userTimeout") return `user timeout ${c.from ? formatMs(c.from) : "none"}→${formatMs(c.to)}`;
  const unit = c.option === "count" ? "" : "s";
  return `${c.option} ${c.from}→${c.to}${unit}`;
}

function lineFor(r: LiveResult, out: Out): string {
  const s = r.socket;
  const where = `${processText(s.comm, s.pid)} fd ${s.fd}  ${s.socket.state} ${hostPort(s.socket.localAddress, s.socket.localPort)}${
    s.socket.state === "LISTEN" ? "" : ` -> ${hostPort(s.socket.peerAddress, s.socket.peerPort)}`
  }`;
  const o = r.outcome;
  switch (o.result) {
    case "changed":
    case "would change":
      return `${where}  ${paint(out, "green", o.result)}  ${o.changes.map(changeText).join(", ")}\n`;
    case "unchanged": {
      const b = o.before;
      return `${where}  already  ${b.keepalive ? `on, ${b.idle}s / ${b.interval}s / ${b.count}` : "off"}\n`;
    }
    case "gone":
      return `${where}  gone  closed or exited meanwhile (${o.error.errnoName})\n`;
    case "failed":
      return `${where}  ${paint(out, "red", "failed")}  ${o.error.message}\n`;
  }
}

function resultJson(r: LiveResult): Record<string, unknown> {
  const s = r.socket;
  const o = r.outcome;
  return {
    pid: s.pid,
    comm: s.comm,
    fd: s.fd,
    state: s.socket.state,
    local_address: s.socket.localAddress,
    local_port: s.socket.localPort,
    peer_address: s.socket.peerAddress,
    peer_port: s.socket.peerPort,
    inode: s.socket.inode,
    result: o.result,
    changes: o.changes.map((c) => ({ option: c.option, from: c.from, to: c.to })),
    ...("error" in o ? { error: o.error.errnoName, message: o.error.message } : {}),
  };
}

function finite(x: number | null): number | null {
  return x === null || !Number.isFinite(x) ? null : x;
}

function writeSummary(t: LiveSummary, o: LiveReportOptions, out: Out): void {
  const total = t.changed + t.unchanged + t.gone + t.failed;
  const verb = o.dryRun ? "would change" : "changed";
  const s = o.settings;
  const what = o.disable ? "keepalive off" : `keepalive on, ${s.idle}s / ${s.interval}s / ${s.count}`;
  out.write(`${plural(total, "TCP socket")} in ${plural(t.processes.length, "process", "processes")}\n`);
  const row = (label: string, n: number, note = "") =>
    out.write(`  ${label.padEnd(18)}${String(n).padStart(6)}  ${note}\n`.trimEnd() + "\n");
  row(verb, t.changed, t.changed ? what : "");
  row(o.disable ? "already off" : "already as strong", t.unchanged);
  if (t.listening && !o.disable)
    row("listening", t.listening, "connections they accept from now on inherit the settings");
  if (t.filtered) row("filtered out", t.filtered);
  if (t.gone) row("gone", t.gone, "closed or exited meanwhile");
  row(
    "failed",
    t.failed,
    Object.entries(t.errors)
      .map(([k, n]) => `${k} (${n})`)
      .join(", "),
  );
  const denied = t.unreadable.length;
  if (denied)
    out.write(
      `  ${paint(out, "red", `${plural(denied, "process", "processes")} could not be read`)}: run as root, or give tcpka CAP_SYS_PTRACE\n`,
    );
  if (!o.disable && t.deadPeerAfter !== null) {
    const before = t.deadPeerBefore === null ? "" : ` (before: ${formatSeconds(t.deadPeerBefore)})`;
    const verbPhrase = o.dryRun ? "would be" : "are now";
    out.write(`dead peers ${verbPhrase} noticed after at most ${formatSeconds(t.deadPeerAfter)}${before}\n`);
  }
}
