/**
 * `tcpka agent`: the agent that keeps the host to a keepalive policy (src/agent/agent.ts), as root until SIGINT or
 * SIGTERM (SIGHUP reads the policy again); `--check [FILE]` validates a policy (src/policy.ts) without applying
 * anything: every error with its line, or what each rule selects and sets; `--explain PID` which rule applies.
 */
import { Agent } from "../agent/agent.js";
import { processFacts } from "../agent/facts.js";
import { enforceCreating } from "../agent/hook.js";
import { loadPolicyFile } from "../agent/policy-file.js";
import { type AgentStatus, agentRuns, readStatus } from "../agent/status.js";
import { listEnforcements } from "../enforce/cgroup.js";
import { TcpkaError, usage } from "../errors.js";
import { endpointRuleText } from "../filter.js";
import { cgroup2Mount } from "../inspect/cgroup.js";
import { Workloads } from "../inspect/workloads.js";
import { startMetrics } from "../metrics/server.js";
import type { SnapshotOptions } from "../metrics/snapshot.js";
import {
  DEFAULT_POLICY,
  explainPolicy,
  type Policy,
  PolicyErrors,
  type PolicyRule,
  type RuleMatch,
} from "../policy.js";
import { formatMs, parseDurationMs } from "../settings.js";
import { euid, readAtMost } from "../sys/files.js";
import { bool, parse, str } from "../ui/args.js";
import { Out, printable, processText, table } from "../ui/format.js";
import { snapshotOptions } from "../ui/metrics-options.js";
import { stopOnSignals } from "../ui/signals.js";

export const AGENT_HELP = `Usage: sudo tcpka agent [--policy FILE] [--resync DURATION] [--metrics ADDRESS:PORT]
       tcpka agent --check [FILE]
       tcpka agent --explain PID [--policy FILE]

Keep the host to a keepalive policy: the YAML file (default ${DEFAULT_POLICY}) that says which processes,
containers, pods and units get which keepalive settings. The agent runs in the foreground (as a systemd
service, or a Kubernetes DaemonSet) and gives every cgroup whose processes a rule selects that rule's
\`tcpka enforce\`: new connections get the settings from their first packet, and those that exist are changed at
once. It reconciles at start, when the policy file changes (or on SIGHUP), when a container or cgroup appears,
and every --resync. What it makes is pinned under /sys/fs/bpf/tcpka and marked as the agent's: it stays in force
when the agent stops, a restarted agent takes it over without a gap, and an operator's own tcpka enforce is
never touched. A policy file with errors changes nothing: the last good policy stays in force, and every error
is reported with its line. \`tcpka status\` says what is covered now.

  rules:
    - name: billing-db
      match: {container: {name: "billing-*"}}
      connections: {only: ["10.0.0.0/8:5432"]}
      keepalive: {idle: 60s, interval: 10s, count: 6}
    - name: api-behind-azure-lb
      match: {unit: api.service}
      keepalive: {for: azure-lb}
      mode: force

A rule: name; match (container: name, image, labels; pod: namespace, name, container; unit; cgroup; process:
name, exe; user): all that are given must hold, names may use * and ?; connections (only, except: as --only
and --except); keepalive (for: a preset as --for, or idle, interval, count, user_timeout; those given replace
the preset's, the others are 60s / 10s / 6); mode (strengthen, the default, or force); mechanism (auto, enforce,
live). The first rule that matches a process wins. The agent enforces whole cgroups: where a cgroup also holds
processes of another rule or of none, the rule's processes in it are watched instead (their connections changed
by pid at every reconcile; mechanism enforce reports them instead); mechanism live always watches.

Options:
      --policy FILE      the policy file (also as the argument of --check)
      --resync DURATION  reconcile at least this often, whatever the events say (default 30s; 1s to 1d)
      --metrics ADDR     serve Prometheus metrics at ADDR (PORT: 127.0.0.1 only, ADDRESS:PORT, [IPv6]:PORT):
                         those of tcpka metrics (see its --help) and what the agent enforces
                         (tcpka_agent_targets, _connections_set_up_total, _watched_processes, ...); with
                         --metrics-labels, --metrics-max-series, --metrics-ports, --metrics-events as tcpka
                         metrics' --labels, --max-series, --ports, --events; GET /healthz answers a liveness
                         or readiness probe (503 until the first reconcile, or when the last one is three
                         resyncs old)
      --check            check the policy and say what it does; apply nothing (no root needed)
      --explain PID      which rule applies to a process and why (each rule before it, and what failed)
      --oci-hook         what a container runtime runs while it creates a container (oci-hooks(5): podman,
                         CRI-O; contrib/oci-hooks.d/tcpka-agent.json): the container's rule is enforced
                         before it runs anything, so its first connection is covered. Reads the OCI state on
                         stdin, uses the running agent's policy, never fails the container, does nothing
                         while no agent runs

Examples:
  tcpka agent --check /etc/tcpka/policy.yaml
  sudo tcpka agent --explain 2203 --policy ./policy.yaml
  sudo tcpka agent --policy /etc/tcpka/policy.yaml
  sudo systemctl reload tcpka-agent           the unit sends SIGHUP: the policy is read again
`;

/** The runtime's state on an OCI hook's stdin is a small JSON object: more is refused unread. */
const MAX_STATE_BYTES = 1 << 20;

/** How often the agent reconciles when no event says that something changed. */
const DEFAULT_RESYNC_MS = 30_000;

const OPTIONS = {
  check: { type: "boolean" },
  "oci-hook": { type: "boolean" },
  resync: { type: "string" },
  explain: { type: "string" },
  policy: { type: "string" },
  metrics: { type: "string" },
  "metrics-labels": { type: "string" },
  "metrics-max-series": { type: "string" },
  "metrics-ports": { type: "string" },
  "metrics-events": { type: "boolean" },
} as const;

export async function runAgent(argv: readonly string[], out: Out): Promise<number> {
  const { values, positionals } = parse("agent", argv, OPTIONS, true);
  if (bool(values, "help")) {
    out.write(AGENT_HELP);
    return 0;
  }
  if (positionals.length > 1) throw usage(`one policy file, not ${positionals.length}`);
  const file = positionals[0] ?? str(values, "policy") ?? DEFAULT_POLICY;
  if (positionals[0] !== undefined && str(values, "policy") !== undefined) {
    throw usage("give the policy file once: as --policy FILE or as the argument of --check");
  }
  if (bool(values, "oci-hook")) return ociHook(str(values, "policy"));
  const explain = str(values, "explain");
  if (explain !== undefined && bool(values, "check")) throw usage("--check and --explain: one at a time");
  if (explain !== undefined) return explainPid(explain, file, out);
  const metricsFlags = ["metrics", "metrics-labels", "metrics-max-series", "metrics-ports", "metrics-events"].filter(
    (f) => values[f] !== undefined,
  );
  if (metricsFlags.length && (bool(values, "check") || explain !== undefined)) {
    throw usage(`--${metricsFlags[0]} is for the agent itself, not with --check or --explain`);
  }
  if (metricsFlags.length && values.metrics === undefined) {
    throw usage(`--${metricsFlags[0]} needs --metrics ADDRESS:PORT`);
  }
  if (!bool(values, "check")) {
    const metrics =
      values.metrics === undefined
        ? undefined
        : { listen: str(values, "metrics") as string, options: snapshotOptions(values, "metrics-") };
    return runTheAgent(file, str(values, "resync"), out, metrics);
  }
  const policy = loadPolicy(file);
  if (typeof policy === "number") return policy;
  const n = policy.rules.length;
  out.write(`${printable(file)}: ${n} rule${n === 1 ? "" : "s"}, no errors (checked; nothing was applied)\n`);
  if (n) {
    table(
      ["RULE", "LINE", "SELECTS", "CONNECTIONS", "SETTINGS"],
      policy.rules.map((r) => [
        printable(r.name),
        String(r.line),
        matchText(r.match),
        connectionsText(r),
        settingsText(r),
      ]),
      out,
      "  ",
    );
  }
  return 0;
}

/**
 * --oci-hook: run by a container runtime (oci-hooks(5)) while it creates a container, with the OCI state on stdin.
 * It never fails the container (exit 0 whatever happens, a line on stderr for the runtime's log), does nothing
 * while no agent runs (the agent owns what the hook makes), and uses the agent's policy file unless told.
 */
function ociHook(policyFile: string | undefined): number {
  try {
    if (euid() !== 0 || !agentRuns()) return 0;
    const file = policyFile ?? readStatus()?.policy.file ?? DEFAULT_POLICY;
    const { policy } = loadPolicyFile(file);
    const state = readAtMost(0, MAX_STATE_BYTES);
    if (state.length > MAX_STATE_BYTES)
      throw new Error(`more than ${MAX_STATE_BYTES} bytes on stdin: not an OCI state`);
    const done = enforceCreating(JSON.parse(state.toString("utf8")), policy, cgroup2Mount());
    if (done) process.stderr.write(`tcpka agent --oci-hook: ${printable(done)}\n`);
  } catch (e) {
    const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
    process.stderr.write(`tcpka agent --oci-hook: nothing done: ${printable(why ?? "")}\n`);
  }
  return 0;
}

/** The agent itself, until SIGINT or SIGTERM; SIGHUP reads the policy again. */
async function runTheAgent(
  file: string,
  resyncText: string | undefined,
  out: Out,
  metrics?: { listen: string; options: SnapshotOptions },
): Promise<number> {
  if (euid() !== 0) {
    throw new TcpkaError("permission", "the agent attaches BPF programs to cgroups: run it as root", {
      hint: `sudo tcpka agent --policy ${printable(file)} (tcpka agent --check ${printable(file)} needs no root)`,
    });
  }
  const resyncMs = resyncText === undefined ? DEFAULT_RESYNC_MS : parseDurationMs(resyncText);
  if (resyncMs === undefined || resyncMs < 1000 || resyncMs > 86_400_000) {
    throw usage(`--resync ${printable(resyncText ?? "")}: a duration from 1s to 1d, e.g. 30s`);
  }
  const log = (line: string) => {
    out.write(`${printable(line)}\n`);
    out.end();
  };
  const mount = cgroup2Mount();
  const agent = new Agent({ policyFile: file, mount, resyncMs, log });
  const stop = stopOnSignals();
  const reload = () => agent.reload();
  process.on("SIGHUP", reload);
  // The endpoint first: a port that cannot be had stops the agent before it touches anything.
  const endpoint = metrics
    ? await startMetrics(
        metrics.listen,
        metrics.options,
        log,
        {
          status: () => agent.status(),
          enforcements: () => listEnforcements(mount),
          unwell: () => unwell(agent.status(), resyncMs),
        },
        "--metrics",
      )
    : undefined;
  try {
    await agent.run(stop.signal);
  } finally {
    process.off("SIGHUP", reload);
    stop.dispose();
    await endpoint?.close();
  }
  log(`stopped (${String(stop.signal.reason ?? "done")}); the enforcements stay in force`);
  return 0;
}

/**
 * Why the agent is not well, for /healthz (a DaemonSet's probes): it has not reconciled yet, or its last
 * reconcile is older than three resyncs (at least 2 minutes): its loop is stuck. A policy with errors is not
 * a reason (the last good one stays in force, and a restart would not mend it; tcpka status says so).
 */
export function unwell(s: AgentStatus | undefined, resyncMs: number): string | undefined {
  const at = s?.reconciled?.at;
  if (!at) return "the agent has not reconciled yet";
  const age = Date.now() - Date.parse(at);
  return age > Math.max(3 * resyncMs, 120_000) ? `the last reconcile was ${Math.round(age / 1000)}s ago` : undefined;
}

/** The policy, or (its errors written to stderr, one line each) the exit code. */
function loadPolicy(file: string): Policy | number {
  try {
    return loadPolicyFile(file).policy;
  } catch (e) {
    if (!(e instanceof PolicyErrors)) throw e;
    // One line per error, each escaped on its own (reportError would join them into one).
    const err = new Out(2);
    for (const line of e.message.split("\n")) err.write(`tcpka: ${printable(line)}\n`);
    err.write(`${e.errors.length} error${e.errors.length === 1 ? "" : "s"}; nothing was applied\n`);
    err.end();
    return e.exitCode;
  }
}

/** --explain PID: what tcpka reads of the process, and each rule up to the one that applies. */
function explainPid(text: string, file: string, out: Out): number {
  const pid = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(pid) || pid < 1)
    throw usage(`--explain ${printable(text)}: not a pid`);
  const policy = loadPolicy(file);
  if (typeof policy === "number") return policy;
  const f = processFacts(pid, Workloads.load());
  if (f === undefined) throw new TcpkaError("not-found", `no process ${pid}`);
  const dash = (v: string | number | null | undefined) => (v === null || v === undefined ? "-" : printable(String(v)));
  const pod = f.pod
    ? `${f.pod.namespace}/${f.pod.name}${f.pod.container ? ` container ${f.pod.container}` : ""}`
    : null;
  out.write(
    `${processText(f.comm, pid)}: uid ${dash(f.uid)}${f.user ? ` (${printable(f.user)})` : ""}, exe ${dash(f.exe)}, cgroup ${dash(f.cgroup)}, unit ${dash(f.unit)}, container ${dash(f.container?.name ?? f.container?.id.slice(0, 12))}${f.container?.image ? ` (image ${printable(f.container.image)})` : ""}, pod ${dash(pod)}\n`,
  );
  const verdicts = explainPolicy(policy, f);
  const chosen = verdicts.find((v) => v.applies);
  for (const v of verdicts) {
    const head = `rule ${printable(v.rule.name)} (line ${v.rule.line})`;
    if (v === chosen) {
      const why = v.reasons.map((r) => `${printable(r.selector)}: ${printable(r.why)}`).join("; ");
      out.write(`${head} applies: ${why}\n  → ${settingsText(v.rule)}, ${connectionsText(v.rule)} connections\n`);
      break;
    }
    const failed = v.reasons.filter((r) => !r.holds).map((r) => `${printable(r.selector)}: ${printable(r.why)}`);
    out.write(`${head} does not apply: ${v.undecided ? printable(v.undecided) : failed.join("; ")}\n`);
  }
  if (!chosen) out.write("no rule applies: the agent leaves this process as it is\n");
  return 0;
}

function matchText(m: RuleMatch): string {
  const parts: string[] = [];
  if (m.container) {
    const c = m.container;
    const what = [
      c.name !== undefined ? `named ${c.name}` : "",
      c.image !== undefined ? `of image ${c.image}` : "",
      ...Object.entries(c.labels ?? {}).map(([k, v]) => `labelled ${k}=${v}`),
    ].filter(Boolean);
    parts.push(`containers ${what.join(", ")}`);
  }
  if (m.pod) {
    const p = m.pod;
    const what = [
      p.namespace !== undefined ? `in namespace ${p.namespace}` : "",
      p.name !== undefined ? `named ${p.name}` : "",
      p.container !== undefined ? `container ${p.container}` : "",
    ].filter(Boolean);
    parts.push(`pods ${what.join(", ")}`);
  }
  if (m.unit !== undefined) parts.push(`unit ${m.unit}`);
  if (m.cgroup !== undefined) parts.push(`cgroup ${m.cgroup}`);
  if (m.process) {
    const what = [
      m.process.name !== undefined ? `named ${m.process.name}` : "",
      m.process.exe !== undefined ? `running ${m.process.exe}` : "",
    ].filter(Boolean);
    parts.push(`processes ${what.join(", ")}`);
  }
  if (m.user !== undefined) parts.push(`user ${m.user}`);
  return printable(parts.join("; "));
}

function connectionsText(r: PolicyRule): string {
  const parts: string[] = [];
  if (r.only.length) parts.push(`only ${r.only.map(endpointRuleText).join(",")}`);
  if (r.except.length) parts.push(`except ${r.except.map(endpointRuleText).join(",")}`);
  return parts.join("; ") || "all";
}

function settingsText(r: PolicyRule): string {
  const s = r.settings;
  const times = [s.idle, s.interval].map((v) => (v === undefined ? "-" : `${v}s`));
  let t = `${times[0]} / ${times[1]} / ${s.count ?? "-"}`;
  if (s.userTimeout !== undefined) t += `, user timeout ${formatMs(s.userTimeout)}`;
  if (r.preset) t += ` for ${r.preset}`;
  return `${t} (${r.mode})`;
}
