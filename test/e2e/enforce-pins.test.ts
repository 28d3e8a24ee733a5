/**
 * What is pinned under /sys/fs/bpf/tcpka, and what `tcpka enforce --list` says about it, against the real kernel:
 * --list shows settings only while the pinned link runs the program they describe, and says when it does not
 * (another tool swapped the program, or a run stopped between its steps).
 */
import assert from "node:assert/strict";
import { closeSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { assemble, Mov, R0, Return } from "../../src/bpf/asm.js";
import { linkUpdate, objGet, progLoad } from "../../src/sys/bpf.js";
import { BPF_PROG_TYPE_SOCK_OPS } from "../../src/sys/constants.js";
import { TestCgroup } from "../helpers/cgroup.js";
import { needs } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import {
  Agent,
  assertNoPinsLeft,
  bpffsRestorer,
  connectPair,
  enforce,
  enforcedOn,
  ka,
  PIN_ROOT,
  remove,
  tcpka,
  UNTOUCHED,
  WANT,
  WANT_FLAGS,
} from "./enforce-helpers.js";

const restoreBpffs = bpffsRestorer();
after(() => {
  Netns.destroyAll();
  assertNoPinsLeft();
  restoreBpffs();
});

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
  assert.match(row, /unknown: the link runs BPF program \d+, not the described \d+ +\? +\?$/);
  assert.doesNotMatch(row, /7s \/ 3s \/ 4/);

  // Enforcing again puts a known program back.
  assert.match(enforce(cg, WANT_FLAGS), /^replaced the settings/);
  assert.equal(enforcedOn(cg)?.settings_known, true);
  assert.deepEqual(await connect(), WANT);

  remove(cg);
  assertNoPinsLeft();
});
