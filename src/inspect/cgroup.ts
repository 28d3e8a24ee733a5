/**
 * cgroup v2: where it is mounted (/sys/fs/cgroup on most systems, /sys/fs/cgroup/unified on hybrid ones), a
 * cgroup named by path, by a process in it or by the systemd unit it belongs to, and the processes in it and
 * below it.
 */
import { closeSync, constants, existsSync, openSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { isAbsolute, join, resolve } from "node:path";
import { TcpkaError, usage } from "../errors.js";
import { O_CLOEXEC, O_PATH } from "../kernel/constants.js";
import { openKernfsNode } from "../sys/libc.js";

/** The mount point of the cgroup2 hierarchy, from /proc/self/mountinfo. */
export function cgroup2Mount(): string {
  let text: string;
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch (e) {
    throw new TcpkaError("system", `cannot read /proc/self/mountinfo: ${(e as Error).message}`);
  }
  for (const line of text.split("\n")) {
    // "36 35 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw": fstype after the " - ".
    const dash = line.indexOf(" - ");
    if (dash < 0 || !line.slice(dash + 3).startsWith("cgroup2 ")) continue;
    const mountPoint = line.slice(0, dash).split(" ")[4];
    if (mountPoint) return mountPoint.replace(/\\040/g, " ");
  }
  throw new TcpkaError("unsupported", "no cgroup v2 hierarchy is mounted", {
    hint: "mount one: mount -t cgroup2 none /sys/fs/cgroup (systemd does this at boot on current systems)",
  });
}

/**
 * A cgroup directory from what a user typed: an absolute path inside the cgroup2 mount, or a path relative to
 * it ("system.slice/nginx.service", "/system.slice/..." as /proc/PID/cgroup prints it).
 */
export function resolveCgroup(path: string, mount = cgroup2Mount()): string {
  const candidates = isAbsolute(path) && path.startsWith(`${mount}/`) ? [path] : [join(mount, path)];
  if (isAbsolute(path) && !path.startsWith(`${mount}/`) && path !== mount) candidates.push(resolve(path));
  for (const c of candidates) {
    try {
      if (statSync(join(c, "cgroup.procs")).isFile()) return c;
    } catch {
      /* next */
    }
  }
  throw new TcpkaError("not-found", `--cgroup ${path}: no such cgroup under ${mount}`, {
    hint: "give a path inside the cgroup2 mount, e.g. system.slice/nginx.service (see /proc/PID/cgroup)",
  });
}

/** "/sys/fs/cgroup/a/b", "a/b" or "/a/b" as the path inside the cgroup2 mount: "/a/b" ("/" for the root). */
export function cgroupPath(path: string, mount: string): string {
  const inside = path === mount ? "" : path.startsWith(`${mount}/`) ? path.slice(mount.length) : path;
  return `/${inside.replace(/^\/+|\/+$/g, "")}`;
}

/** Whether the cgroup at `path` (as resolveCgroup takes it) exists now. */
export function cgroupExists(path: string, mount: string): boolean {
  return existsSync(join(mount, cgroupPath(path, mount), "cgroup.procs"));
}

/**
 * The cgroup v2 path of a process ("/a/b", inside the mount, relative to the reader's cgroup namespace): the
 * "0::/path" line of /proc/PID/cgroup. undefined when the process has gone; null when it is in no cgroup v2.
 */
export function cgroupPathOfPid(pid: number): string | null | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/cgroup`, "utf8");
  } catch {
    return undefined;
  }
  const line = text.split("\n").find((l) => l.startsWith("0::"));
  return line === undefined ? null : line.slice(3);
}

/** The cgroup v2 directory of a process: the "0::/path" line of /proc/PID/cgroup. */
export function cgroupOfPid(pid: number, mount: string): string {
  const path = cgroupPathOfPid(pid);
  if (path === undefined) throw usage(`--pid ${pid}: no such process`);
  if (path === null)
    throw new TcpkaError("unsupported", `process ${pid} is in no cgroup v2 (no 0:: line in /proc/${pid}/cgroup)`);
  return join(mount, path);
}

/** An fd on the cgroup2 mount for open_by_handle_at, opened once per process. */
const mountFds = new Map<string, number>();

/**
 * The path ("/a/b", inside the mount) of the cgroup whose id is `id`: cgroup_id() (cgrp->kn->id), what BPF
 * programs see of a socket's or a task's cgroup, and on 64-bit kernels also the inode number of its directory
 * (kernfs_ino: the whole id is the inode when ino_t has 64 bits). One open_by_handle_at of the kernfs node and a
 * readlink of the fd, so no walk of the hierarchy. undefined when there is no such cgroup any more (ESTALE), or
 * when this process may not open by handle (CAP_DAC_READ_SEARCH).
 */
export function cgroupPathOfId(id: number, mount: string): string | undefined {
  let fd: number | undefined;
  try {
    let mfd = mountFds.get(mount);
    if (mfd === undefined) {
      mfd = openSync(mount, constants.O_RDONLY | constants.O_DIRECTORY);
      mountFds.set(mount, mfd);
    }
    fd = openKernfsNode(mfd, id, O_PATH | O_CLOEXEC);
    const link = readlinkSync(`/proc/self/fd/${fd}`);
    return link === mount || link.startsWith(`${mount}/`) ? cgroupPath(link, mount) : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

// node:child_process, only for --unit: it loads node:net, node:dgram and the streams (~5 ms of every start-up).
const require = createRequire(import.meta.url);

/** The cgroup of a systemd unit, as systemctl reports it (a path inside the cgroup2 mount); only while it runs. */
export function cgroupOfUnit(unit: string): string {
  const { spawnSync } = require("node:child_process") as typeof import("node:child_process");
  const r = spawnSync("systemctl", ["show", "-p", "ControlGroup", "--value", unit], { encoding: "utf8" });
  if (r.error) {
    throw new TcpkaError(
      "unsupported",
      `--unit ${unit}: systemctl is not available (${(r.error as NodeJS.ErrnoException).code})`,
      {
        hint: "give the cgroup with --cgroup PATH instead",
      },
    );
  }
  const path = r.stdout.trim();
  if (r.status !== 0 || !path) {
    throw new TcpkaError("not-found", `--unit ${unit}: no such unit, or it is not running`, {
      hint: "systemctl status NAME shows it; units get a cgroup only while they run",
    });
  }
  return path;
}

/** Every process in the cgroup and its descendants. */
export function pidsInCgroup(dir: string): number[] {
  const pids: number[] = [];
  const walk = (d: string) => {
    let text = "";
    try {
      text = readFileSync(join(d, "cgroup.procs"), "ascii");
    } catch {
      return; // removed meanwhile
    }
    for (const line of text.split("\n")) if (line) pids.push(Number(line));
    let entries: string[] = [];
    try {
      entries = readdirSync(d, { withFileTypes: true })
        .filter((e) => e.isDirectory())
        .map((e) => e.name);
    } catch {
      return;
    }
    for (const e of entries) walk(join(d, e));
  };
  walk(dir);
  return pids;
}
