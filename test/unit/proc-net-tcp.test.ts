/**
 * parseProcNetTcp on text laid out exactly as the kernel prints it: get_tcp4_sock, get_timewait4_sock and
 * get_openreq4 in net/ipv4/tcp_ipv4.c (each line padded to 149 characters by seq_pad in tcp4_seq_show) and
 * get_tcp6_sock in net/ipv6/tcp_ipv6.c (not padded). Addresses are be32 words printed as host-order hex.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseProcNetTcp, type TcpSocket } from "../../src/inspect/sockets.js";
import { ALL_STATES, stateMask } from "../../src/kernel/states.js";

const pad = (line: string) => line.padEnd(149);

const TCP4 = [
  "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
  // LISTEN 127.0.0.1:40001, no timer
  "   0: 0100007F:9C41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6678 1 0000000000000000 100 0 0 10 0",
  // ESTAB 127.0.0.1:58348 -> 127.0.0.1:40001, keepalive due in 0xB8F = 2959 ticks, 2 unanswered probes
  "   1: 0100007F:E3EC 0100007F:9C41 01 00000000:00000000 02:00000B8F 00000000  1000        2 6680 3 0000000000000000 20 0 0 10 -1",
  // ESTAB 10.0.0.1:54321 -> 198.18.0.5:443, 416 bytes unacked, retransmit due in 50 ticks, 3rd retransmission
  "   2: 0100000A:D431 050012C6:01BB 01 000001A0:00000010 01:00000032 00000003  1000        0 7001 2 0000000000000000 40 4 0 10 -1",
  // TIME_WAIT, from get_timewait4_sock: no uid, no inode, 0x175B ticks left
  "   3: 0100007F:E3F0 0100007F:9C41 06 00000000:00000000 03:0000175B 00000000     0        0 0 3 0000000000000000",
  // SYN_RECV request socket, from get_openreq4: expire timer 1, num_timeout 1, the listener's uid, no inode
  "   4: 0100007F:9C41 0100007F:C350 03 00000000:00000000 01:00000064 00000001  1000        0 0 0 0000000000000000",
  // ESTAB with a zero-window probe (tr 4): 5 probes out, in the timeout column
  "   5: 0100007F:9C41 0100007F:E3EE 01 00002000:00000000 04:000000C8 00000000  1000        5 6690 2 0000000000000000 20 0 0 10 -1",
]
  .map(pad)
  .join("\n")
  .concat("\n");

const TCP6 = [
  "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
  // LISTEN [::]:40002
  "   0: 00000000000000000000000000000000:9C42 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6679 1 0000000000000000 100 0 0 10 0",
  // ESTAB [::1]:40002 -> [::1]:38700, keepalive due in 0x1747 = 5959 ticks
  "   1: 00000000000000000000000001000000:9C42 00000000000000000000000001000000:972C 01 00000000:00000000 02:00001747 00000000     0        0 6687 2 0000000000000000 20 0 0 10 -1",
  // ESTAB [2001:db8::1]:443 -> [2001:db8::1:0:0:1]:50000
  "   2: B80D0120000000000000000001000000:01BB B80D0120000000000000010001000000:C350 01 00000000:00000000 00:00000000 00000000   998        0 9001 2 0000000000000000 20 0 0 10 -1",
  // ESTAB IPv4-mapped: [::ffff:127.0.0.1]:40002 -> [::ffff:127.0.0.1]:35666
  "   3: 0000000000000000FFFF00000100007F:9C42 0000000000000000FFFF00000100007F:8B52 01 00000000:00000000 02:00001747 00000000     0        0 6685 2 0000000000000000 20 0 0 10 -1",
].join("\n");

describe("parseProcNetTcp: /proc/net/tcp", () => {
  const all = parseProcNetTcp(TCP4, 4, ALL_STATES);

  test("one socket per line, the header skipped", () => {
    assert.equal(all.length, 6);
    assert.deepEqual(
      all.map((s) => s.state),
      ["LISTEN", "ESTAB", "ESTAB", "TIME-WAIT", "SYN-RECV", "ESTAB"],
    );
  });

  test("LISTEN: wildcard peer, no timer", () => {
    const s = all[0] as TcpSocket;
    assert.deepEqual(
      [s.localAddress, s.localPort, s.peerAddress, s.peerPort, s.timer, s.timerMs, s.timerCount, s.inode],
      ["127.0.0.1", 40001, "0.0.0.0", 0, "off", 0, 0, 6678],
    );
  });

  test("keepalive timer: clock ticks to ms, probes from the timeout column", () => {
    assert.deepEqual(all[1], {
      family: 4,
      state: "ESTAB",
      localAddress: "127.0.0.1",
      localPort: 58348,
      peerAddress: "127.0.0.1",
      peerPort: 40001,
      timer: "keepalive",
      timerMs: 29_590,
      timerCount: 2,
      sendQueue: 0,
      recvQueue: 0,
      uid: 1000,
      inode: 6680,
    } satisfies TcpSocket);
  });

  test("retransmit timer: count from retrnsmt, queues in hex", () => {
    const s = all[2] as TcpSocket;
    assert.deepEqual([s.localAddress, s.localPort, s.peerAddress, s.peerPort], ["10.0.0.1", 54321, "198.18.0.5", 443]);
    assert.deepEqual([s.timer, s.timerMs, s.timerCount], ["on", 500, 3]);
    assert.deepEqual([s.sendQueue, s.recvQueue, s.uid, s.inode], [416, 16, 1000, 7001]);
  });

  test("zero-window probe timer: count from the timeout column", () => {
    const s = all[5] as TcpSocket;
    assert.deepEqual([s.timer, s.timerMs, s.timerCount, s.sendQueue], ["persist", 2000, 5, 0x2000]);
  });

  test("TIME_WAIT short line: timewait timer, inode 0", () => {
    const s = all[3] as TcpSocket;
    assert.deepEqual(
      [s.state, s.localPort, s.peerPort, s.timer, s.timerMs, s.timerCount, s.uid, s.inode],
      ["TIME-WAIT", 58352, 40001, "timewait", 59_790, 0, 0, 0],
    );
  });

  test("SYN_RECV request socket: expire timer with its retransmissions, the listener's uid, inode 0", () => {
    const s = all[4] as TcpSocket;
    assert.deepEqual(
      [s.state, s.localPort, s.peerPort, s.timer, s.timerMs, s.timerCount, s.uid, s.inode],
      ["SYN-RECV", 40001, 50000, "on", 1000, 1, 1000, 0],
    );
  });

  test("only the states in the bitmask are kept", () => {
    const estab = parseProcNetTcp(TCP4, 4, stateMask(["ESTAB"]));
    assert.deepEqual(
      estab.map((s) => s.inode),
      [6680, 7001, 6690],
    );
    const some = parseProcNetTcp(TCP4, 4, stateMask(["LISTEN", "TIME-WAIT", "SYN-RECV"]));
    assert.deepEqual(
      some.map((s) => s.state),
      ["LISTEN", "TIME-WAIT", "SYN-RECV"],
    );
    assert.deepEqual(parseProcNetTcp(TCP4, 4, 0), []);
  });

  test("appends to the array it is given", () => {
    const out = parseProcNetTcp(TCP4, 4, stateMask(["LISTEN"]));
    assert.equal(parseProcNetTcp(TCP6, 6, stateMask(["LISTEN"]), out), out);
    assert.deepEqual(
      out.map((s) => s.family),
      [4, 6],
    );
  });

  test("a header alone, or nothing, gives no sockets", () => {
    assert.deepEqual(parseProcNetTcp(`${TCP4.split("\n")[0]}\n`, 4, ALL_STATES), []);
    assert.deepEqual(parseProcNetTcp("", 4, ALL_STATES), []);
  });
});

describe("parseProcNetTcp: /proc/net/tcp6", () => {
  const all = parseProcNetTcp(TCP6, 6, ALL_STATES);
  const endpoints = (s: TcpSocket | undefined) => [s?.localAddress, s?.localPort, s?.peerAddress, s?.peerPort];

  test("lines are not padded, and the last has no newline", () => {
    assert.equal(all.length, 4);
    assert.ok(all.every((s) => s.family === 6));
  });

  test("LISTEN on the wildcard", () => {
    assert.deepEqual(endpoints(all[0]), ["::", 40002, "::", 0]);
    assert.equal(all[0]?.state, "LISTEN");
  });

  test("loopback with a keepalive timer", () => {
    assert.deepEqual(endpoints(all[1]), ["::1", 40002, "::1", 38700]);
    assert.deepEqual([all[1]?.timer, all[1]?.timerMs, all[1]?.inode], ["keepalive", 59_590, 6687]);
  });

  test("global addresses in RFC 5952 form", () => {
    assert.deepEqual(endpoints(all[2]), ["2001:db8::1", 443, "2001:db8::1:0:0:1", 50000]);
    assert.equal(all[2]?.uid, 998);
  });

  test("IPv4-mapped addresses end in a dotted quad", () => {
    assert.deepEqual(endpoints(all[3]), ["::ffff:127.0.0.1", 40002, "::ffff:127.0.0.1", 35666]);
  });
});
