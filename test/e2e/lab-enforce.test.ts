/**
 * The firewall lab's first promise, kept by `tcpka enforce` (issue 15): behind a stateful firewall that forgets
 * connections idle for 5 s, a client left idle for 8 s is dead afterwards, unless it runs in a cgroup where tcpka
 * enforces keepalive (first probe after 2 s). Real clients: psql against a real PostgreSQL server, and a Java
 * program that, right after connecting, turns keepalive off and sets TCP_KEEPIDLE to 7200 s itself
 * (test/fixtures/lab/IdleClient.java): the setsockopt program keeps the rule through both calls. Each client also
 * runs outside the cgroup, where the firewall drops it. tcpka enforce runs in the host's namespaces (where the
 * cgroup2 mount and /sys/fs/bpf are); the clients run in the cgroup and in the lab's client namespace.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { TestCgroup } from "../helpers/cgroup.js";
import { compileJava } from "../helpers/compile.js";
import { afterEnforceTests, enforce } from "../helpers/enforce.js";
import { needs, python3 } from "../helpers/env.js";
import { LAB_PEER, Lab, postgresBin, SERVER_IP, startPostgres } from "../helpers/lab.js";
import type { Netns } from "../helpers/netns.js";
import { Process } from "../helpers/processes.js";
import { type Scope, tempDir } from "../helpers/scope.js";

afterEnforceTests();

const FIREWALL_TIMEOUT_S = 5;
const IDLE_S = 8;
const KA = ["--idle", "2s", "--interval", "1s", "--count", "3"];

/** `argv` in the lab namespace `ns` and in the cgroup `cg` (there before its first instruction); killed at the end. */
function startIn(scope: Scope, cg: TestCgroup, ns: Netns, argv: readonly string[]): Process {
  const p = new Process(cg.spawn(["ip", "netns", "exec", ns.name, ...argv]), argv.join(" "));
  scope.after(() => p.kill());
  return p;
}

describe(`enforce behind a firewall that forgets connections idle ${FIREWALL_TIMEOUT_S}s`, {
  concurrency: true,
}, () => {
  test(`a Java client that turns keepalive off after connecting, idle ${IDLE_S}s: dead outside, alive in the cgroup`, async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "nft", "python3", "javac", "java"] })) return;
    const dir = tempDir(t);
    compileJava(dir, "lab/IdleClient.java");
    const lab = Lab.create(t, { idleTimeout: FIREWALL_TIMEOUT_S });
    const cg = TestCgroup.create(t);
    enforce(cg, KA);
    const server = lab.start(lab.server, [python3(), LAB_PEER, "serve", "7000"]);
    await server.waitFor(/^listening$/m);

    const java = ["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", dir, "IdleClient"];
    const client = [...java, SERVER_IP, "7000", String(IDLE_S), "loose"];
    const plain = lab.start(lab.client, client);
    const kept = startIn(t, cg, lab.client, client);
    await Promise.all([plain, kept].map((p) => p.waitFor(/^ready \d+$/m, 30_000)));
    for (const p of [plain, kept]) p.send("go\n");
    const [without, within] = await Promise.all(
      [plain, kept].map(async (p) => JSON.parse((await p.waitFor(/^\{.*\}$/m, (IDLE_S + 10) * 1000))[0])),
    );
    assert.equal(without.alive, false, `outside the cgroup the firewall forgot it: ${JSON.stringify(without)}`);
    assert.deepEqual(within, { alive: true }, `in the enforced cgroup; stderr: ${kept.stderr}`);
  });

  test(`psql idle ${IDLE_S}s between two queries: lost outside, fine in the cgroup`, async (t) => {
    const bin = postgresBin();
    const initdb = bin ? join(bin, "initdb") : "initdb";
    if (!needs(t, { root: true, tools: ["ip", "nft", "setpriv", initdb] })) return;
    const lab = Lab.create(t, { idleTimeout: FIREWALL_TIMEOUT_S });
    const cg = TestCgroup.create(t);
    enforce(cg, KA);
    const pg = startPostgres(lab);

    const plain = lab.start(lab.client, [pg.psql, ...pg.psqlArgs]);
    const kept = startIn(t, cg, lab.client, [pg.psql, ...pg.psqlArgs]);
    for (const p of [plain, kept]) p.send("SELECT 'first';\n");
    await Promise.all([plain, kept].map((p) => p.waitFor(/^first$/m, 15_000)));

    await sleep(IDLE_S * 1000);
    for (const p of [plain, kept]) p.send("SELECT 'second';\n");
    await kept.waitFor(/^second$/m, 3000);
    // Without keepalive the query's packets are dropped: psql waits on retransmissions (for many minutes).
    await assert.rejects(plain.waitFor(/^second$/m, 4000), /no \/\^second\$\/m after/);
    plain.kill();
    kept.send("\\q\n");
    const done = await kept.finish(10_000);
    assert.equal(done.code, 0, done.stderr);
  });
});
