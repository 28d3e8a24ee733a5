/**
 * `tcpka ls --all-netns` on the whole host, with real podman containers (runc, cgroupfs), each with its own
 * network namespace and its own keepalive sysctls: every socket of every container is listed once, with what
 * getsockopt inside the container says of it, its namespace, its container and its pod; on both paths (the kernel
 * pass and sock_diag + getsockopt). --container and --pod select exactly one container's sockets.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { busyboxImage, type KindSocket, needsPodman, startKinds, type TestContainer } from "../helpers/podman.js";
import { tcpkaHere as tcpka } from "../helpers/tcpka.js";

/** The fields of a `tcpka ls --json` row that these tests read. */
interface Row {
  state: string;
  local_address: string;
  local_port: number;
  peer_address: string;
  peer_port: number;
  keepalive: boolean | null;
  source: string;
  idle_s: number | null;
  interval_s: number | null;
  count: number | null;
  user_timeout_ms: number | null;
  netns: number | null;
  container: { runtime: string; engine: string | null; id: string; short_id: string; name: string | null } | null;
  pod: { namespace: string; name: string; container: string | null } | null;
  unit: string | null;
  processes: { pid: number; fd: number }[];
}

const POD = { namespace: "shop", name: "cart-7d4f9", container: "redis" };
const CRI = {
  "io.kubernetes.cri.sandbox-namespace": POD.namespace,
  "io.kubernetes.cri.sandbox-name": POD.name,
  "io.kubernetes.cri.container-name": POD.container,
  "io.kubernetes.cri.container-type": "container",
};

function rows(args: readonly string[]): Row[] {
  const r = tcpka(["ls", ...args, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  return (JSON.parse(r.stdout) as { connections: Row[] }).connections;
}

const endpoint = (address: string, port: number) => `${address}:${port}`;

/** Every socket that ka_kinds reports in container `c` is one row, exactly as its getsockopt says. */
function checkContainer(all: readonly Row[], c: TestContainer, sockets: readonly KindSocket[], pod: typeof POD | null) {
  const mine = all.filter((r) => r.netns === c.netns);
  assert.equal(mine.length, sockets.length, `${c.name}: one row per socket of the container`);
  for (const s of sockets) {
    const listening = s.peer.endsWith(":0");
    const row = mine.find(
      (r) =>
        endpoint(r.local_address, r.local_port) === s.local &&
        (listening ? r.state === "LISTEN" : endpoint(r.peer_address, r.peer_port) === s.peer),
    );
    assert.ok(row, `${c.name}: ${s.role} (${s.local} ${s.peer}) is listed`);
    assert.deepEqual(
      {
        source: row.source,
        keepalive: row.keepalive,
        idle: row.idle_s,
        interval: row.interval_s,
        count: row.count,
        userTimeout: row.user_timeout_ms,
        processes: row.processes.map((p) => [p.pid, p.fd]),
        container: row.container,
        pod: row.pod,
      },
      {
        source: "exact",
        keepalive: s.keepalive === 1,
        idle: s.idle,
        interval: s.interval,
        count: s.count,
        userTimeout: s.user_timeout,
        processes: [[c.pid, s.fd]],
        container: { runtime: "runc", engine: "podman", id: c.id, short_id: c.id.slice(0, 12), name: c.name },
        pod,
      },
      `${c.name}: ${s.role}`,
    );
  }
}

test("ls --all-netns lists every container's sockets as getsockopt inside reads them, with container and pod", async (t) => {
  if (!needsPodman(t)) return;
  const image = busyboxImage(t);
  // Each namespace has its own defaults: a socket that set no value of its own shows its container's.
  const k8s = await startKinds(t, image, {
    annotations: CRI,
    sysctls: { "net.ipv4.tcp_keepalive_time": 1234, "net.ipv4.tcp_keepalive_intvl": 56 },
  });
  const plain = await startKinds(t, image, { sysctls: { "net.ipv4.tcp_keepalive_time": 2222 } });
  assert.notEqual(k8s.container.netns, plain.container.netns);

  for (const via of ["bpf", "netlink"]) {
    const all = rows(["--all-netns", "-a", "--via", via]);
    checkContainer(all, k8s.container, k8s.sockets, POD);
    checkContainer(all, plain.container, plain.sockets, null);
    // The socket that set nothing itself: its own namespace's sysctls, not the host's.
    const off = k8s.sockets.find((s) => s.role === "off");
    assert.deepEqual([off?.idle, off?.interval], [1234, 56], "ka_kinds reads its container's sysctls");
  }

  // Without --all-netns, only tcpka's own namespace: none of the containers' sockets.
  const own = rows(["-a"]);
  assert.ok(!own.some((r) => r.netns === k8s.container.netns || r.netns === plain.container.netns));

  // --container (name, short id, 4 leading characters) and --pod select one container's sockets, wherever.
  const only = (args: string[]) => new Set(rows(["-a", ...args]).map((r) => r.netns));
  assert.deepEqual(only(["--container", plain.container.name]), new Set([plain.container.netns]));
  assert.deepEqual(only(["--container", k8s.container.id.slice(0, 12)]), new Set([k8s.container.netns]));
  assert.deepEqual(only(["--container", plain.container.id.slice(0, 4)]), new Set([plain.container.netns]));
  assert.deepEqual(only(["--pod", `${POD.namespace}/${POD.name}`]), new Set([k8s.container.netns]));
  assert.equal(rows(["-a", "--pod", "shop/no-such-pod"]).length, 0);
  const bad = tcpka(["ls", "--pod", "cart-7d4f9"]);
  assert.equal(bad.status, 2, bad.stderr);
  assert.match(bad.stderr, /^tcpka: --pod cart-7d4f9: use NAMESPACE\/NAME/);

  // The table says where each row is.
  const table = tcpka(["ls", "--all-netns", "-a"]);
  assert.equal(table.status, 0, table.stderr);
  const header = table.stdout.split("\n")[0]?.split(/ {2,}/);
  assert.deepEqual(header?.slice(-2), ["WHERE", "PROCESS"]);
  const where = (c: TestContainer) =>
    table.stdout
      .split("\n")
      .filter((l) => l.includes(`[${c.pid}] fd `))
      .map((l) => l.split(/ {2,}/).at(-2));
  assert.deepEqual(new Set(where(k8s.container)), new Set([`pod ${POD.namespace}/${POD.name} (${POD.container})`]));
  assert.deepEqual(
    new Set(where(plain.container)),
    new Set([`runc ${plain.container.id.slice(0, 12)} ${plain.container.name}`]),
  );

  // The summary of the whole host groups the connections without keepalive by container or pod.
  const summary = tcpka(["--all-netns"]);
  assert.equal(summary.status, 0, summary.stderr);
  const groups = summary.stdout.split("Without keepalive, by container or pod:\n")[1]?.split("\n\n")[0] ?? "";
  const off = (sockets: readonly KindSocket[]) => sockets.filter((s) => !s.peer.endsWith(":0") && s.keepalive === 0);
  const group = (label: string) =>
    groups
      .split("\n")
      .find((l) => l.startsWith(`  ${label}  `))
      ?.split(/ {2,}/)[2];
  assert.equal(group(`pod ${POD.namespace}/${POD.name} (${POD.container})`), String(off(k8s.sockets).length), groups);
  assert.equal(
    group(`runc ${plain.container.id.slice(0, 12)} ${plain.container.name}`),
    String(off(plain.sockets).length),
  );
});
