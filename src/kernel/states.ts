/**
 * The TCP states: the kernel's numbers (enum in include/net/tcp_states.h) and the names `ss` prints for them. The
 * one list of states in tcpka; the rest of it speaks of states by these names.
 */

/** Kernel state numbers, include/net/tcp_states.h. */
export const TCP_STATES = {
  ESTABLISHED: 1,
  SYN_SENT: 2,
  SYN_RECV: 3,
  FIN_WAIT1: 4,
  FIN_WAIT2: 5,
  TIME_WAIT: 6,
  CLOSE: 7,
  CLOSE_WAIT: 8,
  LAST_ACK: 9,
  LISTEN: 10,
  CLOSING: 11,
  NEW_SYN_RECV: 12,
} as const;

export type TcpStateName =
  | "ESTAB"
  | "SYN-SENT"
  | "SYN-RECV"
  | "FIN-WAIT-1"
  | "FIN-WAIT-2"
  | "TIME-WAIT"
  | "CLOSE"
  | "CLOSE-WAIT"
  | "LAST-ACK"
  | "LISTEN"
  | "CLOSING";

/** State names as `ss` prints them, indexed by the kernel's state number. */
export const STATE_NAMES: readonly (TcpStateName | undefined)[] = [
  undefined,
  "ESTAB",
  "SYN-SENT",
  "SYN-RECV",
  "FIN-WAIT-1",
  "FIN-WAIT-2",
  "TIME-WAIT",
  "CLOSE",
  "CLOSE-WAIT",
  "LAST-ACK",
  "LISTEN",
  "CLOSING",
  "SYN-RECV", // TCP_NEW_SYN_RECV: a request socket, shown as SYN-RECV like ss does
];

/** Bitmask of all states, TCP_NEW_SYN_RECV included. */
export const ALL_STATES = 0x1ffe;

/** The bitmask (1 << kernel state) of these states; a name covers every kernel state that shows as it. */
export function stateMask(names: Iterable<TcpStateName>): number {
  let mask = 0;
  for (const n of names) {
    for (let i = 1; i < STATE_NAMES.length; i++) if (STATE_NAMES[i] === n) mask |= 1 << i;
  }
  return mask;
}
