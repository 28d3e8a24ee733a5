/**
 * `tcpka sysctl` changes the keepalive defaults of the network namespace it runs in, and nothing else; --persist
 * writes them as a sysctl.d file. Only namespaces made here are ever changed.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { needs } from "../helpers/env.js";
import { Netns, sysctlPath } from "../helpers/netns.js";

after(() => Netns.destroyAll());

const NAMES = ["net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"];

function hostValues(): string[] {
  return NAMES.map((n) => readFileSync(sysctlPath(n), "utf8").trim());
}

test("sysctl --set changes this namespace's defaults, and --persist writes them to the file given", (t) => {
  if (!needs(t, { root: true, tools: ["ip"] })) return;
  const host = hostValues();
  const ns = Netns.create(t);
  const dir = mkdtempSync(join(tmpdir(), "tcpka-t-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, "keepalive.conf");

  const set = ["--set", "idle=5m", "interval=30s", "count=4"];
  const r = ns.tcpka(["sysctl", ...set, "--persist", "--persist-file", file, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const netns = ns.run(["readlink", "/proc/self/ns/net"]).trim();
  assert.notEqual(netns, readlinkSync("/proc/self/ns/net"));
  assert.deepEqual(JSON.parse(r.stdout), {
    namespace: netns,
    idle_s: 300,
    interval_s: 30,
    count: 4,
    dead_peer_after_s: 300 + 30 * 4,
    before: { idle_s: 7200, interval_s: 75, count: 9 },
    persisted_to: file,
  });

  assert.deepEqual(
    NAMES.map((n) => ns.sysctl(n)),
    ["300", "30", "4"],
  );
  const now = ns.tcpka(["sysctl", "--json"]);
  assert.equal(now.status, 0, now.stderr);
  const { idle_s, interval_s, count } = JSON.parse(now.stdout) as Record<string, unknown>;
  assert.deepEqual([idle_s, interval_s, count], [300, 30, 4]);

  const settings = readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l && !l.startsWith("#"));
  assert.deepEqual(settings, [
    "net.ipv4.tcp_keepalive_time = 300",
    "net.ipv4.tcp_keepalive_intvl = 30",
    "net.ipv4.tcp_keepalive_probes = 4",
  ]);
  assert.deepEqual(hostValues(), host, "the host's values are untouched");
});
