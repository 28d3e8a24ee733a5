/**
 * Whether tcpka can reach a program before it starts: through LD_PRELOAD (the dynamic loader ignores it for
 * statically linked programs, which have no PT_INTERP, and for set-user-ID or set-group-ID programs that change
 * credentials; a library cannot be loaded into a program for another machine type or another C library's
 * loader), and where no library works, through tcpka run's fallback (pidfd_getfd on the program's sockets, from
 * its parent).
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { euid } from "../../sys/files.js";
import { SysError } from "../../sys/libc.js";
import { pidfdGetfd } from "../../sys/pidfd.js";
import { machineText, readable, readElf, scriptInterpreter } from "./program.js";
import { type Blocker, probeProgram } from "./shim.js";

const egid = () => process.getegid?.() ?? 0;

const STATIC_HINT =
  "the dynamic loader does not run for it; tcpka run falls back to pidfd_getfd for it, tcpka enable --pid does the same for a running process";
const CREDENTIALS_HINT =
  "the loader ignores LD_PRELOAD when exec changes credentials; run it as its owner, or use tcpka enable --pid";
const FOREIGN_HINT =
  "tcpka enforce --cgroup reaches any program; tcpka run falls back to pidfd_getfd where it may reach the program";

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
