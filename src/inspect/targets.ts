/**
 * Which processes a command works on, and which cgroup: processes chosen by pid, by name, by cgroup or all of
 * them, or a program with its children, re-read at every round of a watch; a cgroup named by its path, by a
 * systemd unit or by a process in it. What is wrong with a choice is a usage error that names the flag.
 */

import { usage } from "../errors.js";
import { parsePid } from "../filter.js";
import { cgroupExists, cgroupOfPid, cgroupOfUnit, cgroupPath, pidsInCgroup, resolveCgroup } from "./cgroup.js";
import { commOf, listPids, mayHoldSockets, processExists, processOf, withDescendants } from "./processes.js";

/** The processes a command works on, as they are now. */
export interface ProcessTargets {
  pids(): number[];
  /** No process can join (only pids, or a program and its children): once none is left, a watch is over. */
  fixed: boolean;
}

/** Processes by pid (a thread stands for its process), by name (/proc/PID/comm), by cgroup (and below), or all. */
export interface ProcessChoice {
  pids?: readonly number[];
  comms?: readonly string[];
  /** as a user gives them: see resolveCgroup */
  cgroups?: readonly string[];
  all?: boolean;
}

/**
 * The processes of a choice, tcpka itself left out. A --comm, --cgroup or --all target gains new processes, so
 * pids() reads them again each time; what a search finds may be a kernel thread or a zombie, which holds no
 * sockets and, as non-root, cannot be read: those are left out too.
 */
export function chooseProcesses(c: ProcessChoice): ProcessTargets {
  // A thread id stands for its process: fds belong to the process.
  const pids = [...new Set((c.pids ?? []).map(processOf))];
  const comms = new Set(c.comms ?? []);
  const cgroups = (c.cgroups ?? []).map((path) => resolveCgroup(path));
  for (const pid of pids) if (!processExists(pid)) throw usage(`--pid ${pid}: no such process`);
  const all = c.all === true;
  const self = process.pid;
  const resolve = () => {
    const out = new Set<number>(pids.filter(processExists));
    const add = (found: readonly number[]) => {
      for (const p of found) if (mayHoldSockets(p)) out.add(p);
    };
    if (all) add(listPids());
    else if (comms.size) add(listPids().filter((p) => comms.has(commOf(p))));
    for (const dir of cgroups) add(pidsInCgroup(dir));
    out.delete(self);
    return [...out];
  };
  return { pids: resolve, fixed: !all && !comms.size && !cgroups.length };
}

/** A program and every descendant of it, as long as it runs. */
export function processTree(root: number): ProcessTargets {
  return { pids: () => withDescendants(root), fixed: true };
}

/** A cgroup as --cgroup PATH, --unit NAME or --pid PID give it, as typed. */
export interface CgroupChoice {
  cgroup?: string;
  unit?: string;
  pid?: string;
}

/** The cgroup directory of a choice (at most one of its fields); undefined when it has none. */
export function chooseCgroup(c: CgroupChoice, mount: string): string | undefined {
  const given = (["cgroup", "unit", "pid"] as const).filter((k) => c[k] !== undefined);
  if (given.length > 1) throw usage(`give one target, not ${given.map((k) => `--${k}`).join(" and ")}`);
  if (c.cgroup !== undefined) return resolveCgroup(c.cgroup, mount);
  if (c.unit !== undefined) return resolveCgroup(cgroupOfUnit(c.unit), mount);
  if (c.pid !== undefined) {
    const p = parsePid("--pid", c.pid);
    if (!processExists(p)) throw usage(`--pid ${c.pid}: no such process`);
    return cgroupOfPid(p, mount);
  }
  return undefined;
}

/**
 * The cgroup path (inside the mount, "/a/b") that a choice names, also when its --cgroup is gone (a stopped
 * service): what was enforced on it is still found by the path. undefined when the choice has none.
 */
export function chosenCgroupPath(c: CgroupChoice, mount: string): string | undefined {
  const gone = c.cgroup !== undefined && !cgroupExists(c.cgroup, mount);
  const dir = gone ? c.cgroup : chooseCgroup(c, mount);
  return dir === undefined ? undefined : cgroupPath(dir, mount);
}
