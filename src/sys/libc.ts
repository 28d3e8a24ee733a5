/**
 * libc through koffi: the only file (with the rest of src/sys/) that calls native code. Each wrapper either
 * returns the result or throws a SysError that carries the errno and the name of the failed call.
 */
import { createRequire } from "node:module";
import { TcpkaError } from "../errors.js";
import {
  AF_INET,
  AF_NETLINK,
  AF_UNIX,
  CLOCK_MONOTONIC_COARSE,
  FILEID_KERNFS,
  LOCK_NB,
  MSG_DONTWAIT,
  O_CLOEXEC,
  O_RDONLY,
  S_IFMT,
  S_IFSOCK,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
} from "../kernel/constants.js";
import { EWOULDBLOCK, errnoName } from "../kernel/errno.js";

// koffi ships as CommonJS with a prebuilt binary for this platform; createRequire keeps this module ESM.
const require = createRequire(import.meta.url);
let koffiLoadedBy: "native" | "koffi" = "koffi";
const koffi = loadKoffi();

/** Which loader gave koffi: "native" where its module was loaded directly (a test holds this machine to it). */
export function koffiLoader(): "native" | "koffi" {
  return koffiLoadedBy;
}

/**
 * koffi's native module. koffi's own loader (koffi/index.cjs, then @koromix/koffi-PLATFORM/index.js) costs 10-15 ms
 * of every start (node:util, createRequire, reading node's ELF program headers to tell glibc from musl, its
 * deprecation wrappers), against 2-3 ms for the native module itself, which is all tcpka calls. So the glibc build
 * of this platform's package is loaded directly; where that is missing or fails to load (musl, another platform,
 * another layout of the package), koffi's loader decides, as before.
 */
function loadKoffi(): typeof import("koffi") {
  if (process.platform === "linux" && (process.arch === "x64" || process.arch === "arm64")) {
    try {
      const native = require(`@koromix/koffi-linux-${process.arch}/linux_${process.arch}/koffi.node`) as {
        load?: unknown;
      };
      if (typeof native.load === "function") {
        koffiLoadedBy = "native";
        return native as unknown as typeof import("koffi");
      }
    } catch {
      // not there, or not for this libc: koffi's loader below says why, if it cannot either
    }
  }
  return require("koffi") as typeof import("koffi");
}

const lib = koffi.load("libc.so.6");

// The calls made once per socket or per fd take their pointers as plain addresses (intptr_t) into scratch memory
// allocated once: koffi passes a number faster than it checks and pins a Buffer, which matters 250,000 times.
const c = {
  socket: lib.func("int socket(int domain, int type, int protocol)"),
  close: lib.func("int close(int fd)"),
  setsockopt: lib.func("int setsockopt(int fd, int level, int name, intptr_t val, uint32_t len)"),
  getsockopt: lib.func("int getsockopt(int fd, int level, int name, intptr_t val, intptr_t len)"),
  fstat: lib.func("int fstat(int fd, intptr_t buf)"),
  readlinkat: lib.func("long readlinkat(int dirfd, intptr_t path, intptr_t buf, size_t size)"),
  getdents64: lib.func("long getdents64(int fd, intptr_t buf, size_t size)"),
  read: lib.func("long read(int fd, intptr_t buf, size_t size)"),
  bind: lib.func("int bind(int fd, intptr_t addr, uint32_t len)"),
  listen: lib.func("int listen(int fd, int backlog)"),
  setns: lib.func("int setns(int fd, int nstype)"),
  flock: lib.func("int flock(int fd, int op)"),
  open_by_handle_at: lib.func("int open_by_handle_at(int mountfd, intptr_t handle, int flags)"),
  mount: lib.func(
    "int mount(const char *src, const char *target, const char *fstype, unsigned long flags, const void *data)",
  ),
  // syscall(2) is variadic, but glibc implements it in assembly that reads all six argument registers, so a
  // fixed-arity prototype is safe and spares koffi's slower variadic path.
  syscall: lib.func("long syscall(long nr, long a, long b, long c, long d, long e)"),
  clock_getres: lib.func("int clock_getres(int clock, intptr_t res)"),
  open: lib.func("int open(const char *path, int flags)"),
  mmap: lib.func("void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off)"),
  munmap: lib.func("int munmap(void *addr, size_t len)"),
  // prctl(2) is variadic in glibc; PR_SET_NAME's fixed prototype is safe (as syscall's above).
  prctl: lib.func("int prctl(int option, const char *name, long a, long b, long c)"),
  recvmmsg: lib.func("int recvmmsg(int fd, intptr_t msgvec, unsigned int vlen, int flags, intptr_t timeout)"),
};

/** A failed system call: errno, its symbolic name and the call that failed. */
export class SysError extends TcpkaError {
  readonly errno: number;
  readonly errnoName: string;
  readonly syscall: string;

  constructor(syscall: string, errno: number) {
    const name = errnoName(errno);
    const code = errno === 1 || errno === 13 ? "permission" : errno === 38 ? "unsupported" : "system";
    super(code, `${syscall}: ${name} (${strerror(errno)})`);
    this.name = "SysError";
    this.errno = errno;
    this.errnoName = name;
    this.syscall = syscall;
  }
}

const strerrorFn = lib.func("const char *strerror(int errnum)");
function strerror(errno: number): string {
  const s = strerrorFn(errno) as string | null;
  return (s ?? `error ${errno}`).toLowerCase();
}

function check(syscall: string, ret: number): number {
  if (ret < 0) throw new SysError(syscall, koffi.errno());
  return ret;
}

export function socket(domain: number, type: number, protocol: number): number {
  return check("socket", c.socket(domain, type, protocol) as number);
}

export function close(fd: number): void {
  // close() must not be retried on EINTR on Linux: the fd is gone either way.
  c.close(fd);
}

// Scratch memory for the wrappers below. Calls are synchronous and each thread has its own copy of this
// module, so sharing it is safe. An ArrayBuffer's memory never moves, so its address stays valid. The wrappers
// read and write it through typed-array views, not Buffer methods: these calls are made 250,000 times in a
// `tcpka enable` on 50,000 sockets, and a Buffer method's argument checks cost more than the access itself.
const bytes = new Uint8Array(new ArrayBuffer(512));
const i32 = new Int32Array(bytes.buffer);
const u32 = new Uint32Array(bytes.buffer);
const SCRATCH = Number(koffi.address(bytes));
const INT = 0; // an option value
const LEN = 8; // its length
const LINK = 64; // a link's text: a socket's is at most "socket:[18446744073709551615]"
const LINK_SIZE = 64;
const NAME = 128; // an fd number as text, NUL-terminated
const STAT = 256; // struct stat (144 bytes on x86_64, 128 on arm64)
const SOCKADDR = 448; // struct sockaddr_in (16 bytes)
const HANDLE = 400; // struct file_handle with an 8-byte f_handle
const TIMESPEC = 480; // struct timespec: tv_sec, tv_nsec (8 bytes each)

export function getsockoptInt(fd: number, level: number, name: number): number {
  i32[LEN / 4] = 4;
  check("getsockopt", c.getsockopt(fd, level, name, SCRATCH + INT, SCRATCH + LEN) as number);
  return i32[INT / 4] as number;
}

export function setsockoptInt(fd: number, level: number, name: number, value: number): void {
  i32[INT / 4] = value;
  check("setsockopt", c.setsockopt(fd, level, name, SCRATCH + INT, 4) as number);
}

// struct stat as glibc's fstat fills it: st_dev (8 bytes) at 0 and st_ino (8 bytes) at 8 on every 64-bit
// layout; st_mode at 24 on x86_64, where the 8-byte st_nlink comes before it (arch/x86/include/uapi/asm/stat.h),
// and at 16 on the generic layout of arm64 and riscv64 (include/uapi/asm-generic/stat.h). Little-endian.
const ST_MODE = process.arch === "x64" ? 24 : 16;

// sockfs's device as fstat reports it, learnt from a socket of this thread's own: -1 until then.
let sockfsDevLow = -1;
let sockfsDevHigh = -1;

function fstatScratch(fd: number): void {
  check("fstat", c.fstat(fd, SCRATCH + STAT) as number);
}

function learnSockfsDevice(): void {
  const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  try {
    fstatScratch(fd);
  } finally {
    close(fd);
  }
  sockfsDevLow = u32[STAT / 4] as number;
  sockfsDevHigh = u32[STAT / 4 + 1] as number;
}

/**
 * The inode number of `fd` when it is a socket of sockfs (what /proc/PID/fd shows as socket:[INODE]), 0 when it
 * is anything else: a regular file, a pipe, or a Unix socket's file opened O_PATH (S_ISSOCK, but on the file
 * system it lives in), any of which may carry the same inode number as a socket. One fstat(2). Every socket's
 * inode, in every namespace, comes from one kernel-internal sockfs mount (sock_alloc() takes it from sock_mnt,
 * which sock_init() mounts once), so its device is learnt once, from a socket of tcpka's own, not assumed.
 */
export function sockfsInode(fd: number): number {
  if (sockfsDevLow < 0) learnSockfsDevice();
  fstatScratch(fd);
  if (u32[STAT / 4] !== sockfsDevLow || u32[STAT / 4 + 1] !== sockfsDevHigh) return 0;
  if (((u32[(STAT + ST_MODE) / 4] as number) & S_IFMT) !== S_IFSOCK) return 0;
  // Exact as a double below 2^53.
  return (u32[(STAT + 8) / 4] as number) + (u32[(STAT + 12) / 4] as number) * 0x1_0000_0000;
}

/** bind(2) to 127.0.0.1 on a port the kernel picks (struct sockaddr_in: family, port, address, in network order). */
export function bindLoopback4(fd: number): void {
  bytes.fill(0, SOCKADDR, SOCKADDR + 16);
  bytes[SOCKADDR] = AF_INET; // sin_family, little-endian u16
  bytes.set([127, 0, 0, 1], SOCKADDR + 4);
  check("bind", c.bind(fd, SCRATCH + SOCKADDR, 16) as number);
}

/**
 * bind(2) a netlink socket to multicast `groups` (struct sockaddr_nl: nl_family u16, nl_pad u16, nl_pid u32 = 0
 * for the kernel to pick, nl_groups u32).
 */
export function bindNetlink(fd: number, groups: number): void {
  bytes.fill(0, SOCKADDR, SOCKADDR + 12);
  bytes[SOCKADDR] = AF_NETLINK;
  u32[(SOCKADDR + 8) / 4] = groups >>> 0;
  check("bind", c.bind(fd, SCRATCH + SOCKADDR, 12) as number);
}

/** setsockopt(2) of a struct timeval option (SO_RCVTIMEO): tv_sec and tv_usec, 8 bytes each. */
export function setsockoptTimeval(fd: number, level: number, name: number, ms: number): void {
  bytes.fill(0, TIMESPEC, TIMESPEC + 16);
  u32[TIMESPEC / 4] = Math.floor(ms / 1000);
  u32[TIMESPEC / 4 + 2] = (ms % 1000) * 1000;
  check("setsockopt", c.setsockopt(fd, level, name, SCRATCH + TIMESPEC, 16) as number);
}

/**
 * Datagrams received many at a time: recvmmsg(2) into `count` slots of `size` bytes each, without waiting. The
 * memory is laid out once: struct mmsghdr[count] (struct msghdr of 56 bytes on 64-bit Linux — msg_name, msg_namelen
 * and padding, msg_iov, msg_iovlen, msg_control, msg_controllen, msg_flags and padding — then msg_len and
 * padding: 64 bytes), struct iovec[count] (base, length), then the slots.
 */
export class DatagramBatch {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private readonly address: number;
  private readonly data: number;

  constructor(
    readonly count: number,
    readonly size: number,
  ) {
    const iovs = count * 64;
    this.data = iovs + count * 16;
    this.bytes = new Uint8Array(new ArrayBuffer(this.data + count * size));
    this.view = new DataView(this.bytes.buffer);
    this.address = Number(koffi.address(this.bytes));
    for (let i = 0; i < count; i++) {
      const iov = iovs + i * 16;
      this.view.setBigUint64(iov, BigInt(this.address + this.data + i * size), true);
      this.view.setBigUint64(iov + 8, BigInt(size), true);
      this.view.setBigUint64(i * 64 + 16, BigInt(this.address + iov), true); // msg_iov
      this.view.setBigUint64(i * 64 + 24, 1n, true); // msg_iovlen
    }
  }

  /**
   * Receive what is queued, up to `count` datagrams, without waiting: how many (0 when none was). Throws
   * SysError on any other failure (ENOBUFS: the socket's queue overflowed, and datagrams were dropped).
   */
  receive(fd: number): number {
    for (;;) {
      const n = c.recvmmsg(fd, this.address, this.count, MSG_DONTWAIT, 0) as number;
      if (n >= 0) return n;
      const errno = koffi.errno();
      if (errno === EWOULDBLOCK) return 0;
      if (errno !== 4) throw new SysError("recvmmsg", errno);
    }
  }

  /** Where datagram `i` of the last receive starts in `bytes`, and its length. */
  offset(i: number): number {
    return this.data + i * this.size;
  }

  length(i: number): number {
    return this.view.getUint32(i * 64 + 56, true);
  }
}

export function listen(fd: number, backlog: number): void {
  check("listen", c.listen(fd, backlog) as number);
}

/** setns(2): move the calling thread into the namespace that `fd` (an nsfs file) names. */
export function setns(fd: number, nstype: number): void {
  check("setns", c.setns(fd, nstype) as number);
}

/**
 * open_by_handle_at(2) of a kernfs node by its id (`kernfs_fh_to_dentry`: a handle of type FILEID_KERNFS whose 8
 * bytes are kn->id, what name_to_handle_at gives for a cgroup directory); `mountFd` is open on that file system.
 * Needs CAP_DAC_READ_SEARCH (may_decode_fh). Throws SysError: ESTALE when no such node exists any more.
 */
export function openKernfsNode(mountFd: number, id: number, flags: number): number {
  u32[HANDLE / 4] = 8; // handle_bytes
  i32[HANDLE / 4 + 1] = FILEID_KERNFS; // handle_type
  u32[HANDLE / 4 + 2] = id % 0x1_0000_0000; // little-endian u64
  u32[HANDLE / 4 + 3] = Math.floor(id / 0x1_0000_0000);
  return check("open_by_handle_at", c.open_by_handle_at(mountFd, SCRATCH + HANDLE, flags) as number);
}

/**
 * The kernel's HZ (jiffies per second, a build option: 100, 250, 300, 1000), which no interface states: the
 * resolution of CLOCK_MONOTONIC_COARSE is one tick, TICK_NSEC = (NSEC_PER_SEC + HZ / 2) / HZ
 * (posix_get_coarse_res returns KTIME_LOW_RES, include/vdso/ktime.h; the vDSO answers LOW_RES_NSEC, the same).
 * Any process may ask. Throws when the answer is no TICK_NSEC of a whole HZ.
 */
export function kernelHz(): number {
  check("clock_getres", c.clock_getres(CLOCK_MONOTONIC_COARSE, SCRATCH + TIMESPEC) as number);
  const ns = (u32[TIMESPEC / 4] as number) * 1e9 + (u32[TIMESPEC / 4 + 2] as number);
  const hz = Math.round(1e9 / ns);
  if (hz < 24 || hz > 10_000 || Math.floor((1e9 + Math.floor(hz / 2)) / hz) !== ns)
    throw new Error(`CLOCK_MONOTONIC_COARSE has a resolution of ${ns} ns: not one tick of a whole HZ`);
  return hz;
}

/**
 * A raw system call with up to five integer arguments (the ones it does not take are passed as 0 and ignored);
 * returns the result or throws SysError named `name`.
 */
export function syscall(name: string, nr: number, a = 0, b = 0, d = 0, e = 0, f = 0): number {
  return check(name, Number(c.syscall(nr, a, b, d, e, f)));
}

/** PR_SET_NAME (include/uapi/linux/prctl.h) */
const PR_SET_NAME = 15;

/**
 * Name the calling thread (prctl PR_SET_NAME: what /proc/PID/comm shows for the main thread, and what a BPF
 * program's bpf_get_current_comm reads), cut to the kernel's 15 bytes. /proc/PID/cmdline is left as it is.
 */
export function nameThread(name: string): void {
  check("prctl", c.prctl(PR_SET_NAME, name.slice(0, 15), 0, 0, 0) as number);
}

/**
 * flock(2) without waiting (LOCK_NB is or-ed in): true when the lock was taken, false when another open file
 * description holds it (EWOULDBLOCK); any other failure throws.
 */
export function flockNow(fd: number, op: number): boolean {
  if ((c.flock(fd, op | LOCK_NB) as number) === 0) return true;
  const errno = koffi.errno();
  if (errno === EWOULDBLOCK || errno === 4) return false;
  throw new SysError("flock", errno);
}

export function mount(source: string, target: string, fstype: string): void {
  check("mount", c.mount(source, target, fstype, 0, null) as number);
}

/**
 * read(2) into `buf` (whose address is `address`, from addressOf: its memory never moves); retried on EINTR.
 * Returns the bytes read, 0 at the end.
 */
export function readInto(fd: number, buf: Uint8Array, address: number): number {
  for (;;) {
    const n = Number(c.read(fd, address, buf.length));
    if (n >= 0) return n;
    const errno = koffi.errno();
    if (errno !== 4) throw new SysError("read", errno);
  }
}

/**
 * The first bytes of a file (up to `buf`'s length) into `buf`, whose address is `address`: how many, or -1 when
 * it cannot be opened or read (gone, say). No exception on failure: for files that are often gone by the time
 * they are read (/proc of a process that has exited), where a thrown error costs more than the read.
 */
export function readHead(path: string, buf: Uint8Array, address: number): number {
  const fd = c.open(path, O_RDONLY | O_CLOEXEC) as number;
  if (fd < 0) return -1;
  const n = Number(c.read(fd, address, buf.length));
  c.close(fd);
  return n < 0 ? -1 : n;
}

/**
 * mmap(2) `len` bytes of `fd` from `offset`, shared (PROT_READ, and PROT_WRITE when `writable`): the memory as an
 * ArrayBuffer (valid until unmap is called: no access after it).
 */
export function mapShared(
  fd: number,
  len: number,
  offset: number,
  writable: boolean,
): { memory: ArrayBuffer; unmap: () => void } {
  const PROT_READ = 1;
  const PROT_WRITE = 2;
  const MAP_SHARED = 1;
  const ptr = c.mmap(null, len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, offset);
  // MAP_FAILED is (void *)-1
  if (ptr === null || koffi.address(ptr) === 0xffffffffffffffffn) throw new SysError("mmap", koffi.errno());
  let mapped = true;
  return {
    memory: koffi.view(ptr, len),
    unmap: () => {
      if (mapped) c.munmap(ptr, len);
      mapped = false;
    },
  };
}

/** The address of a Buffer's memory, for system calls that take structs with pointers (bpf(2)). */
export function addressOf(buf: Uint8Array): number {
  return Number(koffi.address(buf));
}

// getdents64(2) reads the entries of a directory in place: struct linux_dirent64 (include/linux/dirent.h) is
// d_ino (8 bytes), d_off (8), d_reclen (2), d_type (1), then d_name, NUL-terminated.
const dents = new Uint8Array(new ArrayBuffer(64 * 1024));
const DENTS = Number(koffi.address(dents));

/**
 * The fd numbers listed in an open /proc/PID/fd directory, appended to `out` in the kernel's (ascending)
 * order. Reads the entries in place instead of making a string per fd: a process may hold 50,000.
 */
export function procFds(dirfd: number, out: number[]): void {
  for (;;) {
    const n = Number(c.getdents64(dirfd, DENTS, dents.length));
    if (n < 0) throw new SysError("getdents64", koffi.errno());
    if (n === 0) return;
    for (let off = 0; off < n; off += (dents[off + 16] as number) | ((dents[off + 17] as number) << 8)) {
      let i = off + 19;
      let ch = dents[i] as number;
      if (ch < 48 || ch > 57) continue; // "." and ".."
      let fd = 0;
      for (; ch !== 0; ch = dents[++i] as number) fd = fd * 10 + ch - 48;
      out.push(fd);
    }
  }
}

// "socket:[" as bytes: what a socket's link starts with (sockfs_dname in net/socket.c).
const SOCKET_PREFIX = [0x73, 0x6f, 0x63, 0x6b, 0x65, 0x74, 0x3a, 0x5b];

/**
 * The socket inode that fd `fd` of an open /proc/PID/fd directory refers to (readlinkat(2) reads
 * "socket:[INODE]"), 0 when it is something else, -1 when it is gone (closed since it was listed).
 */
export function fdSocketInode(dirfd: number, fd: number): number {
  // The fd number as text, written digit by digit: no string is made.
  let digits = 1;
  for (let v = fd; v >= 10; v = Math.floor(v / 10)) digits++;
  bytes[NAME + digits] = 0;
  for (let i = NAME + digits - 1, v = fd; i >= NAME; i--, v = Math.floor(v / 10)) bytes[i] = 48 + (v % 10);
  const len = Number(c.readlinkat(dirfd, SCRATCH + NAME, SCRATCH + LINK, LINK_SIZE));
  if (len < 0) return -1;
  if (len <= SOCKET_PREFIX.length) return 0;
  for (let i = 0; i < SOCKET_PREFIX.length; i++) if (bytes[LINK + i] !== SOCKET_PREFIX[i]) return 0;
  let inode = 0;
  for (let i = LINK + 8; i < LINK + len && bytes[i] !== 0x5d; i++) inode = inode * 10 + (bytes[i] as number) - 48;
  return inode;
}

/** The sockets among the fds of an open /proc/PID/fd directory, appended to `out` as fd, inode, fd, inode, ... */
export function procFdSockets(dirfd: number, out: number[]): void {
  const fds: number[] = [];
  procFds(dirfd, fds);
  for (const fd of fds) {
    const inode = fdSocketInode(dirfd, fd);
    if (inode > 0) out.push(fd, inode);
  }
}
