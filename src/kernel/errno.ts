/**
 * errno names, so that any module can name an errno without loading libc (src/sys/libc.ts, which does, throws
 * SysErrors that carry them).
 */

// include/uapi/asm-generic/errno-base.h and errno.h
export const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  17: "EEXIST",
  22: "EINVAL",
  24: "EMFILE",
  38: "ENOSYS",
  88: "ENOTSOCK",
  92: "ENOPROTOOPT",
  93: "EPROTONOSUPPORT",
  95: "EOPNOTSUPP",
  97: "EAFNOSUPPORT",
  98: "EADDRINUSE",
  99: "EADDRNOTAVAIL",
  100: "ENETDOWN",
  101: "ENETUNREACH",
  103: "ECONNABORTED",
  104: "ECONNRESET",
  106: "EISCONN",
  107: "ENOTCONN",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
  113: "EHOSTUNREACH",
  114: "EALREADY",
  115: "EINPROGRESS",
  116: "ESTALE",
  // include/linux/errno.h: kernel-internal, yet bpf(2) returns it (a map without batch operations, bpf_map_do_batch)
  524: "ENOTSUPP",
};

// include/uapi/asm-generic/errno.h: EWOULDBLOCK is EAGAIN
export const EWOULDBLOCK = 11;

// The fd number now holds another file than the one listed: reported as ESTALE ("stale file handle").
export const ESTALE_REUSED = 116;

/** "ECONNREFUSED" for 111, "errno 4242" for a number not in the table. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

// A target socket that no walk of the kernel met (closed, or in another namespace): "no such file or directory".
export const ENOENT = 2;
// A netlink socket's receive queue overflowed and messages were dropped (netlink_overrun)
export const ENOBUFS = 105;
export const EAGAIN = 11;
export const EINTR = 4;
