/**
 * What the policy asks of the host as it is now: each cgroup whose processes a rule selects gets that rule's
 * enforcement, and what cannot be covered that way is said, with why. Pure: facts in, plan out (unit-tested).
 *
 * The agent enforces per cgroup (the BPF programs of `tcpka enforce` attach to one), on the cgroup the
 * processes are in: a container's, a unit's, a pod container's. A cgroup is a target only when every process in
 * it and in the cgroups below it (its programs run there too) that may hold sockets is selected by the same rule
 * (the first that matches, as everywhere in a policy): a cgroup shared with processes of another rule, or of
 * none, would give them settings the policy does not give them, so it is never enforced half: its processes of
 * the rule are watched instead (the agent changes their connections by pid at every reconcile: `watched`), unless
 * the rule's mechanism is enforce (then they are reported, `uncovered`). Mechanism live watches always. A
 * Kubernetes pod whose every process is one rule's, where the rule decides by the pod alone, is enforced on the
 * pod's cgroup rather than on each container's (podTargets).
 */
import type { Enforcement } from "../enforce/cgroup.js";
import type { EndpointRule } from "../filter.js";
import { endpointRuleText } from "../filter.js";
import { kubepodsOf } from "../inspect/workloads.js";
import { globRegExp, matchPolicy, type Policy, type PolicyRule, type ProcessFacts } from "../policy.js";

export interface PlannedProcess {
  pid: number;
  comm: string;
}

/** A cgroup to enforce a rule on, and who is in it. */
export interface Target {
  cgroup: string;
  rule: PolicyRule;
  processes: PlannedProcess[];
  /** the container (its name, else its short id), pod (NAMESPACE/NAME) and unit the processes are in */
  container: string | null;
  pod: string | null;
  unit: string | null;
}

/**
 * Processes a rule selects whose cgroup cannot be enforced whole (or whose rule asks for live): the agent changes
 * their connections itself, by pid, at every reconcile (`why` says why not by cgroup).
 */
export interface Watched {
  rule: PolicyRule;
  cgroup: string | null;
  processes: PlannedProcess[];
  why: string;
}

/** Processes a rule selects that the agent cannot cover, and why. */
export interface Uncovered {
  rule: PolicyRule;
  cgroup: string | null;
  processes: PlannedProcess[];
  why: string;
}

export interface Plan {
  targets: Target[];
  watched: Watched[];
  uncovered: Uncovered[];
}

/**
 * `pods: false` keeps every target on its own cgroup (the OCI hook, which sees one container being created, not
 * the rest of its pod).
 */
export function planPolicy(policy: Policy, facts: readonly ProcessFacts[], o: { pods?: boolean } = {}): Plan {
  const byCgroup = new Map<string | null, { f: ProcessFacts; rule: PolicyRule | undefined }[]>();
  for (const f of facts) {
    const list = byCgroup.get(f.cgroup) ?? [];
    list.push({ f, rule: matchPolicy(policy, f) });
    byCgroup.set(f.cgroup, list);
  }
  const targets: Target[] = [];
  const watched: Watched[] = [];
  const uncovered: Uncovered[] = [];
  /** How many processes in the cgroups below `cgroup` are not `rule`'s. */
  const belowOf = (cgroup: string, rule: PolicyRule): number => {
    const prefix = cgroup === "/" ? "/" : `${cgroup}/`;
    let n = 0;
    for (const [other, list] of byCgroup) {
      if (other === null || other === cgroup || !other.startsWith(prefix)) continue;
      for (const m of list) if (m.rule !== rule) n++;
    }
    return n;
  };
  const order = [...byCgroup.keys()].sort((a, b) => (a ?? "").localeCompare(b ?? ""));
  for (const cgroup of order) {
    const members = byCgroup.get(cgroup) ?? [];
    const rules = [...new Set(members.map((m) => m.rule))];
    for (const rule of rules) {
      if (rule === undefined) continue;
      const mine = members.filter((m) => m.rule === rule);
      const processes = mine.map((m) => ({ pid: m.f.pid, comm: m.f.comm }));
      const others = members.length - mine.length;
      let why: string | undefined;
      const below = cgroup === null || others > 0 ? 0 : belowOf(cgroup, rule);
      if (cgroup === null) why = "in no cgroup v2: the agent enforces by cgroup";
      else if (others > 0) {
        const names = new Set(members.filter((m) => m.rule !== rule).map((m) => m.rule?.name ?? null));
        const what = [...names].map((n) => (n === null ? "no rule" : `rule ${n}`)).join(" and ");
        why = `its cgroup ${cgroup} also holds ${others} process${others === 1 ? "" : "es"} of ${what}; the agent enforces whole cgroups only`;
      } else if (below > 0) {
        // A cgroup's programs run for every cgroup below it too (the effective programs of cgroup BPF).
        why = `cgroups below ${cgroup} hold ${below} process${below === 1 ? "" : "es"} of other rules or none, which an enforcement there would cover too`;
      } else if (rule.mechanism === "live") {
        why = "mechanism live";
      }
      if (why !== undefined) {
        // Not by cgroup: by pid, at every reconcile (mechanism auto or live); mechanism enforce asked for a cgroup.
        if (rule.mechanism === "enforce")
          uncovered.push({ rule, cgroup, processes, why: `${why}; mechanism enforce: not watched either` });
        else watched.push({ rule, cgroup, processes, why });
        continue;
      }
      const first = mine[0]?.f;
      const c = first?.container;
      const p = first?.pod;
      targets.push({
        cgroup: cgroup as string,
        rule,
        processes,
        container: c ? (c.name ?? c.id.slice(0, 12)) : null,
        pod: p ? `${p.namespace}/${p.name}` : null,
        unit: first?.unit ?? null,
      });
    }
  }
  return { targets: o.pods === false ? targets : podTargets(policy, facts, targets), watched, uncovered };
}

/**
 * Whether a rule selects by nothing finer than a pod (its namespace, its name): then every container a pod will
 * ever have is that rule's when one of them is, which is what enforcing on the pod's cgroup promises.
 */
function podWide(rule: PolicyRule): boolean {
  const m = rule.match;
  const keys = Object.keys(m) as (keyof typeof m)[];
  return keys.length === 1 && keys[0] === "pod" && m.pod?.container === undefined;
}

/**
 * A rule that can select no process of a pod: a service unit's (a pattern that ends in ".service" matches no
 * container's scope, "cri-containerd-ID.scope", which is a unit under the systemd driver).
 */
function podBlind(rule: PolicyRule): boolean {
  const keys = Object.keys(rule.match);
  return keys.length === 1 && keys[0] === "unit" && /\.service$/.test(rule.match.unit ?? "");
}

/**
 * Targets lifted to their Kubernetes pod's cgroup (inspect/workloads.ts kubepodsOf: kubelet's layout), so that a
 * container the pod starts later (a restart, an init container's successor) is covered from its first connection
 * with no OCI hook (containerd runs none) and no wait for the agent's reaction: kubelet makes the pod's cgroup
 * before any of its containers, and a cgroup's programs run for every cgroup made below it. Only where the plan
 * would enforce every process of the pod, its sandbox's too, with one rule anyway, and only when that rule and
 * every rule before it decide by the pod alone (podWide: its namespace and name; or by a service unit, which no
 * pod process is in; or by another pod's namespace or name): a container started later is then that rule's whatever
 * it runs. Anything else stays per
 * container cgroup.
 */
function podTargets(policy: Policy, facts: readonly ProcessFacts[], targets: Target[]): Target[] {
  const byPod = new Map<string, Target[]>();
  for (const t of targets) {
    const pod = kubepodsOf(t.cgroup);
    if (!pod || pod.path === t.cgroup) continue;
    const list = byPod.get(pod.path) ?? [];
    list.push(t);
    byPod.set(pod.path, list);
  }
  const lifted = new Map<Target, Target | null>();
  for (const [path, list] of byPod) {
    const rule = list[0]?.rule as PolicyRule;
    const index = policy.rules.indexOf(rule);
    // Every process in the pod's cgroup and below it must be in one of these targets (so: this rule's).
    const inPod = facts.filter((f) => f.cgroup !== null && (f.cgroup === path || f.cgroup.startsWith(`${path}/`)));
    const covered = new Set(list.flatMap((t) => t.processes.map((p) => p.pid)));
    if (inPod.some((f) => !covered.has(f.pid))) continue;
    const first = list.find((t) => t.pod !== null) ?? (list[0] as Target);
    const known = inPod.find((f) => f.pod !== null)?.pod;
    // An earlier rule that selects by a pod's namespace or name that this pod's are not can select none of it.
    const elsewhere = (r: PolicyRule) =>
      r.match.pod !== undefined &&
      ((r.match.pod.namespace !== undefined && !globRegExp(r.match.pod.namespace).test(known?.namespace ?? "")) ||
        (r.match.pod.name !== undefined && !globRegExp(r.match.pod.name).test(known?.name ?? "")));
    const before = policy.rules.slice(0, index);
    if (!podWide(rule) || !before.every((r) => podWide(r) || podBlind(r) || elsewhere(r))) continue;
    if (list.some((t) => t.rule !== rule)) continue;
    const pod: Target = {
      cgroup: path,
      rule,
      processes: list.flatMap((t) => t.processes),
      container: null,
      pod: first.pod,
      unit: null,
    };
    for (const [i, t] of list.entries()) lifted.set(t, i === 0 ? pod : null);
  }
  if (!lifted.size) return targets;
  return targets.flatMap((t) => {
    const l = lifted.get(t);
    return l === undefined ? [t] : l === null ? [] : [l];
  });
}

/** The fields of an enforcement's description that a rule decides. */
export type Described = Pick<
  Enforcement,
  "mode" | "idle_s" | "interval_s" | "count" | "user_timeout_ms" | "only" | "except" | "rule"
>;

/** Whether an enforcement pinned with description `e` is what `rule` asks for (nothing to change). */
export function sameAsRule(e: Described, rule: PolicyRule): boolean {
  const s = rule.settings;
  const texts = (r: readonly EndpointRule[]) => r.map(endpointRuleText).join("\n");
  return (
    e.rule === rule.name &&
    e.mode === rule.mode &&
    e.idle_s === s.idle &&
    e.interval_s === s.interval &&
    e.count === s.count &&
    e.user_timeout_ms === s.userTimeout &&
    e.only.join("\n") === texts(rule.only) &&
    e.except.join("\n") === texts(rule.except)
  );
}
