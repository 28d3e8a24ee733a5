/**
 * Keepalive for the live sockets of running processes: find their TCP sockets, duplicate each with
 * pidfd_getfd, check that the duplicate is still the socket that was listed, read its settings, change them,
 * and close the duplicate at once. Only sockets that the kernel lists as TCP are ever duplicated: a pipe, a Unix
 * socket or a UDP socket is never touched. As root the BPF iterator of src/inspect/socket-fds.ts lists them, one
 * read per process; elsewhere each fd's /proc/PID/fd link is read and the socket looked up in the TCP tables of
 * the process's own network namespace. Many changes at once are paced (spread.ts): first read, then made.
 */
import { closeSync, constants, openSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { TcpkaError } from "../../errors.js";
import {
  DEFAULT_FILTER,
  type ListedMatcher,
  type SocketFilter,
  socketMatcher,
  type TcpEndpoints,
} from "../../filter.js";
import { fdNumbers, openFdCount } from "../../inspect/owners.js";
import { commOf, netnsOf, permissionError } from "../../inspect/processes.js";
import { SocketFdIterator } from "../../inspect/socket-fds.js";
import { listeningPorts, readSockets, type TcpSocket } from "../../inspect/sockets.js";
import type { ProcessTargets } from "../../inspect/targets.js";
import { STATE_NAMES, stateMask, type TcpStateName } from "../../kernel/states.js";
import { afterChanges, type Change } from "../../settings.js";
import { applyPhase, linksPhase, type Outcome, OutcomeReader, type PlanSpec } from "./batch.js";
import { HelperThread } from "./helper.js";
import { applyInKernel, KernelApply, MAX_PER_READ } from "./kernel-apply.js";
import { type LiveResult, type LiveSocket, type LiveSummary, type Round, Tally } from "./results.js";
import { armsTimer, capSpread, probeBound, type Spread, spreadOf } from "./spread.js";

export type { Outcome, PlanSpec } from "./batch.js";
export type { LiveResult, LiveSocket, LiveSummary, Round } from "./results.js";
export type { Spread } from "./spread.js";

/**
 * How a session changes sockets: "bpf", in the kernel (kernel-apply.ts: root, Linux 5.15, BTF; no socket
 * duplicated, so no CAP_SYS_PTRACE and the sockets' net_cls/net_prio stay theirs), or "pidfd", through a
 * duplicate of each (Linux 5.6). Unset: the kernel where it can, else pidfd.
 */
export type ChangeVia = "bpf" | "pidfd";

/** Nothing ever notifies it: Atomics.wait on it only sleeps (the kernel path's pace, applyKernel). */
const NAP = new Int32Array(new SharedArrayBuffer(4));
/**
 * How late a read of the kernel path may come before the rest of its schedule moves with it: half the smallest
 * granule of the timer wheel that a spread meets (32 ms, a 2 s idle at HZ=250). Catching up within it keeps
 * every change in its granule; moving on at every small delay would stretch the window, and a window that grows
 * past one idle time folds back onto its own first changes (spread.ts), doubling the probes of those ticks.
 */
const LATE_MS = 16;

/** What a session looks at unless told otherwise: connections, and listeners (what they accept inherits). */
export const LIVE_STATES = stateMask(["ESTAB", "LISTEN"]);

export interface WatchOptions {
  /** milliseconds between rounds; without it, one round */
  every?: number;
  /** ends the watch after the round under way (Ctrl-C, the end of the program watched) */
  signal?: AbortSignal;
  /** each round's results, as soon as it has them */
  onRound?: (results: readonly LiveResult[]) => void;
  /** a round's changes are about to be spread over spread.windowMs (called only when paced) */
  onSpread?: (spread: Spread) => void;
}

/**
 * Below this many fds in a round, the helper thread would cost more than it saves: it takes about 0.1 s to
 * start. Listing through /proc, it shares the readlinkat of every fd too; with the BPF listing only the changes
 * (about 11 µs per socket on one thread), which 3,000 sockets finished 40 ms sooner without it.
 */
const HELP_FROM = 2000;
const HELP_FROM_WITH_ITERATOR = 10_000;

/**
 * Where the fds of a round point: entry i is fd fds[i] of process pids[i], socket inodes[i] (0: not a socket,
 * -1: closed meanwhile). The BPF listing has TCP sockets only, each with what it is in sockets[i].
 */
interface Listing {
  n: number;
  pids: ArrayLike<number>;
  fds: ArrayLike<number>;
  inodes: ArrayLike<number>;
  sockets?: TcpEndpoints[];
}

/**
 * One enable/disable run over time: each round lists the targets' sockets, skips the ones already handled,
 * and applies the plan to the rest. A socket in a state that is not wanted yet (still connecting) is looked
 * at again in the next round. watch() runs the rounds and closes the session; whoever calls round() itself
 * must await close() at the end.
 */
export class LiveSession {
  /** inodes of the sockets looked at: the round that handled them, 0 when filtered out */
  private readonly seen = new Map<number, number>();
  private rounds = 0;
  private readonly helper = new HelperThread();
  /** the BPF socket lister: undefined until the first round tried it, null where it cannot load */
  private lister: SocketFdIterator | null | undefined;
  private readonly wanted: Set<TcpStateName>;
  /** KernelApply.possible(), asked once */
  private kernelPossible: boolean | undefined;
  /** the kernel path could not run here (applyKernel gave up before changing anything): pidfd from now on */
  private kernelFailed = false;

  constructor(
    private readonly states: number,
    private readonly matches: ListedMatcher | null,
    private readonly plan: PlanSpec,
    private readonly dryRun: boolean,
    /** false: list through /proc and sock_diag even where the BPF iterator would load (for tests) */
    private readonly useIterator = true,
    /** how sockets are changed: in the kernel (bpf), through duplicates (pidfd), or the first that works here */
    private readonly via?: ChangeVia,
    /** the longest a round's changes may be spread over (tcpka enable --spread); unset: what spread.ts needs */
    private readonly maxSpreadMs?: number,
    /** enforce --existing: its marks map, so that its setsockopt program looks after these sockets too */
    private readonly marksFd?: number,
  ) {
    this.wanted = new Set(STATE_NAMES.filter((name, i): name is TcpStateName => !!name && (states & (1 << i)) !== 0));
  }

  /** A session over the sockets that `filter` lets through (by default: LIVE_STATES, every address). */
  static matching(
    filter: Partial<SocketFilter>,
    plan: PlanSpec,
    dryRun = false,
    o: { via?: ChangeVia; maxSpreadMs?: number; marksFd?: number } = {},
  ): LiveSession {
    const f = { ...DEFAULT_FILTER, states: LIVE_STATES, ...filter };
    return new LiveSession(f.states, socketMatcher(f), plan, dryRun, true, o.via, o.maxSpreadMs, o.marksFd);
  }

  /**
   * Rounds over the targets: one, or with `every` until the signal or until no fixed target is left; then the
   * session is closed. Throws when this kernel has no pidfd_getfd, and when the targets' sockets could not be
   * reached at all (a watch over fixed targets says so as soon as it can read none of them). Target processes
   * that could not be read are skipped and listed in the summary.
   */
  async watch(targets: ProcessTargets, o: WatchOptions = {}): Promise<LiveSummary> {
    const t = new Tally();
    let reached = 0; // target processes whose fds could be read, summed over the rounds
    const { signal } = o;
    const watch = o.every !== undefined;
    try {
      for (;;) {
        const pids = targets.pids();
        const round = await this.round(pids, o.onSpread);
        reached += pids.length - round.unreadable.length;
        t.add(round);
        if (round.results.some((r) => r.outcome.result === "failed" && r.outcome.error.errnoName === "ENOSYS")) {
          throw new TcpkaError("unsupported", "this kernel has no pidfd_getfd: tcpka enable needs Linux 5.6 or newer", {
            hint: "on older kernels use tcpka run (LD_PRELOAD) at the program's start",
          });
        }
        o.onRound?.(round.results);
        // Waiting is pointless when none of the targets can be read: say so now, not at the end.
        if (watch && targets.fixed && pids.length > 0 && round.unreadable.length === pids.length && !t.handledAny) {
          throw permissionError(round.unreadable);
        }
        if (!watch || signal?.aborted || (targets.fixed && pids.length === 0)) break;
        await sleep(o.every, undefined, { signal }).catch(() => {}); // woken early by the signal
        if (signal?.aborted) break;
      }
    } finally {
      await this.close();
    }
    // Processes that could not be read are skipped and counted; but when nothing at all could be reached, the
    // permission error says it in one line.
    const s = t.summary();
    const errors = Object.keys(s.errors);
    const eperm = errors.length > 0 && errors.every((k) => k.endsWith("EPERM"));
    if (s.changed + s.unchanged === 0 && ((s.unreadable.length > 0 && reached === 0) || (eperm && s.failed > 0))) {
      throw permissionError(s.unreadable.length ? s.unreadable : s.processes);
    }
    return s;
  }

  /** Stop the helper thread and unload the iterator; must be awaited before the process ends (HelperThread). */
  async close(): Promise<void> {
    this.lister?.close();
    this.lister = null;
    await this.helper.close();
  }

  /** One pass over the processes: the results for sockets not seen before, and the pids that were unreadable. */
  async round(pids: readonly number[], onSpread?: (spread: Spread) => void): Promise<Round> {
    // 1. Which fds of each target are TCP sockets: through the BPF iterator where it loads, else /proc and the
    // kernel's TCP tables. A big table starts the helper first, so that its start-up overlaps the listing.
    const iterate = this.lister === undefined ? this.useIterator && SocketFdIterator.possible() : this.lister !== null;
    // The kernel path changes sockets in its own walk and never gives the helper work: started anyway, it took a
    // core's 150 ms to come up and be terminated beside a 50,000-socket enable on two vCPUs. Should that path
    // fail, the pidfd path starts it then (step 4).
    if (!this.inKernel() && openFdCount(pids) >= (iterate ? HELP_FROM_WITH_ITERATOR : HELP_FROM)) this.helper.start();
    if (this.lister === undefined) {
      try {
        this.lister = iterate ? SocketFdIterator.open() : null;
      } catch {
        this.lister = null; // no BTF, or the kernel said no (a BPF LSM, lockdown): /proc does the same, slower
      }
    }
    const first = this.seen.size === 0;
    const unreadable: number[] = [];
    const listed: number[] = [];
    let tcp: Map<number, TcpSocket> | undefined;
    let links = this.lister ? this.listByIterator(this.lister, pids, listed) : undefined;
    if (!links) {
      listed.length = 0;
      const onProc = await this.listByProc(pids, listed, unreadable, first);
      links = onProc.links;
      tcp = onProc.tcp;
    }

    let fresh = false;
    if (first) {
      for (let i = 0; i < links.n && !fresh; i++) fresh = (links.inodes[i] as number) > 0;
    } else {
      const present = new Set<number>();
      for (let i = 0; i < links.n; i++) {
        const inode = links.inodes[i] as number;
        if (inode <= 0) continue;
        present.add(inode);
        if (!this.seen.has(inode)) fresh = true;
      }
      // Forget sockets that are gone, so that a long watch does not grow without bound.
      for (const inode of this.seen.keys()) if (!present.has(inode)) this.seen.delete(inode);
    }
    const results: LiveResult[] = [];
    const holders = new Set<number>(); // processes holding a socket handled in this round
    if (!fresh) return { results, filtered: 0, unreadable, holders };
    if (!links.sockets) tcp ??= this.tcpTables(listed);

    // 3. The new TCP sockets in wanted states that pass the filters. A socket shared by several processes
    // (after fork) is one socket: handled once, through its first holder.
    const round = ++this.rounds;
    const jobs: LiveSocket[] = [];
    let filtered = 0;
    let comm = "";
    let commPid = -1; // entries come grouped by process: its comm and holding are noted once
    let holder = -1;
    const listening = this.listening();
    for (let i = 0; i < links.n; i++) {
      const inode = links.inodes[i] as number;
      if (inode <= 0) continue;
      const pid = links.pids[i] as number;
      const mark = this.seen.get(inode);
      if (mark !== undefined) {
        if (mark === round) holders.add(pid); // shared with a process before it in this round
        continue;
      }
      let socket: TcpEndpoints | undefined;
      if (links.sockets) {
        socket = links.sockets[i] as TcpEndpoints;
        if (!this.wanted.has(socket.state)) continue; // not in a wanted state yet
      } else {
        socket = tcp?.get(inode);
        if (!socket) continue; // not TCP, not in a wanted state yet, or gone
      }
      if (this.matches && !this.matches(socket, () => listening(pid))) {
        this.seen.set(inode, 0);
        filtered++;
        continue;
      }
      this.seen.set(inode, round);
      if (pid !== holder) {
        holders.add(pid);
        holder = pid;
      }
      if (pid !== commPid) {
        comm = commOf(pid);
        commPid = pid;
      }
      jobs.push({ pid, comm, fd: links.fds[i] as number, socket });
    }

    // 4. Change them, shared with the helper. More sockets than a timer tick may carry probes of are read first
    // (a dry run), then those that need it changed at the pace spread.ts gives; disable never needs a pace.
    if (this.maxSpreadMs === 0 && !this.dryRun && !this.plan.disable && jobs.length > probeBound()) {
      // --spread 0: no dry run to count the changes first; at most every socket of the round, at once.
      const bound = probeBound();
      onSpread?.({
        changes: jobs.length,
        windowMs: 0,
        stepMs: 0,
        perTick: jobs.length,
        bound,
        floor: false,
        capped: true,
      });
    }
    if (jobs.length > 0 && this.inKernel()) {
      const outcomes = await this.applyKernel(jobs, onSpread);
      if (outcomes) {
        for (let i = 0; i < jobs.length; i++)
          results.push({ socket: jobs[i] as LiveSocket, outcome: outcomes[i] as Outcome });
        return { results, filtered, unreadable, holders };
      }
      this.kernelFailed = true;
      if (jobs.length >= HELP_FROM_WITH_ITERATOR) this.helper.start();
    }
    const paced = this.paced(jobs.length);
    const apply = applyPhase(
      jobs.map((j) => j.pid),
      jobs.map((j) => j.fd),
      jobs.map((j) => j.socket.inode),
      this.plan,
      this.dryRun || paced,
    );
    await this.helper.run(apply);
    const reader = new OutcomeReader(this.plan);
    const outcomes = jobs.map((_, i) => reader.read(apply, i));
    if (paced) await this.changeSpread(jobs, outcomes, reader, onSpread);
    for (let i = 0; i < jobs.length; i++)
      results.push({ socket: jobs[i] as LiveSocket, outcome: outcomes[i] as Outcome });
    return { results, filtered, unreadable, holders };
  }

  /** Whether this round's changes go to the kernel path first (applyKernel), not to pidfd_getfd and the helper. */
  private inKernel(): boolean {
    if (this.via === "pidfd" || this.kernelFailed) return false;
    this.kernelPossible ??= KernelApply.possible();
    return this.kernelPossible;
  }

  /**
   * Whether a round of `n` sockets is changed at a pace, and so decided first in a dry run: not a dry run,
   * not disable (no probe can come of it), not --spread 0, and more sockets than one tick may carry probes of.
   */
  private paced(n: number): boolean {
    return !this.dryRun && !this.plan.disable && this.maxSpreadMs !== 0 && n > probeBound();
  }

  /**
   * Make the changes that a dry run found (`outcomes`, replaced by what was done), spread: N = the changes that
   * arm a timer, over the shortest idle and the longest timer they leave. Sockets whose settings changed since
   * are planned anew.
   */
  private async changeSpread(
    jobs: readonly LiveSocket[],
    outcomes: Outcome[],
    reader: OutcomeReader,
    onSpread?: (spread: Spread) => void,
  ): Promise<void> {
    const { todo, spread } = spreadFor(outcomes, this.maxSpreadMs);
    if (todo.length === 0) return;
    if (spread.stepMs > 0) onSpread?.(spread);
    const job = (i: number) => jobs[i] as LiveSocket;
    const p = applyPhase(
      todo.map((i) => job(i).pid),
      todo.map((i) => job(i).fd),
      todo.map((i) => job(i).socket.inode),
      this.plan,
      false,
      spread.stepMs,
    );
    await this.helper.run(p);
    for (const [k, i] of todo.entries()) outcomes[i] = reader.read(p, k);
  }

  /**
   * Step 4 in the kernel (kernel-apply.ts): the same decisions and changes in one walk per network namespace,
   * no socket duplicated. Many changes are decided first (a dry run in the kernel), then made at spread.ts's
   * pace: each read of the walk changes at most what one tick may carry, and the walk waits between reads.
   * undefined when the kernel path cannot run here (the caller takes pidfd_getfd), unless it was insisted on.
   */
  private async applyKernel(
    jobs: readonly LiveSocket[],
    onSpread?: (spread: Spread) => void,
  ): Promise<Outcome[] | undefined> {
    const netns = new Map<string, number | undefined>(); // a namespace's nsfs fd, by its name; own: undefined
    const own = netnsOf(process.pid);
    const inodes: number[] = new Array(jobs.length);
    const netnsFds: (number | undefined)[] = new Array(jobs.length);
    let started = false;
    try {
      let pid = -1; // jobs come grouped by process: its namespace is looked up once (a readlink each)
      let fd: number | undefined;
      for (let i = 0; i < jobs.length; i++) {
        const j = jobs[i] as LiveSocket;
        if (j.pid !== pid) {
          pid = j.pid;
          const ns = netnsOf(pid) ?? own ?? "";
          if (!netns.has(ns)) netns.set(ns, ns === own ? undefined : openNetns(pid));
          fd = netns.get(ns);
        }
        inodes[i] = j.socket.inode;
        netnsFds[i] = fd;
      }
      const paced = this.paced(jobs.length);
      // The marks go with the first pass too: a paced round changes only what needs it, and the sockets found as
      // strong already are enforce's as well. A dry run of the user's marks nothing.
      const marks = this.dryRun || this.marksFd === undefined ? {} : { marksFd: this.marksFd };
      const outcomes = await applyInKernel({ inodes, netnsFds }, this.plan, {
        dryRun: this.dryRun || paced,
        perRead: MAX_PER_READ,
        ...marks,
      });
      // From here on sockets may have been changed: a failure is reported, not retried through pidfd_getfd,
      // which would count what the kernel already changed as found so.
      started = true;
      if (!paced) return outcomes;
      const { todo, spread } = spreadFor(outcomes, this.maxSpreadMs);
      if (todo.length === 0) return outcomes;
      if (spread.stepMs > 0) onSpread?.(spread);
      // Reads of about a millisecond's share of changes, each read when its turn comes (Atomics.wait: a timer's
      // millisecond would bunch them). The schedule starts with the first read (loading the program and filling
      // the map take a few ms that must not be caught up at once), and a read that comes more than LATE_MS late
      // moves the rest of the schedule on instead of catching up in a burst that would crowd one granule.
      const perRead =
        spread.stepMs > 0 ? Math.max(1, Math.min(MAX_PER_READ, Math.floor(1 / spread.stepMs))) : MAX_PER_READ;
      let origin: number | undefined;
      const made = await applyInKernel(
        { inodes: todo.map((i) => inodes[i] as number), netnsFds: todo.map((i) => netnsFds[i]) },
        this.plan,
        {
          dryRun: false,
          perRead,
          ...marks,
          pace: (done) => {
            origin ??= performance.now() - done * spread.stepMs;
            const early = origin + done * spread.stepMs - performance.now();
            if (early > 0) Atomics.wait(NAP, 0, 0, early);
            else if (-early > LATE_MS) origin += -early - LATE_MS;
          },
        },
      );
      for (const [k, i] of todo.entries()) outcomes[i] = made[k] as Outcome;
      return outcomes;
    } catch (e) {
      if (this.via === "bpf" || started) throw e;
      return undefined;
    } finally {
      for (const fd of netns.values()) if (fd !== undefined) closeSync(fd);
    }
  }

  /**
   * The socket fds of these processes through the BPF iterator: the pids it found sockets of are pushed on
   * `listed`. undefined when the iterator failed: it is not used again, and /proc is read instead.
   */
  private listByIterator(lister: SocketFdIterator, pids: readonly number[], listed: number[]): Listing | undefined {
    const entryPid: number[] = [];
    const fds: number[] = [];
    const sockets: TcpEndpoints[] = [];
    try {
      for (const pid of pids) {
        const before = fds.length;
        // The iterator reads every process (it needs root), so nothing is unreadable through it: a false is a
        // process that has exited, which is gone, not denied.
        if (!lister.list(pid, fds, sockets)) continue;
        if (fds.length > before) listed.push(pid);
        for (let i = before; i < fds.length; i++) entryPid.push(pid);
      }
    } catch {
      lister.close();
      this.lister = null;
      return undefined;
    }
    return { n: fds.length, pids: entryPid, fds, inodes: sockets.map((s) => s.inode), sockets };
  }

  /**
   * The fds of these processes through /proc, and which are sockets (a readlinkat each, shared with the helper):
   * the pids listed are pushed on `listed`, the others on `unreadable`. In the first round of a big run every
   * TCP socket is new, so the kernel's TCP tables are read meanwhile and returned too.
   */
  private async listByProc(
    pids: readonly number[],
    listed: number[],
    unreadable: number[],
    first: boolean,
  ): Promise<{ links: Listing; tcp?: Map<number, TcpSocket> }> {
    const entryPid: number[] = [];
    const entryFd: number[] = [];
    for (const pid of pids) {
      const fds = fdNumbers(pid);
      if (fds === null) {
        unreadable.push(pid);
        continue;
      }
      if (fds.length === 0) continue;
      listed.push(pid);
      for (const fd of fds) {
        entryPid.push(pid);
        entryFd.push(fd);
      }
    }
    if (entryPid.length >= HELP_FROM) this.helper.start();
    const links = linksPhase(entryPid, entryFd);
    let tcp: Map<number, TcpSocket> | undefined;
    const overlap = first && links.n >= HELP_FROM;
    await this.helper.run(
      links,
      overlap
        ? () => {
            tcp = this.tcpTables(listed);
          }
        : undefined,
    );
    return tcp ? { links, tcp } : { links };
  }

  /** For the rules: the ports listened on in the network namespace of a process, read once per namespace. */
  private listening(): (pid: number) => ReadonlySet<number> {
    const own = netnsOf(process.pid);
    const byNetns = new Map<string, ReadonlySet<number>>();
    const byPid = new Map<number, ReadonlySet<number>>();
    return (pid) => {
      let ports = byPid.get(pid);
      if (!ports) {
        const ns = netnsOf(pid) ?? "";
        ports = byNetns.get(ns) ?? listeningPorts(ns === own ? {} : { netnsOf: pid });
        byNetns.set(ns, ports);
        byPid.set(pid, ports);
      }
      return ports;
    };
  }

  /** The TCP sockets in wanted states, by inode, from the network namespaces of these processes. */
  private tcpTables(pids: readonly number[]): Map<number, TcpSocket> {
    const byNetns = new Map<string, number>(); // netns -> one pid in it
    for (const pid of pids) {
      const ns = netnsOf(pid);
      if (ns !== undefined && !byNetns.has(ns)) byNetns.set(ns, pid);
    }
    const own = netnsOf(process.pid);
    const tcp = new Map<number, TcpSocket>();
    for (const [ns, pid] of byNetns) {
      const list = readSockets(ns === own ? { states: this.states } : { states: this.states, netnsOf: pid });
      for (const s of list) if (s.inode) tcp.set(s.inode, s);
    }
    return tcp;
  }
}

/**
 * Which outcomes of a dry run are still to be made, and their spread: N = the changes that arm a timer, over the
 * shortest idle and the longest timer they leave.
 */
function spreadFor(outcomes: readonly Outcome[], maxSpreadMs?: number): { todo: number[]; spread: Spread } {
  const todo: number[] = [];
  let arming = 0;
  let idle = Number.POSITIVE_INFINITY;
  let timer = 0;
  let atOnce = false;
  let last: readonly Change[] | undefined; // sockets read alike share their list of changes (OutcomeReader)
  for (const [i, o] of outcomes.entries()) {
    if (o.result !== "would change") continue;
    todo.push(i);
    if (!armsTimer(o.changes)) continue;
    arming++;
    if (o.changes === last) continue;
    last = o.changes;
    const after = afterChanges(o.before, o.changes);
    idle = Math.min(idle, after.idle);
    timer = Math.max(timer, after.idle, after.interval);
    atOnce ||= o.before.keepalive && after.idle !== o.before.idle;
  }
  const spread = spreadOf(arming, idle, timer, atOnce);
  return { todo, spread: maxSpreadMs === undefined ? spread : capSpread(spread, maxSpreadMs, timer) };
}

/** An nsfs fd of a process's network namespace, for a walk in it. */
function openNetns(pid: number): number {
  return openSync(`/proc/${pid}/ns/net`, constants.O_RDONLY);
}
