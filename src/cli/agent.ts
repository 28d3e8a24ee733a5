/**
 * `tcpka agent --check [FILE]`: validate a keepalive policy (src/policy.ts) without applying anything: every
 * error with its line, or what each rule selects and sets. The agent that keeps a host to the policy (issue 16)
 * is not built yet; without --check the command says so and exits non-zero rather than pretend.
 */
import { closeSync, fstatSync, openSync, readFileSync, readlinkSync, readSync } from "node:fs";
import { TcpkaError, usage } from "../errors.js";
import { endpointRuleText } from "../filter.js";
import { cgroupPathOfPid } from "../inspect/cgroup.js";
import { commOf } from "../inspect/processes.js";
import { Workloads } from "../inspect/workloads.js";
import {
  DEFAULT_POLICY,
  explainPolicy,
  MAX_POLICY_BYTES,
  type Policy,
  PolicyErrors,
  type PolicyRule,
  type ProcessFacts,
  parsePolicy,
  type RuleMatch,
} from "../policy.js";
import { formatMs } from "../settings.js";
import { bool, parse, str } from "../ui/args.js";
import { Out, printable, processText, table } from "../ui/format.js";

export const AGENT_HELP = `Usage: tcpka agent --check [FILE]
       tcpka agent --explain PID [--policy FILE]

Check a keepalive policy: the YAML file (default ${DEFAULT_POLICY}) that says which processes, containers,
pods and units get which keepalive settings. Every error is shown with its line and field, one per line, and
nothing is applied. The agent that keeps the host to the policy is being built; --check is what works now.

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
live). The first rule that matches a process wins.

Options:
      --check            check the policy and say what it does; apply nothing
      --explain PID      which rule applies to a process and why (each rule before it, and what failed)
      --policy FILE      the policy file (also as the argument of --check)

Examples:
  tcpka agent --check /etc/tcpka/policy.yaml
  sudo tcpka agent --explain 2203 --policy ./policy.yaml
`;

const OPTIONS = {
  check: { type: "boolean" },
  explain: { type: "string" },
  policy: { type: "string" },
} as const;

export function runAgent(argv: readonly string[], out: Out): number {
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
  const explain = str(values, "explain");
  if (explain !== undefined && bool(values, "check")) throw usage("--check and --explain: one at a time");
  if (explain !== undefined) return explainPid(explain, file, out);
  if (!bool(values, "check")) {
    throw new TcpkaError("unsupported", "the agent that applies a policy is not built yet; nothing was applied", {
      hint: `tcpka agent --check ${file} checks the policy; tcpka enforce and tcpka enable apply settings now`,
    });
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

/** The policy, or (its errors written to stderr, one line each) the exit code. */
function loadPolicy(file: string): Policy | number {
  try {
    return parsePolicy(readPolicy(file), file);
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
  const f = factsOf(pid);
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

/** What the rules can match a process by, read from /proc and the container runtimes' records. */
function factsOf(pid: number): ProcessFacts {
  const cgroup = cgroupPathOfPid(pid);
  if (cgroup === undefined) throw new TcpkaError("not-found", `no process ${pid}`);
  let exe: string | null = null;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    exe = null; // another user's process, or a kernel thread
  }
  let uid: number | null = null;
  try {
    const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"));
    uid = m ? Number(m[1]) : null;
  } catch {
    uid = null;
  }
  const w = Workloads.load().ofPid(pid);
  const c = w?.container ?? null;
  return {
    pid,
    comm: commOf(pid),
    exe,
    uid,
    user: uid === null ? null : userName(uid),
    cgroup,
    unit: w?.unit ?? null,
    container: c ? { name: c.name, id: c.id, image: c.image, labels: c.labels } : null,
    pod: c?.pod ?? null,
  };
}

/** The name of `uid` in /etc/passwd, or null. */
function userName(uid: number): string | null {
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (f.length >= 3 && f[2] === String(uid)) return f[0] ?? null;
    }
  } catch {
    // no passwd file: numbers only
  }
  return null;
}

/** The file's text: at most MAX_POLICY_BYTES, a regular file, read through one descriptor. */
function readPolicy(file: string): string {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new TcpkaError("not-found", `no policy at ${printable(file)}`);
    if (code === "EACCES") throw new TcpkaError("permission", `cannot read ${printable(file)}: permission denied`);
    throw new TcpkaError("system", `cannot open ${printable(file)}: ${code ?? String(e)}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw usage(`${printable(file)} is not a regular file`);
    if (st.size > MAX_POLICY_BYTES) {
      throw new TcpkaError("invalid", `${printable(file)}: ${st.size} bytes, more than a policy's ${MAX_POLICY_BYTES}`);
    }
    const buf = Buffer.alloc(st.size + 1);
    let n = 0;
    // One byte more than fstat said: a file that grew since is caught by the check below, not cut short.
    while (n < buf.length) {
      const k = readSync(fd, buf, n, buf.length - n, null);
      if (k === 0) break;
      n += k;
    }
    if (n > MAX_POLICY_BYTES)
      throw new TcpkaError("invalid", `${printable(file)}: more than ${MAX_POLICY_BYTES} bytes`);
    return buf.toString("utf8", 0, n);
  } finally {
    closeSync(fd);
  }
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
