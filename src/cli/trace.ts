/**
 * `tcpka trace [--json] [-o FILE] [settings] -- CMD ARGS…`: run CMD with the shim watching and report, socket
 * by socket, whether the program turned keepalive on itself and with what values — what people otherwise read
 * out of `strace -f -e trace=network`. With settings, tcpka also applies them (as `tcpka run` would) and
 * reports what it changed.
 */
import { checkTraceable, resolveCommand, traceProgram } from "../enforce/preload/index.js";
import { TcpkaError } from "../errors.js";
import { EVENT_KEY, type OptionValues, type TracedSocket, type TraceResult } from "../inspect/events.js";
import { errnoName } from "../kernel/errno.js";
import { OPTION_ORDER, SOCKOPTS } from "../kernel/sockopts.js";
import { describeSettings, formatSeconds } from "../settings.js";
import { bool, commandLine, type Options, RULE_LINES, SETTINGS_HELP, SETTINGS_OPTIONS, str } from "../ui/args.js";
import { passThrough, runChild } from "../ui/child.js";
import { hostPort, Out, paint, plural, printable, reportError } from "../ui/format.js";
import { reportSink } from "../ui/report-file.js";

export const TRACE_HELP = `Usage: tcpka trace [--json] [-o FILE] [settings] [--] CMD [ARGS…]

Run CMD (and its children) and report every TCP socket it made: process, addresses, what the program set
itself (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT), what the socket really has,
and a verdict in plain words. CMD's own output is untouched; the report goes to stderr (like strace) or FILE.
The exit code of CMD passes through.

Options:
      --json        the report as JSON
  -o, --output FILE write the report to FILE, checked before CMD runs; a file is replaced atomically, and a
                    symlink is followed only in a directory that no other user can write
      --apply       also turn keepalive on (as tcpka run does) and report what tcpka changed; the settings
                    flags below imply it

${SETTINGS_HELP.replace("Settings (defaults", "Settings, with --apply (defaults")}

Which connections tcpka changes with --apply (each socket's "matched" in --json says whether it was one):
${RULE_LINES.only}
${RULE_LINES.except}

The events travel through a file that only your user can open, in a new directory under /run/tcpka (root)
or $XDG_RUNTIME_DIR/tcpka, removed when trace ends. A process of CMD that switches to another user (setuid)
cannot write to it any more: the report says so, and what that process did afterwards is missing.

Examples:
  tcpka trace -- curl -s http://127.0.0.1:8080/
  tcpka trace --json -o report.json -- python3 client.py
  tcpka trace --idle 30s -- psql -h 127.0.0.1 -c 'select 1'
`;

const OPTIONS: Options = {
  ...SETTINGS_OPTIONS,
  json: { type: "boolean" },
  output: { type: "string", short: "o" },
  apply: { type: "boolean" },
  only: { type: "string", multiple: true },
  except: { type: "string", multiple: true },
};

export async function runTrace(argv: readonly string[], out: Out): Promise<number> {
  const line = commandLine("trace", argv, OPTIONS);
  const v = line.values;
  if (bool(v, "help")) {
    out.write(TRACE_HELP);
    return 0;
  }
  const file = resolveCommand(line.argv0);
  checkTraceable(file);
  const apply =
    bool(v, "apply") || ["idle", "interval", "count", "user-timeout", "force"].some((k) => v[k] !== undefined);

  // Everything that can fail fails before CMD runs: the program's reach first (above), then the report's file,
  // then the event channel and the library (traceProgram).
  const output = str(v, "output");
  const sink = output === undefined ? undefined : reportSink(output);
  const shim = {
    mode: apply ? (bool(v, "force") ? "force" : "strengthen") : "observe",
    settings: apply ? line.settings : {},
    only: line.only,
    except: line.except,
  } as const;
  const { result, ran: child } = await traceProgram(file, shim, (env) => {
    out.end();
    return runChild(file, line.argv0, line.args, env);
  }).catch((e: unknown) => {
    sink?.abort();
    throw e;
  });

  const command = [line.argv0, ...line.args];
  const report = new Out(sink ? -1 : 2);
  const text = bool(v, "json")
    ? `${JSON.stringify(traceJson(result, command), null, 2)}\n`
    : traceText(result, command, apply, report);
  if (sink) {
    try {
      sink.commit(text);
    } catch (e) {
      // CMD has run: its report is not lost, and its exit code stays.
      const message = e instanceof TcpkaError ? e.message : String(e);
      reportError(new TcpkaError("system", message, { hint: "the report follows here, on stderr" }));
      report.end();
      const err = new Out(2);
      err.write(text);
      err.end();
    }
  } else {
    report.write(text);
    report.end();
  }
  // Last: when the program died of a signal, this raises it on tcpka too.
  return passThrough(child);
}

function optionsText(o: OptionValues): string {
  const parts = OPTION_ORDER.filter((k) => o[EVENT_KEY[k]] !== undefined).map(
    (k) => `${SOCKOPTS[k][2]}=${o[EVENT_KEY[k]]}`,
  );
  return parts.length ? parts.join(" ") : "nothing";
}

function verdict(s: TracedSocket, out: Out): string {
  const e = s.effective;
  if (!e) return "unknown: the socket could not be read back";
  if (s.kind === "listen") {
    return e.keepalive
      ? `accepted connections inherit keepalive on (${describeSettings(e)})`
      : `accepted connections inherit keepalive ${paint(out, "red", "OFF")}`;
  }
  if (!e.keepalive) {
    return `keepalive ${paint(out, "red", "OFF")}: a vanished peer is never noticed; idle connections die behind stateful firewalls and NAT`;
  }
  const how = e.userTimeout
    ? `user timeout ${e.userTimeout}ms with probes every ${e.interval}s after ${e.idle}s`
    : describeSettings(e);
  return `keepalive on: a dead peer is noticed after ${formatSeconds(s.deadPeerAfter ?? 0)} (${how})`;
}

function shellQuote(words: readonly string[]): string {
  return words.map((w) => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, "'\\''")}'`)).join(" ");
}

function traceText(r: TraceResult, command: readonly string[], applied: boolean, out: Out): string {
  let t = "";
  // Every string from the events is the traced programs' (a process names itself): escaped for the terminal.
  for (const s of r.sockets) {
    const head = `${printable(s.comm)}[${s.pid}] fd ${s.fd}  `;
    const local = printable(hostPort(s.local, s.localPort));
    const peer = printable(hostPort(s.peer, s.peerPort));
    if (s.kind === "listen") t += `${head}listening on ${local}\n`;
    else if (s.kind === "accept") t += `${head}${local} <- ${peer} (accepted)\n`;
    else t += `${head}${local} -> ${peer}\n`;
    if (s.errno !== undefined) {
      t += `  ${s.kind} failed: ${errnoName(s.errno)}\n`;
      continue;
    }
    t += `  program set  ${optionsText(s.program)}\n`;
    if (applied) t += `  tcpka set    ${s.matched ? optionsText(s.tcpka) : "nothing (filtered out)"}\n`;
    t += `  verdict      ${verdict(s, out)}\n`;
    if (s.effective && !s.effective.keepalive && s.kind !== "accept") {
      t += `  fix          tcpka run --idle 60s -- ${shellQuote(command)}\n`;
    }
  }
  const used = r.sockets.filter((s) => s.errno === undefined && s.kind !== "listen");
  const on = used.filter((s) => s.effective?.keepalive).length;
  if (r.processes.length === 0) {
    t += "no process ran with the tcpka library: the program may clear LD_PRELOAD, or exited before it loaded\n";
  } else {
    const owners = new Set(used.map((s) => s.pid)).size;
    t += `${plural(used.length, "TCP connection")} from ${plural(owners, "process", "processes")}: ${on} with keepalive, ${used.length - on} without`;
    t += ` (${plural(r.processes.length, "process", "processes")} ran with the tcpka library)\n`;
  }
  for (const e of r.errors) t += `error: ${printable(e)}\n`;
  for (const u of r.userSwitches) {
    t += `warning: ${printable(u.comm)}[${u.pid}] switched to uid ${u.uid}, which cannot open the event file (only uid ${process.geteuid?.() ?? 0} can): what it and its children did afterwards is missing\n`;
  }
  if (r.lost)
    t += `warning: ${plural(r.lost, "event")} lost (the event file could not be written): this report may be incomplete\n`;
  if (r.foreign)
    t += `warning: ${plural(r.foreign, "line")} in the event file did not come from the traced processes and ${r.foreign === 1 ? "was" : "were"} ignored\n`;
  return t;
}

function traceJson(r: TraceResult, command: readonly string[]): Record<string, unknown> {
  return {
    command,
    processes: r.processes,
    sockets: r.sockets.map((s) => ({
      pid: s.pid,
      comm: s.comm,
      fd: s.fd,
      kind: s.kind,
      local_address: s.local,
      local_port: s.localPort,
      peer_address: s.peer,
      peer_port: s.peerPort,
      ...(s.errno !== undefined ? { error: errnoName(s.errno) } : {}),
      matched: s.matched,
      program: s.program,
      tcpka: s.tcpka,
      keepalive: s.effective ? s.effective.keepalive : null,
      idle_s: s.effective?.idle ?? null,
      interval_s: s.effective?.interval ?? null,
      count: s.effective?.count ?? null,
      user_timeout_ms: s.effective?.userTimeout ?? null,
      dead_peer_after_s: s.deadPeerAfter,
    })),
    user_switches: r.userSwitches,
    events_lost: r.lost,
    foreign_lines: r.foreign,
    errors: r.errors,
  };
}
