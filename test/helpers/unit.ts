/**
 * The shipped systemd unit (contrib/systemd/tcpka-agent.service) as the tests read it, and a command run the way
 * that unit runs the agent, without systemd (which is not PID 1 on these machines): as root with exactly the
 * unit's capability bounding set and NoNewPrivileges (setpriv), in a private mount namespace that reproduces the
 * unit's sandbox directives as systemd 252 sets them up (src/core/namespace.c: ProtectSystem=strict makes every
 * mount read-only but /proc, /sys, /dev and the writable paths; ProtectHome=yes puts an empty inaccessible
 * directory over /home, /root and /run/user; PrivateTmp=yes a new /tmp and /var/tmp; ...), propagation slave as
 * systemd's. A [Service] directive this module does not know how to reproduce is an error, so that nothing the unit
 * grants or forbids goes unchecked.
 */
import { realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { REPO } from "./paths.js";
import { type Process, type Result, runSync, start } from "./processes.js";
import type { Scope } from "./scope.js";

export const UNIT = join(REPO, "contrib", "systemd", "tcpka-agent.service");

/** A unit file's sections and their key=value lines, in order (comments and blank lines dropped). */
export class UnitFile {
  private constructor(
    readonly text: string,
    private readonly entries: readonly { section: string; key: string; value: string }[],
  ) {}

  static parse(text: string): UnitFile {
    const entries: { section: string; key: string; value: string }[] = [];
    let section = "";
    for (const [i, raw] of text.split("\n").entries()) {
      const line = raw.trim();
      if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
      if (line.endsWith("\\")) throw new Error(`unit line ${i + 1}: continuation lines are not read here`);
      const head = /^\[(.+)\]$/.exec(line);
      if (head) {
        section = head[1]!;
        continue;
      }
      const eq = line.indexOf("=");
      if (eq <= 0) throw new Error(`unit line ${i + 1}: not KEY=VALUE: ${line}`);
      entries.push({ section, key: line.slice(0, eq).trim(), value: line.slice(eq + 1).trim() });
    }
    return new UnitFile(text, entries);
  }

  /** Every value of `key` in `section`, in order. */
  values(section: string, key: string): string[] {
    return this.entries.filter((e) => e.section === section && e.key === key).map((e) => e.value);
  }

  /** The one value of `key` in `section`, or undefined; a key given twice is an error. */
  value(section: string, key: string): string | undefined {
    const v = this.values(section, key);
    if (v.length > 1) throw new Error(`[${section}] ${key} is given ${v.length} times`);
    return v[0];
  }

  keys(section: string): string[] {
    return this.entries.filter((e) => e.section === section).map((e) => e.key);
  }

  /** CapabilityBoundingSet=, as CAP_ names in the order written. */
  capabilities(): string[] {
    const caps = this.values("Service", "CapabilityBoundingSet").flatMap((v) => v.split(/\s+/).filter(Boolean));
    for (const c of caps) if (!/^CAP_[A-Z_]+$/.test(c)) throw new Error(`CapabilityBoundingSet: ${c} is not read here`);
    return caps;
  }
}

/** An ExecStart=-style command line split as systemd splits it (quotes, no escapes, no specifiers, no $). */
export function execArgv(line: string): { prefixes: string; argv: string[] } {
  const m = /^([-@:+!]*)(.*)$/.exec(line)!;
  const argv: string[] = [];
  const re = /\s*(?:"([^"]*)"|'([^']*)'|([^\s"']+))/y;
  const rest = m[2]!.trimEnd();
  while (re.lastIndex < rest.length) {
    const t = re.exec(rest);
    if (!t) throw new Error(`cannot split: ${line}`);
    argv.push(t[1] ?? t[2] ?? t[3]!);
  }
  for (const a of argv)
    if (/[%$\\]/.test(a)) throw new Error(`specifiers, variables and escapes are not read here: ${a}`);
  return { prefixes: m[1]!, argv };
}

/** `s` quoted for sh. */
export function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * The [Service] keys about starting, stopping and restarting the agent: nothing to reproduce for a command run
 * once. (Any other key, User= among them, must be one of SANDBOX.)
 */
const LIFECYCLE = new Set([
  "Type",
  "ExecStartPre",
  "ExecStart",
  "ExecReload",
  "Restart",
  "RestartSec",
  "RestartPreventExitStatus",
  "RuntimeDirectoryPreserve",
]);

/** The sandbox directives reproduced below, each with the only value that is reproduced. */
const SANDBOX: Record<string, string | null> = {
  CapabilityBoundingSet: null,
  NoNewPrivileges: "yes",
  ProtectSystem: "strict",
  RuntimeDirectory: null,
  RuntimeDirectoryMode: null,
  ReadOnlyPaths: null,
  ReadWritePaths: null,
  ProtectHome: "yes",
  PrivateTmp: "yes",
  ProtectControlGroups: "yes",
  ProtectKernelModules: "yes",
  ProtectKernelLogs: "yes",
  ProtectHostname: "yes",
};

/** Where the sandbox keeps what it needs, inside its own /tmp. */
const SCRATCH = "/tmp/.tcpka-unit";

/** Is `path` (absolute) `dir` or below it? */
function under(path: string, dir: string): boolean {
  return path === dir || path.startsWith(`${dir}/`);
}

export interface SandboxOptions {
  /** Run with these capabilities instead of the unit's (to show what each one is for). */
  caps?: readonly string[];
  /** Trace these system calls with strace -f, into the file `to`. */
  strace?: { calls: readonly string[]; to: string };
  /**
   * Unmount every BPF file system at /sys/fs/bpf in the sandbox's own mount namespace first (nothing of it
   * reaches the host's): the service started without its ExecStartPre, on a host that has none.
   */
  noBpffs?: boolean;
}

/**
 * Commands run as the unit runs the agent. The checkout and node are used where they are, unless the sandbox
 * hides them (a clone under /root, node under /home): then they are bind-mounted into the sandbox's own /tmp
 * first, through file descriptors opened before anything was hidden, as an install in /usr/local would be seen.
 */
export class Sandbox {
  readonly unit: UnitFile;
  readonly caps: readonly string[];
  private readonly hidden: string[] = [];
  private readonly protectHostname: boolean;

  constructor(unit: UnitFile) {
    this.unit = unit;
    for (const key of unit.keys("Service")) {
      if (LIFECYCLE.has(key)) continue;
      if (!(key in SANDBOX)) {
        throw new Error(
          `[Service] ${key}: the tests cannot reproduce it; check it by hand and teach test/helpers/unit.ts`,
        );
      }
      const want = SANDBOX[key];
      const got = unit.value("Service", key);
      if (want !== null && got !== want) throw new Error(`[Service] ${key}=${got}: only ${key}=${want} is reproduced`);
    }
    if (unit.value("Service", "PrivateTmp") !== "yes")
      throw new Error("the sandbox keeps its scratch files in PrivateTmp's /tmp");
    this.caps = unit.capabilities();
    if (unit.value("Service", "ProtectHome") === "yes") this.hidden.push("/home", "/root", "/run/user");
    this.hidden.push("/tmp", "/var/tmp");
    this.protectHostname = unit.value("Service", "ProtectHostname") === "yes";
  }

  /** The paths of a directive that takes a list (ReadOnlyPaths=, ReadWritePaths=...), every line of it. */
  private paths(key: string): string[] {
    const paths = this.unit.values("Service", key).flatMap((v) => v.split(/\s+/).filter(Boolean));
    for (const p of paths)
      if (!p.startsWith("/")) throw new Error(`${key}=${p}: only plain absolute paths are read here`);
    return paths;
  }

  private isHidden(path: string): boolean {
    return this.hidden.some((d) => under(path, d));
  }

  /**
   * The shell script that sets up the namespace as systemd would, then execs "$@". As in namespace.c, the mounts
   * are made first (a path that is to be read-only or writable and is not a mount point is bind-mounted onto
   * itself), then made read-only, each subtree but the paths of other, writable entries.
   */
  private script(stage: { fd: number; path: string; as: string }[], noBpffs = false): string {
    const s: string[] = ["set -eu"];
    if (noBpffs) s.push("while grep -qs ' /sys/fs/bpf bpf ' /proc/self/mounts; do umount /sys/fs/bpf; done");
    // The mounts in place, mountinfo's octal escapes undone; whether a path is one.
    s.push(`mounts() { awk '{print $5}' /proc/self/mountinfo | while read -r m; do printf '%b\\n' "$m"; done; }`);
    s.push(`ismount() { mounts | grep -qxF -- "$1"; }`);
    const pattern = (paths: readonly string[]) => paths.flatMap((p) => [shQuote(p), `${shQuote(p)}/*`]).join("|");
    /** Every mount at or below one of `roots` read-only, but those at or below one of `keep`. */
    const readOnly = (roots: readonly string[], keep: readonly string[]) =>
      `mounts | while read -r m; do case "$m" in ${keep.length ? `${pattern(keep)}) ;; ` : ""}${roots.includes("/") ? "*" : pattern(roots)}) mount -o remount,bind,ro "$m" ;; esac; done`;
    const selfBind = (p: string) => `ismount ${shQuote(p)} || mount --bind ${shQuote(p)} ${shQuote(p)}`;

    for (const x of stage) s.push(`exec ${x.fd}<${shQuote(x.path)}`);
    s.push("# PrivateTmp=yes", "for d in /tmp /var/tmp; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $d; done");
    s.push(`mkdir -m 0755 ${SCRATCH} ${SCRATCH}/inaccessible.d && : > ${SCRATCH}/inaccessible`);
    s.push(`chmod 000 ${SCRATCH}/inaccessible ${SCRATCH}/inaccessible.d`);
    for (const x of stage) {
      const as = shQuote(x.as);
      s.push(
        `mkdir -p ${as} && mount --no-canonicalize --bind /proc/self/fd/${x.fd} ${as} && mount -o remount,bind,ro ${as}`,
      );
      s.push(`exec ${x.fd}<&-`);
    }

    const mode = this.unit.value("Service", "RuntimeDirectoryMode") ?? "0755";
    const runtime = (this.unit.value("Service", "RuntimeDirectory") ?? "").split(/\s+/).filter(Boolean);
    for (const d of runtime) {
      // systemd makes it (on the host) before the agent starts, with this mode.
      const p = shQuote(`/run/${d}`);
      const want = Number.parseInt(mode, 8).toString(8);
      s.push(`# RuntimeDirectory=${d}`, `[ -d ${p} ] || mkdir -m ${mode} ${p}`);
      s.push(
        `[ "$(stat -c %a ${p})" = ${want} ] || { echo "/run/${d}: mode $(stat -c %a ${p}), not ${mode}" >&2; exit 99; }`,
      );
    }
    const writable = [...runtime.map((d) => `/run/${d}`), ...this.paths("ReadWritePaths")];
    const readOnlyPaths = this.paths("ReadOnlyPaths");
    for (const p of [...writable, ...readOnlyPaths]) s.push(selfBind(p));

    if (this.unit.value("Service", "ProtectSystem") === "strict") {
      s.push(
        "# ProtectSystem=strict",
        readOnly(["/"], ["/proc", "/sys", "/dev", "/tmp", "/var/tmp", ...writable, ...this.hidden]),
      );
    }
    if (readOnlyPaths.length) s.push("# ReadOnlyPaths=", readOnly(readOnlyPaths, writable));
    if (this.unit.value("Service", "ProtectControlGroups") === "yes") {
      s.push("# ProtectControlGroups=yes", readOnly(["/sys/fs/cgroup"], []));
    }
    // systemd's inaccessible nodes: an empty directory or file, mode 000, read-only.
    const inaccessible = (path: string) =>
      `if [ -d ${path} ] && [ ! -L ${path} ]; then n=${SCRATCH}/inaccessible.d; elif [ -e ${path} ]; then n=${SCRATCH}/inaccessible; else n=; fi; ` +
      `[ -z "$n" ] || { mount --bind "$n" ${path} && mount -o remount,bind,ro ${path}; }`;
    if (this.unit.value("Service", "ProtectKernelModules") === "yes") {
      s.push("# ProtectKernelModules=yes", inaccessible("/usr/lib/modules"), inaccessible("/lib/modules"));
    }
    if (this.unit.value("Service", "ProtectKernelLogs") === "yes") {
      s.push("# ProtectKernelLogs=yes", inaccessible("/proc/kmsg"), inaccessible("/dev/kmsg"));
    }
    if (this.unit.value("Service", "ProtectHome") === "yes") {
      s.push("# ProtectHome=yes", ...["/home", "/root", "/run/user"].map(inaccessible));
    }
    s.push('exec "$@"');
    return s.join("\n");
  }

  /** setpriv's arguments for `caps`: root keeps exactly these (bounding set = permitted = effective after exec). */
  static setpriv(caps: readonly string[], noNewPrivs: boolean): string[] {
    const bounding = ["-all", ...caps.map((c) => `+${c.slice(4).toLowerCase()}`)].join(",");
    return [
      "setpriv",
      "--inh-caps=-all",
      "--ambient-caps=-all",
      `--bounding-set=${bounding}`,
      ...(noNewPrivs ? ["--no-new-privs"] : []),
      "--",
    ];
  }

  /**
   * `tcpka ARGS...` in the sandbox: this checkout's bin/tcpka.js run by this node, each staged where the sandbox
   * would hide it. With `strace`, every process of it is traced for those system calls into the file `to`.
   */
  tcpka(args: readonly string[], opts: SandboxOptions = {}): Result {
    const node = this.place(process.execPath, "node");
    const repo = this.place(REPO, "repo");
    const stage = [node.stage, repo.stage].flatMap((x, i) => (x ? [{ ...x, fd: 3 + i }] : []));
    return this.exec(stage, [node.path, join(repo.path, "bin", "tcpka.js"), ...args], opts);
  }

  /**
   * `tcpka ARGS...` started in the sandbox, in the background (the agent itself): the Process is tcpka's own
   * (unshare, sh and setpriv each exec the next), stopped by pid when `scope` ends.
   */
  startTcpka(scope: Scope, args: readonly string[], opts: Omit<SandboxOptions, "strace"> = {}): Process {
    const node = this.place(process.execPath, "node");
    const repo = this.place(REPO, "repo");
    const stage = [node.stage, repo.stage].flatMap((x, i) => (x ? [{ ...x, fd: 3 + i }] : []));
    return start(scope, this.argv(stage, [node.path, join(repo.path, "bin", "tcpka.js"), ...args], opts), {
      timeoutMs: 300_000,
    });
  }

  /** Where the sandbox sees a file of this checkout (staged in its /tmp when it hides the checkout). */
  inCheckout(...parts: string[]): string {
    return join(this.place(REPO, "repo").path, ...parts);
  }

  /** `command` (its program an absolute path that the sandbox does not hide) in the sandbox. */
  run(command: readonly string[], opts: SandboxOptions = {}): Result {
    if (!command[0]?.startsWith("/") || this.isHidden(command[0])) throw new Error(`run: ${command[0]}: not reachable`);
    return this.exec([], command, opts);
  }

  private exec(stage: { fd: number; path: string; as: string }[], command: readonly string[], opts: SandboxOptions) {
    return runSync(this.argv(stage, command, opts), { timeoutMs: 120_000 });
  }

  private argv(
    stage: { fd: number; path: string; as: string }[],
    command: readonly string[],
    opts: SandboxOptions,
  ): string[] {
    const caps = opts.caps ?? this.caps;
    const nnp = this.unit.value("Service", "NoNewPrivileges") === "yes";
    const strace = opts.strace;
    const argv = [
      ...(strace
        ? ["strace", "-f", "-qq", "-o", strace.to, "-e", `trace=${strace.calls.join(",")}`, "-e", "signal=none"]
        : []),
      "unshare",
      "--mount",
      "--propagation",
      "slave",
      ...(this.protectHostname ? ["--uts"] : []),
      "--",
      "sh",
      "-c",
      this.script(stage, opts.noBpffs),
      "tcpka-sandbox",
      ...Sandbox.setpriv(caps, nnp),
      ...command,
    ];
    return argv;
  }

  /** Where `path` is seen inside the sandbox, and what to bind-mount for that when the sandbox hides it. */
  private place(path: string, name: string): { path: string; stage?: { path: string; as: string } } {
    const real = realpathSync(path);
    if (!this.isHidden(real)) return { path: real };
    if (name === "node") {
      const prefix = dirname(dirname(real)); // PREFIX/bin/node
      const as = `${SCRATCH}/node`;
      return { path: join(as, real.slice(prefix.length + 1)), stage: { path: prefix, as } };
    }
    const as = `${SCRATCH}/${name}`;
    return { path: as, stage: { path: real, as } };
  }
}
