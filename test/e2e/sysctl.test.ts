/**
 * `tcpka sysctl` changes the keepalive defaults of the network namespace it runs in, and nothing else; --persist
 * writes them as a sysctl.d file, replaced in one step (a symlink at its name is replaced, not followed), and
 * checks that it can before any value changes. Only namespaces made here are ever changed.
 */
import assert from "node:assert/strict";
import {
  chownSync,
  closeSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, type TestContext, test } from "node:test";
import { needs } from "../helpers/env.js";
import { Netns, sysctlPath } from "../helpers/netns.js";
import { NOBODY } from "../helpers/users.js";

after(() => Netns.destroyAll());

const NAMES = ["net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"];

function hostValues(): string[] {
  return NAMES.map((n) => readFileSync(sysctlPath(n), "utf8").trim());
}

const SET = ["sysctl", "--set", "idle=5m", "interval=30s", "count=4"];
const WRITTEN = [
  "net.ipv4.tcp_keepalive_time = 300",
  "net.ipv4.tcp_keepalive_intvl = 30",
  "net.ipv4.tcp_keepalive_probes = 4",
];

/** The settings in a sysctl.d file, without its comments. */
function settingsIn(file: string): string[] {
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l && !l.startsWith("#"));
}

/** A new directory under the temporary directory, removed when the test ends; owned by `uid` when given. */
function scratch(t: TestContext, uid?: number): string {
  const dir = mkdtempSync(join(tmpdir(), "tcpka-t-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  if (uid !== undefined) chownSync(dir, uid, uid);
  return dir;
}

test("sysctl --set changes this namespace's defaults, and --persist writes them to the file given", (t) => {
  if (!needs(t, { root: true, tools: ["ip"] })) return;
  const host = hostValues();
  const ns = Netns.create(t);
  const file = join(scratch(t), "keepalive.conf");

  const r = ns.tcpka([...SET, "--persist", "--persist-file", file, "--json"]);
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

  assert.deepEqual(settingsIn(file), WRITTEN);
  assert.deepEqual(hostValues(), host, "the host's values are untouched");
});

test("--persist-file in a directory another user controls: the symlink planted there is replaced, not followed", (t) => {
  if (!needs(t, { root: true, tools: ["ip", "setpriv", "ln"] })) return;
  const ns = Netns.create(t);
  const canary = join(scratch(t), "canary");
  writeFileSync(canary, "root's own file\n", { mode: 0o600 });
  const dir = scratch(t, NOBODY.uid); // the attacker's directory
  const file = join(dir, "x.conf");
  ns.run(["ln", "-s", canary, file], { user: NOBODY }); // the attacker's link, to a file only root may write

  const r = ns.tcpka([...SET, "--persist-file", file]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(readFileSync(canary, "utf8"), "root's own file\n", "the symlink's target is untouched");
  assert.ok(lstatSync(file).isFile(), "x.conf is now a regular file");
  assert.deepEqual(settingsIn(file), WRITTEN);
  assert.deepEqual(readdirSync(dir), ["x.conf"], "no temporary file is left");
});

test("--persist-file that cannot be written: one line of error, before any value changes, nothing left", (t) => {
  if (!needs(t, { root: true, tools: ["ip"] })) return;
  const ns = Netns.create(t);
  const dir = scratch(t);
  mkdirSync(join(dir, "sub"));
  writeFileSync(join(dir, "plain"), "");
  const leftovers = (d: string) => readdirSync(d).filter((n) => n.includes(".tcpka-"));
  const cases: [string, RegExp][] = [
    ["/tmp", /^tcpka: cannot write \/tmp: it is a directory$/],
    [join(dir, "sub"), /^tcpka: cannot write \S+\/sub: it is a directory$/],
    [join(dir, "plain", "x.conf"), /^tcpka: cannot write \S+\/plain\/x\.conf: a part of its path is not a directory$/],
    [join(dir, "missing", "x.conf"), /^tcpka: cannot write \S+\/missing\/x\.conf: no such directory$/],
  ];
  for (const [file, message] of cases) {
    const r = ns.tcpka([...SET, "--persist-file", file]);
    assert.deepEqual(
      NAMES.map((n) => ns.sysctl(n)),
      ["7200", "75", "9"],
      `${file}: no value changed; stderr: ${r.stderr}`,
    );
    const lines = r.stderr.trimEnd().split("\n");
    assert.match(lines[0] ?? "", message, r.stderr);
    assert.ok(lines.length === 1 || (lines.length === 2 && lines[1]?.startsWith("hint: ")), r.stderr);
    assert.equal(r.status, 2, `${file}: exit code`);
    assert.equal(r.stdout, "");
  }
  assert.deepEqual(readdirSync(dir).sort(), ["plain", "sub"], "nothing left behind");
  assert.deepEqual(readdirSync(join(dir, "sub")), []);
  assert.deepEqual(leftovers("/"), [], "no temporary file beside /tmp");
});

test("--persist replaces the file in one step: whoever has the old one open never sees it truncated", (t) => {
  if (!needs(t, { root: true, tools: ["ip"] })) return;
  const ns = Netns.create(t);
  const dir = scratch(t);
  const file = join(dir, "keepalive.conf");
  writeFileSync(file, "net.ipv4.tcp_keepalive_time = 7200\n");
  const old = openSync(file, "r");
  t.after(() => closeSync(old));

  const r = ns.tcpka([...SET, "--persist", "--persist-file", file]);
  assert.equal(r.status, 0, r.stderr);
  assert.notEqual(statSync(file).ino, fstatSync(old).ino, "a new file was renamed over the old one");
  assert.equal(readFileSync(old, "utf8"), "net.ipv4.tcp_keepalive_time = 7200\n", "the old file was not rewritten");
  assert.deepEqual(settingsIn(file), WRITTEN);
  assert.equal(statSync(file).mode & 0o777, 0o644);
  assert.deepEqual(readdirSync(dir), ["keepalive.conf"], "no temporary file is left");
});
