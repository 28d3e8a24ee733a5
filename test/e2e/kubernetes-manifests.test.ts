/**
 * deploy/kubernetes, the kustomize base: rendered with `kubectl kustomize` (offline), every object checked
 * against the Kubernetes OpenAPI schemas (kubernetes-models, with unknown fields refused: test/helpers/
 * kubernetes.ts), and copies with a typo or a wrong type refused the same way; the DaemonSet asks for what
 * README says (the host's pid and network namespaces, the systemd unit's capabilities and no more, not
 * privileged, every node's taints tolerated, probes on /healthz, the policy from the ConfigMap); the ConfigMap's
 * policy passes `tcpka agent --check`; the Service carries the scrape annotations for the container's port.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { needs } from "../helpers/env.js";
import { agentPodSpec, type K8sObject, objectOf, renderKustomize, validateObject } from "../helpers/kubernetes.js";
import { tempDir } from "../helpers/scope.js";
import { tcpkaHere as tcpka } from "../helpers/tcpka.js";
import { UNIT, UnitFile } from "../helpers/unit.js";

test("the kustomize base renders, every object passes the Kubernetes schemas, and a typo'd copy does not", async (t) => {
  if (!needs(t, { tools: ["kubectl"] })) return;
  const objects = renderKustomize();
  assert.deepEqual(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
    "ConfigMap/tcpka-policy",
    "DaemonSet/tcpka-agent",
    "Namespace/tcpka-system",
    "Service/tcpka-metrics",
    "ServiceAccount/tcpka-agent",
  ]);
  for (const o of objects) {
    await validateObject(o);
    if (o.kind !== "Namespace") assert.equal(o.metadata.namespace, "tcpka-system", `${o.kind}'s namespace`);
  }
  // Copies with one mistake each: every one refused, naming where it is.
  const typos: [string, (o: K8sObject) => void, RegExp][] = [
    [
      "DaemonSet",
      (o) => {
        const spec = (o.spec as { template: { spec: Record<string, unknown> } }).template.spec;
        spec.hostPid = spec.hostPID;
        delete spec.hostPID;
      },
      /DaemonSet\/tcpka-agent\.spec\.template\.spec\.hostPid/,
    ],
    [
      "DaemonSet",
      (o) => {
        const c = (o.spec as { template: { spec: { containers: { volumeMounts: Record<string, unknown>[] }[] } } })
          .template.spec.containers[0];
        const m = c?.volumeMounts[1] as Record<string, unknown>;
        m.readOnlly = true;
      },
      /containers\[0\]\.volumeMounts\[1\]\.readOnlly/,
    ],
    [
      "DaemonSet",
      (o) => {
        (o.spec as { template: { spec: Record<string, unknown> } }).template.spec.hostPID = "yes";
      },
      /hostPID must be boolean/,
    ],
    [
      "DaemonSet",
      (o) => {
        const sc = (o.spec as { template: { spec: { containers: { securityContext: Record<string, unknown> }[] } } })
          .template.spec.containers[0]?.securityContext as Record<string, unknown>;
        sc.capabilites = sc.capabilities;
        delete sc.capabilities;
      },
      /securityContext\.capabilites/,
    ],
    [
      "Service",
      (o) => {
        (o.spec as { ports: Record<string, unknown>[] }).ports[0]!.targetport = 9977;
      },
      /Service\/tcpka-metrics\.spec\.ports\[0\]\.targetport/,
    ],
    [
      "ConfigMap",
      (o) => {
        o.date = o.data;
      },
      /ConfigMap\/tcpka-policy\.date/,
    ],
  ];
  for (const [kind, change, want] of typos) {
    const copy = structuredClone(objectOf(objects, kind));
    change(copy);
    await assert.rejects(validateObject(copy), want, `a ${kind} with ${want}`);
  }
});

test("the DaemonSet runs the agent as README says: host namespaces, the unit's capabilities, every node, the ConfigMap's policy", (t) => {
  if (!needs(t, { tools: ["kubectl"] })) return;
  const objects = renderKustomize();
  const pod = agentPodSpec(objects);
  assert.equal(pod.hostPID, true);
  assert.equal(pod.hostNetwork, true);
  const sc = pod.container.securityContext;
  assert.equal(sc.privileged, false);
  assert.equal(sc.allowPrivilegeEscalation, false);
  assert.equal(sc.runAsUser, 0);
  assert.deepEqual(sc.capabilities.drop, ["ALL"]);
  // The same six as the systemd unit, which test/e2e/systemd-unit.test.ts shows each needed.
  const unit = UnitFile.parse(readFileSync(UNIT, "utf8"));
  assert.deepEqual(
    [...sc.capabilities.add].sort(),
    unit
      .capabilities()
      .map((c) => c.replace(/^CAP_/, ""))
      .sort(),
  );
  const ds = objectOf(objects, "DaemonSet") as unknown as {
    spec: {
      template: {
        spec: {
          tolerations: { operator: string; key?: string }[];
          containers: { livenessProbe: { httpGet: { path: string } }; readinessProbe: { httpGet: { path: string } } }[];
        };
      };
    };
  };
  assert.deepEqual(ds.spec.template.spec.tolerations, [{ operator: "Exists" }], "every taint tolerated");
  assert.equal(ds.spec.template.spec.containers[0]?.livenessProbe.httpGet.path, "/healthz");
  assert.equal(ds.spec.template.spec.containers[0]?.readinessProbe.httpGet.path, "/healthz");
  // The policy is the ConfigMap's, mounted as a directory (not subPath: the kubelet's ..data swap reaches it).
  const args = pod.container.args;
  const policy = args[args.indexOf("--policy") + 1];
  const mount = pod.container.volumeMounts.find((m) => policy?.startsWith(`${m.mountPath}/`));
  assert.ok(mount, `a mount holds ${policy}`);
  assert.equal(pod.volumes.find((v) => v.name === mount.name)?.configMap?.name, "tcpka-policy");
  // Read-only where reading is enough: everything but the pins, /run/tcpka and /tmp.
  const writable = pod.container.volumeMounts.filter((m) => !m.readOnly).map((m) => m.mountPath);
  assert.deepEqual(writable.sort(), ["/run/tcpka", "/sys/fs/bpf", "/tmp"]);
  // The Service scrapes the container's metrics port.
  const svc = objectOf(objects, "Service");
  const port = pod.container.ports.find((p) => p.name === "metrics")?.containerPort;
  assert.equal(svc.metadata.annotations?.["prometheus.io/scrape"], "true");
  assert.equal(svc.metadata.annotations?.["prometheus.io/port"], String(port));
  assert.ok(args.includes(`$(NODE_IP):${port}`), `the agent listens on the node's address: ${args.join(" ")}`);
});

test("the ConfigMap's policy passes tcpka agent --check, with the cloud presets", (t) => {
  if (!needs(t, { tools: ["kubectl"] })) return;
  const cm = objectOf(renderKustomize(), "ConfigMap", "tcpka-policy") as K8sObject & { data: Record<string, string> };
  const file = join(tempDir(t), "policy.yaml");
  writeFileSync(file, cm.data["policy.yaml"] ?? "");
  const r = tcpka(["agent", "--check", file]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /: 5 rules, no errors \(checked; nothing was applied\)$/m);
  for (const preset of ["aws-nat", "aws-nlb", "azure-lb", "gcp-nat", "kube-proxy-ipvs"]) {
    assert.match(r.stdout, new RegExp(`for ${preset} \\(strengthen\\)`), `a rule for ${preset}:\n${r.stdout}`);
  }
});
