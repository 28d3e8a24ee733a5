/**
 * cgroup v2 directories for end-to-end tests against the real kernel. A TestCgroup has a unique name
 * (tcpka-t-<pid>-<random>) under the cgroup2 mount, wherever that is (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
 * hybrid systems). Processes are started inside by writing their pid to cgroup.procs before they exec. When the
 * test that made it ends, passed or failed (and at the latest when this process exits), the cleanups registered
 * with onDestroy run, every process in it is killed by pid, and the directory is removed, children first.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { cgroup2Mount } from "../../src/inspect/cgroup.js";
import { killPid } from "./processes.js";
import { type Scope, uniqueName } from "./scope.js";

/** Cgroups not yet removed; whatever a crash leaves here goes when the process exits. */
const live = new Set<TestCgroup>();
process.once("exit", () => {
  for (const cg of [...live].reverse()) cg.destroy();
});

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export class TestCgroup {
  readonly mount: string;
  /** The directory, e.g. /sys/fs/cgroup/unified/tcpka-t-123-ab12cd. */
  readonly dir: string;
  /** The path inside the cgroup2 mount, starting with "/", as /proc/PID/cgroup and tcpka print it. */
  readonly path: string;
  private readonly children: TestCgroup[] = [];
  private readonly cleanups: (() => void)[] = [];
  private destroyed = false;

  private constructor(mount: string, path: string) {
    this.mount = mount;
    this.path = path;
    this.dir = join(mount, path);
  }

  /** A new cgroup right under the cgroup2 mount, removed when `scope` ends. */
  static create(scope?: Scope, name = uniqueName()): TestCgroup {
    const cg = new TestCgroup(cgroup2Mount(), `/${name}`);
    mkdirSync(cg.dir);
    live.add(cg);
    scope?.after(() => cg.destroy());
    return cg;
  }

  /** A cgroup below this one (removed with it, first). */
  child(name: string): TestCgroup {
    const cg = new TestCgroup(this.mount, `${this.path}/${name}`);
    mkdirSync(cg.dir);
    this.children.push(cg);
    return cg;
  }

  /**
   * Start `argv` inside: a shell writes its own pid to cgroup.procs and then execs argv, so the returned child's
   * pid is the command's, and it is in this cgroup before its first instruction.
   */
  spawn(argv: readonly string[]): ChildProcess {
    const child = spawn("sh", ["-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', this.dir, ...argv], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    if (child.pid === undefined) throw new Error(`cannot start ${argv.join(" ")}`);
    return child;
  }

  /** The pids in this cgroup itself (not below it). */
  pids(): number[] {
    return readFileSync(join(this.dir, "cgroup.procs"), "ascii").split("\n").filter(Boolean).map(Number);
  }

  /** Run `fn` when the cgroup is destroyed, before its processes are killed and the directory removed. */
  onDestroy(fn: () => void): void {
    this.cleanups.push(fn);
  }

  /** Cleanups, kill every process in it and below (by pid), wait until it is empty, rmdir. Safe to call twice. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    const errors: unknown[] = [];
    for (const fn of this.cleanups) {
      try {
        fn();
      } catch (e) {
        errors.push(e);
      }
    }
    for (const c of this.children) {
      try {
        c.destroy();
      } catch (e) {
        errors.push(e);
      }
    }
    // also whatever a test made by hand (mkdir) below it
    if (existsSync(this.dir)) errors.push(...removeTree(this.dir));
    if (errors.length) throw errors[0];
  }
}

/** Kill the processes of a cgroup directory and below by pid, then remove the directories, deepest first. */
function removeTree(dir: string): unknown[] {
  const errors: unknown[] = [];
  for (const c of readdirSync(dir, { withFileTypes: true })) {
    if (c.isDirectory()) errors.push(...removeTree(join(dir, c.name)));
  }
  for (let attempt = 0; ; attempt++) {
    let pids: number[] = [];
    try {
      pids = readFileSync(join(dir, "cgroup.procs"), "ascii").split("\n").filter(Boolean).map(Number);
    } catch {
      return errors; // gone
    }
    for (const pid of pids) killPid(pid);
    try {
      rmdirSync(dir);
      return errors;
    } catch (e) {
      if (attempt >= 100) {
        errors.push(new Error(`cannot remove the test cgroup ${dir}: ${(e as Error).message}`));
        return errors;
      }
      sleepSync(20);
    }
  }
}
