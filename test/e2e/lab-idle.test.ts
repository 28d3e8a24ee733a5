/**
 * The firewall lab's first promise: behind a stateful firewall that forgets connections idle for 5s, a
 * connection left idle for 8s is dead afterwards — unless tcpka turned keepalive on (first probe after 2s),
 * with `tcpka run` at start or `tcpka enable --pid` on the running program. Real peers: python3 client and
 * server without keepalive of their own, and psql against a real PostgreSQL server.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { needs, python3 } from "../helpers/env.js";
import { LAB_PEER, Lab, postgresBin, SERVER_IP, startPostgres } from "../helpers/lab.js";
import { TCPKA } from "../helpers/paths.js";
import type { Process } from "../helpers/processes.js";

/** conntrack's established timeout on the router, and how long the clients stay idle. */
const FIREWALL_TIMEOUT_S = 5;
const IDLE_S = 8;
/** Keepalive well below the firewall's timeout: a probe after 2s of silence refreshes its entry. */
const KA = ["--idle", "2s", "--interval", "1s", "--count", "3"];

interface IdleResult {
  alive: boolean;
  error?: string;
}

async function result(p: Process): Promise<IdleResult> {
  const m = await p.waitFor(/^\{.*\}$/m, (IDLE_S + 10) * 1000);
  return JSON.parse(m[0]) as IdleResult;
}

describe(`behind a firewall that forgets connections idle ${FIREWALL_TIMEOUT_S}s`, { concurrency: true }, () => {
  test(`python3 client idle ${IDLE_S}s: dead without tcpka, alive with tcpka run and with tcpka enable --pid`, async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "nft", "python3"] })) return;
    const lab = Lab.create(t, { idleTimeout: FIREWALL_TIMEOUT_S });
    const py = python3();
    const server = lab.start(lab.server, [py, LAB_PEER, "serve", "7000"]);
    await server.waitFor(/^listening$/m);

    const client = [py, LAB_PEER, "idle", SERVER_IP, "7000", String(IDLE_S)];
    const plain = lab.start(lab.client, client);
    const run = lab.tcpka(lab.client, ["run", ...KA, "--", ...client]);
    const enabled = lab.start(lab.client, client);
    const ready = await Promise.all([plain, run, enabled].map((p) => p.waitFor(/^ready (\d+)$/m)));

    // tcpka enable on the running program, from inside the client's namespace, before the firewall forgets it.
    const pid = ready[2]![1]!;
    const enable = await lab.run(lab.client, [process.execPath, TCPKA, "enable", "--pid", pid, ...KA]);
    assert.equal(enable.code, 0, `tcpka enable: ${enable.stdout}${enable.stderr}`);

    for (const p of [plain, run, enabled]) p.send("go\n");
    const [without, withRun, withEnable] = await Promise.all([plain, run, enabled].map(result));
    assert.equal(without!.alive, false, `without keepalive the firewall forgot it: ${JSON.stringify(without)}`);
    assert.deepEqual(withRun, { alive: true }, `tcpka run; stderr: ${run.stderr}`);
    assert.deepEqual(withEnable, { alive: true }, "tcpka enable --pid");
  });

  test(`psql idle ${IDLE_S}s between two queries: lost without tcpka, fine with tcpka run`, async (t) => {
    const bin = postgresBin();
    const initdb = bin ? join(bin, "initdb") : "initdb";
    if (!needs(t, { root: true, tools: ["ip", "nft", "setpriv", initdb] })) return;
    const lab = Lab.create(t, { idleTimeout: FIREWALL_TIMEOUT_S });
    const pg = startPostgres(lab);

    const plain = lab.start(lab.client, [pg.psql, ...pg.psqlArgs]);
    const kept = lab.tcpka(lab.client, ["run", ...KA, "--", pg.psql, ...pg.psqlArgs]);
    for (const p of [plain, kept]) p.send("SELECT 'first';\n");
    await Promise.all([plain, kept].map((p) => p.waitFor(/^first$/m, 15_000)));

    await sleep(IDLE_S * 1000);
    for (const p of [plain, kept]) p.send("SELECT 'second';\n");
    await kept.waitFor(/^second$/m, 3000);
    // Without keepalive the query's packets are dropped: psql waits on retransmissions (for many minutes).
    // Judged by a deadline, generous next to the sub-millisecond round trip of the lab.
    await assert.rejects(plain.waitFor(/^second$/m, 4000), /no \/\^second\$\/m after/);
    plain.kill();
    const done = await kept.finish(10_000);
    assert.equal(done.code, 0, done.stderr);
  });
});
