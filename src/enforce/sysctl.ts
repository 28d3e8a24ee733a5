/**
 * Write the keepalive sysctls of this network namespace, and persist them as a sysctl.d file that
 * systemd-sysctl (or `sysctl --system`) applies at boot, to the initial network namespace.
 */
import { writeFileSync } from "node:fs";
import { TcpkaError } from "../errors.js";
import { SYSCTL_DIR, SYSCTL_NAMES } from "../inspect/sysctl.js";
import type { SystemDefaults } from "../settings.js";
import { AtomicFile } from "../sys/files.js";

export const DEFAULT_PERSIST_FILE = "/etc/sysctl.d/60-tcpka-keepalive.conf";

/**
 * Start writing the persist file: its temporary file is made now, beside it, so that a file that cannot be
 * written (a directory, a missing directory, no permission) fails before any live value changes. The file may
 * sit in a directory another user controls: it is replaced by a rename, and a symlink at its name is never
 * followed. commit() it with persistSystemDefaults(), or abort() it.
 */
export function openPersistFile(file = DEFAULT_PERSIST_FILE): AtomicFile {
  try {
    return AtomicFile.create(file, 0o644);
  } catch (e) {
    if (e instanceof TcpkaError && e.code === "permission") throw withHint(e);
    throw e;
  }
}

function withHint(e: TcpkaError): TcpkaError {
  return new TcpkaError(e.code, e.message, {
    hint: "run as root (sysctls need CAP_NET_ADMIN in the network namespace's owner)",
  });
}

function failure(what: string, e: unknown): TcpkaError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return new TcpkaError("not-found", `cannot write ${what}: no such directory`);
  if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
    return withHint(new TcpkaError("permission", `cannot write ${what}: permission denied`));
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

/** Write the values into the file that openPersistFile() began, and put it in place. */
export function persistSystemDefaults(values: SystemDefaults, target: AtomicFile): void {
  target.commit(
    [
      "# Written by `tcpka sysctl --set ... --persist`: TCP keepalive defaults for sockets that turn SO_KEEPALIVE on.",
      "# Sockets without SO_KEEPALIVE never probe, whatever these say (see `tcpka ls --no-keepalive`).",
      `net.ipv4.${SYSCTL_NAMES.idle} = ${values.idle}`,
      `net.ipv4.${SYSCTL_NAMES.interval} = ${values.interval}`,
      `net.ipv4.${SYSCTL_NAMES.count} = ${values.count}`,
      "",
    ].join("\n"),
  );
}
