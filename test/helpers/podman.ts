/**
 * Real containers for end-to-end tests: podman (as Debian ships it) with runc, no registry and no network plugin.
 * The image is made on the spot by `podman import` of a tarball holding the static busybox of busybox-static, under
 * a unique name, removed when its scope ends. Every container runs with its own network namespace holding only lo
 * (`--network none`) unless it joins another's, under a unique name, and is removed (`podman rm -f -t 0`, a SIGKILL) when its scope ends,
 * passed or failed, and at the latest when this process exits.
 *
 * The flags are the ones that work on these machines: `--runtime runc --cgroup-manager cgroupfs` (crun refuses the
 * hybrid cgroup layout here, and there is no systemd to manage cgroups), explicit `--ulimit`s (podman's defaults
 * exceed the hard limits here). Containers then land in the cgroup /libpod_parent/libpod-ID, in every hierarchy.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, statSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { compileC, isStaticElf } from "./compile.js";
import { IN_CI, needs } from "./env.js";
import { runSync, until } from "./processes.js";
import { type Scope, tempDir, uniqueName } from "./scope.js";

/** podman and runc run the containers; busybox (static, from busybox-static) is the image. */
export function needsPodman(t: TestContext): boolean {
  if (!needs(t, { root: true, tools: ["podman", "runc", "busybox"] })) return false;
  const busybox = runSync(["sh", "-c", "command -v busybox"]).stdout.trim();
  if (isStaticElf(busybox)) return true;
  const reason = `needs a static busybox (busybox-static), not ${busybox}`;
  if (IN_CI) throw new Error(`${reason}: CI must provide it`);
  t.skip(reason);
  return false;
}

function podman(args: readonly string[], timeoutMs = 60_000): string {
  const r = runSync(["podman", ...args], { timeoutMs });
  assert.equal(r.status, 0, `podman ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** Containers (name → image) and images not yet removed; whatever a crash leaves goes when the process exits. */
const live = new Map<string, string>();
const liveImages = new Set<string>();
process.once("exit", () => {
  if (live.size) spawnSync("podman", ["rm", "-f", "-t", "0", "--depend", ...live.keys()], { stdio: "ignore" });
  for (const image of liveImages) spawnSync("podman", ["rmi", "-f", image], { stdio: "ignore" });
});

/**
 * Remove containers at once (SIGKILL: `rm -f` alone would wait 10 s for each init that ignores SIGTERM), and
 * those that joined their namespaces with them (--depend: podman refuses to remove a container others depend on).
 */
function removeContainers(names: readonly string[]): void {
  if (!names.length) return;
  for (const n of names) live.delete(n);
  podman(["rm", "-f", "-t", "0", "--depend", ...names]);
}

/** A busybox image with `sh`, `sleep` and `cat`, under a unique name; removed when `scope` ends. */
export function busyboxImage(scope: Scope): string {
  const dir = tempDir(scope);
  const root = join(dir, "root");
  mkdirSync(join(root, "bin"), { recursive: true });
  const busybox = runSync(["sh", "-c", "command -v busybox"]).stdout.trim();
  runSync(["cp", busybox, join(root, "bin", "busybox")]);
  for (const applet of ["sh", "sleep", "cat"]) symlinkSync("busybox", join(root, "bin", applet));
  const tar = join(dir, "busybox.tar");
  assert.equal(runSync(["tar", "-C", root, "-cf", tar, "."]).status, 0);
  const image = `localhost/${uniqueName()}:1`;
  podman(["import", "--quiet", tar, image]);
  liveImages.add(image);
  // Its containers first, whatever the order the scope runs its cleanups in (a TestContext runs them in order).
  scope.after(() => {
    removeContainers([...live].filter(([, i]) => i === image).map(([name]) => name));
    liveImages.delete(image);
    podman(["rmi", image]);
  });
  return image;
}

export interface ContainerOptions {
  /** Its name (unique, e.g. `${uniqueName()}-billing` for a rule that selects by name); uniqueName() unless given. */
  name?: string;
  /** `--annotation KEY=VALUE` each: what a CRI runtime writes into the bundle (and runc into its state.json). */
  annotations?: Record<string, string>;
  /** `--label KEY=VALUE` each: podman keeps them in its own database (libpod's bolt_state.db), not in the bundle. */
  labels?: Record<string, string>;
  /** Host paths bind-mounted read-only, at `target` inside. */
  mounts?: readonly { source: string; target: string }[];
  /** Namespaced sysctls of its network namespace (`--sysctl`), e.g. net.ipv4.tcp_keepalive_time. */
  sysctls?: Record<string, string | number>;
  /**
   * `--network`: "none" (its own namespace with only lo) unless given, e.g. "container:NAME" to join another's, or
   * "ns:/run/netns/NAME" to run in a namespace of the test's (the firewall lab's client).
   */
  network?: string;
  /** The command, the container's init (pid 1 inside). */
  cmd: readonly string[];
  /** `--hooks-dir DIR`: the OCI hooks podman runs for it (oci-hooks(5)), instead of the system's. */
  hooksDir?: string;
  /**
   * `--cgroup-parent PATH`: its cgroup is PATH/libpod-ID (cgroupfs), e.g. a pod's as kubelet lays it out; podman
   * makes the parents in every hierarchy and leaves them: the test removes them.
   */
  cgroupParent?: string;
}

/** A running container as the kernel and podman see it. */
export interface TestContainer {
  id: string;
  name: string;
  /** The image it was started from, as podman names it. */
  image: string;
  /** Its init process, as the host sees it. */
  pid: number;
  /** The inode number of its network namespace (net:[INUM]). */
  netns: number;
  /** The cgroup v2 path of its init ("/libpod_parent/libpod-ID"), from /proc/PID/cgroup. */
  cgroup: string;
  /** `podman logs`: what it printed so far. */
  logs(): string;
}

/** Start a container of `image` (detached); removed (SIGKILL, `podman rm -f -t 0`) when `scope` ends. */
export function startContainer(scope: Scope, image: string, opts: ContainerOptions): TestContainer {
  const name = opts.name ?? uniqueName();
  const args = [...(opts.hooksDir ? ["--hooks-dir", opts.hooksDir] : []), "run", "-d", "--name", name];
  args.push("--runtime", "runc", "--cgroup-manager", "cgroupfs");
  if (opts.cgroupParent) args.push("--cgroup-parent", opts.cgroupParent);
  args.push("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", opts.network ?? "none");
  // podman splits --annotation as CSV: quoted, a value keeps its commas, quotes and newlines.
  for (const [k, v] of Object.entries(opts.annotations ?? {})) {
    args.push("--annotation", `"${`${k}=${v}`.replaceAll('"', '""')}"`);
  }
  // --label is split at its first "=" only (no CSV): a value keeps its commas, quotes and newlines as given.
  for (const [k, v] of Object.entries(opts.labels ?? {})) args.push("--label", `${k}=${v}`);
  for (const m of opts.mounts ?? []) args.push("-v", `${m.source}:${m.target}:ro`);
  for (const [k, v] of Object.entries(opts.sysctls ?? {})) args.push("--sysctl", `${k}=${v}`);
  live.set(name, image);
  scope.after(() => removeContainers(live.has(name) ? [name] : []));
  const id = podman([...args, image, ...opts.cmd]).trim();
  const [pid, state] = podman(["inspect", "--format", "{{.State.Pid}} {{.State.Status}}", name]).trim().split(" ");
  assert.equal(state, "running", `container ${name} is ${state}: ${podman(["logs", name])}`);
  const cgroupLine = readFileSync(`/proc/${pid}/cgroup`, "utf8")
    .split("\n")
    .find((l) => l.startsWith("0::"));
  assert.ok(cgroupLine, `process ${pid} is in no cgroup v2`);
  return {
    id,
    name,
    image,
    pid: Number(pid),
    netns: statSync(`/proc/${pid}/ns/net`).ino,
    cgroup: cgroupLine.slice(3),
    logs: () => podman(["logs", name]),
  };
}

/** One line of ka_kinds: a socket of the program and what its own getsockopt says of it. */
export interface KindSocket {
  /** "listener", "listener-keepalive", "set", "inherited", "off", "user-timeout", and each connection's "-peer". */
  role: string;
  fd: number;
  local: string;
  peer: string;
  keepalive: number;
  idle: number;
  interval: number;
  count: number;
  /** TCP_USER_TIMEOUT, in milliseconds. */
  user_timeout: number;
}

/** The lines of ka_kinds, parsed: "role=set fd=5 local=127.0.0.1:40001 peer=... keepalive=1 ...". */
export function parseKinds(text: string): KindSocket[] {
  return text
    .split("\n")
    .filter((l) => l.startsWith("role="))
    .map((l) => {
      const f = Object.fromEntries(l.split(" ").map((kv) => kv.split("=", 2) as [string, string]));
      const n = (k: string) => Number(f[k]);
      return {
        role: f.role as string,
        fd: n("fd"),
        local: f.local as string,
        peer: f.peer as string,
        keepalive: n("keepalive"),
        idle: n("idle"),
        interval: n("interval"),
        count: n("count"),
        user_timeout: n("user_timeout"),
      };
    });
}

/**
 * test/fixtures/ka_kinds.c, built static, running as the init of a container of `image`: every keepalive kind in
 * the container's own network namespace. Returns the container and the sockets as the program reported them.
 */
export async function startKinds(
  scope: Scope,
  image: string,
  opts: Omit<ContainerOptions, "cmd" | "mounts"> = {},
): Promise<{ container: TestContainer; sockets: KindSocket[] }> {
  const exe = compileC(tempDir(scope, { readable: true }), "ka_kinds.c", "ka_kinds", ["-static"]);
  const container = startContainer(scope, image, {
    ...opts,
    mounts: [{ source: exe, target: "/ka_kinds" }],
    cmd: ["/ka_kinds"],
  });
  const logs = await until("ka_kinds in the container to print ready", () => {
    const text = container.logs();
    return /^ready$/m.test(text) && text;
  });
  return { container, sockets: parseKinds(logs) };
}
