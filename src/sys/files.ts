/**
 * Files that tcpka writes while others may be watching: tcpka often runs as root, in directories and next to
 * processes that other users control. Three primitives, each safe against a local user who races it:
 *
 *  - privateRunDir(): a new directory that only this user can enter, under /run/tcpka (root) or the user's
 *    $XDG_RUNTIME_DIR, never at a predictable name in a world-writable directory;
 *  - AtomicFile: a file replaced in one step (a temporary file in the same directory, fsync, rename), so that
 *    a reader sees the old or the new content, and a symlink at the path is replaced, never followed;
 *  - Lock (lock.ts): an flock(2) on a file in root's runtime directory, for what two runs of tcpka must not do at
 *    once.
 * This module calls no native code (no koffi): the command line's start (cli/boot.ts) uses it before anything else.
 */
import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  type Stats,
  unlinkSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { TcpkaError } from "../errors.js";
import { O_CLOEXEC } from "../kernel/constants.js";

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_RDONLY, O_DIRECTORY } = constants;
export function euid(): number {
  return process.geteuid?.() ?? 0;
}

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
}

/**
 * Why the directory whose lstat is `st` is not one that only this user controls, or undefined when it is: it
 * must be a real directory (not a symlink), owned by this user, and closed to group and others.
 */
function unsafeDir(st: Stats | undefined): string | undefined {
  if (!st) return "it does not exist";
  if (st.isSymbolicLink()) return "it is a symlink";
  if (!st.isDirectory()) return "it is not a directory";
  if (st.uid !== euid()) return `it belongs to uid ${st.uid}`;
  if ((st.mode & 0o077) !== 0) return `its mode is ${(st.mode & 0o777).toString(8)}, not 700`;
  return undefined;
}

/**
 * `path` as a directory only this user may use, made (mode 0700) when missing. Refuses one that another user
 * owns or may write, or a symlink, rather than repairing it: someone else put it there.
 */
export function privateDir(path: string): string {
  if (!lstatOrUndefined(path)) {
    try {
      mkdirSync(path, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw fileError(path, e, "create the directory");
    }
  }
  const why = unsafeDir(lstatOrUndefined(path));
  if (why) {
    throw new TcpkaError("permission", `refusing to use ${path}: ${why}`, {
      hint: "tcpka keeps its runtime files only where no other user can create or replace them; remove it",
    });
  }
  return path;
}

/**
 * The directory where this user's tcpka keeps files that live as long as a run: /run/tcpka for root, and
 * $XDG_RUNTIME_DIR/tcpka (or /run/user/UID/tcpka) for other users. undefined when a user has neither.
 */
export function runtimeBase(): string | undefined {
  const uid = euid();
  if (uid === 0) return privateDir("/run/tcpka");
  for (const base of [process.env.XDG_RUNTIME_DIR, `/run/user/${uid}`]) {
    if (!base?.startsWith("/")) continue;
    if (unsafeDir(lstatOrUndefined(base)) === undefined) return privateDir(join(base, "tcpka"));
  }
  return undefined;
}

/**
 * A new directory (mode 0700) that only this user can enter, named `prefix` and random characters: under
 * runtimeBase(), or, for a user without a runtime directory, a mkdtemp in the temporary directory (random, so
 * no other user can create it first). Remove it with rmSync(dir, { recursive: true }) when done.
 */
export function privateRunDir(prefix: string): string {
  const base = runtimeBase() ?? tmpdir();
  try {
    return mkdtempSync(join(base, prefix)); // mode 0700 (uv_fs_mkdtemp)
  } catch (e) {
    throw fileError(base, e, "create a directory in");
  }
}

/** The error for a failed file operation (`what`, e.g. "write") on `path`, in tcpka's words. */
export function fileError(path: string, e: unknown, what: string): TcpkaError {
  const code = (e as NodeJS.ErrnoException).code ?? String(e);
  if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
    return new TcpkaError("permission", `cannot ${what} ${path}: permission denied`);
  }
  if (code === "ENOENT") return new TcpkaError("not-found", `cannot ${what} ${path}: no such directory`);
  if (code === "ENOTDIR")
    return new TcpkaError("not-found", `cannot ${what} ${path}: a part of its path is not a directory`);
  if (code === "EISDIR") return new TcpkaError("invalid", `cannot write ${path}: it is a directory`);
  return new TcpkaError("system", `cannot ${what} ${path}: ${code}`);
}

/**
 * A file replaced atomically. create() makes the temporary file at once, next to the target, so that a caller
 * learns whether the file can be written before it changes anything else; commit() writes, fsyncs and renames
 * it over the target (a symlink there is replaced, not followed); abort() removes it.
 */
export class AtomicFile {
  private fd: number;
  private readonly tmp: string;

  private constructor(
    readonly path: string,
    fd: number,
    tmp: string,
  ) {
    this.fd = fd;
    this.tmp = tmp;
  }

  static create(path: string, mode = 0o644): AtomicFile {
    let st: Stats | undefined;
    try {
      st = lstatOrUndefined(path);
    } catch (e) {
      throw fileError(path, e, "write"); // ENOTDIR: a part of the path is a file
    }
    if (st?.isDirectory()) throw new TcpkaError("invalid", `cannot write ${path}: it is a directory`);
    if (st && !st.isFile() && !st.isSymbolicLink()) {
      throw new TcpkaError("invalid", `cannot write ${path}: it is not a regular file`);
    }
    const dir = dirname(path);
    for (let attempt = 0; ; attempt++) {
      const tmp = join(dir, `.${basename(path)}.tcpka-${Math.random().toString(36).slice(2, 10)}`);
      try {
        // O_EXCL with O_NOFOLLOW: a file or symlink that someone placed at this name is never opened.
        const fd = openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        return new AtomicFile(path, fd, tmp);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EEXIST" && attempt < 5) continue;
        throw fileError(path, e, "write");
      }
    }
  }

  commit(data: string | Uint8Array): void {
    try {
      const bytes = typeof data === "string" ? Buffer.from(data) : data;
      for (let off = 0; off < bytes.length; ) off += writeSync(this.fd, bytes, off);
      fsyncSync(this.fd);
      closeSync(this.fd);
      this.fd = -1;
      renameSync(this.tmp, this.path);
    } catch (e) {
      this.abort();
      throw fileError(this.path, e, "write");
    }
    // The rename itself is durable once the directory is synced.
    try {
      const dfd = openSync(dirname(this.path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      try {
        fsyncSync(dfd);
      } finally {
        closeSync(dfd);
      }
    } catch {
      /* a directory that cannot be opened for reading: the data itself is synced */
    }
  }

  abort(): void {
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
    try {
      unlinkSync(this.tmp);
    } catch {
      /* committed, or removed already */
    }
  }
}

/**
 * A file that this user alone could have written, whole: undefined where it is missing, a symlink (never
 * followed), not a regular file, another user's, writable by group or others, or bigger than `max` bytes. For what
 * tcpka keeps in its runtime directory and trusts on the next run (the BTF's answers, the code cache).
 */
export function readPrivateFile(path: string, max: number): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== euid() || (st.mode & 0o022) !== 0 || st.size > max) return undefined;
    return readFileSync(fd);
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** Write a whole file atomically (AtomicFile in one call). */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): void {
  AtomicFile.create(path, mode).commit(data);
}

export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * What `fd` holds, read to its end but never more than `max` bytes plus one: a result longer than `max` says there
 * was more (the caller refuses it), without reading on. Waits out EAGAIN (a non-blocking pipe).
 */
export function readAtMost(fd: number, max: number): Buffer {
  const buf = Buffer.alloc(max + 1);
  let n = 0;
  while (n < buf.length) {
    let k: number;
    try {
      k = readSync(fd, buf, n, buf.length - n, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EAGAIN") continue;
      throw e;
    }
    if (k === 0) break;
    n += k;
  }
  return buf.subarray(0, n);
}

/** Remove a directory that privateRunDir() made, and everything in it; no error when it is gone. */
export function removeRunDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
