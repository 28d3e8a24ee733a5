/**
 * The parts of workloads.ts that are pure: a systemd unit from a cgroup path (paths as systemd lays them out:
 * system services, session scopes, a user's units under user@UID.service, containers' scopes, kubepods), a pod
 * from containerd's and CRI-O's annotations, and the few fields read from a runtime's JSON without parsing all of it.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { jsonMember, podOf, unitOfCgroup } from "../../src/inspect/workloads.js";

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
