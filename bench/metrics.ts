/**
 * The metrics endpoint's cost (issue 17): a scrape of a host with 100,000 connections (target ≤ 250 ms) and the
 * endpoint's CPU at one scrape every 15 s (target ≤ 1 % of a CPU), side by side with the anchor: `ss -tnoe`, what
 * an exporter built on ss would pay for one listing of the same sockets (without owners, one namespace).
 *
 * Set-up: 50,000 loopback connections (100,000 sockets) in holder processes (holders.ts). `tcpka metrics --listen
 * 127.0.0.1:PORT` runs as it is run by hand; after a warm-up scrape, the scrapes (HTTP GET /metrics, timed from
 * the request to the last byte) alternate with `ss -tnoe` runs (spawned, timed to their exit). Then the endpoint
 * idles with one scrape every --interval: its CPU (user + system, every thread, /proc/PID/stat) over that window
 * over the window's wall time is the share.
 *
 * With --netns N, N network namespaces of the bench's own beside them, each with one loopback connection held
 * by a python3 in it: a node's pods. Each is held (its sockets come from the owners' walk), not walked (a scan
 * of the host's whole established hash, ~12 ms each at 100,000 sockets).
 *
 * With --own-netns, the holders, the endpoint, its scrapes (curl) and ss run in a network namespace of the bench's
 * own: a host whose every socket a process holds, where the owners' walk counts tcpka's own namespace and its TCP
 * walk is not made (src/inspect/socket-counts.ts). This machine's own namespace always holds one socket that no
 * process shows (the sandbox's listener on port 2024), so without it the endpoint walks it every scrape.
 *
 *   node dist-test/bench/metrics.js [--connections 50000] [--scrapes 7] [--interval 15] [--window 120] [--labels L]
 *                                   [--netns N] [--own-netns]
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Netns } from "../test/helpers/netns.js";
import { freePort } from "../test/helpers/ports.js";
import { HolderPool } from "./holders.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values } = parseArgs({
  options: {
    connections: { type: "string", default: "50000" },
    scrapes: { type: "string", default: "7" },
    interval: { type: "string", default: "15" },
    window: { type: "string", default: "120" },
    labels: { type: "string" },
    netns: { type: "string", default: "0" },
    "own-netns": { type: "boolean", default: false },
  },
});
const CONNECTIONS = Number(values.connections);
const SCRAPES = Number(values.scrapes);
const INTERVAL_S = Number(values.interval);
const WINDOW_S = Number(values.window);
const NETNS = Number(values.netns);

/** One loopback connection, held until stdin closes. */
const ONE_CONNECTION = `
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
print("ready", flush=True)
sys.stdin.read()
`;

/** The process's CPU time so far, user and system (every thread: utime and stime of /proc/PID/stat), in seconds. */
function cpuSeconds(pid: number): { user: number; system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { user: Number(f[11]) / 100, system: Number(f[12]) / 100 };
}

function rssMiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"));
  return m ? Number(m[1]) / 1024 : 0;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2
    ? (s[(s.length - 1) / 2] as number)
    : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
}

async function main(): Promise<void> {
  const log = (s: string) => process.stderr.write(`bench metrics: ${s}\n`);
  const tmp = mkdtempSync(join(tmpdir(), "tcpka-bench-metrics-"));
  const own = values["own-netns"] ? Netns.create() : undefined;
  const prefix = own ? ["ip", "netns", "exec", own.name] : [];
  const pool = new HolderPool(tmp, prefix);
  let endpoint: ReturnType<typeof spawn> | undefined;
  const pods: Netns[] = [];
  try {
    await pool.add(CONNECTIONS);
    log(`${CONNECTIONS * 2} sockets held in ${pool.holders.length} holders`);
    for (let i = 0; i < NETNS; i++) {
      const ns = Netns.create();
      pods.push(ns);
      await ns.spawn(["python3", "-c", ONE_CONNECTION]).line();
    }
    if (NETNS > 0) log(`${NETNS} network namespaces with one connection each`);
    const port = await freePort();
    const labels = values.labels === undefined ? [] : ["--labels", values.labels];
    const [cmd = "node", ...args] = [
      ...prefix,
      "node",
      join(ROOT, "bin", "tcpka.js"),
      "metrics",
      "--listen",
      `127.0.0.1:${port}`,
      ...labels,
    ];
    endpoint = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] }); // ip netns exec execs node in place
    let err = "";
    endpoint.stderr?.on("data", (b: Buffer) => {
      err += b.toString();
    });
    const url = `http://127.0.0.1:${port}/metrics`;
    for (let i = 0; !err.includes("metrics at "); i++) {
      if (i > 200) throw new Error(`the endpoint did not start: ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const scrape = async () => {
      if (own) {
        // from inside the namespace: curl's own time from the request to the last byte
        const r = spawnSync(
          "ip",
          ["netns", "exec", own.name, "curl", "-sf", "-o", join(tmp, "scrape"), "-w", "%{time_total}", url],
          { encoding: "latin1" },
        );
        if (r.status !== 0) throw new Error(`scrape: curl exited ${r.status}: ${r.stderr}`);
        return { ms: Number(r.stdout) * 1000, text: readFileSync(join(tmp, "scrape"), "latin1") };
      }
      const t0 = process.hrtime.bigint();
      const res = await fetch(url);
      const text = await res.text();
      if (!res.ok) throw new Error(`scrape: ${res.status}`);
      return { ms: Number(process.hrtime.bigint() - t0) / 1e6, text };
    };
    const first = await scrape(); // warm-up: Node's JIT, the kernel pass's programs loaded
    const counted = /^tcpka_connections\{[^}]*\} (\d+)$/gm;
    let established = 0;
    for (let m = counted.exec(first.text); m; m = counted.exec(first.text)) established += Number(m[1]);
    const namespaces = /^tcpka_network_namespaces (\d+)$/m.exec(first.text)?.[1] ?? "?";
    log(
      `warm-up scrape: ${first.ms.toFixed(0)} ms, ${established} established sockets counted in ${namespaces} namespaces`,
    );
    const scrapeMs: number[] = [];
    const ssMs: number[] = [];
    for (let i = 0; i < SCRAPES; i++) {
      scrapeMs.push((await scrape()).ms);
      const t0 = process.hrtime.bigint();
      const [ss = "ss", ...ssArgs] = [...prefix, "ss", "-tnoe"];
      const r = spawnSync(ss, ssArgs, { stdio: ["ignore", "ignore", "ignore"], maxBuffer: 1 << 30 });
      if (r.status !== 0) throw new Error("ss -tnoe failed");
      ssMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
      log(`scrape ${scrapeMs.at(-1)?.toFixed(0)} ms, ss -tnoe ${ssMs.at(-1)?.toFixed(0)} ms`);
    }
    const pid = endpoint.pid as number;
    const rss = rssMiB(pid);
    log(`idle with one scrape every ${INTERVAL_S} s for ${WINDOW_S} s`);
    await new Promise((r) => setTimeout(r, 2000));
    const c0 = cpuSeconds(pid);
    const w0 = Date.now();
    let n = 0;
    while (Date.now() - w0 < WINDOW_S * 1000) {
      await scrape();
      n++;
      const next = w0 + n * INTERVAL_S * 1000;
      await new Promise((r) => setTimeout(r, Math.max(0, Math.min(next, w0 + WINDOW_S * 1000) - Date.now())));
    }
    const c1 = cpuSeconds(pid);
    const w1 = Date.now();
    const used = c1.user + c1.system - c0.user - c0.system;
    const share = (used / ((w1 - w0) / 1000)) * 100;
    const ratios = scrapeMs.map((s, i) => s / (ssMs[i] as number));
    process.stdout.write(
      [
        "### tcpka metrics: a scrape, and the endpoint's cost (bench/metrics.ts)",
        "",
        `Command: \`node dist-test/bench/metrics.js --connections ${CONNECTIONS} --scrapes ${SCRAPES} --interval ${INTERVAL_S} --window ${WINDOW_S}${values.labels === undefined ? "" : ` --labels ${values.labels}`}${NETNS ? ` --netns ${NETNS}` : ""}${own ? " --own-netns" : ""}\``,
        "",
        "| what | value |",
        "|---|---|",
        `| sockets on the host (held, idle loopback) | ${CONNECTIONS * 2}${own ? " (in a namespace of the bench's own, where tcpka and the scrapes run too)" : ""} |`,
        `| network namespaces beside them, one connection each | ${NETNS} |`,
        `| owner labels | ${values.labels ?? "all (process, container, pod_namespace, pod, unit)"} |`,
        `| established sockets the scrape counted | ${established} (network namespaces on the host: ${namespaces}) |`,
        `| **a scrape, median of ${SCRAPES}** (GET /metrics to its last byte; target ≤ 250 ms) | **${median(scrapeMs).toFixed(0)} ms** (${scrapeMs.map((x) => x.toFixed(0)).join(", ")}) |`,
        `| the anchor, \`ss -tnoe\`, median of ${SCRAPES} (one namespace, no owners) | ${median(ssMs).toFixed(0)} ms (${ssMs.map((x) => x.toFixed(0)).join(", ")}) |`,
        `| scrape / ss, pair by pair, median | ${median(ratios).toFixed(2)}× |`,
        `| the endpoint's RSS after the scrapes | ${rss.toFixed(0)} MiB |`,
        `| endpoint CPU over ${((w1 - w0) / 1000).toFixed(0)} s, one scrape every ${INTERVAL_S} s (${n} scrapes) | ${used.toFixed(2)} s (user ${(c1.user - c0.user).toFixed(2)}, system ${(c1.system - c0.system).toFixed(2)}) |`,
        `| **share of one CPU** (target ≤ 1 %) | **${share.toFixed(2)} %** |`,
        "",
      ].join("\n"),
    );
  } finally {
    if (endpoint?.pid) {
      try {
        process.kill(endpoint.pid, "SIGKILL");
      } catch {
        /* gone */
      }
    }
    await pool.stopAll();
    for (const ns of pods) ns.destroy();
    own?.destroy();
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench metrics: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
