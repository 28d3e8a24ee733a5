/**
 * The shim's configuration as the program gets it: LD_PRELOAD and the TCPKA_* variables that native/preload.c
 * reads once, when it is loaded (its header comment lists them).
 */
import { type EndpointRule, endpointRuleText } from "../../filter.js";
import type { KeepAliveSettings } from "../../settings.js";

export type Mode = "strengthen" | "force" | "observe";

export interface ShimConfig {
  mode: Mode;
  settings: KeepAliveSettings;
  only?: readonly EndpointRule[];
  except?: readonly EndpointRule[];
  /**
   * Where the shim appends its JSON-line events: a file that exists already, its identity ("DEV:INO": the shim
   * writes to nothing else at that path) and the key that every event must carry.
   */
  events?: { path: string; id: string; key: string };
  debug?: boolean;
}

/**
 * The environment for a program to run under the shim `lib`, on top of `base`: tcpka's own variables replace
 * any that `base` has, and `lib` comes first in LD_PRELOAD, before the libraries already there.
 */
export function environmentFor(cfg: ShimConfig, lib: string, base: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const k of Object.keys(env)) if (k.startsWith("TCPKA_")) delete env[k];
  const existing = (base.LD_PRELOAD ?? "").split(/[\s:]+/).filter((p) => p && p !== lib);
  env.LD_PRELOAD = [lib, ...existing].join(":");
  env.TCPKA_MODE = cfg.mode;
  const s = cfg.settings;
  if (s.idle !== undefined) env.TCPKA_IDLE = String(s.idle);
  if (s.interval !== undefined) env.TCPKA_INTVL = String(s.interval);
  if (s.count !== undefined) env.TCPKA_CNT = String(s.count);
  if (s.userTimeout !== undefined) env.TCPKA_USER_TIMEOUT = String(s.userTimeout);
  if (cfg.only?.length) env.TCPKA_ONLY = cfg.only.map(endpointRuleText).join(",");
  if (cfg.except?.length) env.TCPKA_EXCEPT = cfg.except.map(endpointRuleText).join(",");
  if (cfg.events) {
    env.TCPKA_EVENTS = cfg.events.path;
    env.TCPKA_EVENTS_ID = cfg.events.id;
    env.TCPKA_EVENTS_KEY = cfg.events.key;
  }
  if (cfg.debug) env.TCPKA_DEBUG = "1";
  return env;
}
