/**
 * `tcpka agent --check [FILE]`: validate a keepalive policy (src/policy.ts) without applying anything: every
 * error with its line, or what each rule selects and sets. The agent that keeps a host to the policy (issue 16)
 * is not built yet; without --check the command says so and exits non-zero rather than pretend.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { TcpkaError, usage } from "../errors.js";
import { endpointRuleText } from "../filter.js";
import {
  DEFAULT_POLICY,
  MAX_POLICY_BYTES,
  PolicyErrors,
  type PolicyRule,
  parsePolicy,
  type RuleMatch,
} from "../policy.js";
import { formatMs } from "../settings.js";
import { bool, parse, str } from "../ui/args.js";
import { Out, printable, table } from "../ui/format.js";

export const AGENT_HELP = `Usage: tcpka agent --check [FILE]

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
      --policy FILE      the policy file (also as the argument of --check)
`;

const OPTIONS = {
  check: { type: "boolean" },
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
  if (!bool(values, "check")) {
    throw new TcpkaError("unsupported", "the agent that applies a policy is not built yet; nothing was applied", {
      hint: `tcpka agent --check ${file} checks the policy; tcpka enforce and tcpka enable apply settings now`,
    });
  }
  let policy: ReturnType<typeof parsePolicy>;
  try {
    policy = parsePolicy(readPolicy(file), file);
  } catch (e) {
    if (!(e instanceof PolicyErrors)) throw e;
    // One line per error, each escaped on its own (reportError would join them into one).
    const err = new Out(2);
    for (const line of e.message.split("\n")) err.write(`tcpka: ${printable(line)}\n`);
    err.write(`${e.errors.length} error${e.errors.length === 1 ? "" : "s"}; nothing was applied\n`);
    err.end();
    return e.exitCode;
  }
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
