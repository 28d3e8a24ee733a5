/**
 * `tcpka sysctl`: the namespace's keepalive defaults with what they mean; `--set` changes them, `--persist`
 * writes them to a sysctl.d file.
 */
import { readlinkSync } from "node:fs";
import {
  DEFAULT_PERSIST_FILE,
  openPersistFile,
  persistSystemDefaults,
  writeSystemDefaults,
} from "../enforce/sysctl.js";
import { TcpkaError, usage } from "../errors.js";
import { readSystemDefaults, SYSCTL_NAMES } from "../inspect/sysctl.js";
import { deadPeerAfter, formatSeconds, type SystemDefaults } from "../settings.js";
import { bool, parse, parseAssignments, str } from "../ui/args.js";
import type { Out } from "../ui/format.js";

export const SYSCTL_HELP = `Usage: tcpka sysctl [--json]
       tcpka sysctl --set idle=DURATION interval=DURATION count=N [--persist [--persist-file PATH]]

Show the keepalive defaults of this network namespace (net.ipv4.tcp_keepalive_time, _intvl, _probes) and
what they mean. They apply only to sockets that turned SO_KEEPALIVE on and did not set their own values;
sockets without keepalive never probe, whatever these say.

Options:
      --set KEY=VALUE…   change them now (root): idle and interval take seconds or 75s, 2m, 1h30m
                         (1 to 32767 s), count takes 1 to 127. Give any of the three.
      --persist          also write them to ${DEFAULT_PERSIST_FILE}, applied at boot
      --persist-file P   write that file elsewhere
      --json             machine-readable output

Examples:
  tcpka sysctl
  sudo tcpka sysctl --set idle=5m interval=30s count=4 --persist
`;

const OPTIONS = {
  json: { type: "boolean" },
  set: { type: "boolean" },
  persist: { type: "boolean" },
  "persist-file": { type: "string" },
} as const;

export function runSysctl(argv: readonly string[], out: Out): number {
  const { values, positionals } = parse("sysctl", argv, OPTIONS, true);
  if (bool(values, "help")) {
    out.write(SYSCTL_HELP);
    return 0;
  }
  const persistFile = str(values, "persist-file");
  const persist = bool(values, "persist") || persistFile !== undefined;
  if (!bool(values, "set")) {
    if (positionals.length)
      throw usage(
        `sysctl: unexpected argument ${positionals[0]}`,
        "to change values: tcpka sysctl --set idle=60 interval=10 count=6",
      );
    if (persist) throw usage("sysctl: --persist goes with --set", "e.g. sudo tcpka sysctl --set idle=5m --persist");
  }

  const changes: Partial<SystemDefaults> = bool(values, "set") ? parseAssignments(positionals) : {};
  // The file is begun before any live value changes, so that one that cannot be written changes nothing.
  const target = persist ? openPersistFile(persistFile) : undefined;
  let before: SystemDefaults;
  let now: SystemDefaults;
  try {
    before = readSystemDefaults();
    writeSystemDefaults(changes);
    now = readSystemDefaults();
    if (target) persistSystemDefaults(now, target);
  } catch (e) {
    target?.abort();
    throw e;
  }

  if (bool(values, "json")) {
    out.write(
      `${JSON.stringify({
        namespace: netns(),
        idle_s: now.idle,
        interval_s: now.interval,
        count: now.count,
        dead_peer_after_s: deadPeerAfter({ keepalive: true, ...now, userTimeout: 0 }),
        ...(bool(values, "set")
          ? { before: { idle_s: before.idle, interval_s: before.interval, count: before.count } }
          : {}),
        ...(persist ? { persisted_to: persistFile ?? DEFAULT_PERSIST_FILE } : {}),
      })}\n`,
    );
    return 0;
  }
  const was = (k: keyof SystemDefaults) =>
    changes[k] !== undefined && before[k] !== now[k] ? `  (was ${before[k]})` : "";
  const w = Math.max(...[now.idle, now.interval, now.count].map((n) => String(n).length));
  const pad = (n: number) => String(n).padEnd(w);
  out.write(
    `net.ipv4.${SYSCTL_NAMES.idle}   = ${pad(now.idle)}  idle: the first probe goes out after ${formatSeconds(now.idle)} without traffic${was("idle")}\n`,
  );
  out.write(
    `net.ipv4.${SYSCTL_NAMES.interval}  = ${pad(now.interval)}  interval: then one probe every ${formatSeconds(now.interval)}${was("interval")}\n`,
  );
  out.write(
    `net.ipv4.${SYSCTL_NAMES.count} = ${pad(now.count)}  count: the connection is dropped after ${now.count} unanswered probes${was("count")}\n`,
  );
  out.write(
    `A dead peer is noticed after ${formatSeconds(now.idle + now.interval * now.count)} (${now.idle}s + ${now.interval}s × ${now.count}) on sockets that turn keepalive on without their own values.\n`,
  );
  out.write("Sockets without SO_KEEPALIVE never probe, whatever these say: tcpka ls --no-keepalive lists them.\n");
  out.write(`These are per network namespace (this one: ${netns()}).\n`);
  if (persist)
    out.write(`Written to ${persistFile ?? DEFAULT_PERSIST_FILE}; applied at boot to the initial network namespace.\n`);
  return 0;
}

function netns(): string {
  try {
    return readlinkSync("/proc/self/ns/net");
  } catch (e) {
    throw new TcpkaError("system", `cannot read /proc/self/ns/net: ${(e as Error).message}`);
  }
}
