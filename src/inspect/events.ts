/**
 * The events that the preload shim appends to its event file (one JSON line each, written by native/events.c),
 * folded into one record per socket: what the program set, what tcpka set, what the socket really has, and
 * how many events were lost on the way. Only lines that start with the run's key count: the key is in the
 * traced processes' environment and nowhere else, so a line without it did not come from them.
 */
import { readFileSync } from "node:fs";
import type { OptionName } from "../kernel/sockopts.js";
import { deadPeerAfter, type EffectiveKeepAlive } from "../settings.js";

/** Options as the shim names them in events. */
export interface OptionValues {
  keepalive?: number;
  idle?: number;
  interval?: number;
  count?: number;
  user_timeout_ms?: number;
}

/** The field of OptionValues that holds each option (the shim names the user timeout in milliseconds). */
export const EVENT_KEY: Readonly<Record<OptionName, keyof OptionValues>> = {
  keepalive: "keepalive",
  idle: "idle",
  interval: "interval",
  count: "count",
  userTimeout: "user_timeout_ms",
};

export interface ShimEvent {
  key: string;
  /**
   * "connected": how a connect that returned EINPROGRESS ended, seen when the program read SO_ERROR or called
   * connect() again; "setuid": the process switched its effective uid (to `uid`), and cannot reach the file now
   */
  ev: "start" | "exit" | "connect" | "connected" | "listen" | "accept" | "setsockopt" | "error" | "setuid";
  pid: number;
  /** Absent in a process that shares its parent's memory (a vfork child): it numbers nothing. */
  seq?: number;
  lost?: number;
  comm: string;
  fd?: number;
  cookie?: number;
  local?: string;
  local_port?: number;
  peer?: string;
  peer_port?: number;
  matched?: boolean;
  ret?: number;
  errno?: number;
  program?: OptionValues;
  tcpka?: OptionValues;
  effective?: OptionValues;
  message?: string;
  value?: string;
  uid?: number;
}

export interface TracedSocket {
  pid: number;
  comm: string;
  fd: number;
  kind: "connect" | "listen" | "accept";
  local: string;
  localPort: number;
  peer: string;
  peerPort: number;
  /**
   * errno of a failed connect or listen. A non-blocking connect (EINPROGRESS) fails later, when the program
   * reads SO_ERROR; one the program never checks stays reported as a connection.
   */
  errno?: number;
  matched: boolean;
  program: OptionValues;
  tcpka: OptionValues;
  effective: EffectiveKeepAlive | null;
  deadPeerAfter: number | null;
}

export interface TraceResult {
  sockets: TracedSocket[];
  /** Processes that ran with the shim loaded. */
  processes: { pid: number; comm: string }[];
  /** Processes that switched to another effective uid: their later events could not reach the file. */
  userSwitches: { pid: number; comm: string; uid: number }[];
  lost: number;
  /** Lines without the run's key: not from the traced processes, ignored. */
  foreign: number;
  errors: string[];
}

const EINPROGRESS = 115;
/** What a connect() on a connection already under way (EALREADY) or made (EISCONN) says: not a failure. */
const NOT_FAILED = new Set([EINPROGRESS, 114 /* EALREADY */, 106 /* EISCONN */]);

/** The events of a run whose key is `key`, and how many lines were not its own. */
export function parseEvents(text: string, key: string): { events: ShimEvent[]; foreign: number } {
  const events: ShimEvent[] = [];
  // The shim writes the key first, so a line that merely contains it elsewhere (in a string) is not taken.
  const head = `{"key":${JSON.stringify(key)},`;
  let foreign = 0;
  for (const line of text.split("\n")) {
    if (!line) continue;
    if (!line.startsWith(head)) {
      foreign++;
      continue;
    }
    try {
      events.push(JSON.parse(line) as ShimEvent);
    } catch {
      // A line cut short (a write that failed half way) is counted as lost by the sequence numbers.
    }
  }
  return { events, foreign };
}

function effectiveOf(v: OptionValues | undefined): EffectiveKeepAlive | null {
  if (!v || v.keepalive === undefined) return null;
  return {
    keepalive: v.keepalive !== 0,
    idle: v.idle ?? 0,
    interval: v.interval ?? 0,
    count: v.count ?? 0,
    userTimeout: v.user_timeout_ms ?? 0,
  };
}

export function foldEvents(events: readonly ShimEvent[], foreign = 0): TraceResult {
  const sockets = new Map<string, TracedSocket>();
  const processes = new Map<number, string>();
  const userSwitches: TraceResult["userSwitches"] = [];
  const seqs = new Map<number, { seen: number; max: number; lost: number }>();
  const errors: string[] = [];
  for (const e of events) {
    if (e.seq !== undefined) {
      const s = seqs.get(e.pid) ?? { seen: 0, max: -1, lost: 0 };
      s.seen++;
      s.max = Math.max(s.max, e.seq);
      s.lost = Math.max(s.lost, e.lost ?? 0);
      seqs.set(e.pid, s);
    }
    if (e.ev === "start" || !processes.has(e.pid)) processes.set(e.pid, e.comm);
    if (e.ev === "error") {
      errors.push(`${e.comm}[${e.pid}]: ${e.message}${e.value ? ` (${e.value})` : ""}`);
      continue;
    }
    if (e.ev === "setuid") {
      if (e.uid !== undefined) userSwitches.push({ pid: e.pid, comm: e.comm, uid: e.uid });
      continue;
    }
    if (e.ev === "start" || e.ev === "exit" || e.fd === undefined) continue;
    // A socket is its cookie within a process; fds are reused.
    const key = `${e.pid}/${e.cookie ?? `fd${e.fd}`}`;
    const prev = sockets.get(key);
    const effective = effectiveOf(e.effective);
    const failed =
      e.ev !== "accept" && e.ev !== "setsockopt" && (e.ret ?? 0) < 0 && !NOT_FAILED.has(e.errno ?? EINPROGRESS);
    const rec: TracedSocket = {
      pid: e.pid,
      comm: e.comm,
      fd: e.fd,
      kind: prev?.kind ?? (e.ev === "setsockopt" || e.ev === "connected" ? "connect" : e.ev),
      local: e.local ?? prev?.local ?? "",
      localPort: e.local_port ?? prev?.localPort ?? 0,
      peer: e.peer || prev?.peer || "",
      peerPort: e.peer_port || prev?.peerPort || 0,
      matched: e.matched ?? prev?.matched ?? false,
      program: e.program ?? {},
      tcpka: { ...prev?.tcpka, ...e.tcpka },
      effective,
      deadPeerAfter: effective ? deadPeerAfter(effective) : null,
    };
    const errno = failed ? e.errno : prev?.errno;
    if (errno !== undefined) rec.errno = errno;
    sockets.set(key, rec);
  }
  let lost = 0;
  for (const s of seqs.values()) lost += Math.max(s.lost, s.max + 1 - s.seen);
  return {
    sockets: [...sockets.values()],
    processes: [...processes].map(([pid, comm]) => ({ pid, comm })),
    userSwitches,
    lost,
    foreign,
    errors,
  };
}

/** The run's events from its event file (see parseEvents for `key`). */
export function readEvents(file: string, key: string): TraceResult {
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    // No file: nothing was reported.
  }
  const { events, foreign } = parseEvents(text, key);
  return foldEvents(events, foreign);
}
