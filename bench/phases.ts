/**
 * Where `tcpka ls --json` spends its time: the steps of inspect() (src/inspect/connections.ts) timed one by one
 * in a fresh process (cold JIT, like the CLI), then inspect() itself and the JSON text of its connections. Run
 * by ls.ts as `node dist-test/bench/phases.js`; prints one PhaseResult as JSON on stdout. Everything timed is
 * tcpka's own code, except the two baselines dump_raw and readdir_fd (the kernel's share of a step). The phases
 * are listed, with what each one is, in PHASES in ls.ts.
 */
import { closeSync, openSync, readdirSync } from "node:fs";
import { performance } from "node:perf_hooks";

export interface PhaseResult {
  sockets: number;
  /** milliseconds per phase */
  ms: Record<string, number>;
  /** heapUsed growth (MB) kept alive by what a phase built */
  heapMb: Record<string, number>;
}

const bootMs = performance.now();
const t0 = performance.now();
const { DEFAULT_FILTER } = await import("../src/filter.js");
const { readSockets } = await import("../src/inspect/sockets.js");
const { findOwners } = await import("../src/inspect/owners.js");
const { listPids } = await import("../src/inspect/processes.js");
const { readKeepAlive } = await import("../src/inspect/exact.js");
const { inspect } = await import("../src/inspect/connections.js");
const { readSystemDefaults } = await import("../src/inspect/sysctl.js");
const { SocketBorrower } = await import("../src/sys/pidfd.js");
const { inetDiagDump } = await import("../src/sys/netlink.js");
const { AF_INET, AF_INET6 } = await import("../src/kernel/constants.js");
const { addToSummary, emptySummary } = await import("../src/inspect/summary.js");
const { writeConnectionJson } = await import("../src/ui/connections.js");
const { Out } = await import("../src/ui/format.js");

const ms: Record<string, number> = { boot: bootMs, import: performance.now() - t0 };
const heapMb: Record<string, number> = {};
let lastHeap = process.memoryUsage().heapUsed;

function time<T>(name: string, fn: () => T, keepsHeap = false): T {
  const t = performance.now();
  const r = fn();
  ms[name] = performance.now() - t;
  if (keepsHeap) {
    const h = process.memoryUsage().heapUsed;
    heapMb[name] = (h - lastHeap) / 1e6;
    lastHeap = h;
  }
  return r;
}

const states = DEFAULT_FILTER.states;
time("sysctl", () => readSystemDefaults());
time("dump_raw", () => {
  let n = 0;
  for (const family of [AF_INET, AF_INET6]) inetDiagDump({ family, states }, () => n++);
  return n;
});
const sockets = time("dump_parse", () => readSockets({ states }), true);
const pids = time("list_pids", () => listPids());
time("readdir_fd", () => {
  for (const pid of pids) {
    try {
      readdirSync(`/proc/${pid}/fd`);
    } catch {
      // gone, or not readable
    }
  }
});
const inodes = new Set(sockets.map((s) => s.inode));
const { owners } = time("find_owners", () => findOwners(inodes, pids), true);

const borrower = new SocketBorrower();
function eachOwned(fn: (fd: number) => unknown): void {
  for (const s of sockets) {
    const o = owners.get(s.inode)?.[0];
    if (!o) continue;
    try {
      borrower.with(o.pid, o.fd, s.inode, fn);
    } catch {
      // gone since the scan: inspect() reports it, here it is only not timed
    }
  }
}
time("borrow", () => eachOwned(() => 0));
time("read_keepalive", () => eachOwned(readKeepAlive));
borrower.close();

const { connections } = time("inspect", () => inspect(DEFAULT_FILTER), true);
const devnull = openSync("/dev/null", "w");
time("json", () => {
  const out = new Out(devnull);
  const sum = emptySummary();
  for (const c of connections) {
    out.write(",\n");
    writeConnectionJson(out, c);
    addToSummary(sum, c);
  }
  out.end();
});
closeSync(devnull);

const result: PhaseResult = { sockets: connections.length, ms, heapMb };
process.stdout.write(`${JSON.stringify(result)}\n`);
