/**
 * What `tcpka enforce` prints and what it accepts. A cgroup name may hold any byte but '/', and a delegated cgroup
 * subtree lets an unprivileged user choose it: root's terminal must get it escaped, and --list --json exact.
 * Options that do not go together are usage errors that change nothing.
 */
import assert from "node:assert/strict";
import { chownSync, existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { TestCgroup } from "../helpers/cgroup.js";
import {
  afterEnforceTests,
  assertNoPinsLeft,
  enforce,
  enforcedOn,
  guard,
  listJson,
  PIN_ROOT,
  remove,
} from "../helpers/enforce.js";
import { needs } from "../helpers/env.js";
import { WANT_FLAGS } from "../helpers/keepalive.js";
import { runSync } from "../helpers/processes.js";
import { assertOneLineError, tcpkaHere as tcpka } from "../helpers/tcpka.js";
import { asUser, NOBODY } from "../helpers/users.js";

afterEnforceTests();

/** Nothing in `text` that a terminal would act on: no ESC, no BEL, no bidi override. */
function assertInert(what: string, text: string): void {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: these are what must not be there
  assert.doesNotMatch(text, /[\x1b\x07\u202e]/, `${what}: ${JSON.stringify(text)}`);
}

test("a cgroup named by another user reaches root's terminal escaped, and --list --json exact", (t) => {
  if (!needs(t, { root: true, tools: ["setpriv"] })) return;
  const cg = TestCgroup.create(t);
  // Delegate it to uid 65534 as systemd does (Delegate=yes): the directory, and the files with which its owner
  // moves processes and enables controllers below it.
  for (const f of ["", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"]) {
    chownSync(join(cg.dir, f), NOBODY.uid, NOBODY.gid);
  }
  const name = "evil\x1b]0;owned\x07\x1b[2J\u202e";
  const made = runSync([...asUser(NOBODY), "mkdir", join(cg.dir, name)]);
  assert.equal(made.status, 0, `uid 65534 makes a cgroup in its delegated subtree: ${made.stderr}`);
  const path = `${cg.path}/${name}`;
  const shown = `${cg.path}/evil\\x1b]0;owned\\x07\\x1b[2J\\u{202e}`;
  cg.onDestroy(() => {
    const e = listJson().find((x) => x.cgroup === path);
    if (!e) return;
    tcpka(["enforce", "--remove", "--cgroup", path]);
    if (existsSync(join(PIN_ROOT, e.name))) {
      rmSync(join(PIN_ROOT, e.name), { recursive: true, force: true });
      throw new Error(`cleanup: the enforcement of ${JSON.stringify(path)} had to be removed by hand`);
    }
  });

  // Root, trusting the path that the user gave it:
  const r = tcpka(["enforce", "--cgroup", path, ...WANT_FLAGS]);
  assert.equal(r.status, 0, r.stderr);
  assertInert("enforce", r.stdout + r.stderr);
  assert.ok(r.stdout.startsWith(`enforcing keepalive on new connections in cgroup ${shown}: 7s / 3s / 4`), r.stdout);
  assert.ok(r.stdout.includes(`remove with: tcpka enforce --remove --cgroup ${shown}\n`), r.stdout);

  const list = tcpka(["enforce", "--list"]);
  assert.equal(list.status, 0, list.stderr);
  assertInert("--list", list.stdout);
  assert.ok(
    list.stdout.split("\n").some((l) => l.startsWith(`${shown}  `)),
    `--list shows the escaped name: ${list.stdout}`,
  );

  const json = tcpka(["enforce", "--list", "--json"]);
  assertInert("--list --json (JSON escapes control characters itself)", json.stdout.replaceAll("\u202e", ""));
  const e = (JSON.parse(json.stdout) as { cgroup: string; settings_known: boolean }[]).find((x) => x.cgroup === path);
  assert.ok(e?.settings_known, `--list --json has the exact name: ${json.stdout}`);

  const rm = tcpka(["enforce", "--remove", "--cgroup", path]);
  assert.equal(rm.status, 0, rm.stderr);
  assertInert("--remove", rm.stdout);
  assert.ok(rm.stdout.startsWith(`removed: new connections in ${shown} are no longer touched`), rm.stdout);
  const again = tcpka(["enforce", "--remove", "--cgroup", path]);
  assertOneLineError(again, 2, /nothing is enforced on/);
  assertInert("an error", again.stderr);
  assert.ok(again.stderr.includes(shown), again.stderr);
  assertNoPinsLeft();
});

test("options that do not go together are usage errors, and change nothing", (t) => {
  if (!needs(t, { root: true })) return;
  const cg = TestCgroup.create(t);
  guard(cg);
  enforce(cg, WANT_FLAGS);
  const before = enforcedOn(cg);
  assert.ok(before);
  const p = cg.path;
  const cases: [string[], RegExp][] = [
    [["--list", "--remove"], /^tcpka: --list does not go with --remove$/],
    [["--list", "--remove", "--all"], /--list does not go with --remove, --all$/],
    [["--list", "--cgroup", p], /--list does not go with --cgroup$/],
    [["--list", "--idle", "5s", "--force"], /--list does not go with --idle, --force$/],
    [["--list", "--only", ":80"], /--list does not go with --only$/],
    [["--list", "--existing"], /--list does not go with --existing$/],
    [["--remove", "--all", "--cgroup", p], /--remove --all does not go with --cgroup$/],
    [["--remove", "--cgroup", p, "--idle", "5s"], /--remove does not go with --idle$/],
    [["--remove", "--cgroup", p, "--except", "10.0.0.0/8"], /--remove does not go with --except$/],
    [["--remove", "--cgroup", p, "--existing"], /--remove does not go with --existing$/],
    [["--remove", "--all", "--force"], /--remove does not go with --force$/],
    [["--remove", "--cgroup", p, "--json"], /--json goes with --list$/],
    [["--cgroup", p, "--json"], /--json goes with --list$/],
    [["--cgroup", p, "--all"], /--all goes with --remove$/],
    [["--all"], /--all goes with --remove$/],
    [["--cgroup", p, "--pid", "1"], /give one target, not --cgroup and --pid$/],
  ];
  for (const [args, message] of cases) {
    assertOneLineError(tcpka(["enforce", ...args]), 2, message);
    assert.deepEqual(enforcedOn(cg), before, `${args.join(" ")}: nothing changed`);
  }
  remove(cg);
  assertNoPinsLeft();
});
