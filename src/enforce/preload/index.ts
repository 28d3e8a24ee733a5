/**
 * The preload mechanism: starting a program with the shim (native/ -> libtcpka.so), everything decided before
 * it starts, for tcpka run and tcpka trace. Beside this entry: command.ts finds the program as execvp(3) does,
 * program.ts reads its ELF header, reach.ts says whether LD_PRELOAD (or run's pidfd_getfd fallback) can reach
 * it, shim.ts chooses the library, builds one at first use and probes it, environment.ts writes the shim's
 * configuration into the program's environment, channel.ts is trace's event channel.
 */
import { TcpkaError } from "../../errors.js";
import type { TraceResult } from "../../inspect/events.js";
import { EventChannel } from "./channel.js";
import type { ShimConfig } from "./environment.js";
import { liveBlocker, preloadBlocker } from "./reach.js";
import { blockedError, type Preload, preloadEnvironment } from "./shim.js";

export { resolveCommand } from "./command.js";
export type { Mode, ShimConfig } from "./environment.js";
export type { Blocker, Preload } from "./shim.js";

/**
 * How tcpka run starts the program `file`: the environment with a library that has just been seen to load and
 * accept `cfg` here (`notice` when tcpka had to build it), or, where LD_PRELOAD cannot protect the program but
 * pidfd_getfd from its parent can, why not (`blocked`). Throws a TcpkaError when neither can: decided before
 * the program starts, so that it never runs unprotected.
 */
export function preloadOrFallback(file: string, cfg: ShimConfig): Preload {
  const preload = throughLibrary(file, cfg);
  if ("env" in preload) return preload;
  const live = liveBlocker(file);
  if (live) {
    const why = `${preload.blocked.message}; nor can tcpka fall back to pidfd_getfd: ${live.message}`;
    throw new TcpkaError("unsupported", why, { hint: live.hint });
  }
  return preload;
}

/** The program's environment with a library that works here, or why LD_PRELOAD cannot protect it. */
function throughLibrary(file: string, cfg: ShimConfig): Preload {
  const known = preloadBlocker(file);
  if (known && !known.unverified) return { blocked: known };
  const r = preloadEnvironment(cfg);
  // A program tcpka could not inspect comes second: what the library says about this system comes first.
  return known && "env" in r ? { blocked: known } : r;
}

/** Refuses (TcpkaError) a program that LD_PRELOAD cannot reach: trace has no other way to watch it. */
export function checkTraceable(file: string): void {
  const why = preloadBlocker(file);
  if (why) throw blockedError(why);
}

/**
 * tcpka trace's run: `start` starts the program `file` in the environment it is given (the shim's, writing to a
 * new event channel), and once it has ended, every TCP socket the program and its children made, folded from
 * the shim's events; `ran` is what `start` returned. The channel is gone when this returns or throws. Throws
 * when the program cannot be traced (checkTraceable) or no library works here, before `start` is called.
 */
export async function traceProgram<T>(
  file: string,
  cfg: Omit<ShimConfig, "events">,
  start: (env: NodeJS.ProcessEnv) => Promise<T>,
): Promise<{ result: TraceResult; ran: T }> {
  checkTraceable(file);
  const channel = EventChannel.open();
  try {
    const preload = preloadEnvironment({ ...cfg, events: channel.events });
    if ("blocked" in preload) throw blockedError(preload.blocked);
    const ran = await start(preload.env);
    return { result: channel.read(), ran };
  } finally {
    channel.close();
  }
}
