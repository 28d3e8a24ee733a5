/**
 * Keepalive for every connection of a cgroup: the sock_ops program of src/bpf/keepalive.ts, attached to the
 * cgroup v2 with a BPF link (multi-attach: other sock_ops programs keep running) and pinned under
 * /sys/fs/bpf/tcpka/<name>/ so that it outlives tcpka. Next to the link, a pinned one-entry map holds the
 * enforcement's description (cgroup, settings, rules, since when, and the id of the program they were compiled
 * into), which is what --list shows. Applying again to the same cgroup swaps the program behind the existing link
 * in one step (BPF_LINK_UPDATE).
 *
 * Beside it, where the kernel has them (BPF_CGROUP_SETSOCKOPT with bpf_setsockopt in it: Linux 5.15; socket
 * storage: 5.2), the setsockopt program of src/bpf/sockopt-hook.ts keeps the rule when a program changes its
 * keepalive options later, on every TCP socket of the cgroup; where --only/--except rules choose the connections,
 * on those the sock_ops program chose, which it marks in a socket storage map pinned as "marks" (kept across
 * updates, so that sockets set up before an update keep their mark; an allocation per socket, so only then), and the
 * setsockopt program's link as "setsockopt". A per-CPU array of counters (src/bpf/counters.ts: connections set
 * up, calls whose value was replaced) is pinned as "counters", also kept across updates, for --list. Both links are attached, pinned, updated and removed together; a
 * kernel without the hook gets the sock_ops program alone, and enforce says so.
 *
 * Two runs must not interleave their steps (two operators, a retrying script): enforce and remove hold an
 * exclusive flock on enforce.lock in root's runtime directory (/run/tcpka), --list a shared one, so that it never
 * sees half an update. Each step is also safe on its own, against a tcpka that does not share the lock: a pin
 * that appears between the check and OBJ_PIN (EEXIST) is updated instead, a run that fails removes only the pins
 * and directories it made itself, and --list shows the settings only while the link runs the program that the
 * description names.
 */
import {
  closeSync,
  constants,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  statSync,
  unlinkSync,
} from "node:fs";
import { basename, join } from "node:path";
import { assemble, type Instruction, Listing } from "../bpf/asm.js";
import { COUNTER, COUNTERS } from "../bpf/counters.js";
import { type EnforceSpec, keepaliveProgram } from "../bpf/keepalive.js";
import { setsockoptProgram } from "../bpf/sockopt-hook.js";
import { tcpSocketOffsets } from "../bpf/tcp-sockets.js";
import { TcpkaError } from "../errors.js";
import { endpointRuleText } from "../filter.js";
import { cgroupPath } from "../inspect/cgroup.js";
import {
  BPF_CGROUP_SETSOCKOPT,
  BPF_CGROUP_SOCK_OPS,
  BPF_PROG_TYPE_CGROUP_SOCKOPT,
  BPF_PROG_TYPE_SOCK_OPS,
} from "../kernel/constants.js";
import {
  blobMapCreate,
  blobMapRead,
  blobMapWrite,
  counterMapCreate,
  counterRead,
  type LinkInfo,
  linkCreate,
  linkDetach,
  linkInfo,
  linkUpdate,
  objGet,
  objPin,
  progId,
  progLoad,
  skStorageMapCreate,
} from "../sys/bpf.js";
import { CachedBtf } from "../sys/btf.js";
import { runtimeBase, sleepSync } from "../sys/files.js";
import { close, kernelHz, mount, SysError } from "../sys/libc.js";
import { Lock } from "../sys/lock.js";

export const BPF_FS = "/sys/fs/bpf";
export const PIN_ROOT = `${BPF_FS}/tcpka`;
const META_SIZE = 4096;
/** The longest name a directory entry may have, in bytes (NAME_MAX; simple_lookup refuses longer ones). */
const NAME_MAX = 255;
/** How long a removed cgroup's links may stay attached before the kernel detaches them (see attachment()). */
const DETACH_WAIT_MS = 2000;

/** What --list shows, as stored next to the pinned link. */
export interface Enforcement {
  /** the pin directory under PIN_ROOT */
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
  /** the program these settings and rules were compiled into (absent in pins of earlier versions of tcpka) */
  prog_id?: number;
  /** the setsockopt program compiled with them, where the kernel has the hook */
  setsockopt_prog_id?: number;
  /**
   * "agent" where `tcpka agent` made it for a rule of its policy (and `rule` names it); absent where an operator
   * ran `tcpka enforce`. The agent changes and removes only its own, and an operator's enforce on the same
   * cgroup takes it over (the owner is then gone from the description, and the agent leaves it alone).
   */
  owner?: "agent";
  rule?: string;
}

/** Who asks for an enforcement: the agent, for a rule (see Enforcement.owner); absent for an operator. */
export interface Owner {
  rule: string;
}

/** An enforcement of the cgroup that is not the agent's: the agent leaves it as it is. */
export class NotOwned extends TcpkaError {
  constructor(
    readonly cgroup: string,
    why: string,
  ) {
    super("system", `${cgroup} has an enforcement that is not the agent's (${why}); the agent leaves it as it is`, {
      hint: "tcpka enforce --list shows it; tcpka enforce --remove --cgroup PATH removes it",
    });
  }
}

// '%', '.', ':' and the ASCII control characters.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is encoded
const ENCODED = /[%.:\x00-\x1f\x7f]/g;

/**
 * The pin directory name of a cgroup path (as cgroupPath() gives it): the path with each "/" as ":", and '%',
 * '.', ':' and the ASCII control characters as %XX. One name for each path, and back again (cgroupOfPinName):
 * "/" is ":", "/root" is ":root", "/system.slice/app.service" is ":system%2Eslice:app%2Eservice", and /a:b
 * (":a%3Ab") stays apart from /a/b (":a:b"). bpffs refuses names with a dot (bpf_lookup in kernel/bpf/inode.c).
 * Every name starts with ':', which no name of the earlier scheme did ("root" for both / and /root,
 * "system%2Eslice:app%2Eservice"), so pins of both can sit side by side. A name can be longer than NAME_MAX:
 * enforceOnCgroup refuses such a cgroup.
 */
export function pinName(cgroup: string): string {
  return cgroup
    .replace(ENCODED, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}`)
    .replaceAll("/", ":");
}

/** The cgroup path that a pin name stands for; undefined for a name that pinName() does not make. */
export function cgroupOfPinName(name: string): string | undefined {
  if (!name.startsWith(":")) return undefined;
  const path = name
    .replaceAll(":", "/")
    .replace(/%([0-9A-F]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
  return pinName(path) === name ? path : undefined;
}

export function bpffsMounted(): boolean {
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

/** The errno name of a failed system call or file operation; undefined for anything else. */
function errno(e: unknown): string | undefined {
  if (e instanceof SysError) return e.errnoName;
  return e instanceof TcpkaError ? undefined : (e as NodeJS.ErrnoException).code;
}

/** A failed system call or file operation as a TcpkaError that says what tcpka was doing. */
function explain(e: unknown, what: string): unknown {
  const code = errno(e);
  if (code === undefined) return e;
  const how = e instanceof SysError ? `${e.syscall}: ${code}` : code;
  if (code === "EPERM" || code === "EACCES") {
    return new TcpkaError("permission", `${what}: permission denied (${how})`, {
      hint: "run as root, or give tcpka CAP_BPF and CAP_NET_ADMIN",
    });
  }
  if (code === "EINVAL" && how.includes("LINK_CREATE")) {
    return new TcpkaError("unsupported", `${what}: this kernel cannot attach sock_ops programs with a link`, {
      hint: "tcpka enforce needs Linux 5.9 or newer (bpf_setsockopt for keepalive, cgroup links)",
    });
  }
  if (code === "ENOSYS") {
    return new TcpkaError("unsupported", `${what}: this kernel has no bpf() system call (CONFIG_BPF_SYSCALL)`);
  }
  return new TcpkaError("system", `${what}: ${e instanceof SysError ? e.message : code}`);
}

/**
 * Run `fn` holding the enforce lock, shared for readers. Root's is /run/tcpka/enforce.lock. Another user cannot
 * open that one, nor pin anything without CAP_BPF; with it, its runs serialise on its own runtime directory (and
 * without one only through the checks of every step).
 */
function locked<T>(what: string, shared: boolean, fn: () => T): T {
  const base = runtimeBase();
  const lock = base === undefined ? undefined : Lock.take(join(base, "enforce.lock"), what, { shared });
  try {
    return fn();
  } finally {
    lock?.release();
  }
}

/** `fn` of the object pinned at `path`, or undefined when nothing is pinned there. */
function withPinned<T>(path: string, fn: (fd: number) => T): T | undefined {
  let fd: number;
  try {
    fd = objGet(path);
  } catch (e) {
    if (errno(e) === "ENOENT") return undefined;
    throw explain(e, `cannot open ${path}`);
  }
  try {
    return fn(fd);
  } finally {
    close(fd);
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

function pinnedMeta(dir: string): Enforcement | undefined {
  return withPinned(join(dir, "meta"), readMeta);
}

function metaValue(e: Enforcement): Buffer {
  const json = Buffer.from(JSON.stringify(e));
  if (json.length >= META_SIZE) throw new TcpkaError("invalid", "too many --only/--except rules to describe");
  const value = Buffer.alloc(META_SIZE);
  json.copy(value);
  return value;
}

/** The cgroup id of a cgroup directory (a cgroup v2's id is its directory's inode), undefined when it is gone. */
function cgroupId(dir: string): bigint | undefined {
  try {
    return statSync(dir, { bigint: true }).ino;
  } catch {
    return undefined;
  }
}

/**
 * Where a pinned link is attached, seen from the cgroup that has its path here: "none" (no link is pinned),
 * "here", "gone" (detached, by LINK_DETACH or because its cgroup was removed), or "elsewhere" (another live
 * cgroup: one with the same path, seen from another cgroup namespace).
 */
export type Attachment = "none" | "here" | "gone" | "elsewhere";

/** The Attachment of a link with info `info`, seen from the cgroup whose id is `id`. */
function attachment(info: LinkInfo | undefined, id: bigint | undefined): Attachment {
  if (!info) return "none";
  if (info.cgroupId === 0n) return "gone";
  return info.cgroupId === id ? "here" : "elsewhere";
}

function pinnedLink(linkPin: string): LinkInfo | undefined {
  return withPinned(linkPin, linkInfo);
}

/**
 * The Attachment of the link pinned at `linkPin`, before anything is changed because of it. The kernel detaches
 * the links of a removed cgroup only after an RCU grace period (cgroup_bpf_offline, then cgroup_bpf_release from
 * a workqueue: ~20 ms here), so a cgroup that was just removed and made again looks like "elsewhere" for a
 * moment: that is the answer only when it lasts DETACH_WAIT_MS.
 */
function settledAttachment(linkPin: string, id: bigint | undefined): Attachment {
  const deadline = Date.now() + DETACH_WAIT_MS;
  for (;;) {
    const where = attachment(pinnedLink(linkPin), id);
    if (where !== "elsewhere" || Date.now() > deadline) return where;
    sleepSync(20);
  }
}

function elsewhere(dir: string, cgroup: string): TcpkaError {
  return new TcpkaError("system", `${dir} belongs to another cgroup with the path ${cgroup}`, {
    hint: "it was made from another cgroup namespace (a container?): change or remove it from there",
  });
}

/** The directories under PIN_ROOT, sorted. */
function pinDirNames(): string[] {
  let names: string[];
  try {
    names = readdirSync(PIN_ROOT);
  } catch (e) {
    if (errno(e) === "ENOENT") return [];
    throw explain(e, `cannot read ${PIN_ROOT}`);
  }
  return names.filter((n) => lstatSync(join(PIN_ROOT, n), { throwIfNoEntry: false })?.isDirectory()).sort();
}

/**
 * The pin directories of the enforcement of `cgroup`: the one named by pinName(), first, and any of the earlier
 * naming scheme whose description names this cgroup.
 */
function pinDirsOf(cgroup: string): string[] {
  const own = pinName(cgroup);
  const names = pinDirNames().filter(
    (n) => n === own || (cgroupOfPinName(n) === undefined && pinnedMeta(join(PIN_ROOT, n))?.cgroup === cgroup),
  );
  return names.sort((a, b) => Number(b === own) - Number(a === own)).map((n) => join(PIN_ROOT, n));
}

function describe(
  name: string,
  cgroup: string,
  spec: EnforceSpec,
  since: string,
  prog: number,
  hookProg?: number,
): Enforcement {
  const s = spec.settings;
  return {
    name,
    cgroup,
    mode: spec.mode,
    ...(s.idle !== undefined ? { idle_s: s.idle } : {}),
    ...(s.interval !== undefined ? { interval_s: s.interval } : {}),
    ...(s.count !== undefined ? { count: s.count } : {}),
    ...(s.userTimeout !== undefined ? { user_timeout_ms: s.userTimeout } : {}),
    only: spec.only.map(endpointRuleText),
    except: spec.except.map(endpointRuleText),
    since,
    prog_id: prog,
    ...(hookProg !== undefined ? { setsockopt_prog_id: hookProg } : {}),
  };
}

export interface EnforceResult {
  enforcement: Enforcement;
  /** true when an existing enforcement of this cgroup had its program replaced */
  replaced: boolean;
  pinDir: string;
  /** why the setsockopt program is not attached (the kernel cannot), where it is not */
  noHook?: string;
  /** why the sock_ops program reads with bpf_getsockopt instead of from the socket, where it does */
  noDirect?: string;
}

/** The programs of one enforce: the sock_ops program, and the setsockopt program with its marks where it loads. */
interface Programs {
  sockOps: number;
  sockOpsId: number;
  /** the setsockopt program, and the marks map it and the sock_ops program share where rules choose sockets */
  hook?: { fd: number; id: number; marks?: number };
  noHook?: string;
  noDirect?: string;
  /** the counters map (reused or new); undefined where it cannot be made: the programs then count nothing */
  counters?: number;
}

/**
 * Enforce `spec` on the cgroup at `cgroupDir` (an absolute directory inside the cgroup2 mount `mount`).
 */
export function enforceOnCgroup(cgroupDir: string, mount: string, spec: EnforceSpec, owner?: Owner): EnforceResult {
  const cgroup = cgroupPath(cgroupDir, mount);
  const length = Buffer.byteLength(pinName(cgroup));
  if (length > NAME_MAX) {
    throw new TcpkaError(
      "unsupported",
      `cannot enforce on ${cgroup}: its pin name would be ${length} bytes long, and a file name has at most ${NAME_MAX}`,
      { hint: "enforce on a cgroup above it: the program covers every cgroup below the one it is attached to" },
    );
  }
  const programs = loadPrograms(cgroup, spec);
  try {
    const run = new EnforceRun(cgroupDir, cgroup, spec, programs, owner);
    return locked(`enforce on ${cgroup}`, false, () => run.apply());
  } finally {
    close(programs.sockOps);
    if (programs.counters !== undefined) close(programs.counters);
    if (programs.hook) {
      close(programs.hook.fd);
      if (programs.hook.marks !== undefined) close(programs.hook.marks);
    }
  }
}

/**
 * Load both programs. The marks map of an enforcement of this cgroup is reused (the sockets it marked keep the
 * rule after the update); where the map or the setsockopt program cannot be made (an older kernel, or one that
 * refuses bpf_setsockopt in the hook: before 5.15), the sock_ops program is loaded alone, and noHook says why.
 */
function loadPrograms(cgroup: string, spec: EnforceSpec): Programs {
  const dir = join(PIN_ROOT, pinName(cgroup));
  let counters: number | undefined;
  try {
    counters = objGet(join(dir, "counters"));
  } catch {
    try {
      counters = counterMapCreate("tcpka_counters", COUNTERS);
    } catch {
      counters = undefined; // --list shows no counts
    }
  }
  const programs = loadWithMaps(dir, spec, counters);
  return counters === undefined ? programs : { ...programs, counters };
}

/**
 * The marks (a socket storage map) are made only where --only or --except rules choose the connections: the
 * setsockopt program then needs to know which sockets the sock_ops program chose, and a mark costs an allocation
 * per socket (bpf_sk_storage_get with F_CREATE: about 550 ns, bench/enforce.ts). Without rules every TCP socket of
 * the cgroup is the enforcement's, and the setsockopt program needs no mark.
 */
function loadWithMaps(dir: string, spec: EnforceSpec, counters: number | undefined): Omit<Programs, "counters"> {
  let marks: number | undefined;
  let noHook: string | undefined;
  if (spec.only.length + spec.except.length > 0) {
    try {
      marks = objGet(join(dir, "marks"));
    } catch {
      try {
        marks = skStorageMapCreate("tcpka_marks");
      } catch (e) {
        noHook = `no socket storage map (${e instanceof SysError ? e.errnoName : String(e)})`;
      }
    }
  }
  let hook: Programs["hook"];
  if (noHook === undefined) {
    const program = setsockoptProgram(spec, marks, counters);
    try {
      const fd = progLoad({
        type: BPF_PROG_TYPE_CGROUP_SOCKOPT,
        expectedAttachType: BPF_CGROUP_SETSOCKOPT,
        insns: assemble(program),
        listing: new Listing(program),
        license: "Dual MIT/GPL",
        name: "tcpka_sockopt",
      });
      hook = { fd, id: progId(fd), ...(marks !== undefined ? { marks } : {}) };
    } catch (e) {
      if (marks !== undefined) close(marks);
      marks = undefined;
      noHook = `the kernel refused the setsockopt program (${e instanceof SysError ? e.errnoName : (e as Error).message.split("\n")[0]})`;
    }
  }
  const load = (program: Instruction[]) =>
    progLoad({
      type: BPF_PROG_TYPE_SOCK_OPS,
      insns: assemble(program),
      listing: new Listing(program),
      license: "Dual MIT/GPL",
      name: "tcpka_keepalive",
    });
  // The settings read from the socket itself where BTF and the verifier allow it; else through bpf_getsockopt.
  let sockOps: number | undefined;
  let noDirect: string | undefined;
  try {
    const btf = CachedBtf.open();
    const direct = { offsets: tcpSocketOffsets(btf), hz: kernelHz() };
    btf.save();
    sockOps = load(keepaliveProgram(spec, marks, counters, direct));
  } catch (e) {
    noDirect = e instanceof SysError ? e.errnoName : (e as Error).message.split("\n")[0];
  }
  try {
    sockOps ??= load(keepaliveProgram(spec, marks, counters));
  } catch (e) {
    if (hook) {
      close(hook.fd);
      if (hook.marks !== undefined) close(hook.marks);
    }
    if (counters !== undefined) close(counters);
    throw explain(e, "cannot load the BPF program");
  }
  return {
    sockOps,
    sockOpsId: progId(sockOps),
    hook,
    ...(noHook ? { noHook } : {}),
    ...(noDirect ? { noDirect } : {}),
  };
}

/** One enforce: what it needs, and what it made, so that a failure removes exactly that. */
class EnforceRun {
  private readonly undo: (() => void)[] = [];
  /** when the settings took effect: set once the lock is held */
  private now = "";

  constructor(
    private readonly cgroupDir: string,
    private readonly cgroup: string,
    private readonly spec: EnforceSpec,
    private readonly programs: Programs,
    private readonly owner?: Owner,
  ) {
    // The description's size does not depend on what is pinned: refuse it before anything changes.
    const now = new Date().toISOString();
    metaValue({ ...this.describe(pinName(cgroup), now), updated: now });
  }

  private describe(name: string, since: string): Enforcement {
    const e = describe(name, this.cgroup, this.spec, since, this.programs.sockOpsId, this.programs.hook?.id);
    return this.owner ? { ...e, owner: "agent", rule: this.owner.rule } : e;
  }

  /** For the agent: refuse a pin directory that is not its own (an operator's, or one an operator is making). */
  private mustOwn(dir: string): void {
    if (!this.owner) return;
    const meta = pinnedMeta(dir);
    if (meta?.owner !== "agent") {
      throw new NotOwned(
        this.cgroup,
        meta ? "made by tcpka enforce" : "being made, or left half-made, by tcpka enforce",
      );
    }
  }

  private result(enforcement: Enforcement, replaced: boolean, pinDir: string): EnforceResult {
    const { noHook, noDirect } = this.programs;
    return { enforcement, replaced, pinDir, ...(noHook ? { noHook } : {}), ...(noDirect ? { noDirect } : {}) };
  }

  apply(): EnforceResult {
    this.now = new Date().toISOString();
    try {
      ensureBpffs();
      return this.enforce();
    } catch (e) {
      for (const undo of this.undo.reverse()) {
        try {
          undo();
        } catch {
          /* gone already */
        }
      }
      throw e;
    }
  }

  private enforce(): EnforceResult {
    const id = cgroupId(this.cgroupDir);
    if (id === undefined) throw new TcpkaError("not-found", `the cgroup ${this.cgroup} is gone`);
    for (const dir of pinDirsOf(this.cgroup)) {
      const where = settledAttachment(join(dir, "link"), id);
      if (where !== "gone") this.mustOwn(dir);
      if (where === "here") return this.update(dir);
      if (where === "elsewhere") throw elsewhere(dir, this.cgroup);
      // A link whose cgroup was removed (a service restart makes a new cgroup of the same path) enforces nothing
      // any more: it makes way. A directory without a link is left as it is: another run may be filling it.
      if (where === "gone") removePinDir(dir);
    }
    const dir = join(PIN_ROOT, pinName(this.cgroup));
    this.mkdir(dir);
    // The agent's description first: a directory it made is known as its own from its first pin, so that an
    // agent killed in the middle finds and finishes (or removes) it, and never takes an operator's for its own.
    if (this.owner) this.describeIn(dir, this.describe(basename(dir), this.now));
    // The setsockopt program first: the sockets that the sock_ops program marks are then looked after from the
    // moment they are marked.
    this.pinCounters(dir);
    const hook = this.programs.hook;
    if (hook) {
      if (hook.marks !== undefined) this.pinMarks(dir, hook.marks);
      this.attachHook(dir, hook.fd);
    }
    const linkFd = this.attach(this.programs.sockOps, BPF_CGROUP_SOCK_OPS);
    try {
      if (!this.pin(linkFd, join(dir, "link"))) {
        // Pinned since the check, by a tcpka that does not take the lock: update that link. This run's own one was
        // never pinned, so closing it detaches it (bpf_link_release).
        if (settledAttachment(join(dir, "link"), id) !== "here") throw elsewhere(dir, this.cgroup);
        return this.update(dir);
      }
    } finally {
      close(linkFd);
    }
    const enforcement = this.describe(basename(dir), this.now);
    this.describeIn(dir, enforcement);
    return this.result(enforcement, false, dir);
  }

  /** A link of `progFd` to the cgroup at `attachType`. */
  private attach(progFd: number, attachType: number): number {
    try {
      const cgFd = openCgroup(this.cgroupDir, this.cgroup);
      try {
        return linkCreate(progFd, cgFd, attachType);
      } finally {
        closeSync(cgFd);
      }
    } catch (e) {
      throw explain(e, `cannot attach to the cgroup ${this.cgroup}`);
    }
  }

  /** The counters pinned in `dir`, unless the ones pinned there are this run's already (reused). */
  private pinCounters(dir: string): void {
    if (this.programs.counters !== undefined) this.pin(this.programs.counters, join(dir, "counters"));
  }

  /** The marks map pinned in `dir`, unless the one pinned there is this run's already (reused). */
  private pinMarks(dir: string, marks: number): void {
    const path = join(dir, "marks");
    if (this.pin(marks, path)) return;
    // Pinned already: the one loadPrograms reused, or one pinned since by another run (its programs mark there).
  }

  /** Attach the setsockopt program and pin its link in `dir`, or update the link pinned there. */
  private attachHook(dir: string, progFd: number): void {
    const path = join(dir, "setsockopt");
    const updated = withPinned(path, (fd) => {
      try {
        linkUpdate(fd, progFd);
      } catch (e) {
        throw explain(e, `cannot replace the program of ${path}`);
      }
      return true;
    });
    if (updated) return;
    const linkFd = this.attach(progFd, BPF_CGROUP_SETSOCKOPT);
    try {
      if (!this.pin(linkFd, path)) this.attachHook(dir, progFd);
    } finally {
      close(linkFd);
    }
  }

  /**
   * Swap the program of the link pinned in `dir`, then its description. A run that stops in between leaves a
   * description whose prog_id is not the program that the link runs: --list shows the settings as unknown.
   */
  private update(dir: string): EnforceResult {
    const linkPin = join(dir, "link");
    this.pinCounters(dir);
    const hook = this.programs.hook;
    if (hook) {
      if (hook.marks !== undefined) this.pinMarks(dir, hook.marks);
      this.attachHook(dir, hook.fd);
    } else {
      // This kernel cannot run it now: an earlier one's with the old settings must not stay.
      detachPinned(join(dir, "setsockopt"));
    }
    if (hook?.marks === undefined) unpin(join(dir, "marks")); // no rules now: no marks
    const done = withPinned(linkPin, (fd) => {
      try {
        linkUpdate(fd, this.programs.sockOps);
      } catch (e) {
        throw explain(e, `cannot replace the program of ${linkPin}`);
      }
      return true;
    });
    if (done === undefined) throw new TcpkaError("system", `${linkPin} was removed while tcpka updated it`);
    const since = pinnedMeta(dir)?.since ?? this.now;
    const enforcement = { ...this.describe(basename(dir), since), updated: this.now };
    this.describeIn(dir, enforcement);
    return this.result(enforcement, true, dir);
  }

  /** Write the description into the map pinned in `dir`, or pin a new one (written before it is pinned). */
  private describeIn(dir: string, e: Enforcement): void {
    const metaPin = join(dir, "meta");
    const value = metaValue(e);
    const write = (fd: number) => {
      blobMapWrite(fd, value);
      return true;
    };
    if (withPinned(metaPin, write)) return;
    let fd: number;
    try {
      fd = blobMapCreate("tcpka_meta", META_SIZE);
    } catch (e) {
      throw explain(e, "cannot create the map for the description");
    }
    try {
      blobMapWrite(fd, value);
      if (this.pin(fd, metaPin)) return;
    } finally {
      close(fd);
    }
    // pinned since the check (EEXIST): write into that one
    if (!withPinned(metaPin, write)) throw new TcpkaError("system", `${metaPin} was removed while tcpka wrote it`);
  }

  /** Pin `fd` at `path`; false when something is pinned there already (EEXIST). */
  private pin(fd: number, path: string): boolean {
    try {
      objPin(fd, path);
    } catch (e) {
      if (errno(e) === "EEXIST") return false;
      throw explain(e, `cannot pin at ${path}`);
    }
    this.undo.push(() => unlinkSync(path));
    return true;
  }

  /** mkdir PIN_ROOT and `dir` where missing; what this run made is removed if it fails (rmdir: only if empty). */
  private mkdir(dir: string): void {
    for (const d of [PIN_ROOT, dir]) {
      try {
        mkdirSync(d);
        this.undo.push(() => rmdirSync(d));
      } catch (e) {
        if (errno(e) !== "EEXIST") throw explain(e, `cannot create ${d}`);
      }
    }
  }
}

function openCgroup(dir: string, cgroup: string): number {
  try {
    return openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    throw new TcpkaError("not-found", `cannot open the cgroup ${cgroup}: ${errno(e)}`);
  }
}

/** Remove the pin at `path`, if there is one. */
function unpin(path: string): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if (errno(e) !== "ENOENT") throw explain(e, `cannot remove ${path}`);
  }
}

/** Detach the link pinned at `path` (if any) and unpin it. */
function detachPinned(path: string): void {
  // Detaching a link that is detached already succeeds (bpf_cgroup_link_release returns early).
  withPinned(path, (fd) => {
    try {
      linkDetach(fd);
    } catch (e) {
      throw explain(e, `cannot detach ${path}`);
    }
  });
  try {
    unlinkSync(path);
  } catch (e) {
    if (errno(e) !== "ENOENT") throw explain(e, `cannot remove ${path}`);
  }
}

/** Detach the programs of the links pinned in `dir` now, and remove the pins and the directory. */
function removePinDir(dir: string): void {
  detachPinned(join(dir, "link"));
  detachPinned(join(dir, "setsockopt"));
  for (const f of ["marks", "counters", "meta"]) {
    try {
      unlinkSync(join(dir, f));
    } catch (e) {
      if (errno(e) !== "ENOENT") throw explain(e, `cannot remove ${join(dir, f)}`);
    }
  }
  try {
    rmdirSync(dir);
  } catch (e) {
    if (errno(e) !== "ENOENT") throw explain(e, `cannot remove ${dir}`);
  }
}

/**
 * `fn` with the marks map pinned in the enforcement directory `pinDir` (enforce --existing marks the connections
 * it changes in it), or with undefined where there is none (no hook on this kernel, or no `pinDir`).
 */
export async function withMarks<T>(pinDir: string | undefined, fn: (marksFd?: number) => Promise<T>): Promise<T> {
  let fd: number | undefined;
  if (pinDir !== undefined) {
    try {
      fd = objGet(join(pinDir, "marks"));
    } catch {
      fd = undefined;
    }
  }
  try {
    return await fn(fd);
  } finally {
    if (fd !== undefined) close(fd);
  }
}

/** After a removal: PIN_ROOT goes with its last enforcement. */
function removeEmptyRoot(): void {
  try {
    rmdirSync(PIN_ROOT);
  } catch {
    /* in use or gone */
  }
}

/** An enforcement as --list shows it: what is pinned, checked against what the kernel runs. */
export interface Listed {
  name: string;
  /** from the description, else from the pin name; "?" when neither tells */
  cgroup: string;
  /** where the pinned link is attached, seen from the cgroup that has this path here */
  where: Attachment;
  /** the description, when it describes the program that the link runs now */
  enforcement?: Enforcement;
  /** otherwise: why the settings are not known */
  unknown?: string;
  /** whether the setsockopt program of these settings is attached beside it (programs' later calls kept) */
  hook: boolean;
  /** what the counters say, where they are pinned: connections set up, and programs' calls kept to the rule */
  counts?: { setUp: number; rewritten: number };
}

/** Every enforcement pinned by tcpka (under its shared lock: never half an update). */
export function listEnforcements(mount: string): Listed[] {
  return locked("list the enforcements", true, () => pinDirNames().map((n) => listed(n, mount)));
}

/** The enforcement pinned for one cgroup (a path within the mount), as listEnforcements lists it; undefined if none. */
export function enforcementOf(cgroup: string, mount: string): Listed | undefined {
  const name = pinName(cgroup);
  return locked("list an enforcement", true, () => (pinDirNames().includes(name) ? listed(name, mount) : undefined));
}

function listed(name: string, mount: string): Listed {
  const dir = join(PIN_ROOT, name);
  const meta = pinnedMeta(dir);
  const link = pinnedLink(join(dir, "link"));
  const cgroup = meta?.cgroup ?? cgroupOfPinName(name) ?? "?";
  const where = attachment(link, cgroup === "?" ? undefined : cgroupId(join(mount, cgroup)));
  let unknown: string | undefined;
  if (!link) unknown = "no link is pinned, so nothing is enforced";
  else if (!meta) unknown = "no description is pinned with the link";
  else if (meta.prog_id === undefined) unknown = "pinned by an earlier tcpka, which did not record its program";
  else if (meta.prog_id !== link.progId) {
    unknown = `the link runs BPF program ${link.progId}, not the described ${meta.prog_id}`;
  }
  const hookLink = pinnedLink(join(dir, "setsockopt"));
  const hook =
    hookLink !== undefined && hookLink.cgroupId !== 0n && meta?.setsockopt_prog_id === hookLink.progId && !unknown;
  const counts = withPinned(join(dir, "counters"), (fd) => {
    try {
      return { setUp: Number(counterRead(fd, COUNTER.setUp)), rewritten: Number(counterRead(fd, COUNTER.rewritten)) };
    } catch {
      return undefined;
    }
  });
  const more = counts ? { counts } : {};
  return unknown === undefined && meta
    ? { name, cgroup, where, enforcement: { ...meta, name }, hook, ...more }
    : { name, cgroup, where, unknown, hook, ...more };
}

/**
 * Detach and unpin the enforcement of the cgroup path `cgroup` (also one pinned under the earlier naming
 * scheme); how many pin directories it had (0: none).
 */
export function removeEnforcement(cgroup: string, mount: string, owner?: "agent"): number {
  return locked(`remove the enforcement of ${cgroup}`, false, () => {
    // The agent removes its own only: an operator may have taken the cgroup over since the agent looked.
    const dirs = pinDirsOf(cgroup).filter((d) => owner === undefined || pinnedMeta(d)?.owner === owner);
    const id = cgroupId(join(mount, cgroup));
    for (const dir of dirs) {
      if (settledAttachment(join(dir, "link"), id) === "elsewhere") throw elsewhere(dir, cgroup);
    }
    for (const dir of dirs) removePinDir(dir);
    removeEmptyRoot();
    return dirs.length;
  });
}

/** What the agent made, as its descriptions say (also half-made ones: see EnforceRun.enforce), by cgroup path. */
export function agentEnforcements(): { name: string; cgroup: string; enforcement: Enforcement }[] {
  return locked("list the agent's enforcements", true, () =>
    pinDirNames().flatMap((name) => {
      const meta = pinnedMeta(join(PIN_ROOT, name));
      return meta?.owner === "agent" ? [{ name, cgroup: meta.cgroup, enforcement: { ...meta, name } }] : [];
    }),
  );
}

/** Detach and unpin every enforcement; how many there were. */
export function removeAllEnforcements(): number {
  return locked("remove every enforcement", false, () => {
    const names = pinDirNames();
    for (const n of names) removePinDir(join(PIN_ROOT, n));
    removeEmptyRoot();
    return names.length;
  });
}
