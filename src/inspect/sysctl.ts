/**
 * The keepalive sysctls of this network namespace. They are per namespace (since Linux 4.5), govern IPv6 TCP
 * sockets too, and only matter for sockets that have SO_KEEPALIVE on. A new namespace starts from the
 * compiled-in defaults (7200 s, 75 s, 9), not from the host's values.
 */
import { readFileSync } from "node:fs";
import { TcpkaError } from "../errors.js";
import type { SystemDefaults } from "../settings.js";

export const SYSCTL_DIR = "/proc/sys/net/ipv4";

/** The sysctl names behind each setting. */
export const SYSCTL_NAMES = {
  idle: "tcp_keepalive_time",
  interval: "tcp_keepalive_intvl",
  count: "tcp_keepalive_probes",
} as const satisfies Record<keyof SystemDefaults, string>;

/** The compiled-in defaults (TCP_KEEPALIVE_TIME, _INTVL, _PROBES in include/net/tcp.h). */
export const KERNEL_DEFAULTS: Readonly<SystemDefaults> = { idle: 7200, interval: 75, count: 9 };

export function readSystemDefaults(): SystemDefaults {
  const read = (name: string): number => {
    const path = `${SYSCTL_DIR}/${name}`;
    try {
      return Number(readFileSync(path, "ascii").trim());
    } catch (e) {
      throw new TcpkaError("system", `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
  };
  return {
    idle: read(SYSCTL_NAMES.idle),
    interval: read(SYSCTL_NAMES.interval),
    count: read(SYSCTL_NAMES.count),
  };
}
