/**
 * A peer that vanishes: the lab's cable is pulled (the router drops everything, silently) while a python3
 * client sits in a blocking recv(). With tcpka's keepalive (idle 2s, interval 1s, count 3) recv fails with
 * ETIMEDOUT after idle + interval × count = 5s; with --user-timeout 4s (and a count that alone would take 11s),
 * after 4s; without keepalive it is still blocked after three times as long.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { deadPeerAfter } from "../../src/settings.js";
import { needs, python3 } from "../helpers/env.js";
import { LAB_PEER, Lab, SERVER_IP } from "../helpers/lab.js";
import type { Process } from "../helpers/processes.js";

interface RecvResult {
  errno: string;
  elapsed_s: number;
}

const KEEPALIVE = { keepalive: true, idle: 2, interval: 1, count: 3, userTimeout: 0 };
const WITH_USER_TIMEOUT = { keepalive: true, idle: 2, interval: 1, count: 9, userTimeout: 4000 };

function flags(s: typeof KEEPALIVE): string[] {
  const f = ["--idle", `${s.idle}s`, "--interval", `${s.interval}s`, "--count", String(s.count)];
  return s.userTimeout ? [...f, "--user-timeout", `${s.userTimeout}ms`] : f;
}

async function recvResult(p: Process, timeoutMs: number): Promise<RecvResult> {
  const m = await p.waitFor(/^\{.*\}$/m, timeoutMs);
  return JSON.parse(m[0]) as RecvResult;
}

describe("a peer that vanished (cable pulled) under a blocking recv()", () => {
  test("ETIMEDOUT after idle + interval × count with tcpka run, after the user timeout with --user-timeout, never without", async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "nft", "python3"] })) return;
    const lab = Lab.create(t); // the firewall, with conntrack's default timeout: only the cable matters here
    const py = python3();
    const server = lab.start(lab.server, [py, LAB_PEER, "serve", "7000"]);
    await server.waitFor(/^listening$/m);

    const client = [py, LAB_PEER, "recv", SERVER_IP, "7000"];
    const keepalive = lab.tcpka(lab.client, ["run", ...flags(KEEPALIVE), "--", ...client]);
    const userTimeout = lab.tcpka(lab.client, ["run", ...flags(WITH_USER_TIMEOUT), "--", ...client]);
    const plain = lab.start(lab.client, client);
    await Promise.all([keepalive, userTimeout, plain].map((p) => p.waitFor(/^ready \d+$/m)));
    lab.pullCable();

    const expectKeepalive = deadPeerAfter(KEEPALIVE) as number; // 2 + 1 × 3 = 5
    const expectUserTimeout = deadPeerAfter(WITH_USER_TIMEOUT) as number; // 4: the user timeout, not 2 + 1 × 9
    assert.equal(expectKeepalive, 5);
    assert.equal(expectUserTimeout, 4);

    const [a, b] = await Promise.all([
      recvResult(keepalive, (expectKeepalive + 5) * 1000),
      recvResult(userTimeout, (expectUserTimeout + 5) * 1000),
    ]);
    assert.equal(a.errno, "ETIMEDOUT", JSON.stringify(a));
    assert.ok(a.elapsed_s >= expectKeepalive - 0.5 && a.elapsed_s <= expectKeepalive + 1, `keepalive: ${a.elapsed_s}s`);
    assert.equal(b.errno, "ETIMEDOUT", JSON.stringify(b));
    assert.ok(
      b.elapsed_s >= expectUserTimeout - 0.5 && b.elapsed_s <= expectUserTimeout + 1,
      `user timeout: ${b.elapsed_s}s`,
    );

    // Without keepalive nothing is ever sent on an idle connection, so nothing ever fails.
    const stillBlocked = 3 * expectKeepalive * 1000 - a.elapsed_s * 1000;
    await sleep(Math.max(0, stillBlocked));
    assert.ok(plain.running, `without keepalive recv() returned: ${plain.stdout}`);
    assert.doesNotMatch(plain.stdout, /errno/);

    t.diagnostic(`ETIMEDOUT after ${a.elapsed_s}s (keepalive), ${b.elapsed_s}s (user timeout); no keepalive: blocked`);
    lab.restoreCable();
    plain.kill();
    for (const p of [keepalive, userTimeout]) assert.equal((await p.finish(5000)).code, 0);
  });
});
