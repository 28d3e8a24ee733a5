/**
 * Write the keepalive sysctls of this network namespace, and persist them as a sysctl.d file that
 * systemd-sysctl (or `sysctl --system`) applies at boot, to the initial network namespace.
 */
import { accessSync, constants, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { TcpkaError } from "../errors.js";
import { SYSCTL_DIR, SYSCTL_NAMES } from "../inspect/sysctl.js";
import type { SystemDefaults } from "../settings.js";

export const DEFAULT_PERSIST_FILE = "/etc/sysctl.d/60-tcpka-keepalive.conf";

/** Fail before anything changes when the persist file cannot be written (missing directory, no permission). */
export function checkPersistTarget(file = DEFAULT_PERSIST_FILE): void {
  try {
    accessSync(dirname(file), constants.W_OK);
  } catch (e) {
    throw failure(file, e);
  }
}

function failure(what: string, e: unknown): TcpkaError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return new TcpkaError("not-found", `cannot write ${what}: no such directory`);
  if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
    return new TcpkaError("permission", `cannot write ${what}: permission denied`, {
      hint: "run as root (sysctls need CAP_NET_ADMIN in the network namespace's owner)",
    });
  }
  return new TcpkaError("system", `cannot write ${what}: ${code ?? String(e)}`);
}

/** Write the given values; only the fields present are changed. */
export function writeSystemDefaults(values: Partial<SystemDefaults>): void {
  for (const key of ["idle", "interval", "count"] as const) {
    const v = values[key];
    if (v === undefined) continue;
    const path = `${SYSCTL_DIR}/${SYSCTL_NAMES[key]}`;
    try {
      writeFileSync(path, `${v}\n`);
    } catch (e) {
      throw failure(path, e);
    }
  }
}

export function persistSystemDefaults(values: SystemDefaults, file = DEFAULT_PERSIST_FILE): void {
  const text = [
    "# Written by `tcpka sysctl --set ... --persist`: TCP keepalive defaults for sockets that turn SO_KEEPALIVE on.",
    "# Sockets without SO_KEEPALIVE never probe, whatever these say (see `tcpka ls --no-keepalive`).",
    `net.ipv4.${SYSCTL_NAMES.idle} = ${values.idle}`,
    `net.ipv4.${SYSCTL_NAMES.interval} = ${values.interval}`,
    `net.ipv4.${SYSCTL_NAMES.count} = ${values.count}`,
    "",
  ].join("\n");
  try {
    writeFileSync(file, text);
  } catch (e) {
    throw failure(file, e);
  }
}
