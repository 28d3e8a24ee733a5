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
 * the rule's mechanism is enforce (then they are reported, `uncovered`). Mechanism live watches always.
 */
import type { Enforcement } from "../enforce/cgroup.js";
import type { EndpointRule } from "../filter.js";
import { endpointRuleText } from "../filter.js";
import { matchPolicy, type Policy, type PolicyRule, type ProcessFacts } from "../policy.js";

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

export function planPolicy(policy: Policy, facts: readonly ProcessFacts[]): Plan {
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
  return { targets, watched, uncovered };
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
