/**
 * Argument parsing for every command: node:util parseArgs in strict mode, with its errors reworded as tcpka
 * usage errors (exit 2) that name the command and point at its --help. Also the flags that several commands
 * share: socket filters.
 */
import { type ParseArgsConfig, parseArgs } from "node:util";
import { usage } from "../errors.js";
import { DEFAULT_FILTER, parseCidr, parsePid, parsePorts, parseStates, type SocketFilter } from "../filter.js";
import { processExists } from "../inspect/owners.js";
import { ALL_STATES, stateMask } from "../inspect/sockets.js";

export type Options = NonNullable<ParseArgsConfig["options"]>;
type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface Parsed {
  values: Values;
  positionals: string[];
}

export function parse(command: string, argv: readonly string[], options: Options, allowPositionals = false): Parsed {
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      options: { ...options, help: { type: "boolean", short: "h" } },
      allowPositionals,
      strict: true,
    });
    return { values: values as Values, positionals };
  } catch (e) {
    const err = e as { code?: string; message: string };
    const hint = `see: tcpka ${command} --help`;
    if (err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      const flag = /'([^']+)'/.exec(err.message)?.[1] ?? "";
      throw usage(`${command}: unknown option ${flag}`.trimEnd(), hint);
    }
    if (err.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
      const flag = /'(-[^']*)'/.exec(err.message)?.[1] ?? "an option";
      throw usage(`${command}: ${flag.replace(/^-\w, /, "")} needs a value`, hint);
    }
    if (err.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
      const arg = /'([^']+)'/.exec(err.message)?.[1] ?? "";
      throw usage(`${command}: unexpected argument ${arg}`.trimEnd(), hint);
    }
    throw usage(`${command}: ${err.message}`, hint);
  }
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
};

export const FILTER_HELP = `Filters (all must match; a flag given twice matches either value):
  -a, --all              every state (default: established connections only)
  -l, --listening        listening sockets only
      --state NAME       established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait,
                         closed, close-wait, last-ack, listening, closing, connected, all
      --no-keepalive     only sockets that have keepalive off
      --sport PORT       local port: 5432, :5432, 8000-8100 or a list
      --dport PORT       peer port, same forms
      --dst CIDR         peer address or network: 198.18.0.0/15, 2001:db8::/32, 192.0.2.7
      --src CIDR         local address or network
      --pid PID          sockets held by this process
      --comm NAME        sockets held by processes with this name (as in /proc/PID/comm)
  -4, -6                 IPv4 or IPv6 only (IPv4-mapped addresses are IPv6 sockets)`;

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
    comms: strs(v, "comm"),
    noKeepalive: bool(v, "no-keepalive"),
  };
}
