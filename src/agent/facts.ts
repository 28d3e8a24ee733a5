/**
 * What a policy rule can match a process by (ProcessFacts of src/policy.ts), read from /proc and the container
 * runtimes' records: its name, executable, user, cgroup, systemd unit, container and pod. Every text here was
 * chosen by whoever started the process or the container: kept exact, escaped only where it is printed.
 */
import { readFileSync, readlinkSync } from "node:fs";
import { cgroupPathOfPid } from "../inspect/cgroup.js";
import { commOf, listPids, mayHoldSockets } from "../inspect/processes.js";
import { Workloads } from "../inspect/workloads.js";
import type { ProcessFacts } from "../policy.js";

/** The facts of one process, or undefined when it has gone. `workloads` and `users` are shared by a whole pass. */
export function processFacts(
  pid: number,
  workloads: Workloads,
  users: ReadonlyMap<number, string> = userNames(),
): ProcessFacts | undefined {
  const cgroup = cgroupPathOfPid(pid);
  if (cgroup === undefined) return undefined;
  let exe: string | null = null;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    exe = null; // another user's process, or a kernel thread
  }
  let uid: number | null = null;
  try {
    const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"));
    uid = m ? Number(m[1]) : null;
  } catch {
    return undefined; // gone since
  }
  const w = workloads.ofPid(pid);
  const c = w?.container ?? null;
  return {
    pid,
    comm: commOf(pid),
    exe,
    uid,
    user: uid === null ? null : (users.get(uid) ?? null),
    cgroup,
    unit: w?.unit ?? null,
    container: c ? { name: c.name, id: c.id, image: c.image, labels: c.labels } : null,
    pod: c?.pod ?? null,
  };
}

/** The facts of every process that may hold sockets (no kernel threads, no zombies), tcpka itself left out. */
export function everyProcess(workloads: Workloads = Workloads.load(), users = userNames()): ProcessFacts[] {
  const out: ProcessFacts[] = [];
  for (const pid of listPids()) {
    if (pid === process.pid || !mayHoldSockets(pid)) continue;
    const f = processFacts(pid, workloads, users);
    if (f) out.push(f);
  }
  return out;
}

/** uid → name, from /etc/passwd (empty without one: numbers only). */
export function userNames(): Map<number, string> {
  const names = new Map<number, string>();
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      const uid = Number(f[2]);
      if (f.length >= 3 && f[2] !== "" && Number.isSafeInteger(uid) && !names.has(uid)) names.set(uid, f[0] ?? "");
    }
  } catch {
    // no passwd file
  }
  return names;
}
