/**
 * Where `tcpka ls --json` spends its time, step by step in a fresh process (cold JIT, like the CLI). Run by
 * ls.ts as `node dist-test/bench/phases.js MODE`; prints one PhaseResult as JSON on stdout.
 *
 *   bpf      the kernel pass, the default as root on a BTF kernel (connections.ts inspectKernel()): reading
 *            the BTF, loading the two programs, the task_file walk for the owners and the TCP walk, each
 *            once raw (the kernel's bytes only) and once as tcpka decodes it, then inspect() whole (warm), the
 *            JSON text and its writing.
 *   netlink  the old path (--via netlink): sock_diag, the owners, pidfd_getfd + getsockopt per socket.
 *
 * Phases marked kernel are the kernel's own share: bytes read from the iterator (or sock_diag) and nothing
 * decoded. With node's start-up they are the floor of any tool that asks the kernel this way.
 */
import { closeSync, openSync, readdirSync } from "node:fs";
import { performance } from "node:perf_hooks";

export interface Phase {
  name: string;
  what: string;
  ms: number;
  /** heapUsed growth (MB) kept alive by what the phase built, where it builds something that is kept */
  heapMb?: number;
  /** the kernel's own share (bytes read, not decoded) */
  kernel?: boolean;
}

export interface PhaseResult {
  mode: "bpf" | "netlink";
  /** connections inspect() found */
  sockets: number;
  phases: Phase[];
}

const mode = process.argv[2];
if (mode !== "bpf" && mode !== "netlink") throw new Error("usage: phases.js bpf|netlink");

const phases: Phase[] = [
  { name: "boot", what: "node's start-up until the first line of phases.js runs", ms: performance.now() },
];
let lastHeap = process.memoryUsage().heapUsed;

function time<T>(name: string, what: string, fn: () => T, opts: { kernel?: boolean; keepsHeap?: boolean } = {}): T {
  const t = performance.now();
  const r = fn();
  const p: Phase = { name, what, ms: performance.now() - t };
  if (opts.kernel) p.kernel = true;
  if (opts.keepsHeap) {
    const h = process.memoryUsage().heapUsed;
    p.heapMb = (h - lastHeap) / 1e6;
    lastHeap = h;
  }
  phases.push(p);
  return r;
}

// What bin/tcpka.js loads for `ls`: main.js, then the command's module (which loads the rest, koffi and libc).
const t = performance.now();
await import("../src/cli/main.js");
await import("../src/cli/ls.js");
phases.push({
  name: "import",
  what: "loading tcpka's modules as `tcpka ls` does (koffi and libc too)",
  ms: performance.now() - t,
});

const { DEFAULT_FILTER } = await import("../src/filter.js");
const { inspect } = await import("../src/inspect/connections.js");
const { addToSummary, emptySummary } = await import("../src/inspect/summary.js");
const { writeConnectionJson } = await import("../src/ui/connections.js");
const { Out } = await import("../src/ui/format.js");
const { addressOf, close, readInto } = await import("../src/sys/libc.js");
type Connection = import("../src/inspect/connections.js").Connection;
const states = DEFAULT_FILTER.states;

const buf = Buffer.alloc(64 * 1024);
const bufAddress = addressOf(buf);
/** Read an iterator fd to its end, closing it; the bytes read. */
function drain(fd: number): number {
  let bytes = 0;
  try {
    for (let n = readInto(fd, buf, bufAddress); n > 0; n = readInto(fd, buf, bufAddress)) bytes += n;
  } finally {
    close(fd);
  }
  return bytes;
}

/** A private fd of a src object (the raw walks read its program without tcpka's decoding); fails if renamed. */
function fdOf(o: object, field: string): number {
  const fd = (o as Record<string, unknown>)[field];
  if (typeof fd !== "number" || fd < 0) throw new Error(`phases.ts: ${o.constructor.name} has no ${field} fd`);
  return fd;
}

/**
 * The JSON of every connection (writeConnectionJson: pieces and digits straight into Out's buffer, as ls --json
 * does) with addToSummary(), then the write(2) of what the buffer holds to /dev/null, timed apart.
 */
function json(connections: readonly Connection[]): void {
  const devnull = openSync("/dev/null", "w");
  const out = new Out(devnull);
  const sum = emptySummary();
  const t0 = performance.now();
  for (const c of connections) {
    out.write(",\n");
    writeConnectionJson(out, c);
    addToSummary(sum, c);
  }
  const t1 = performance.now();
  out.end();
  const t2 = performance.now();
  closeSync(devnull);
  phases.push(
    {
      name: "json_text",
      what: "writeConnectionJson() + addToSummary() of every connection (including the full buffers' writes)",
      ms: t1 - t0,
    },
    { name: "json_write", what: "the last write(2) of Out's buffer to /dev/null", ms: t2 - t1 },
  );
}

let connections: Connection[];
if (mode === "bpf") {
  const { Btf } = await import("../src/sys/btf.js");
  const { KernelSockets } = await import("../src/inspect/kernel-sockets.js");
  const { SocketFdIterator } = await import("../src/inspect/socket-fds.js");
  const { allTcpOwners } = await import("../src/inspect/owners.js");
  const { networkNamespaces } = await import("../src/inspect/namespaces.js");
  const { iterCreate, iterLinkCreate } = await import("../src/sys/bpf.js");
  type KernelSocket = import("../src/inspect/kernel-sockets.js").KernelSocket;

  time("btf", "Btf.vmlinux(): read and index /sys/kernel/btf/vmlinux (once per process)", () => Btf.vmlinux());
  const ks = time("load_tcp", "KernelSockets.open(): assemble, verify and link the TCP iterator, HZ probe", () =>
    KernelSockets.open(states),
  );
  const files = time("load_task_file", "SocketFdIterator.open(): assemble and verify the task_file iterator", () =>
    SocketFdIterator.open(),
  );
  const info = Buffer.alloc(16); // union bpf_iter_link_info, no process filter: every task
  time(
    "task_file_raw",
    "one task_file walk of every process's files (link, iterator, read), bytes only",
    () => drain(iterCreate(iterLinkCreate(fdOf(files, "progFd"), info))),
    { kernel: true },
  );
  time("task_file_walk", "SocketFdIterator.listAll(): the same walk, each record's pid, fd, inode", () =>
    files.listAll(() => {}),
  );
  files.close();
  time(
    "owners",
    "allTcpOwners(), as ls calls it: its own program load (BTF known), the walk, inode → owners, comm",
    () => allTcpOwners(),
    { keepsHeap: true },
  );
  time("namespaces", "networkNamespaces(): every process's /proc/PID/ns/net (what --all-netns adds)", () =>
    networkNamespaces(),
  );
  time("tcp_raw", "one TCP iterator walk (iterator, read), bytes only", () => drain(iterCreate(fdOf(ks, "linkFd"))), {
    kernel: true,
  });
  const sockets: KernelSocket[] = [];
  time(
    "tcp_decode",
    "KernelSockets.walk(): the same walk, a KernelSocket per socket",
    () => ks.walk((s) => sockets.push(s)),
    {
      keepsHeap: true,
    },
  );
  ks.close();
  sockets.length = 0; // not kept: the streamed run below keeps nothing either
  const { inspectEach } = await import("../src/inspect/connections.js");
  const { ReadAhead } = await import("../src/sys/read-ahead.js");
  ReadAhead.warm("one"); // as main.ts does, while the command's code loads (here: already loaded)
  await new Promise((resolve) => setTimeout(resolve, 50)); // ls --json's imports take about that long
  const devnull = openSync("/dev/null", "w");
  const out = new Out(devnull);
  const sum = emptySummary();
  time(
    "streamed",
    "ls --json after its start-up, warm: inspectEach() with the reader thread, each connection's JSON written as it comes",
    () =>
      inspectEach(DEFAULT_FILTER, { via: "bpf", transient: true }, (c) => {
        out.write(",\n");
        writeConnectionJson(out, c);
        addToSummary(sum, c);
      }),
  );
  out.end();
  closeSync(devnull);
  connections = time(
    "inspect",
    "inspect() once more, warm: both loads, both walks, the Connection objects",
    () => inspect(DEFAULT_FILTER, { via: "bpf" }).connections,
    { keepsHeap: true },
  );
} else {
  const { readSockets } = await import("../src/inspect/sockets.js");
  const { findOwners } = await import("../src/inspect/owners.js");
  const { listPids } = await import("../src/inspect/processes.js");
  const { readKeepAlive } = await import("../src/inspect/exact.js");
  const { readSystemDefaults } = await import("../src/inspect/sysctl.js");
  const { SocketBorrower } = await import("../src/sys/pidfd.js");
  const { inetDiagDump } = await import("../src/sys/netlink.js");
  const { AF_INET, AF_INET6 } = await import("../src/kernel/constants.js");

  time("sysctl", "readSystemDefaults()", () => readSystemDefaults());
  time(
    "dump_raw",
    "the sock_diag dump alone (kernel + read), messages not decoded",
    () => {
      let n = 0;
      for (const family of [AF_INET, AF_INET6]) inetDiagDump({ family, states }, () => n++);
      return n;
    },
    { kernel: true },
  );
  const sockets = time(
    "dump_parse",
    "readSockets(): the dump + a TcpSocket per socket",
    () => readSockets({ states }),
    {
      keepsHeap: true,
    },
  );
  const pids = time("list_pids", "listPids(): readdir /proc", () => listPids());
  time("readdir_fd", "baseline: readdir /proc/PID/fd of every process, no readlink", () => {
    for (const pid of pids) {
      try {
        readdirSync(`/proc/${pid}/fd`);
      } catch {
        // gone, or not readable
      }
    }
  });
  const inodes = new Set(sockets.map((s) => s.inode));
  const { owners } = time(
    "find_owners",
    "findOwners(): per process, /proc or the task_file iterator",
    () => findOwners(inodes, pids),
    {
      keepsHeap: true,
    },
  );
  const borrower = new SocketBorrower();
  const eachOwned = (fn: (fd: number) => unknown): void => {
    for (const s of sockets) {
      const o = owners.get(s.inode)?.[0];
      if (!o) continue;
      try {
        borrower.with(o.pid, o.fd, s.inode, fn);
      } catch {
        // gone since the scan: inspect() reports it, here it is only not timed
      }
    }
  };
  time("borrow", "SocketBorrower.with() per owned socket: pidfd_getfd + fstat + close", () => eachOwned(() => 0));
  time("read_keepalive", "the same + readKeepAlive() (5 getsockopt)", () => eachOwned(readKeepAlive));
  borrower.close();
  connections = time(
    "inspect",
    "inspect(--via netlink) once more, warm: all of the above with the Connection objects",
    () => inspect(DEFAULT_FILTER, { via: "netlink" }).connections,
    { keepsHeap: true },
  );
}
json(connections);

const result: PhaseResult = { mode, sockets: connections.length, phases };
process.stdout.write(`${JSON.stringify(result)}\n`);
