/**
 * The library (src/index.ts, dist/index.js for a Node program) exports the engines that the commands call, so
 * that other code (a policy agent, a metrics endpoint) can do what the commands do without going through them.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import * as tcpka from "../../src/index.js";

test("the engines of inspect, enable/disable, enforce, run/trace, sysctl and idle-timeout are exported", () => {
  const engines = {
    inspect: tcpka.inspect,
    summarize: tcpka.summarize,
    chooseProcesses: tcpka.chooseProcesses,
    "LiveSession.matching": tcpka.LiveSession.matching,
    enforceOnCgroup: tcpka.enforceOnCgroup,
    listEnforcements: tcpka.listEnforcements,
    removeEnforcement: tcpka.removeEnforcement,
    preloadOrFallback: tcpka.preloadOrFallback,
    traceProgram: tcpka.traceProgram,
    writeSystemDefaults: tcpka.writeSystemDefaults,
    measureIdleTimeout: tcpka.measureIdleTimeout,
    "EchoServer.listen": tcpka.EchoServer.listen,
  };
  for (const [name, fn] of Object.entries(engines)) assert.equal(typeof fn, "function", name);
});
