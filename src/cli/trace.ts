/**
 * `tcpka trace [--json] [-o FILE] [settings] -- CMD ARGS…`: run CMD with the shim watching and report, socket
 * by socket, whether the program turned keepalive on itself and with what values — what people otherwise read
 * out of `strace -f -e trace=network`. With settings, tcpka also applies them (as `tcpka run` would) and
 * reports what it changed.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  type BigIntStats,
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  type Stats,
  statSync,
  writeSync,
} from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { preloadBlocker, shimEnvironment } from "../enforce/preload.js";
import { TcpkaError } from "../errors.js";
import { EVENT_KEY, type OptionValues, readEvents, type TracedSocket, type TraceResult } from "../inspect/events.js";
import { LOCK_EX } from "../kernel/constants.js";
import { errnoName } from "../kernel/errno.js";
import { OPTION_ORDER, SOCKOPTS } from "../kernel/sockopts.js";
import { describeSettings, formatSeconds } from "../settings.js";
import { AtomicFile, fileError, Lock, privateRunDir, removeRunDir, runtimeBase } from "../sys/files.js";
import { flockNow } from "../sys/libc.js";
import { bool, type Options, RULE_LINES, SETTINGS_HELP, SETTINGS_OPTIONS, str } from "../ui/args.js";
import { type ChildResult, passThrough, runChild } from "../ui/child.js";
import { hostPort, Out, paint, plural, printable, reportError } from "../ui/format.js";
import { blockedError, planPreload } from "./run.js";

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
  const plan = planPreload("trace", argv, OPTIONS);
  const v = plan.values;
  if (bool(v, "help")) {
    out.write(TRACE_HELP);
    return 0;
  }
  const why = preloadBlocker(plan.file);
  if (why) throw blockedError(why);
  const apply =
    bool(v, "apply") || ["idle", "interval", "count", "user-timeout", "force"].some((k) => v[k] !== undefined);

  // Everything that can fail fails before CMD runs: the report's file first, then the event channel.
  const file = str(v, "output");
  const sink = file === undefined ? undefined : reportSink(file);
  let result: TraceResult;
  let child: ChildResult;
  try {
    const channel = EventChannel.open();
    try {
      const env = shimEnvironment({
        mode: apply ? (bool(v, "force") ? "force" : "strengthen") : "observe",
        settings: apply ? plan.settings : {},
        only: plan.only,
        except: plan.except,
        events: { path: channel.file, id: channel.id, key: channel.key },
      });
      out.end();
      child = await runChild(plan.file, plan.argv0, plan.args, env);
      result = channel.read();
    } finally {
      channel.close();
    }
  } catch (e) {
    sink?.abort();
    throw e;
  }

  const command = [plan.argv0, ...plan.args];
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

const { O_WRONLY, O_RDONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NOCTTY } = constants;
const O_CLOEXEC = 0o2000000; // include/uapi/asm-generic/fcntl.h

function euid(): number {
  return process.geteuid?.() ?? 0;
}

const CHANNEL_PREFIX = "trace-";

/**
 * trace's event channel. A new directory that only this user can enter (privateRunDir: under /run/tcpka for
 * root, $XDG_RUNTIME_DIR/tcpka for others; never a name that another user could predict and make first) holds
 * the event file, 0600. The shim writes to that very file only (its device and inode are in TCPKA_EVENTS_ID;
 * a symlink or another file at the path is left alone) and starts every line with the run's random key
 * (TCPKA_EVENTS_KEY, which only the traced processes have, in their environment): a line without it is not
 * theirs and is not read. The directory goes when trace ends. If tcpka is killed outright, a watchdog removes
 * it at once; a channel left by a run that died anyway (its lock is free) is removed by the next trace.
 */
class EventChannel {
  private constructor(
    readonly dir: string,
    readonly file: string,
    readonly id: string,
    readonly key: string,
    private readonly lock: Lock,
    private readonly watchdog: ChildProcess,
  ) {}

  static open(): EventChannel {
    const base = runtimeBase();
    if (base) removeDeadChannels(base);
    const dir = privateRunDir(CHANNEL_PREFIX);
    try {
      const lock = Lock.take(join(dir, "lock"), "tcpka trace");
      const file = join(dir, "events.jsonl");
      const fd = openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600);
      let st: BigIntStats;
      try {
        st = fstatSync(fd, { bigint: true });
      } finally {
        closeSync(fd);
      }
      const key = randomBytes(16).toString("hex");
      return new EventChannel(dir, file, `${st.dev}:${st.ino}`, key, lock, watchdog(dir));
    } catch (e) {
      removeRunDir(dir);
      throw e;
    }
  }

  read(): TraceResult {
    return readEvents(this.file, this.key);
  }

  close(): void {
    removeRunDir(this.dir);
    this.lock.release();
    this.watchdog.stdin?.end("done\n");
  }
}

/**
 * A process that removes `dir` if tcpka dies without removing it (SIGKILL): /bin/sh reading a pipe from tcpka,
 * in a session of its own so that a terminal's ^C or hang-up does not reach it. tcpka writes a line once it has
 * removed the directory itself; end of file without one means that tcpka is gone. (CMD does not inherit the
 * pipe: see inheritedFds in child.ts.)
 */
function watchdog(dir: string): ChildProcess {
  const w = spawn("/bin/sh", ["-c", 'read -r _ || rm -rf -- "$0"', dir], {
    detached: true,
    cwd: "/",
    stdio: ["pipe", "ignore", "ignore"],
  });
  // A watchdog that could not start (no /bin/sh) or was killed: writing "done" to it must not fail trace, and
  // the next trace removes what a killed one leaves.
  w.on("error", () => {});
  w.stdin?.on("error", () => {});
  w.unref();
  return w;
}

/** Remove the channels of trace runs that died without removing theirs: nobody holds their lock any more. */
function removeDeadChannels(base: string): void {
  for (const name of readdirSync(base)) {
    if (!name.startsWith(CHANNEL_PREFIX)) continue;
    const dir = join(base, name);
    let fd: number;
    try {
      fd = openSync(join(dir, "lock"), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    } catch {
      continue; // being made this moment, or removed already
    }
    try {
      if (flockNow(fd, LOCK_EX)) removeRunDir(dir); // flock(2) locks go with the process that held them
    } finally {
      closeSync(fd);
    }
  }
}

/** Where -o puts the report: made ready before CMD runs, written (or dropped) once the report is known. */
interface ReportSink {
  commit(text: string): void;
  abort(): void;
}

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

/** Why users other than this one (and root) may create or replace names in `dir`, or undefined. */
function othersControl(dir: string): string | undefined {
  let st: Stats;
  try {
    st = statSync(dir);
  } catch {
    return undefined; // AtomicFile says what is wrong with it
  }
  if (st.mode & 0o002) return "every user can write";
  if (st.mode & 0o020) return `group ${st.gid} can write`;
  if (st.uid !== euid() && st.uid !== 0) return `uid ${st.uid} owns`;
  return undefined;
}

/**
 * The sink for -o PATH. A regular file (or none yet) is replaced atomically (AtomicFile: a temporary file next
 * to it, renamed over it at the end): a reader never sees half a report, and a hard link is not written
 * through. One of tcpka's own fds (/dev/stdout, /dev/fd/N, a process substitution) is written as it is, as a
 * shell's >&N would; a FIFO or terminal is opened now and written at the end. A symlink is followed only in a
 * directory that no other user can write: in /tmp or someone's home directory another user can point it at any
 * file, which root would then overwrite; there it is refused.
 */
function reportSink(path: string): ReportSink {
  for (let hops = 0; ; hops++) {
    const own = ownFd(path);
    if (own !== undefined) return fdSink(path, own, false);
    const st = lstatOrUndefined(path);
    const others = othersControl(dirname(path));
    if (st?.isSymbolicLink()) {
      if (others || hops >= 8) {
        throw new TcpkaError(
          "permission",
          `refusing to follow the symlink ${path}: ${others ? `${others} ${dirname(path)}` : "too many levels"}`,
          { hint: "give -o a path in a directory that only you control" },
        );
      }
      path = resolve(dirname(path), readlinkSync(path));
    } else if (st?.isFIFO() || st?.isCharacterDevice()) {
      if (others && st.uid !== euid()) {
        throw new TcpkaError(
          "permission",
          `refusing to write to ${path}: uid ${st.uid} made it, and ${others} ${dirname(path)}`,
          { hint: "give -o a path in a directory that only you control" },
        );
      }
      let fd: number;
      try {
        fd = openSync(path, O_WRONLY | O_NOCTTY | O_CLOEXEC); // a FIFO waits for its reader, as a shell's > does
      } catch (e) {
        throw fileError(path, e, "write");
      }
      return fdSink(path, fd, true);
    } else {
      return AtomicFile.create(path);
    }
  }
}

/** N when `path` names this process's own fd N (/proc/self/fd/N, which /dev/stdout and /dev/fd/N lead to). */
function ownFd(path: string): number | undefined {
  const n = basename(path);
  if (!/^\d+$/.test(n)) return undefined;
  try {
    return realpathSync(dirname(path)) === `/proc/${process.pid}/fd` ? Number(n) : undefined;
  } catch {
    return undefined;
  }
}

/** The report written to an fd at the end (closed after when `close`); the fd is checked now. */
function fdSink(path: string, fd: number, close: boolean): ReportSink {
  try {
    fstatSync(fd);
  } catch (e) {
    throw fileError(path, e, "write");
  }
  const done = () => {
    if (close) closeSync(fd);
  };
  return {
    commit(text: string) {
      try {
        const bytes = Buffer.from(text);
        for (let off = 0; off < bytes.length; ) {
          try {
            off += writeSync(fd, bytes, off);
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e; // an fd shared non-blocking
          }
        }
      } catch (e) {
        throw fileError(path, e, "write");
      } finally {
        done();
      }
    },
    abort: done,
  };
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

export function traceText(r: TraceResult, command: readonly string[], applied: boolean, out: Out): string {
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
    t += `warning: ${printable(u.comm)}[${u.pid}] switched to uid ${u.uid}, which cannot open the event file (only uid ${euid()} can): what it and its children did afterwards is missing\n`;
  }
  if (r.lost)
    t += `warning: ${plural(r.lost, "event")} lost (the event file could not be written): this report may be incomplete\n`;
  if (r.foreign)
    t += `warning: ${plural(r.foreign, "line")} in the event file did not come from the traced processes and ${r.foreign === 1 ? "was" : "were"} ignored\n`;
  return t;
}

export function traceJson(r: TraceResult, command: readonly string[]): Record<string, unknown> {
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
