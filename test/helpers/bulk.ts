/**
 * Bulk keepalive changes, reproduced (issue 14): thousands of idle loopback connection ends in a network namespace
 * the test owns, held by several holder processes (test/fixtures/bulk_holder.c; the hard RLIMIT_NOFILE of 20,000
 * caps one process), and a probe sampler inside the same namespace (test/fixtures/ka_sampler.c) that counts the
 * keepalive probes per timer tick and softnet's drops. The holders say from inside how many of their connections
 * died and what getsockopt reads on every end; they can also change their own sockets in-process (the lab's
 * strategies, without tcpka). Everything runs inside `ns` and is killed by pid when the namespace goes.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { compileC } from "./compile.js";
import type { Netns } from "./netns.js";
import type { Process } from "./processes.js";
import { type Scope, tempDir } from "./scope.js";

/** One holder keeps at most this many ends (2 per connection), below the hard RLIMIT_NOFILE of 20,000. */
export const MAX_ENDS_PER_HOLDER = 18_000;

/**
 * net.core.netdev_max_backlog: how many packets one CPU's softnet backlog (input_pkt_queue) holds before
 * enqueue_to_backlog (net/core/dev.c) drops. It is global (init_net only), so a test reads it and never sets it.
 */
export function netdevMaxBacklog(): number {
  return Number(readFileSync("/proc/sys/net/core/netdev_max_backlog", "utf8").trim());
}

/**
 * The most keepalive probes that a bulk change may make the kernel send in one timer tick (4 ms at HZ=250) in the
 * namespace: half of netdev_max_backlog, as tcpka's pace allows (src/enforce/live/spread.ts), or, when that cannot
 * be met, 20 % above the floor that no spread can beat, `floor` = N × G / idle (tcpka's window stops two granules
 * short of the idle, 3 % more at 40,000 ends and a 2 s idle, and its turns come late by up to a few %; an answered socket probes every
 * idle seconds, so N sockets fill idle / G buckets of the timer wheel at best). One tick's probes all wait in one
 * CPU's input_pkt_queue (the TIMER softirq runs before NET_RX), and the lab saw drops from about
 * netdev_max_backlog probes per tick on one CPU.
 */
export function probesPerTickBound(floor: number): number {
  return Math.max(Math.floor(netdevMaxBacklog() / 2), Math.ceil(1.2 * floor));
}

/** How an end's keepalive is reported by its holder: SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT, TCP_USER_TIMEOUT (ms). */
export interface EndSettings {
  keepalive: number;
  idle: number;
  interval: number;
  count: number;
  userTimeout: number;
}

function sameSettings(a: EndSettings, b: EndSettings): boolean {
  return (
    a.keepalive === b.keepalive &&
    a.idle === b.idle &&
    a.interval === b.interval &&
    a.count === b.count &&
    a.userTimeout === b.userTimeout
  );
}

/** What the holders say from inside, added up. */
export interface BulkReport {
  ends: number;
  /** Connections one of whose ends is no longer ESTABLISHED (tcp_info). */
  lost: number;
  /** Ends no longer ESTABLISHED, by the first error they showed (SO_ERROR). */
  dead: number;
  etimedout: number;
  reset: number;
  otherError: number;
  /** Each distinct tuple getsockopt read, with how many ends have it. */
  settings: (EndSettings & { ends: number })[];
}

/** How the holders change their own sockets in the lab (bulk_holder.c's `apply`). */
export interface InProcessChange {
  mode: "ka-first" | "opts-first" | "reset" | "idle-only";
  idle: number;
  interval: number;
  count: number;
  /** Pace the changes over this many ms in all (split evenly between the holders, one after the other). */
  windowMs?: number;
  /** Threads per holder, each pinned to a CPU of its own (t mod ncpu). */
  threads?: number;
  /** Pin thread t to CPU (cpu + t) mod ncpu, even a single thread. */
  cpu?: number;
  /** End k gets idle − (k mod (jitter + 1)), never below 1 s. */
  jitter?: number;
}

export interface BulkOptions {
  /** Connection ends in all (2 per connection). */
  ends: number;
  /** SO_KEEPALIVE on every end at the namespace's defaults (7200 s) from the start. */
  keepalive?: boolean;
  /** How many holders share the ends (default: at least 4, and as many as RLIMIT_NOFILE needs). */
  holders?: number;
}

/** The compiled fixtures of one test, in a directory removed when its scope ends. */
function binaries(scope: Scope): { holder: string; sampler: string } {
  const dir = tempDir(scope, { readable: true });
  return {
    holder: compileC(dir, "bulk_holder.c", "bulk_holder", ["-pthread"]),
    sampler: compileC(dir, "ka_sampler.c", "ka_sampler"),
  };
}

export class Bulk {
  private constructor(
    readonly holders: readonly Process[],
    readonly ends: number,
    private readonly sampler: string,
    private readonly ns: Netns,
  ) {}

  /** Start the holders inside `ns` and wait until every connection is up. */
  static async start(scope: Scope, ns: Netns, opts: BulkOptions): Promise<Bulk> {
    const bin = binaries(scope);
    const count = opts.holders ?? Math.max(4, Math.ceil(opts.ends / MAX_ENDS_PER_HOLDER));
    const connections = opts.ends / 2;
    assert.ok(Number.isInteger(connections) && connections >= count, `${opts.ends} ends over ${count} holders`);
    const holders: Process[] = [];
    for (let i = 0; i < count; i++) {
      const share = Math.floor(connections / count) + (i < connections % count ? 1 : 0);
      assert.ok(2 * share <= MAX_ENDS_PER_HOLDER, `${2 * share} ends in one holder`);
      holders.push(ns.spawn([bin.holder, String(share), opts.keepalive ? "1" : "0"]));
    }
    for (const p of holders) {
      const m = /^ready pid=(\d+) ends=\d+/.exec(await p.line(60_000));
      assert.ok(m, `holder ${p.pid} is ready: ${p.stderr}`);
      assert.equal(Number(m[1]), p.pid, "the holder is the process that was started (ip netns exec execs it)");
    }
    return new Bulk(holders, opts.ends, bin.sampler, ns);
  }

  get pids(): number[] {
    return this.holders.map((p) => p.pid);
  }

  /** What every holder says now, added up. */
  async report(): Promise<BulkReport> {
    const total: BulkReport = { ends: 0, lost: 0, dead: 0, etimedout: 0, reset: 0, otherError: 0, settings: [] };
    for (const p of this.holders) {
      p.send("report\n");
      const head = /^ends (\d+) lost (\d+) dead (\d+) etimedout (\d+) reset (\d+) othererr (\d+)$/.exec(
        await p.line(30_000),
      );
      assert.ok(head, `a report from holder ${p.pid}`);
      const [ends, lost, dead, etimedout, reset, other] = head.slice(1).map(Number) as number[];
      total.ends += ends!;
      total.lost += lost!;
      total.dead += dead!;
      total.etimedout += etimedout!;
      total.reset += reset!;
      total.otherError += other!;
      for (let line = await p.line(); line !== "end"; line = await p.line()) {
        const v = /^settings (-?\d+) (-?\d+) (-?\d+) (-?\d+) (-?\d+) (\d+)$/.exec(line)?.slice(1).map(Number);
        assert.ok(v, `a settings line from holder ${p.pid}: ${line}`);
        const [keepalive, idle, interval, count, userTimeout, n] = v as number[];
        const tuple = {
          keepalive: keepalive!,
          idle: idle!,
          interval: interval!,
          count: count!,
          userTimeout: userTimeout!,
        };
        const same = total.settings.find((s) => sameSettings(s, tuple));
        if (same) same.ends += n!;
        else total.settings.push({ ...tuple, ends: n! });
      }
    }
    return total;
  }

  /** The lab: every holder changes its own sockets, one holder after the other. Returns the ms each took. */
  async apply(change: InProcessChange): Promise<number[]> {
    const window = (change.windowMs ?? 0) / this.holders.length;
    const cmd = `apply ${change.mode} ${change.idle} ${change.interval} ${change.count} ${window} ${change.threads ?? 1} ${change.jitter ?? 0} ${change.cpu ?? -1}\n`;
    const ms: number[] = [];
    for (const p of this.holders) {
      p.send(cmd);
      const m = /^applied (\d+) failed (\d+) ms ([\d.]+) cpus ([\d,]+)$/.exec(await p.line(60_000));
      assert.ok(m, `holder ${p.pid} applied the change`);
      assert.equal(m[2], "0", `holder ${p.pid}: no setsockopt failed`);
      ms.push(Number(m[3]));
    }
    return ms;
  }

  /** A probe sampler inside the namespace, sampling every `periodUs` (default 1 ms) until stopped. */
  async sample(periodUs = 1000, maxSeconds = 120): Promise<ProbeSampler> {
    const p = this.ns.spawn([this.sampler, String(periodUs), String(maxSeconds)]);
    await p.waitFor(/^sampling$/m);
    return new ProbeSampler(p);
  }
}

/** ka_sampler.c's summary (see there). Windows are sliding; `top4` and `perSecond` count from the mark. */
export interface ProbeSummary {
  samples: number;
  seconds: number;
  maxGapUs: number;
  total: number;
  max4: number;
  max4AtMs: number;
  max32: number;
  max32AtMs: number;
  busy4: number;
  perSecond: number[];
  top4: [number, number][];
  /** softnet_stat per CPU, over the run (global, not only this namespace). */
  dropped: number[];
  processed: number[];
  maxRx4: number[];
  abortOnTimeout: number;
}

export class ProbeSampler {
  constructor(private readonly p: Process) {}

  /** Time 0 of the summary's per-second and top-window times. */
  mark(): void {
    this.p.send("mark\n");
  }

  async stop(): Promise<ProbeSummary> {
    const done = await this.p.finish(30_000);
    assert.equal(done.code, 0, `ka_sampler: ${done.stderr}`);
    const line = done.stdout.split("\n").find((l) => l.startsWith("{"));
    assert.ok(line, `a summary from ka_sampler: ${done.stdout}`);
    return JSON.parse(line) as ProbeSummary;
  }
}

/** Softnet's drops over a sampled run, on every CPU together. */
export function drops(s: ProbeSummary): number {
  return s.dropped.reduce((a, b) => a + b, 0);
}
