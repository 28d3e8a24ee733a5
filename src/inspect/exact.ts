/**
 * The real keepalive settings of a socket: getsockopt on a pidfd_getfd duplicate. Neither /proc, sock_diag nor
 * tcp_info exposes SO_KEEPALIVE or the idle/interval/count values, so this is the only exact answer.
 * getsockopt of TCP_KEEPIDLE/INTVL/CNT returns the effective value: the socket's own, or the namespace's
 * sysctl when it never set one (keepalive_time_when() and friends in include/net/tcp.h).
 */
import type { EffectiveKeepAlive, OptionName } from "../settings.js";
import {
  SO_KEEPALIVE,
  SOL_SOCKET,
  SOL_TCP,
  TCP_KEEPCNT,
  TCP_KEEPIDLE,
  TCP_KEEPINTVL,
  TCP_USER_TIMEOUT,
} from "../sys/constants.js";
import { getsockoptInt } from "../sys/libc.js";

/** The socket option (level, name) behind each setting. */
export const SOCKOPTS: Readonly<Record<OptionName, readonly [level: number, name: number, text: string]>> = {
  keepalive: [SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE"],
  idle: [SOL_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE"],
  interval: [SOL_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL"],
  count: [SOL_TCP, TCP_KEEPCNT, "TCP_KEEPCNT"],
  userTimeout: [SOL_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"],
};

/** Read the effective keepalive settings of a socket fd of this process. */
export function readKeepAlive(fd: number): EffectiveKeepAlive {
  return {
    keepalive: getsockoptInt(fd, SOL_SOCKET, SO_KEEPALIVE) !== 0,
    idle: getsockoptInt(fd, SOL_TCP, TCP_KEEPIDLE),
    interval: getsockoptInt(fd, SOL_TCP, TCP_KEEPINTVL),
    count: getsockoptInt(fd, SOL_TCP, TCP_KEEPCNT),
    userTimeout: getsockoptInt(fd, SOL_TCP, TCP_USER_TIMEOUT),
  };
}
