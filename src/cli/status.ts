/**
 * `tcpka status`: what the agent covers right now, from the status it writes after every reconcile
 * (src/agent/status.ts) and what the kernel counts for each of its enforcements now (the pins' counters).
 */
import {
  type AgentStatus,
  agentRuns,
  type RuleStatus,
  readStatus,
  statusPath,
  type TargetStatus,
} from "../agent/status.js";
import { type Listed, listEnforcements } from "../enforce/cgroup.js";
import { TcpkaError } from "../errors.js";
import { cgroup2Mount } from "../inspect/cgroup.js";
import { formatMs } from "../settings.js";
import { euid } from "../sys/files.js";
import { bool, parse } from "../ui/args.js";
import { type Out, printable, processText, table } from "../ui/format.js";

export const STATUS_HELP = `Usage: tcpka status [--json]

What the agent (tcpka agent) covers right now: each rule of its policy, what it matched (containers, pods,
units, cgroups and their processes), its settings and mode, since when, how many connections each enforcement
set up and how many of the programs' own keepalive calls it kept to the rule, and whatever is failing, with why.
Run as root, on the host (or in the agent's container) where the agent runs.

Exit status: 0 when the agent runs and every target is enforced; 1 when it does not run, its policy file has
errors (the last good policy then stays in force), or a target is failing or cannot be covered.

Options:
      --json             the same as one JSON object (the agent's status, with "running" and each target's
                         "connections_set_up" and "calls_kept_to_rule" as the kernel counts them now)

Examples:
  sudo tcpka status
  kubectl -n tcpka exec ds/tcpka-agent -- tcpka status
`;

const OPTIONS = { json: { type: "boolean" } } as const;

export function runStatus(argv: readonly string[], out: Out): number {
  const { values } = parse("status", argv, OPTIONS);
  if (bool(values, "help")) {
    out.write(STATUS_HELP);
    return 0;
  }
  if (euid() !== 0) {
    throw new TcpkaError("permission", "the agent's status is root's (it names other users' processes)", {
      hint: "sudo tcpka status",
    });
  }
  const s = readStatus();
  if (!s) {
    throw new TcpkaError("not-found", `the agent has not run on this host (no ${statusPath() ?? "status"})`, {
      hint: "sudo tcpka agent --policy /etc/tcpka/policy.yaml starts it (see tcpka agent --help)",
    });
  }
  const running = agentRuns();
  const counts = new Map(listEnforcements(cgroup2Mount()).map((l) => [l.cgroup, l]));
  const bad =
    !running ||
    s.policy.errors.length > 0 ||
    s.rules.some(
      (r) =>
        r.uncovered.length ||
        r.targets.some((t) => t.state !== "enforced") ||
        r.watched.some((w) => (w.last?.failed ?? 0) > 0),
    );
  if (bool(values, "json")) {
    const rules = s.rules.map((r) => ({ ...r, targets: r.targets.map((t) => withCounts(t, counts.get(t.cgroup))) }));
    out.write(`${JSON.stringify({ ...s, running, rules })}\n`);
    return bad ? 1 : 0;
  }
  writeHuman(s, running, counts, out);
  return bad ? 1 : 0;
}

function withCounts(t: TargetStatus, l: Listed | undefined): TargetStatus & Record<string, unknown> {
  const mine = l?.enforcement?.owner === "agent";
  return {
    ...t,
    connections_set_up: mine && l?.counts ? l.counts.setUp : null,
    calls_kept_to_rule: mine && l?.counts && l.hook ? l.counts.rewritten : null,
  };
}

function writeHuman(s: AgentStatus, running: boolean, counts: ReadonlyMap<string, Listed>, out: Out): void {
  const p = s.policy;
  const n = s.rules.length;
  out.write(
    running
      ? `agent: running (pid ${s.pid}, since ${s.started})\n`
      : `agent: NOT running (its last status, from pid ${s.pid}; what it enforced stays pinned)\n`,
  );
  out.write(
    `policy: ${printable(p.file)}, ${n} rule${n === 1 ? "" : "s"}${p.loaded ? `, loaded ${p.loaded}` : ", none in force"}\n`,
  );
  if (p.errors.length) {
    out.write(
      `policy errors (${p.errors.length}; ${p.loaded ? "the last good policy stays in force" : "nothing is applied"}):\n`,
    );
    for (const e of p.errors) out.write(`  ${printable(e)}\n`);
  }
  const r = s.reconciled;
  if (r) out.write(`last reconcile: ${r.at} (${printable(r.reason)}), ${r.ms} ms\n`);
  for (const rule of s.rules) writeRule(rule, counts, out);
  for (const x of s.removed) {
    out.write(`removed in the last reconcile: ${printable(x.cgroup)} (rule ${printable(x.rule ?? "?")})\n`);
  }
}

function writeRule(r: RuleStatus, counts: ReadonlyMap<string, Listed>, out: Out): void {
  const settings = `${r.idle_s ?? "-"}s / ${r.interval_s ?? "-"}s / ${r.count ?? "-"}${r.user_timeout_ms ? `, user timeout ${formatMs(r.user_timeout_ms)}` : ""}${r.preset ? ` for ${r.preset}` : ""}`;
  const conns = [r.only.length ? `only ${r.only.join(",")}` : "", r.except.length ? `except ${r.except.join(",")}` : ""]
    .filter(Boolean)
    .join("; ");
  out.write(
    `\nrule ${printable(r.name)} (line ${r.line}): ${settings} (${r.mode}), ${printable(conns || "all connections")}, mechanism ${r.mechanism}\n`,
  );
  if (!r.targets.length && !r.watched.length && !r.uncovered.length) {
    out.write("  matches nothing now\n");
    return;
  }
  if (r.targets.length) {
    table(
      ["TARGET", "CGROUP", "PROCESSES", "SINCE", "EXISTING", "SET UP", "KEPT", "STATE"],
      r.targets.map((t) => {
        const l = counts.get(t.cgroup);
        const c = withCounts(t, l);
        const existing =
          t.existing === "changing"
            ? "changing"
            : t.existing
              ? `${t.existing.changed} changed${t.existing.failed ? `, ${t.existing.failed} failed` : ""}`
              : "-";
        return [
          printable(
            t.pod ? `pod ${t.pod}` : t.container ? `container ${t.container}` : t.unit ? `unit ${t.unit}` : "cgroup",
          ),
          printable(t.cgroup),
          processes(t),
          t.since ?? "-",
          existing,
          c.connections_set_up === null ? "-" : String(c.connections_set_up),
          c.calls_kept_to_rule === null ? "-" : String(c.calls_kept_to_rule),
          t.state === "enforced" ? "enforced" : `FAILING: ${printable(t.error ?? "?")}`,
        ];
      }),
      out,
      "  ",
    );
  }
  for (const w of r.watched) {
    const last = w.last
      ? `last round ${w.last.at}: ${w.last.changed} changed${w.last.failed ? `, ${w.last.failed} failed` : ""}`
      : "first round queued";
    out.write(
      `  watched by pid, every reconcile: ${processes(w)}${w.cgroup ? ` in ${printable(w.cgroup)}` : ""} (${printable(w.why)}); ${last}\n`,
    );
  }
  for (const u of r.uncovered) {
    const who = processes(u);
    out.write(`  not covered: ${who}${u.cgroup ? ` in ${printable(u.cgroup)}` : ""}: ${printable(u.why)}\n`);
  }
}

function processes(t: { processes: { pid: number; comm: string }[]; process_count: number }): string {
  const shown = t.processes.slice(0, 2).map((p) => processText(p.comm, p.pid));
  const more = t.process_count - shown.length;
  return shown.join(", ") + (more > 0 ? ` +${more}` : "") || "none";
}
