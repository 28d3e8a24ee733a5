/**
 * Where a command's report goes with -o FILE (tcpka trace): made ready before the command's work starts, so that
 * a path that cannot be written fails first, and written (or dropped) once the report is known. tcpka runs as
 * root: the path is handled as one that another user may have prepared.
 */
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readlinkSync,
  realpathSync,
  type Stats,
  statSync,
  writeSync,
} from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { TcpkaError } from "../errors.js";
import { O_CLOEXEC } from "../kernel/constants.js";
import { AtomicFile, euid, fileError } from "../sys/files.js";

const { O_WRONLY, O_NOCTTY } = constants;

/** Where -o puts the report: made ready before CMD runs, written (or dropped) once the report is known. */
export interface ReportSink {
  commit(text: string): void;
  abort(): void;
}

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

/** Why users other than this one (and root) may create or replace names in `dir`, or undefined. */
function othersControl(dir: string): string | undefined {
  let st: Stats;
  try {
    st = statSync(dir);
  } catch {
    return undefined; // AtomicFile says what is wrong with it
  }
  if (st.mode & 0o002) return "every user can write";
  if (st.mode & 0o020) return `group ${st.gid} can write`;
  if (st.uid !== euid() && st.uid !== 0) return `uid ${st.uid} owns`;
  return undefined;
}

/**
 * The sink for -o PATH. A regular file (or none yet) is replaced atomically (AtomicFile: a temporary file next
 * to it, renamed over it at the end): a reader never sees half a report, and a hard link is not written
 * through. One of tcpka's own fds (/dev/stdout, /dev/fd/N, a process substitution) is written as it is, as a
 * shell's >&N would; a FIFO or terminal is opened now and written at the end. A symlink is followed only in a
 * directory that no other user can write: in /tmp or someone's home directory another user can point it at any
 * file, which root would then overwrite; there it is refused.
 */
export function reportSink(path: string): ReportSink {
  for (let hops = 0; ; hops++) {
    const own = ownFd(path);
    if (own !== undefined) return fdSink(path, own, false);
    const st = lstatOrUndefined(path);
    const others = othersControl(dirname(path));
    if (st?.isSymbolicLink()) {
      if (others || hops >= 8) {
        throw new TcpkaError(
          "permission",
          `refusing to follow the symlink ${path}: ${others ? `${others} ${dirname(path)}` : "too many levels"}`,
          { hint: "give -o a path in a directory that only you control" },
        );
      }
      path = resolve(dirname(path), readlinkSync(path));
    } else if (st?.isFIFO() || st?.isCharacterDevice()) {
      if (others && st.uid !== euid()) {
        throw new TcpkaError(
          "permission",
          `refusing to write to ${path}: uid ${st.uid} made it, and ${others} ${dirname(path)}`,
          { hint: "give -o a path in a directory that only you control" },
        );
      }
      let fd: number;
      try {
        fd = openSync(path, O_WRONLY | O_NOCTTY | O_CLOEXEC); // a FIFO waits for its reader, as a shell's > does
      } catch (e) {
        throw fileError(path, e, "write");
      }
      return fdSink(path, fd, true);
    } else {
      return AtomicFile.create(path);
    }
  }
}

/** N when `path` names this process's own fd N (/proc/self/fd/N, which /dev/stdout and /dev/fd/N lead to). */
function ownFd(path: string): number | undefined {
  const n = basename(path);
  if (!/^\d+$/.test(n)) return undefined;
  try {
    return realpathSync(dirname(path)) === `/proc/${process.pid}/fd` ? Number(n) : undefined;
  } catch {
    return undefined;
  }
}

/** The report written to an fd at the end (closed after when `close`); the fd is checked now. */
function fdSink(path: string, fd: number, close: boolean): ReportSink {
  try {
    fstatSync(fd);
  } catch (e) {
    throw fileError(path, e, "write");
  }
  const done = () => {
    if (close) closeSync(fd);
  };
  return {
    commit(text: string) {
      try {
        const bytes = Buffer.from(text);
        for (let off = 0; off < bytes.length; ) {
          try {
            off += writeSync(fd, bytes, off);
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e; // an fd shared non-blocking
          }
        }
      } catch (e) {
        throw fileError(path, e, "write");
      } finally {
        done();
      }
    },
    abort: done,
  };
}
