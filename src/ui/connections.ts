/**
 * What more than one command writes about inspected connections: a connection's JSON text (tcpka ls --json, and
 * the bench that times it), and the line on how to get exact answers (tcpka ls, tcpka).
 */
import { geteuid } from "node:process";
import type { Connection, Inspection } from "../inspect/connections.js";
import { type Out, paint, plural } from "./format.js";

/**
 * The JSON form of a connection: stable snake_case names, units in the names. Built as text: at 100,000
 * sockets this is several times faster than objects through JSON.stringify, and makes far less garbage.
 * Every value is a number, boolean, null or a string that needs no escaping, except the process name.
 */
export function connectionJsonText(c: Connection): string {
  const s = c.socket;
  const e = c.settings;
  const probe = s.timer === "keepalive" && c.keepalive !== null;
  const procs = c.owners.map((o) => `{"pid":${o.pid},"comm":${JSON.stringify(o.comm)},"fd":${o.fd}}`).join(",");
  return (
    `{"state":"${s.state}","family":${s.family},` +
    `"local_address":"${s.localAddress}","local_port":${s.localPort},` +
    `"peer_address":"${s.peerAddress}","peer_port":${s.peerPort},"inode":${s.inode},"uid":${s.uid},` +
    `"keepalive":${c.keepalive},"source":"${c.source}",` +
    `"timer":"${s.timer}","timer_ms":${s.timerMs},"timer_count":${s.timerCount},` +
    `"next_probe_ms":${probe ? s.timerMs : null},"probes":${probe ? s.timerCount : null},` +
    `"idle_s":${e ? e.idle : null},"interval_s":${e ? e.interval : null},"count":${e ? e.count : null},` +
    `"user_timeout_ms":${e ? e.userTimeout : null},"dead_peer_after_s":${c.deadPeerAfter},` +
    `"send_queue":${s.sendQueue},"recv_queue":${s.recvQueue},"netns":${c.netns ?? null},"processes":[${procs}]` +
    `${c.exactError ? `,"exact_error":"${c.exactError}"` : ""}}`
  );
}

/** One line on how to get exact answers, when some came from the timer only. */
export function writeExactHint(r: Inspection, inexact: number, out: Out): void {
  if (inexact === 0 || !r.processes) return;
  if (geteuid?.() !== 0 && (r.unreadablePids.length > 0 || r.exactDenied > 0)) {
    out.write(
      paint(
        out,
        "dim",
        `${plural(inexact, "socket")} marked '?': only the kernel's timer was visible; run as root (or give tcpka CAP_SYS_PTRACE) for exact settings\n`,
      ),
    );
  } else if (r.exactDenied > 0) {
    out.write(
      paint(
        out,
        "dim",
        `${plural(r.exactDenied, "socket")} could not be read (EPERM); their keepalive is a timer hint\n`,
      ),
    );
  }
}
