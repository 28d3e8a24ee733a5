import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  addressMatcher,
  DEFAULT_FILTER,
  endpointRuleText,
  MAX_RULES,
  parseCidr,
  parseEndpointRule,
  parsePid,
  parsePorts,
  parseRules,
  parseStates,
  rulesMatcher,
  type SocketFilter,
  type TcpEndpoints,
} from "../../src/filter.js";
import type { TcpSocket } from "../../src/inspect/sockets.js";
import { ALL_STATES } from "../../src/kernel/states.js";
import { throwsExit2 } from "../helpers/expect.js";

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

describe("parseEndpointRule: one grammar for run, trace, enable, enforce and ls", () => {
  const canonical = (text: string) => parseEndpointRule("--only", text).map(endpointRuleText);

  test("networks, addresses, ports, port ranges and lists; the canonical text that the shim reads", () => {
    const cases: [string, string[]][] = [
      ["198.18.0.0/15", ["198.18.0.0/15"]],
      ["198.18.0.1", ["198.18.0.1/32"]],
      ["198.18.0.7/15", ["198.18.0.0/15"]],
      ["198.18.0.1:80", ["198.18.0.1/32:80"]],
      ["198.18.0.0/15:80-90", ["198.18.0.0/15:80-90"]],
      [":5432", [":5432"]],
      [":80-90", [":80-90"]],
      [":80,443", [":80", ":443"]],
      [" :8000-8100, 22 ", [":8000-8100", ":22"]],
      ["::1", ["::1/128"]],
      ["[::1]", ["::1/128"]],
      ["[::1]:443", ["[::1/128]:443"]],
      ["2001:db8::/32", ["2001:db8::/32"]],
      ["[2001:db8::/32]:443,8443", ["[2001:db8::/32]:443", "[2001:db8::/32]:8443"]],
      ["[2001:db8::]/32:443", ["[2001:db8::/32]:443"]],
      ["2001:db8::1:abcd", ["2001:db8::1:abcd/128"]],
      ["2001:db8:0:0:0:0:1:443", ["2001:db8::1:443/128"]], // eight groups: no port can hide in it
      ["::/0", ["::/0"]],
    ];
    for (const [text, want] of cases) assert.deepEqual(canonical(text), want, text);
  });

  test("an IPv4-mapped address or network means the IPv4 one", () => {
    assert.deepEqual(canonical("[::ffff:127.0.0.1]:80"), ["127.0.0.1/32:80"]);
    assert.deepEqual(canonical("::ffff:198.18.0.0/111"), ["198.18.0.0/15"]);
    assert.deepEqual(canonical("::ffff:0:0/96"), ["0.0.0.0/0"]);
    assert.deepEqual(canonical("::ffff:0:0/95"), ["::fffe:0:0/95"], "wider than the mapped range: an IPv6 network");
  });

  test("zone ids are refused with the reason, and what to write instead", () => {
    for (const [text, zone, rest] of [
      ["fe80::1%lo", "%lo", "fe80::1"],
      ["[fe80::1%eth0]:80", "%eth0", "[fe80::1]:80"],
    ] as const) {
      throwsExit2(
        () => parseEndpointRule("--only", text),
        "usage",
        `--only ${text}: zone ids (${zone}) are not supported: tcpka enforce's BPF program cannot see a connection's interface`,
      );
      assert.throws(
        () => parseEndpointRule("--only", text),
        (e: { hint?: string }) => e.hint === `leave the zone out: ${rest} matches that address on every interface`,
      );
    }
  });

  test("an unbracketed IPv6 address that could end in a port is refused with a hint to use brackets", () => {
    throwsExit2(
      () => parseEndpointRule("--only", "::1:443"),
      "usage",
      "--only ::1:443: ambiguous: the IPv6 address ::1:443, or port 443 of ::1?",
    );
    assert.throws(
      () => parseEndpointRule("--only", "::1:443"),
      (e: { hint?: string }) => e.hint === "write [::1]:443 for the port, or [::1:443] for the address",
    );
    throwsExit2(() => parseEndpointRule("--only", "2001:db8::1:80"), "usage", /ambiguous/);
    throwsExit2(
      () => parseEndpointRule("--except", "2001:db8::/32:443"),
      "usage",
      "--except 2001:db8::/32:443: a port after an IPv6 network needs brackets",
    );
    throwsExit2(
      () => parseEndpointRule("--only", ":::443"),
      "usage",
      "--only :::443: a port after an IPv6 address needs brackets",
    );
  });

  test("malformed rules name the whole rule", () => {
    const cases: [string, string][] = [
      ["", "--only : not a network or port"],
      ["[]:80", "--only []:80: not a network or port"],
      [":", "--only :: no port after ':'"],
      ["10.0.0.0/8:", "--only 10.0.0.0/8:: no port after ':'"],
      [":0", "--only :0: port 0 is out of range (1 to 65535)"],
      [":90-80", "--only :90-80: the range ends before it starts"],
      [":http", "--only :http: not a port"],
      ["10.0.0.0/8:80,", "--only 10.0.0.0/8:80,: not a port"],
      ["10.0.0.0/33", "--only 10.0.0.0/33: the prefix length must be 0 to 32 for IPv4"],
      ["example.com:80", "--only example.com:80: not an IP address or CIDR"],
      ["80,443", "--only 80,443: not an IP address or CIDR"],
    ];
    for (const [text, message] of cases) throwsExit2(() => parseEndpointRule("--only", text), "usage", message);
  });

  test(`at most ${MAX_RULES} rules in all, a port list counting one per range`, () => {
    const ports = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i).join(",");
    assert.equal(parseRules([`:${ports(1, 20)}`], [`:${ports(100, 12)}`]).except.length, 12);
    throwsExit2(
      () => parseRules([`:${ports(1, 20)}`], [`:${ports(100, 13)}`]),
      "usage",
      `--only/--except: 33 rules, more than the ${MAX_RULES} that the preload library and the BPF program hold`,
    );
  });
});

describe("rulesMatcher: the rules on listed sockets", () => {
  const ends = (local: [string, number], peer: [string, number], state: TcpEndpoints["state"] = "ESTAB") =>
    ({
      family: local[0].includes(":") ? 6 : 4,
      state,
      localAddress: local[0],
      localPort: local[1],
      peerAddress: peer[0],
      peerPort: peer[1],
      inode: 1,
    }) as TcpEndpoints;
  const listening = () => new Set([8080, 5432]);
  const out = ends(["198.18.0.1", 40000], ["198.18.0.2", 8080]); // made by connect()
  const inn = ends(["198.18.0.2", 8080], ["198.18.0.1", 40000]); // accepted: 8080 is listened on
  const mapped = ends(["::ffff:198.19.0.1", 5432], ["::ffff:198.18.0.1", 40001]); // accepted on a dual-stack socket
  const six = ends(["::1", 40002], ["::1", 9443]);
  const listener = ends(["0.0.0.0", 8080], ["0.0.0.0", 0], "LISTEN");
  const all = { out, inn, mapped, six, listener };
  const which = (only: string[], except: string[] = []) => {
    const r = parseRules(only, except);
    const m = rulesMatcher(r.only, r.except);
    assert.ok(m);
    return Object.entries(all)
      .filter(([, s]) => m(s, listening))
      .map(([name]) => name);
  };

  test("the port is the service's: the peer port of a connection made, the local port of one accepted", () => {
    assert.deepEqual(which([":8080"]), ["out", "inn", "listener"]);
    assert.deepEqual(which([":40000"]), [], "an ephemeral port is no service port");
    assert.deepEqual(which([":5432,9443"]), ["mapped", "six"]);
    assert.deepEqual(which([":8000-9000"]), ["out", "inn", "listener"]);
  });

  test("the address is the peer's; an IPv4-mapped peer is an IPv4 peer, which no IPv6 network holds", () => {
    assert.deepEqual(which(["198.18.0.0/15"]), ["out", "inn", "mapped"]);
    assert.deepEqual(which(["198.18.0.2"]), ["out"]);
    assert.deepEqual(which(["0.0.0.0/0"]), ["out", "inn", "mapped"]);
    assert.deepEqual(which(["::/0"]), ["six"]);
    assert.deepEqual(which(["[::ffff:198.18.0.1]:5432"]), ["mapped"]);
    assert.deepEqual(which(["198.18.0.0/15:8080"]), ["out", "inn"]);
  });

  test("--except wins; a listener is left to its connections as soon as any rule names an address", () => {
    assert.deepEqual(which([], ["198.18.0.2"]), ["inn", "mapped", "six"]);
    assert.deepEqual(which([":8080"], ["198.18.0.1"]), ["out"]);
    assert.deepEqual(which([], [":8080"]), ["mapped", "six"]);
  });

  test("the listening ports are asked for only when a rule has a port", () => {
    const r = parseRules(["198.18.0.0/15"], []);
    const m = rulesMatcher(r.only, r.except);
    assert.equal(
      m?.(inn, () => assert.fail("asked")),
      true,
    );
    assert.equal(rulesMatcher([], []), null);
  });
});
