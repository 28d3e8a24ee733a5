/**
 * parseInetDiagMsg on hand-built struct inet_diag_msg (include/uapi/linux/inet_diag.h): family@0 state@1 timer@2
 * retrans@3 sport be16@4 dport be16@6 src[16]@8 dst[16]@24 if@40 cookie[8]@44 expires@52 rqueue@56 wqueue@60
 * uid@64 inode@68 (host-order u32), and formatIPv6, which prints its IPv6 addresses.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatIPv6 } from "../../src/addresses.js";
import { parseInetDiagMsg, type TcpSocket } from "../../src/inspect/sockets.js";

interface Msg {
  family: number;
  state: number;
  timer: number;
  retrans: number;
  sport: number;
  dport: number;
  /** 4 bytes for IPv4, 8 big-endian words for IPv6 */
  src: number[];
  dst: number[];
  expires: number;
  rqueue: number;
  wqueue: number;
  uid: number;
  inode: number;
}

const HDR = 16; // the nlmsghdr before the message in a netlink reply

/** A reply buffer: a 16-byte header, the 72-byte message, then a few bytes of rtattr. */
function reply(m: Msg): Buffer {
  const buf = Buffer.alloc(HDR + 72 + 8, 0xaa);
  const o = HDR;
  // family@0 state@1 timer@2 retrans@3, then the ports in network order
  for (const [i, v] of [m.family, m.state, m.timer, m.retrans].entries()) buf.writeUInt8(v, o + i);
  buf.writeUInt16BE(m.sport, o + 4);
  buf.writeUInt16BE(m.dport, o + 6);
  writeAddress(buf, o + 8, m.src);
  writeAddress(buf, o + 24, m.dst);
  // expires@52 rqueue@56 wqueue@60 uid@64 inode@68, in host order
  for (const [i, v] of [m.expires, m.rqueue, m.wqueue, m.uid, m.inode].entries()) buf.writeUInt32LE(v, o + 52 + 4 * i);
  return buf;
}

function writeAddress(buf: Buffer, o: number, a: number[]): void {
  buf.fill(0, o, o + 16);
  const wide = a.length === 8; // IPv6 words, or IPv4 bytes
  for (let i = 0; i < a.length; i++) {
    if (wide) buf.writeUInt16BE(a[i] as number, o + 2 * i);
    else buf.writeUInt8(a[i] as number, o + i);
  }
}

const ESTAB_V4: Msg = {
  family: 2,
  state: 1,
  timer: 2,
  retrans: 3,
  sport: 40001,
  dport: 443,
  src: [10, 0, 0, 1],
  dst: [198, 18, 0, 5],
  expires: 29_590,
  rqueue: 5,
  wqueue: 416,
  uid: 1000,
  inode: 0xfffffff0,
};

describe("parseInetDiagMsg", () => {
  test("an IPv4 socket with a keepalive timer", () => {
    assert.deepEqual(parseInetDiagMsg(reply(ESTAB_V4), HDR), {
      family: 4,
      state: "ESTAB",
      localAddress: "10.0.0.1",
      localPort: 40001,
      peerAddress: "198.18.0.5",
      peerPort: 443,
      timer: "keepalive",
      timerMs: 29_590,
      timerCount: 3,
      recvQueue: 5,
      sendQueue: 416,
      uid: 1000,
      inode: 4_294_967_280,
    } satisfies TcpSocket);
  });

  test("an IPv6 socket, and an IPv4-mapped peer", () => {
    const s = parseInetDiagMsg(
      reply({
        ...ESTAB_V4,
        family: 10,
        timer: 1,
        src: [0x2001, 0xdb8, 0, 0, 0, 0, 0, 1],
        dst: [0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0005],
      }),
      HDR,
    );
    assert.deepEqual(
      [s?.family, s?.localAddress, s?.peerAddress, s?.timer],
      [6, "2001:db8::1", "::ffff:198.18.0.5", "on"],
    );
  });

  test("timer codes name the pending timer; no timer means no time left", () => {
    const timer = (code: number) => parseInetDiagMsg(reply({ ...ESTAB_V4, timer: code }), HDR);
    assert.deepEqual(
      [1, 2, 3, 4, 5].map((c) => timer(c)?.timer),
      ["on", "keepalive", "timewait", "persist", "delack"],
    );
    assert.deepEqual([timer(0)?.timer, timer(0)?.timerMs], ["off", 0]);
  });

  test("a request socket (TCP_NEW_SYN_RECV) is shown as SYN-RECV", () => {
    assert.equal(parseInetDiagMsg(reply({ ...ESTAB_V4, state: 12 }), HDR)?.state, "SYN-RECV");
    assert.equal(parseInetDiagMsg(reply({ ...ESTAB_V4, state: 10 }), HDR)?.state, "LISTEN");
  });

  test("a state the kernel does not have is skipped", () => {
    assert.equal(parseInetDiagMsg(reply({ ...ESTAB_V4, state: 0 }), HDR), undefined);
    assert.equal(parseInetDiagMsg(reply({ ...ESTAB_V4, state: 13 }), HDR), undefined);
  });
});

describe("formatIPv6 (RFC 5952)", () => {
  const cases: [number[], string][] = [
    [[0, 0, 0, 0, 0, 0, 0, 0], "::"],
    [[0, 0, 0, 0, 0, 0, 0, 1], "::1"],
    [[0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], "2001:db8::1"],
    [[0xfe80, 0, 0, 0, 0, 0, 0, 0], "fe80::"],
    [[0x2001, 0xdb8, 0, 0, 1, 0, 0, 1], "2001:db8::1:0:0:1"], // tie: the first run
    [[0x2001, 0, 0, 1, 0, 0, 0, 1], "2001:0:0:1::1"], // the longest run, not the first
    [[0x2001, 0xdb8, 0, 1, 1, 1, 1, 1], "2001:db8:0:1:1:1:1:1"], // one zero word stays
    [[0x2001, 0xdb8, 0xabcd, 0x12, 0, 0, 0, 0], "2001:db8:abcd:12::"], // lower case, no leading zeros
    [[0, 0, 0, 0, 0, 0xffff, 0x7f00, 0x0001], "::ffff:127.0.0.1"],
    [[0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0005], "::ffff:198.18.0.5"],
    [[0, 0, 0, 0, 0xffff, 0, 0x7f00, 1], "::ffff:0:7f00:1"], // not mapped: ffff in the wrong word
  ];
  for (const [words, text] of cases) {
    test(text, () => assert.equal(formatIPv6(words), text));
  }
});
