/**
 * The agent's OCI hook: a container that a rule selects gets its enforcement while it is being created, before
 * it runs anything, so that its first connection is covered from its first packet (the agent's own reaction to
 * the runtime's state directory comes a moment after the container started). Runtimes that read OCI hooks
 * directories (podman, CRI-O: oci-hooks(5)) run `tcpka agent --oci-hook` at the createRuntime stage: after the
 * container's cgroup is made and its init process is in it, before pivot_root and the container's program. The
 * hook reads the runtime's state from its stdin (id, pid, bundle, annotations), decides with the agent's policy
 * as the agent would (plan.ts, on every process of that cgroup: at this stage only the init), and makes the
 * enforcement as the agent's own (the agent then finds it as the policy says, and keeps it).
 */
import { join } from "node:path";
import { enforceOnCgroup } from "../enforce/cgroup.js";
import { pidsInCgroup } from "../inspect/cgroup.js";
import { type CreatingContainer, creatingContainer, Workloads } from "../inspect/workloads.js";
import type { Policy, ProcessFacts } from "../policy.js";
import { processFacts, userNames } from "./facts.js";
import { planPolicy, type Target } from "./plan.js";

/** What the hook did, in one line (for the runtime's log). */
export function enforceCreating(state: unknown, policy: Policy, mount: string): string {
  const c = creatingContainer(state);
  if (!c) return "not a container's OCI state: nothing done";
  const done = enforceNewContainer(c, Workloads.load(undefined, c), policy, mount);
  if (!done) return "";
  if ("why" in done) return `container ${c.record.id.slice(0, 12)}: rule ${done.rule} cannot cover it: ${done.why}`;
  const t = done.target;
  return `${done.replaced ? "updated" : "enforcing"} rule ${t.rule.name} on container ${t.container ?? c.record.id.slice(0, 12)} (${t.cgroup}) before it starts`;
}

/** What enforceNewContainer did: the target enforced, or why the rule that selects the container cannot. */
export type NewContainerDone = { target: Target; replaced: boolean } | { rule: string; why: string };

/**
 * Enforce the rule that selects a container that is being created (its cgroup made, its init process in it,
 * its program not started yet), on its own cgroup, as the agent's: what the OCI hook does, and what the agent
 * does itself the moment a runtime writes a new container's record (agent.ts watchCreated), for runtimes that
 * run no hooks. null when no rule selects it, or `covered` says the target is covered already.
 */
export function enforceNewContainer(
  c: CreatingContainer,
  workloads: Workloads,
  policy: Policy,
  mount: string,
  covered?: (t: Target) => boolean,
): NewContainerDone | null {
  const users = userNames();
  // The hook's cgroup is the init's (/proc/PID/cgroup: within the mount); runc's state.json has the full path.
  const cgroup = c.record.cgroup;
  const dir = cgroup === undefined ? undefined : cgroup.startsWith(`${mount}/`) ? cgroup : join(mount, cgroup);
  const pids = dir === undefined ? [c.record.pid] : pidsInCgroup(dir);
  const facts = pids
    .map((pid) => processFacts(pid, workloads, users))
    .filter((f): f is ProcessFacts => f !== undefined);
  // Its own cgroup: only this container is known to be new, not whether all of its pod is the rule's (the
  // agent's reconcile sees that).
  const plan = planPolicy(policy, facts, { pods: false });
  const t = plan.targets[0];
  if (!t) {
    const u = plan.uncovered[0];
    return u ? { rule: u.rule.name, why: u.why } : null;
  }
  if (covered?.(t)) return null;
  const r = enforceOnCgroup(
    join(mount, t.cgroup),
    mount,
    { settings: t.rule.settings, mode: t.rule.mode, only: t.rule.only, except: t.rule.except },
    { rule: t.rule.name },
  );
  return { target: t, replaced: r.replaced };
}
