/**
 * `tcpka enforce` run twice at the same instant on the same cgroup (two operators, a retrying script): after each
 * pair, the pins, `--list --json` and the settings a new connection in the cgroup really gets (read inside the
 * process with getsockopt) must agree, and they must be the settings of exactly one of the two runs, or none when
 * a concurrent --remove came last. Before enforce and remove were serialised, a few pairs in 50 ended with one run
 * saying "enforcing ... pinned" (exit 0) while the other failed on OBJ_PIN EEXIST and removed the winner's pins.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { type TestContext, test } from "node:test";
import { removeEnforcement } from "../../src/enforce/cgroup.js";
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
  ourPins,
  PIN_ROOT,
  KA_UNTOUCHED as UNTOUCHED,
} from "../helpers/enforce.js";
import { needs } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import { REPO } from "../helpers/paths.js";
import { Process, type Result } from "../helpers/processes.js";
import { tcpkaHere as tcpka } from "../helpers/tcpka.js";

const NEEDS = { root: true, tools: ["ip", "python3"] };
afterEnforceTests();

/**
 * tcpka's CLI, loaded (every module, koffi and libc included), then parked: it says so on fd 3 and waits for a byte
 * on stdin. Runs released together so start their work within a fraction of a millisecond of each other, not
 * within the tens of milliseconds that starting Node takes.
 */
const GATED = [
  process.execPath,
  "--input-type=module",
  "-e",
  `import { closeSync, readSync, writeSync } from "node:fs";
   const [mainJs, ...args] = process.argv.slice(1);
   const { main } = await import(mainJs);
   writeSync(3, "r");
   closeSync(3);
   readSync(0, Buffer.alloc(1));
   process.exitCode = await main(args);`,
  join(REPO, "dist", "cli", "main.js"),
];
/**
 * The same in a mount namespace of its own, with an empty /run/tcpka: a tcpka there does not share the lock of the
 * others, as one in a container with its own /run and the host's /sys/fs/bpf, or one from before the lock.
 */
const UNLOCKED = [
  "unshare",
  "--mount",
  "--propagation",
  "private",
  "sh",
  "-c",
  'mount -t tmpfs -o mode=0700 tcpka-t /run/tcpka && exec "$@"',
  "unlocked",
];

interface Run {
  args: readonly string[];
  unlocked?: boolean;
}

/** Start every run at the same instant: once all are parked, one byte on each stdin, back to back, releases them. */
async function together(runs: readonly Run[]): Promise<Result[]> {
  const children = runs.map((r) => {
    const argv = [...(r.unlocked ? UNLOCKED : []), ...GATED, ...r.args];
    return spawn(argv[0]!, argv.slice(1), { stdio: ["pipe", "pipe", "pipe", "pipe"] });
  });
  const results = children.map((c) => new Process(c, c.spawnargs.join(" "), 60_000).result());
  // parked: "r" on fd 3, or the end of it if the child failed before (its result says why)
  await Promise.all(
    children.map((c) => new Promise((ready) => (c.stdio[3] as Readable).once("data", ready).once("end", ready))),
  );
  for (const c of children) c.stdin?.end("\n");
  return Promise.all(results);
}

/** Distinct --force settings for run `i`, so that what is in force tells which run it came from. */
function settings(i: number) {
  return { keepalive: 1, idle: 100 + i, interval: 5, count: 3, user_timeout_ms: 0 };
}

function enforceArgs(cg: TestCgroup, i: number): string[] {
  const s = settings(i);
  return ["enforce", "--cgroup", cg.path, "--force", "--idle", `${s.idle}s`, "--interval", "5s", "--count", "3"];
}

/** A test cgroup with an agent inside, and what a new connection made there gets. */
async function setUp(t: TestContext) {
  const ns = Netns.create(t);
  const cg = TestCgroup.create(t);
  guard(cg);
  const agent = await Agent.start(t, ns, cg);
  const outsider = await Agent.start(t, ns);
  const l = await outsider.listen("127.0.0.1");
  let next = 1;
  return {
    cg,
    /** a new run number */
    run: () => next++,
    /**
     * The run whose settings a new connection in the cgroup gets, checked against the pins and --list --json;
     * undefined when nothing is enforced. With `unknownOk`, --list may instead say that it does not know them.
     */
    async inForce(what: string, unknownOk = false): Promise<number | undefined> {
      const [c] = await connectPair(agent, outsider, l, "127.0.0.1");
      await agent.close(c);
      const listed = enforcedOn(cg);
      if (!listed) {
        assert.deepEqual(ka(c.opts), UNTOUCHED, `${what}: --list shows nothing, so a new connection is untouched`);
        assert.deepEqual(ourPins(), [], `${what}: --list shows nothing, so nothing is pinned`);
        return undefined;
      }
      assert.deepEqual(ourPins(), [listed.name], `${what}: one pin directory`);
      for (const f of ["link", "meta"]) assert.ok(existsSync(join(PIN_ROOT, listed.name, f)), `${what}: ${f} pinned`);
      const got = ka(c.opts).idle - 100;
      assert.deepEqual(ka(c.opts), settings(got), `${what}: a new connection gets the settings of a run`);
      if (!(unknownOk && listed.settings_known === false)) {
        assert.equal(listed.idle_s, settings(got).idle, `${what}: --list shows them (${JSON.stringify(listed)})`);
        assert.deepEqual([listed.interval_s, listed.count, listed.mode], [5, 3, "force"], `${what}: --list`);
      }
      return got;
    },
    /** Remove the enforcement, if there is one, through the library (saves starting tcpka once per pair). */
    reset(): void {
      removeEnforcement(cg.path, cg.mount);
    },
  };
}

const PAIRS = 50;
const REMOVE_PAIRS = 10;
const UNLOCKED_PAIRS = 30;

test(`${PAIRS} pairs of concurrent enforce, ${REMOVE_PAIRS} of enforce and --remove: pins, --list and connections agree`, async (t) => {
  if (!needs(t, NEEDS)) return;
  const h = await setUp(t);
  for (let pair = 0; pair < PAIRS; pair++) {
    const fresh = pair % 2 === 0; // every other pair starts from nothing, the others update an enforcement
    if (fresh) h.reset();
    const [a, b] = [h.run(), h.run()];
    const rs = await together([{ args: enforceArgs(h.cg, a) }, { args: enforceArgs(h.cg, b) }]);
    const what = `pair ${pair + 1} (${fresh ? "fresh" : "update"})`;
    for (const r of rs) assert.equal(r.status, 0, `${what}: both runs succeed: ${r.stderr}`);
    const won = await h.inForce(what);
    assert.ok(won === a || won === b, `${what}: the settings of one of the two runs are in force, not ${won}`);
    if (fresh) {
      // One run made the enforcement and the other replaced its settings: the replacing one came last.
      const replaced = rs.findIndex((r) => r.stdout.startsWith("replaced the settings"));
      assert.ok(replaced >= 0 && rs[1 - replaced]?.stdout.startsWith("enforcing keepalive"), `${what}: one of each`);
      assert.equal(won, [a, b][replaced], `${what}: the run that replaced the settings came last`);
    }
  }

  for (let pair = 0; pair < REMOVE_PAIRS; pair++) {
    if (!enforcedOn(h.cg)) enforce(h.cg, enforceArgs(h.cg, h.run()).slice(3));
    const a = h.run();
    const [e, r] = await together([
      { args: enforceArgs(h.cg, a) },
      { args: ["enforce", "--remove", "--cgroup", h.cg.path] },
    ]);
    const what = `enforce and --remove, pair ${pair + 1}`;
    assert.equal(e?.status, 0, `${what}: enforce succeeds: ${e?.stderr}`);
    assert.equal(r?.status, 0, `${what}: --remove succeeds: ${r?.stderr}`);
    const won = await h.inForce(what);
    if (e?.stdout.startsWith("enforcing keepalive")) assert.equal(won, a, `${what}: --remove came first`);
    else assert.equal(won, undefined, `${what}: enforce replaced the settings, then --remove removed them`);
  }
  h.reset();
  assertNoPinsLeft();
});

test(`${UNLOCKED_PAIRS} pairs of which one run does not share the lock: both succeed, and --list never shows settings that are not in force`, async (t) => {
  if (!needs(t, { ...NEEDS, tools: [...NEEDS.tools, "unshare"] })) return;
  tcpka(["enforce", "--list"]); // makes /run/tcpka, for the unlocked runs to mount over
  const h = await setUp(t);
  for (let pair = 0; pair < UNLOCKED_PAIRS; pair++) {
    const fresh = pair % 2 === 0;
    if (fresh) h.reset();
    const [a, b] = [h.run(), h.run()];
    const first = pair % 4 < 2; // which of the two runs has no lock
    const rs = await together([
      { args: enforceArgs(h.cg, a), unlocked: first },
      { args: enforceArgs(h.cg, b), unlocked: !first },
    ]);
    const what = `unlocked pair ${pair + 1} (${fresh ? "fresh" : "update"})`;
    for (const r of rs) assert.equal(r.status, 0, `${what}: both runs succeed: ${r.stderr}`);
    const won = await h.inForce(what, true);
    assert.ok(won === a || won === b, `${what}: the settings of one of the two runs are in force, not ${won}`);
  }
  h.reset();
  assertNoPinsLeft();
});
