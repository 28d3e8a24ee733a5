/**
 * libc through koffi: the only file (with the rest of src/sys/) that calls native code. Each wrapper either
 * returns the result or throws a SysError that carries the errno and the name of the failed call.
 */
import { createRequire } from "node:module";
import { TcpkaError } from "../errors.js";
import { ERRNO_NAMES } from "./constants.js";

// koffi ships as CommonJS with a prebuilt binary for this platform; createRequire keeps this module ESM.
const require = createRequire(import.meta.url);
const koffi = require("koffi") as typeof import("koffi");

const lib = koffi.load("libc.so.6");

const c = {
  socket: lib.func("int socket(int domain, int type, int protocol)"),
  close: lib.func("int close(int fd)"),
  setsockopt: lib.func("int setsockopt(int fd, int level, int name, void *val, uint32_t len)"),
  getsockopt: lib.func("int getsockopt(int fd, int level, int name, void *val, void *len)"),
  fstat: lib.func("int fstat(int fd, void *buf)"),
  readlinkat: lib.func("long readlinkat(int dirfd, const char *path, void *buf, size_t size)"),
  mount: lib.func(
    "int mount(const char *src, const char *target, const char *fstype, unsigned long flags, const void *data)",
  ),
  // syscall(2) is variadic, but glibc implements it in assembly that reads all six argument registers, so a
  // fixed-arity prototype is safe and spares koffi's slower variadic path.
  syscall: lib.func("long syscall(long nr, long a, long b, long c)"),
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

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
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

// One scratch buffer for integer options: calls are synchronous, so sharing it is safe.
const intBuf = Buffer.alloc(4);
const lenBuf = Buffer.alloc(4);

export function getsockoptInt(fd: number, level: number, name: number): number {
  lenBuf.writeUInt32LE(4, 0);
  check("getsockopt", c.getsockopt(fd, level, name, intBuf, lenBuf) as number);
  return intBuf.readInt32LE(0);
}

export function setsockoptInt(fd: number, level: number, name: number, value: number): void {
  intBuf.writeInt32LE(value, 0);
  check("setsockopt", c.setsockopt(fd, level, name, intBuf, 4) as number);
}

// struct stat: st_ino is the second 64-bit field on x86_64 and on the generic layout (arm64, riscv64).
const statBuf = Buffer.alloc(256);

/** The inode number of an open file descriptor (what /proc/PID/fd shows as socket:[INODE]). */
export function fdInode(fd: number): number {
  check("fstat", c.fstat(fd, statBuf) as number);
  return Number(statBuf.readBigUInt64LE(8));
}

/** A raw system call with up to three integer arguments; returns the result or throws SysError named `name`. */
export function syscall(name: string, nr: number, a = 0, b = 0, d = 0): number {
  return check(name, Number(c.syscall(nr, a, b, d)));
}

export function mount(source: string, target: string, fstype: string): void {
  check("mount", c.mount(source, target, fstype, 0, null) as number);
}

/** The address of a Buffer's memory, for system calls that take structs with pointers (bpf(2)). */
export function addressOf(buf: Buffer): number {
  return Number(koffi.address(buf));
}

/**
 * readlinkat(2) into `buf`: the length of the link's text, or -1 when it cannot be read (the fd was closed in
 * the meantime). Reading into a reused buffer spares a string per fd when scanning every /proc/PID/fd.
 */
export function readlinkAt(dirfd: number, name: string, buf: Buffer): number {
  return Number(c.readlinkat(dirfd, name, buf, buf.length));
}
