/**
 * The per-fd work of `tcpka enable`, shared by two threads. Listing the sockets of 50,000 fds and changing them
 * is about ten system calls per fd, each a few microseconds of kernel time (readlinkat, pidfd_getfd, fstat,
 * getsockopt, setsockopt, close): one thread needs well over a second for it, two need half.
 *
 * A phase is one such job over n entries, in memory both threads share (SharedArrayBuffer). The entries are cut
 * into chunks; each thread claims the next chunk with an atomic add, does it, and marks it done. The main thread
 * works too, so nothing waits for the helper thread to start, and a slow or dead helper only means the main
 * thread does more. The results sit at the entry's index, so their order is the order of the entries.
 *
 * An apply phase may be paced (spread.ts): its k-th change, counted over both threads, is made no earlier than
 * k steps after the phase was made, and a thread that is early sleeps (awaitTurn).
 *
 * This module runs in both threads: it holds no state between phases, and each thread closes the fds it opened
 * before its part of a phase returns.
 */
import { closeSync, constants, openSync } from "node:fs";
import { readKeepAliveInto } from "../../inspect/exact.js";
import { ESTALE_REUSED } from "../../kernel/errno.js";
import { SOCKOPTS } from "../../kernel/sockopts.js";
import {
  type ApplyMode,
  type Change,
  type EffectiveKeepAlive,
  type KeepAliveSettings,
  planChanges,
} from "../../settings.js";
import { close, fdSocketInode, SysError, setsockoptInt, sockfsInode } from "../../sys/libc.js";
import { pidfdGetfd, pidfdOpen } from "../../sys/pidfd.js";
import { armsTimer } from "./spread.js";

/** Entries per chunk: small enough that the last chunk of a thread ends soon after the other's. */
const CHUNK = 256;

/** What enable or disable does to a socket, given its current settings: plain data, so it can cross threads. */
export interface PlanSpec {
  disable: boolean;
  settings: KeepAliveSettings;
  mode: ApplyMode;
  /** only sockets that have keepalive off (--no-keepalive): one with it on is left as it is */
  onlyOff?: boolean;
}

function planner(spec: PlanSpec): (current: EffectiveKeepAlive) => Change[] {
  if (spec.disable) return (cur) => (cur.keepalive && !spec.onlyOff ? [{ option: "keepalive", from: 1, to: 0 }] : []);
  return (cur) => (spec.onlyOff && cur.keepalive ? [] : planChanges(cur, spec.settings, spec.mode));
}

interface PhaseBase {
  id: number;
  n: number;
  /** [0]: the next chunk to claim; [1]: the next change of a paced apply phase */
  control: Int32Array;
  /** per chunk once it is done: 1 when the main thread did it, 2 when the helper did */
  done: Int32Array;
  pids: Int32Array;
  fds: Int32Array;
}

/** Read what each fd (pids[i], fds[i]) refers to: inodes[i] = its socket inode, 0 not a socket, -1 gone. */
export interface LinksPhase extends PhaseBase {
  kind: "links";
  inodes: Float64Array;
}

/** Apply the plan to each socket (pids[i], fds[i], listed as inodes[i]); the outcome in out[i * SLOTS ...]. */
export interface ApplyPhase extends PhaseBase {
  kind: "apply";
  inodes: Float64Array;
  plan: PlanSpec;
  dryRun: boolean;
  out: Int32Array;
  /** ms from one change to the next; 0: not paced */
  stepMs: number;
  /** [0]: when change 0 is due, µs on CLOCK_MONOTONIC (awaitTurn) */
  origin: BigInt64Array;
}

export type Phase = LinksPhase | ApplyPhase;

function shared<T extends Int32Array | Float64Array>(
  Type: { new (b: SharedArrayBuffer): T; BYTES_PER_ELEMENT: number },
  n: number,
): T {
  return new Type(new SharedArrayBuffer(Math.max(1, n) * Type.BYTES_PER_ELEMENT));
}

let nextId = 1;

function base(n: number, pids: readonly number[], fds: readonly number[]): PhaseBase {
  const p: PhaseBase = {
    id: nextId++,
    n,
    control: shared(Int32Array, 2),
    done: shared(Int32Array, Math.ceil(n / CHUNK)),
    pids: shared(Int32Array, n),
    fds: shared(Int32Array, n),
  };
  p.pids.set(pids);
  p.fds.set(fds);
  return p;
}

export function linksPhase(pids: readonly number[], fds: readonly number[]): LinksPhase {
  return { ...base(pids.length, pids, fds), kind: "links", inodes: shared(Float64Array, pids.length) };
}

/** `stepMs`: pace the changes, one every stepMs from now (spread.ts); 0 makes them as fast as it can. */
export function applyPhase(
  pids: readonly number[],
  fds: readonly number[],
  inodes: readonly number[],
  plan: PlanSpec,
  dryRun: boolean,
  stepMs = 0,
): ApplyPhase {
  const p = base(pids.length, pids, fds);
  const ino = shared(Float64Array, pids.length);
  ino.set(inodes);
  const origin = new BigInt64Array(new SharedArrayBuffer(8));
  origin[0] = monotonicUs();
  const out = shared(Int32Array, pids.length * SLOTS);
  return { ...p, kind: "apply", inodes: ino, plan, dryRun, out, stepMs: dryRun ? 0 : stepMs, origin };
}

/** Microseconds on CLOCK_MONOTONIC (libuv's hrtime): one clock for both threads, unlike performance.now(). */
function monotonicUs(): bigint {
  return process.hrtime.bigint() / 1000n;
}

/** Nothing ever notifies it: Atomics.wait on it only sleeps. */
const nap = new Int32Array(new SharedArrayBuffer(4));

/** How late a change may come before the rest of the schedule moves with it (see awaitTurn). */
const LATE_US = 1000;

/**
 * Wait for this change's turn in a paced phase: change k comes at origin + k × step, never earlier. One that
 * comes late (Atomics.wait oversleeps by the timer slack, about 60 µs; a thread may not be scheduled for a
 * while) goes at once; beyond LATE_US the origin moves on by the excess, so that a stall does not turn into a
 * burst of the changes it held up, which would share a timer tick.
 */
function awaitTurn(p: ApplyPhase): void {
  const k = Atomics.add(p.control, 1, 1);
  const due = Number(Atomics.load(p.origin, 0)) + k * p.stepMs * 1000;
  const early = due - Number(monotonicUs());
  if (early > 0) Atomics.wait(nap, 0, 0, early / 1000);
  else if (-early > LATE_US) Atomics.add(p.origin, 0, BigInt(Math.round(-early - LATE_US)));
}

export function chunks(p: Phase): number {
  return Math.ceil(p.n / CHUNK);
}

export function allDone(p: Phase): boolean {
  for (let c = 0; c < chunks(p); c++) if (Atomics.load(p.done, c) === 0) return false;
  return true;
}

/** What a chunk's done slot gets: 1 done by the main thread, 2 by the helper (worker.ts calls asHelper first). */
let doneMark = 1;

/** Mark this thread as the helper: its chunks are done as 2. worker.ts calls it before any work. */
export function asHelper(): void {
  doneMark = 2;
}

/**
 * This thread's part of a phase: claim chunks until none is left. With `only`, do exactly those chunks instead
 * (the main thread finishing what a helper that died had claimed).
 */
export function work(p: Phase, only?: readonly number[]): void {
  const opened = new Map<number, number>(); // pid -> its /proc/PID/fd directory, or its pidfd
  const failed = new Map<number, SysError>(); // pid -> why it could not be opened
  try {
    const plan = p.kind === "apply" ? lastPlan(planner(p.plan)) : undefined;
    const run =
      p.kind === "links"
        ? (i: number) => links(p, i, opened, failed)
        : (i: number) => apply(p, i, plan as (out: Int32Array, o: number) => Change[], opened, failed);
    const total = chunks(p);
    for (let k = 0; ; k++) {
      const c = only ? only[k] : Atomics.add(p.control, 0, 1);
      if (c === undefined || c >= total) break;
      const end = Math.min(p.n, (c + 1) * CHUNK);
      for (let i = c * CHUNK; i < end; i++) run(i);
      Atomics.store(p.done, c, doneMark);
    }
  } finally {
    // Directories were opened through node:fs (which tracks them in a worker thread), pidfds through syscall(2).
    for (const fd of opened.values()) p.kind === "links" ? closeSync(fd) : close(fd);
  }
}

function opener(
  pid: number,
  opened: Map<number, number>,
  failed: Map<number, SysError>,
  open: (pid: number) => number,
): number {
  const fd = opened.get(pid);
  if (fd !== undefined) return fd;
  const err = failed.get(pid);
  if (err) throw err;
  try {
    const f = open(pid);
    opened.set(pid, f);
    return f;
  } catch (e) {
    if (!(e instanceof SysError)) throw e;
    failed.set(pid, e);
    throw e;
  }
}

function openFdDir(pid: number): number {
  try {
    return openSync(`/proc/${pid}/fd`, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    throw new SysError("open", Math.abs((e as NodeJS.ErrnoException).errno ?? 2));
  }
}

function links(p: LinksPhase, i: number, opened: Map<number, number>, failed: Map<number, SysError>): void {
  let dir: number;
  try {
    dir = opener(p.pids[i] as number, opened, failed, openFdDir);
  } catch {
    p.inodes[i] = -1; // the process exited since its fds were listed
    return;
  }
  p.inodes[i] = fdSocketInode(dir, p.fds[i] as number);
}

// An outcome in SLOTS int32: result, errno, the call that failed, changes made before it failed (-1: the
// settings were never read), then the settings read: keepalive, idle, interval, count, user timeout.
const SLOTS = 9;
const RESULTS = ["changed", "would change", "unchanged", "gone", "failed"] as const;
type ResultName = (typeof RESULTS)[number];
const CALLS = ["pidfd_open", "pidfd_getfd", "fstat", "getsockopt", "setsockopt"] as const;
const GONE = new Set(["ESRCH", "EBADF", "ESTALE"]);

/**
 * The plan for settings read into out[o ...], remembering the last one: sockets of one process nearly all read
 * the same, and planning anew for each made 50,000 objects to collect.
 */
function lastPlan(plan: (current: EffectiveKeepAlive) => Change[]): (out: Int32Array, o: number) => Change[] {
  const last = new Int32Array(5).fill(-1);
  let changes: Change[] = [];
  return (out, o) => {
    let same = true;
    for (let k = 0; k < 5; k++) if (out[o + k] !== last[k]) same = false;
    if (same) return changes;
    last.set(out.subarray(o, o + 5));
    changes = plan({
      keepalive: out[o] !== 0,
      idle: out[o + 1] as number,
      interval: out[o + 2] as number,
      count: out[o + 3] as number,
      userTimeout: out[o + 4] as number,
    });
    return changes;
  };
}

function apply(
  p: ApplyPhase,
  i: number,
  plan: (out: Int32Array, o: number) => Change[],
  opened: Map<number, number>,
  failed: Map<number, SysError>,
): void {
  const o = i * SLOTS;
  const out = p.out;
  let made = -1;
  let call = 0;
  let dup = -1;
  try {
    const pidfd = opener(p.pids[i] as number, opened, failed, pidfdOpen);
    call = 1;
    dup = pidfdGetfd(pidfd, p.fds[i] as number);
    call = 2;
    // The fd number may have been reused since it was listed: change only the socket that was listed, a socket
    // of sockfs with that inode, not a file that happens to have the same inode number on its own file system.
    if (sockfsInode(dup) !== p.inodes[i]) throw new SysError("pidfd_getfd", ESTALE_REUSED);
    call = 3;
    readKeepAliveInto(dup, out, o + 4);
    const changes = plan(out, o + 4);
    made = 0;
    if (changes.length === 0) out[o] = 2;
    else if (p.dryRun) out[o] = 1;
    else {
      if (p.stepMs > 0 && armsTimer(changes)) awaitTurn(p);
      call = 4;
      for (const c of changes) {
        const [level, name] = SOCKOPTS[c.option];
        setsockoptInt(dup, level, name, c.to);
        made++;
      }
      out[o] = 0;
    }
  } catch (e) {
    if (!(e instanceof SysError)) throw e;
    out[o] = GONE.has(e.errnoName) ? 3 : 4;
    out[o + 1] = e.errno;
    out[o + 2] = e.errno === ESTALE_REUSED ? 1 : call;
  } finally {
    if (dup >= 0) close(dup);
  }
  out[o + 3] = made;
}

export type Outcome =
  | { result: "changed" | "would change"; before: EffectiveKeepAlive; changes: Change[] }
  | { result: "unchanged"; before: EffectiveKeepAlive; changes: [] }
  /** the process exited, or closed or replaced the fd, between listing and changing */
  | { result: "gone"; error: SysError; changes: [] }
  | { result: "failed"; error: SysError; changes: Change[] };

/**
 * Turns the outcomes of finished apply phases into objects. Sockets read with the same settings (typically
 * nearly all of them) share one `before` object and one list of changes, so 50,000 outcomes do not make
 * 150,000 more objects.
 */
export class OutcomeReader {
  private readonly plan: (current: EffectiveKeepAlive) => Change[];
  private readonly known = new Map<string, { before: EffectiveKeepAlive; changes: Change[] }>();
  private last: [number, number, number, number, number, { before: EffectiveKeepAlive; changes: Change[] }] | undefined;

  constructor(spec: PlanSpec) {
    this.plan = planner(spec);
  }

  /** The outcome of entry i of a finished apply phase. */
  read(p: ApplyPhase, i: number): Outcome {
    const o = i * SLOTS;
    const out = p.out;
    const result = RESULTS[out[o] as number] as ResultName;
    const made = out[o + 3] as number;
    const read = made < 0 ? undefined : this.settings(out, o + 4);
    if (result === "gone" || result === "failed") {
      const error = new SysError(CALLS[out[o + 2] as number] ?? "?", out[o + 1] as number);
      if (result === "gone") return { result, error, changes: [] };
      return { result, error, changes: read ? read.changes.slice(made) : [] };
    }
    const { before, changes } = read as { before: EffectiveKeepAlive; changes: Change[] };
    if (result === "unchanged") return { result, before, changes: [] };
    return { result, before, changes };
  }

  private settings(out: Int32Array, o: number): { before: EffectiveKeepAlive; changes: Change[] } {
    // Most often the same as the socket before: no key to make.
    const last = this.last;
    if (last && out[o] === last[0] && out[o + 1] === last[1] && out[o + 2] === last[2]) {
      if (out[o + 3] === last[3] && out[o + 4] === last[4]) return last[5];
    }
    const key = `${out[o]} ${out[o + 1]} ${out[o + 2]} ${out[o + 3]} ${out[o + 4]}`;
    let k = this.known.get(key);
    if (!k) {
      const before: EffectiveKeepAlive = {
        keepalive: out[o] !== 0,
        idle: out[o + 1] as number,
        interval: out[o + 2] as number,
        count: out[o + 3] as number,
        userTimeout: out[o + 4] as number,
      };
      k = { before, changes: this.plan(before) };
      this.known.set(key, k);
    }
    this.last = [
      out[o] as number,
      out[o + 1] as number,
      out[o + 2] as number,
      out[o + 3] as number,
      out[o + 4] as number,
      k,
    ];
    return k;
  }
}
