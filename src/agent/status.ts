/**
 * What the agent says it does, for `tcpka status`: one JSON file that the agent replaces atomically after every
 * reconcile, in root's runtime directory (/run/tcpka/agent.json, 0600: it names other users' processes and
 * containers). `tcpka status` adds what the kernel counts now (the pins' counters) when it reads it.
 */
import { lstatSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { TcpkaError } from "../errors.js";
import { runtimeBase, writeFileAtomic } from "../sys/files.js";
import { Lock } from "../sys/lock.js";

export const STATUS_VERSION = 1;

export interface StatusProcess {
  pid: number;
  comm: string;
}

export interface TargetStatus {
  cgroup: string;
  container: string | null;
  pod: string | null;
  unit: string | null;
  /** the first processes in it (at most MAX_LISTED), and how many there are */
  processes: StatusProcess[];
  process_count: number;
  /** "enforced": the rule's programs are attached there; "failing": they could not be, `error` says why */
  state: "enforced" | "failing";
  error?: string;
  /** when the enforcement was made (kept across agent restarts: the pin's description) */
  since?: string;
  /** the pin directory under /sys/fs/bpf/tcpka */
  pin?: string;
  /**
   * the connections that existed when it was made, changed then (enforce --existing's pass, behind the
   * reconcile: "changing" while it is queued or runs)
   */
  existing?: { changed: number; unchanged: number; failed: number } | "changing";
}

export interface RuleStatus {
  name: string;
  line: number;
  mechanism: string;
  mode: string;
  idle_s: number | null;
  interval_s: number | null;
  count: number | null;
  user_timeout_ms: number | null;
  preset: string | null;
  only: string[];
  except: string[];
  targets: TargetStatus[];
  /**
   * processes the rule selects whose cgroup cannot be enforced whole (why): their connections changed by pid at
   * every reconcile, and what the last round did
   */
  watched: {
    cgroup: string | null;
    processes: StatusProcess[];
    process_count: number;
    why: string;
    last?: { at: string; changed: number; unchanged: number; failed: number };
  }[];
  /** processes the rule selects that the agent cannot cover, and why */
  uncovered: { cgroup: string | null; processes: StatusProcess[]; process_count: number; why: string }[];
}

export interface AgentStatus {
  version: number;
  pid: number;
  started: string;
  policy: {
    file: string;
    /** when the policy in force was read; null: none yet (the enforcements in place are left as they are) */
    loaded: string | null;
    /** the errors of the file as it is now, one line each; the policy in force is then the last good one */
    errors: string[];
  };
  /** the last reconcile: when, why and how long it took */
  reconciled: { at: string; reason: string; ms: number } | null;
  rules: RuleStatus[];
  /** the agent's enforcements it removed in the last reconcile (their rule or cgroup is gone) */
  removed: { cgroup: string; rule: string | null }[];
}

/** Lists of processes in the status are cut here: the file stays small on a host with thousands of them. */
export const MAX_LISTED = 20;

export function statusPath(): string | undefined {
  const base = runtimeBase();
  return base === undefined ? undefined : join(base, "agent.json");
}

export function writeStatus(s: AgentStatus): void {
  const path = statusPath();
  if (path !== undefined) writeFileAtomic(path, `${JSON.stringify(s, null, 1)}\n`, 0o600);
}

/** The status the agent wrote, or undefined when there is none; a file that is not root's regular one is refused. */
export function readStatus(): AgentStatus | undefined {
  const path = statusPath();
  if (path === undefined) return undefined;
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (!st) return undefined;
  if (!st.isFile() || st.uid !== process.geteuid?.()) {
    throw new TcpkaError("system", `${path} is not a regular file of this user: not the agent's`);
  }
  let s: AgentStatus;
  try {
    s = JSON.parse(readFileSync(path, "utf8")) as AgentStatus;
  } catch (e) {
    throw new TcpkaError("system", `${path}: not the agent's status (${(e as Error).message})`);
  }
  if (s.version !== STATUS_VERSION)
    throw new TcpkaError("system", `${path}: status version ${s.version}, not ${STATUS_VERSION}`);
  return s;
}

/** Whether an agent holds its lock now (a pid in the status may have been reused; a lock cannot be). */
export function agentRuns(): boolean {
  const base = runtimeBase();
  if (base === undefined) return false;
  const lock = Lock.tryTake(join(base, "agent.lock"), { shared: true });
  lock?.release();
  return lock === undefined;
}
