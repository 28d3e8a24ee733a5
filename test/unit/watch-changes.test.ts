/**
 * `tcpka watch`'s changes (src/inspect/watch.ts resolveChanges): one socket's timer and setsockopt records, as
 * the kernel writes them for one call or a program's few in a row, made the lines watch shows.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { resolveChanges, type WatchEvent } from "../../src/inspect/watch.js";

let clock = 0n;
/** A record: a timer's (no option) or a setsockopt's (its option, and SO_KEEPALIVE on after it). */
function rec(kind: "on" | "retuned" | "off", extra: Partial<WatchEvent> = {}): WatchEvent {
  clock += 10_000n;
  return {
    kind,
    at: 0,
    ns: clock,
    family: 4,
    netns: 1,
    localAddress: "127.0.0.1",
    localPort: 1000,
    peerAddress: "127.0.0.1",
    peerPort: 2000,
    inode: 7,
    owners: [],
    probe: 0,
    count: 9,
    silentS: 0,
    userTimeoutMs: 0,
    pid: 42,
    comm: "prog",
    cgroup: 0,
    idleS: 7200,
    intervalS: 75,
    ...extra,
  };
}
const set = (option: string, keepalive: boolean, extra: Partial<WatchEvent> = {}) =>
  rec(keepalive ? "retuned" : "off", { options: [option], keepalive, ...extra });
const summary = (es: WatchEvent[]) =>
  es.map((e) => [e.kind, e.options, e.keepalive, e.idleS, e.intervalS, e.count, e.nextProbeS]);

test("SO_KEEPALIVE then TCP_KEEPIDLE: the timer armed, its re-arm and both calls are one on, with the last values", () => {
  const lines = resolveChanges([
    rec("on", { nextProbeS: 7200 }),
    set("SO_KEEPALIVE", true, { nextProbeS: 7200 }),
    rec("off"),
    rec("retuned", { idleS: 30, nextProbeS: 30.2 }),
    set("TCP_KEEPIDLE", true, { idleS: 30, nextProbeS: 30.2 }),
  ]);
  assert.deepEqual(summary(lines), [["on", ["SO_KEEPALIVE", "TCP_KEEPIDLE"], true, 30, 75, 9, 30.2]]);
});

test("TCP_KEEPINTVL or TCP_KEEPCNT alone: a retune, with or without keepalive on", () => {
  assert.deepEqual(summary(resolveChanges([set("TCP_KEEPINTVL", true, { intervalS: 5, nextProbeS: 12 })])), [
    ["retuned", ["TCP_KEEPINTVL"], true, 7200, 5, 9, 12],
  ]);
  assert.deepEqual(summary(resolveChanges([set("TCP_KEEPCNT", false, { count: 4 })])), [
    ["retuned", ["TCP_KEEPCNT"], false, 7200, 75, 4, undefined],
  ]);
});

test("a new idle: the re-arm (timer_cancel, timer_start) and the call are one retune; within the bucket, the call alone", () => {
  const moved = resolveChanges([rec("off"), rec("retuned", { idleS: 600 }), set("TCP_KEEPIDLE", true, { idleS: 600 })]);
  assert.deepEqual(summary(moved), [["retuned", ["TCP_KEEPIDLE"], true, 600, 75, 9, undefined]]);
  // The timer's records alone (a BPF program's bpf_setsockopt): the same retune, no options.
  assert.deepEqual(summary(resolveChanges([rec("off"), rec("retuned", { idleS: 600 })])), [
    ["retuned", [], true, 600, 75, 9, undefined],
  ]);
});

test("tcpka enable's order, interval, count and idle before SO_KEEPALIVE: one on, by the caller", () => {
  const lines = resolveChanges([
    set("TCP_KEEPINTVL", false, { intervalS: 10, pid: 9, comm: "tcpka" }),
    set("TCP_KEEPCNT", false, { intervalS: 10, count: 6, pid: 9, comm: "tcpka" }),
    set("TCP_KEEPIDLE", false, { intervalS: 10, count: 6, idleS: 60, pid: 9, comm: "tcpka" }),
    rec("on", { intervalS: 10, count: 6, idleS: 60, nextProbeS: 61, pid: 9, comm: "tcpka" }),
    set("SO_KEEPALIVE", true, { intervalS: 10, count: 6, idleS: 60, nextProbeS: 61, pid: 9, comm: "tcpka" }),
  ]);
  assert.deepEqual(summary(lines), [
    ["on", ["TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_KEEPIDLE", "SO_KEEPALIVE"], true, 60, 10, 6, 61],
  ]);
  assert.deepEqual([lines[0]?.pid, lines[0]?.comm], [9, "tcpka"]);
});

test("off: the timer removed and the call are one off; on and off within the window are two lines", () => {
  assert.deepEqual(summary(resolveChanges([rec("off"), set("SO_KEEPALIVE", false)])), [
    ["off", ["SO_KEEPALIVE"], false, 7200, 75, 9, undefined],
  ]);
  const both = resolveChanges([
    rec("on", { nextProbeS: 7200 }),
    set("SO_KEEPALIVE", true),
    rec("off"),
    set("SO_KEEPALIVE", false),
  ]);
  assert.deepEqual(
    both.map((e) => e.kind),
    ["on", "off"],
  );
});

test("SO_KEEPALIVE that changes nothing shows nothing, unless a retune follows it", () => {
  assert.deepEqual(resolveChanges([set("SO_KEEPALIVE", true, { nextProbeS: 50 })]), []);
  assert.deepEqual(resolveChanges([set("SO_KEEPALIVE", false)]), []);
  const node = resolveChanges([
    set("SO_KEEPALIVE", true),
    rec("off"),
    rec("retuned", { idleS: 60 }),
    set("TCP_KEEPIDLE", true, { idleS: 60 }),
    set("TCP_KEEPINTVL", true, { idleS: 60, intervalS: 1 }),
    set("TCP_KEEPCNT", true, { idleS: 60, intervalS: 1, count: 10 }),
  ]);
  assert.deepEqual(summary(node), [
    ["retuned", ["SO_KEEPALIVE", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"], true, 60, 1, 10, undefined],
  ]);
});

test("the records of a group are left as they were (a group held back is resolved again at the next poll)", () => {
  const group = [rec("on", { nextProbeS: 7200 }), set("TCP_KEEPIDLE", true, { idleS: 30 })];
  const copy = structuredClone(group);
  resolveChanges(group);
  assert.deepEqual(group, copy);
});
