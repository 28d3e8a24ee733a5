/**
 * The per-fd work of tcpka enable that two threads share (src/enforce/live/batch.ts, src/enforce/live/helper.ts), on this
 * process's own fds and on loopback connections it makes: the results are the same whichever thread did a
 * chunk, a helper that dies part-way loses nothing, and the apply phase changes exactly the sockets it was
 * given, telling a reused or closed fd from a changed one (also when what now sits at the fd number has the
 * listed inode number but is no socket).
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import {
  applyPhase,
  chunks,
  linksPhase,
  OutcomeReader,
  type Phase,
  type PlanSpec,
} from "../../src/enforce/live/batch.js";
import { HelperThread } from "../../src/enforce/live/helper.js";
import { socketFds } from "../../src/inspect/owners.js";
import { O_PATH } from "../../src/kernel/constants.js";
import { SOCKOPTS } from "../../src/kernel/sockopts.js";
import { getsockoptInt } from "../../src/sys/libc.js";

/** This namespace's defaults, which a socket that never set an option reads. */
const sysctl = (name: string) => Number(readFileSync(`/proc/sys/net/ipv4/tcp_keepalive_${name}`, "utf8"));
const DEFAULT = { idle: sysctl("time"), interval: sysctl("intvl"), count: sysctl("probes") };

const PLAN: PlanSpec = { disable: false, settings: { idle: 7, interval: 3, count: 4 }, mode: "force" };

let server: net.Server;
const clients: net.Socket[] = [];
const accepted: net.Socket[] = [];
let dir: string;

function fdOf(s: net.Socket): number {
  return (s as unknown as { _handle: { fd: number } })._handle.fd;
}

function option(fd: number, name: keyof typeof SOCKOPTS): number {
  const [level, opt] = SOCKOPTS[name];
  return getsockoptInt(fd, level, opt);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "tcpka-batch-"));
  server = net.createServer((s) => accepted.push(s));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  for (let i = 0; i < 8; i++) {
    const c = net.connect(port, "127.0.0.1");
    await once(c, "connect");
    clients.push(c);
  }
  while (accepted.length < clients.length) await new Promise((r) => setTimeout(r, 5));
});

after(() => {
  for (const s of [...clients, ...accepted]) s.destroy();
  server.close();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * This process's sockets and its stdio, repeated until there are at least n entries, with the inode a plain
 * scan reports (0 for what is not a socket). Other fds come and go (the scan's own directory fd, for one).
 */
function ownEntries(n: number): { pids: number[]; fds: number[]; want: number[] } {
  const inodes = new Map(socketFds(process.pid) ?? []);
  const fds = [0, 1, 2, ...inodes.keys()];
  const out = { pids: [] as number[], fds: [] as number[], want: [] as number[] };
  while (out.fds.length < n) {
    for (const fd of fds) {
      out.pids.push(process.pid);
      out.fds.push(fd);
      out.want.push(inodes.get(fd) ?? 0);
    }
  }
  return out;
}

function doneBy(p: Phase): Set<number> {
  return new Set(Array.from({ length: chunks(p) }, (_, c) => Atomics.load(p.done, c)));
}

describe("links phase", () => {
  test("every entry gets the inode a plain scan reports, and both threads take part", async () => {
    const helper = new HelperThread();
    try {
      helper.start();
      assert.equal(await helper.ready(), true, "the helper thread starts");
      const e = ownEntries(40_000);
      assert.ok(e.want.filter((x) => x > 0).length >= 16, "the connections' sockets are among the fds");
      // The split between the threads depends on scheduling: a run where one did everything proves nothing.
      let who = new Set<number>();
      for (let attempt = 0; attempt < 5 && who.size < 2; attempt++) {
        const p = linksPhase(e.pids, e.fds);
        await helper.run(p);
        assert.deepEqual(Array.from(p.inodes), e.want);
        who = doneBy(p);
      }
      assert.deepEqual([...who].sort(), [1, 2], "chunks done by the main thread (1) and by the helper (2)");
    } finally {
      await helper.close();
    }
  });

  test("a helper that claims a chunk and dies: the main thread does that chunk too", async () => {
    const script = join(dir, "dies.mjs");
    writeFileSync(
      script,
      `import { parentPort } from "node:worker_threads";
parentPort.postMessage({ ready: true });
parentPort.on("message", (p) => { Atomics.add(p.control, 0, 1); process.exit(3); });
`,
    );
    const helper = new HelperThread(pathToFileURL(script));
    try {
      helper.start();
      assert.equal(await helper.ready(), true);
      const e = ownEntries(5_000);
      const p = linksPhase(e.pids, e.fds);
      const flag = new Int32Array(new SharedArrayBuffer(4));
      await helper.run(p, () => {
        // Let the helper claim its chunk before this thread starts.
        for (let i = 0; i < 500 && Atomics.load(p.control, 0) === 0; i++) Atomics.wait(flag, 0, 0, 10);
        assert.notEqual(Atomics.load(p.control, 0), 0, "the helper claimed a chunk");
      });
      assert.deepEqual(Array.from(p.inodes), e.want);
      assert.deepEqual([...doneBy(p)], [1], "every chunk done, all by the main thread");
    } finally {
      await helper.close();
    }
  });

  test("a helper that cannot start: the main thread does everything", async () => {
    const helper = new HelperThread(pathToFileURL(join(dir, "missing.mjs")));
    try {
      helper.start();
      assert.equal(await helper.ready(), false);
      const e = ownEntries(3_000);
      const p = linksPhase(e.pids, e.fds);
      await helper.run(p);
      assert.deepEqual(Array.from(p.inodes), e.want);
    } finally {
      await helper.close();
    }
  });
});

describe("the helper thread's end", () => {
  test("closed while it is still loading: it is let finish loading first", async () => {
    // Terminating a worker while koffi sets itself up aborts the whole process (SIGABRT, "FATAL ERROR:
    // Error::ThrowAsJavaScriptException napi_throw"): here in about one run in ten of enable on 3,000 sockets, which
    // closed the helper 45-50 ms after start(), in a window of about 2 ms. This helper takes 300 ms to load and
    // notes when it is done; close() right after start() must not cut that short.
    const marker = join(dir, "loaded");
    const script = join(dir, "slow.mjs");
    writeFileSync(
      script,
      `import { writeFileSync } from "node:fs";
import { parentPort } from "node:worker_threads";
const until = Date.now() + 300;
while (Date.now() < until) {} // loading, as koffi's module set-up does, where termination is fatal
writeFileSync(${JSON.stringify(marker)}, "loaded");
parentPort.postMessage({ ready: true });
`,
    );
    const helper = new HelperThread(pathToFileURL(script));
    helper.start();
    await helper.close();
    assert.equal(readFileSync(marker, "utf8"), "loaded");
  });
});

describe("apply phase", () => {
  test("changes the sockets given; a reused fd number or a closed fd is reported gone and left alone", async () => {
    const inodes = new Map(socketFds(process.pid) ?? []);
    const targets = clients.slice(0, 4).map(fdOf);
    const bystander = fdOf(clients[4] as net.Socket);
    const closed = 65_000; // no fd of this process: it closed since the listing
    const jobs = [
      ...targets.map((fd) => [fd, inodes.get(fd) as number]),
      [bystander, 1], // listed as another socket: the fd number was reused since
      [closed, 12_345],
    ] as [number, number][];
    const helper = new HelperThread(); // not started: this thread alone
    const p = applyPhase(
      jobs.map(() => process.pid),
      jobs.map(([fd]) => fd),
      jobs.map(([, inode]) => inode),
      PLAN,
      false,
    );
    await helper.run(p);
    const reader = new OutcomeReader(PLAN);
    const outcomes = jobs.map((_, i) => reader.read(p, i));

    for (const [i, fd] of targets.entries()) {
      const o = outcomes[i];
      assert.equal(o?.result, "changed", JSON.stringify(o));
      assert.deepEqual(
        o?.changes.map((c) => `${c.option} ${c.from}→${c.to}`),
        [
          `interval ${DEFAULT.interval}→3`,
          `count ${DEFAULT.count}→4`,
          `idle ${DEFAULT.idle}→7`,
          "keepalive 0→1",
        ].filter((c) => !/ (\d+)→\1$/.test(c)),
      );
      assert.deepEqual(
        [option(fd, "keepalive"), option(fd, "idle"), option(fd, "interval"), option(fd, "count")],
        [1, 7, 3, 4],
        "as the socket itself reads",
      );
    }
    const reused = outcomes[targets.length];
    assert.equal(reused?.result, "gone");
    assert.equal(reused?.result === "gone" && reused.error.errnoName, "ESTALE");
    assert.equal(option(bystander, "keepalive"), 0, "the socket now at that fd number is untouched");
    assert.equal(option(bystander, "idle"), DEFAULT.idle);
    const gone = outcomes[targets.length + 1];
    assert.equal(gone?.result, "gone");
    assert.equal(gone?.result === "gone" && gone.error.errnoName, "EBADF");
  });

  test("a duplicate with the listed inode number that is no sockfs socket is reported reused, never read", async () => {
    // A regular file, and a Unix socket's file opened O_PATH (S_ISSOCK, but on this file system, not on sockfs),
    // each listed with its own inode number, as if the fd had been a socket with that number when it was listed.
    const file = join(dir, "plain");
    writeFileSync(file, "");
    const path = join(dir, "unix.sock");
    const unix = net.createServer().listen(path);
    await once(unix, "listening");
    const fds = [openSync(file, "r"), openSync(path, O_PATH)];
    try {
      const p = applyPhase(
        fds.map(() => process.pid),
        fds,
        fds.map((fd) => fstatSync(fd).ino),
        PLAN,
        false,
      );
      await new HelperThread().run(p);
      const reader = new OutcomeReader(PLAN);
      for (const i of fds.keys()) {
        const o = reader.read(p, i);
        assert.equal(o.result, "gone", JSON.stringify(o));
        assert.equal(
          o.result === "gone" && `${o.error.syscall} ${o.error.errnoName}`,
          "pidfd_getfd ESTALE",
          "refused as a reused fd before any getsockopt",
        );
      }
    } finally {
      for (const fd of fds) closeSync(fd);
      unix.close();
    }
  });

  test("a dry run reads and plans, and changes nothing", async () => {
    const inodes = new Map(socketFds(process.pid) ?? []);
    const fd = fdOf(clients[6] as net.Socket);
    const p = applyPhase([process.pid], [fd], [inodes.get(fd) as number], PLAN, true);
    await new HelperThread().run(p);
    const o = new OutcomeReader(PLAN).read(p, 0);
    assert.equal(o.result, "would change");
    assert.deepEqual(o.changes.at(-1), { option: "keepalive", from: 0, to: 1 });
    assert.equal(option(fd, "keepalive"), 0);
    assert.equal(option(fd, "idle"), DEFAULT.idle);
  });
});

describe("a paced apply phase", () => {
  const more: net.Socket[] = [];
  after(() => {
    for (const s of more) s.destroy();
  });

  test("its k-th change waits k steps, over both threads; no turn for a socket left as it is, nor in a dry run", async () => {
    const extra = net.createServer((s) => more.push(s));
    extra.listen(0, "127.0.0.1");
    await once(extra, "listening");
    const { port } = extra.address() as net.AddressInfo;
    for (let i = 0; i < 300; i++) {
      const c = net.connect(port, "127.0.0.1");
      await once(c, "connect");
      more.push(c);
    }
    while (more.length < 600) await new Promise((r) => setTimeout(r, 5));
    extra.close();
    const inodes = new Map(socketFds(process.pid) ?? []);
    const fds = more.map(fdOf);
    const phase = (dryRun: boolean, stepMs: number) =>
      applyPhase(
        fds.map(() => process.pid),
        fds,
        fds.map((fd) => inodes.get(fd) as number),
        PLAN,
        dryRun,
        stepMs,
      );
    const timed = async (p: Phase) => {
      const start = performance.now();
      await helper.run(p);
      return performance.now() - start;
    };
    const helper = new HelperThread();
    try {
      helper.start();
      assert.equal(await helper.ready(), true);
      const dry = phase(true, 1000);
      assert.ok((await timed(dry)) < 500, "a dry run is not paced");
      assert.equal(Atomics.load(dry.control, 1), 0, "and takes no turn");

      const step = 0.25;
      const p = phase(false, step);
      const ms = await timed(p);
      assert.ok(ms >= (fds.length - 1) * step - 1, `600 changes, one per ${step} ms, took ${ms.toFixed(1)} ms`);
      assert.equal(Atomics.load(p.control, 1), fds.length, "each change took a turn");
      const reader = new OutcomeReader(PLAN);
      assert.deepEqual(new Set(fds.map((_, i) => reader.read(p, i).result)), new Set(["changed"]));
      assert.deepEqual([...doneBy(p)].sort(), [1, 2], "both threads took part");
      for (const fd of fds) assert.deepEqual([option(fd, "keepalive"), option(fd, "idle")], [1, 7]);

      const again = phase(false, 1000);
      assert.ok((await timed(again)) < 500, "nothing to change: no wait");
      assert.equal(Atomics.load(again.control, 1), 0);
    } finally {
      await helper.close();
    }
  });
});
