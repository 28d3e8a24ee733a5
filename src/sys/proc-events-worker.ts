/**
 * The reader thread of proc-events.ts: subscribes to the kernel's process events connector and reads it,
 * posting the processes that exec'd, changed their uid or renamed themselves, with their cgroup, a batch at a
 * time, until asked to stop. It blocks in read(2) (that is why it is a thread), at most IDLE_MS at a time so that it sees a stop.
 */
import { readSync, writeSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import {
  AF_NETLINK,
  CN_IDX_PROC,
  CN_MSG_LEN,
  CN_VAL_PROC,
  NETLINK_CONNECTOR,
  NLMSG_DONE,
  NLMSG_HDRLEN,
  PROC_CN_MCAST_LISTEN,
  PROC_EVENT_COMM,
  PROC_EVENT_DATA,
  PROC_EVENT_EXEC,
  PROC_EVENT_NONE,
  PROC_EVENT_UID,
  SO_RCVBUFFORCE,
  SO_RCVTIMEO,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOL_SOCKET,
} from "../kernel/constants.js";
import { EAGAIN, EINTR, ENOBUFS } from "../kernel/errno.js";
import {
  addressOf,
  bindNetlink,
  close,
  DatagramBatch,
  readHead,
  SysError,
  setsockoptInt,
  setsockoptTimeval,
  socket,
} from "./libc.js";
import type { FromReader } from "./proc-events.js";

const { stop } = workerData as { stop: Int32Array };
const port = parentPort;
/** The events that can change which rule a process is under: a new program, a new user, a new name. */
const WANTED = PROC_EVENT_EXEC | PROC_EVENT_UID | PROC_EVENT_COMM;
/**
 * Events closer together than this go in one batch: the agent settles changes over as long anyway, and each batch
 * costs the two threads about 300 µs of JavaScript (measured at 200 execs a second: 0.76 % of a CPU with batches
 * of 50 ms).
 */
const BATCH_MS = 150;
/** The socket's queue: 1 MiB holds about 1,300 events (each skb's truesize is about 768 bytes). */
const RCVBUF = 1 << 20;
/** The longest read(2), so that a stop is seen within it. */
const IDLE_MS = 1000;
/** How long to wait for the kernel's answer to the subscription. */
const ACK_MS = 2000;

function post(m: FromReader): void {
  port?.postMessage(m);
}

/** struct nlmsghdr, struct cn_msg for the process connector, then `data`: one request. */
function request(fd: number, data: readonly number[], ack: number): void {
  const len = NLMSG_HDRLEN + CN_MSG_LEN + data.length * 4;
  const b = Buffer.alloc(len);
  b.writeUInt32LE(len, 0); // nlmsg_len
  b.writeUInt16LE(NLMSG_DONE, 4); // nlmsg_type: the connector takes one message per request
  b.writeUInt32LE(CN_IDX_PROC, NLMSG_HDRLEN); // cb_id.idx
  b.writeUInt32LE(CN_VAL_PROC, NLMSG_HDRLEN + 4); // cb_id.val
  b.writeUInt32LE(ack >>> 0, NLMSG_HDRLEN + 12); // ack: the answer carries ack + 1
  b.writeUInt16LE(data.length * 4, NLMSG_HDRLEN + 16); // len
  data.forEach((v, i) => {
    b.writeUInt32LE(v >>> 0, NLMSG_HDRLEN + CN_MSG_LEN + i * 4);
  });
  writeSync(fd, b);
}

function errnoOf(e: unknown): number {
  const n = (e as NodeJS.ErrnoException).errno;
  return typeof n === "number" ? -n : 0;
}

function main(): void {
  let fd: number;
  try {
    fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
  } catch (e) {
    post({ failed: `socket(NETLINK_CONNECTOR): ${(e as Error).message}` });
    return;
  }
  const buf = Buffer.alloc(4096);
  try {
    try {
      bindNetlink(fd, CN_IDX_PROC);
      setsockoptTimeval(fd, SOL_SOCKET, SO_RCVTIMEO, 200);
      // First the request every kernel knows (one u32, PROC_CN_MCAST_LISTEN): its answer says whether we may
      // listen (cn_proc_mcast_ctl: CAP_NET_ADMIN, the initial user and pid namespaces; an unprivileged caller or
      // one in another namespace gets EPERM or no answer). Then the same with an event filter (struct proc_input:
      // mcast_op, event_type; Linux 6.6, "connector/cn_proc: Add filtering"), so that the kernel drops every other
      // event (fork, exit) before it is queued to us; an older kernel ignores a request of that size, and sends
      // everything, filtered here. (With a filter set, the kernel's answers are filtered away too: cn_filter
      // matches them as PROC_EVENT_NONE, hence the order.)
      const ack = (Date.now() ^ process.pid) >>> 0;
      request(fd, [PROC_CN_MCAST_LISTEN], ack);
      const until = Date.now() + ACK_MS;
      let answer: number | undefined;
      while (answer === undefined && Date.now() < until) {
        let n: number;
        try {
          n = readSync(fd, buf, 0, buf.length, null);
        } catch (e) {
          if (errnoOf(e) === EAGAIN) continue;
          throw e;
        }
        const at = NLMSG_HDRLEN + CN_MSG_LEN;
        if (n < at + PROC_EVENT_DATA + 4) continue;
        if (buf.readUInt32LE(at) !== PROC_EVENT_NONE || buf.readUInt32LE(NLMSG_HDRLEN + 12) !== (ack + 1) >>> 0)
          continue; // an event, or another listener's answer
        answer = buf.readUInt32LE(at + PROC_EVENT_DATA);
      }
      if (answer === undefined) {
        post({ failed: "the kernel did not answer the subscription (not in the initial pid and user namespaces?)" });
        return;
      }
      if (answer !== 0) {
        post({ failed: new SysError("subscribe to process events", answer).message });
        return;
      }
      request(fd, [PROC_CN_MCAST_LISTEN, WANTED], ack + 2);
    } catch (e) {
      post({ failed: (e as Error).message });
      return;
    }
    post({ ready: true });
    loop(fd, buf);
  } finally {
    close(fd);
  }
}

/**
 * Wait for an event (at most IDLE_MS, to see a stop), then BATCH_MS more for others to queue up, then take all
 * that are queued with recvmmsg: a thread woken per event costs more than the event (75 µs each at 200 execs a
 * second, measured), one woken per batch next to nothing.
 */
function loop(fd: number, buf: Buffer): void {
  const batch = new DatagramBatch(64, 128);
  const bytes = Buffer.from(batch.bytes.buffer);
  const pending = new Set<number>();
  let lost = false;
  const at = NLMSG_HDRLEN + CN_MSG_LEN;
  // One event per datagram (cn_netlink_send_mult sends each alone); the tgid is the second field of every
  // event_data kind wanted here (exec, id, comm).
  const take = (b: Buffer, off: number, n: number) => {
    if (n >= at + PROC_EVENT_DATA + 8 && (b.readUInt32LE(off + at) & WANTED) !== 0) {
      pending.add(b.readInt32LE(off + at + PROC_EVENT_DATA + 4));
    }
  };
  try {
    setsockoptInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF);
  } catch {
    // the default queue, then: an overflow is reported as lost events, and the agent looks at everything again
  }
  setsockoptTimeval(fd, SOL_SOCKET, SO_RCVTIMEO, IDLE_MS);
  while (Atomics.load(stop, 0) === 0) {
    try {
      take(buf, 0, readSync(fd, buf, 0, buf.length, null));
    } catch (e) {
      const errno = errnoOf(e);
      if (errno === ENOBUFS)
        lost = true; // the socket's queue overflowed: events were dropped
      else if (errno === EAGAIN || errno === EINTR) continue;
      else {
        post({ failed: `reading process events: ${(e as Error).message}` });
        return;
      }
    }
    Atomics.wait(stop, 0, 0, BATCH_MS);
    for (;;) {
      let k: number;
      try {
        k = batch.receive(fd);
      } catch (e) {
        if (!(e instanceof SysError) || e.errno !== ENOBUFS) throw e;
        lost = true;
        continue;
      }
      for (let i = 0; i < k; i++) take(bytes, batch.offset(i), batch.length(i));
      if (k < batch.count) break;
    }
    if (pending.size || lost) {
      const processes: [number, string][] = [];
      for (const pid of pending) {
        const cgroup = cgroupOf(pid);
        if (cgroup !== undefined) processes.push([pid, cgroup]);
      }
      if (processes.length || lost) post({ processes, lost });
    }
    pending.clear();
    lost = false;
  }
}

const head = new Uint8Array(new ArrayBuffer(4096));
const headAddress = addressOf(head);
const headText = Buffer.from(head.buffer);

/**
 * The cgroup v2 path of a process (the "0::" line of /proc/PID/cgroup); undefined when it has gone (most
 * processes that exec only to exit have, by the time a batch is read) or is in no cgroup v2.
 */
function cgroupOf(pid: number): string | undefined {
  const n = readHead(`/proc/${pid}/cgroup`, head, headAddress);
  if (n <= 0) return undefined;
  const text = headText.toString("utf8", 0, n);
  const at = text.startsWith("0::") ? 0 : text.indexOf("\n0::") + 1;
  if (at === 0 && !text.startsWith("0::")) return undefined;
  const end = text.indexOf("\n", at);
  return text.slice(at + 3, end < 0 ? undefined : end);
}

main();
