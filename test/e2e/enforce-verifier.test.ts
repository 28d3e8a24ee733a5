/**
 * The kernel's verifier accepts every program `tcpka enforce` generates: strengthen and --force (with and without
 * --user-timeout, and with --user-timeout 0), times no rules, a port, port ranges and lists, IPv4 and IPv6
 * networks with and without a port, IPv6 networks that must skip IPv4-mapped peers, an IPv4-mapped rule,
 * --except, edge prefix lengths, and many rules at once. Loaded and attached through the CLI on a test cgroup (a
 * new link each time), checked in --list --json, then removed: no pin is left. The strengthen code for settings
 * that the CLI always completes (only some of idle, interval and count) is loaded directly.
 */
import assert from "node:assert/strict";
import { closeSync } from "node:fs";
import { test } from "node:test";
import { assemble } from "../../src/bpf/asm.js";
import { keepaliveProgram } from "../../src/bpf/keepalive.js";
import { endpointRuleText, parseRules } from "../../src/filter.js";
import { BPF_PROG_TYPE_SOCK_OPS } from "../../src/kernel/constants.js";
import { progLoad } from "../../src/sys/bpf.js";
import { TestCgroup } from "../helpers/cgroup.js";
import { afterEnforceTests, assertNoPinsLeft, enforce, listJson, remove } from "../helpers/enforce.js";
import { needs } from "../helpers/env.js";

afterEnforceTests();

const MODES: [string, string[]][] = [
  ["strengthen", []],
  ["force", ["--force"]],
  ["strengthen + user timeout", ["--user-timeout", "30s"]],
  ["force + user timeout", ["--force", "--user-timeout", "1500ms"]],
  ["strengthen + user timeout 0", ["--user-timeout", "0"]],
];

const many: string[] = [];
for (let i = 0; i < 16; i++)
  many.push("--only", `10.${i}.0.0/16:${1000 + i}`, "--except", `[fd00:${i.toString(16)}::/32]`);

const RULES: [string, string[]][] = [
  ["no rules", []],
  ["a port", ["--only", ":5432"]],
  ["an IPv4 CIDR", ["--only", "10.0.0.0/8"]],
  ["an IPv4 address and port", ["--only", "192.0.2.7:443"]],
  ["an IPv6 CIDR", ["--only", "2001:db8::/32"]],
  ["an IPv6 CIDR and port", ["--only", "[2001:db8::/64]:443"]],
  ["an IPv6 address with an IPv4 tail", ["--only", "::ffff:10.0.0.0/104"]],
  ["--except IPv4", ["--except", "10.1.0.0/16"]],
  ["--except IPv6 and a port", ["--except", "::1/128", "--except", ":22"]],
  ["edge prefixes", ["--only", "0.0.0.0/0", "--only", "::/0", "--only", "10.1.2.3/32", "--only", "fe80::1/128"]],
  ["odd prefixes", ["--only", "172.16.0.0/13", "--only", "2001:db8:8000::/33", "--except", "2001:db8::/77"]],
  ["--only and --except together", ["--only", ":443", "--only", "10.0.0.0/8:5432", "--except", "10.1.0.0/16"]],
  ["port ranges and lists", ["--only", ":8000-8100,443", "--except", "198.18.0.0/15:80-90"]],
  ["IPv6 networks that hold IPv4-mapped peers", ["--only", "::/0", "--only", "[::/64]:1-1024"]],
  ["an IPv4-mapped rule", ["--only", "[::ffff:127.0.0.1]:80", "--except", "::ffff:198.18.0.0/111"]],
  ["32 rules", many],
];

test("the verifier accepts the program for every kind of spec", async (t) => {
  if (!needs(t, { root: true })) return;
  const cg = TestCgroup.create(t);
  for (const [mode, modeArgs] of MODES) {
    for (const [rules, ruleArgs] of RULES) {
      await t.test(`${mode}, ${rules}`, () => {
        const out = enforce(cg, ["--idle", "7s", "--interval", "3s", "--count", "4", ...modeArgs, ...ruleArgs]);
        assert.match(out, /^enforcing keepalive on new connections/);
        const e = listJson().find((x) => x.cgroup === cg.path);
        assert.equal(e?.mode, modeArgs.includes("--force") ? "force" : "strengthen");
        const rules = parseRules(
          ruleArgs.filter((_, i) => ruleArgs[i - 1] === "--only"),
          ruleArgs.filter((_, i) => ruleArgs[i - 1] === "--except"),
        );
        assert.deepEqual([e.only, e.except], [rules.only.map(endpointRuleText), rules.except.map(endpointRuleText)]);
        remove(cg);
      });
    }
  }
  assertNoPinsLeft();
});

test("the verifier accepts the strengthen code for any part of idle, interval and count", (t) => {
  if (!needs(t, { root: true })) return;
  const parts = [{ idle: 7 }, { interval: 3 }, { count: 4 }, { idle: 7, count: 4 }, { interval: 3, count: 4 }, {}];
  for (const settings of parts) {
    const insns = assemble(keepaliveProgram({ settings, mode: "strengthen", only: [], except: [] }));
    closeSync(progLoad({ type: BPF_PROG_TYPE_SOCK_OPS, insns, license: "GPL", name: "tcpka_t_verify" }));
  }
});
