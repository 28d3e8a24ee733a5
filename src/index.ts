/**
 * tcpka as a library for Node programs.
 */
export { TcpkaError } from "./errors.js";
export {
  type Cidr,
  DEFAULT_FILTER,
  type PortRange,
  parseCidr,
  parsePorts,
  parseStates,
  type SocketFilter,
} from "./filter.js";
export { type Connection, type Inspection, type InspectOptions, inspect } from "./inspect/connections.js";
export { readKeepAlive } from "./inspect/exact.js";
export { findOwners, type SocketOwner } from "./inspect/owners.js";
export { readNetlink, readProc, readSockets, type TcpSocket } from "./inspect/sockets.js";
export { readSystemDefaults } from "./inspect/sysctl.js";
export type { TcpStateName } from "./kernel/states.js";
export {
  deadPeerAfter,
  type EffectiveKeepAlive,
  formatSeconds,
  type KeepAliveSettings,
  parseCount,
  parseDurationMs,
  parseIdle,
  parseInterval,
  parseUserTimeout,
  type SystemDefaults,
} from "./settings.js";
