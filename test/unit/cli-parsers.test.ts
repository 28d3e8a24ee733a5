import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { TcpkaError } from "../../src/errors.js";
import { FILTER_OPTIONS, parse, parseAssignments } from "../../src/ui/args.js";
import { throwsExit2 } from "../helpers/expect.js";

describe("sysctl --set: parseAssignments", () => {
  test("KEY=VALUE words, durations for idle and interval", () => {
    assert.deepEqual(parseAssignments(["idle=60", "interval=10s", "count=6"]), { idle: 60, interval: 10, count: 6 });
    assert.deepEqual(parseAssignments(["idle=5m"]), { idle: 300 });
  });

  test("comma-separated, and mixed with words", () => {
    assert.deepEqual(parseAssignments(["idle=2m,interval=30s", "count=4,"]), { idle: 120, interval: 30, count: 4 });
  });

  test("values are checked against the kernel's limits, named as KEY=VALUE", () => {
    throwsExit2(
      () => parseAssignments(["count=0"]),
      "invalid",
      "count=0: out of range; the kernel accepts 1 to 127 probes",
    );
    throwsExit2(
      () => parseAssignments(["interval=1.5s"]),
      "invalid",
      "interval=1.5s: the kernel counts keepalive intervals in whole seconds (1 to 32767)",
    );
    throwsExit2(() => parseAssignments(["idle=40000"]), "invalid", /^idle=40000: out of range/);
  });

  test("unknown keys, missing values and nothing at all are usage errors", () => {
    throwsExit2(() => parseAssignments(["time=60"]), "usage", "sysctl --set time=60: unknown key time");
    throwsExit2(() => parseAssignments(["idle="]), "usage", "sysctl --set idle=: expected KEY=VALUE");
    throwsExit2(() => parseAssignments(["idle", "60"]), "usage", "sysctl --set idle: expected KEY=VALUE");
    throwsExit2(() => parseAssignments([]), "usage", "sysctl --set: nothing to set");
    throwsExit2(() => parseAssignments([","]), "usage", "sysctl --set: nothing to set");
  });
});

describe("parse (command-line options)", () => {
  const OPTIONS = { ...FILTER_OPTIONS, json: { type: "boolean" } } as const;

  test("values and positionals", () => {
    const { values, positionals } = parse(
      "ls",
      ["--dport", ":5432", "-4", "--state", "a", "--state", "b", "x"],
      OPTIONS,
      true,
    );
    assert.deepEqual({ ...values }, { dport: [":5432"], ipv4: true, state: ["a", "b"] });
    assert.deepEqual(positionals, ["x"]);
    assert.equal(parse("ls", ["-h"], OPTIONS).values.help, true);
  });

  test("an unknown option names the command and points at its help", () => {
    assert.throws(
      () => parse("ls", ["--bogus"], OPTIONS),
      (e: unknown) =>
        e instanceof TcpkaError &&
        e.code === "usage" &&
        e.exitCode === 2 &&
        e.message === "ls: unknown option --bogus" &&
        e.hint === "see: tcpka ls --help",
    );
    throwsExit2(() => parse("ls", ["-x"], OPTIONS), "usage", "ls: unknown option -x");
  });

  test("an option without its value", () => {
    throwsExit2(() => parse("ls", ["--dport"], OPTIONS), "usage", "ls: --dport needs a value");
    throwsExit2(() => parse("ls", ["--json", "-a", "--state"], OPTIONS), "usage", "ls: --state needs a value");
  });

  test("a negative number after a flag that takes a value is its value, for the value's own check", () => {
    const options = { ...OPTIONS, idle: { type: "string" }, count: { type: "string", short: "c" } } as const;
    assert.deepEqual(
      { ...parse("enable", ["--idle", "-1", "-c", "-5", "-4"], options).values },
      {
        idle: "-1",
        count: "-5",
        ipv4: true,
      },
    );
    // Not after "--": that is the command's.
    assert.deepEqual(parse("run", ["--", "--idle", "-1"], options, true).positionals, ["--idle", "-1"]);
    throwsExit2(() => parse("ls", ["--dport", "--json"], OPTIONS), "usage", "ls: --dport needs a value");
  });

  test("an empty value is refused, whatever the option", () => {
    throwsExit2(() => parse("ls", ["--comm", ""], OPTIONS), "usage", "ls: --comm needs a value, not an empty string");
    throwsExit2(() => parse("ls", ["--dport=", "--dport", "1"], OPTIONS), "usage", /^ls: --dport needs a value, not/);
  });

  test("a value given to a flag that takes none", () => {
    // Not "needs a value": the flag takes none (e.g. "ls: --json takes no value").
    throwsExit2(() => parse("ls", ["--json=yes"], OPTIONS), "usage", /^ls: --json (?!needs a value)/);
  });

  test("an argument where none is expected", () => {
    throwsExit2(() => parse("ls", ["foo"], OPTIONS), "usage", "ls: unexpected argument foo");
  });
});
