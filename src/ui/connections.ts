/**
 * What more than one command writes about inspected connections: a connection's JSON (tcpka ls --json, and the
 * bench that times it), and the line on how to get exact answers (tcpka ls, tcpka).
 */
import type { Connection, InspectionInfo } from "../inspect/connections.js";
import type { NetNamespace } from "../inspect/namespaces.js";
import type { Workload } from "../inspect/workloads.js";
import { asciiBytes, type Out, paint, plural, printable } from "./format.js";

/**
 * Write the JSON form of a connection: stable snake_case names, units in the names. Written piece by piece
 * into the output buffer (Out.ascii, Out.number): at 100,000 sockets a text per row, or objects through
 * JSON.stringify, cost several times more, most of it in garbage. The output is ASCII: every value is a
 * number, boolean, null or a string that needs no escaping, except the process name, which jsonAscii()
 * escapes (and which is made once per process).
 */
export function writeConnectionJson(out: Out, c: Connection): void {
  const s = c.socket;
  out.bytes(head(s.state, s.family, s.localAddress));
  out.number(s.localPort);
  out.bytes(peerPiece(s.peerAddress));
  out.number(s.peerPort);
  out.bytes(P.inode);
  out.number(s.inode);
  out.bytes(P.uid);
  out.number(s.uid);
  out.bytes(settingsJson(c));
  if (s.timer === "off") out.bytes(P.timerOff);
  else {
    const probe = s.timer === "keepalive" && c.keepalive !== null;
    out.bytes(P.timer);
    out.bytes(asciiBytes(s.timer));
    out.bytes(P.timerMs);
    out.number(s.timerMs);
    out.bytes(P.timerCount);
    out.number(s.timerCount);
    out.bytes(P.nextProbe);
    if (probe) out.number(s.timerMs);
    else out.bytes(P.null);
    out.bytes(P.probes);
    if (probe) out.number(s.timerCount);
    else out.bytes(P.null);
  }
  if (s.sendQueue === 0 && s.recvQueue === 0 && c.netns !== undefined) out.bytes(idleTail(c.netns, c.workload ?? null));
  else {
    out.bytes(P.sendQueue);
    out.number(s.sendQueue);
    out.bytes(P.recvQueue);
    out.number(s.recvQueue);
    out.bytes(P.netns);
    if (c.netns === undefined) out.bytes(P.null);
    else out.number(c.netns);
    out.bytes(workloadJson(c.workload ?? null));
    out.bytes(P.processes);
  }
  let first = true;
  for (const o of c.owners) {
    if (!first) out.bytes(P.comma);
    first = false;
    out.bytes(ownerJsonStart(o.pid, o.comm));
    out.number(o.fd);
    out.bytes(P.close);
  }
  if (c.exactError) {
    out.bytes(P.exactError);
    out.bytes(asciiBytes(c.exactError));
    out.bytes(P.quoteClose);
  } else out.bytes(P.end);
}

/**
 * The pieces that repeat from row to row, made once: a host has few states and local addresses, few peers, and
 * its idle connections (empty queues) share their namespace's and workload's tail. Bounded like asciiBytes.
 */
const heads = new Map<string, Map<string, Uint8Array>>();
const peers = new Map<string, Uint8Array>();
const tails = new Map<number, Map<Workload | null, Uint8Array>>();

function bounded<K, V>(m: Map<K, V>, key: K, make: () => V): V {
  let v = m.get(key);
  if (v === undefined) {
    if (m.size >= 1 << 16) m.clear();
    v = make();
    m.set(key, v);
  }
  return v;
}

/** '{"state":"S","family":F,"local_address":"A","local_port":' */
function head(state: string, family: number, local: string): Uint8Array {
  const byLocal = bounded(heads, state, () => new Map<string, Uint8Array>());
  return bounded(byLocal, local, () =>
    Buffer.from(`{"state":"${state}","family":${family},"local_address":"${local}","local_port":`, "latin1"),
  );
}

/** ',"peer_address":"P","peer_port":' */
function peerPiece(peer: string): Uint8Array {
  return bounded(peers, peer, () => Buffer.from(`,"peer_address":"${peer}","peer_port":`, "latin1"));
}

/** ',"send_queue":0,"recv_queue":0,"netns":N,"container":…,"pod":…,"unit":…,"processes":[' */
function idleTail(netns: number, w: Workload | null): Uint8Array {
  const byWorkload = bounded(tails, netns, () => new Map<Workload | null, Uint8Array>());
  return bounded(byWorkload, w, () => {
    const text = `,"send_queue":0,"recv_queue":0,"netns":${netns}${Buffer.from(workloadJson(w)).toString("latin1")},"processes":[`;
    return Buffer.from(text, "latin1");
  });
}

/** The constant pieces of a row, encoded once. */
const P = {
  inode: asciiBytes(',"inode":'),
  uid: asciiBytes(',"uid":'),
  timerOff: asciiBytes(',"timer":"off","timer_ms":0,"timer_count":0,"next_probe_ms":null,"probes":null'),
  timer: asciiBytes(',"timer":"'),
  timerMs: asciiBytes('","timer_ms":'),
  timerCount: asciiBytes(',"timer_count":'),
  nextProbe: asciiBytes(',"next_probe_ms":'),
  probes: asciiBytes(',"probes":'),
  null: asciiBytes("null"),
  sendQueue: asciiBytes(',"send_queue":'),
  recvQueue: asciiBytes(',"recv_queue":'),
  netns: asciiBytes(',"netns":'),
  processes: asciiBytes(',"processes":['),
  comma: asciiBytes(","),
  close: asciiBytes("}"),
  exactError: asciiBytes('],"exact_error":"'),
  quoteClose: asciiBytes('"}'),
  end: asciiBytes("]}"),
};

/**
 * The keepalive fields: "keepalive", "source", the settings and the dead-peer time. Sockets share settings
 * objects (the kernel pass makes one per combination), so the text is made once per object; keepalive, source
 * and the dead-peer time follow from the settings wherever they are known.
 */
const settingsTexts = new WeakMap<object, Uint8Array>();

function settingsJson(c: Connection): Uint8Array {
  const e = c.settings;
  if (!e) return asciiBytes(`,"keepalive":${c.keepalive},"source":"${c.source}"${NO_SETTINGS}`);
  let text = settingsTexts.get(e);
  if (text === undefined) {
    text = Buffer.from(
      `,"keepalive":${c.keepalive},"source":"${c.source}","idle_s":${e.idle},"interval_s":${e.interval},` +
        `"count":${e.count},"user_timeout_ms":${e.userTimeout},"dead_peer_after_s":${c.deadPeerAfter}`,
      "latin1",
    );
    settingsTexts.set(e, text);
  }
  return text;
}

const NO_SETTINGS = ',"idle_s":null,"interval_s":null,"count":null,"user_timeout_ms":null,"dead_peer_after_s":null';

/**
 * ',"container":…,"pod":…,"unit":…' of a workload, made once per workload object (Workloads shares them). Every
 * name in it was chosen by whoever started the container: jsonAscii() escapes it.
 */
const workloadTexts = new WeakMap<Workload, Uint8Array>();
const NO_WORKLOAD = asciiBytes(',"container":null,"pod":null,"unit":null');

function workloadJson(w: Workload | null): Uint8Array {
  if (!w) return NO_WORKLOAD;
  let text = workloadTexts.get(w);
  if (text === undefined) {
    const str = (v: string | null) => (v === null ? "null" : jsonAscii(v));
    const k = w.container;
    const container = k
      ? `{"runtime":${str(k.runtime)},"engine":${str(k.engine)},"id":${str(k.id)},"short_id":${str(k.shortId)},"name":${str(k.name)}}`
      : "null";
    const pod = k?.pod
      ? `{"namespace":${str(k.pod.namespace)},"name":${str(k.pod.name)},"container":${str(k.pod.container)}}`
      : "null";
    text = Buffer.from(`,"container":${container},"pod":${pod},"unit":${str(w.unit)}`, "latin1");
    workloadTexts.set(w, text);
  }
  return text;
}

/**
 * The WHERE column of `ls --all-netns`: the pod, the container, the unit, or the namespace when none ("-" for
 * tcpka's own; `namespaces` names the others, by their `ip netns` name where they have one).
 */
export function whereText(c: Connection, namespaces: ReadonlyMap<number, NetNamespace>): string {
  const known = workloadText(c.workload ?? null);
  if (known !== null) return known;
  const ns = c.netns === undefined ? undefined : namespaces.get(c.netns);
  if (!ns || ns.own) return "-";
  return ns.name ? `netns ${printable(ns.name)}` : `netns ${ns.inum}`;
}

/** A pod (and its container), a container (runtime, short id, name) or a systemd unit, escaped; null for none. */
export function workloadText(w: Workload | null): string | null {
  const k = w?.container;
  if (k?.pod)
    return `pod ${printable(`${k.pod.namespace}/${k.pod.name}`)}${k.pod.container ? ` (${printable(k.pod.container)})` : ""}`;
  if (k) return `${printable(k.runtime)} ${printable(k.shortId)}${k.name ? ` ${printable(k.name)}` : ""}`;
  if (w?.unit) return printable(w.unit) + (w.unitUid === null ? "" : ` (uid ${w.unitUid})`);
  return null;
}

// '{"pid":P,"comm":"NAME","fd":' of each process: one piece per process, not one per socket it holds
const ownerStarts = new Map<number, { comm: string; bytes: Uint8Array }>();

function ownerJsonStart(pid: number, comm: string): Uint8Array {
  let known = ownerStarts.get(pid);
  if (known === undefined || known.comm !== comm) {
    if (ownerStarts.size >= 1 << 16) ownerStarts.clear();
    known = { comm, bytes: Buffer.from(`{"pid":${pid},"comm":${jsonAscii(comm)},"fd":`, "latin1") };
    ownerStarts.set(pid, known);
  }
  return known.bytes;
}

/** A JSON string of `text` in ASCII: beyond U+007E every UTF-16 unit is written \uXXXX (the same string). */
function jsonAscii(text: string): string {
  return JSON.stringify(text).replace(
    /[\u007f-\uffff]/g,
    (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** One line on how to get exact answers, when some came from the timer only. */
export function writeExactHint(r: InspectionInfo, inexact: number, out: Out): void {
  if (inexact === 0 || !r.processes) return;
  if (process.geteuid?.() !== 0 && (r.unreadablePids.length > 0 || r.exactDenied > 0)) {
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
