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
import { creatingContainer, Workloads } from "../inspect/workloads.js";
import type { Policy, ProcessFacts } from "../policy.js";
import { processFacts, userNames } from "./facts.js";
import { planPolicy } from "./plan.js";

/** What the hook did, in one line (for the runtime's log). */
export function enforceCreating(state: unknown, policy: Policy, mount: string): string {
  const c = creatingContainer(state);
  if (!c) return "not a container's OCI state: nothing done";
  const workloads = Workloads.load(undefined, c);
  const users = userNames();
  const cgroup = c.record.cgroup;
  const pids = cgroup === undefined ? [c.record.pid] : pidsInCgroup(join(mount, cgroup));
  const facts = pids
    .map((pid) => processFacts(pid, workloads, users))
    .filter((f): f is ProcessFacts => f !== undefined);
  // Its own cgroup: the hook sees this container only, not whether all of its pod is the rule's (the agent does).
  const plan = planPolicy(policy, facts, { pods: false });
  const t = plan.targets[0];
  if (!t) {
    const u = plan.uncovered[0];
    return u ? `container ${c.record.id.slice(0, 12)}: rule ${u.rule.name} cannot cover it: ${u.why}` : "";
  }
  const r = enforceOnCgroup(
    join(mount, t.cgroup),
    mount,
    { settings: t.rule.settings, mode: t.rule.mode, only: t.rule.only, except: t.rule.except },
    { rule: t.rule.name },
  );
  return `${r.replaced ? "updated" : "enforcing"} rule ${t.rule.name} on container ${t.container ?? c.record.id.slice(0, 12)} (${t.cgroup}) before it starts`;
}
