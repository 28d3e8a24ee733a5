/**
 * `tcpka enforce`: keepalive for every new connection of a cgroup through a BPF sock_ops program; --list and
 * --remove manage what is in place.
 */
import {
  type Enforcement,
  enforceOnCgroup,
  type Listed,
  listEnforcements,
  removeAllEnforcements,
  removeEnforcement,
  withMarks,
} from "../enforce/cgroup.js";
import { LiveSession } from "../enforce/live/session.js";
import { TcpkaError, usage } from "../errors.js";
import { parseRules } from "../filter.js";
import { cgroup2Mount } from "../inspect/cgroup.js";
import { type CgroupChoice, chooseCgroup, chooseProcesses, chosenCgroupPath } from "../inspect/targets.js";
import { formatMs } from "../settings.js";
import {
  bool,
  type Options,
  type Parsed,
  parse,
  RULE_LINES,
  SETTINGS_HELP,
  SETTINGS_OPTIONS,
  settingsFrom,
  str,
  strs,
} from "../ui/args.js";
import { type Out, printable, table } from "../ui/format.js";
import { LiveReport } from "../ui/live.js";

export const ENFORCE_HELP = `Usage: tcpka enforce (--cgroup PATH | --unit NAME.service | --pid PID) [settings] [--only RULE]…
                     [--except RULE]… [--force] [--existing]
       tcpka enforce --list [--json]
       tcpka enforce --remove (--cgroup PATH | --unit NAME.service | --pid PID | --all)

Turn TCP keepalive on for every connection made or accepted in a cgroup v2 (and the cgroups below it) from
now on, whatever the program: statically linked, io_uring, any language. A BPF sock_ops program attached to the
cgroup sets the options when a connection is established and when a socket listens; it is pinned under
/sys/fs/bpf/tcpka/ and stays in place after tcpka exits, until --remove or a reboot. Other sock_ops programs
on the cgroup keep working. Running it again on the same cgroup replaces the settings in one step.
Connections that already exist are not touched unless --existing is given. Needs root (CAP_BPF and
CAP_NET_ADMIN) and Linux 5.9+; strengthen mode reads the current times and count with bpf_getsockopt (where a
read fails the value is set). From Linux 5.15 a cgroup setsockopt program beside it keeps the rule when a
program changes its own keepalive options later (a looser TCP_KEEPIDLE, SO_KEEPALIVE off): strengthen never
lets them get weaker than asked, --force keeps the values asked for; every other option, and every call's
return value and errno, stay the program's. Older kernels get the sock_ops program alone, and tcpka says so.

Target (one):
      --cgroup PATH      a cgroup, as a path in the cgroup2 mount or relative to it (system.slice/app.service)
      --unit NAME        the cgroup of a systemd unit
      --pid PID          the cgroup of a process

${SETTINGS_HELP}

Which connections (default: all):
${RULE_LINES.only}
${RULE_LINES.except}

Other:
      --existing         also change the connections that exist now (as tcpka enable --cgroup does)
      --list             what is enforced where, and how many connections it set up (SET UP) and how many
                         of their programs' own setsockopt calls it kept to the rule (KEPT); --json for scripts
      --remove           detach and unpin; new connections are no longer touched (existing ones keep theirs)

Examples:
  sudo tcpka enforce --unit app.service --idle 60s
  sudo tcpka enforce --cgroup /workers --only :5432 --existing
  sudo tcpka enforce --list
  sudo tcpka enforce --remove --unit app.service
`;

const OPTIONS: Options = {
  ...SETTINGS_OPTIONS,
  cgroup: { type: "string" },
  unit: { type: "string" },
  pid: { type: "string" },
  only: { type: "string", multiple: true },
  except: { type: "string", multiple: true },
  existing: { type: "boolean" },
  list: { type: "boolean" },
  remove: { type: "boolean" },
  all: { type: "boolean" },
  json: { type: "boolean" },
};

/** --cgroup, --unit and --pid as they were given. */
function cgroupChoice(v: Parsed["values"]): CgroupChoice {
  return { cgroup: str(v, "cgroup"), unit: str(v, "unit"), pid: str(v, "pid") };
}

function settingsText(e: Enforcement): string {
  const parts = [e.idle_s, e.interval_s, e.count].map((x) => (x === undefined ? "-" : String(x)));
  let t = `${parts[0]}s / ${parts[1]}s / ${parts[2]}`;
  if (e.user_timeout_ms !== undefined) t += `, user timeout ${formatMs(e.user_timeout_ms)}`;
  return `${t} (${e.mode})`;
}

function rulesText(e: Enforcement): string {
  const parts: string[] = [];
  if (e.only.length) parts.push(`only ${e.only.join(",")}`);
  if (e.except.length) parts.push(`except ${e.except.join(",")}`);
  return printable(parts.join("; ") || "all");
}

/** --list --json: the description as pinned, when it is known to be in force; otherwise why it is not. */
function listedJson(l: Listed): Record<string, unknown> {
  const cgroup_exists = l.where === "here";
  const setsockopt_hook = l.hook;
  const counts = l.counts ? { connections_set_up: l.counts.setUp, calls_kept_to_rule: l.counts.rewritten } : {};
  return l.enforcement
    ? { ...l.enforcement, cgroup_exists, settings_known: true, setsockopt_hook, ...counts }
    : {
        name: l.name,
        cgroup: l.cgroup,
        cgroup_exists,
        settings_known: false,
        unknown_reason: l.unknown,
        setsockopt_hook,
      };
}

/** The CGROUP column of --list: the path, escaped, and what is wrong with its link if anything is. */
function listedCgroup(l: Listed): string {
  const p = printable(l.cgroup);
  const remove = `tcpka enforce --remove --cgroup ${p}`;
  if (l.where === "gone") return `${p} (gone: ${remove})`;
  if (l.where === "none") return `${p} (not enforced: ${remove})`;
  if (l.where === "elsewhere") return `${p} (another cgroup of this path: made in another cgroup namespace)`;
  return p;
}

function list(json: boolean, mount: string, out: Out): number {
  const all = listEnforcements(mount);
  if (json) out.write(`${JSON.stringify(all.map(listedJson))}\n`);
  else if (all.length === 0) out.write("nothing is enforced (no pins under /sys/fs/bpf/tcpka)\n");
  else {
    table(
      ["CGROUP", "SETTINGS", "CONNECTIONS", "LATER SETSOCKOPT", "SET UP", "KEPT", "SINCE"],
      all.map((l) => {
        const e = l.enforcement;
        const setUp = l.counts ? String(l.counts.setUp) : "?";
        const kept = l.counts && l.hook ? String(l.counts.rewritten) : "-";
        if (!e) return [listedCgroup(l), `unknown: ${l.unknown}`, "?", "?", setUp, kept, "?"];
        return [
          listedCgroup(l),
          settingsText(e),
          rulesText(e),
          l.hook ? "kept to the rule" : "not seen",
          setUp,
          kept,
          e.updated ? `${e.since} (updated ${e.updated})` : e.since,
        ];
      }),
      out,
    );
  }
  return 0;
}

/** Usage error unless none of `keys` was given: `mode` does not take them. */
function refuse(values: Parsed["values"], mode: string, keys: readonly string[]): void {
  const given = keys.filter((k) => values[k] !== undefined).map((k) => `--${k}`);
  if (given.length) throw usage(`${mode} does not go with ${given.join(", ")}`, "see: tcpka enforce --help");
}

const TARGETS = ["cgroup", "unit", "pid"];
const ENFORCING = [...Object.keys(SETTINGS_OPTIONS), "only", "except", "existing"];

export async function runEnforce(argv: readonly string[], out: Out): Promise<number> {
  const { values } = parse("enforce", argv, OPTIONS);
  if (bool(values, "help")) {
    out.write(ENFORCE_HELP);
    return 0;
  }
  if (bool(values, "list")) {
    refuse(values, "--list", ["remove", "all", ...TARGETS, ...ENFORCING]);
    return list(bool(values, "json"), cgroup2Mount(), out);
  }
  if (bool(values, "json")) throw usage("--json goes with --list");
  const mount = cgroup2Mount();
  if (bool(values, "remove")) {
    refuse(values, "--remove", ENFORCING);
    if (bool(values, "all")) {
      refuse(values, "--remove --all", TARGETS);
      const n = removeAllEnforcements();
      out.write(`removed ${n} enforcement${n === 1 ? "" : "s"}\n`);
      return 0;
    }
    const cgroup = chosenCgroupPath(cgroupChoice(values), mount);
    if (cgroup === undefined) throw usage("--remove needs a target: --cgroup, --unit, --pid or --all");
    if (removeEnforcement(cgroup, mount) === 0) {
      throw new TcpkaError("not-found", `nothing is enforced on ${cgroup}`, {
        hint: "tcpka enforce --list shows what is",
      });
    }
    out.write(
      `removed: new connections in ${printable(cgroup)} are no longer touched (existing ones keep their settings)\n`,
    );
    return 0;
  }
  if (bool(values, "all")) throw usage("--all goes with --remove");

  const dir = chooseCgroup(cgroupChoice(values), mount);
  if (!dir)
    throw usage("no target: give --cgroup, --unit or --pid", "e.g. sudo tcpka enforce --cgroup /workers --idle 60s");
  const { only, except } = parseRules(strs(values, "only"), strs(values, "except"));
  const settings = settingsFrom(values);
  const mode = bool(values, "force") ? "force" : "strengthen";
  const r = enforceOnCgroup(dir, mount, { settings, mode, only, except });
  const e = r.enforcement;
  const cgroup = printable(e.cgroup);
  out.write(
    `${r.replaced ? "replaced the settings" : "enforcing keepalive"} on new connections in cgroup ${cgroup}: ${settingsText(e)}, ${rulesText(e)}\n`,
  );
  out.write(`pinned at ${printable(r.pinDir)}; remove with: tcpka enforce --remove --cgroup ${cgroup}\n`);
  if (r.noDirect) {
    out.write(
      `warning: the settings are read with bpf_getsockopt, which costs more per connection, because the socket's own could not be read: ${r.noDirect}\n`,
    );
  }
  if (r.noHook) {
    out.write(
      `warning: keepalive options that a program sets itself after connecting are not seen: ${r.noHook}; the settings hold from connect() until such a call (Linux 5.15 keeps them)\n`,
    );
  }
  if (!bool(values, "existing")) {
    out.write(`connections that exist now are unchanged: add --existing, or run tcpka enable --cgroup ${cgroup}\n`);
    return 0;
  }
  out.end();
  const report = new LiveReport(out, { settings, quiet: true });
  // The connections changed now are marked for the setsockopt program too (changed in the kernel; the pidfd
  // fallback cannot mark them, and runs only where the hook is missing as well: before 5.15).
  return withMarks(r.noHook ? undefined : r.pinDir, async (marksFd) => {
    const summary = await LiveSession.matching(
      { only, except },
      { disable: false, settings, mode },
      false,
      marksFd === undefined ? {} : { marksFd },
    ).watch(chooseProcesses({ cgroups: [dir] }), { onRound: report.round, onSpread: report.spread });
    return report.end(summary);
  });
}
