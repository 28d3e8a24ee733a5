/**
 * The host's cgroup namespace, for a tcpka that runs in a container of its own (a Kubernetes DaemonSet: on
 * cgroup v2 the runtimes give every container a private cgroup namespace, and pod specs cannot ask for the
 * host's). There, /proc/PID/cgroup of every other process reads relative to tcpka's own cgroup
 * ("0::/../../kubepods.slice/…": proc_cgroup_show prints paths from the reader's namespace root), so no cgroup
 * path, pod or container would be found. With the host's pid namespace (/proc/1 is the host's init) and
 * CAP_SYS_ADMIN, tcpka moves into pid 1's cgroup namespace before it reads anything.
 */
import { closeSync, constants, openSync, statSync } from "node:fs";
import { CLONE_NEWCGROUP } from "../kernel/constants.js";

function nsIno(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
}

/**
 * Join pid 1's cgroup namespace when it is not this process's: true when moved. setns(CLONE_NEWCGROUP) moves the
 * calling thread only (cgroupns_install) and needs no single thread, so call it on the main thread before the
 * cgroup paths are read; threads made later inherit it. Where it cannot (no CAP_SYS_ADMIN or no ptrace access to
 * pid 1: EPERM), nothing changes and false is returned: tcpka then sees what its namespace shows.
 */
export async function joinHostCgroupNamespace(): Promise<boolean> {
  const own = nsIno("/proc/self/ns/cgroup");
  const init = nsIno("/proc/1/ns/cgroup");
  if (own === undefined || init === undefined || own === init) return false;
  let fd: number;
  try {
    fd = openSync("/proc/1/ns/cgroup", constants.O_RDONLY); // (Node opens every file O_CLOEXEC);
  } catch {
    return false; // EACCES: pid 1 is not ours to look into
  }
  try {
    const { setns } = await import("./libc.js");
    setns(fd, CLONE_NEWCGROUP);
    return true;
  } catch {
    return false;
  } finally {
    closeSync(fd);
  }
}
