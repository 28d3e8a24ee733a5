/**
 * trace's event channel: the file that the shim appends its events to while CMD runs (native/events.c), and
 * what keeps it private and makes sure it goes when trace does.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  type BigIntStats,
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readdirSync,
  renameSync,
} from "node:fs";
import { join } from "node:path";
import { readEvents, type TraceResult } from "../../inspect/events.js";
import { LOCK_EX, O_CLOEXEC } from "../../kernel/constants.js";
import { privateRunDir, removeRunDir, runtimeBase } from "../../sys/files.js";
import { flockNow } from "../../sys/libc.js";
import { Lock } from "../../sys/lock.js";
import type { ShimConfig } from "./environment.js";

const { O_WRONLY, O_RDONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;

const CHANNEL_PREFIX = "trace-";

/**
 * trace's event channel. A new directory that only this user can enter (privateRunDir: under /run/tcpka for
 * root, $XDG_RUNTIME_DIR/tcpka for others; never a name that another user could predict and make first) holds
 * the event file, 0600. The shim writes to that very file only (its device and inode are in TCPKA_EVENTS_ID;
 * a symlink or another file at the path is left alone) and starts every line with the run's random key
 * (TCPKA_EVENTS_KEY, which only the traced processes have, in their environment): a line without it is not
 * theirs and is not read. The directory goes when trace ends. If tcpka is killed outright, a watchdog removes
 * it at once; a channel left by a run that died anyway (its lock is free) is removed by the next trace.
 */
export class EventChannel {
  private constructor(
    readonly dir: string,
    readonly file: string,
    readonly id: string,
    readonly key: string,
    private readonly lock: Lock,
    private readonly watchdog: ChildProcess,
  ) {}

  static open(): EventChannel {
    const base = runtimeBase();
    if (base) removeDeadChannels(base);
    const dir = privateRunDir(CHANNEL_PREFIX);
    try {
      // The lock is taken under another name and then renamed into place, so that another trace's
      // removeDeadChannels never finds a "lock" that nobody holds yet: between its creation and the flock, this
      // live channel would look dead to it.
      const lock = Lock.take(join(dir, "lock.new"), "tcpka trace");
      renameSync(join(dir, "lock.new"), join(dir, "lock"));
      const file = join(dir, "events.jsonl");
      const fd = openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600);
      let st: BigIntStats;
      try {
        st = fstatSync(fd, { bigint: true });
      } finally {
        closeSync(fd);
      }
      const key = randomBytes(16).toString("hex");
      return new EventChannel(dir, file, `${st.dev}:${st.ino}`, key, lock, watchdog(dir));
    } catch (e) {
      removeRunDir(dir);
      throw e;
    }
  }

  /** The channel as the shim is told of it (ShimConfig.events). */
  get events(): NonNullable<ShimConfig["events"]> {
    return { path: this.file, id: this.id, key: this.key };
  }

  read(): TraceResult {
    return readEvents(this.file, this.key);
  }

  close(): void {
    removeRunDir(this.dir);
    this.lock.release();
    this.watchdog.stdin?.end("done\n");
  }
}

/**
 * A process that removes `dir` if tcpka dies without removing it (SIGKILL): /bin/sh reading a pipe from tcpka,
 * in a session of its own so that a terminal's ^C or hang-up does not reach it. tcpka writes a line once it has
 * removed the directory itself; end of file without one means that tcpka is gone. (CMD does not inherit the
 * pipe: see inheritedFds in src/ui/child.ts.)
 */
function watchdog(dir: string): ChildProcess {
  const w = spawn("/bin/sh", ["-c", 'read -r _ || rm -rf -- "$0"', dir], {
    detached: true,
    cwd: "/",
    stdio: ["pipe", "ignore", "ignore"],
  });
  // A watchdog that could not start (no /bin/sh) or was killed: writing "done" to it must not fail trace, and
  // the next trace removes what a killed one leaves.
  w.on("error", () => {});
  w.stdin?.on("error", () => {});
  w.unref();
  return w;
}

/** A channel without a lock this long after it was made belongs to a trace that died while making it. */
const UNLOCKED_FOR_MS = 60_000;

/**
 * Remove the channels of trace runs that died without removing theirs: nobody holds their lock any more, or
 * (a run killed while it made its channel) there has been none for a minute.
 */
function removeDeadChannels(base: string): void {
  for (const name of readdirSync(base)) {
    if (!name.startsWith(CHANNEL_PREFIX)) continue;
    const dir = join(base, name);
    let fd: number;
    try {
      fd = openSync(join(dir, "lock"), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    } catch (e) {
      // Being made this moment, or removed already; or left half-made by a trace that died.
      if ((e as NodeJS.ErrnoException).code === "ENOENT" && madeBefore(dir, Date.now() - UNLOCKED_FOR_MS)) {
        removeRunDir(dir);
      }
      continue;
    }
    try {
      if (flockNow(fd, LOCK_EX)) removeRunDir(dir); // flock(2) locks go with the process that held them
    } finally {
      closeSync(fd);
    }
  }
}

function madeBefore(dir: string, ms: number): boolean {
  try {
    return lstatSync(dir).mtimeMs < ms;
  } catch {
    return false;
  }
}
