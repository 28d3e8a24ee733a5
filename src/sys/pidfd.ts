/**
 * pidfd_open(2) and pidfd_getfd(2): reach the sockets of another process. No glibc wrappers exist, so both go
 * through syscall(2). pidfd_getfd needs PTRACE_MODE_ATTACH_REALCREDS over the target (same real uid and a dumpable
 * target, or CAP_SYS_PTRACE); the duplicate is the same open file description and is created O_CLOEXEC.
 * Duplicating is not invisible to the target: pidfd_getfd installs the duplicate with receive_fd(), whose
 * __receive_sock() sets the socket's net_cls classid and net_prio index to the caller's cgroup
 * (sock_update_classid, sock_update_netprioidx), and the socket keeps them. README.md says what that means.
 */
import { SYS_pidfd_getfd, SYS_pidfd_open } from "../kernel/constants.js";
import { ESTALE_REUSED } from "../kernel/errno.js";
import { close, SysError, sockfsInode, syscall } from "./libc.js";

export function pidfdOpen(pid: number): number {
  return syscall("pidfd_open", SYS_pidfd_open, pid, 0);
}

/** Duplicate `targetFd` of the process behind `pidfd` into this process. Close the result at once after use. */
export function pidfdGetfd(pidfd: number, targetFd: number): number {
  return syscall("pidfd_getfd", SYS_pidfd_getfd, pidfd, targetFd, 0);
}

/**
 * Borrow sockets of other processes: one pidfd per process (opened on first use, kept until close()), and a
 * duplicate per socket that is checked against the inode listed before and closed as soon as the caller is done.
 */
export class SocketBorrower {
  private readonly pidfds = new Map<number, number | SysError>();

  /**
   * Run `fn` on a duplicate of `fd` of process `pid`, after checking that it is still socket `inode`: the fd
   * number may have been reused since it was listed, by another socket or by a file whose inode number (on its
   * own file system) is the same, so the duplicate must be a socket of sockfs with that inode. A reused fd throws
   * ESTALE without `fn` ever seeing it. The duplicate is closed before this returns.
   */
  with<T>(pid: number, fd: number, inode: number, fn: (dup: number) => T): T {
    let pidfd = this.pidfds.get(pid);
    if (pidfd === undefined) {
      try {
        pidfd = pidfdOpen(pid);
      } catch (e) {
        if (!(e instanceof SysError)) throw e;
        pidfd = e;
      }
      this.pidfds.set(pid, pidfd);
    }
    if (pidfd instanceof SysError) throw pidfd;
    const dup = pidfdGetfd(pidfd, fd);
    try {
      if (sockfsInode(dup) !== inode) throw new SysError("pidfd_getfd", ESTALE_REUSED);
      return fn(dup);
    } finally {
      close(dup);
    }
  }

  close(): void {
    for (const p of this.pidfds.values()) if (typeof p === "number") close(p);
    this.pidfds.clear();
  }
}
