/**
 * Everything about starting a program with the preload shim (native/preload.c -> libtcpka.so), decided before
 * the program starts:
 *  - whether LD_PRELOAD can reach the program at all: the dynamic loader ignores it for statically linked
 *    programs (no PT_INTERP) and for set-user-ID or set-group-ID programs that change credentials, and a
 *    library cannot be loaded into a program for another machine type or another C library's loader;
 *  - which library, and that it really loads and accepts its configuration here: a probe runs a tiny program
 *    with the very environment the program will get, and the library answers (TCPKA_PROBE);
 *  - where no library works, whether tcpka run's fallback (pidfd_getfd on the program's sockets, from its
 *    parent) will be allowed to reach the program instead.
 *
 * Which library: TCPKA_SHIM when set; otherwise the one built at install (native/build/libtcpka.so) or, when
 * that one cannot be loaded here, one that tcpka builds from its sources in native/ at first use into a directory it
 * owns (/var/cache/tcpka for root, $XDG_CACHE_HOME/tcpka or ~/.cache/tcpka for other users).
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  accessSync,
  chmodSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  realpathSync,
  statSync,
} from "node:fs";
import { homedir } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { TcpkaError } from "../errors.js";
import { type EndpointRule, endpointRuleText } from "../filter.js";
import type { KeepAliveSettings } from "../settings.js";
import { Lock } from "../sys/files.js";
import { SysError } from "../sys/libc.js";
import { pidfdGetfd } from "../sys/pidfd.js";

export type Mode = "strengthen" | "force" | "observe";

const NATIVE = fileURLToPath(new URL("../../native/", import.meta.url));
/** What native/build.sh builds the library from: a build is named by their hash. */
const SHIM_SOURCES = ["preload.c", "events.c", "events.h", "shim.h", "build.sh"];
/** The library built at install (npm install / npm run build). */
export const SHIM_PATH = join(NATIVE, "build", "libtcpka.so");

/** Why tcpka cannot reach a program the way it meant to: the line after `tcpka: `, and what to do about it. */
export interface Blocker {
  message: string;
  hint: string;
  /** The program could not be inspected: what the library itself says comes first. */
  unverified?: boolean;
}

const euid = () => process.geteuid?.() ?? 0;
const egid = () => process.getegid?.() ?? 0;

function readable(file: string): boolean {
  try {
    accessSync(file, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

export interface ShimConfig {
  mode: Mode;
  settings: KeepAliveSettings;
  only?: readonly EndpointRule[];
  except?: readonly EndpointRule[];
  /**
   * Where the shim appends its JSON-line events: a file that exists already, its identity ("DEV:INO": the shim
   * writes to nothing else at that path) and the key that every event must carry.
   */
  events?: { path: string; id: string; key: string };
  debug?: boolean;
}

/** The environment for a program to run under the shim `lib`, on top of `base`. */
function environmentFor(cfg: ShimConfig, lib: string, base: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const k of Object.keys(env)) if (k.startsWith("TCPKA_")) delete env[k];
  const existing = (base.LD_PRELOAD ?? "").split(/[\s:]+/).filter((p) => p && p !== lib);
  env.LD_PRELOAD = [lib, ...existing].join(":");
  env.TCPKA_MODE = cfg.mode;
  const s = cfg.settings;
  if (s.idle !== undefined) env.TCPKA_IDLE = String(s.idle);
  if (s.interval !== undefined) env.TCPKA_INTVL = String(s.interval);
  if (s.count !== undefined) env.TCPKA_CNT = String(s.count);
  if (s.userTimeout !== undefined) env.TCPKA_USER_TIMEOUT = String(s.userTimeout);
  if (cfg.only?.length) env.TCPKA_ONLY = cfg.only.map(endpointRuleText).join(",");
  if (cfg.except?.length) env.TCPKA_EXCEPT = cfg.except.map(endpointRuleText).join(",");
  if (cfg.events) {
    env.TCPKA_EVENTS = cfg.events.path;
    env.TCPKA_EVENTS_ID = cfg.events.id;
    env.TCPKA_EVENTS_KEY = cfg.events.key;
  }
  if (cfg.debug) env.TCPKA_DEBUG = "1";
  return env;
}

/**
 * The environment for a program to run under a library that loads and accepts `cfg` here (preloadEnvironment),
 * or a TcpkaError saying why there is none: for tcpka trace, which cannot observe without it.
 */
export function shimEnvironment(cfg: ShimConfig, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const r = preloadEnvironment(cfg, base);
  if ("blocked" in r) throw new TcpkaError("unsupported", r.blocked.message, { hint: r.blocked.hint });
  return r.env;
}

export type Preload = { env: NodeJS.ProcessEnv; notice?: string } | { blocked: Blocker };

const NO_SHIM_HINT = "tcpka enable --pid and tcpka enforce work without it";

/**
 * The environment for a program to run under a library that has just been seen to load and accept `cfg` in
 * this very environment; `notice` when tcpka had to build it. Otherwise why no library can be used here.
 */
export function preloadEnvironment(cfg: ShimConfig, base: NodeJS.ProcessEnv = process.env): Preload {
  const attempt = (lib: string) => {
    const env = environmentFor(cfg, lib, base);
    const answer = probeShim(lib, env);
    return answer === "ok" ? { env } : answer;
  };
  if (base.TCPKA_SHIM) {
    const r = attempt(chosenShim(base.TCPKA_SHIM));
    if ("env" in r) return r;
    return {
      blocked: {
        message: `the preload library that TCPKA_SHIM names cannot be used here: ${r.why}`,
        hint: "point TCPKA_SHIM at a libtcpka.so built on this system (sh native/build.sh FILE), or unset it",
      },
    };
  }
  const shipped = !existsSync(SHIM_PATH)
    ? { why: `${SHIM_PATH} is not built`, loaded: false }
    : /[\s:]/.test(SHIM_PATH)
      ? { why: `its path has a space or colon, which LD_PRELOAD cannot hold (${SHIM_PATH})`, loaded: false }
      : attempt(SHIM_PATH);
  if ("env" in shipped) return shipped;
  if (shipped.loaded) {
    // It loads here, so a build of the same source would reject the configuration too.
    return {
      blocked: {
        message: `the preload library rejected the configuration tcpka gave it: ${shipped.why}`,
        hint: `this is a bug in tcpka: please report it with the command line; ${NO_SHIM_HINT}`,
      },
    };
  }
  const built = buildInCache(attempt);
  if ("env" in built) return built;
  return {
    blocked: {
      message: `the preload library cannot be loaded here (${shipped.why}), and ${built.why}`,
      hint: built.noCompiler
        ? `install a C compiler (e.g. apt-get install gcc libc6-dev): tcpka then builds the library for this system at first use; ${NO_SHIM_HINT}`
        : NO_SHIM_HINT,
    },
  };
}

/**
 * TCPKA_SHIM: a library of the user's choice (for tests, or one built by hand), honoured only where no user but
 * root and this one can have changed or replaced it, since it runs inside the program, perhaps as root.
 */
function chosenShim(path: string): string {
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    throw new TcpkaError("not-found", `TCPKA_SHIM=${path}: no such file`);
  }
  const why = statSync(real).isFile() ? replaceable(real) : "it is not a regular file";
  if (why) {
    throw new TcpkaError("permission", `refusing TCPKA_SHIM=${path}: ${why}`, {
      hint: "the library runs inside the program: it must belong to root or to you, and no one else may write it or its directories",
    });
  }
  if (/[\s:]/.test(real))
    throw new TcpkaError("invalid", `TCPKA_SHIM=${path}: LD_PRELOAD cannot hold a space or colon`);
  return real;
}

/**
 * Why a user other than root and this one could change or replace `path`, or undefined when none can: every
 * component of its real path must belong to root or to this user and be writable by neither group nor others,
 * except a sticky directory (/tmp), where others cannot rename what they do not own.
 */
function replaceable(path: string): string | undefined {
  for (let p = realpathSync(path); ; p = dirname(p)) {
    const st = statSync(p);
    if (st.uid !== 0 && st.uid !== euid()) return `${p} belongs to uid ${st.uid}`;
    if (st.mode & 0o022 && !(st.isDirectory() && st.mode & 0o1000)) return `${p} is writable by others`;
    if (p === "/") return undefined;
  }
}

// ------------------------------------------------------------------------------------------------ the probe

interface Elf {
  bits: 32 | 64;
  machine: number;
  /** PT_INTERP: the dynamic loader that runs it; null for a statically linked program. */
  interp: string | null;
}

const PT_INTERP = 3;
const MACHINES: Record<number, string> = {
  3: "i386",
  8: "mips",
  20: "ppc",
  21: "ppc64",
  22: "s390",
  40: "arm",
  62: "x86-64",
  183: "aarch64",
  243: "riscv",
  258: "loongarch",
};

function machineText(e: Elf): string {
  return `${MACHINES[e.machine] ?? `machine ${e.machine}`} (${e.bits}-bit)`;
}

function readAt(fd: number, length: number, position: number): Buffer {
  const b = Buffer.alloc(length);
  return b.subarray(0, readSync(fd, b, 0, length, position));
}

/** What of an ELF file decides whether a library can be loaded into it (elf(5)); null when it is not ELF. */
function readElf(file: string): Elf | null {
  const fd = openSync(file, "r");
  try {
    const h = readAt(fd, 64, 0);
    const is64 = h[4] === 2;
    if (h.length < (is64 ? 64 : 52) || h.readUInt32BE(0) !== 0x7f454c46) return null;
    const le = h[5] === 1;
    const u16 = (b: Buffer, o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
    const u32 = (b: Buffer, o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
    const word = (b: Buffer, o: number) =>
      is64 ? Number(le ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o)) : u32(b, o);
    const phentsize = u16(h, is64 ? 54 : 42);
    const phoff = word(h, is64 ? 32 : 28);
    // A damaged header is not ELF as far as this goes: exec will say what it is.
    if (phentsize < (is64 ? 56 : 32) || !Number.isSafeInteger(phoff)) return null;
    const table = readAt(fd, phentsize * u16(h, is64 ? 56 : 44), phoff);
    let interp: string | null = null;
    for (let at = 0; at + phentsize <= table.length; at += phentsize) {
      if (u32(table, at) !== PT_INTERP) continue;
      const [offset, size] = is64
        ? [word(table, at + 8), word(table, at + 32)]
        : [u32(table, at + 4), u32(table, at + 16)];
      if (!Number.isSafeInteger(offset)) return null;
      interp = readAt(fd, Math.min(size, 4096), offset).toString("latin1").split("\0")[0] ?? "";
    }
    return { bits: is64 ? 64 : 32, machine: u16(h, 18), interp };
  } finally {
    closeSync(fd);
  }
}

interface ProbeProgram {
  path: string;
  elf: Elf & { interp: string };
}

let probeProgramFound: ProbeProgram | null | undefined;

/**
 * The program that the probe runs with the library: true(1), dynamically linked. A program for the same
 * machine type run by the same loader loads the library as it does.
 */
function probeProgram(): ProbeProgram | null {
  if (probeProgramFound === undefined) {
    probeProgramFound = null;
    for (const path of ["/usr/bin/true", "/bin/true"]) {
      const elf = existsSync(path) ? readElf(path) : null;
      if (elf?.interp) {
        probeProgramFound = { path, elf: { ...elf, interp: elf.interp } };
        break;
      }
    }
  }
  return probeProgramFound;
}

export type ProbeAnswer = "ok" | { why: string; loaded: boolean };

/**
 * Whether `lib` loads and accepts its configuration in `env`, the environment the program will get: true(1)
 * runs with it plus TCPKA_PROBE=3, and the library, once it has read its configuration, answers on fd 3
 * ("tcpka-shim ok MODE" or "tcpka-shim off REASON", native/preload.c). ld.so reports a library that it cannot
 * load on stderr: its first complaint is the reason. TCPKA_EVENTS is left out, so that the probe does not
 * appear among trace's processes. One fork and exec of a tiny program: 1–3 ms.
 */
export function probeShim(lib: string, env: NodeJS.ProcessEnv): ProbeAnswer {
  const program = probeProgram();
  if (!program) return { why: "there is no dynamically linked true(1) to test it with", loaded: false };
  const elf = readable(lib) ? readElf(lib) : null; // an unreadable one: ld.so says so below
  if (elf && (elf.bits !== program.elf.bits || elf.machine !== program.elf.machine)) {
    return {
      why: `${lib} is built for ${machineText(elf)}, this system for ${machineText(program.elf)}`,
      loaded: false,
    };
  }
  const probeEnv: NodeJS.ProcessEnv = { ...env, TCPKA_PROBE: "3" };
  delete probeEnv.TCPKA_EVENTS;
  const r = spawnSync(program.path, [], {
    env: probeEnv,
    stdio: ["ignore", "ignore", "pipe", "pipe"],
    encoding: "utf8",
    timeout: 10_000,
  });
  const answer = /^tcpka-shim (ok|off)(?: (.*))?$/m.exec(String(r.output?.[3] ?? ""));
  if (answer?.[1] === "ok") return "ok";
  if (answer) return { why: answer[2] ?? "disabled", loaded: true };
  if (r.error) return { why: `cannot run ${program.path} to test it: ${r.error.message}`, loaded: false };
  const said = String(r.stderr ?? "")
    .split("\n")
    .filter((l) => l.trim());
  const first = said.find((l) => l.includes(lib)) ?? said[0];
  if (r.signal) return { why: `${lib} makes a program die of ${r.signal}${first ? `: ${first}` : ""}`, loaded: false };
  return { why: first ?? `${lib} did not load (no answer from it)`, loaded: false };
}

// ------------------------------------------------------------------------------------------------ the build

/** Where tcpka keeps the library it builds: /var/cache/tcpka for root, $XDG_CACHE_HOME/tcpka (~/.cache/tcpka). */
export function shimCacheDir(): string {
  if (euid() === 0) return "/var/cache/tcpka";
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg?.startsWith("/") ? xdg : join(homedir(), ".cache"), "tcpka");
}

type Built = { env: NodeJS.ProcessEnv; notice?: string } | { why: string; noCompiler?: boolean };

/**
 * A library built from the shim's sources (SHIM_SOURCES) for this system, in tcpka's cache: reused when one is
 * there and passes the probe, otherwise built under a lock (two runs may race) and probed. Named by machine type
 * and by a hash of the sources and of the dynamic loader, so that an upgrade or another C library gets its own
 * build.
 */
function buildInCache(attempt: (lib: string) => { env: NodeJS.ProcessEnv } | { why: string }): Built {
  const program = probeProgram();
  if (!program) return { why: "tcpka cannot tell what to build one for" };
  const hash = createHash("sha256");
  for (const f of SHIM_SOURCES) {
    try {
      hash.update(readFileSync(join(NATIVE, f)));
    } catch {
      return { why: `the package has no ${join(NATIVE, f)} to build one from` };
    }
  }
  hash.update(program.elf.interp);
  const dir = shimCacheDir();
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const why = replaceable(dir) ?? (/[\s:]/.test(dir) ? "LD_PRELOAD cannot hold a space or colon" : undefined);
    if (why) return { why: `tcpka will not build one in ${dir}: ${why}` };
    // Readable by all: the program may change to another user and then exec, and load it again.
    chmodSync(dir, 0o755);
  } catch (e) {
    return { why: `tcpka cannot build one in ${dir}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` };
  }
  const lib = join(
    dir,
    `libtcpka-${MACHINES[program.elf.machine] ?? program.elf.machine}-${hash.digest("hex").slice(0, 16)}.so`,
  );
  const cached = () => (existsSync(lib) ? attempt(lib) : undefined);
  const ready = cached();
  if (ready && "env" in ready) return ready;
  const lock = Lock.take(join(dir, "build.lock"), "building the preload library", { timeoutMs: 300_000 });
  try {
    const meanwhile = cached(); // another tcpka may have built it while this one waited
    if (meanwhile && "env" in meanwhile) return meanwhile;
    const cc = process.env.CC?.trim() || "cc";
    if (typeof findCommand(cc.split(/\s+/)[0] ?? cc, process.env.PATH ?? DEFAULT_PATH) !== "string") {
      return { why: `there is no C compiler (${cc}) to build one for this system`, noCompiler: true };
    }
    const r = spawnSync("sh", [join(NATIVE, "build.sh"), lib], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    if (r.status !== 0 || !existsSync(lib)) {
      const lines = String(r.stderr ?? "").split("\n");
      const said = lines.find((l) => /error/i.test(l)) ?? lines.find((l) => l.trim()) ?? r.error?.message;
      return { why: `building one for this system failed (${said ?? `exit ${r.status}`})` };
    }
    const fresh = attempt(lib);
    if ("why" in fresh) return { why: `the one tcpka built (${lib}) cannot be used either: ${fresh.why}` };
    return { ...fresh, notice: `built the preload library for this system: ${lib}` };
  } finally {
    lock.release();
  }
}

// ------------------------------------------------------------------------------------------------ commands

const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin";

/**
 * Find a command as execvp(3) and a shell do: a name with a slash as it is, otherwise the first executable
 * regular file in PATH. Fails as a shell does: 127 when there is none, 126 for a directory or a file that is not
 * executable.
 */
export function resolveCommand(cmd: string, path = process.env.PATH ?? DEFAULT_PATH): string {
  const found = findCommand(cmd, path);
  if (found instanceof TcpkaError) throw found;
  return found;
}

function findCommand(cmd: string, path: string): string | TcpkaError {
  const explicit = cmd.includes("/");
  let denied = false;
  for (const c of explicit ? [resolve(cmd)] : path.split(delimiter).map((d) => resolve(d || ".", cmd))) {
    let dir = false;
    try {
      const st = statSync(c);
      dir = st.isDirectory();
      if (!dir) {
        accessSync(c, constants.X_OK);
        if (st.isFile()) return c;
      }
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") continue;
    }
    // A directory or a file that cannot be executed: execve says EACCES, and execvp goes on and reports that
    // at the end. Shells skip directories in PATH, and say what a directory named with a slash is.
    if (dir && explicit) return new TcpkaError("invalid", `${cmd}: is a directory`, { exitCode: 126 });
    if (!dir) denied = true;
  }
  if (denied) return new TcpkaError("permission", `${cmd}: permission denied`, { exitCode: 126 });
  const what = explicit ? "no such file or directory" : "command not found";
  return new TcpkaError("not-found", `${cmd}: ${what}`, { exitCode: 127 });
}

// ------------------------------------------------------------------------------------------------ reach

const STATIC_HINT =
  "the dynamic loader does not run for it; tcpka run falls back to pidfd_getfd for it, tcpka enable --pid does the same for a running process";
const CREDENTIALS_HINT =
  "the loader ignores LD_PRELOAD when exec changes credentials; run it as its owner, or use tcpka enable --pid";
const FOREIGN_HINT =
  "tcpka enforce --cgroup reaches any program; tcpka run falls back to pidfd_getfd where it may reach the program";

/** The first 4096 bytes of a file. */
function head(file: string): Buffer {
  const fd = openSync(file, "r");
  try {
    return readAt(fd, 4096, 0);
  } finally {
    closeSync(fd);
  }
}

/** The interpreter that a "#!" script names, or undefined for anything else. */
function scriptInterpreter(file: string): string | undefined {
  const h = head(file);
  if (h[0] !== 0x23 || h[1] !== 0x21) return undefined;
  return h.subarray(2).toString("latin1").split("\n")[0]?.trim().split(/\s+/)[0] || undefined;
}

function sameFile(a: string, b: string): boolean {
  const x = statSync(a);
  const y = statSync(b);
  return x.dev === y.dev && x.ino === y.ino;
}

/**
 * Why LD_PRELOAD cannot bring the library into this program, or null when it can. Follows one level of "#!"
 * to the interpreter, which is what the loader really starts. The probe runs true(1): a program for another
 * machine type or run by another dynamic loader (a 32-bit program, one linked against musl) is not covered by it.
 */
export function preloadBlocker(file: string, depth = 0, shown = file): Blocker | null {
  if (!readable(file)) {
    // Execute-only: the loader would run it, but nothing here can tell whether it is dynamically linked.
    return {
      message: `${file} cannot be read by uid ${euid()}: tcpka cannot tell whether LD_PRELOAD reaches it`,
      hint: "make it readable (chmod a+r), or run tcpka as root",
      unverified: true,
    };
  }
  const st = statSync(file);
  const unreachable = (why: string, hint: string) => ({ message: `${shown} is ${why}`, hint });
  // The kernel sets AT_SECURE when exec changes credentials; the loader then ignores LD_PRELOAD paths.
  if (st.mode & 0o4000 && st.uid !== euid())
    return unreachable("set-user-ID: LD_PRELOAD cannot reach it", CREDENTIALS_HINT);
  if (st.mode & 0o2000 && st.gid !== egid())
    return unreachable("set-group-ID: LD_PRELOAD cannot reach it", CREDENTIALS_HINT);
  const interpreter = depth === 0 ? scriptInterpreter(file) : undefined;
  if (interpreter) return existsSync(interpreter) ? preloadBlocker(interpreter, 1, shown) : null;
  const elf = readElf(file);
  if (!elf) return null; // not ELF: let exec say what it is
  if (!elf.interp) return unreachable("statically linked: LD_PRELOAD cannot reach it", STATIC_HINT);
  const probe = probeProgram();
  if (!probe || !existsSync(elf.interp)) return null; // the probe fails, or exec does
  if (elf.bits !== probe.elf.bits || elf.machine !== probe.elf.machine) {
    const why = `a program for ${machineText(elf)}: the preload library, for ${machineText(probe.elf)}, cannot be loaded into it`;
    return unreachable(why, FOREIGN_HINT);
  }
  if (!sameFile(elf.interp, probe.elf.interp)) {
    const why = `run by the dynamic loader ${elf.interp}, not by ${probe.elf.interp} that the preload library is tested with`;
    return unreachable(why, FOREIGN_HINT);
  }
  return null;
}

const CAP_SYS_PTRACE = 19; // include/uapi/linux/capability.h

function hasCapability(cap: number): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "latin1"));
  return m !== null && ((BigInt(`0x${m[1]}`) >> BigInt(cap)) & 1n) === 1n;
}

function yamaScope(): number | undefined {
  try {
    return Number(readFileSync("/proc/sys/kernel/yama/ptrace_scope", "ascii").trim());
  } catch {
    return undefined; // no Yama: only the checks of __ptrace_may_access
  }
}

/**
 * Why tcpka run's fallback (pidfd_getfd on the sockets of the program it starts, and of its children) will not
 * be allowed to reach `file` once it runs, or null when it will. pidfd_getfd checks PTRACE_MODE_ATTACH_REALCREDS
 * (__ptrace_may_access, kernel/ptrace.c): without CAP_SYS_PTRACE, the program must have tcpka's uid and gid
 * (no set-user-ID or set-group-ID exec) and be dumpable, which the kernel denies to a program whose file the
 * user cannot read (would_dump in begin_new_exec, fs/exec.c); then Yama (yama_ptrace_access_check): scope 1
 * still lets a parent reach its descendants, 2 requires CAP_SYS_PTRACE, 3 forbids it to everyone.
 */
export function liveBlocker(file: string): Blocker | null {
  const asRoot = "run tcpka as root, or use tcpka enforce --cgroup, which reaches any program";
  try {
    pidfdGetfd(-1, 0);
  } catch (e) {
    if (!(e instanceof SysError && e.errnoName === "EBADF")) {
      const why = e instanceof SysError ? e.errnoName : String(e);
      return {
        message: `pidfd_getfd is not available here (${why}; it needs Linux 5.6+)`,
        hint: "use tcpka enforce --cgroup, which reaches any program",
      };
    }
  }
  const scope = yamaScope();
  if (scope === 3)
    return {
      message: "Yama's ptrace_scope 3 forbids pidfd_getfd to every process",
      hint: "use tcpka enforce --cgroup",
    };
  if (hasCapability(CAP_SYS_PTRACE)) return null;
  if (scope === 2)
    return { message: "Yama's ptrace_scope 2 allows pidfd_getfd only with CAP_SYS_PTRACE", hint: asRoot };
  const unreadable = (f: string) => ({
    message: `${f} is not readable by uid ${euid()}, so the kernel will not let this user reach its process`,
    hint: asRoot,
  });
  if (!readable(file)) return unreadable(file);
  const interpreter = scriptInterpreter(file);
  const program = interpreter && existsSync(interpreter) ? interpreter : file;
  if (!readable(program)) return unreadable(program);
  const st = statSync(program);
  if (st.mode & 0o4000 && st.uid !== euid()) {
    return { message: `${program} is set-user-ID: its process will belong to uid ${st.uid}`, hint: asRoot };
  }
  if (st.mode & 0o2000 && st.gid !== egid()) {
    return { message: `${program} is set-group-ID: its process will have gid ${st.gid}`, hint: asRoot };
  }
  const loader = readElf(program)?.interp; // the ELF loader is checked too (would_dump in load_elf_binary)
  if (loader && existsSync(loader) && !readable(loader)) return unreadable(loader);
  return null;
}
