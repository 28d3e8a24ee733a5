/**
 * Who a socket belongs to: its container (the OCI runtime, the id, the engine's name for it), the Kubernetes pod
 * that container is part of, or the systemd unit, from what the kernel says of the socket (its cgroup, its network
 * namespace) or of a process holding it (/proc/PID/cgroup).
 *
 * The containers come from the OCI runtimes' own records, one directory per container under each runtime's root:
 * runc's state.json (init pid and start time, cgroup paths, namespaces, and the config's labels, which are the
 * bundle's annotations as "KEY=VALUE" plus runc's own "bundle=PATH"), crun's status (pid, start time, cgroup path,
 * bundle) with the bundle's config.json (annotations, namespaces). Pods come from the annotations that CRI
 * runtimes write: containerd's io.kubernetes.cri.*, CRI-O's io.kubernetes.pod.* and io.kubernetes.container.name.
 * The image and the labels, for Kubernetes, from the same annotations: containerd's io.kubernetes.cri.image-name
 * (pkg/cri/annotations; it writes no labels there), CRI-O's io.kubernetes.cri-o.ImageName and
 * io.kubernetes.cri-o.Labels, a JSON object in a string (pkg/annotations/internal.go).
 *
 * podman writes its container name, image and labels nowhere in these records (`--label` is no annotation; seen
 * with podman 4.3). The name and the image are in containers/storage's own containers.json (next to the container's
 * bundle: "names", updated by `podman rename`, and the "metadata" string's "image-name", libpod's
 * RuntimeContainerMetadata, the name `podman ps` shows); the labels (`--label`, and the image's own, which podman
 * merges in) only in libpod's database, bolt_state.db, a bbolt file (inspect/boltdb.ts). These are read for
 * podman's containers only. podman 5 may keep that database in SQLite (db.sql), which is not read: its containers
 * then have no labels here.
 *
 * Root-owned runtimes write these files, but annotations and names are chosen by whoever starts a container, and
 * a directory may be planted where a runtime's root is missing or open to others. So: only directories and files
 * owned by root and writable by no one else are read, no symlink is followed (lstat, O_NOFOLLOW), sizes are capped,
 * garbage is skipped without an error, and every string is returned exactly as found (printing escapes it).
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, readSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { boltGet } from "./boltdb.js";
import { cgroup2Mount, cgroupPath, cgroupPathOfId, cgroupPathOfPid } from "./cgroup.js";
import { startTimeOf } from "./processes.js";

/** A Kubernetes pod and the container's name in it (null for the pod's sandbox, which runs no container of its own). */
export interface Pod {
  namespace: string;
  name: string;
  container: string | null;
}

export interface Container {
  /** The OCI runtime whose record it is: "runc" or "crun". */
  runtime: string;
  /** What made it, where the records say: "podman", "cri-o", "containerd", "docker"; null when they do not. */
  engine: string | null;
  id: string;
  /** The first 12 characters of the id, as podman, docker and crictl show it. */
  shortId: string;
  /** The engine's name for it (podman's); null where the records hold none. */
  name: string | null;
  /**
   * The image it was made from, as its engine names it ("localhost/app:1", "docker.io/library/redis:7"); null where
   * the records hold none.
   */
  image: string | null;
  /** Its labels (podman's, CRI-O's), exact; empty where it has none or the records hold none. */
  labels: ReadonlyMap<string, string>;
  /** From the CRI annotations, else (the container's name then unknown) from the pod UID of its cgroup's path. */
  pod: Pod | null;
}

export interface Workload {
  container: Container | null;
  /** The systemd unit of the cgroup ("nginx.service", "session-2.scope"), also a user's unit; null outside any. */
  unit: string | null;
  /** The uid whose `systemd --user` runs `unit` (under user@UID.service); null for a system unit. */
  unitUid: number | null;
}

/** A directory that holds one directory per container. */
export interface StateRoot {
  dir: string;
  /** Who runs the runtime there, when the place says so. */
  engine: string | null;
  /** One level more: a directory per containerd namespace ("k8s.io", "default"), each with one per container. */
  namespaced?: boolean;
}

/**
 * The runtimes' roots. runc's default for root is /run/runc (`runc --root`), which podman (conmon passes no --root)
 * and CRI-O use; crun's is /run/crun. containerd's runc shim keeps /run/containerd/runc/NAMESPACE/ID, for runc and
 * for crun as its binary; docker's is /run/docker/runtime-runc/moby. Only /run/runc is seen on this project's
 * machines (podman 4.3 with runc); the others are the runtimes' documented defaults.
 */
export const STATE_ROOTS: readonly StateRoot[] = [
  { dir: "/run/runc", engine: null },
  { dir: "/run/crun", engine: null },
  { dir: "/run/containerd/runc", engine: "containerd", namespaced: true },
  { dir: "/run/docker/runtime-runc/moby", engine: "docker" },
];

/** Caps on what is read: a runc state.json is about 35 KB (most of it the seccomp profile). */
const MAX_RECORD = 4 << 20;
const MAX_STORAGE = 64 << 20;
/** A JSON text inside a record (containers.json's "metadata", CRI-O's Labels annotation), most a few hundred bytes. */
const MAX_EMBEDDED = 1 << 20;

const { O_RDONLY, O_NOFOLLOW, O_NONBLOCK } = constants;

/** A directory that only root can change: a real directory (not a symlink), owned by root, writable by no one else. */
function trustedDir(path: string): boolean {
  try {
    const st = lstatSync(path);
    return st.isDirectory() && st.uid === 0 && (st.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

/**
 * Where readTrusted reads records: one buffer, grown as needed up to 1 MiB (a new 35 KB Buffer per record costs
 * more than reading it); a bigger file gets its own.
 */
let scratch = Buffer.allocUnsafe(64 << 10);

/**
 * A regular file that only root can change, at most `max` bytes, open; undefined for anything else. O_NOFOLLOW: a
 * symlink is never followed; O_NONBLOCK: a FIFO planted there does not block the open.
 */
function openTrusted(path: string, max: number): { fd: number; size: number } | undefined {
  let fd: number;
  try {
    fd = openSync(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (st.isFile() && st.uid === 0 && (st.mode & 0o022) === 0 && st.size <= max) return { fd, size: st.size };
  } catch {
    // closed below
  }
  closeSync(fd);
  return undefined;
}

/** The content of a file as openTrusted takes it; undefined for anything else. Valid until the next call. */
function readTrusted(path: string, max = MAX_RECORD): Buffer | undefined {
  const file = openTrusted(path, max);
  if (!file) return undefined;
  const { fd, size } = file;
  try {
    if (scratch.length < size && size <= 1 << 20) scratch = Buffer.allocUnsafe(size);
    const buf = scratch.length < size ? Buffer.allocUnsafe(size) : scratch;
    let n = 0;
    for (let r = 1; n < size && r > 0; n += r) r = readSync(fd, buf, n, size - n, n);
    return buf.subarray(0, n);
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

function parse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** Whether the quote at `at` ends or starts a string: an even number of backslashes before it. */
function realQuote(buf: Buffer, at: number): boolean {
  let b = at - 1;
  while (b >= 0 && buf[b] === BACKSLASH) b--;
  return (at - 1 - b) % 2 === 0;
}

/** Where the JSON value starting at `at` ends (one past it), or -1: strings skipped quote to quote. */
function valueEnd(buf: Buffer, at: number): number {
  let depth = 0;
  for (let i = at; i < buf.length; i++) {
    const c = buf[i] as number;
    if (c === QUOTE) {
      do i = buf.indexOf(QUOTE, i + 1);
      while (i > 0 && !realQuote(buf, i));
      if (i < 0) return -1;
      if (depth === 0) return i + 1;
    } else if (c === 0x7b || c === 0x5b) depth++;
    else if (c === 0x7d || c === 0x5d) {
      if (--depth <= 0) return depth === 0 ? i + 1 : i;
    } else if (depth === 0 && (c === 0x2c || c <= 0x20)) return i;
  }
  return depth === 0 ? buf.length : -1;
}

function isSpace(c: number | undefined): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/**
 * The value of the member `key` whose value starts with `open` ("[", "{", or "0" for a number), parsed; undefined
 * when there is none or it is not JSON. `last`: searched from the end, for a member that comes after the bulk. For the few fields tcpka needs from a runtime record whose whole parse
 * would cost ten times more (JSON.parse of a runc state.json: ≈ 350 µs, 70 ms for 200 containers). Exact for any
 * valid JSON: a real quote (not escaped) followed by `key"` cannot be inside a string or end one (the bare `key`
 * after it would not be JSON), so it opens a member name; and requiring the value's first character skips the
 * keys of maps whose values are strings (annotations, sysctls), the only keys a container's creator chooses.
 * Multi-byte UTF-8 never holds a byte below 0x80, so bytes are searched, not characters.
 */
export function jsonMember(buf: Buffer, key: string, open: "[" | "{" | "0", last = false): unknown {
  const name = Buffer.from(`"${key}"`);
  // (lastIndexOf takes a negative offset as counted from the end: stop at 0 instead.)
  const next = (from: number) =>
    !last ? buf.indexOf(name, from + 1) : from > 0 ? buf.lastIndexOf(name, from - 1) : -1;
  for (let at = next(last ? buf.length : -1); at >= 0; at = next(at)) {
    if (!realQuote(buf, at)) continue;
    let i = at + name.length;
    while (isSpace(buf[i])) i++;
    if (buf[i] !== 0x3a) continue; // ':'
    do i++;
    while (isSpace(buf[i]));
    const c = buf[i] as number;
    if (open === "0" ? !((c >= 0x30 && c <= 0x39) || c === 0x2d) : c !== open.charCodeAt(0)) continue;
    const end = valueEnd(buf, i);
    return end < 0 ? undefined : parse(buf.toString("utf8", i, end));
  }
  return undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

/** What a runtime's record says of one container. */
interface RuntimeRecord {
  runtime: "runc" | "crun";
  id: string;
  pid: number;
  start: number;
  /** The cgroup v2 path, absolute as runc writes it or inside the mount as crun does. */
  cgroup: string | undefined;
  annotations: Map<string, string>;
  /** The bundle directory (containers/storage's userdata directory for podman). */
  bundle: string | undefined;
  /** Its network namespace: made for it, joined (a pod's or another container's), or the host's. */
  netns: "own" | "joined" | "host";
}

/** A container being created, as an OCI hook is told of it (see creatingContainer). */
/** A container id as the OCI runtimes allow it (runc: letters, digits, "_.-"), as a state directory's name. */
const CONTAINER_ID = /^[0-9A-Za-z_.-]{1,128}$/;

/** Whether `name` can be a container's id and its state directory's name (no ".", "..", nor a hidden file). */
export function isContainerId(name: string): boolean {
  return CONTAINER_ID.test(name) && !name.startsWith(".");
}

export interface CreatingContainer {
  readonly record: RuntimeRecord;
  /** the engine that its state root says (containerRecord); null where only its annotations may say */
  readonly engine?: string | null;
}

/**
 * The container that an OCI hook is run for, from the state the runtime gives the hook on its stdin (the
 * runtime-spec's "state": id, pid, bundle, annotations). At the createRuntime stage the runtime's own record
 * (runc's state.json) is not written yet; the cgroup is, and comes from the init process's /proc/PID/cgroup.
 * undefined for anything that is not such a state.
 */
export function creatingContainer(state: unknown): CreatingContainer | undefined {
  if (!isObject(state) || typeof state.id !== "string" || !CONTAINER_ID.test(state.id)) return undefined;
  const pid = state.pid;
  if (typeof pid !== "number" || !Number.isSafeInteger(pid) || pid <= 0) return undefined;
  const annotations = new Map<string, string>();
  if (isObject(state.annotations)) {
    for (const [k, v] of Object.entries(state.annotations)) if (typeof v === "string") annotations.set(k, v);
  }
  const cgroup = cgroupPathOfPid(pid);
  return {
    record: {
      runtime: "runc", // the state does not say which runtime runs the hook; only a label here, never shown by it
      id: state.id,
      pid,
      start: startTimeOf(pid) ?? -1,
      cgroup: typeof cgroup === "string" ? cgroup : undefined,
      annotations,
      bundle: str(state.bundle),
      netns: "own",
    },
  };
}

/**
 * The record of the container `id` that a runtime has just written under `parent` (a state root of STATE_ROOTS,
 * or a namespace directory of one): its runc state.json or crun status, read as Workloads.load() reads them
 * (the directories checked as trustedDir, the file as readTrusted). undefined until it is there and whole.
 */
export function containerRecord(parent: string, id: string): CreatingContainer | undefined {
  if (!isContainerId(id)) return undefined;
  const root = STATE_ROOTS.find((r) => parent === r.dir || (r.namespaced === true && dirname(parent) === r.dir));
  if (!root || !trustedDir(root.dir) || !trustedDir(parent)) return undefined;
  const dir = join(parent, id);
  if (!trustedDir(dir)) return undefined;
  const record = readRunc(dir, id) ?? readCrun(dir, id);
  return record ? { record, engine: root.engine } : undefined;
}

/** A runc state.json: "labels" are the annotations as KEY=VALUE, and runc's "bundle=PATH" after them (specconv). */
function readRunc(dir: string, id: string): RuntimeRecord | undefined {
  const buf = readTrusted(join(dir, "state.json"));
  if (!buf) return undefined;
  const pid = jsonMember(buf, "init_process_pid", "0");
  const start = jsonMember(buf, "init_process_start", "0");
  if (!Number.isSafeInteger(pid) || !Number.isSafeInteger(start)) return undefined;
  // runc writes the config's labels and then cgroup_paths after the bulk (mounts, devices, the seccomp profile).
  const labels = jsonMember(buf, "labels", "[", true);
  const annotations = new Map<string, string>();
  let bundle: string | undefined;
  for (const l of Array.isArray(labels) ? labels : []) {
    const eq = typeof l === "string" ? l.indexOf("=") : -1;
    if (eq <= 0) continue;
    const [key, value] = [(l as string).slice(0, eq), (l as string).slice(eq + 1)];
    // An annotation may be named "bundle" too: runc's own comes last.
    if (key === "bundle") bundle = value;
    else annotations.set(key, value);
  }
  const paths = jsonMember(buf, "cgroup_paths", "{", true);
  const namespaces = jsonMember(buf, "namespaces", "[");
  return {
    runtime: "runc",
    id,
    pid: pid as number,
    start: start as number,
    cgroup: isObject(paths) ? str(paths[""]) : undefined,
    annotations,
    bundle,
    netns: netnsKind(namespaces, "NEWNET"),
  };
}

/** A crun status file (libcrun_write_container_status), and its bundle's config.json for the annotations. */
function readCrun(dir: string, id: string): RuntimeRecord | undefined {
  const text = readTrusted(join(dir, "status"));
  const status = text && parse(text.toString("utf8"));
  if (!isObject(status) || typeof status.pid !== "number") return undefined;
  const bundle = str(status.bundle);
  const config = bundle?.startsWith("/") ? readTrusted(join(bundle, "config.json")) : undefined;
  const annotations = new Map<string, string>();
  const a = config && jsonMember(config, "annotations", "{");
  if (isObject(a)) for (const [k, v] of Object.entries(a)) if (typeof v === "string") annotations.set(k, v);
  return {
    runtime: "crun",
    id,
    pid: status.pid,
    start: typeof status["process-start-time"] === "number" ? status["process-start-time"] : -1,
    cgroup: str(status["cgroup-path"]),
    annotations,
    bundle,
    netns: netnsKind(config && jsonMember(config, "namespaces", "["), "network"),
  };
}

/** From a list of {type, path}: runc's configs.Namespace ("NEWNET") or the OCI spec's ("network"). */
function netnsKind(namespaces: unknown, type: string): RuntimeRecord["netns"] {
  if (!Array.isArray(namespaces)) return "host";
  const ns = namespaces.find((n) => isObject(n) && n.type === type) as Record<string, unknown> | undefined;
  if (!ns) return "host";
  return str(ns.path) ? "joined" : "own";
}

/** containerd's and CRI-O's pod annotations; whether the container is the pod's sandbox. */
export function podOf(a: ReadonlyMap<string, string>): { pod: Pod | null; sandbox: boolean } {
  for (const [ns, name, container, type] of [
    [
      "io.kubernetes.cri.sandbox-namespace",
      "io.kubernetes.cri.sandbox-name",
      "io.kubernetes.cri.container-name",
      "io.kubernetes.cri.container-type",
    ],
    [
      "io.kubernetes.pod.namespace",
      "io.kubernetes.pod.name",
      "io.kubernetes.container.name",
      "io.kubernetes.cri-o.ContainerType",
    ],
  ] as const) {
    const namespace = a.get(ns);
    const podName = a.get(name);
    if (namespace === undefined || podName === undefined) continue;
    const isSandbox = a.get(type) === "sandbox";
    return {
      pod: { namespace, name: podName, container: isSandbox ? null : (a.get(container) ?? null) },
      sandbox: isSandbox,
    };
  }
  return { pod: null, sandbox: false };
}

/** A Kubernetes pod's cgroup as kubelet lays it out, and the container cgroup below it (see kubepodsOf). */
export interface KubePod {
  /** the pod's UID, as the API server has it ("0b6c…-…"; a static pod's is 32 hex digits) */
  uid: string;
  /** its QoS class, from where kubelet put it: Guaranteed pods sit right under kubepods */
  qos: "guaranteed" | "burstable" | "besteffort";
  /** the pod's cgroup path: made by kubelet before any of its containers, and the parent of all of them */
  path: string;
  /** the container's id where the path goes below the pod into a runtime's cgroup of a known shape; else null */
  containerId: string | null;
}

// kubelet's cgroup names (pkg/kubelet/cm: cgroup_manager_linux.go, qos_container_manager_linux.go,
// pod_container_manager_linux.go). cgroupfs: kubepods/[burstable|besteffort/]pod<UID>/<ID>; systemd (the same
// names as slices, each with its parents' names in front and "-" in the UID escaped as "_"):
// kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/<runtime>-<ID>.scope. The tree may
// sit below a cgroup root of its own (kubelet --cgroup-root; kind's nodes: /kubelet.slice/kubelet-kubepods…).
const POD_UID = /^[0-9a-f][0-9a-f-]{0,63}$/;
const SYSTEMD_POD = /^(?:[A-Za-z0-9_]+-)*kubepods(?:-(burstable|besteffort))?-pod([0-9a-f_]{1,64})\.slice$/;
const SYSTEMD_QOS = /^(?:[A-Za-z0-9_]+-)*kubepods-(burstable|besteffort)\.slice$/;
// containerd's "cri-containerd-ID.scope", CRI-O's "crio-ID.scope" (and its "crio-conmon-ID.scope"), docker's
// "docker-ID.scope"; under cgroupfs containerd and docker name the directory ID itself, CRI-O crio-ID, podman
// libpod-ID.
const SYSTEMD_CONTAINER = /^(?:cri-containerd|crio|docker)-([0-9a-f]{64})\.scope$/;
const CGROUPFS_CONTAINER = /^(?:libpod-|crio-)?([0-9a-f]{64})$/;

/**
 * The pod of a cgroup path, from kubelet's layout alone (no API server, no runtime record): the pod's UID, QoS
 * class, its cgroup, and the container's id when the path goes below it. Both drivers: systemd's
 * "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6c_…slice/cri-containerd-ID.scope" and
 * cgroupfs's "/kubepods/burstable/pod0b6c-…/ID", Guaranteed pods right under kubepods. null for any other path.
 * The path was chosen by kubelet, but a cgroup's name by anyone who may make one: only the shape is trusted.
 */
export function kubepodsOf(path: string): KubePod | null {
  const parts = path.split("/");
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string;
    let uid: string | undefined;
    let qos: KubePod["qos"] = "guaranteed";
    let container: RegExp = CGROUPFS_CONTAINER;
    const s = SYSTEMD_POD.exec(part);
    if (s) {
      // Its parents as systemd names them: kubepods.slice, and kubepods-QOS.slice for the QoS it names.
      const parent = parts[i - 1] ?? "";
      const ok = s[1] ? SYSTEMD_QOS.exec(parent)?.[1] === s[1] : /^(?:[A-Za-z0-9_]+-)*kubepods\.slice$/.test(parent);
      if (!ok) continue;
      uid = (s[2] as string).replaceAll("_", "-");
      qos = (s[1] as KubePod["qos"] | undefined) ?? "guaranteed";
      container = SYSTEMD_CONTAINER;
    } else if (part.startsWith("pod") && i > 0) {
      const parent = parts[i - 1] as string;
      if (parent === "burstable" || parent === "besteffort") {
        if (parts[i - 2] !== "kubepods") continue;
        qos = parent;
      } else if (parent !== "kubepods") continue;
      uid = part.slice(3);
    } else continue;
    if (!POD_UID.test(uid)) continue;
    const below = parts[i + 1];
    const id = below === undefined ? null : (container.exec(below)?.[1] ?? null);
    return { uid, qos, path: parts.slice(0, i + 1).join("/") || "/", containerId: id };
  }
  return null;
}

/** io.container.manager, which podman and CRI-O set, as the engine's name. */
const MANAGERS: Record<string, string> = { libpod: "podman", "cri-o": "cri-o" };

// systemd's unit names (unit_name_is_valid: letters, digits, ":-_.\" and "@", at most 255 characters); in the
// cgroup tree a name that would clash with a control file is escaped with a leading "_" (cg_escape).
const UNIT = /^_?([A-Za-z0-9:_.\\@-]+\.(?:service|scope))$/;
const USER_MANAGER = /^user@(\d+)\.service$/;

/**
 * The systemd unit of a cgroup path: its last component that is a service or a scope ("/system.slice/nginx.service"
 * → nginx.service, also for cgroups a service made below its own), and the uid of the user manager when the unit is
 * a user's (".../user@1000.service/app.slice/foo.service" → foo.service of uid 1000).
 */
export function unitOfCgroup(path: string): { unit: string; uid: number | null } | null {
  const parts = path.split("/");
  for (let i = parts.length - 1; i >= 0; i--) {
    const m = UNIT.exec(parts[i] as string);
    if (!m || (m[1] as string).length > 255) continue;
    for (let j = i - 1; j >= 0; j--) {
      const user = USER_MANAGER.exec(parts[j] as string);
      if (user) return { unit: m[1] as string, uid: Number(user[1]) };
    }
    return { unit: m[1] as string, uid: null };
  }
  return null;
}

/** The container directories under a root: each checked as trustedDir, the root and a namespace level too. */
function containerDirs(root: StateRoot): string[] {
  if (!trustedDir(root.dir)) return [];
  const out: string[] = [];
  const list = (dir: string, depth: number) => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const name of names) {
      const d = join(dir, name);
      if (!trustedDir(d)) continue;
      if (depth > 0) list(d, depth - 1);
      else out.push(d);
    }
  };
  list(root.dir, root.namespaced ? 1 : 0);
  return out;
}

/** The inode number of a path (what a cgroup's id and a namespace's inum are), or undefined. */
function inode(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
}

/** What containers/storage keeps of a podman container. */
interface StorageRecord {
  name: string | null;
  image: string | null;
}

/**
 * podman's containers in containers/storage's containers.json: [{"id", "names": [...], "metadata": "..."}, ...].
 * "metadata" is libpod's RuntimeContainerMetadata as JSON in a string (libpod/storage.go): its "image-name" is the
 * container's RootfsImageName, the normalized name `podman ps` shows ("localhost/app:1" for `podman run app:1`),
 * empty for a container made from a directory (--rootfs).
 */
function storageRecords(file: string): Map<string, StorageRecord> {
  const records = new Map<string, StorageRecord>();
  const buf = trustedDir(dirname(file)) ? readTrusted(file, MAX_STORAGE) : undefined;
  const list = buf && parse(buf.toString("utf8"));
  for (const c of Array.isArray(list) ? list : []) {
    if (!isObject(c) || typeof c.id !== "string") continue;
    const name = Array.isArray(c.names) ? (str(c.names[0]) ?? null) : null;
    const meta = typeof c.metadata === "string" && c.metadata.length <= MAX_EMBEDDED ? parse(c.metadata) : undefined;
    const image = isObject(meta) ? str(meta["image-name"]) : undefined;
    records.set(c.id, { name, image: image || null });
  }
  return records;
}

/** A string-to-string object's members as a map (anything else in it skipped); empty for anything else. */
function stringMap(v: unknown): Map<string, string> {
  const m = new Map<string, string>();
  if (isObject(v)) for (const [k, x] of Object.entries(v)) if (typeof x === "string") m.set(k, x);
  return m;
}

/**
 * podman's labels of the containers `ids`, from libpod's database file: bucket "ctr", a bucket per id, key
 * "config", the container's ContainerConfig as JSON whose top-level "labels" is {KEY: VALUE}
 * (libpod/boltdb_state_internal.go, libpod/container_config.go). Looked up together, one page at a time.
 */
function podmanLabels(file: string, ids: readonly string[]): Map<string, Map<string, string>> {
  const labels = new Map<string, Map<string, string>>();
  const db = trustedDir(dirname(file)) ? openTrusted(file, Number.MAX_SAFE_INTEGER) : undefined;
  if (!db) return labels;
  const readAt = (offset: number, length: number): Buffer | undefined => {
    try {
      const buf = Buffer.allocUnsafe(length);
      return buf.subarray(0, readSync(db.fd, buf, 0, length, offset));
    } catch {
      return undefined;
    }
  };
  try {
    boltGet(
      readAt,
      ids.map((id) => ["ctr", id, "config"]),
    ).forEach((config, i) => {
      const c = config && config.length <= MAX_RECORD ? parse(config.toString("utf8")) : undefined;
      if (isObject(c)) labels.set(ids[i] as string, stringMap(c.labels));
    });
  } catch {
    // boltGet checks every offset (and its tests flip bytes at random); should bytes still get past: no labels
  } finally {
    closeSync(db.fd);
  }
  return labels;
}

/**
 * The image and labels that a Kubernetes runtime wrote into the annotations: containerd's io.kubernetes.cri.image-name
 * (pkg/cri/annotations; containerd writes no labels there), CRI-O's io.kubernetes.cri-o.ImageName ("some name of
 * the image", empty when it was given by id) and io.kubernetes.cri-o.Labels, the container's CRI labels as a JSON
 * object in a string (pkg/annotations/internal.go). A pod's own labels are its sandbox's (kubelet gives a
 * container only its io.kubernetes.* labels).
 */
export function criImageAndLabels(a: ReadonlyMap<string, string>): Pick<Container, "image" | "labels"> {
  const image = a.get("io.kubernetes.cri.image-name") || a.get("io.kubernetes.cri-o.ImageName") || null;
  const json = a.get("io.kubernetes.cri-o.Labels");
  const labels = stringMap(json !== undefined && json.length <= MAX_EMBEDDED ? parse(json) : undefined);
  return { image, labels };
}

/**
 * What podman recorded of its containers, in containers/storage and in libpod's database. A podman container's
 * bundle is STORAGE/overlay-containers/ID/userdata: containers.json is in STORAGE/overlay-containers, the database
 * in STORAGE/libpod (libpod's static dir, by default the graph root's libpod/).
 */
function podmanRecords(
  records: readonly RuntimeRecord[],
): Map<RuntimeRecord, StorageRecord & { labels: ReadonlyMap<string, string> }> {
  const byDir = new Map<string, RuntimeRecord[]>();
  for (const r of records) {
    if (!r.bundle?.startsWith("/") || basename(dirname(r.bundle)) !== r.id) continue;
    const dir = dirname(dirname(r.bundle));
    byDir.set(dir, [...(byDir.get(dir) ?? []), r]);
  }
  const out = new Map<RuntimeRecord, StorageRecord & { labels: ReadonlyMap<string, string> }>();
  for (const [dir, rs] of byDir) {
    const storage = storageRecords(join(dir, "containers.json"));
    const labels = podmanLabels(
      join(dirname(dir), "libpod", "bolt_state.db"),
      rs.map((r) => r.id),
    );
    for (const r of rs) {
      const s = storage.get(r.id);
      out.set(r, { name: s?.name ?? null, image: s?.image ?? null, labels: labels.get(r.id) ?? new Map() });
    }
  }
  return out;
}

/** A container and what is needed to find it: its cgroup path inside the mount, its init process. */
interface Entry {
  container: Container;
  path: string | undefined;
  record: RuntimeRecord;
  sandbox: boolean;
}

/**
 * The containers on this host and what each socket, namespace and process belongs to. load() only reads the
 * records; the system calls that each kind of lookup needs are made at its first use, once.
 */
export class Workloads {
  /** Every container found, in the order of the roots. */
  readonly containers: readonly Container[];
  private readonly entries: Entry[] = [];
  private readonly byPath = new Map<string, Container>();
  private idPaths: Map<number, string> | undefined;
  private byNetns: Map<number, Workload> | undefined;
  private readonly ofIds = new Map<number, Workload | null>();
  private readonly ofPaths = new Map<string, Workload | null>();
  private mountPath: string | null | undefined;

  private constructor(records: readonly (RuntimeRecord & { engine: string | null })[]) {
    const engines = records.map((r) => r.engine ?? MANAGERS[r.annotations.get("io.container.manager") ?? ""] ?? null);
    const podman = podmanRecords(records.filter((_, i) => engines[i] === "podman"));
    records.forEach((r, i) => {
      const engine = engines[i] ?? null;
      // A podman container's are what podman recorded, never annotations (whoever starts one may add those).
      const { name, image, labels } =
        engine === "podman"
          ? (podman.get(r) ?? { name: null, image: null, labels: new Map() })
          : { name: null, ...criImageAndLabels(r.annotations) };
      const { pod, sandbox } = podOf(r.annotations);
      const container: Container = {
        runtime: r.runtime,
        engine,
        id: r.id,
        shortId: r.id.slice(0, 12),
        name,
        image,
        labels,
        pod,
      };
      const path = r.cgroup === undefined ? undefined : this.pathInMount(r.cgroup);
      if (path !== undefined && path !== "/") this.byPath.set(path, container);
      this.entries.push({ container, path, record: r, sandbox });
    });
    // A container whose records carry no pod (a runtime that writes no CRI annotations) in a pod's cgroup that
    // kubelet laid out: the pod its sandbox's or its siblings' annotations name, found by the pod UID in the path.
    const pods = new Map<string, Pod>();
    const unmatched: Entry[] = [];
    for (const e of this.entries) {
      const uid = e.path === undefined ? undefined : kubepodsOf(e.path)?.uid;
      if (uid === undefined) continue;
      if (e.container.pod) pods.set(uid, e.container.pod);
      else unmatched.push(e);
    }
    for (const e of unmatched) {
      const pod = pods.get(kubepodsOf(e.path as string)?.uid as string);
      if (pod) e.container.pod = { namespace: pod.namespace, name: pod.name, container: null };
    }
    this.containers = this.entries.map((e) => e.container);
  }

  /**
   * The one container being created, as Workloads.load() would know it, without reading every other record: what
   * the agent needs the moment a runtime writes it (a host of hundreds of containers reads their records in tens
   * of milliseconds). A container of a pod whose records carry no pod is then not given its siblings' pod.
   */
  static only(c: CreatingContainer): Workloads {
    return new Workloads([{ ...c.record, engine: c.engine ?? null }]);
  }

  /** Read the runtimes' records under `roots` (STATE_ROOTS by default). Never throws. */
  static load(roots: readonly StateRoot[] = STATE_ROOTS, creating?: CreatingContainer): Workloads {
    const records: (RuntimeRecord & { engine: string | null })[] = creating
      ? [{ ...creating.record, engine: null }]
      : [];
    for (const root of roots) {
      for (const dir of containerDirs(root)) {
        const id = dir.slice(dir.lastIndexOf("/") + 1);
        const r = readRunc(dir, id) ?? readCrun(dir, id);
        if (r) records.push({ ...r, engine: root.engine });
      }
    }
    return new Workloads(records);
  }

  /**
   * By the id of the cgroup a socket is charged to (cgroup_id(), the inode of the cgroup's directory): the cgroup of
   * the task that made it (cgroup_sk_alloc, from sk_alloc), or for an accepted socket its listener's
   * (cgroup_sk_clone), so a container's sockets carry its cgroup [seen: ss --cgroup in podman containers].
   */
  ofCgroup(id: number): Workload | null {
    let w = this.ofIds.get(id);
    if (w === undefined) {
      const mount = this.mount();
      if (!this.idPaths) {
        // The containers' own cgroups by a stat each; any other (a unit's, one below a container's) from the kernel.
        this.idPaths = new Map();
        for (const { path } of this.entries) {
          const ino = path === undefined || !mount ? undefined : inode(join(mount, path));
          if (ino !== undefined) this.idPaths.set(ino, path as string);
        }
      }
      const path = this.idPaths.get(id) ?? (mount ? cgroupPathOfId(id, mount) : undefined);
      w = path === undefined ? null : this.ofPath(path);
      this.ofIds.set(id, w);
    }
    return w;
  }

  /** The container (or pod sandbox) whose network namespace this is, by its inode number (net:[INUM]). */
  ofNetns(inum: number): Workload | null {
    if (!this.byNetns) {
      this.byNetns = new Map();
      const rank = new Map<number, number>();
      const host = this.entries.length ? inode("/proc/1/ns/net") : undefined;
      for (const { container, path, record: r, sandbox } of this.entries) {
        // A container that joined a namespace it did not make (podman --network ns:PATH, one of a pod's beside its
        // sandbox) does not own it: other processes' sockets there are not the container's. A pod's sandbox
        // joins the one its runtime made for the pod (CNI), and stands for the pod.
        if (r.netns === "host" || (r.netns === "joined" && !sandbox) || r.pid <= 0) continue;
        // The namespace of the init process, if it is still that process (pids are reused; start times are not).
        const ns = inode(`/proc/${r.pid}/ns/net`);
        if (ns === undefined || ns === host || (r.start >= 0 && startTimeOf(r.pid) !== r.start)) continue;
        // A namespace several containers share is the pod's: its sandbox's first, else the one that made it.
        const score = sandbox ? 2 : 1;
        if ((rank.get(ns) ?? -1) >= score) continue;
        rank.set(ns, score);
        this.byNetns.set(ns, this.workload(container, path));
      }
    }
    return this.byNetns.get(inum) ?? null;
  }

  /** By a process: its cgroup v2 path from /proc/PID/cgroup (for the path that reads sockets without BPF). */
  ofPid(pid: number): Workload | null {
    const path = cgroupPathOfPid(pid);
    return typeof path === "string" ? this.ofPath(path) : null;
  }

  /** By a cgroup path inside the mount: the container whose cgroup it is or is below, and the unit. */
  ofPath(path: string): Workload | null {
    let w = this.ofPaths.get(path);
    if (w === undefined) {
      let container: Container | null = null;
      for (let p = path; p.length > 1; p = p.slice(0, Math.max(1, p.lastIndexOf("/")))) {
        container = this.byPath.get(p) ?? null;
        if (container) break;
      }
      w = container || unitOfCgroup(path) ? this.workload(container, path) : null;
      this.ofPaths.set(path, w);
    }
    return w;
  }

  private workload(container: Container | null, path: string | undefined): Workload {
    const u = path === undefined ? null : unitOfCgroup(path);
    return { container, unit: u?.unit ?? null, unitUid: u?.uid ?? null };
  }

  /** The cgroup2 mount, read when first needed (so that no containers cost nothing); null when there is none. */
  private mount(): string | null {
    if (this.mountPath === undefined) {
      try {
        this.mountPath = cgroup2Mount();
      } catch {
        this.mountPath = null;
      }
    }
    return this.mountPath;
  }

  /** A record's cgroup path as a path inside the mount: runc writes it absolute, crun relative to the mount. */
  private pathInMount(path: string): string | undefined {
    const mount = this.mount();
    if (!mount || !path.startsWith("/")) return undefined;
    return path.startsWith(`${mount}/`) ? cgroupPath(path, mount) : cgroupPath(path, "");
  }
}
