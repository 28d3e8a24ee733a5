/**
 * The socket options behind keepalive: tcpka's name for each (settings.ts, the shim's events, --json), and the
 * kernel's level, number and name (include/uapi/asm-generic/socket.h, include/uapi/linux/tcp.h). The one table
 * of them: the BPF program, enable's changes, exact reads and trace's report all go by it.
 */
import {
  SO_KEEPALIVE,
  SOL_SOCKET,
  SOL_TCP,
  TCP_KEEPCNT,
  TCP_KEEPIDLE,
  TCP_KEEPINTVL,
  TCP_USER_TIMEOUT,
} from "./constants.js";

export type OptionName = "keepalive" | "idle" | "interval" | "count" | "userTimeout";

/** Each option's level, number and name. */
export const SOCKOPTS: Readonly<Record<OptionName, readonly [level: number, name: number, text: string]>> = {
  keepalive: [SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE"],
  idle: [SOL_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE"],
  interval: [SOL_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL"],
  count: [SOL_TCP, TCP_KEEPCNT, "TCP_KEEPCNT"],
  userTimeout: [SOL_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"],
};

/** The options in the order tcpka reads and shows them (SO_KEEPALIVE first). */
export const OPTION_ORDER: readonly OptionName[] = ["keepalive", "idle", "interval", "count", "userTimeout"];

/**
 * The order in which the changes are made (OPTION_ORDER is the order they are read in), so
 * that no probe comes earlier than the new settings ask:
 * - SO_KEEPALIVE last. On a socket without keepalive, tcp_set_keepalive (net/ipv4/tcp_timer.c) arms the timer a
 *   full keepalive_time_when() from now, with the idle time already set. Set first, it would arm the old idle,
 *   which the TCP_KEEPIDLE after it re-arms (tcp_sock_set_keepidle_locked, net/ipv4/tcp.c) to the new idle minus
 *   the time the socket has been idle: at once, on a socket idle for longer than the new idle.
 * - TCP_KEEPIDLE after the interval and count. Where keepalive is already on, that re-arm cannot be avoided (it
 *   probes at once a socket idle for longer than the new idle; a paced bulk change spreads those probes, see
 *   enforce/live/spread.ts), and tcp_keepalive_timer then re-arms with keepalive_intvl_when(): the new interval
 *   must be in place by then. TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT only store their value.
 */
export const APPLY_ORDER: readonly OptionName[] = ["interval", "count", "userTimeout", "idle", "keepalive"];
