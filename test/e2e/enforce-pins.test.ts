/**
 * What is pinned under /sys/fs/bpf/tcpka, and what `tcpka enforce --list` says about it, against the real kernel:
 * "/" and "/root" have pins of their own (two test cgroups are "/" and "/root" seen from a cgroup namespace);
 * --list shows settings only while the pinned link runs the program they describe, and says when it does not
 * (another tool swapped the program, or a run stopped between its steps); pins of the earlier naming scheme
 * are listed, updated and removed by the cgroup in their description; a cgroup whose pin name would be too long
 * for a file name is refused with what to do instead.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, constants, existsSync, mkdirSync, openSync, rmSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { assemble, Mov, R0, Return } from "../../src/bpf/asm.js";
import { BPF_CGROUP_SOCK_OPS, BPF_PROG_TYPE_SOCK_OPS } from "../../src/kernel/constants.js";
import { blobMapCreate, blobMapWrite, linkCreate, linkUpdate, objGet, objPin, progLoad } from "../../src/sys/bpf.js";
import { TestCgroup } from "../helpers/cgroup.js";
import {
  Agent,
  afterEnforceTests,
  assertNoPinsLeft,
  connectPair,
  enforce,
  enforcedOn,
  guard,
  ka,
  type Listed,
  listJson,
  ourPins,
  PIN_ROOT,
  remove,
  KA_UNTOUCHED as UNTOUCHED,
  KA_WANT as WANT,
} from "../helpers/enforce.js";
import { needs } from "../helpers/env.js";
import { WANT_FLAGS } from "../helpers/keepalive.js";
import { Netns } from "../helpers/netns.js";
import { TCPKA } from "../helpers/paths.js";
import type { Result } from "../helpers/processes.js";
import { assertOneLineError, tcpkaHere as tcpka } from "../helpers/tcpka.js";

afterEnforceTests();

const NEEDS = { root: true, tools: ["ip", "python3"] };

/** A sock_ops program that does nothing: what another tool might put behind tcpka's link. */
function idleProgram(): number {
  return progLoad({
    type: BPF_PROG_TYPE_SOCK_OPS,
    insns: assemble([Mov.Imm(R0, 1), Return()]),
    license: "GPL",
    name: "tcpka_t_idle",
  });
}

test("--list shows the settings only while the link runs the program they describe", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const cg = TestCgroup.create(t);
  const agent = await Agent.start(t, ns, cg);
  const outsider = await Agent.start(t, ns);
  const l = await outsider.listen("127.0.0.1");
  const connect = async () => ka((await connectPair(agent, outsider, l, "127.0.0.1"))[0].opts);

  enforce(cg, WANT_FLAGS);
  const e = enforcedOn(cg);
  assert.ok(e?.settings_known && e.idle_s === 7, JSON.stringify(e));
  assert.deepEqual(await connect(), WANT);

  // Another tool swaps the program behind tcpka's link; a run of tcpka that stops between updating the link and
  // its description leaves the same.
  const prog = idleProgram();
  const link = objGet(join(PIN_ROOT, e.name, "link"));
  try {
    linkUpdate(link, prog);
  } finally {
    closeSync(link);
    closeSync(prog);
  }
  assert.deepEqual(await connect(), UNTOUCHED, "the program that runs now sets nothing");
  const swapped = enforcedOn(cg);
  assert.ok(swapped, "still listed: something is pinned");
  assert.equal(swapped.settings_known, false, JSON.stringify(swapped));
  assert.equal(swapped.idle_s, undefined, "no settings claimed");
  assert.match(swapped.unknown_reason ?? "", /^the link runs BPF program \d+, not the described \d+$/);
  const table = tcpka(["enforce", "--list"]);
  assert.equal(table.status, 0, table.stderr);
  const row = table.stdout.split("\n").find((r) => r.startsWith(`${cg.path} `));
  assert.ok(row, table.stdout);
  assert.match(row, /unknown: the link runs BPF program \d+, not the described \d+ +\? +\? +\d+ +- +\?$/);
  assert.doesNotMatch(row, /7s \/ 3s \/ 4/);

  // Enforcing again puts a known program back.
  assert.match(enforce(cg, WANT_FLAGS), /^replaced the settings/);
  assert.equal(enforcedOn(cg)?.settings_known, true);
  assert.deepEqual(await connect(), WANT);

  // A run that stopped after pinning the link, before its description: the cgroup still comes from the name.
  unlinkSync(join(PIN_ROOT, e.name, "meta"));
  const bare = enforcedOn(cg);
  assert.ok(bare, "listed by the cgroup that its pin name stands for");
  assert.deepEqual(
    { settings_known: bare.settings_known, reason: bare.unknown_reason, cgroup_exists: bare.cgroup_exists },
    { settings_known: false, reason: "no description is pinned with the link", cgroup_exists: true },
  );
  assert.deepEqual(await connect(), WANT, "the link still works");
  remove(cg);
  assertNoPinsLeft();
});

/** Pin an enforcement as tcpka did before its pin names began with ':' (and before it recorded its program). */
function legacyPin(cg: TestCgroup, name: string): void {
  const meta = {
    name,
    cgroup: cg.path,
    mode: "strengthen",
    idle_s: 60,
    interval_s: 10,
    count: 6,
    only: [],
    except: [],
    since: new Date().toISOString(),
  };
  mkdirSync(join(PIN_ROOT, name), { recursive: true });
  const prog = idleProgram();
  const dir = openSync(cg.dir, constants.O_RDONLY | constants.O_DIRECTORY);
  const link = linkCreate(prog, dir, BPF_CGROUP_SOCK_OPS);
  const map = blobMapCreate("tcpka_meta", 4096);
  try {
    const value = Buffer.alloc(4096);
    Buffer.from(JSON.stringify(meta)).copy(value);
    blobMapWrite(map, value);
    objPin(map, join(PIN_ROOT, name, "meta"));
    objPin(link, join(PIN_ROOT, name, "link"));
  } finally {
    for (const fd of [map, link, dir, prog]) closeSync(fd);
  }
}

test("pins of the earlier naming scheme are listed, updated and removed by the cgroup they describe", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const x = TestCgroup.create(t);
  const svc = x.child("app.service");
  guard(x);
  guard(svc);
  const [oldX, oldSvc] = [x.path.slice(1), `${x.path.slice(1)}:app%2Eservice`]; // as tcpka named them
  legacyPin(x, oldX);
  legacyPin(svc, oldSvc);

  const listed = listJson().filter((e) => e.cgroup === x.path || e.cgroup === svc.path);
  assert.deepEqual(
    listed.map((e) => [e.name, e.cgroup, e.cgroup_exists, e.settings_known, e.unknown_reason]),
    [oldX, oldSvc].map((name, i) => [
      name,
      [x, svc][i]?.path,
      true,
      false,
      "pinned by an earlier tcpka, which did not record its program",
    ]),
    "listed under their old names, by the cgroup in their description; what runs is not known",
  );

  const out = enforce(svc, WANT_FLAGS);
  assert.match(out, /^replaced the settings on new connections/, out);
  assert.match(out, new RegExp(`pinned at ${PIN_ROOT}/${oldSvc.replaceAll(".", "\\.")};`), "updated where it is");
  assert.deepEqual(ourPins().sort(), [oldSvc, oldX].sort(), "no second pin for the same cgroup");
  const e = enforcedOn(svc);
  assert.ok(e?.settings_known && e.idle_s === 7 && e.name === oldSvc, JSON.stringify(e));
  const agent = await Agent.start(t, ns, svc);
  const l = await agent.listen("127.0.0.1");
  const [c] = await connectPair(agent, agent, l, "127.0.0.1");
  assert.deepEqual(ka(c.opts), WANT);

  remove(x);
  assert.ok(!existsSync(join(PIN_ROOT, oldX)), "the old pin of the parent is gone");
  assert.ok(enforcedOn(svc), "the child's stays");
  remove(svc);
  assertNoPinsLeft();
});

/**
 * tcpka in a cgroup namespace whose root is `root`, with cgroup2 mounted from there (a mount namespace of its
 * own): `root` is "/" for it, and its child "root" is "/root". /sys/fs/bpf and /run/tcpka are the host's.
 */
function tcpkaIn(root: TestCgroup, args: readonly string[]): Result {
  const argv = [
    "sh",
    "-c",
    'echo $$ > "$0/cgroup.procs" && exec "$@"',
    root.dir,
    ...["unshare", "--cgroup", "--mount", "--propagation", "private"],
    // the same file system on the same mount point is refused (EBUSY, do_add_mount): unmount the host's view first
    ...["sh", "-c", 'umount "$0" && mount -t cgroup2 none "$0" && exec "$@"', root.mount],
    process.execPath,
    TCPKA,
    ...args,
  ];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8", timeout: 60_000, killSignal: "SIGKILL" });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("/ and /root have pins of their own (two test cgroups, seen from a cgroup namespace)", async (t) => {
  if (!needs(t, { ...NEEDS, tools: [...NEEDS.tools, "unshare"] })) return;
  // Their names under the earlier scheme ("root" for both) and under this one.
  const names = ["root", ":", ":root"];
  const taken = names.filter((n) => existsSync(join(PIN_ROOT, n)));
  if (taken.length) {
    t.skip(
      `something is enforced on / or /root here (${taken.join(", ")} in ${PIN_ROOT}): this test would use those pins`,
    );
    return;
  }
  const ns = Netns.create(t);
  const top = TestCgroup.create(t);
  const sub = top.child("root");
  top.onDestroy(() => {
    for (const path of ["/root", "/"]) tcpkaIn(top, ["enforce", "--remove", "--cgroup", path]);
    const left = names.filter((n) => existsSync(join(PIN_ROOT, n)));
    for (const n of left) rmSync(join(PIN_ROOT, n), { recursive: true, force: true });
    if (left.length) throw new Error(`cleanup: ${left.join(", ")} were left in ${PIN_ROOT}`);
  });

  const top1 = await Agent.start(t, ns, top);
  const sub1 = await Agent.start(t, ns, sub);
  const outsider = await Agent.start(t, ns);
  const l = await outsider.listen("127.0.0.1");
  const inTop = async () => ka((await connectPair(top1, outsider, l, "127.0.0.1"))[0].opts);
  const inSub = async () => ka((await connectPair(sub1, outsider, l, "127.0.0.1"))[0].opts);
  const ofTop = { ...WANT, idle: 30, interval: 10, count: 6 };

  const a = tcpkaIn(top, ["enforce", "--cgroup", "/", "--idle", "30s", "--interval", "10s", "--count", "6"]);
  assert.equal(a.status, 0, a.stderr);
  assert.match(a.stdout, /^enforcing keepalive on new connections in cgroup \/: 30s \/ 10s \/ 6/);
  const b = tcpkaIn(top, ["enforce", "--cgroup", "/root", ...WANT_FLAGS]);
  assert.equal(b.status, 0, b.stderr);
  assert.match(b.stdout, /^enforcing keepalive on new connections in cgroup \/root: 7s/, "not a replacement of /'s");
  assert.deepEqual(await inTop(), ofTop, "/ (the namespace's root) keeps its settings");
  assert.deepEqual(await inSub(), WANT, "/root has its own (stronger: strengthen keeps them)");
  const inside = tcpkaIn(top, ["enforce", "--list", "--json"]);
  assert.equal(inside.status, 0, inside.stderr);
  const listed = (JSON.parse(inside.stdout) as Listed[]).filter((e) => e.name === ":" || e.name === ":root");
  assert.deepEqual(
    listed.map((e) => [e.name, e.cgroup, e.idle_s, e.settings_known, e.cgroup_exists]),
    [
      [":", "/", 30, true, true],
      [":root", "/root", 7, true, true],
    ],
  );

  // Seen from the host, that "/" is another cgroup than its own root: --list says so, and --remove refuses it.
  const host = listJson().find((e) => e.name === ":");
  assert.equal(host?.cgroup_exists, false, `the host's / is not enforced on: ${JSON.stringify(host)}`);
  assertOneLineError(tcpka(["enforce", "--remove", "--cgroup", "/"]), 1, /belongs to another cgroup with the path \//);
  assert.deepEqual(await inTop(), ofTop, "and it is still in force");

  const r = tcpkaIn(top, ["enforce", "--remove", "--cgroup", "/"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await inTop(), UNTOUCHED, "/ removed");
  assert.deepEqual(await inSub(), WANT, "removing / left /root's enforcement");
  assert.deepEqual(
    names.filter((n) => existsSync(join(PIN_ROOT, n))),
    [":root"],
  );
  const r2 = tcpkaIn(top, ["enforce", "--remove", "--cgroup", "/root"]);
  assert.equal(r2.status, 0, r2.stderr);
  assert.deepEqual(await inSub(), UNTOUCHED);
  assert.deepEqual(
    names.filter((n) => existsSync(join(PIN_ROOT, n))),
    [],
  );
});

test("a cgroup whose pin name would be longer than a file name can be is refused, with what to do", (t) => {
  if (!needs(t, NEEDS)) return;
  const cg = TestCgroup.create(t);
  const deep = cg.child(`${"a.".repeat(100)}b`); // 201 bytes; each dot takes 3 in the pin name
  guard(deep);
  const r = tcpka(["enforce", "--cgroup", deep.path, ...WANT_FLAGS]);
  assertOneLineError(r, 1, /^tcpka: cannot enforce on \/\S+: its pin name would be 4\d\d bytes long, and a file name/);
  assert.match(r.stderr, /\nhint: enforce on a cgroup above it/);
  assert.equal(enforcedOn(deep), undefined);
  assertNoPinsLeft();
});
