/**
 * `tcpka agent`: keeps the host to a keepalive policy. A reconcile reads every process's facts (facts.ts), plans
 * which cgroup gets which rule (plan.ts), and makes the pins under /sys/fs/bpf/tcpka say exactly that: each
 * target gets the rule's `tcpka enforce` (sock_ops and setsockopt programs, src/enforce/cgroup.ts) marked as the
 * agent's, with the connections that exist then changed in the kernel as `enforce --existing` does; the agent's
 * own enforcements that no rule wants any more are removed; an operator's are never touched.
 *
 * When it reconciles: at start; when the policy file's directory changes (an edit, a ConfigMap's symlink swap) or
 * on reload() (SIGHUP, from the command); when a container runtime's state directory or the top of the cgroup tree
 * changes (a container or unit appears); and every `resyncMs` in any case (a process that starts inside a cgroup
 * the agent does not watch, a pin that was removed, bpffs remounted).
 *
 * Everything it makes is pinned, so nothing depends on the agent running: killed, it leaves the enforcements in
 * force; restarted, it finds its own by their descriptions (owner "agent"), keeps those that are as the policy
 * says (no gap: the links are never detached), finishes or removes half-made ones, and updates the rest in place
 * (BPF_LINK_UPDATE). A policy file with errors changes nothing: the last good policy stays in force (at start,
 * without one, the enforcements in place stay as they are), and every error is reported with its line.
 */
import { createHash } from "node:crypto";
import { existsSync, type FSWatcher, readdirSync, readFileSync, rmdirSync, statSync, watch } from "node:fs";
import { dirname, join } from "node:path";
import type { EnforceSpec } from "../bpf/keepalive.js";
import {
  agentEnforcements,
  BPF_FS,
  bpffsMounted,
  enforcementOf,
  enforceOnCgroup,
  type Listed,
  listEnforcements,
  NotOwned,
  PIN_ROOT,
  removeEnforcement,
  withMarks,
} from "../enforce/cgroup.js";
import { LiveSession } from "../enforce/live/session.js";
import { TcpkaError } from "../errors.js";
import { endpointRuleText } from "../filter.js";
import { cgroupPathOfPid, pidsInCgroup } from "../inspect/cgroup.js";
import { CgroupMoves } from "../inspect/cgroup-moves.js";
import { startTimeOf } from "../inspect/processes.js";
import { chooseProcesses } from "../inspect/targets.js";
import { containerRecord, isContainerId, STATE_ROOTS, Workloads } from "../inspect/workloads.js";
import { matchPolicy, type Policy, PolicyErrors, type PolicyRule, type ProcessFacts } from "../policy.js";
import { runtimeBase } from "../sys/files.js";
import { Lock } from "../sys/lock.js";
import { ProcEvents } from "../sys/proc-events.js";
import { everyProcess, processFacts, userNames } from "./facts.js";
import { enforceNewContainer } from "./hook.js";
import { type Plan, planPolicy, sameAsRule, type Target, type Watched } from "./plan.js";
import { loadPolicyFile } from "./policy-file.js";
import {
  type AgentStatus,
  MAX_LISTED,
  type RuleStatus,
  STATUS_VERSION,
  type StatusProcess,
  type TargetStatus,
  writeStatus,
} from "./status.js";

export interface AgentOptions {
  policyFile: string;
  /** the cgroup2 mount */
  mount: string;
  /** milliseconds between reconciles when nothing happens */
  resyncMs: number;
  /** what the agent does, one line at a time (texts that other users chose are in it: escape before printing) */
  log: (line: string) => void;
}

/** What a reconcile saw, for onProcesses. */
interface Seen {
  policy: Policy;
  /** whether a rule selects by something a process can change on its own: its program, name or user */
  byProcess: boolean;
  /** each cgroup that held processes, and the rules of its processes (null: of none) */
  rulesOf: Map<string, Set<string | null>>;
  /** rule + "\0" + cgroup of the processes watched by pid */
  watched: Set<string>;
  targets: string[];
  workloads: Workloads;
  users: ReadonlyMap<number, string>;
}

function seenOf(
  policy: Policy,
  facts: readonly ProcessFacts[],
  plan: Plan,
  workloads: Workloads,
  users: ReadonlyMap<number, string>,
): Seen {
  const rulesOf = new Map<string, Set<string | null>>();
  for (const f of facts) {
    if (f.cgroup === null) continue;
    let set = rulesOf.get(f.cgroup);
    if (!set) {
      set = new Set();
      rulesOf.set(f.cgroup, set);
    }
    set.add(matchPolicy(policy, f)?.name ?? null);
  }
  return {
    policy,
    byProcess: policy.rules.some((r) => r.match.process !== undefined || r.match.user !== undefined),
    rulesOf,
    watched: new Set(plan.watched.filter((w) => w.cgroup !== null).map((w) => `${w.rule.name}\0${w.cgroup}`)),
    targets: plan.targets.map((t) => t.cgroup),
    workloads,
    users,
  };
}

/** Changes closer together than this make one reconcile (a container start touches several files). */
const SETTLE_MS = 150;
/** While changes keep coming closer together than SETTLE_MS, a reconcile at least this often all the same. */
const SETTLE_MAX_MS = 1000;
/** How long a new container's directory is watched for its record (watchCreated). */
const CREATED_WATCH_MS = 5000;
/** Containers watched so at once, at most: a runtime creating more meanwhile is left to the reconcile. */
const MAX_CREATING = 64;
/** How often the ring of cgroup moves is read: a process moved is planned for within this (plus SETTLE_MS). */
const MOVES_MS = 200;

/**
 * Changes that ask for the same thing (a reconcile, or a reload of the policy), folded into one `fire`:
 * SETTLE_MS after the last change of a burst (a container's start touches several files, and the runtime writes
 * its records after the first of them), and at least every SETTLE_MAX_MS while changes keep coming (a host where
 * cgroups come and go all the time is reconciled all the same). A fire that the stream forced before SETTLE_MS of
 * quiet is followed by another one once it is quiet, for what the last changes announced.
 */
class Settle {
  private timer: NodeJS.Timeout | undefined;
  private first: number | undefined;
  private last = 0;
  private reason: string | undefined;

  constructor(private readonly fire: (reason: string) => void) {}

  change(reason: string): void {
    const now = Date.now();
    this.reason ??= reason;
    this.first ??= now;
    this.last = now;
    this.arm(now);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(now: number): void {
    clearTimeout(this.timer);
    const at = Math.min(this.last + SETTLE_MS, (this.first ?? now) + SETTLE_MAX_MS);
    this.timer = setTimeout(() => this.due(), Math.max(0, at - now));
  }

  private due(): void {
    this.timer = undefined;
    const now = Date.now();
    const reason = this.reason ?? "";
    if (now - this.last >= SETTLE_MS) {
      this.reason = undefined;
      this.first = undefined;
    } else {
      this.first = now; // forced by the stream: once more when it is quiet, or SETTLE_MAX_MS from now
      this.arm(now);
    }
    this.fire(reason);
  }
}

export class Agent {
  private policy: Policy | undefined;
  private policyHash: string | undefined;
  private loadedAt: string | null = null;
  private errors: string[] = [];
  private readonly started = new Date().toISOString();
  private watchers: FSWatcher[] = [];
  private readonly watched = new Set<string>();
  private wanted: { reload: boolean; reconcile: string | undefined } = { reload: false, reconcile: undefined };
  private readonly reconcileSoon = new Settle((reason) => {
    this.wanted.reconcile ??= reason;
    this.wake?.();
  });
  private readonly reloadSoon = new Settle(() => {
    this.wanted.reload = true;
    this.wake?.();
  });
  private wake: (() => void) | undefined;
  private lastStatus: AgentStatus | undefined;
  /** what the existing-connections pass did per cgroup, kept for the status until the enforcement changes */
  private readonly existing = new Map<string, TargetStatus["existing"]>();
  /** the passes over existing connections, one after another (see changeExisting) */
  private passes: Promise<void> = Promise.resolve();
  /** the watched rounds queued, by rule and cgroup, and what the last one of each did */
  private readonly watchQueued = new Set<string>();
  private readonly watchedDone = new Map<string, NonNullable<RuleStatus["watched"][number]["last"]>>();
  /** the latest pass queued for each cgroup */
  private readonly passOf = new Map<string, object>();
  /** the last reconcile's plan and what became of each target, for the status */
  private lastDone: { plan: Plan; states: ReadonlyMap<Target, TargetStatus> } | undefined;
  /** the kernel's process events, while they can be had */
  private procEvents: ProcEvents | undefined;
  /** processes moved into another cgroup (a tracepoint), read every MOVES_MS, while it can be had */
  private moves: { moves: CgroupMoves; timer: NodeJS.Timeout } | undefined;
  /** the containers being created whose record is awaited (watchCreated), by directory */
  private readonly creating = new Map<string, { watcher?: FSWatcher; timer: NodeJS.Timeout }>();
  /** what the last reconcile saw, to tell whether a process that exec'd changes anything (see onProcesses) */
  private seen: Seen | undefined;

  constructor(private readonly o: AgentOptions) {}

  /** Reconcile until `signal` aborts. Throws when another agent runs, or when the policy file cannot be read at all. */
  async run(signal: AbortSignal): Promise<void> {
    const base = runtimeBase();
    if (base === undefined) throw new TcpkaError("system", "no runtime directory for the agent's lock and status");
    const lock = Lock.tryTake(join(base, "agent.lock"));
    if (!lock) {
      throw new TcpkaError("system", `another tcpka agent runs on this host (it holds ${join(base, "agent.lock")})`, {
        hint: "one agent keeps a host: tcpka status says what it does; stop it first to run this one",
      });
    }
    try {
      this.load("start");
      this.watchAll();
      await this.listenToProcesses();
      this.listenToMoves();
      let next = 0;
      let reason = "start";
      const onAbort = () => this.wake?.();
      signal.addEventListener("abort", onAbort);
      try {
        while (!signal.aborted) {
          if (this.wanted.reload) {
            this.wanted.reload = false;
            if (this.load("the policy changed")) this.wanted.reconcile ??= "the policy changed";
          }
          if (this.wanted.reconcile !== undefined || Date.now() >= next) {
            reason = this.wanted.reconcile ?? (next === 0 ? reason : "resync");
            this.wanted.reconcile = undefined;
            await this.reconcile(reason, signal);
            this.watchAll(); // roots that appeared since (the first container of a runtime)
            next = Date.now() + this.o.resyncMs;
          }
          await this.sleep(next - Date.now(), signal);
        }
      } finally {
        signal.removeEventListener("abort", onAbort);
      }
    } finally {
      this.procEvents?.stop();
      this.procEvents = undefined;
      if (this.moves) {
        clearInterval(this.moves.timer);
        this.moves.moves.stop();
        this.moves = undefined;
      }
      for (const w of this.watchers) w.close();
      this.watchers = [];
      for (const c of this.creating.values()) {
        clearTimeout(c.timer);
        c.watcher?.close();
      }
      this.creating.clear();
      this.reconcileSoon.stop();
      this.reloadSoon.stop();
      await this.passes; // each ends after the round under way once the signal has aborted
      lock.release();
    }
  }

  /** What the agent covers, as of its last reconcile (what it writes to its status file). */
  status(): AgentStatus | undefined {
    return this.lastStatus;
  }

  /** Read the policy again (SIGHUP). */
  reload(): void {
    this.wanted.reload = true;
    this.wake?.();
  }

  private sleep(ms: number, signal: AbortSignal): Promise<void> {
    if (signal.aborted || this.wanted.reload || this.wanted.reconcile !== undefined) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(done, Math.max(0, ms));
      const self = this;
      function done() {
        clearTimeout(t);
        self.wake = undefined;
        resolve();
      }
      this.wake = done;
    });
  }

  /**
   * Something changed: reconcile (or read the policy again) once things settle. Reloads and reconciles settle
   * apart: a change in the policy's directory never takes the place of a reconcile that a container asked for.
   */
  private soon(reason: string, reload = false): void {
    (reload ? this.reloadSoon : this.reconcileSoon).change(reason);
  }

  /**
   * Watch the policy file's directory (an editor replaces the file; Kubernetes swaps a ConfigMap's ..data
   * symlink), every container runtime's state directory that exists, and the cgroup tree's first two levels
   * (a unit, a slice, a pod's cgroups appear there). fs.watch is inotify: no polling.
   */
  private watchAll(): void {
    const add = (dir: string, reason: string, reload = false, named?: (name: string) => void) => {
      if (this.watched.has(dir) || !existsSync(dir)) return;
      try {
        const w = watch(dir, { persistent: false }, (_event, name) => {
          if (named && typeof name === "string") named(name);
          this.soon(reason, reload);
        });
        w.on("error", () => {
          w.close();
          this.watched.delete(dir); // gone: the next reconcile watches it again where it is back
        });
        this.watchers.push(w);
        this.watched.add(dir);
      } catch {
        // not watchable (gone meanwhile, or out of inotify watches): the periodic resync still covers it
      }
    };
    add(dirname(this.o.policyFile), "the policy changed", true);
    for (const root of STATE_ROOTS) {
      const ids = (dir: string) => (name: string) => this.watchCreated(dir, name);
      add(root.dir, "a container appeared or went", false, root.namespaced ? undefined : ids(root.dir));
      if (root.namespaced) {
        for (const ns of subdirs(root.dir)) {
          const dir = join(root.dir, ns);
          add(dir, "a container appeared or went", false, ids(dir));
        }
      }
    }
    add(this.o.mount, "a cgroup appeared or went");
    for (const d of subdirs(this.o.mount)) add(join(this.o.mount, d), "a cgroup appeared or went");
  }

  /**
   * A directory appeared in a runtime's state directory `parent`: a container being created, for all a runtime
   * that runs no OCI hooks (containerd, Docker, podman without tcpka's hook) lets the agent know. runc writes the
   * container's state.json (by a rename: whole when it is there) once its cgroup is made and its init process is
   * in it, waiting for `runc start`; podman here starts the program 35-42 ms later (measured: state.json seen
   * 35-42 ms before the container's first command ran, its directory 59-70 ms before). So the rule that selects
   * the container is enforced on its cgroup at once, as the OCI hook would, rather than at the reconcile that
   * the change asks for SETTLE_MS later (which then keeps it, and covers whatever this was too late for).
   * Watched until state.json is there, for at most CREATED_WATCH_MS.
   */
  private watchCreated(parent: string, id: string): void {
    if (!this.policy?.rules.length || !isContainerId(id)) return;
    const dir = join(parent, id);
    if (this.creating.has(dir) || this.creating.size >= MAX_CREATING) return;
    const done = () => {
      const c = this.creating.get(dir);
      if (!c) return;
      this.creating.delete(dir);
      clearTimeout(c.timer);
      c.watcher?.close();
    };
    const tryNow = (): void => {
      const c = containerRecord(parent, id);
      if (!c) return;
      done();
      const policy = this.policy;
      if (!policy) return;
      try {
        const r = enforceNewContainer(c, Workloads.only(c), policy, this.o.mount, (t) => this.covers(t));
        if (r && "why" in r) this.o.log(`container ${id.slice(0, 12)}: rule ${r.rule} cannot cover it: ${r.why}`);
        else if (r) {
          const verb = r.replaced ? "updated" : "enforcing";
          this.o.log(`${verb} rule ${r.target.rule.name} on ${where(r.target)} as its runtime created it`);
        }
      } catch (e) {
        this.o.log(
          `container ${id.slice(0, 12)}: not enforced at creation (${(e as Error).message}): the reconcile will`,
        );
      }
    };
    const entry: { watcher?: FSWatcher; timer: NodeJS.Timeout } = { timer: setTimeout(done, CREATED_WATCH_MS) };
    entry.timer.unref();
    this.creating.set(dir, entry);
    try {
      entry.watcher = watch(dir, { persistent: false }, (_event, name) => {
        if (name === "state.json" || name === "status") tryNow();
      });
      entry.watcher.on("error", done);
    } catch {
      done(); // gone already (a container removed), or not a directory
      return;
    }
    tryNow(); // written before the watch began
  }

  /**
   * Whether `t` (a new container's cgroup and its rule) is covered already: enforced so for the agent on this
   * very cgroup (the OCI hook made it), or below a cgroup that the last reconcile enforced with the same rule (a pod's).
   */
  private covers(t: Target): boolean {
    const above = this.lastDone?.plan.targets.some(
      (p) => p.rule.name === t.rule.name && t.cgroup.startsWith(`${p.cgroup}/`),
    );
    if (above) return true;
    // Attached to this cgroup, not a pin left of a cgroup of the same path that is gone (a restarted container).
    const l = enforcementOf(t.cgroup, this.o.mount);
    return l?.where === "here" && l.enforcement?.owner === "agent" && sameAsRule(l.enforcement, t.rule);
  }

  /**
   * Hear of every process that execs a program, changes its uid or its name (the kernel's process events), so
   * that one which starts in a cgroup that already exists is planned for at once rather than at the next resync.
   * Without them (no CAP_NET_ADMIN, not in the host's namespaces), the resync still finds it: said in one line.
   */
  private async listenToProcesses(): Promise<void> {
    try {
      this.procEvents = await ProcEvents.start(
        (processes, lost) => this.onProcesses(processes, lost),
        (why) => {
          this.procEvents = undefined;
          this.o.log(`process events stopped (${why}): processes starting in existing cgroups are seen at each resync`);
          this.soon("process events stopped");
        },
      );
    } catch (e) {
      this.o.log(
        `no process events (${(e as Error).message}): a process that starts in a cgroup that already exists is seen at the next resync`,
      );
    }
  }

  /**
   * Hear of every process moved into another cgroup (a write to cgroup.procs: what the process events leave out),
   * so that one moved into an enforced cgroup, or into one a rule selects, is planned for at once rather than at
   * the next resync. Without it (no BTF tracepoints, not allowed), the resync still finds it: said in one line.
   */
  private listenToMoves(): void {
    let moves: CgroupMoves;
    try {
      moves = CgroupMoves.start();
    } catch (e) {
      this.o.log(
        `no cgroup moves (${(e as Error).message}): a process moved into a cgroup that already exists is seen at the next resync`,
      );
      return;
    }
    const timer = setInterval(() => {
      const { pids, lost } = moves.take();
      const found: [number, string][] = [];
      for (const pid of pids) {
        const cgroup = cgroupPathOfPid(pid);
        if (typeof cgroup === "string") found.push([pid, cgroup]);
      }
      if (found.length || lost) this.onProcesses(found, lost, "moved");
    }, MOVES_MS);
    timer.unref();
    this.moves = { moves, timer };
  }

  /**
   * Processes that exec'd, changed uid or name: reconcile when one of them makes the plan differ from the last
   * reconcile's. Cheap for most: a process in a cgroup seen then, under a policy that selects by cgroup only
   * (unit, container, pod, cgroup), is under the same rule as its cgroup's other processes. Otherwise its facts
   * are read and matched: it matters when its rule is not among its cgroup's (a new rule there, or a rule's
   * process in a cgroup it enforces that is now shared), when its rule watches its cgroup's processes by pid (a new
   * pid to watch), or, in a cgroup not seen, when any rule selects it or it is below an enforced cgroup.
   */
  private onProcesses(
    processes: readonly [number, string][],
    lost: boolean,
    how: "started" | "moved" = "started",
  ): void {
    if (lost) {
      this.soon(how === "moved" ? "cgroup moves were lost" : "process events were lost");
      return;
    }
    const policy = this.policy;
    const seen = this.seen;
    if (!policy || !seen || seen.policy !== policy) return; // a reconcile for this policy is to come anyway
    let fresh: Workloads | undefined;
    for (const [pid, cgroup] of processes) {
      if (pid === process.pid) continue;
      const rules = seen.rulesOf.get(cgroup);
      if (rules && !seen.byProcess) continue;
      if (!rules) fresh ??= Workloads.load(); // a cgroup new since: its container's records may be new too
      const f = processFacts(pid, rules ? seen.workloads : (fresh as Workloads), seen.users);
      if (!f) continue;
      const rule = matchPolicy(policy, f)?.name ?? null;
      const matters = rules
        ? !rules.has(rule) || seen.watched.has(`${rule}\0${cgroup}`)
        : rule !== null || seen.targets.some((t) => cgroup.startsWith(`${t}/`));
      if (matters) {
        this.soon(how === "moved" ? "a process moved to another cgroup" : "a process started");
        return;
      }
    }
  }

  /** Read the policy file; true when a new good policy is now in force. */
  private load(why: string): boolean {
    let text: string;
    let policy: Policy;
    try {
      ({ policy, text } = loadPolicyFile(this.o.policyFile));
    } catch (e) {
      if (!(e instanceof TcpkaError)) throw e;
      this.errors = e instanceof PolicyErrors ? e.message.split("\n") : [e.message];
      for (const line of this.errors) this.o.log(`policy error: ${line}`);
      this.o.log(
        this.policy
          ? `the policy loaded at ${this.loadedAt} stays in force; nothing was changed`
          : "no policy is in force: the enforcements in place are left as they are",
      );
      this.writeStatus();
      return false;
    }
    this.errors = [];
    const hash = createHash("sha256").update(text).digest("hex");
    if (hash === this.policyHash) return false; // the same text (a touch, a ConfigMap resync)
    this.policy = policy;
    this.policyHash = hash;
    this.loadedAt = new Date().toISOString();
    const n = policy.rules.length;
    this.o.log(`policy ${this.o.policyFile}: ${n} rule${n === 1 ? "" : "s"} (${why})`);
    return true;
  }

  /** Make the pins say what the policy says, for the processes there are now. */
  private async reconcile(reason: string, signal: AbortSignal): Promise<void> {
    const policy = this.policy;
    const t0 = Date.now();
    if (!policy) {
      this.writeStatus({ at: new Date().toISOString(), reason, ms: 0 }, undefined, []);
      return;
    }
    if (!bpffsMounted() && !hostMountNamespace()) {
      // Pins made in a mount namespace of the agent's own (a service's sandbox) would be seen by no one else,
      // and made again beside the host's once it mounts bpffs: stop, and let the service mount it and restart us.
      throw new TcpkaError(
        "system",
        `no BPF file system at ${BPF_FS}, and this agent runs in a mount namespace of its own: stopping rather than pinning where nothing else sees it`,
        {
          hint: `mount it in the host's namespace (mount -t bpf bpf ${BPF_FS}); tcpka-agent.service does so when it starts`,
        },
      );
    }
    const workloads = Workloads.load();
    const users = userNames();
    const facts = everyProcess(workloads, users);
    const plan = planPolicy(policy, facts);
    this.seen = seenOf(policy, facts, plan, workloads, users);
    const mine = new Map(agentEnforcements().map((a) => [a.cgroup, a]));
    const listed = new Map(listEnforcements(this.o.mount).map((l) => [l.cgroup, l]));
    const states = new Map<Target, TargetStatus>();
    let made = 0;
    for (const t of plan.targets) {
      if (signal.aborted) return;
      const own = mine.get(t.cgroup);
      const l = listed.get(t.cgroup);
      const status: TargetStatus = targetStatus(t);
      states.set(t, status);
      if (l && !own && !this.removeEmptyPinDir(l)) {
        status.state = "failing";
        status.error = l.enforcement
          ? "an operator's tcpka enforce is in place here: the agent leaves it as it is"
          : `a pin directory that is not the agent's is here (${l.unknown ?? "?"}): the agent leaves it as it is; tcpka enforce --remove --cgroup ${t.cgroup} removes it`;
        continue;
      }
      if (own && l?.enforcement && l.where === "here" && sameAsRule(l.enforcement, t.rule)) {
        status.since = l.enforcement.since;
        status.pin = l.name;
        // As the policy says: the pins stay as they are. Made by an agent before this one, which may have been
        // killed before its pass over the connections that existed then had finished: this one makes that pass
        // once (it changes only what is not as the rule says), behind the reconcile.
        if (!this.existing.has(t.cgroup)) {
          this.changeExisting(t, { pinDir: join(PIN_ROOT, l.name), noHook: !l.hook }, signal, "adopted ");
        }
        continue;
      }
      try {
        const r = enforceOnCgroup(join(this.o.mount, t.cgroup), this.o.mount, specOf(t.rule), { rule: t.rule.name });
        made++;
        status.since = r.enforcement.since;
        status.pin = r.enforcement.name;
        this.o.log(`${r.replaced ? "updated" : "enforcing"} rule ${t.rule.name} on ${where(t)}`);
        if (r.noHook) this.o.log(`warning: ${t.cgroup}: programs' own later keepalive calls are not seen: ${r.noHook}`);
        this.changeExisting(t, { pinDir: r.pinDir, noHook: r.noHook !== undefined }, signal);
      } catch (e) {
        if (!(e instanceof TcpkaError)) throw e;
        status.state = "failing";
        status.error = e instanceof NotOwned ? "an operator's tcpka enforce is in place here" : e.message;
        this.o.log(`cannot enforce rule ${t.rule.name} on ${where(t)}: ${e.message}`);
      }
    }
    for (const w of plan.watched) this.watchRound(w, signal);
    const removed = this.removeStale(policy, plan, mine);
    const ms = Date.now() - t0;
    const failing = [...states.values()].filter((st) => st.state === "failing").length;
    // The status first: whoever reads the line below finds the status of this reconcile.
    this.writeStatus({ at: new Date().toISOString(), reason, ms }, { plan, states }, removed);
    if (made || removed.length || failing || plan.uncovered.length || reason !== "resync") {
      this.o.log(
        `reconciled (${reason}) in ${ms} ms: ${plan.targets.length} target${plan.targets.length === 1 ? "" : "s"}, ${made} changed, ${removed.length} removed, ${failing} failing, ${plan.watched.length} watched, ${plan.uncovered.length} not coverable`,
      );
    }
  }

  /**
   * An empty pin directory of a cgroup the agent wants: what a tcpka killed between its mkdir and its first pin
   * leaves (the agent pins its description first, so one of its own is known as its own from then on; an
   * operator's run pins its counters first). Nothing enforces there, and enforce takes it for a run in progress
   * and leaves it, so the cgroup would never be covered: removed, under enforce's lock (src/enforce/cgroup.ts:
   * no tcpka that takes the lock is filling it meanwhile), with rmdir (which removes only an empty directory).
   * True when it was removed.
   */
  private removeEmptyPinDir(l: Listed): boolean {
    if (l.enforcement || l.counts || l.hook) return false;
    const dir = join(PIN_ROOT, l.name);
    const base = runtimeBase();
    let lock: Lock | undefined;
    try {
      lock = base === undefined ? undefined : Lock.take(join(base, "enforce.lock"), `remove the empty ${dir}`);
      if (readdirSync(dir).length !== 0) return false;
      rmdirSync(dir);
    } catch (e) {
      if (!(e instanceof TcpkaError) && !(e as NodeJS.ErrnoException).code) throw e;
      return false; // not empty (ENOTEMPTY), gone, or the lock not to be had: left as it is
    } finally {
      lock?.release();
    }
    this.o.log(`removed the empty pin directory ${dir} (a tcpka was killed as it made it)`);
    return true;
  }

  /** The connections of a target that exist already: changed in the kernel, marked for its setsockopt program. */
  /**
   * The connections of a target that exist already, changed in the kernel and marked for its setsockopt program
   * (the marks pinned in `r.pinDir`, where rules choose the connections): queued behind the passes before it, so
   * that no reconcile waits for one (a pass is paced over up to an idle time: live/spread.ts). A later pass of
   * the same cgroup (new settings) takes the place of one still queued.
   */
  private changeExisting(t: Target, r: { pinDir: string; noHook: boolean }, signal: AbortSignal, how = ""): void {
    const spec = specOf(t.rule);
    this.existing.set(t.cgroup, "changing");
    const token = {};
    this.passOf.set(t.cgroup, token);
    const pass = async () => {
      if (signal.aborted || this.passOf.get(t.cgroup) !== token) return; // stopped, removed, or superseded
      const summary = await withMarks(r.noHook ? undefined : r.pinDir, (marksFd) =>
        LiveSession.matching(
          { only: [...t.rule.only], except: [...t.rule.except] },
          { disable: false, settings: spec.settings, mode: spec.mode },
          false,
          marksFd === undefined ? {} : { marksFd },
        ).watch(chooseProcesses({ cgroups: [join(this.o.mount, t.cgroup)] }), { signal }),
      );
      if (this.passOf.get(t.cgroup) !== token) return;
      if (summary.failed) {
        const why = errorsText(summary.errors);
        this.o.log(
          `rule ${t.rule.name} on ${where(t)}: ${summary.failed} existing connections could not be changed (${why})`,
        );
      }
      if (summary.changed) {
        this.o.log(`${how}rule ${t.rule.name} on ${where(t)}: ${summary.changed} existing connections changed`);
      }
      this.existing.set(t.cgroup, { changed: summary.changed, unchanged: summary.unchanged, failed: summary.failed });
      this.writeStatus();
    };
    this.passes = this.passes.then(pass).catch((e: unknown) => {
      this.existing.delete(t.cgroup); // tried again at the next reconcile
      this.o.log(
        `cannot change the existing connections of rule ${t.rule.name} on ${where(t)}: ${(e as Error).message}`,
      );
    });
  }

  /**
   * One round over the connections of processes a rule selects whose cgroup cannot be enforced whole: changed by
   * pid, as `tcpka enable --pid` does (in the kernel where it can), behind the passes before it. A round of the
   * same processes still queued is not queued twice. New connections of theirs wait for the next reconcile.
   */
  private watchRound(w: Watched, signal: AbortSignal): void {
    const key = `${w.rule.name}\n${w.cgroup ?? ""}`;
    if (this.watchQueued.has(key)) return;
    this.watchQueued.add(key);
    const spec = specOf(w.rule);
    // The processes as they were planned: a pid that a new process took since (the round may run a while after
    // the plan, behind a pass) is not theirs, and its sockets are left alone.
    const planned = w.processes.map((p) => ({ pid: p.pid, start: startTimeOf(p.pid) }));
    const still = () =>
      planned.filter((p) => p.start !== undefined && startTimeOf(p.pid) === p.start).map((p) => p.pid);
    const round = async () => {
      this.watchQueued.delete(key);
      if (signal.aborted) return;
      const summary = await LiveSession.matching(
        { only: [...w.rule.only], except: [...w.rule.except] },
        { disable: false, settings: spec.settings, mode: spec.mode },
      ).watch({ pids: still, fixed: true }, { signal });
      const who = `${w.processes.length} process${w.processes.length === 1 ? "" : "es"}${w.cgroup ? ` in ${w.cgroup}` : ""}`;
      if (summary.changed) this.o.log(`rule ${w.rule.name}, watched (${who}): ${summary.changed} connections changed`);
      if (summary.failed) {
        const why = errorsText(summary.errors);
        this.o.log(
          `rule ${w.rule.name}, watched (${who}): ${summary.failed} connections could not be changed (${why})`,
        );
      }
      this.watchedDone.set(key, {
        at: new Date().toISOString(),
        changed: summary.changed,
        unchanged: summary.unchanged,
        failed: summary.failed,
      });
      this.writeStatus();
    };
    this.passes = this.passes.then(round).catch((e: unknown) => {
      this.o.log(`rule ${w.rule.name}: a watched round failed: ${(e as Error).message}`);
    });
  }

  /**
   * The agent's enforcements that no target asks for: removed, unless the cgroup is there with no process in it
   * and its rule is still in the policy (a unit or container restarting keeps its cover through the restart).
   */
  private removeStale(
    policy: Policy,
    plan: Plan,
    mine: ReadonlyMap<string, { enforcement: { rule?: string } }>,
  ): AgentStatus["removed"] {
    const wanted = new Set(plan.targets.map((t) => t.cgroup));
    const rules = new Set(policy.rules.map((r) => r.name));
    const removed: AgentStatus["removed"] = [];
    for (const [cgroup, a] of mine) {
      if (wanted.has(cgroup)) continue;
      const dir = join(this.o.mount, cgroup);
      const rule = a.enforcement.rule ?? null;
      if (rule !== null && rules.has(rule) && existsSync(join(dir, "cgroup.procs")) && pidsInCgroup(dir).length === 0) {
        continue;
      }
      try {
        removeEnforcement(cgroup, this.o.mount, "agent");
        this.existing.delete(cgroup);
        this.passOf.delete(cgroup);
        removed.push({ cgroup, rule });
        const why = !existsSync(join(dir, "cgroup.procs"))
          ? "its cgroup is gone"
          : [...wanted].some((w) => cgroup.startsWith(`${w}/`))
            ? "its pod's cgroup is enforced instead"
            : rule !== null && rules.has(rule)
              ? "its processes are not that rule's now"
              : "the rule is not in the policy now";
        this.o.log(`removed the enforcement of rule ${rule ?? "?"} on ${cgroup} (${why})`);
      } catch (e) {
        if (!(e instanceof TcpkaError)) throw e;
        this.o.log(`cannot remove the enforcement on ${cgroup}: ${e.message}`);
      }
    }
    return removed;
  }

  private writeStatus(
    reconciled?: AgentStatus["reconciled"],
    done?: { plan: Plan; states: ReadonlyMap<Target, TargetStatus> },
    removed?: AgentStatus["removed"],
  ): void {
    if (done) this.lastDone = done;
    const last = this.lastDone;
    const policy = this.policy;
    const rules: RuleStatus[] = (policy?.rules ?? []).map((r) => ({
      name: r.name,
      line: r.line,
      mechanism: r.mechanism,
      mode: r.mode,
      idle_s: r.settings.idle ?? null,
      interval_s: r.settings.interval ?? null,
      count: r.settings.count ?? null,
      user_timeout_ms: r.settings.userTimeout ?? null,
      preset: r.preset ?? null,
      only: r.only.map(endpointRuleText),
      except: r.except.map(endpointRuleText),
      targets: last
        ? last.plan.targets
            .filter((t) => t.rule === r)
            .map((t) => {
              const status = last.states.get(t) ?? targetStatus(t);
              const existing = this.existing.get(t.cgroup);
              return existing === undefined || status.state !== "enforced" ? status : { ...status, existing };
            })
        : [],
      watched: last
        ? last.plan.watched
            .filter((w) => w.rule === r)
            .map((w) => {
              const done = this.watchedDone.get(`${r.name}\n${w.cgroup ?? ""}`);
              return { cgroup: w.cgroup, ...listedProcesses(w.processes), why: w.why, ...(done ? { last: done } : {}) };
            })
        : [],
      uncovered: last
        ? last.plan.uncovered
            .filter((u) => u.rule === r)
            .map((u) => ({ cgroup: u.cgroup, ...listedProcesses(u.processes), why: u.why }))
        : [],
    }));
    const previous = this.lastStatus;
    const s: AgentStatus = {
      version: STATUS_VERSION,
      pid: process.pid,
      started: this.started,
      policy: { file: this.o.policyFile, loaded: this.loadedAt, errors: this.errors },
      reconciled: reconciled ?? previous?.reconciled ?? null,
      rules,
      removed: removed ?? previous?.removed ?? [],
    };
    this.lastStatus = s;
    try {
      writeStatus(s);
    } catch (e) {
      this.o.log(`cannot write the status: ${(e as Error).message}`);
    }
  }
}

/** "3 setsockopt: EPERM, 1 pidfd_getfd: ESRCH": a live session's failures, for the log. */
function errorsText(errors: Readonly<Record<string, number>>): string {
  return Object.entries(errors)
    .map(([k, v]) => `${v} ${k}`)
    .join(", ");
}

function specOf(rule: PolicyRule): EnforceSpec {
  return { settings: rule.settings, mode: rule.mode, only: rule.only, except: rule.except };
}

function listedProcesses(p: readonly StatusProcess[]): { processes: StatusProcess[]; process_count: number } {
  return { processes: p.slice(0, MAX_LISTED), process_count: p.length };
}

function targetStatus(t: Target): TargetStatus {
  return {
    cgroup: t.cgroup,
    container: t.container,
    pod: t.pod,
    unit: t.unit,
    ...listedProcesses(t.processes),
    state: "enforced",
  };
}

/** A target as the log names it: its pod, container or unit, and its cgroup. */
function where(t: Target): string {
  const what = t.pod ? `pod ${t.pod}` : t.container ? `container ${t.container}` : t.unit ? `unit ${t.unit}` : null;
  return what ? `${what} (${t.cgroup})` : t.cgroup;
}

/** Whether this process shares the mount namespace of the host's init (pid 1), as far as it can tell. */
function hostMountNamespace(): boolean {
  const own = statSync("/proc/self/ns/mnt");
  const same = (pid: number) => {
    const other = statSync(`/proc/${pid}/ns/mnt`);
    return own.ino === other.ino && own.dev === other.dev;
  };
  try {
    return same(1);
  } catch {
    // pid 1's may be closed to us even as root (here: the VM's init, EACCES). kthreadd's is the initial mount
    // namespace too (kernel threads share init_nsproxy), and readable: pid 2 of the host's pid namespace, its
    // parent 0 (kernel/kthread.c). Without either (another pid namespace): the mount is then its own to make.
    try {
      const stat = readFileSync("/proc/2/stat", "latin1");
      if (/^2 \(kthreadd\) S 0 /.test(stat)) return same(2);
    } catch {}
    return true;
  }
}

function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch {
    return [];
  }
}
