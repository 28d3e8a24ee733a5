/**
 * deploy/ as the tests use it: the kustomize base rendered (`kubectl kustomize`, offline), its objects and the
 * agent's container in them; the agent's image built from deploy/Containerfile with podman, from a base made
 * here without a registry (this machine's Node with the libraries ldd lists, its npm, and a static busybox for a
 * shell), each under a unique name and removed when its scope ends.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, realpathSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { parseAllDocuments } from "yaml";
import { REPO } from "./paths.js";
import { runSync } from "./processes.js";
import { type Scope, tempDir, uniqueName } from "./scope.js";

export const KUSTOMIZE_DIR = join(REPO, "deploy", "kubernetes");
export const CONTAINERFILE = join(REPO, "deploy", "Containerfile");

/** A rendered object, as far as the tests look into it. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

/** `kubectl kustomize DIR`: the objects it renders, in its order. */
export function renderKustomize(dir = KUSTOMIZE_DIR): K8sObject[] {
  const r = runSync(["kubectl", "kustomize", dir], { timeoutMs: 60_000 });
  assert.equal(r.status, 0, `kubectl kustomize ${dir}: ${r.stderr}`);
  return parseAllDocuments(r.stdout).map((d) => {
    assert.deepEqual(d.errors, [], "kustomize's output parses");
    return d.toJS() as K8sObject;
  });
}

export function objectOf(objects: readonly K8sObject[], kind: string, name?: string): K8sObject {
  const o = objects.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  assert.ok(o, `a ${kind}${name ? ` ${name}` : ""} in the rendered manifests`);
  return o;
}

/** The parts of a DaemonSet's pod spec that the tests run the image with. */
export interface AgentPodSpec {
  hostPID: boolean;
  hostNetwork: boolean;
  container: {
    image: string;
    args: string[];
    env: { name: string; value?: string; valueFrom?: unknown }[];
    ports: { name: string; containerPort: number }[];
    securityContext: {
      runAsUser?: number;
      privileged?: boolean;
      allowPrivilegeEscalation?: boolean;
      readOnlyRootFilesystem?: boolean;
      capabilities: { drop: string[]; add: string[] };
      seccompProfile?: { type: string };
    };
    volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[];
    resources?: { limits?: { memory?: string; cpu?: string }; requests?: { memory?: string; cpu?: string } };
  };
  volumes: {
    name: string;
    hostPath?: { path: string; type?: string };
    configMap?: { name: string };
    emptyDir?: unknown;
  }[];
}

/** The DaemonSet's pod spec and its one container. */
export function agentPodSpec(objects: readonly K8sObject[]): AgentPodSpec {
  const ds = objectOf(objects, "DaemonSet") as unknown as {
    spec: { template: { spec: Omit<AgentPodSpec, "container"> & { containers: AgentPodSpec["container"][] } } };
  };
  const spec = ds.spec.template.spec;
  assert.equal(spec.containers.length, 1, "one container: the agent");
  return { ...spec, container: spec.containers[0] as AgentPodSpec["container"] };
}

/** podman, which must succeed; its stdout. */
export function podmanOk(args: readonly string[], timeoutMs = 300_000): string {
  const r = runSync(["podman", ...args], { timeoutMs });
  assert.equal(r.status, 0, `podman ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

const images = new Set<string>();
process.once("exit", () => {
  for (const image of images) spawnSync("podman", ["rmi", "-f", image], { stdio: "ignore" });
});

function removeImage(image: string): void {
  images.delete(image);
  podmanOk(["rmi", "-f", image]);
}

/** The shared libraries a program needs, as ldd lists them (the loader included): their real paths. */
function libraries(exe: string): string[] {
  const r = runSync(["ldd", exe]);
  assert.equal(r.status, 0, `ldd ${exe}: ${r.stderr}`);
  const out: string[] = [];
  for (const line of r.stdout.split("\n")) {
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (m) out.push(m[1] as string);
  }
  return out;
}

/**
 * A base image with Node.js and npm where deploy/Containerfile wants them (node and npm on PATH, /bin/sh), made
 * from this machine's own: the node binary and the libraries ldd lists at their paths, npm's package, a static
 * busybox for the shell and the few tools a RUN line uses. `podman import`ed under a unique name; removed when
 * `scope` ends (after what was built on it: register those later).
 */
export function nodeBaseImage(scope: Scope): string {
  const dir = tempDir(scope);
  const root = join(dir, "root");
  const put = (src: string, dst = src) => {
    mkdirSync(join(root, dirname(dst)), { recursive: true });
    cpSync(src, join(root, dst), { dereference: true, recursive: true });
  };
  const node = realpathSync(process.execPath);
  put(node, "/usr/local/bin/node");
  for (const lib of libraries(node)) put(lib);
  const npm = realpathSync(join(dirname(realpathSync(runSync(["sh", "-c", "command -v npm"]).stdout.trim())), ".."));
  put(npm, "/usr/local/lib/node_modules/npm");
  symlinkSync("../lib/node_modules/npm/bin/npm-cli.js", join(root, "usr/local/bin/npm"));
  put(runSync(["sh", "-c", "command -v busybox"]).stdout.trim(), "/bin/busybox");
  for (const applet of ["sh", "ln", "chmod", "rm", "cat", "ls", "mkdir", "sleep"]) {
    symlinkSync("busybox", join(root, "bin", applet));
  }
  mkdirSync(join(root, "usr/bin"), { recursive: true });
  symlinkSync("/bin/busybox", join(root, "usr/bin/env"));
  for (const d of ["tmp", "root", "etc", "proc", "sys", "run", "dev"]) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n");
  writeFileSync(join(root, "etc/group"), "root:x:0:\nnogroup:x:65534:\n");
  const tar = join(dir, "base.tar");
  assert.equal(runSync(["tar", "-C", root, "-cf", tar, "."]).status, 0);
  const image = `localhost/${uniqueName()}-node:20`;
  images.add(image);
  scope.after(() => removeImage(image));
  podmanOk(["import", "--quiet", "--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin", tar, image]);
  return image;
}

/** deploy/Containerfile built on `base` (BASE), with the flags that work here; removed when `scope` ends. */
export function buildAgentImage(scope: Scope, base: string): { image: string; buildMs: number; bytes: number } {
  const image = `localhost/${uniqueName()}-tcpka:1`;
  images.add(image);
  scope.after(() => removeImage(image));
  const t0 = Date.now();
  podmanOk([
    "build",
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--network",
    "none",
    "--layers=false",
    "--build-arg",
    `BASE=${base}`,
    "-f",
    CONTAINERFILE,
    "-t",
    image,
    REPO,
  ]);
  const buildMs = Date.now() - t0;
  const bytes = Number(podmanOk(["image", "inspect", "--format", "{{.Size}}", image]).trim());
  return { image, buildMs, bytes };
}

type Validated = { new (data: unknown): { validate(): void }; prototype: { validate(): void } };

/**
 * An object checked against the Kubernetes OpenAPI schemas as kubernetes-models has them (its class for the
 * object's apiVersion and kind: types, required fields, enums, formats), and for fields the schemas do not
 * know. kubernetes-models' validators accept unknown fields (the schemas have no additionalProperties: false,
 * since the API server prunes them instead): a `readOnlly:` typo passes its validate(). So the object is also
 * handed to the same validator behind a proxy that records which fields of each object the validator looks at
 * (every field its schema has, where the object is of that type); a field it never looks at in an object whose
 * keys it never lists (a map's: labels, annotations, data) is not in the schema. Throws with every such field.
 */
export async function validateObject(o: K8sObject): Promise<void> {
  // "v1" is the core group's (kubernetes-models/v1), "apps/v1" a named group's (kubernetes-models/apps/v1).
  const mod = (await import(`kubernetes-models/${o.apiVersion}`)) as Record<string, Validated | undefined>;
  const Cls = mod[o.kind];
  assert.ok(Cls, `kubernetes-models has no ${o.kind} in ${o.apiVersion}`);
  new Cls(o).validate(); // throws, with every error
  const seen = new Map<object, { read: Set<PropertyKey>; listed: boolean }>();
  const track = (v: unknown): unknown => {
    if (typeof v !== "object" || v === null) return v;
    const entry = { read: new Set<PropertyKey>(), listed: false };
    seen.set(v, entry);
    const children = new Map<PropertyKey, unknown>();
    return new Proxy(v, {
      get(target, key, receiver) {
        entry.read.add(key);
        const value = Reflect.get(target, key, receiver);
        if (typeof value !== "object" || value === null) return value;
        if (!children.has(key)) children.set(key, track(value));
        return children.get(key);
      },
      has(target, key) {
        entry.read.add(key);
        return Reflect.has(target, key);
      },
      ownKeys(target) {
        entry.listed = true;
        return Reflect.ownKeys(target);
      },
    });
  };
  Cls.prototype.validate.call(track(o));
  const unknown: string[] = [];
  const walk = (v: unknown, path: string) => {
    if (typeof v !== "object" || v === null) return;
    const entry = seen.get(v);
    for (const [k, x] of Object.entries(v)) {
      const at = Array.isArray(v) ? `${path}[${k}]` : `${path}.${k}`;
      if (entry && !entry.listed && !Array.isArray(v) && !entry.read.has(k)) unknown.push(at);
      else walk(x, at);
    }
  };
  walk(o, `${o.kind}/${o.metadata.name}`);
  assert.deepEqual(unknown, [], `fields that the ${o.kind} schema does not have`);
}
