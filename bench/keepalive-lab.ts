/**
 * The keepalive lab of issue 14 (not part of `npm run bench`): one bulk change per run, on idle loopback
 * connections in a network namespace of its own (test/helpers/bulk.ts), then 15 s of watching. Prints one JSON
 * line per run: deaths (from inside the holders), softnet drops, keepalive probes per 4 ms / 32 ms window.
 *
 *   node dist-test/bench/keepalive-lab.js ENDS STRATEGY [ENDS STRATEGY ...]
 *
 * STRATEGY is `tcpka` (tcpka enable --pid … --idle 2s --interval 1s --count 2) or an in-process change
 * MODE[:w=MS][:t=THREADS][:j=JITTER][:c=CPU] with MODE one of bulk_holder.c's (ka-first, opts-first, reset, idle-only),
 * idle 2 s, interval 1 s, count 2. Prefix `on+` to start from keepalive on at 7200 s on every end.
 * LAB_IDLE_S: how long the connections sit idle before the change (default 5); LAB_WATCH_S: after it (15).
 * Runs one after the other; each namespace and its processes are removed when its run ends, failed or not.
 */
import { Bulk, drops, type InProcessChange } from "../test/helpers/bulk.js";
import { Netns } from "../test/helpers/netns.js";
import { sleep } from "../test/helpers/processes.js";

const IDLE_S = Number(process.env.LAB_IDLE_S ?? 5);
const WATCH_S = Number(process.env.LAB_WATCH_S ?? 15);
const WANT = { idle: 2, interval: 1, count: 2 };

function parse(strategy: string): { keepalive: boolean; change: InProcessChange | "tcpka" } {
  const keepalive = strategy.startsWith("on+");
  const [mode, ...opts] = (keepalive ? strategy.slice(3) : strategy).split(":");
  if (mode === "tcpka") return { keepalive, change: "tcpka" };
  const change: InProcessChange = { mode: mode as InProcessChange["mode"], ...WANT };
  for (const o of opts) {
    const [k, v] = o.split("=");
    if (k === "w") change.windowMs = Number(v);
    else if (k === "t") change.threads = Number(v);
    else if (k === "j") change.jitter = Number(v);
    else if (k === "c") change.cpu = Number(v);
    else throw new Error(`unknown option ${o}`);
  }
  return { keepalive, change };
}

async function run(ends: number, strategy: string): Promise<void> {
  const cleanups: (() => void | Promise<void>)[] = [];
  const scope = { after: (fn: () => void | Promise<void>) => cleanups.push(fn) };
  try {
    const { keepalive, change } = parse(strategy);
    const ns = Netns.create(scope);
    const bulk = await Bulk.start(scope, ns, { ends, keepalive });
    await sleep(IDLE_S * 1000);
    const sampler = await bulk.sample();
    await sleep(200);
    sampler.mark();
    const t0 = performance.now();
    let applyMs: number[] | string;
    if (change === "tcpka") {
      const pids = bulk.pids.flatMap((p) => ["--pid", String(p)]);
      const r = ns.tcpka(["enable", ...pids, "--idle", "2s", "--interval", "1s", "--count", "2"]);
      applyMs = `exit ${r.status}: ${r.stdout
        .split("\n")
        .filter((l) => /^ {2}[a-z]/.test(l))
        .join("; ")
        .trim()}`;
    } else applyMs = await bulk.apply(change);
    const tookMs = performance.now() - t0;
    await sleep(WATCH_S * 1000 - tookMs);
    const report = await bulk.report();
    const s = await sampler.stop();
    const settings = report.settings.map((x) => `${x.keepalive}/${x.idle}/${x.interval}/${x.count}:${x.ends}`);
    console.log(
      JSON.stringify({
        ends,
        strategy,
        applyMs,
        tookMs: Math.round(tookMs),
        lost: report.lost,
        dead: report.dead,
        etimedout: report.etimedout,
        reset: report.reset,
        drops: drops(s),
        max4: s.max4,
        max32: s.max32,
        total: s.total,
        busy4: s.busy4,
        maxGapUs: s.maxGapUs,
        top4: s.top4.slice(0, 4),
        perSecond: s.perSecond,
        maxRx4: s.maxRx4,
        processed: s.processed,
        settings,
      }),
    );
  } finally {
    for (const fn of cleanups.reverse()) await fn();
  }
}

const args = process.argv.slice(2);
if (args.length === 0 || args.length % 2) {
  console.error("usage: keepalive-lab.js ENDS STRATEGY [ENDS STRATEGY ...]");
  process.exit(2);
}
for (let i = 0; i < args.length; i += 2) await run(Number(args[i]), args[i + 1]!);
