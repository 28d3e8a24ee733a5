/**
 * Argument parsing for every command: node:util parseArgs in strict mode, with its errors reworded as tcpka
 * usage errors (exit 2) that name the command and point at its --help. Also the flags that several commands
 * share: socket filters.
 */
import { type ParseArgsConfig, parseArgs } from "node:util";
import { usage } from "../errors.js";
import {
  DEFAULT_FILTER,
  type EndpointRule,
  parseCidr,
  parsePid,
  parsePorts,
  parseRules,
  parseStates,
  type SocketFilter,
} from "../filter.js";
import { processExists } from "../inspect/processes.js";
import { ALL_STATES, stateMask } from "../kernel/states.js";
import { findPreset, PRESETS, type Preset, presetSettings } from "../presets.js";
import {
  DEFAULT_SETTINGS,
  formatSeconds,
  type KeepAliveSettings,
  parseCount,
  parseIdle,
  parseInterval,
  parseUserTimeout,
  type SystemDefaults,
} from "../settings.js";

export type Options = NonNullable<ParseArgsConfig["options"]>;
type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface Parsed {
  values: Values;
  positionals: string[];
}

export function parse(command: string, argv: readonly string[], options: Options, allowPositionals = false): Parsed {
  let parsed: Parsed;
  try {
    const { values, positionals } = parseArgs({
      args: negativeValues(argv, options),
      options: { ...options, help: { type: "boolean", short: "h" } },
      allowPositionals,
      strict: true,
    });
    parsed = { values: values as Values, positionals };
  } catch (e) {
    const err = e as { code?: string; message: string };
    const hint = `see: tcpka ${command} --help`;
    if (err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      const flag = /'([^']+)'/.exec(err.message)?.[1] ?? "";
      throw usage(`${command}: unknown option ${flag}`.trimEnd(), hint);
    }
    if (err.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
      // "Option '-o, --output <value>' argument missing" or "Option '--json' does not take an argument"
      const flag = (/'(-[^']*)'/.exec(err.message)?.[1] ?? "an option").replace(/^-\w, /, "").replace(/ <value>$/, "");
      const what = err.message.includes("does not take") ? "takes no value" : "needs a value";
      throw usage(`${command}: ${flag} ${what}`, hint);
    }
    if (err.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
      const arg = /'([^']+)'/.exec(err.message)?.[1] ?? "";
      throw usage(`${command}: unexpected argument ${arg}`.trimEnd(), hint);
    }
    throw usage(`${command}: ${err.message}`, hint);
  }
  // No option means anything with an empty value: say so, rather than match nothing or everything.
  for (const [name, value] of Object.entries(parsed.values)) {
    if (value === "" || (Array.isArray(value) && value.includes(""))) {
      throw usage(`${command}: --${name} needs a value, not an empty string`, `see: tcpka ${command} --help`);
    }
  }
  return parsed;
}

/**
 * parseArgs takes "-1" after "--idle" for an option of its own and says that --idle needs a value. As getopt
 * does, a flag that takes a value takes the next word when it looks like a negative number, so that the value's
 * own check can say what is wrong with it ("--idle -1: out of range").
 */
function negativeValues(argv: readonly string[], options: Options): string[] {
  const long = new Map<string, string>();
  for (const [name, o] of Object.entries(options)) {
    if (o.type !== "string") continue;
    long.set(`--${name}`, name);
    if (o.short) long.set(`-${o.short}`, name);
  }
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--") return out.concat(argv.slice(i));
    const name = long.get(a);
    const next = argv[i + 1];
    if (name !== undefined && next !== undefined && /^-[\d.]/.test(next)) {
      out.push(`--${name}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

export function str(v: Values, name: string): string | undefined {
  const x = v[name];
  return typeof x === "string" ? x : undefined;
}

export function strs(v: Values, name: string): string[] {
  const x = v[name];
  if (x === undefined) return [];
  return (Array.isArray(x) ? x : [x]).filter((s): s is string => typeof s === "string");
}

export function bool(v: Values, name: string): boolean {
  return v[name] === true;
}

/** The socket-filter flags, shared by ls and (later) enable, run, enforce. */
export const FILTER_OPTIONS: Options = {
  all: { type: "boolean", short: "a" },
  listening: { type: "boolean", short: "l" },
  state: { type: "string", multiple: true },
  "no-keepalive": { type: "boolean" },
  sport: { type: "string", multiple: true },
  dport: { type: "string", multiple: true },
  dst: { type: "string", multiple: true },
  src: { type: "string", multiple: true },
  pid: { type: "string", multiple: true },
  comm: { type: "string", multiple: true },
  ipv4: { type: "boolean", short: "4" },
  ipv6: { type: "boolean", short: "6" },
  only: { type: "string", multiple: true },
  except: { type: "string", multiple: true },
};

/** --only and --except, as run, trace, enforce, enable and ls take them (src/filter.ts parseEndpointRule). */
export const RULE_LINES = {
  only:
    "      --only RULE        only connections that match: CIDR, CIDR:PORTS, [IPv6CIDR]:PORTS or :PORTS, where\n" +
    "                         PORTS is 5432, 8000-8100 or a list (80,443); e.g. 198.18.0.0/15:5432, [::1]:443.\n" +
    "                         The address is the peer's, the port the service's: the peer port of a connection\n" +
    "                         the program made, the local port of one it accepted. Several rules: give it again",
  except: "      --except RULE      leave these alone (same forms); wins over --only",
} as const;

/** One help line per filter flag, so that each command lists the ones it takes. */
export const FILTER_LINES = {
  all: "  -a, --all              every state (default: established connections only)",
  listening: "  -l, --listening        listening sockets only",
  state:
    "      --state NAME       established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait,\n" +
    "                         closed, close-wait, last-ack, listening, closing, connected, all",
  "no-keepalive": "      --no-keepalive     only sockets that have keepalive off",
  sport: "      --sport PORT       local port: 5432, :5432, 8000-8100 or a list",
  dport: "      --dport PORT       peer port, same forms",
  dst: "      --dst CIDR         peer address or network: 198.18.0.0/15, 2001:db8::/32, 192.0.2.7",
  src: "      --src CIDR         local address or network",
  pid: "      --pid PID          sockets held by this process",
  comm: "      --comm NAME        sockets held by processes with this name (as in /proc/PID/comm)",
  ip: "  -4, -6                 IPv4 or IPv6 only (IPv4-mapped addresses are IPv6 sockets)",
  only: RULE_LINES.only,
  except: RULE_LINES.except,
} as const;

export function filterHelp(title: string, keys: readonly (keyof typeof FILTER_LINES)[]): string {
  return [title, ...keys.map((k) => FILTER_LINES[k])].join("\n");
}

export const FILTER_HELP = filterHelp(
  "Filters (all must match; a flag given twice matches either value):",
  Object.keys(FILTER_LINES) as (keyof typeof FILTER_LINES)[],
);

export function filterFrom(v: Values): SocketFilter {
  let states = DEFAULT_FILTER.states;
  const stateWords = strs(v, "state");
  if (bool(v, "all")) states = ALL_STATES;
  else if (bool(v, "listening")) states = stateMask(["LISTEN"]);
  if (stateWords.length) states = parseStates(stateWords);
  if (bool(v, "all") && bool(v, "listening")) throw usage("--all and --listening exclude each other");

  const families: (4 | 6)[] = [];
  if (bool(v, "ipv4")) families.push(4);
  if (bool(v, "ipv6")) families.push(6);

  const pids = strs(v, "pid").map((p) => parsePid("--pid", p));
  for (const pid of pids) {
    if (!processExists(pid)) throw usage(`--pid ${pid}: no such process`);
  }
  return {
    states,
    families: families.length ? families : [4, 6],
    sports: strs(v, "sport").flatMap((p) => parsePorts("--sport", p)),
    dports: strs(v, "dport").flatMap((p) => parsePorts("--dport", p)),
    dst: strs(v, "dst").map((c) => parseCidr("--dst", c)),
    src: strs(v, "src").map((c) => parseCidr("--src", c)),
    pids,
    comms: strs(v, "comm").map(parseComm),
    noKeepalive: bool(v, "no-keepalive"),
    ...parseRules(strs(v, "only"), strs(v, "except")),
  };
}

/**
 * A process name for --comm. The kernel keeps at most 15 bytes of one (TASK_COMM_LEN is 16 with the NUL,
 * __set_task_comm cuts the rest), so a longer name matches no process: refused, with the name it would have.
 */
export function parseComm(text: string): string {
  const bytes = Buffer.from(text);
  if (bytes.length <= 15) return text;
  throw usage(
    `--comm ${text}: longer than a process name can be; the kernel keeps the first 15 bytes`,
    `use --comm ${bytes.subarray(0, 15).toString()}`,
  );
}

/**
 * Split `[options] [--] CMD ARGS…` into tcpka's own options and the command: the command starts after "--" or
 * at the first word that is neither an option nor an option's value.
 */
export function splitCommand(argv: readonly string[], options: Options): { own: string[]; command: string[] } {
  const takesValue = new Set<string>();
  for (const [name, o] of Object.entries(options)) {
    if (o.type !== "string") continue;
    takesValue.add(`--${name}`);
    if (o.short) takesValue.add(`-${o.short}`);
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--") return { own: argv.slice(0, i), command: argv.slice(i + 1) };
    if (!a.startsWith("-") || a === "-") return { own: argv.slice(0, i), command: argv.slice(i) };
    if (takesValue.has(a)) i++;
  }
  return { own: [...argv], command: [] };
}

/** The keepalive settings flags of run, trace, enable and enforce. */
export const SETTINGS_OPTIONS: Options = {
  for: { type: "string" },
  idle: { type: "string" },
  interval: { type: "string" },
  count: { type: "string" },
  "user-timeout": { type: "string" },
  force: { type: "boolean" },
};

export { DEFAULT_SETTINGS } from "../settings.js";

export const SETTINGS_HELP = `Settings (defaults: --idle 60s --interval 10s --count 6: a dead peer is noticed within 2 minutes):
      --for PATH               the settings for what drops idle connections on the path (idle half its timeout,
                               a dead peer noticed within it; --idle, --interval, --count replace a part):
${PRESETS.map((p) => `                                 ${p.name.padEnd(16)} ${formatSeconds(p.timeoutS).padStart(5)}  ${presetText(p)}`).join("\n")}
      --idle DURATION          idle time before the first probe (TCP_KEEPIDLE): 75, 75s, 2m, 1h30m; 1s to 32767s
      --interval DURATION      time between unanswered probes (TCP_KEEPINTVL); 1s to 32767s
      --count N                unanswered probes before the connection is dropped (TCP_KEEPCNT); 1 to 127
      --user-timeout DURATION  drop a connection whose data stays unacknowledged this long (TCP_USER_TIMEOUT,
                               e.g. 90s or 500ms); also bounds keepalive. Not set unless given.
      --force                  set exactly these values. By default tcpka strengthens what the program has: the
                               shorter idle of the two, interval and count together from the side that notices a
                               dead peer sooner (idle + interval × count), the shorter non-zero user timeout`;

/** A preset's settings as the help shows them: "175s / 35s / 5". */
function presetText(p: Preset): string {
  const s = presetSettings(p);
  return `${s.idle}s / ${s.interval}s / ${s.count}`;
}

/** The preset that --for names; a usage error that lists them for any other name. */
export function presetFor(name: string): Preset {
  const p = findPreset(name);
  if (!p) {
    throw usage(
      `--for ${JSON.stringify(name)}: not a known path`,
      `one of: ${PRESETS.map((x) => x.name).join(", ")} (or give --idle, --interval and --count)`,
    );
  }
  return p;
}

export function settingsFrom(v: Values): KeepAliveSettings {
  const name = str(v, "for");
  const base = name === undefined ? DEFAULT_SETTINGS : presetSettings(presetFor(name));
  const s: KeepAliveSettings = {
    idle: str(v, "idle") === undefined ? base.idle : parseIdle(str(v, "idle") as string),
    interval: str(v, "interval") === undefined ? base.interval : parseInterval(str(v, "interval") as string),
    count: str(v, "count") === undefined ? base.count : parseCount(str(v, "count") as string),
  };
  const ut = str(v, "user-timeout");
  if (ut !== undefined) s.userTimeout = parseUserTimeout(ut);
  return s;
}

/** A run-like command line (run, trace): tcpka's own options, the settings and rules they give, and CMD. */
export interface CommandLine {
  values: Values;
  settings: KeepAliveSettings;
  only: EndpointRule[];
  except: EndpointRule[];
  /** CMD as given (empty only with --help), and its arguments. */
  argv0: string;
  args: string[];
}

/** Parse `[options] [--] CMD ARGS…` for `command`: settings, rules, and a CMD unless --help is asked for. */
export function commandLine(command: string, argv: readonly string[], options: Options): CommandLine {
  const split = splitCommand(argv, options);
  const { values } = parse(command, split.own, options);
  const line = {
    values,
    settings: settingsFrom(values),
    ...parseRules(strs(values, "only"), strs(values, "except")),
    args: split.command.slice(1),
    argv0: split.command[0] ?? "",
  };
  if (!line.argv0 && !bool(values, "help"))
    throw usage(`${command}: no command given`, `e.g. tcpka ${command} -- curl http://127.0.0.1:8080/`);
  return line;
}

/** "idle=60 interval=10s count=6" (also comma-separated) -> values, each checked against the kernel's limits. */
export function parseAssignments(words: readonly string[]): Partial<SystemDefaults> {
  const out: Partial<SystemDefaults> = {};
  const parts = words.flatMap((w) => w.split(",")).filter((w) => w.length);
  if (parts.length === 0)
    throw usage("sysctl --set: nothing to set", "e.g. tcpka sysctl --set idle=60 interval=10 count=6");
  for (const part of parts) {
    const eq = part.indexOf("=");
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? "" : part.slice(eq + 1);
    if (eq < 0 || value === "") throw usage(`sysctl --set ${part}: expected KEY=VALUE`, "keys: idle, interval, count");
    if (key === "idle") out.idle = parseIdle(value, "idle=");
    else if (key === "interval") out.interval = parseInterval(value, "interval=");
    else if (key === "count") out.count = parseCount(value, "count=");
    else throw usage(`sysctl --set ${part}: unknown key ${key}`, "keys: idle, interval, count");
  }
  return out;
}
