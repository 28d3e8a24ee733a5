/**
 * tcpka as a library for Node programs.
 */
/**
 * Keepalive on (or off) for the live TCP sockets of running processes, through pidfd_getfd, as tcpka enable
 * does: `LiveSession.matching(filter, plan).watch(targets, { every, signal, onRound, onSpread })` gives a
 * LiveSummary; onSpread hears when a round's many changes are paced (a Spread: how many, over how long).
 */

/** The BPF program of tcpka enforce, generated from settings and rules (for a library that loads it itself). */
export { type EnforceSpec, keepaliveProgram } from "./bpf/keepalive.js";
/**
 * tcpka enforce: keepalive for every new connection of a cgroup v2 through a pinned BPF sock_ops program.
 * enforceOnCgroup(dir, mount, spec) attaches (or updates in one step) and pins it; listEnforcements(mount) says
 * what is in force where (and where it cannot know); removeEnforcement / removeAllEnforcements detach and unpin.
 * The cgroup2 mount comes from cgroup2Mount(); chooseCgroup() resolves a path, unit or pid to its directory.
 */
export {
  type Enforcement,
  type EnforceResult,
  enforceOnCgroup,
  type Listed,
  listEnforcements,
  removeAllEnforcements,
  removeEnforcement,
} from "./enforce/cgroup.js";
export {
  LIVE_STATES,
  type LiveResult,
  LiveSession,
  type LiveSocket,
  type LiveSummary,
  type Outcome,
  type PlanSpec,
  type Spread,
  type WatchOptions,
} from "./enforce/live/session.js";
/**
 * tcpka run's engine: how a program starts with keepalive, in the environment of a preload library that has just
 * been seen to load and accept the configuration here, or, where LD_PRELOAD cannot reach it but pidfd_getfd from
 * its parent can, why not (`blocked`); a TcpkaError when neither can. tcpka trace's: checkTraceable refuses a
 * program that LD_PRELOAD cannot reach, traceProgram runs one under the shim (through the caller's `start`) and
 * folds the shim's events into one record per socket. resolveCommand finds CMD as execvp(3) does.
 */
export {
  type Blocker,
  checkTraceable,
  type Mode,
  type Preload,
  preloadOrFallback,
  resolveCommand,
  type ShimConfig,
  traceProgram,
} from "./enforce/preload/index.js";
/** tcpka sysctl --set / --persist: the namespace's keepalive defaults, changed now, and kept for the next boot. */
export { openPersistFile, persistSystemDefaults, writeSystemDefaults } from "./enforce/sysctl.js";
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
export {
  type Connection,
  type Inspection,
  type InspectOptions,
  inspect,
  inspectEach,
} from "./inspect/connections.js";
/** What traceProgram reports of each socket: what the program set, what tcpka set, what the socket has. */
export type { OptionValues, TracedSocket, TraceResult } from "./inspect/events.js";
export { readKeepAlive } from "./inspect/exact.js";
/** The kernel pass: every socket of a network namespace with its exact keepalive state, in one BPF walk. */
export { type KernelSocket, KernelSockets } from "./inspect/kernel-sockets.js";
/** The host's network namespaces, each once. */
export { type NetNamespace, networkNamespaces } from "./inspect/namespaces.js";
export { findOwners, type SocketOwner } from "./inspect/owners.js";
export { readNetlink, readProc, readSockets, type TcpSocket } from "./inspect/sockets.js";
/**
 * What an inspection adds up to (tcpka's summary, ls's footer and JSON summary): the sockets by state, the
 * established connections with and without keepalive, who owns the ones without (ownersWithoutKeepalive), how
 * soon the ones with it notice a dead peer (detection), and which processes asked for could not be read.
 * addToSummary counts one connection at a time, for connections that stream by.
 */
export {
  addToSummary,
  type Detection,
  deniedTargets,
  detection,
  emptySummary,
  type OwnerWithoutKeepalive,
  offOwners,
  ownersWithoutKeepalive,
  type Summary,
  summarize,
} from "./inspect/summary.js";
export { readSystemDefaults } from "./inspect/sysctl.js";
/** Which processes (by pid, name, cgroup, or a program and its children) and which cgroup a command works on. */
export {
  type CgroupChoice,
  chooseCgroup,
  chooseProcesses,
  type ProcessChoice,
  type ProcessTargets,
  processTree,
} from "./inspect/targets.js";
/** Who a socket belongs to: its container (runc, crun; podman, containerd, CRI-O), Kubernetes pod or systemd unit. */
export { type Container, type Pod, type Workload, Workloads } from "./inspect/workloads.js";
export type { TcpStateName } from "./kernel/states.js";
/**
 * What `tcpka echo` serves: an echo server (ping/pong and plain echo) that never turns keepalive on, for the far
 * end of an idle-timeout measurement. EchoServer.listen(), then runUntil(signal) or close().
 */
export { EchoServer, type EchoServerOptions } from "./probe/echo.js";
/** HOST:PORT; resolveHost() looks a name up once, with a timeout, for measureIdleTimeout(). */
export { type Endpoint, resolveHost } from "./probe/endpoint.js";
/** The search's state as a measurement returns it, and the keepalive settings that fit the timeout found. */
export { type IdleSearch, recommend } from "./probe/idle-search.js";
/**
 * What `tcpka idle-timeout` measures: how long a connection may stay idle on the path to an echo server before a
 * middlebox forgets it. Progress comes through onStart/onResult; an AbortSignal stops it with what is known.
 */
export {
  type IdleTimeoutMeasurement,
  type IdleTimeoutOptions,
  measureIdleTimeout,
  type ProbeRecord,
} from "./probe/measure.js";
export {
  type ApplyMode,
  type Change,
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
