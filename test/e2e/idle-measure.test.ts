/**
 * The idle-timeout measurement and the echo server as the library exports them (dist/index.js), driven the way
 * an agent would: callbacks for progress, an AbortSignal to stop. In the firewall lab: the bounds bracket
 * conntrack's timeout and every verdict arrives through onResult; an abort ends the measurement at once with
 * what it knows and closes its connections; the server's runUntil(signal) drops what it still holds. And the
 * command: Ctrl-C still ends `tcpka idle-timeout` with what is known so far and exit code 130.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import { needs } from "../helpers/env.js";
import { Lab, SERVER_IP } from "../helpers/lab.js";
import { REPO, TCPKA } from "../helpers/paths.js";
import { cleanEnv } from "../helpers/processes.js";

const PORT = 7007;
const LIBRARY = pathToFileURL(join(REPO, "dist", "index.js")).href;

/**
 * An EchoServer on every address; prints "listening ADDRESS", then "open N" / "close N" (how many so far) for
 * its connections, and "stopped" once runUntil() returned, which happens when its stdin ends.
 */
const SERVER = `
import { EchoServer } from ${JSON.stringify(LIBRARY)};
let opened = 0, closed = 0;
const server = await EchoServer.listen({ host: undefined, port: ${PORT} }, {
  closeIdleMs: 600_000,
  onConnection: (event) => {
    if (event === "open") console.log("open", ++opened);
    if (event === "close") console.log("close", ++closed);
  },
});
console.log("listening", server.address);
const stop = new AbortController();
process.stdin.on("end", () => stop.abort()).resume();
await server.runUntil(stop.signal);
console.log("stopped");
`;

/**
 * measureIdleTimeout to the lab's server, the callbacks logged; with ABORT_AFTER=N, an AbortController stops it
 * 20ms after the Nth result. Prints one JSON line; with HOLD, then keeps one more connection open until the server
 * closes it ("held", then "closed").
 */
const CLIENT = `
import { connect } from "node:net";
import { measureIdleTimeout } from ${JSON.stringify(LIBRARY)};
const abortAfter = Number(process.env.ABORT_AFTER ?? 0);
const events = [];
const stop = new AbortController();
let abortedAt = 0;
const m = await measureIdleTimeout({
  host: ${JSON.stringify(SERVER_IP)}, port: ${PORT}, maxMs: 15 * 60_000, parallel: 8, probeTimeoutMs: 1500,
  signal: stop.signal,
  onStart: (search) => events.push({ start: true, found: search.found }),
  onResult: (p, search) => {
    events.push({ idleMs: p.idleMs, alive: p.alive, longestAlive: search.longestAlive });
    // Between two probes, as Ctrl-C would come: nothing else wakes the measurement then.
    if (events.length - 1 === abortAfter) {
      setTimeout(() => {
        abortedAt = performance.now();
        stop.abort();
      }, 20);
    }
  },
});
const s = m.search;
console.log(JSON.stringify({
  events, probes: m.probes, connections: m.connections, interrupted: m.interrupted, found: s.found, done: s.done,
  longestAlive: s.longestAlive, shortestDropped: s.found ? s.shortestDropped : null,
  afterAbortMs: abortedAt ? performance.now() - abortedAt : null,
}));
if (process.env.HOLD) {
  const c = connect(${PORT}, ${JSON.stringify(SERVER_IP)}, () => console.log("held"));
  c.on("close", () => console.log("closed"));
}
`;

interface ClientReport {
  events: ({ start: true; found: boolean } | { idleMs: number; alive: boolean; longestAlive: number })[];
  probes: { idleMs: number; alive: boolean }[];
  connections: number;
  interrupted: boolean;
  found: boolean;
  done: boolean;
  longestAlive: number;
  shortestDropped: number | null;
  afterAbortMs: number | null;
}

function node(script: string): string[] {
  return [process.execPath, "--input-type=module", "-e", script];
}

async function startServer(lab: Lab) {
  const server = lab.start(lab.server, node(SERVER));
  await server.waitFor(/^listening \S+:7007$/m);
  return server;
}

describe("the idle-timeout measurement as a library", { concurrency: true }, () => {
  test("conntrack timeout 4s: bounds within 1s of it; onStart first, then every verdict through onResult", async (t) => {
    if (!needs(t, { root: true, tools: ["ip", "nft"] })) return;
    const lab = Lab.create(t, { idleTimeout: 4 });
    await startServer(lab);
    const r = await lab.run(lab.client, node(CLIENT), { timeoutMs: 30_000 });
    assert.equal(r.code, 0, r.stderr);
    const m = JSON.parse(r.stdout) as ClientReport;
    assert.equal(m.interrupted, false);
    assert.equal(m.done, true);
    assert.ok(m.longestAlive < 4000 && m.longestAlive >= 3000, `longest alive ${m.longestAlive} ms`);
    const dropped = m.shortestDropped as number;
    assert.ok(dropped >= 4000 && dropped <= 5000, `shortest dropped ${dropped} ms`);
    assert.deepEqual(m.events[0], { start: true, found: false });
    const results = m.events.slice(1);
    assert.ok(!results.some((e) => "start" in e), "onStart once");
    // Every probe was reported, in order, as it came: the search had already counted it.
    assert.deepEqual(
      results.map((e) => "idleMs" in e && { idleMs: e.idleMs, alive: e.alive }),
      m.probes.map((p) => ({ idleMs: p.idleMs, alive: p.alive })),
    );
    for (const e of results) if ("idleMs" in e && e.alive) assert.ok(e.longestAlive >= e.idleMs);
  });

  test("an abort ends it at once: interrupted, the verdicts so far, every connection closed", async (t) => {
    if (!needs(t, { root: true, tools: ["ip"] })) return;
    const lab = Lab.create(t, { firewall: false });
    const server = await startServer(lab);
    const client = lab.start(lab.client, node(CLIENT), { env: cleanEnv({ ABORT_AFTER: "2", HOLD: "1" }) });
    const line = await client.waitFor(/^\{.*\}$/m, 30_000);
    const m = JSON.parse(line[0]) as ClientReport;
    assert.equal(m.interrupted, true);
    assert.equal(m.done, false);
    assert.equal(m.found, false, "nothing drops on this path");
    assert.equal(m.probes.length, 2, "no verdict after the abort");
    // The next probe was due about 220ms later: it returned on the abort, not on the next timer.
    assert.ok((m.afterAbortMs as number) < 100, `returned ${m.afterAbortMs} ms after the abort`);
    // The server saw each of the measurement's connections close (the extra one is the held connection).
    await server.waitFor(new RegExp(`^close ${m.connections}$`, "m"));
    await client.waitFor(/^held$/m);
    await server.waitFor(new RegExp(`^open ${m.connections + 1}$`, "m"));
    assert.doesNotMatch(server.stdout, new RegExp(`^close ${m.connections + 1}$`, "m"));

    // runUntil(signal) returns once the signal aborts, after dropping the connection still open.
    const done = await server.finish(10_000);
    assert.equal(done.code, 0, done.stderr);
    assert.match(done.stdout, /^stopped$/m);
    assert.match(done.stdout, new RegExp(`^close ${m.connections + 1}$`, "m"));
    await client.waitFor(/^closed$/m);
  });

  test("tcpka idle-timeout, Ctrl-C: what is known so far, exit code 130", async (t) => {
    if (!needs(t, { root: true, tools: ["ip"] })) return;
    const lab = Lab.create(t, { firewall: false });
    const echo = lab.tcpka(lab.server, ["echo", "--listen", String(PORT)]);
    await echo.waitFor(/listening on \S+:7007/);
    const cli = lab.start(lab.client, [process.execPath, TCPKA, "idle-timeout", `${SERVER_IP}:${PORT}`]);
    await cli.waitFor(/idle [\d.]+s: alive/, 15_000, "stderr");
    cli.kill("SIGINT");
    const r = await cli.finish(10_000);
    assert.equal(r.code, 130, r.stderr);
    assert.match(
      r.stdout,
      /^interrupted after [\d.]+m?s\nno idle timeout seen yet: connections idle for [\d.]+m?s still answered\n$/,
    );
  });
});
