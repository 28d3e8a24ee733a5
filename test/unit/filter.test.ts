import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  addressMatcher,
  DEFAULT_FILTER,
  parseCidr,
  parsePid,
  parsePorts,
  parseStates,
  type SocketFilter,
} from "../../src/filter.js";
import { ALL_STATES, type TcpSocket } from "../../src/inspect/sockets.js";
import { throwsExit2 } from "./expect.js";

const bit = (...states: number[]) => states.reduce((m, s) => m | (1 << s), 0);

describe("parseStates", () => {
  test("one word is one kernel state", () => {
    assert.equal(parseStates(["established"]), bit(1));
    assert.equal(parseStates(["listening"]), bit(10));
    assert.equal(parseStates(["time-wait"]), bit(6));
    assert.equal(parseStates(["closed"]), bit(7));
  });

  test("syn-recv includes request sockets (TCP_NEW_SYN_RECV)", () => {
    assert.equal(parseStates(["syn-recv"]), bit(3, 12));
  });

  test("all, and the connected group that leaves out LISTEN, TIME-WAIT and CLOSE", () => {
    assert.equal(parseStates(["all"]), ALL_STATES);
    assert.equal(parseStates(["connected"]), bit(1, 2, 3, 4, 5, 8, 9, 11, 12));
    assert.equal(parseStates(["synchronized"]), bit(1, 3, 4, 5, 8, 9, 11, 12));
  });

  test("words combine across flags and commas, in any case", () => {
    assert.equal(parseStates(["Established,LISTENING", " fin-wait-1 "]), bit(1, 10, 4));
  });

  test("an unknown word is a usage error that names it", () => {
    throwsExit2(() => parseStates(["establised"]), "usage", "--state establised: unknown state");
    throwsExit2(() => parseStates(["established,bogus"]), "usage", "--state bogus: unknown state");
  });

  test("words that name Object.prototype members are unknown states too", () => {
    throwsExit2(() => parseStates(["constructor"]), "usage", "--state constructor: unknown state");
    throwsExit2(() => parseStates(["__proto__"]), "usage", "--state __proto__: unknown state");
  });
});

describe("parsePorts", () => {
  test("a port, with or without a colon", () => {
    assert.deepEqual(parsePorts("--dport", "5432"), [{ from: 5432, to: 5432 }]);
    assert.deepEqual(parsePorts("--dport", ":5432"), [{ from: 5432, to: 5432 }]);
    assert.deepEqual(parsePorts("--dport", "65535"), [{ from: 65535, to: 65535 }]);
  });

  test("ranges and lists", () => {
    assert.deepEqual(parsePorts("--sport", "8000-8100"), [{ from: 8000, to: 8100 }]);
    assert.deepEqual(parsePorts("--sport", "22, :443,8000-8100"), [
      { from: 22, to: 22 },
      { from: 443, to: 443 },
      { from: 8000, to: 8100 },
    ]);
  });

  test("out of range, reversed and malformed ports are usage errors", () => {
    throwsExit2(() => parsePorts("--dport", "0"), "usage", "--dport 0: port 0 is out of range (1 to 65535)");
    throwsExit2(
      () => parsePorts("--dport", "70000"),
      "usage",
      "--dport 70000: port 70000 is out of range (1 to 65535)",
    );
    throwsExit2(() => parsePorts("--sport", "1-70000"), "usage", /port 70000 is out of range/);
    throwsExit2(
      () => parsePorts("--sport", "8100-8000"),
      "usage",
      "--sport 8100-8000: the range ends before it starts",
    );
    for (const bad of ["", "http", "80,", "-80", "80-", "1.5"]) {
      throwsExit2(() => parsePorts("--dport", bad), "usage", `--dport ${bad}: not a port`);
    }
  });
});

describe("parseCidr", () => {
  test("IPv4 and IPv6 networks", () => {
    assert.deepEqual(parseCidr("--dst", "198.18.0.0/15"), {
      text: "198.18.0.0/15",
      family: 4,
      address: "198.18.0.0",
      prefix: 15,
    });
    assert.deepEqual(parseCidr("--dst", "2001:db8::/32"), {
      text: "2001:db8::/32",
      family: 6,
      address: "2001:db8::",
      prefix: 32,
    });
    assert.equal(parseCidr("--dst", "0.0.0.0/0").prefix, 0);
  });

  test("a single address is a whole-length prefix; brackets are allowed around IPv6", () => {
    assert.deepEqual(
      [parseCidr("--dst", "192.0.2.7"), parseCidr("--src", "[2001:db8::1]")].map((c) => [
        c.family,
        c.address,
        c.prefix,
      ]),
      [
        [4, "192.0.2.7", 32],
        [6, "2001:db8::1", 128],
      ],
    );
    assert.equal(parseCidr("--dst", "[2001:db8::]/48").address, "2001:db8::");
  });

  test("a bad prefix is a usage error that gives the limit for the family", () => {
    throwsExit2(
      () => parseCidr("--dst", "10.0.0.0/33"),
      "usage",
      "--dst 10.0.0.0/33: the prefix length must be 0 to 32 for IPv4",
    );
    throwsExit2(() => parseCidr("--dst", "2001:db8::/129"), "usage", /0 to 128 for IPv6$/);
    throwsExit2(() => parseCidr("--dst", "10.0.0.0/"), "usage", /prefix length/);
    throwsExit2(() => parseCidr("--dst", "10.0.0.0/x"), "usage", /prefix length/);
  });

  test("what is not an address is a usage error", () => {
    for (const bad of ["1.2.3/8", "1.2.3", "256.0.0.1", "example.com", "", "/8", "2001:db8:::1"]) {
      throwsExit2(() => parseCidr("--src", bad), "usage", `--src ${bad}: not an IP address or CIDR`);
    }
  });
});

describe("parsePid", () => {
  test("a positive process id", () => {
    assert.equal(parsePid("--pid", "1"), 1);
    assert.equal(parsePid("--pid", "4194304"), 4194304);
  });

  test("anything else is a usage error", () => {
    for (const bad of ["0", "-1", "abc", "1.5", "", "4194305"]) {
      throwsExit2(() => parsePid("--pid", bad), "usage", `--pid ${bad}: not a process id`);
    }
  });
});

describe("addressMatcher", () => {
  const sock = (over: Partial<TcpSocket>): TcpSocket => ({
    family: 4,
    state: "ESTAB",
    localAddress: "10.0.0.1",
    localPort: 40000,
    peerAddress: "198.18.0.5",
    peerPort: 5432,
    timer: "off",
    timerMs: 0,
    timerCount: 0,
    sendQueue: 0,
    recvQueue: 0,
    uid: 0,
    inode: 1,
    ...over,
  });
  const matcher = (over: Partial<SocketFilter>) => {
    const m = addressMatcher({ ...DEFAULT_FILTER, ...over });
    assert.ok(m, "a filter that constrains addresses gives a matcher");
    return m;
  };
  const v6 = sock({ family: 6, localAddress: "2001:db8::1", peerAddress: "2001:db8:1::2" });
  const mapped = sock({ family: 6, localAddress: "::ffff:10.0.0.1", peerAddress: "::ffff:198.18.0.5" });

  test("the default filter needs no matcher: every address passes", () => {
    assert.equal(addressMatcher(DEFAULT_FILTER), null);
  });

  test("peer and local port ranges, inclusive", () => {
    const m = matcher({ dports: parsePorts("--dport", "5000-5432"), sports: parsePorts("--sport", "40000") });
    assert.equal(m(sock({})), true);
    assert.equal(m(sock({ peerPort: 5433 })), false);
    assert.equal(m(sock({ peerPort: 4999 })), false);
    assert.equal(m(sock({ localPort: 40001 })), false);
  });

  test("peer network, IPv4 and IPv6", () => {
    const m = matcher({ dst: [parseCidr("--dst", "198.18.0.0/15"), parseCidr("--dst", "2001:db8:1::/48")] });
    assert.equal(m(sock({ peerAddress: "198.19.255.255" })), true);
    assert.equal(m(sock({ peerAddress: "198.20.0.0" })), false);
    assert.equal(m(v6), true);
    assert.equal(m(sock({ family: 6, peerAddress: "2001:db8:2::2" })), false);
  });

  test("an IPv4-mapped IPv6 peer matches an IPv4 network", () => {
    const m = matcher({ dst: [parseCidr("--dst", "198.18.0.0/15")] });
    assert.equal(m(mapped), true);
    assert.equal(m({ ...mapped, peerAddress: "::ffff:198.20.0.5" }), false);
  });

  test("local network", () => {
    const m = matcher({ src: [parseCidr("--src", "10.0.0.0/8")] });
    assert.equal(m(sock({})), true);
    assert.equal(m(mapped), true);
    assert.equal(m(sock({ localAddress: "192.0.2.1" })), false);
    assert.equal(m(v6), false);
  });

  test("family filter: an IPv4-mapped socket is IPv6", () => {
    const only4 = matcher({ families: [4] });
    const only6 = matcher({ families: [6] });
    assert.deepEqual([only4(sock({})), only4(v6), only4(mapped)], [true, false, false]);
    assert.deepEqual([only6(sock({})), only6(v6), only6(mapped)], [false, true, true]);
  });
});
