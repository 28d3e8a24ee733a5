/**
 * tcpka on Kubernetes without a cluster: the agent's image, built from deploy/Containerfile on a base made here
 * (test/helpers/kubernetes.ts), runs under podman as deploy/kubernetes's DaemonSet runs it — the capabilities,
 * mounts, user and securityContext read from `kubectl kustomize`'s output (so this breaks when they drift), the
 * host's pid and network namespaces, a cgroup namespace of its own as on a cgroup v2 node, the policy from the
 * rendered ConfigMap laid out as the kubelet lays out a ConfigMap volume (a ..data symlink). "Pods" are podman
 * containers carrying the annotations containerd writes (a sandbox and an app container per pod) in a cgroup
 * laid out as kubelet's cgroupfs driver lays it out (ROOT/kubepods/burstable/pod<UID>/, below a cgroup root of
 * the test's own, as with kubelet --cgroup-root). The app is test/fixtures/ka_agent.c, which reports its own
 * getsockopt. Shown: the selected pod's connections get the ConfigMap's preset, enforced on the pod's cgroup, and
 * a container the pod starts later is covered from its first packet (no OCI hook); the unselected pod's stay
 * untouched; the metrics endpoint (on the host network, /healthz and /metrics) reports both pods' connections and
 * the rule's target; `tcpka status` and `tcpka ls --pod` inside the agent's container say the same.
 *
 * The host stays clean: the agent's /sys/fs/bpf is a BPF file system mounted for this test at a temporary
 * directory (its pins go with it), its /run/tcpka a private directory, hostPath volumes that do not exist here
 * are empty directories of the test's (as DirectoryOrCreate would make them, but not on the host), and every
 * container, image, cgroup and mount has a unique name and is removed, passed or failed, last made first.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, rmdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { kubepodsOf } from "../../src/inspect/workloads.js";
import { findPreset, presetSettings } from "../../src/presets.js";
import { KaAgent, ka, kaAgentExe } from "../helpers/agent.js";
import { needs } from "../helpers/env.js";
import { UNTOUCHED } from "../helpers/keepalive.js";
import {
  agentPodSpec,
  buildAgentImage,
  type K8sObject,
  nodeBaseImage,
  objectOf,
  podmanOk,
  renderKustomize,
} from "../helpers/kubernetes.js";
import { busyboxImage, needsPodman, startContainer, type TestContainer } from "../helpers/podman.js";
import { freePort } from "../helpers/ports.js";
import { runSync, until } from "../helpers/processes.js";
import { NAME_PREFIX, type Scope, tempDir, uniqueName } from "../helpers/scope.js";

/**
 * What a crash would leave (the test's cleanups not run): removed when this process exits, last made first —
 * the agent's container, the cgroup tree, the bpffs mount (podman.ts and kubernetes.ts do the same for their
 * containers and images).
 */
const onExit: (() => void)[] = [];
process.once("exit", () => {
  for (const fn of onExit.reverse()) {
    try {
      fn();
    } catch {
      // best effort: the process is ending
    }
  }
});

/** A scope whose cleanups run last made first, when the test ends: containers before the mounts they use. */
function lifo(t: { after(fn: () => Promise<void>): void }): Scope {
  const fns: (() => void | Promise<void>)[] = [];
  t.after(async () => {
    const errors: unknown[] = [];
    for (const fn of fns.reverse()) {
      try {
        await fn();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length) throw errors[0];
  });
  return { after: (fn) => void fns.push(fn) };
}

/** The io.kubernetes.cri.* annotations containerd writes: a pod's sandbox, or one of its containers. */
function cri(ns: string, pod: string, uid: string, container: string | null): Record<string, string> {
  return {
    "io.kubernetes.cri.sandbox-namespace": ns,
    "io.kubernetes.cri.sandbox-name": pod,
    "io.kubernetes.cri.sandbox-uid": uid,
    "io.kubernetes.cri.container-type": container === null ? "sandbox" : "container",
    ...(container === null ? {} : { "io.kubernetes.cri.container-name": container }),
  };
}

/** A ConfigMap volume as the kubelet writes it: DIR/..TIMESTAMP/KEY, DIR/..data -> ..TIMESTAMP, DIR/KEY -> ..data/KEY. */
function configMapVolume(scope: Scope, data: Record<string, string>): string {
  const dir = tempDir(scope, { readable: true });
  const stamp = "..2026_12_02_00_00_00.000000001";
  mkdirSync(join(dir, stamp));
  for (const [k, v] of Object.entries(data)) writeFileSync(join(dir, stamp, k), v);
  symlinkSync(stamp, join(dir, "..data"));
  for (const k of Object.keys(data)) symlinkSync(join("..data", k), join(dir, k));
  return dir;
}

/** The cgroup ROOT in every hierarchy, removed from the bottom up (podman leaves the parents it made). */
function removeCgroupTree(root: string): void {
  for (const h of readdirSync("/sys/fs/cgroup")) {
    const top = join("/sys/fs/cgroup", h, root);
    if (!existsSync(top) || !statSync(top).isDirectory()) continue;
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
      rmdirSync(d);
    };
    walk(top);
  }
}

interface PodmanRunArgs {
  args: string[];
  /** what the agent's args become once the kubelet expanded $(VAR) and the port is the test's */
  command: string[];
  port: number;
}

/**
 * `podman run` arguments for the DaemonSet's agent container, read from the rendered spec: its user, its
 * capabilities (dropped ALL, added the list), no privilege escalation, a read-only root, seccomp and AppArmor as
 * it says, the host's pid and network namespaces, every volume mount (hostPath from the host, or from `replace`;
 * the ConfigMap's from a kubelet-like volume; emptyDir a tmpfs), its env (downward API values from `fieldRefs`).
 */
function podmanArgsOf(
  scope: Scope,
  objects: readonly K8sObject[],
  replace: Record<string, string>,
  fieldRefs: Record<string, string>,
  port: number,
): PodmanRunArgs {
  const pod = agentPodSpec(objects);
  const c = pod.container;
  const sc = c.securityContext;
  const args: string[] = [];
  assert.equal(pod.hostPID, true);
  args.push("--pid", "host");
  assert.equal(pod.hostNetwork, true);
  args.push("--network", "host");
  // On cgroup v2 the runtimes give a pod's container a cgroup namespace of its own: so here too.
  args.push("--cgroupns", "private");
  args.push("--user", `${sc.runAsUser ?? 0}:0`);
  assert.equal(sc.privileged, false);
  args.push("--cap-drop", sc.capabilities.drop.join(","));
  args.push("--cap-add", sc.capabilities.add.map((x) => `CAP_${x}`).join(","));
  if (sc.allowPrivilegeEscalation === false) args.push("--security-opt", "no-new-privileges");
  if (sc.readOnlyRootFilesystem) args.push("--read-only", "--read-only-tmpfs=false");
  assert.equal(sc.seccompProfile?.type, "RuntimeDefault", "seccomp: podman's default profile is RuntimeDefault");
  args.push("--security-opt", "apparmor=unconfined");
  // The memory limit, as the kubelet gives it to the runtime (Mi: mebibytes).
  const memory = c.resources?.limits?.memory;
  const mi = memory === undefined ? undefined : /^(\d+)Mi$/.exec(memory)?.[1];
  assert.ok(memory === undefined || mi, `resources.limits.memory ${memory}: in Mi here`);
  if (mi) args.push("--memory", `${mi}m`);
  for (const m of c.volumeMounts) {
    const v = pod.volumes.find((x) => x.name === m.name);
    assert.ok(v, `volume ${m.name}`);
    const ro = m.readOnly ? ":ro" : "";
    if (v.hostPath) {
      let source = replace[v.hostPath.path] ?? v.hostPath.path;
      if (!existsSync(source)) {
        assert.equal(v.hostPath.type, "DirectoryOrCreate", `hostPath ${source} must exist`);
        source = tempDir(scope); // what the kubelet would make, but not on this host
      }
      args.push("-v", `${source}:${m.mountPath}${ro}`);
    } else if (v.configMap) {
      const cm = objectOf(objects, "ConfigMap", v.configMap.name) as K8sObject & { data: Record<string, string> };
      args.push("-v", `${configMapVolume(scope, cm.data)}:${m.mountPath}${ro}`);
    } else if (v.emptyDir) {
      args.push("--tmpfs", m.mountPath);
    } else assert.fail(`volume ${m.name}: a kind the test does not run`);
  }
  const env = new Map<string, string>();
  for (const e of c.env) {
    const field = (e.valueFrom as { fieldRef?: { fieldPath: string } } | undefined)?.fieldRef?.fieldPath;
    const value = e.value ?? (field ? fieldRefs[field] : undefined);
    assert.ok(value !== undefined, `env ${e.name}: a value`);
    env.set(e.name, value);
    args.push("--env", `${e.name}=${value}`);
  }
  const metricsPort = c.ports.find((p) => p.name === "metrics")?.containerPort;
  assert.ok(metricsPort);
  // The kubelet expands $(VAR) in args; the port is the test's (the host network is shared with other tests).
  const command = c.args.map((a) =>
    a.replace(/\$\((\w+)\)/g, (_, n: string) => env.get(n) ?? `$(${n})`).replace(`:${metricsPort}`, `:${port}`),
  );
  return { args, command, port };
}

async function get(port: number, path: string): Promise<{ status: number; text: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(20_000) });
  return { status: r.status, text: await r.text() };
}

test("the agent's image runs as the DaemonSet runs it: a selected pod's connections get the ConfigMap's preset, another pod's stay untouched, the metrics say both", async (t) => {
  if (!needsPodman(t) || !needs(t, { tools: ["kubectl", "ldd", "gcc"] })) return;
  const s = lifo(t);
  const objects = renderKustomize();

  // The image, from a base made here.
  const base = nodeBaseImage(s);
  const built = buildAgentImage(s, base);
  console.log(`agent image: ${(built.bytes / 1e6).toFixed(1)} MB (built in ${built.buildMs} ms on a ${base} base)`);
  const baseBytes = Number(podmanOk(["image", "inspect", "--format", "{{.Size}}", base]).trim());
  console.log(`  of which the base (node, its libraries, npm, busybox): ${(baseBytes / 1e6).toFixed(1)} MB`);

  // A BPF file system of the test's own for the agent's /sys/fs/bpf, and a /run/tcpka of its own.
  const bpffs = tempDir(s);
  assert.equal(runSync(["mount", "-t", "bpf", "bpf", bpffs]).status, 0, "mount a bpffs");
  onExit.push(() => void spawnSync("umount", [bpffs], { stdio: "ignore" }));
  s.after(() => {
    const r = runSync(["umount", bpffs]);
    assert.equal(r.status, 0, `umount ${bpffs}: ${r.stderr}`);
  });
  const run = tempDir(s);

  // Pods, as kubelet's cgroupfs driver lays them out below a cgroup root of the test's.
  const cgroupRoot = uniqueName();
  s.after(() => removeCgroupTree(cgroupRoot));
  onExit.push(() => removeCgroupTree(cgroupRoot));
  const image = busyboxImage(s);
  const exe = kaAgentExe(s);
  const pods: { ns: string; name: string; uid: string; sandbox: TestContainer; app: TestContainer; k: KaAgent }[] = [];
  const startPod = (ns: string) => {
    const uid = randomUUID();
    const name = `${uniqueName().slice(NAME_PREFIX.length)}-web`;
    const parent = `/${cgroupRoot}/kubepods/burstable/pod${uid}`;
    const sandbox = startContainer(s, image, {
      annotations: cri(ns, name, uid, null),
      cmd: ["sleep", "600"],
      cgroupParent: parent,
    });
    const app = startContainer(s, image, {
      annotations: cri(ns, name, uid, "app"),
      network: `container:${sandbox.name}`,
      mounts: [{ source: exe, target: "/ka_agent" }],
      cmd: ["/ka_agent", "8"],
      cgroupParent: parent,
    });
    const p = { ns, name, uid, sandbox, app, k: KaAgent.inContainer(app) };
    pods.push(p);
    return p;
  };

  const port = await freePort();
  const run$ = podmanArgsOf(
    s,
    objects,
    { "/sys/fs/bpf": bpffs, "/run/tcpka": run },
    { "status.hostIP": "127.0.0.1" },
    port,
  );
  const agentName = `${uniqueName()}-agent`;
  s.after(() => void runSync(["podman", "rm", "-f", "-t", "0", agentName]));
  onExit.push(() => void spawnSync("podman", ["rm", "-f", "-t", "0", agentName], { stdio: "ignore" }));
  const t0 = Date.now();
  podmanOk([
    "run",
    "-d",
    "--name",
    agentName,
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    ...run$.args,
    built.image,
    ...run$.command,
  ]);
  const logs = () => podmanOk(["logs", agentName]);
  await t.test("ready", async () => {
    await until(
      "the agent to answer /healthz with 200",
      async () => {
        const state = podmanOk(["inspect", "--format", "{{.State.Status}}", agentName]).trim();
        assert.equal(state, "running", `the agent's container is ${state}: ${logs()}`);
        try {
          return (await get(port, "/healthz")).status === 200;
        } catch {
          return false;
        }
      },
      30_000,
    );
  });
  console.log(`agent ready (/healthz 200) ${Date.now() - t0} ms after podman run`);

  const rule = "behind-aws-nat";
  const preset = findPreset("aws-nat");
  assert.ok(preset);
  const want = { keepalive: 1, ...presetSettings(preset) };
  try {
    const selected = startPod("payments");
    const other = startPod("default");
    for (const p of pods) {
      const k8s = kubepodsOf(p.app.cgroup);
      console.log(`pod ${p.ns}/${p.name}: runc put its app container at ${p.app.cgroup}`);
      assert.deepEqual(
        [k8s?.uid, k8s?.qos, k8s?.containerId],
        [p.uid, "burstable", p.app.id],
        `kubelet's layout, as runc has it: ${p.app.cgroup}`,
      );
    }
    const [fSel, fOther] = await Promise.all([selected.k.first(), other.k.first()]);
    assert.deepEqual(ka(fSel!), want, `the selected pod's first connection: ${JSON.stringify(fSel)}`);
    console.log(`selected pod: first connection covered ${fSel!.covered_ms} ms after its program started`);
    assert.equal(fOther!.covered_ms, -1, "the other pod's first connection: never covered");
    assert.deepEqual(ka(fOther!), UNTOUCHED, "the other pod's first connection");
    for (const c of await selected.k.report())
      assert.deepEqual(ka(c), want, `selected: connection ${c.conn} (${c.end})`);
    for (const c of await other.k.report())
      assert.deepEqual(ka(c), UNTOUCHED, `other: connection ${c.conn} (${c.end})`);

    // Enforced on the pod's cgroup (the rule selects by namespace only): a container the pod starts later is
    // covered at connect, from its first packet, also one whose records name no pod (no CRI annotations: the
    // agent knows its pod by the pod UID of its cgroup, from its siblings).
    const podCgroup = kubepodsOf(selected.app.cgroup)?.path;
    await until("the agent to log its pod target", () =>
      logs().includes(`enforcing rule ${rule} on pod payments/${selected.name} (${podCgroup})`),
    );
    const late = startContainer(s, image, {
      network: `container:${selected.sandbox.name}`,
      mounts: [{ source: exe, target: "/ka_agent" }],
      cmd: ["/ka_agent", "5"],
      cgroupParent: `/${cgroupRoot}/kubepods/burstable/pod${selected.uid}`,
    });
    const fLate = await KaAgent.inContainer(late).first();
    assert.deepEqual(
      [fLate.at_connect, ...Object.values(ka(fLate))],
      [1, ...Object.values(want)],
      `a container the selected pod starts later, at connect: ${JSON.stringify(fLate)}`,
    );
    const explain = runSync(["podman", "exec", agentName, "tcpka", "agent", "--explain", String(late.pid)]);
    assert.equal(explain.status, 0, explain.stderr);
    assert.match(explain.stdout, new RegExp(`, pod payments/${selected.name}\n`), explain.stdout);
    assert.match(explain.stdout, new RegExp(`^rule ${rule} \\(line \\d+\\) applies: pod\\.namespace payments: `, "m"));

    // The metrics: both pods' connections, by keepalive, and the rule's target.
    const m = await get(port, "/metrics");
    assert.equal(m.status, 200);
    const line = (re: RegExp) => m.text.split("\n").find((l) => re.test(l));
    const conns = (p: (typeof pods)[number], on: "on" | "off") =>
      line(
        new RegExp(
          `^tcpka_connections\\{keepalive="${on}",process="ka_agent",container="[^"]*",pod_namespace="${p.ns}",pod="${p.name}",unit="[^"]*"\\} [1-9]`,
        ),
      );
    assert.ok(conns(selected, "on"), `the selected pod's connections, with keepalive on:\n${m.text}`);
    assert.ok(!conns(selected, "off"), "none of the selected pod's without");
    assert.ok(conns(other, "off"), `the other pod's connections, with keepalive off:\n${m.text}`);
    assert.ok(!conns(other, "on"), "none of the other pod's with");
    assert.ok(line(new RegExp(`^tcpka_agent_targets\\{rule="${rule}",state="enforced"\\} 1$`)), m.text);
    assert.ok(line(new RegExp(`^tcpka_agent_connections_set_up_total\\{rule="${rule}"\\} [1-9]`)), m.text);
    assert.ok(line(/^tcpka_agent_up 1$/), m.text);
    assert.ok(line(/^tcpka_agent_policy_errors 0$/), m.text);

    // What README says to run inside the agent's pod.
    const status = runSync(["podman", "exec", agentName, "tcpka", "status"], { timeoutMs: 30_000 });
    assert.equal(status.status, 0, status.stdout + status.stderr);
    console.log(`tcpka status in the agent's container:\n${status.stdout}`);
    assert.match(
      status.stdout,
      new RegExp(`^rule ${rule} \\(line \\d+\\): ${want.idle}s / ${want.interval}s / 5`, "m"),
    );
    assert.match(status.stdout, new RegExp(`pod payments/${selected.name} .*enforced$`, "m"));
    const ls = runSync(["podman", "exec", agentName, "tcpka", "ls", "--pod", `payments/${selected.name}`, "--json"], {
      timeoutMs: 30_000,
    });
    assert.equal(ls.status, 0, ls.stderr);
    const rows = (JSON.parse(ls.stdout) as { connections: { keepalive: boolean; idle_s: number; pod: unknown }[] })
      .connections;
    assert.ok(rows.length >= 4, `tcpka ls --pod: ${ls.stdout}`);
    for (const r of rows) assert.deepEqual([r.keepalive, r.idle_s], [true, want.idle], JSON.stringify(r));
    const st = runSync([
      "sh",
      "-c",
      `cat /proc/$(podman inspect --format '{{.State.Pid}}' ${agentName})/status`,
    ]).stdout;
    const kb = (k: string) => Math.round(Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(st)?.[1]) / 1024);
    console.log(
      `the agent's resident memory: ${kb("VmRSS")} MiB (${kb("RssAnon")} MiB anonymous, ${kb("RssFile")} MiB of files)`,
    );
  } catch (e) {
    if (e instanceof Error) {
      e.message += `\n--- the agent's log:\n${logs()}`;
      for (const p of pods) {
        const x = runSync(["podman", "exec", agentName, "tcpka", "agent", "--explain", String(p.app.pid)]);
        e.message += `\n--- tcpka agent --explain ${p.app.pid} in the agent's container:\n${x.stdout}${x.stderr}`;
      }
    }
    throw e;
  }
});
