/**
 * The network namespaces of the host, each once: those of every process (/proc/PID/ns/net) and those that
 * `ip netns` keeps without a process (bind mounts in /run/netns). A namespace is known by the inode number of
 * its nsfs file, which is what a socket's net->ns.inum is and what /proc/PID/ns/net links to as net:[N].
 * A namespace that only a socket or an open nsfs fd keeps alive is not found here.
 */
import { readdirSync, statSync } from "node:fs";
import { listPids } from "./processes.js";

export interface NetNamespace {
  /** Its inode number. */
  inum: number;
  /** Where to open it: /proc/PID/ns/net of a process in it, or /run/netns/NAME. */
  path: string;
  /** A process in it, when one was seen. */
  pid?: number;
  /** Its `ip netns` name, when it has one. */
  name?: string;
  /** tcpka's own. */
  own: boolean;
}

const NETNS_DIR = "/run/netns";

function inumOf(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined; // exited, or not ours to see
  }
}

/**
 * The namespaces of these processes, in their order; by default every namespace: tcpka's own first, then every
 * process's and every named one. /run/netns belongs to root; a file there that is no namespace's (its bind mount
 * gone: `umount`, or a mount namespace that dropped it, while `ip netns list` still shows the name) is left out,
 * as one not on the nsfs device that /proc/self/ns/net is on: setns would refuse it (EINVAL), and a metrics
 * scrape with it failed whole.
 */
export function networkNamespaces(pids?: readonly number[]): NetNamespace[] {
  const own = inumOf("/proc/self/ns/net");
  let nsfs: number | undefined;
  try {
    nsfs = statSync("/proc/self/ns/net").dev;
  } catch {
    // no /proc: nothing below is found either
  }
  const found = new Map<number, NetNamespace>();
  for (const pid of pids ?? [process.pid, ...listPids()]) {
    const path = `/proc/${pid}/ns/net`;
    const inum = inumOf(path);
    if (inum !== undefined && !found.has(inum)) found.set(inum, { inum, path, pid, own: inum === own });
  }
  if (pids === undefined) {
    let names: string[] = [];
    try {
      names = readdirSync(NETNS_DIR);
    } catch {
      // no ip netns here
    }
    for (const name of names) {
      const path = `${NETNS_DIR}/${name}`;
      let inum: number;
      try {
        const st = statSync(path);
        if (st.dev !== nsfs) continue; // a file, no longer a namespace's
        inum = st.ino;
      } catch {
        continue;
      }
      const ns = found.get(inum);
      if (ns) ns.name ??= name;
      else found.set(inum, { inum, path, name, own: false });
    }
  }
  return [...found.values()];
}
