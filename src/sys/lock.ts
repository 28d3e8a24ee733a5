/**
 * Lock: an flock(2) on a file in root's runtime directory, for what two runs of tcpka must not do at once. Apart
 * from files.ts, which calls no native code, because flock comes through koffi (libc.ts).
 */
import { closeSync, constants, openSync } from "node:fs";
import { TcpkaError } from "../errors.js";
import { LOCK_EX, LOCK_SH, O_CLOEXEC } from "../kernel/constants.js";
import { fileError, sleepSync } from "./files.js";
import { flockNow } from "./libc.js";

const { O_RDWR, O_CREAT, O_NOFOLLOW } = constants;

/**
 * An flock(2) held on `path` until release() (or until the process ends, when the kernel drops it). Exclusive
 * by default; `shared` for readers. Waits up to `timeoutMs`, then throws; `what` names the work in the error.
 */
export class Lock {
  private constructor(private fd: number) {}

  static take(path: string, what: string, opts: { shared?: boolean; timeoutMs?: number } = {}): Lock {
    const fd = openLockFile(path);
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    try {
      while (!flockNow(fd, opts.shared ? LOCK_SH : LOCK_EX)) {
        if (Date.now() > deadline) {
          throw new TcpkaError("system", `${what}: another tcpka still holds ${path}`, {
            hint: "wait for it to finish, then run this again",
          });
        }
        sleepSync(10);
      }
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    return new Lock(fd);
  }

  /** The lock if it can be had at once; undefined while another holds it. */
  static tryTake(path: string, opts: { shared?: boolean } = {}): Lock | undefined {
    const fd = openLockFile(path);
    if (flockNow(fd, opts.shared ? LOCK_SH : LOCK_EX)) return new Lock(fd);
    closeSync(fd);
    return undefined;
  }

  release(): void {
    if (this.fd < 0) return;
    closeSync(this.fd); // closing the only fd of the open file description drops the lock
    this.fd = -1;
  }
}

function openLockFile(path: string): number {
  try {
    return openSync(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600);
  } catch (e) {
    throw fileError(path, e, "open the lock file");
  }
}
