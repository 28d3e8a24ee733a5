/**
 * The parts of workloads.ts that are pure: a systemd unit from a cgroup path (paths as systemd lays them out:
 * system services, session scopes, a user's units under user@UID.service, containers' scopes, kubepods), a pod,
 * an image and labels from containerd's and CRI-O's annotations, the few fields read from a runtime's JSON without
 * parsing all of it, and lookups in a bbolt file (podman's database) as bbolt lays it out and as nobody should.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { boltGet } from "../../src/inspect/boltdb.js";
import { criImageAndLabels, jsonMember, kubepodsOf, podOf, unitOfCgroup } from "../../src/inspect/workloads.js";
import {
  BoltFile,
  branchPage,
  bucketHeader,
  fnv1a64,
  inlineBucket,
  kv,
  leafPage,
  PAGE,
  reader,
  sub,
  writeMeta,
} from "../helpers/bolt.js";

test("the unit of a cgroup is its last service or scope; a user's units are under user@UID.service", () => {
  const cases: [string, ReturnType<typeof unitOfCgroup>][] = [
    ["/system.slice/nginx.service", { unit: "nginx.service", uid: null }],
    ["/system.slice/system-getty.slice/getty@tty1.service", { unit: "getty@tty1.service", uid: null }],
    ["/system.slice/docker.service/payload", { unit: "docker.service", uid: null }], // a service's own sub-cgroup
    ["/init.scope", { unit: "init.scope", uid: null }],
    ["/user.slice/user-1000.slice/session-3.scope", { unit: "session-3.scope", uid: null }],
    ["/user.slice/user-1000.slice/user@1000.service", { unit: "user@1000.service", uid: null }],
    ["/user.slice/user-1000.slice/user@1000.service/init.scope", { unit: "init.scope", uid: 1000 }],
    [
      "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-2261.scope",
      { unit: "app-gnome-firefox-2261.scope", uid: 1000 },
    ],
    [
      "/user.slice/user-1000.slice/user@1000.service/app.slice/podman-4321.scope/container/x.service",
      { unit: "x.service", uid: 1000 },
    ],
    ["/machine.slice/libpod-0123456789ab.scope/container", { unit: "libpod-0123456789ab.scope", uid: null }],
    [
      "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f2c.slice/cri-containerd-4b1d.scope",
      { unit: "cri-containerd-4b1d.scope", uid: null },
    ],
    ["/system.slice/_cpu.service", { unit: "cpu.service", uid: null }], // cg_escape: a name that is a controller's
    ["/libpod_parent/libpod-0123456789ab", null],
    ["/", null],
    ["/system.slice", null],
    ["/a/evil\n.service", null], // not a unit name
    ["/a/.service", null],
    [`/a/${"x".repeat(248)}.service`, null], // longer than a unit name may be
  ];
  for (const [path, want] of cases) assert.deepEqual(unitOfCgroup(path), want, JSON.stringify(path));
});

test("a pod from containerd's or CRI-O's annotations; a sandbox has no container name", () => {
  const pod = (a: Record<string, string>) => podOf(new Map(Object.entries(a)));
  assert.deepEqual(
    pod({
      "io.kubernetes.cri.sandbox-namespace": "shop",
      "io.kubernetes.cri.sandbox-name": "cart-1",
      "io.kubernetes.cri.container-name": "redis",
      "io.kubernetes.cri.container-type": "container",
    }),
    { pod: { namespace: "shop", name: "cart-1", container: "redis" }, sandbox: false },
  );
  assert.deepEqual(
    pod({
      "io.kubernetes.cri.sandbox-namespace": "shop",
      "io.kubernetes.cri.sandbox-name": "cart-1",
      "io.kubernetes.cri.container-type": "sandbox",
    }),
    { pod: { namespace: "shop", name: "cart-1", container: null }, sandbox: true },
  );
  assert.deepEqual(
    pod({
      "io.kubernetes.pod.namespace": "billing",
      "io.kubernetes.pod.name": "invoice-0",
      "io.kubernetes.container.name": "worker",
      "io.kubernetes.cri-o.ContainerType": "container",
    }),
    { pod: { namespace: "billing", name: "invoice-0", container: "worker" }, sandbox: false },
  );
  assert.deepEqual(
    pod({
      "io.kubernetes.pod.namespace": "billing",
      "io.kubernetes.pod.name": "invoice-0",
      "io.kubernetes.container.name": "POD",
      "io.kubernetes.cri-o.ContainerType": "sandbox",
    }),
    { pod: { namespace: "billing", name: "invoice-0", container: null }, sandbox: true },
  );
  // Half a pod is none; nor is podman's own annotation set.
  assert.deepEqual(pod({ "io.kubernetes.cri.sandbox-name": "x" }), { pod: null, sandbox: false });
  assert.deepEqual(pod({ "io.container.manager": "libpod", "io.podman.annotations.init": "FALSE" }), {
    pod: null,
    sandbox: false,
  });
});

test("a member of runtime JSON is found only where it is one, compact or indented", () => {
  const m = (text: string, key: string, open: "[" | "{" | "0") => jsonMember(Buffer.from(text), key, open);
  // As runc writes it (Go's encoding/json, compact), and as crun does (JSON_INDENT(2)).
  const runc = '{"id":"ab","init_process_pid":4242,"config":{"labels":["a=b","bundle=/x"],"namespaces":[]}}';
  assert.equal(m(runc, "init_process_pid", "0"), 4242);
  assert.deepEqual(m(runc, "labels", "["), ["a=b", "bundle=/x"]);
  assert.deepEqual(m('{\n  "pid": 7,\n  "annotations" :\t{ "k": "v" }\n}', "annotations", "{"), { k: "v" });
  assert.equal(m('{\n  "pid": -1\n}', "pid", "0"), -1);
  // Inside a string, escaped: no member at all.
  assert.equal(m('{"x":"\\"labels\\":[\\"forged\\"]"}', "labels", "["), undefined);
  // A key that only ends in the name ("x\"labels"), then the real one.
  assert.deepEqual(m('{"x\\"labels":["forged"],"labels":["real"]}', "labels", "["), ["real"]);
  // An escaped backslash before a quote: the quote is real, and ends the string.
  assert.deepEqual(m('{"labels":["a\\\\","b"],"z":["c"]}', "labels", "["), ["a\\", "b"]);
  // A map key with a string value (an annotation named like a field) is not the field.
  assert.equal(m('{"sysctl":{"init_process_pid":"1"},"init_process_pid":9}', "init_process_pid", "0"), 9);
  // Brackets and quotes inside the value's strings do not end it; multi-byte UTF-8 survives.
  assert.deepEqual(m('{"labels":["a]}\\"[{","☃\\u202e"],"z":1}', "labels", "["), ['a]}"[{', "☃\u202e"]);
  // Garbage: never a throw.
  for (const bad of ['{"labels":["unterminated', '{"labels":[1,}', '{"labels"', '{"init_process_pid":1e999x}', ""]) {
    assert.doesNotThrow(() => m(bad, "labels", "["));
    assert.doesNotThrow(() => m(bad, "init_process_pid", "0"));
  }
  assert.equal(m('{"labels":["unterminated', "labels", "["), undefined);
});

test("an image and labels from containerd's or CRI-O's annotations, exactly; garbage is no label", () => {
  const of = (a: Record<string, string>) => {
    const r = criImageAndLabels(new Map(Object.entries(a)));
    return { image: r.image, labels: Object.fromEntries(r.labels) };
  };
  assert.deepEqual(of({ "io.kubernetes.cri.image-name": "docker.io/library/redis:7" }), {
    image: "docker.io/library/redis:7",
    labels: {},
  });
  const crio = {
    "io.kubernetes.cri-o.ImageName": "quay.io/app/api@sha256:0f",
    "io.kubernetes.cri-o.Labels": JSON.stringify({
      "io.kubernetes.pod.namespace": "billing",
      tier: "db",
      hostile: "a\x1b[2J\n\u202e",
      "": "",
    }),
  };
  assert.deepEqual(of(crio), {
    image: "quay.io/app/api@sha256:0f",
    labels: { "io.kubernetes.pod.namespace": "billing", tier: "db", hostile: "a\x1b[2J\n\u202e", "": "" },
  });
  // CRI-O writes "" for an image given by id: no name, not a name "".
  assert.equal(of({ "io.kubernetes.cri-o.ImageName": "" }).image, null);
  assert.deepEqual(of({}), { image: null, labels: {} });
  for (const bad of [
    "",
    "{",
    "[]",
    '"x"',
    "null",
    '{"a":1,"b":["c"],"d":{"e":"f"}}',
    `{"a":"${"x".repeat(2 << 20)}"}`,
  ]) {
    assert.deepEqual(of({ "io.kubernetes.cri-o.Labels": bad }).labels, {}, bad.slice(0, 40));
  }
  assert.deepEqual(of({ "io.kubernetes.cri-o.Labels": '{"a":1,"b":"ok"}' }).labels, { b: "ok" }, "strings only");
});

/** podman's layout: the root bucket, "all-ctrs" (id → name, inline), "ctr" (a bucket per id, key "config"). */
function podmanLike(configs: Record<string, string>, opts: { inline?: string; split?: number } = {}) {
  const db = new BoltFile();
  const ctrs = Object.entries(configs).map(([id, config]) => {
    const entries = [kv("config", config), kv("state", '{"state":3}'), sub("dependencies", inlineBucket([]))];
    return sub(id, id === opts.inline ? inlineBucket(entries) : db.bucket(entries));
  });
  const ctr = opts.split ? db.splitBucket(ctrs, opts.split) : db.bucket(ctrs);
  const all = inlineBucket(Object.keys(configs).map((id) => kv(id, `name-${id}`)));
  const root = db.put(leafPage([sub("ctr", ctr), sub("all-ctrs", all), kv("namespace", "")]));
  return { db, root };
}

test("bbolt: values in nested buckets, on pages of their own, inline, and across overflow pages", () => {
  const big = JSON.stringify({ labels: { tier: "db" }, pad: "x".repeat(3 * PAGE) });
  const { db, root } = podmanLike({ aaa: big, bbb: '{"labels":{}}', ccc: '{"id":"ccc"}' }, { inline: "bbb" });
  const file = db.file(root);
  const r = reader(file);
  const got = boltGet(r.readAt, [
    ["ctr", "aaa", "config"],
    ["ctr", "bbb", "config"],
    ["ctr", "ccc", "config"],
    ["ctr", "ddd", "config"],
    ["all-ctrs", "ccc"],
    ["ctr", "aaa"], // a bucket, not a value
    ["ctr", "aaa", "config", "x"], // a value, not a bucket
    ["namespace"],
    ["ctr", "bbb", "dependencies", "x"],
    [],
  ]);
  assert.deepEqual(
    got.map((v) => v?.toString()),
    [big, '{"labels":{}}', '{"id":"ccc"}', undefined, "name-ccc", undefined, undefined, "", undefined, undefined],
  );
  // Only the pages on the way, each once, and the meta pages before and after.
  assert.ok(r.calls() <= 4 + 6, `${r.calls()} reads`);
});

test("bbolt: a bucket split across branch pages; keys before, between and after the leaves", () => {
  const configs = Object.fromEntries(
    Array.from({ length: 60 }, (_, i) => [`id${String(i * 2).padStart(3, "0")}`, `c${i}`]),
  );
  const { db, root } = podmanLike(configs, { split: 7 });
  const r = reader(db.file(root));
  const ids = Object.keys(configs);
  const missing = ["id", "id001", "id059", "id999", "zz"];
  const got = boltGet(
    r.readAt,
    [...ids, ...missing].map((id) => ["ctr", id, "config"]),
  );
  assert.deepEqual(
    got.map((v) => v?.toString()),
    [...Object.values(configs), ...missing.map(() => undefined)],
  );
});

test("bbolt: the newer valid meta page is the database; torn ones are not", () => {
  const db = new BoltFile();
  const old = db.put(leafPage([kv("k", "old")]));
  const now = db.put(leafPage([kv("k", "new")]));
  const file = db.file(now);
  writeMeta(file, 0, { root: old, txid: 6, pgid: 5 });
  writeMeta(file, 1, { root: now, txid: 7, pgid: 5 });
  const get = (f: Buffer) => boltGet(reader(f).readAt, [["k"]])[0]?.toString();
  assert.equal(get(file), "new");
  // The same with the pages swapped: the txid decides, not the place.
  const swapped = Buffer.from(file);
  writeMeta(swapped, 0, { root: now, txid: 9, pgid: 5 });
  writeMeta(swapped, 1, { root: old, txid: 8, pgid: 5 });
  assert.equal(get(swapped), "new");
  // A torn write of the newer one (its checksum no longer holds): the older one.
  const torn = Buffer.from(file);
  torn[PAGE + 16 + 50] = 0xff;
  assert.equal(get(torn), "old");
  const bothTorn = Buffer.from(torn);
  bothTorn[16 + 50] = 0xff;
  assert.equal(get(bothTorn), undefined);
  // Right checksum, wrong magic or version: not a bbolt file of this format.
  for (const [at, v] of [
    [16, 0xdeadbeef],
    [20, 3],
  ] as const) {
    const f = Buffer.from(file);
    for (const p of [0, PAGE]) {
      f.writeUInt32LE(v, p + at);
      f.writeBigUInt64LE(fnv1a64(f.subarray(p + 16, p + 72)), p + 72);
    }
    assert.equal(get(f), undefined);
  }
  assert.equal(fnv1a64(Buffer.from("a")), 0xaf63dc4c8601ec8cn, "FNV-1a 64's own test vector");
});

test("bbolt: hostile files end in undefined, never a throw, a hang or a big read", () => {
  const { db, root } = podmanLike({ aaa: '{"labels":{"a":"b"}}' });
  const good = db.file(root);
  const path = [["ctr", "aaa", "config"]];
  const get = (f: Buffer) => boltGet(reader(f).readAt, path)[0]?.toString();
  assert.equal(get(good), '{"labels":{"a":"b"}}', "the control");
  const cases: [string, (f: Buffer) => void][] = [
    ["a root page that names another page", (f) => f.writeBigUInt64LE(99n, root * PAGE)],
    ["a root page that is a meta page", (f) => f.writeUInt16LE(0x04, root * PAGE + 8)],
    // Element 0 is all-ctrs, 1 is ctr.
    ["a key past the end of its page", (f) => f.writeUInt32LE(1 << 30, root * PAGE + 16 + 4)],
    ["ctr's value past the end of its page", (f) => f.writeUInt32LE(1 << 30, root * PAGE + 32 + 12)],
    ["ctr no longer a bucket", (f) => f.writeUInt32LE(0, root * PAGE + 32)],
    ["more elements than the page holds", (f) => f.writeUInt16LE(0xffff, root * PAGE + 10)],
    ["overflow far past the file", (f) => f.writeUInt32LE(0xffffffff, root * PAGE + 12)],
  ];
  for (const [what, spoil] of cases) {
    const f = Buffer.from(good);
    spoil(f);
    assert.equal(get(f), undefined, what);
  }
  // A page at or past the high-water mark is not this state's.
  const low = Buffer.from(good);
  writeMeta(low, 0, { root, txid: 6, pgid: root });
  writeMeta(low, 1, { root, txid: 7, pgid: root });
  assert.equal(get(low), undefined, "the root above the high-water mark");
  // A branch page that leads to itself, and two that lead to each other.
  const loop = new BoltFile();
  loop.put(branchPage([{ key: "a", pgid: 3 }]), 3);
  loop.put(branchPage([{ key: "a", pgid: 5 }]), 4);
  loop.put(branchPage([{ key: "a", pgid: 4 }]), 5);
  assert.equal(boltGet(reader(loop.file(3)).readAt, [["a"]])[0], undefined);
  assert.equal(boltGet(reader(loop.file(4)).readAt, [["a"]])[0], undefined);
  // An inline bucket too short for its page; a bucket whose root is meta page 0.
  const short = new BoltFile();
  const r1 = short.put(
    leafPage([sub("b", Buffer.concat([bucketHeader(0), Buffer.alloc(4)])), sub("m", bucketHeader(0))]),
  );
  assert.deepEqual(
    boltGet(reader(short.file(r1)).readAt, [
      ["b", "x"],
      ["m", "x"],
    ]),
    [undefined, undefined],
  );
  // Truncated, empty, random: nothing, quietly.
  for (const f of [
    good.subarray(0, root * PAGE + 100),
    good.subarray(0, 50),
    Buffer.alloc(0),
    Buffer.alloc(5 * PAGE, 0xa5),
  ]) {
    assert.doesNotThrow(() => assert.equal(get(f), undefined));
  }
  // Bytes flipped anywhere (a fixed sequence, so that a failure repeats): an answer or none, never a throw.
  let seed = 0x2545f491;
  const random = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  for (let i = 0; i < 400; i++) {
    const f = Buffer.from(good);
    for (let j = 0; j < 4; j++) f[Math.floor(random() * f.length)] = Math.floor(random() * 256);
    assert.doesNotThrow(() => boltGet(reader(f).readAt, [...path, ["all-ctrs", "aaa"], ["ctr"]]));
  }
  // A value too big for the limits, and a file that makes the lookups read more than the budget.
  const big = podmanLike({ aaa: "x".repeat(8 * PAGE) });
  const bigFile = big.db.file(big.root);
  assert.equal(boltGet(reader(bigFile).readAt, path, { maxPage: 4 * PAGE, maxRead: 1 << 20 })[0], undefined);
  assert.equal(boltGet(reader(bigFile).readAt, path, { maxPage: 1 << 20, maxRead: 4 * PAGE })[0], undefined);
  assert.equal(boltGet(reader(bigFile).readAt, path)[0]?.length, 8 * PAGE, "the control");
});

test("bbolt: a commit during the lookups makes them again; a file that never holds still gives nothing", () => {
  const db = new BoltFile();
  const a = db.put(leafPage([kv("k", "before")]));
  const b = db.put(leafPage([kv("k", "after")]));
  const before = db.file(a, { txid: 7 });
  const after = db.file(b, { txid: 8 });
  // The first meta read sees `before`; every read after it, `after` (a writer committed in between).
  let reads = 0;
  const committing = (offset: number, length: number) =>
    Buffer.from((reads++ < 2 ? before : after).subarray(offset, offset + length));
  assert.equal(boltGet(committing, [["k"]])[0]?.toString(), "after");
  // A writer that commits again between every two looks at the meta pages.
  let looks = 0;
  const restless = (offset: number, length: number) => {
    if (offset === 0) looks++;
    return Buffer.from((looks % 2 ? before : after).subarray(offset, offset + length));
  };
  assert.equal(boltGet(restless, [["k"]])[0], undefined);
});

test("a pod's UID, QoS class and cgroup from kubelet's layout, both drivers; the container's id below it", () => {
  const id = "4c1f0e0b8c3a9d2e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7a8b9c0";
  const uid = "0b6c3f2a-7d1e-4a5b-9c8d-1e2f3a4b5c6d";
  const sd = uid.replaceAll("-", "_");
  const cases: [string, ReturnType<typeof kubepodsOf>][] = [
    // systemd driver (containerd, CRI-O), each QoS class; Guaranteed pods right under kubepods.slice
    [
      `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${sd}.slice/cri-containerd-${id}.scope`,
      {
        uid,
        qos: "burstable",
        path: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${sd}.slice`,
        containerId: id,
      },
    ],
    [
      `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${sd}.slice/crio-${id}.scope`,
      {
        uid,
        qos: "besteffort",
        path: `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${sd}.slice`,
        containerId: id,
      },
    ],
    [
      `/kubepods.slice/kubepods-pod${sd}.slice/cri-containerd-${id}.scope`,
      { uid, qos: "guaranteed", path: `/kubepods.slice/kubepods-pod${sd}.slice`, containerId: id },
    ],
    // CRI-O's conmon scope: in the pod, but not a container's own cgroup
    [
      `/kubepods.slice/kubepods-pod${sd}.slice/crio-conmon-${id}.scope`,
      { uid, qos: "guaranteed", path: `/kubepods.slice/kubepods-pod${sd}.slice`, containerId: null },
    ],
    // the pod's own cgroup, before any container
    [
      `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${sd}.slice`,
      {
        uid,
        qos: "burstable",
        path: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${sd}.slice`,
        containerId: null,
      },
    ],
    // below a cgroup root of kubelet's (kind's nodes)
    [
      `/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod${sd}.slice/cri-containerd-${id}.scope`,
      {
        uid,
        qos: "besteffort",
        path: `/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod${sd}.slice`,
        containerId: id,
      },
    ],
    // cgroupfs driver: the runtime names the container's directory by its id (podman: libpod-ID)
    [
      `/kubepods/burstable/pod${uid}/${id}`,
      { uid, qos: "burstable", path: `/kubepods/burstable/pod${uid}`, containerId: id },
    ],
    [`/kubepods/pod${uid}/${id}`, { uid, qos: "guaranteed", path: `/kubepods/pod${uid}`, containerId: id }],
    [`/kubepods/pod${uid}/crio-${id}`, { uid, qos: "guaranteed", path: `/kubepods/pod${uid}`, containerId: id }],
    [
      `/kubepods/pod${uid}/crio-conmon-${id}`,
      { uid, qos: "guaranteed", path: `/kubepods/pod${uid}`, containerId: null },
    ],
    [
      `/kubepods/besteffort/pod${uid}/libpod-${id}`,
      { uid, qos: "besteffort", path: `/kubepods/besteffort/pod${uid}`, containerId: id },
    ],
    [
      `/docker/${id}/kubepods/burstable/pod${uid}/${id}`,
      { uid, qos: "burstable", path: `/docker/${id}/kubepods/burstable/pod${uid}`, containerId: id },
    ],
    // a static pod's UID is 32 hex digits
    [
      "/kubepods/burstable/pod6d3f1a0e9b8c7d6e5f4a3b2c1d0e9f8a",
      {
        uid: "6d3f1a0e9b8c7d6e5f4a3b2c1d0e9f8a",
        qos: "burstable",
        path: "/kubepods/burstable/pod6d3f1a0e9b8c7d6e5f4a3b2c1d0e9f8a",
        containerId: null,
      },
    ],
    // below a container: another cgroup, still the pod's
    [`/kubepods/pod${uid}/${id}/child`, { uid, qos: "guaranteed", path: `/kubepods/pod${uid}`, containerId: id }],
    // not kubelet's shapes
    ["/kubepods", null],
    ["/kubepods/burstable", null],
    ["/kubepods.slice/kubepods-burstable.slice", null],
    [`/kubepods/other/pod${uid}/${id}`, null],
    [`/pods/burstable/pod${uid}/${id}`, null],
    [`/kubepods.slice/kubepods-burstable-pod${sd}.slice/${id}`, null], // its QoS slice missing
    [`/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod${sd}.slice`, null], // another QoS's slice
    ["/kubepods/burstable/podNOT-A-UID/x", null],
    ["/kubepods/burstable/pod", null],
    [`/system.slice/kubepods-pod${sd}.slice`, null],
    ["/system.slice/containerd.service", null],
    ["/", null],
  ];
  for (const [path, want] of cases) assert.deepEqual(kubepodsOf(path), want, path);
});
