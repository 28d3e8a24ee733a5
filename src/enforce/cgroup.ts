/**
 * Keepalive for every connection of a cgroup: the sock_ops program of src/bpf/keepalive.ts, attached to the
 * cgroup v2 with a BPF link (multi-attach: other sock_ops programs keep running) and pinned under
 * /sys/fs/bpf/tcpka/<name>/ so that it outlives tcpka. Next to the link, a pinned one-entry map holds the
 * enforcement's description (cgroup, settings, rules, since when), which is what --list shows.
 * Applying again to the same cgroup swaps the program behind the existing link in one step (BPF_LINK_UPDATE).
 */
import {
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  statSync,
  unlinkSync,
} from "node:fs";
import { join } from "node:path";
import { assemble } from "../bpf/asm.js";
import { type EnforceSpec, keepaliveProgram } from "../bpf/keepalive.js";
import { TcpkaError } from "../errors.js";
import { endpointRuleText } from "../filter.js";
import { cgroupPath } from "../inspect/cgroup.js";
import {
  blobMapCreate,
  blobMapRead,
  blobMapWrite,
  linkCreate,
  linkDetach,
  linkInfo,
  linkUpdate,
  objGet,
  objPin,
  progLoad,
} from "../sys/bpf.js";
import { BPF_CGROUP_SOCK_OPS, BPF_PROG_TYPE_SOCK_OPS } from "../sys/constants.js";
import { close, mount, SysError } from "../sys/libc.js";

export const BPF_FS = "/sys/fs/bpf";
export const PIN_ROOT = `${BPF_FS}/tcpka`;
const META_SIZE = 4096;

/** What --list shows, as stored next to the pinned link. */
export interface Enforcement {
  name: string;
  /** cgroup path relative to the cgroup2 mount, starting with "/" */
  cgroup: string;
  mode: EnforceSpec["mode"];
  idle_s?: number;
  interval_s?: number;
  count?: number;
  user_timeout_ms?: number;
  only: string[];
  except: string[];
  since: string;
  /** when the settings were last replaced */
  updated?: string;
}

/**
 * The pin directory name for a cgroup: its path with "/" as ":", "root" for /. bpffs refuses names with a dot
 * (bpf_lookup in kernel/bpf/inode.c: dots are reserved), so ".", ":" and "%" are percent-encoded, which also
 * keeps /a/b and /a:b apart: "system.slice/app.service" -> "system%2Eslice:app%2Eservice".
 */
export function pinName(cgroup: string): string {
  const rel = cgroup.replace(/^\/+|\/+$/g, "");
  if (rel === "") return "root";
  return rel.replace(/[%.:]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`).replaceAll("/", ":");
}

function bpffsMounted(): boolean {
  try {
    return readFileSync("/proc/self/mounts", "utf8")
      .split("\n")
      .some((l) => {
        const f = l.split(" ");
        return f[1] === BPF_FS && f[2] === "bpf";
      });
  } catch {
    return false;
  }
}

/**
 * Pins need the BPF file system at /sys/fs/bpf. Where it is not mounted (some minimal systems and
 * containers), mount it, as bpftool does; it holds nothing until something is pinned.
 */
function ensureBpffs(): void {
  if (bpffsMounted()) return;
  try {
    mount("bpf", BPF_FS, "bpf");
  } catch (e) {
    throw new TcpkaError(
      "unsupported",
      `no BPF file system at ${BPF_FS}, and mounting one failed (${(e as Error).message})`,
      {
        hint: `mount it: mount -t bpf bpf ${BPF_FS}`,
      },
    );
  }
}

function explain(e: unknown, what: string): unknown {
  if (!(e instanceof SysError)) return e;
  if (e.errnoName === "EPERM" || e.errnoName === "EACCES") {
    return new TcpkaError("permission", `${what}: permission denied (${e.syscall}: ${e.errnoName})`, {
      hint: "run as root, or give tcpka CAP_BPF and CAP_NET_ADMIN",
    });
  }
  if (e.errnoName === "EINVAL" && e.syscall.includes("LINK_CREATE")) {
    return new TcpkaError("unsupported", `${what}: this kernel cannot attach sock_ops programs with a link`, {
      hint: "tcpka enforce needs Linux 5.9 or newer (bpf_setsockopt for keepalive, cgroup links)",
    });
  }
  if (e.errnoName === "ENOSYS") {
    return new TcpkaError("unsupported", `${what}: this kernel has no bpf() system call (CONFIG_BPF_SYSCALL)`);
  }
  return new TcpkaError("system", `${what}: ${e.message}`);
}

function describe(cgroup: string, spec: EnforceSpec, since: string): Enforcement {
  const s = spec.settings;
  return {
    name: pinName(cgroup),
    cgroup,
    mode: spec.mode,
    ...(s.idle !== undefined ? { idle_s: s.idle } : {}),
    ...(s.interval !== undefined ? { interval_s: s.interval } : {}),
    ...(s.count !== undefined ? { count: s.count } : {}),
    ...(s.userTimeout !== undefined ? { user_timeout_ms: s.userTimeout } : {}),
    only: spec.only.map(endpointRuleText),
    except: spec.except.map(endpointRuleText),
    since,
  };
}

function writeMeta(mapFd: number, e: Enforcement): void {
  const value = Buffer.alloc(META_SIZE);
  const json = Buffer.from(JSON.stringify(e));
  if (json.length >= META_SIZE) throw new TcpkaError("invalid", "too many --only/--except rules to describe");
  json.copy(value);
  blobMapWrite(mapFd, value);
}

export interface EnforceResult {
  enforcement: Enforcement;
  /** true when an existing enforcement of this cgroup had its program replaced */
  replaced: boolean;
  pinDir: string;
}

/**
 * Enforce `spec` on the cgroup at `cgroupDir` (an absolute directory inside the cgroup2 mount `mount`).
 */
export function enforceOnCgroup(cgroupDir: string, mount: string, spec: EnforceSpec): EnforceResult {
  ensureBpffs();
  const cgroup = cgroupPath(cgroupDir, mount);
  const dir = join(PIN_ROOT, pinName(cgroup));
  const insns = assemble(keepaliveProgram(spec));
  const fds: number[] = [];
  try {
    let progFd: number;
    try {
      progFd = progLoad({ type: BPF_PROG_TYPE_SOCK_OPS, insns, license: "Dual MIT/GPL", name: "tcpka_keepalive" });
    } catch (e) {
      throw explain(e, "cannot load the BPF program");
    }
    fds.push(progFd);
    const linkPin = join(dir, "link");
    const metaPin = join(dir, "meta");
    // A pin left by a cgroup of the same path that has since been removed (a service restart) holds a link to
    // the dead cgroup: replace it rather than update it.
    if (existsSync(linkPin) && !pinnedForCgroup(linkPin, cgroupDir)) removePins(dir, true);
    if (existsSync(linkPin)) {
      const linkFd = objGet(linkPin);
      fds.push(linkFd);
      linkUpdate(linkFd, progFd);
      const metaFd = existsSync(metaPin) ? objGet(metaPin) : -1;
      if (metaFd >= 0) fds.push(metaFd);
      const now = new Date().toISOString();
      const old = metaFd >= 0 ? readMeta(metaFd) : undefined;
      const enforcement = { ...describe(cgroup, spec, old?.since ?? now), updated: now };
      if (metaFd >= 0) writeMeta(metaFd, enforcement);
      return { enforcement, replaced: true, pinDir: dir };
    }
    mkdirSync(dir, { recursive: true });
    let cgFd: number;
    try {
      cgFd = openSync(cgroupDir, constants.O_RDONLY | constants.O_DIRECTORY);
    } catch (e) {
      throw new TcpkaError("not-found", `cannot open the cgroup ${cgroupDir}: ${(e as NodeJS.ErrnoException).code}`);
    }
    let linkFd: number;
    try {
      linkFd = linkCreate(progFd, cgFd, BPF_CGROUP_SOCK_OPS);
    } catch (e) {
      throw explain(e, `cannot attach to the cgroup ${cgroup}`);
    } finally {
      closeSync(cgFd);
    }
    fds.push(linkFd);
    const enforcement = describe(cgroup, spec, new Date().toISOString());
    const metaFd = blobMapCreate("tcpka_meta", META_SIZE);
    fds.push(metaFd);
    writeMeta(metaFd, enforcement);
    try {
      objPin(metaFd, metaPin);
      objPin(linkFd, linkPin);
    } catch (e) {
      removePins(dir);
      throw explain(e, `cannot pin the program under ${dir}`);
    }
    return { enforcement, replaced: false, pinDir: dir };
  } catch (e) {
    // A half-made directory is no enforcement: leave nothing behind.
    if (!existsSync(join(dir, "link"))) removePins(dir);
    throw e;
  } finally {
    for (const fd of fds) close(fd);
  }
}

function readMeta(mapFd: number): Enforcement | undefined {
  try {
    const raw = blobMapRead(mapFd, META_SIZE);
    const end = raw.indexOf(0);
    return JSON.parse(raw.toString("utf8", 0, end < 0 ? raw.length : end)) as Enforcement;
  } catch {
    return undefined;
  }
}

/** Is the link pinned at `linkPin` attached to this very cgroup? A cgroup v2's id is its directory's inode. */
function pinnedForCgroup(linkPin: string, cgroupDir: string): boolean {
  try {
    const fd = objGet(linkPin);
    try {
      return linkInfo(fd).cgroupId === statSync(cgroupDir, { bigint: true }).ino;
    } finally {
      close(fd);
    }
  } catch {
    return false;
  }
}

/** Detach the program of a pinned link now (the pin itself stays until unlinked). */
function detachPinned(linkPin: string): void {
  const fd = objGet(linkPin);
  try {
    linkDetach(fd);
  } finally {
    close(fd);
  }
}

function removePins(dir: string, detach = false): void {
  if (detach) {
    try {
      detachPinned(join(dir, "link"));
    } catch {
      /* already detached or gone */
    }
  }
  for (const f of ["link", "meta"]) {
    try {
      unlinkSync(join(dir, f));
    } catch {
      /* absent */
    }
  }
  try {
    rmdirSync(dir);
  } catch {
    /* absent or not empty */
  }
}

/** Every enforcement pinned by tcpka. */
export function listEnforcements(): Enforcement[] {
  let names: string[] = [];
  try {
    names = readdirSync(PIN_ROOT);
  } catch {
    return [];
  }
  const out: Enforcement[] = [];
  for (const name of names.sort()) {
    const metaPin = join(PIN_ROOT, name, "meta");
    let meta: Enforcement | undefined;
    try {
      const fd = objGet(metaPin);
      try {
        meta = readMeta(fd);
      } finally {
        close(fd);
      }
    } catch (e) {
      throw explain(e, `cannot read ${metaPin}`);
    }
    out.push(meta ?? { name, cgroup: "?", mode: "strengthen", only: [], except: [], since: "?" });
  }
  return out;
}

/** Detach and unpin the enforcement called `name` (see pinName); false when there is none. */
export function removeEnforcement(name: string): boolean {
  const dir = join(PIN_ROOT, name);
  const linkPin = join(dir, "link");
  if (!existsSync(linkPin)) {
    if (existsSync(dir)) removePins(dir);
    return false;
  }
  try {
    detachPinned(linkPin);
  } catch (e) {
    throw explain(e, `cannot detach ${linkPin}`);
  }
  removePins(dir);
  try {
    if (readdirSync(PIN_ROOT).length === 0) rmdirSync(PIN_ROOT);
  } catch {
    /* in use or gone */
  }
  return true;
}
