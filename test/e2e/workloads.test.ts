/**
 * Workloads against real podman containers (runc, cgroupfs) and real cgroups: each container is found by the
 * cgroup id of its processes, by its network namespace and by a pid, with the pod its annotations name and the
 * image and labels podman recorded (containers/storage, libpod's bbolt database); the records are read as runc and
 * podman wrote them, and none that someone else could have written.
 */
import assert from "node:assert/strict";
import {
  chmodSync,
  chownSync,
  copyFileSync,
  mkdirSync,
  readFileSync,
  rmdirSync,
  statSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { cgroup2Mount } from "../../src/inspect/cgroup.js";
import { type Container, type Workload, Workloads } from "../../src/inspect/workloads.js";
import { TestCgroup } from "../helpers/cgroup.js";
import { needs } from "../helpers/env.js";
import { busyboxImage, needsPodman, startContainer, startKinds, type TestContainer } from "../helpers/podman.js";
import { finished, runSync, until } from "../helpers/processes.js";
import { tempDir } from "../helpers/scope.js";
import { asUser, NOBODY } from "../helpers/users.js";

function cgroupId(path: string): number {
  return statSync(join(cgroup2Mount(), path)).ino;
}

function expected(c: TestContainer, pod: Container["pod"], labels: Record<string, string> = {}): Workload {
  const container: Container = {
    runtime: "runc",
    engine: "podman",
    id: c.id,
    shortId: c.id.slice(0, 12),
    name: c.name,
    image: c.image,
    labels: new Map(Object.entries(labels)),
    pod,
  };
  return {
    container,
    unit: null,
    unitUid: null,
  };
}

test("every container is found by its cgroup, its network namespace and its pid, with its pod", async (t) => {
  if (!needsPodman(t)) return;
  const img = busyboxImage(t);
  const cri = startContainer(t, img, {
    annotations: {
      "io.kubernetes.cri.sandbox-namespace": "shop",
      "io.kubernetes.cri.sandbox-name": "cart-7d4f9",
      "io.kubernetes.cri.container-name": "redis",
      "io.kubernetes.cri.container-type": "container",
    },
    cmd: ["/bin/sleep", "600"],
  });
  const crio = startContainer(t, img, {
    annotations: {
      "io.kubernetes.pod.namespace": "billing",
      "io.kubernetes.pod.name": "invoice-0",
      "io.kubernetes.container.name": "worker",
    },
    cmd: ["/bin/sleep", "600"],
  });
  const { container: plain, sockets } = await startKinds(t, img, {
    sysctls: {
      "net.ipv4.tcp_keepalive_time": 1234,
      "net.ipv4.tcp_keepalive_intvl": 56,
      "net.ipv4.tcp_keepalive_probes": 7,
    },
  });
  // What the program inside says of its sockets, in the namespace the container made, with its own sysctls.
  const kind = (role: string) => sockets.find((s) => s.role === role);
  assert.equal(sockets.length, 10);
  assert.deepEqual(
    [kind("set"), kind("inherited"), kind("off"), kind("user-timeout")].map(
      (s) => s && [s.keepalive, s.idle, s.interval, s.count, s.user_timeout],
    ),
    [
      [1, 31, 7, 3, 0],
      [1, 61, 11, 4, 0],
      [0, 1234, 56, 7, 0],
      [1, 1234, 56, 7, 12345],
    ],
  );
  // A process the container started later (podman exec) is in its cgroup too.
  const exec = runSync(["podman", "exec", "-d", plain.name, "/bin/sleep", "600"]);
  assert.equal(exec.status, 0, exec.stderr);

  const w = Workloads.load();
  const want: [TestContainer, Container["pod"]][] = [
    [cri, { namespace: "shop", name: "cart-7d4f9", container: "redis" }],
    [crio, { namespace: "billing", name: "invoice-0", container: "worker" }],
    [plain, null],
  ];
  for (const [c, pod] of want) {
    assert.match(c.cgroup, new RegExp(`/libpod-${c.id}$`), "podman's cgroupfs layout");
    assert.deepEqual(w.ofCgroup(cgroupId(c.cgroup)), expected(c, pod), `ofCgroup of ${c.name}`);
    assert.deepEqual(w.ofNetns(c.netns), expected(c, pod), `ofNetns of ${c.name}`);
    assert.deepEqual(w.ofPid(c.pid), expected(c, pod), `ofPid of ${c.name}`);
  }
  const found = w.containers.filter((c) => want.some(([t]) => t.id === c.id));
  assert.equal(found.length, 3, "each container listed once");

  // Every socket made in the container is charged to its cgroup (the socket's, not only the process's), the one
  // BPF reads: what ss --cgroup prints of each, from sock_diag's INET_DIAG_CGROUP_ID (since 5.7).
  const ss = runSync(["nsenter", "-t", String(plain.pid), "-n", "ss", "-tanH", "--cgroup"]);
  assert.equal(ss.status, 0, ss.stderr);
  const lines = ss.stdout.trim().split("\n");
  assert.equal(lines.length, sockets.length, ss.stdout);
  for (const l of lines) assert.match(l, new RegExp(`cgroup:${plain.cgroup}( |$)`), l);

  // The processes of podman exec, and nothing of the host's.
  const execPid = Number(
    readFileSync(join(cgroup2Mount(), plain.cgroup, "cgroup.procs"), "ascii")
      .split("\n")
      .find((p) => p && Number(p) !== plain.pid),
  );
  assert.ok(execPid > 0);
  assert.deepEqual(w.ofPid(execPid), expected(plain, null));
  // A cgroup the container made below its own (as systemd in a container does) is the container's too.
  const dir = join(cgroup2Mount(), plain.cgroup);
  mkdirSync(join(dir, "inner"));
  try {
    writeFileSync(join(dir, "inner", "cgroup.procs"), String(execPid));
    const inner = Workloads.load();
    assert.deepEqual(inner.ofPid(execPid), expected(plain, null));
    assert.deepEqual(inner.ofCgroup(cgroupId(`${plain.cgroup}/inner`)), expected(plain, null));
  } finally {
    // Back out, so that runc can remove the container's cgroup.
    writeFileSync(join(dir, "cgroup.procs"), String(execPid));
    rmdirSync(join(dir, "inner"));
  }
  assert.equal(w.ofPid(process.pid)?.container ?? null, null);
  assert.equal(w.ofNetns(statSync("/proc/self/ns/net").ino), null, "the host's namespace is no container's");
  assert.equal(w.ofCgroup(cgroupId("/")), null);
});

test("a network namespace that containers share is their pod's: its sandbox's, else the one that made it", (t) => {
  if (!needsPodman(t)) return;
  const img = busyboxImage(t);
  const pod = (container: string, type: string) => ({
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-name": "cart-1",
    "io.kubernetes.cri.container-name": container,
    "io.kubernetes.cri.container-type": type,
  });
  const maker = startContainer(t, img, { annotations: pod("maker", "container"), cmd: ["/bin/sleep", "600"] });
  const join = (annotations: Record<string, string>) =>
    startContainer(t, img, { annotations, network: `container:${maker.name}`, cmd: ["/bin/sleep", "600"] });
  const sidecar = join(pod("sidecar", "container"));
  assert.equal(sidecar.netns, maker.netns);
  const made = expected(maker, { namespace: "shop", name: "cart-1", container: "maker" });
  assert.deepEqual(Workloads.load().ofNetns(maker.netns), made, "the one that made it, not one that joined");
  const sandbox = join(pod("", "sandbox"));
  const w = Workloads.load();
  assert.deepEqual(w.ofNetns(maker.netns), expected(sandbox, { namespace: "shop", name: "cart-1", container: null }));
  // And when the sandbox made the namespace, a container that joins it later does not take it over.
  const own = startContainer(t, img, { annotations: pod("", "sandbox"), cmd: ["/bin/sleep", "600"] });
  startContainer(t, img, {
    annotations: pod("app", "container"),
    network: `container:${own.name}`,
    cmd: ["/bin/sleep", "600"],
  });
  assert.deepEqual(
    Workloads.load().ofNetns(own.netns),
    expected(own, { namespace: "shop", name: "cart-1", container: null }),
  );
  // Each container's own sockets are still its own.
  assert.deepEqual(
    w.ofCgroup(cgroupId(sidecar.cgroup)),
    expected(sidecar, { namespace: "shop", name: "cart-1", container: "sidecar" }),
  );
  assert.deepEqual(w.ofCgroup(cgroupId(maker.cgroup)), made);
});

test("a hostile annotation comes back exactly as it was written, and a forged field inside one is not read", (t) => {
  if (!needsPodman(t)) return;
  const hostile = 'e\x1b[31mvil\t"\\\u202e☃\nsecond, line';
  const c = startContainer(t, busyboxImage(t), {
    annotations: {
      // A value that spells out the fields the records are read for: runc writes it as a JSON string.
      forged: '","labels":["io.kubernetes.cri.sandbox-name=forged"],"init_process_pid":1,"cgroup_paths":{"":"/"},"',
      'key"labels":[\\': "x",
      "io.kubernetes.cri.sandbox-namespace": "ns",
      "io.kubernetes.cri.sandbox-name": hostile,
    },
    cmd: ["/bin/sleep", "600"],
  });
  const state = readFileSync(`/run/runc/${c.id}/state.json`, "utf8");
  assert.ok(state.includes(JSON.stringify(`io.kubernetes.cri.sandbox-name=${hostile}`)), "runc wrote it as given");
  const w = Workloads.load();
  assert.deepEqual(w.ofPid(c.pid), expected(c, { namespace: "ns", name: hostile, container: null }));
  assert.deepEqual(w.ofNetns(c.netns), expected(c, { namespace: "ns", name: hostile, container: null }));
});

test("a podman container's image and labels are podman's own records, exactly; annotations do not forge them", (t) => {
  if (!needsPodman(t)) return;
  const img = busyboxImage(t);
  const labels = {
    tier: "db",
    "app.kubernetes.io/name": "api",
    empty: "",
    hostile: 'e\x1b[31mvil\t"\\\u202e☃\nsecond, line=x',
  };
  const c = startContainer(t, img, {
    labels,
    // What a Kubernetes runtime writes: for a podman container, not podman's word on its image or labels.
    annotations: {
      "io.kubernetes.cri.image-name": "forged",
      "io.kubernetes.cri-o.ImageName": "forged",
      "io.kubernetes.cri-o.Labels": '{"tier":"forged"}',
    },
    cmd: ["/bin/sleep", "600"],
  });
  // podman keeps no label in the bundle or in runc's record (seen: podman 4.3), only in its database.
  const bundle = readFileSync(`/var/lib/containers/storage/overlay-containers/${c.id}/userdata/config.json`, "utf8");
  assert.ok(!bundle.includes("app.kubernetes.io/name"), "no label in config.json");
  assert.ok(!readFileSync(`/run/runc/${c.id}/state.json`, "utf8").includes("app.kubernetes.io/name"));
  // What podman itself says of them.
  const inspect = runSync(["podman", "inspect", c.name]);
  assert.equal(inspect.status, 0, inspect.stderr);
  const [own] = JSON.parse(inspect.stdout);
  assert.deepEqual([own.Config.Labels, own.ImageName], [labels, img]);
  const w = Workloads.load();
  assert.deepEqual(w.ofPid(c.pid), expected(c, null, labels));
  // One without labels, from the same image: none, and the image.
  const bare = startContainer(t, img, { cmd: ["/bin/sleep", "600"] });
  assert.deepEqual(Workloads.load().ofPid(bare.pid), expected(bare, null));
});

test("podman's storage and database that someone else could have written are not read", (t) => {
  if (!needsPodman(t)) return;
  const c = startContainer(t, busyboxImage(t), { labels: { tier: "db" }, cmd: ["/bin/sleep", "600"] });
  const storage = "/var/lib/containers/storage";
  const record = JSON.parse(readFileSync(`/run/runc/${c.id}/state.json`, "utf8"));
  // A copy of podman's layout for this container, root's and private: runc's record, containers.json, the database.
  const layout = (name: string) => {
    const top = join(tempDir(t), name);
    const fake = join(top, "storage", "overlay-containers");
    mkdirSync(join(fake, c.id, "userdata"), { recursive: true });
    mkdirSync(join(top, "storage", "libpod"));
    copyFileSync(join(storage, "overlay-containers", "containers.json"), join(fake, "containers.json"));
    copyFileSync(join(storage, "libpod", "bolt_state.db"), join(top, "storage", "libpod", "bolt_state.db"));
    const labels = (record.config.labels as string[]).map((l) =>
      l.startsWith("bundle=") ? `bundle=${join(fake, c.id, "userdata")}` : l,
    );
    mkdirSync(join(top, "state", c.id), { recursive: true });
    writeFileSync(
      join(top, "state", c.id, "state.json"),
      JSON.stringify({ ...record, config: { ...record.config, labels } }),
      {
        mode: 0o600,
      },
    );
    const read = () => {
      const found = Workloads.load([{ dir: join(top, "state"), engine: null }]).containers;
      assert.equal(found.length, 1, `${name}: the record itself is read`);
      const f = found[0] as Container;
      return { name: f.name, image: f.image, labels: Object.fromEntries(f.labels) };
    };
    return { db: join(top, "storage", "libpod", "bolt_state.db"), json: join(fake, "containers.json"), read };
  };
  const genuine = layout("genuine");
  const all = { name: c.name, image: c.image, labels: { tier: "db" } };
  assert.deepEqual(genuine.read(), all, "the copies are read: the control");

  const nobodyDb = layout("nobody-db");
  chownSync(nobodyDb.db, NOBODY.uid, NOBODY.gid);
  assert.deepEqual(nobodyDb.read(), { ...all, labels: {} }, "a database another user owns");
  const openDir = layout("open-dir");
  chmodSync(dirname(openDir.db), 0o777);
  assert.deepEqual(openDir.read(), { ...all, labels: {} }, "a database in a directory anyone may write");
  const linked = layout("symlinked-db");
  unlinkSync(linked.db);
  symlinkSync(join(storage, "libpod", "bolt_state.db"), linked.db);
  assert.deepEqual(linked.read(), { ...all, labels: {} }, "a symlink to the real database");
  const torn = layout("truncated-db");
  truncateSync(torn.db, 3000);
  assert.deepEqual(torn.read(), { ...all, labels: {} }, "a database cut short");
  const nobodyJson = layout("nobody-json");
  chmodSync(nobodyJson.json, 0o666);
  assert.deepEqual(
    nobodyJson.read(),
    { name: null, image: null, labels: { tier: "db" } },
    "a containers.json anyone may write",
  );
});

test("state directories and files that someone else could have written are not read", (t) => {
  if (!needsPodman(t) || !needs(t, { tools: ["setpriv", "mkfifo"] })) return;
  const c = startContainer(t, busyboxImage(t), { cmd: ["/bin/sleep", "600"] });
  const real = `/run/runc/${c.id}/state.json`;
  const root = tempDir(t, { readable: true });
  const dir = (name: string, mode = 0o711) => {
    const d = join(root, name);
    mkdirSync(d);
    chmodSync(d, mode);
    return d;
  };
  // The real record, copied by root: read (and the control that the copies are records at all).
  copyFileSync(real, join(dir("genuine"), "state.json"));
  // The same with a newline in a pod name, as runc would write it.
  const record = JSON.parse(readFileSync(real, "utf8"));
  record.config.labels.push("io.kubernetes.cri.sandbox-namespace=ns", "io.kubernetes.cri.sandbox-name=one\ntwo");
  writeFileSync(join(dir("newline"), "state.json"), JSON.stringify(record), { mode: 0o600 });

  // uid 65534 writes a record into a directory it owns, and one into a directory anyone may write.
  const theirs = dir("nobody-dir");
  chownSync(theirs, NOBODY.uid, NOBODY.gid);
  const open = dir("world-writable", 0o777);
  for (const d of [theirs, open]) {
    const r = runSync([...asUser(NOBODY), "sh", "-c", 'cat > "$0"', join(d, "state.json")], {
      input: readFileSync(real, "utf8"),
    });
    assert.equal(r.status, 0, r.stderr);
  }
  // A record root owns but uid 65534 may rewrite; links to the real one; a FIFO; garbage; one too big to read.
  const file = join(dir("nobody-file"), "state.json");
  copyFileSync(real, file);
  chownSync(file, NOBODY.uid, NOBODY.gid);
  symlinkSync(real, join(dir("symlinked-file"), "state.json"));
  symlinkSync(join(root, "genuine"), join(root, "symlinked-dir"));
  assert.equal(runSync(["mkfifo", join(dir("fifo"), "state.json")]).status, 0);
  writeFileSync(join(dir("garbage"), "state.json"), '{"init_process_pid":[1,{"init_process_start":"', { mode: 0o600 });
  writeFileSync(join(dir("huge"), "state.json"), readFileSync(real), { mode: 0o600 });
  truncateSync(join(root, "huge", "state.json"), 5 << 20);

  const w = Workloads.load([{ dir: root, engine: null }]);
  assert.deepEqual(w.containers.map((c) => c.id).sort(), ["genuine", "newline"]);
  assert.deepEqual(w.containers.find((c) => c.id === "newline")?.pod, {
    namespace: "ns",
    name: "one\ntwo",
    container: null,
  });
  // A root that others may write is not read at all.
  chmodSync(root, 0o757);
  assert.deepEqual(Workloads.load([{ dir: root, engine: null }]).containers, []);
});

test("a process in a cgroup named like a systemd unit belongs to that unit; under user@UID.service, a user's", async (t) => {
  if (!needs(t, { root: true })) return;
  const cg = TestCgroup.create(t);
  const service = cg.child("nginx.service");
  const user = cg
    .child("user.slice")
    .child("user-1000.slice")
    .child("user@1000.service")
    .child("app.slice")
    .child("backup.service");
  const a = service.spawn(["sleep", "600"]);
  const b = user.spawn(["sleep", "600"]);
  try {
    await until(
      "both in their cgroups",
      () => service.pids().includes(a.pid as number) && user.pids().includes(b.pid as number),
    );
    const w = Workloads.load();
    const nginx: Workload = { container: null, unit: "nginx.service", unitUid: null };
    const backup: Workload = { container: null, unit: "backup.service", unitUid: 1000 };
    assert.deepEqual(w.ofPid(a.pid as number), nginx);
    assert.deepEqual(w.ofPid(b.pid as number), backup);
    // By id: no container has these cgroups, so the path comes from the kernel (open_by_handle_at).
    assert.deepEqual(w.ofCgroup(statSync(service.dir).ino), nginx);
    assert.deepEqual(w.ofCgroup(statSync(user.dir).ino), backup);
    assert.equal(w.ofCgroup(statSync(cg.dir).ino), null, "a cgroup in no unit");
  } finally {
    a.kill("SIGKILL");
    b.kill("SIGKILL");
    await Promise.all([finished(a), finished(b)]);
  }
});
