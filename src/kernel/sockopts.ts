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

/** The options in the order tcpka reads, changes and lists them (SO_KEEPALIVE first). */
export const OPTION_ORDER: readonly OptionName[] = ["keepalive", "idle", "interval", "count", "userTimeout"];
