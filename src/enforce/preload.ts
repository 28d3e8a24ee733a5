/**
 * Everything about starting a program with the preload shim (native/preload.c -> libtcpka.so): where the
 * library is, the environment that configures it, and whether LD_PRELOAD can reach the program at all (the
 * dynamic loader ignores it for statically linked programs, which have no PT_INTERP, and for set-user-ID or
 * set-group-ID programs that change credentials).
 */
import { accessSync, closeSync, constants, existsSync, openSync, readSync, statSync } from "node:fs";
import { delimiter, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { TcpkaError } from "../errors.js";
import { type EndpointRule, endpointRuleText } from "../filter.js";
import type { KeepAliveSettings } from "../settings.js";

export type Mode = "strengthen" | "force" | "observe";

export const SHIM_PATH = fileURLToPath(new URL("../../native/build/libtcpka.so", import.meta.url));

export function shimPath(): string {
  if (!existsSync(SHIM_PATH)) {
    throw new TcpkaError("unsupported", `the preload library is not built (${SHIM_PATH} is missing)`, {
      hint: "install a C compiler (apt-get install gcc libc6-dev) and run npm install again",
    });
  }
  // The loader splits LD_PRELOAD at spaces and colons: such a path cannot be preloaded.
  if (/[\s:]/.test(SHIM_PATH)) {
    throw new TcpkaError("unsupported", `the preload library's path contains a space or colon: ${SHIM_PATH}`, {
      hint: "install tcpka in a directory whose path has neither",
    });
  }
  return SHIM_PATH;
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

/** The environment for a program to run under the shim, on top of `base`. */
export function shimEnvironment(cfg: ShimConfig, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const k of Object.keys(env)) if (k.startsWith("TCPKA_")) delete env[k];
  const lib = shimPath();
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

const PT_INTERP = 3;

/**
 * Why LD_PRELOAD cannot reach this program, or null when it can. Follows one level of "#!" to the interpreter,
 * which is what the loader really starts.
 */
export function preloadBlocker(file: string, depth = 0): string | null {
  const st = statSync(file);
  const euid = process.geteuid?.() ?? 0;
  const egid = process.getegid?.() ?? 0;
  // The kernel sets AT_SECURE when exec changes credentials; the loader then ignores LD_PRELOAD paths.
  if (st.mode & 0o4000 && st.uid !== euid) return "set-user-ID";
  if (st.mode & 0o2000 && st.gid !== egid) return "set-group-ID";

  const head = Buffer.alloc(4096);
  const fd = openSync(file, "r");
  let n: number;
  try {
    n = readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  if (n >= 2 && head[0] === 0x23 && head[1] === 0x21 && depth === 0) {
    const line = head.subarray(2, n).toString("latin1").split("\n")[0]?.trim() ?? "";
    const interp = line.split(/\s+/)[0];
    return interp ? preloadBlocker(interp, 1) : null;
  }
  if (n < 64 || head.readUInt32BE(0) !== 0x7f454c46) return null; // not ELF: let exec say what it is
  const is64 = head[4] === 2;
  const le = head[5] === 1;
  const u16 = (o: number) => (le ? head.readUInt16LE(o) : head.readUInt16BE(o));
  const u32 = (o: number) => (le ? head.readUInt32LE(o) : head.readUInt32BE(o));
  const phoff = is64 ? Number(le ? head.readBigUInt64LE(32) : head.readBigUInt64BE(32)) : u32(28);
  const phentsize = u16(is64 ? 54 : 42);
  const phnum = u16(is64 ? 56 : 44);
  const table = Buffer.alloc(phentsize * phnum);
  const fd2 = openSync(file, "r");
  try {
    readSync(fd2, table, 0, table.length, phoff);
  } finally {
    closeSync(fd2);
  }
  for (let i = 0; i < phnum; i++) {
    const type = le ? table.readUInt32LE(i * phentsize) : table.readUInt32BE(i * phentsize);
    if (type === PT_INTERP) return null;
  }
  return "statically linked";
}
