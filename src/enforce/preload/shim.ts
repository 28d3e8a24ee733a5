/**
 * Which preload library (native/ -> libtcpka.so) a program gets, and that it really loads and accepts its
 * configuration here: a probe runs a tiny program with the very environment the program will get, and the
 * library answers (TCPKA_PROBE).
 *
 * Which library: TCPKA_SHIM when set; otherwise the one built at install (native/build/libtcpka.so) or, when
 * that one cannot be loaded here, one that tcpka builds from the shim's sources at first use into a directory
 * it owns (/var/cache/tcpka for root, $XDG_CACHE_HOME/tcpka or ~/.cache/tcpka for other users).
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { TcpkaError } from "../../errors.js";
import { euid } from "../../sys/files.js";
import { Lock } from "../../sys/lock.js";
import { DEFAULT_PATH, findCommand } from "./command.js";
import { environmentFor, type ShimConfig } from "./environment.js";
import { type Elf, machineName, machineText, readable, readElf } from "./program.js";

const NATIVE = fileURLToPath(new URL("../../../native/", import.meta.url));
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

/** The refusal for a program that tcpka cannot reach: one line, and a hint. */
export function blockedError(b: Blocker): TcpkaError {
  return new TcpkaError("unsupported", b.message, { hint: b.hint });
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

interface ProbeProgram {
  path: string;
  elf: Elf & { interp: string };
}

let probeProgramFound: ProbeProgram | null | undefined;

/**
 * The program that the probe runs with the library: true(1), dynamically linked. A program for the same
 * machine type run by the same loader loads the library as it does.
 */
export function probeProgram(): ProbeProgram | null {
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
    `libtcpka-${machineName(program.elf.machine) ?? program.elf.machine}-${hash.digest("hex").slice(0, 16)}.so`,
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
