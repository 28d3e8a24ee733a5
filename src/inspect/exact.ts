/**
 * The real keepalive settings of a socket: getsockopt on a pidfd_getfd duplicate. Neither /proc, sock_diag nor
 * tcp_info exposes SO_KEEPALIVE or the idle/interval/count values, so this is the only exact answer.
 * getsockopt of TCP_KEEPIDLE/INTVL/CNT returns the effective value: the socket's own, or the namespace's
 * sysctl when it never set one (keepalive_time_when() and friends in include/net/tcp.h).
 */
import { OPTION_ORDER, SOCKOPTS } from "../kernel/sockopts.js";
import type { EffectiveKeepAlive } from "../settings.js";
import { getsockoptInt } from "../sys/libc.js";

/** Read the effective keepalive settings of a socket fd of this process. */
export function readKeepAlive(fd: number): EffectiveKeepAlive {
  const v = new Int32Array(5);
  readKeepAliveInto(fd, v, 0);
  return { keepalive: v[0] !== 0, idle: v[1]!, interval: v[2]!, count: v[3]!, userTimeout: v[4]! };
}

/**
 * The same, as five numbers in out[o ...]: keepalive (0 or 1), idle, interval, count, user timeout. For
 * callers that read thousands of sockets and keep the values in shared memory (enforce/live/batch.ts).
 */
export function readKeepAliveInto(fd: number, out: Int32Array, o: number): void {
  for (let k = 0; k < READ.length; k += 2) out[o + k / 2] = getsockoptInt(fd, READ[k] as number, READ[k + 1] as number);
  out[o] = out[o] !== 0 ? 1 : 0; // SO_KEEPALIVE as 0 or 1, whatever non-zero a getsockopt of it may give
}

/** Level and name of each option, in OPTION_ORDER: the order of out[] above. */
const READ = OPTION_ORDER.flatMap((option) => SOCKOPTS[option].slice(0, 2) as number[]);
