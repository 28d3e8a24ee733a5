/**
 * The floor under a metrics scrape (issue 17): the system time of one kernel walk of every socket, measured in
 * this one process (process.cpuUsage around reading the iterator to its end, nothing decoded):
 *
 *   - the TCP iterator with a program that writes nothing (a state mask that matches no socket): the walk itself
 *     (bpf_iter_tcp_batch taking each bucket's sockets, sock_hold/sock_put, one program run per socket);
 *   - the same program writing its 112-byte record of every ESTABLISHED and LISTEN socket (what `ls` and the
 *     scrape before the counting program read);
 *   - the task_file walk of every process's files, with a program that does nothing, and writing a 56-byte
 *     record per TCP socket (the owners);
 *   - the counting programs of src/inspect/socket-counts.ts (with and without the owners' pass).
 *
 * 50,000 loopback connections (100,000 sockets) in holders (holders.ts).
 *
 *   node dist-test/bench/walk-floor.js [--connections 50000] [--runs 7]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { assemble, Listing, Mov, R0, Return } from "../src/bpf/asm.js";
import { endpointOffsets } from "../src/bpf/endpoints.js";
import { socketFdsProgram } from "../src/bpf/socket-fds.js";
import { tcpSocketOffsets, tcpSocketsProgram } from "../src/bpf/tcp-sockets.js";
import { SocketCounter } from "../src/inspect/socket-counts.js";
import { stateMask } from "../src/kernel/states.js";
import { iterCreate, iterLinkCreate, iterProgLoad } from "../src/sys/bpf.js";
import { CachedBtf } from "../src/sys/btf.js";
import { close } from "../src/sys/libc.js";
import { readFd } from "../src/sys/read-ahead-ring.js";
import { HolderPool } from "./holders.js";

const { values } = parseArgs({
  options: { connections: { type: "string", default: "50000" }, runs: { type: "string", default: "7" } },
});
const CONNECTIONS = Number(values.connections);
const RUNS = Number(values.runs);

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2
    ? (s[(s.length - 1) / 2] as number)
    : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
}

/** One walk of link `link` read to its end: [system ms, user ms, wall ms, bytes]. */
function walk(link: number): [number, number, number, number] {
  const buf = Buffer.alloc(64 * 1024);
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const iter = iterCreate(link);
  let bytes = 0;
  try {
    for (;;) {
      const n = readFd(iter, buf);
      if (n < 0) throw new Error(`read: ${-n}`);
      if (n === 0) break;
      bytes += n;
    }
  } finally {
    close(iter);
  }
  const wall = Number(process.hrtime.bigint() - t0) / 1e6;
  const c = process.cpuUsage(c0);
  return [c.system / 1000, c.user / 1000, wall, bytes];
}

function measured(name: string, once: () => [number, number, number, number]): string {
  once(); // warm
  const sys: number[] = [];
  const user: number[] = [];
  const wall: number[] = [];
  let bytes = 0;
  for (let i = 0; i < RUNS; i++) {
    const [s, u, w, b] = once();
    sys.push(s);
    user.push(u);
    wall.push(w);
    bytes = b;
  }
  const row = `| ${name} | ${median(sys).toFixed(1)} (${sys.map((x) => x.toFixed(0)).join(", ")}) | ${median(user).toFixed(1)} | ${median(wall).toFixed(1)} | ${bytes} |`;
  process.stderr.write(`${row}\n`);
  return row;
}

async function main(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), "tcpka-bench-floor-"));
  const pool = new HolderPool(tmp);
  const fds: number[] = [];
  try {
    await pool.add(CONNECTIONS);
    const btf = CachedBtf.open();
    const tcpId = btf.typeId("FUNC", "bpf_iter_tcp");
    const fileId = btf.typeId("FUNC", "bpf_iter_task_file");
    const tcpProgram = (mask: number) => {
      const p = tcpSocketsProgram(tcpSocketOffsets(btf), mask);
      const prog = iterProgLoad({
        attachBtfId: tcpId,
        insns: assemble(p),
        listing: new Listing(p),
        name: "tcpka_floor",
      });
      fds.push(prog);
      const link = iterLinkCreate(prog, Buffer.alloc(0));
      fds.push(link);
      return link;
    };
    const nothing = tcpProgram(0);
    const records = tcpProgram(stateMask(["ESTAB", "LISTEN"]));
    const fp = socketFdsProgram({
      metaSeq: btf.memberOffset("bpf_iter_meta", "seq"),
      taskPid: btf.memberOffset("task_struct", "pid"),
      taskTgid: btf.memberOffset("task_struct", "tgid"),
      fileInode: btf.memberOffset("file", "f_inode"),
      inodeIno: btf.memberOffset("inode", "i_ino"),
      socketSk: btf.memberOffset("socket", "sk"),
      skType: btf.memberOffset("sock", "sk_type"),
      skProtocol: btf.memberOffset("sock", "sk_protocol"),
      ...endpointOffsets(btf),
    });
    const fprog = iterProgLoad({
      attachBtfId: fileId,
      insns: assemble(fp),
      listing: new Listing(fp),
      name: "tcpka_floor_f",
    });
    fds.push(fprog);
    const flink = iterLinkCreate(fprog, Buffer.alloc(16));
    fds.push(flink);
    const none = [Mov.Imm(R0, 0), Return()];
    const nprog = iterProgLoad({
      attachBtfId: fileId,
      insns: assemble(none),
      listing: new Listing(none),
      name: "tcpka_floor_n",
    });
    fds.push(nprog);
    const nlink = iterLinkCreate(nprog, Buffer.alloc(16));
    fds.push(nlink);
    const rows = [
      `Sockets: ${CONNECTIONS * 2} (loopback, idle), ${RUNS} runs each after a warm-up; ms of this process's CPU per walk.`,
      "",
      "| walk | system ms, median (runs) | user ms | wall ms | bytes read |",
      "|---|---|---|---|---|",
    ];
    rows.push(measured("TCP iterator, program writes nothing (the walk itself)", () => walk(nothing)));
    rows.push(measured("TCP iterator, 112-byte record per ESTAB/LISTEN socket", () => walk(records)));
    rows.push(measured("task_file iterator, program does nothing (every process's every file)", () => walk(nlink)));
    rows.push(measured("task_file iterator, 56-byte record per TCP socket fd", () => walk(flink)));
    const time = (f: () => void): [number, number, number, number] => {
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      f();
      const c = process.cpuUsage(c0);
      return [c.system / 1000, c.user / 1000, Number(process.hrtime.bigint() - t0) / 1e6, 0];
    };
    for (const owners of [false, true]) {
      const counter = SocketCounter.open({ owners });
      try {
        rows.push(
          measured(`counting programs, owners ${owners ? "on" : "off"} (walk + map read, own namespace)`, () =>
            time(() => counter.count([undefined])),
          ),
        );
      } finally {
        counter.close();
      }
    }
    process.stdout.write(`${rows.join("\n")}\n`);
  } finally {
    for (const fd of fds.reverse()) close(fd);
    await pool.stopAll();
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench walk-floor: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
