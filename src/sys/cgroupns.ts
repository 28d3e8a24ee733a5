/**
 * The host's cgroup namespace, for a tcpka that runs in a container of its own (a Kubernetes DaemonSet: on
 * cgroup v2 the runtimes give every container a private cgroup namespace, and pod specs cannot ask for the
 * host's). There, /proc/PID/cgroup of every other process reads relative to tcpka's own cgroup
 * ("0::/../../kubepods.slice/…": proc_cgroup_show prints paths from the reader's namespace root), so no cgroup
 * path, pod or container would be found. With the host's pid namespace (/proc/1 is the host's init) and
 * CAP_SYS_ADMIN, tcpka moves into the host's cgroup namespace before it reads anything.
 */
import { closeSync, constants, fstatSync, openSync, readdirSync, statSync } from "node:fs";
import { CLONE_NEWCGROUP } from "../kernel/constants.js";

function nsIno(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
}

/** The initial cgroup namespace's fixed inode number (include/linux/proc_ns.h, PROC_CGROUP_INIT_INO). */
export const PROC_CGROUP_INIT_INO = 0xeffffffb;

/** An open /proc/PID/ns/cgroup and its inode number, or undefined (gone, or not ours to look into: EACCES). */
function openNs(pid: number | string): { fd: number; ino: number } | undefined {
  let fd: number;
  try {
    fd = openSync(`/proc/${pid}/ns/cgroup`, constants.O_RDONLY); // (Node opens every file O_CLOEXEC)
  } catch {
    return undefined;
  }
  try {
    return { fd, ino: fstatSync(fd).ino };
  } catch {
    closeSync(fd);
    return undefined;
  }
}

/**
 * Join the host's cgroup namespace when it is not this process's: true when moved. The host's is pid 1's; where
 * pid 1 cannot be looked into (a pid 1 with capabilities that tcpka lacks, under an LSM that refuses: seen on
 * this project's machines), the initial cgroup namespace, found in the first process that is in it.
 * setns(CLONE_NEWCGROUP) moves the calling thread only (cgroupns_install) and needs no single thread, so call it
 * on the main thread before any cgroup path is read; threads made later inherit it. Where it cannot (no
 * CAP_SYS_ADMIN, no such process: EPERM), nothing changes and false is returned: tcpka then sees what its
 * namespace shows.
 */
export async function joinHostCgroupNamespace(): Promise<boolean> {
  const own = nsIno("/proc/self/ns/cgroup");
  if (own === undefined || own === PROC_CGROUP_INIT_INO) return false;
  let ns = openNs(1);
  if (ns && ns.ino === own) {
    closeSync(ns.fd);
    return false; // pid 1's own (a container without the host's pid namespace)
  }
  if (!ns) {
    let names: string[] = [];
    try {
      names = readdirSync("/proc");
    } catch {
      return false;
    }
    for (const name of names) {
      if (!/^\d+$/.test(name)) continue;
      const n = openNs(name);
      if (n?.ino === PROC_CGROUP_INIT_INO) {
        ns = n;
        break;
      }
      if (n) closeSync(n.fd);
    }
  }
  if (!ns) return false;
  try {
    const { setns } = await import("./libc.js");
    setns(ns.fd, CLONE_NEWCGROUP);
    return true;
  } catch {
    return false;
  } finally {
    closeSync(ns.fd);
  }
}
