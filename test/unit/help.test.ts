/**
 * The help texts, through the real command (no privileges needed): every command has its own, reachable as
 * `tcpka COMMAND --help` and `tcpka help COMMAND`, and the top-level one names the global options.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { tcpkaHere } from "../helpers/tcpka.js";

const tcpka = (...args: string[]) => tcpkaHere(args);

test("the top-level help names --help and --version", () => {
  const r = tcpka("--help");
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^ {2}-V, --version +the version of tcpka$/m);
  assert.match(r.stdout, /^ {2}-h, --help +.*tcpka help COMMAND/m);
  assert.equal(tcpka("help").stdout, r.stdout);
  assert.match(tcpka("--version").stdout, /^tcpka \d+\.\d+\.\d+\n$/);
});

test("tcpka help COMMAND is the command's own help", () => {
  for (const command of ["ls", "enable", "disable", "sysctl"]) {
    const own = tcpka(command, "--help");
    assert.equal(own.status, 0, own.stderr);
    assert.match(own.stdout, new RegExp(`^Usage: tcpka ${command} `));
    assert.deepEqual(tcpka("help", command), own, command);
  }
  const bogus = tcpka("help", "bogus");
  assert.equal(bogus.status, 2);
  assert.match(bogus.stderr, /^tcpka: unknown command bogus\n/);
});

test("disable --help lists its filters and gives examples", () => {
  const r = tcpka("disable", "--help");
  for (const flag of ["--dport PORT", "--dst CIDR", "--state NAME", "-l, --listening"]) {
    assert.ok(r.stdout.includes(flag), `lists ${flag}`);
  }
  assert.match(r.stdout, /\nExamples:\n {2}sudo tcpka disable --pid \d+\n/);
});
