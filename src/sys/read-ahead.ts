/**
 * Read fds to their end on a thread of their own while this thread decodes what was read: the kernel's half of
 * a BPF iterator walk (bpf_seq_read runs the program over every object; about 1 µs per socket, 0.1 s at
 * 100,000) then costs the main thread no time, on a machine with a second core.
 *
 * The reader (read-ahead-worker.ts) takes the queued fds in order and reads each into a ring of slots in
 * memory both threads share; the main thread takes the bytes out in the same order through the Stream of each
 * fd, waiting (Atomics.wait) when the reader is behind. Until the reader has started (about 40 ms after
 * start(), on the other core), the main thread reads for itself, and the reader takes over between two of
 * its reads, from where they left the fd. Everything is synchronous on both sides, so the callers' loops stay
 * as they are. The reader never keeps the process alive.
 *
 * The fds must be ones whose reads do not block (BPF iterators, files): stop() waits for a read in progress.
 * They stay the caller's: it closes them, but only after stop(), which returns once the reader is in no
 * read(2) and will start none (a closed fd number can be reused at once by another open, whose bytes the
 * reader must never take). If the reader dies, the main thread reads on where it stopped: the bytes are the same.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import type { Worker } from "node:worker_threads";
import { SysError } from "./libc.js";
import {
  BY_MAIN,
  FULL,
  HEADER,
  JOB,
  JOBS,
  LEN,
  MAIN_READING,
  MAX_JOBS,
  NOT_STARTED,
  READING,
  type Ring,
  readFd,
  SLOT_BYTES,
  SLOTS,
  START,
  STATE,
  STOPPED,
  STOPPING,
} from "./read-ahead-ring.js";

/**
 * node:worker_threads when a reader is made, not when this module loads: an ES import of it loads the whole of
 * node:stream (26 of Node's modules, a few ms), which a command that reads few sockets never needs.
 */
const require = createRequire(import.meta.url);
const workerThreads = () => require("node:worker_threads") as typeof import("node:worker_threads");

/** A reader that holds a slot this long without a word is taken for dead. */
const STALL_MS = 10_000;
/**
 * From this many sockets on a reader saves more than it costs: paired `ls --json` with and without it (session 19,
 * the command line started from its code cache, so the main thread reaches the walks before a worker is up, which
 * takes 50-100 ms here): 20,000 sockets 1.04-1.08x (the table 1.105x), 30,000 0.994x, 50,000 0.952x, 100,000
 * 0.817x. --all-netns takes one whatever the count: its walks of other namespaces overlap the decoding.
 */
const READ_AHEAD_FROM = 40_000;

let spare: ReadAhead | undefined;

interface Stash {
  parts: Buffer[];
  at: number;
  offset: number;
  /** the read error that ended it, 0 for none */
  errno: number;
}

export interface Stream {
  /** Copy the fd's next bytes into `into`: how many; 0 at its end. Throws SysError as read(2) would. */
  read(into: Uint8Array): number;
}

export class ReadAhead {
  private readonly ring: Ring;
  private readonly worker: Worker | undefined;
  private queued = 0;
  /** the job being read by this thread's streams, and where in the ring */
  private current = 0;
  private slot = 0;
  private offset = 0; // bytes of the current slot already taken
  /** set once the reader is stopped or never started: the rest is read here */
  private alone = false;
  /** what steal() read, by job */
  private readonly stolen = new Map<number, Stash>();
  private takenCount = 0;

  private constructor(worker: Worker | undefined, ring: Ring) {
    this.worker = worker;
    this.ring = ring;
    if (!worker) this.alone = true;
  }

  /**
   * Start a reader for an inspection that is about to come, before the code that will use it is loaded (the
   * command line, main.ts), when the host has enough sockets for it to pay (worthIt); start() takes it.
   */
  static warm(namespaces: "one" | "all"): void {
    if (!spare && process.geteuid?.() === 0 && ReadAhead.worthIt(namespaces === "all" ? 2 : 1))
      spare = ReadAhead.spawn();
  }

  /** The reader that warm() started, or a new one: start it before other work, so that its start-up overlaps it. */
  static start(): ReadAhead {
    const r = spare ?? ReadAhead.spawn();
    spare = undefined;
    return r;
  }

  /**
   * Whether a walk of these many namespaces holds enough sockets for a reader to pay for its start-up (about
   * 35 ms of the other core, a few MB): several namespaces, or enough in tcpka's own, as /proc/net/sockstat
   * counts them.
   */
  static worthIt(namespaces: number): boolean {
    if (namespaces > 1) return true;
    try {
      const m = /^TCP: inuse (\d+) orphan \d+ tw (\d+)/m.exec(readFileSync("/proc/net/sockstat", "latin1"));
      return m !== null && Number(m[1]) + Number(m[2]) >= READ_AHEAD_FROM;
    } catch {
      return false;
    }
  }

  private static spawn(): ReadAhead {
    const ring: Ring = {
      control: new Int32Array(new SharedArrayBuffer(12)),
      jobs: new Int32Array(new SharedArrayBuffer(MAX_JOBS * 4)),
      claims: new Int32Array(new SharedArrayBuffer(MAX_JOBS * 4)),
      header: new Int32Array(new SharedArrayBuffer(SLOTS * HEADER * 4)),
      data: new Uint8Array(new SharedArrayBuffer(SLOTS * SLOT_BYTES)),
      slots: SLOTS,
    };
    let worker: Worker | undefined;
    try {
      // A small heap: it makes no objects to speak of, and the isolate's default reservation shows in RSS.
      worker = new (workerThreads().Worker)(new URL("./read-ahead-worker.js", import.meta.url), {
        workerData: ring,
        // Its stdio not piped into this process's: that would open process.stdout, which makes a piped fd 1
        // non-blocking (see Out in ui/format.ts). It writes nothing.
        stdout: true,
        stderr: true,
        resourceLimits: { maxOldGenerationSizeMb: 8, maxYoungGenerationSizeMb: 1 },
      });
      worker.unref();
      worker.on("error", () => {}); // it then stops (the worker's finally says so); the streams read here
    } catch {
      worker = undefined;
    }
    return new ReadAhead(worker, worker ? ring : { ...ring, slots: 0 });
  }

  /** A stream of fd's bytes; streams must be read in the order they were queued, each to its end. */
  queue(fd: number): Stream {
    if (this.queued >= MAX_JOBS) return directStream(fd); // the rest (thousands of namespaces) read here
    const job = this.queued++;
    this.ring.jobs[job] = fd;
    Atomics.store(this.ring.control, JOBS, this.queued);
    Atomics.notify(this.ring.control, JOBS);
    return { read: (into) => this.read(job, fd, into) };
  }

  private read(job: number, fd: number, into: Uint8Array): number {
    if (job !== this.current) throw new Error(`ReadAhead: fd ${fd} read out of turn`);
    const stolen = this.stolen.get(job);
    if (stolen) return this.fromStash(stolen, into);
    const { control, header } = this.ring;
    const h = this.slot * HEADER;
    if (!this.alone) {
      for (;;) {
        if (Atomics.load(header, h + FULL) === 1) return this.take(job, into);
        const state = Atomics.load(control, STATE);
        if (state === NOT_STARTED) {
          if (Atomics.compareExchange(control, STATE, NOT_STARTED, MAIN_READING) !== NOT_STARTED) continue;
          try {
            return this.readHere(fd, into);
          } finally {
            Atomics.store(control, START, this.current);
            Atomics.store(control, STATE, NOT_STARTED);
            Atomics.notify(control, STATE);
          }
        }
        if (state !== READING) break; // it stopped (or died): the ring holds nothing more
        // Rather than wait, read a walk from the end of the queue (the reader takes them from the front).
        if (this.steal()) continue;
        // The reader is reading this slot: wait for it, but not for ever on one that stopped answering.
        if (Atomics.wait(header, h + FULL, 0, STALL_MS) === "timed-out" && Atomics.load(header, h + FULL) === 0)
          throw new Error("the read-ahead thread stopped answering");
      }
      this.alone = true;
    }
    // What the reader read is taken first, even once it has stopped; then the fd is read here.
    if (this.ring.slots > 0 && Atomics.load(header, h + FULL) === 1) return this.take(job, into);
    return this.readHere(fd, into);
  }

  /**
   * Take the last queued fd that the reader has not begun, if there are others between it and this one, and
   * read it to its end here: with many namespaces, both cores then run the kernel's walks. false when there is
   * none to take.
   */
  private steal(): boolean {
    for (let j = this.queued - 1; j >= this.current + 2; j--) {
      if (this.stolen.has(j)) continue;
      if (Atomics.compareExchange(this.ring.claims, j, 0, BY_MAIN) !== 0) return false; // the reader is there
      const fd = this.ring.jobs[j] as number;
      const stash: Stash = { parts: [], at: 0, offset: 0, errno: 0 };
      for (;;) {
        const b = Buffer.allocUnsafe(SLOT_BYTES);
        const n = readFd(fd, b);
        if (n < 0) stash.errno = -n;
        if (n <= 0) break;
        stash.parts.push(b.subarray(0, n));
      }
      this.stolen.set(j, stash);
      this.takenCount++;
      return true;
    }
    return false;
  }

  /** Hand out a walk read by steal(); at its end the next stream's turn comes. */
  private fromStash(stash: Stash, into: Uint8Array): number {
    const part = stash.parts[stash.at];
    if (!part) {
      this.stolen.delete(this.current);
      this.current++;
      if (stash.errno) throw new SysError("read", stash.errno);
      return 0;
    }
    const n = Math.min(part.length - stash.offset, into.length);
    into.set(part.subarray(stash.offset, stash.offset + n));
    stash.offset += n;
    if (stash.offset === part.length) {
      stash.at++;
      stash.offset = 0;
    }
    return n;
  }

  private readHere(fd: number, into: Uint8Array): number {
    const n = readFd(fd, into);
    if (n <= 0) this.current++; // a failure ends the stream, as it does where the reader meets it
    if (n < 0) throw new SysError("read", -n);
    return n;
  }

  /** Copy from the current slot, which is full. */
  private take(job: number, into: Uint8Array): number {
    const header = this.ring.header;
    const h = this.slot * HEADER;
    const len = header[h + LEN] as number;
    if ((header[h + JOB] as number) !== job) throw new Error("ReadAhead: the ring is out of step");
    if (len <= 0) {
      this.release();
      this.current++;
      if (len < 0) throw new SysError("read", -len);
      return 0;
    }
    const n = Math.min(len - this.offset, into.length);
    const from = this.slot * SLOT_BYTES + this.offset;
    into.set(this.ring.data.subarray(from, from + n));
    this.offset += n;
    if (this.offset === len) this.release();
    return n;
  }

  private release(): void {
    const { header } = this.ring;
    const h = this.slot * HEADER;
    this.offset = 0;
    Atomics.store(header, h + FULL, 0);
    Atomics.notify(header, h + FULL);
    this.slot = (this.slot + 1) % this.ring.slots;
  }

  /** How many queued fds this thread read for itself from the end of the queue (steal(); tests watch it). */
  taken(): number {
    return this.takenCount;
  }

  /** How many slots the reader has filled that this thread has not taken yet (tests watch it read ahead). */
  pending(): number {
    let n = 0;
    for (let i = 0; i < this.ring.slots; i++) n += Atomics.load(this.ring.header, i * HEADER + FULL);
    return n;
  }

  /**
   * Make the reader stop: when this returns it is in no read(2) and starts none, so the caller may close the
   * fds. What it read ahead for streams not finished is dropped; reading them further here is an error.
   */
  stop(): void {
    const { control } = this.ring;
    this.alone = true;
    this.current = Number.MAX_SAFE_INTEGER;
    if (!this.worker) return;
    if (Atomics.compareExchange(control, STATE, NOT_STARTED, STOPPED) === NOT_STARTED) return;
    Atomics.compareExchange(control, STATE, READING, STOPPING);
    Atomics.notify(control, JOBS);
    for (let i = 0; i < this.ring.slots; i++) Atomics.notify(this.ring.header, i * HEADER + FULL);
    const deadline = Date.now() + STALL_MS;
    while (Atomics.load(control, STATE) !== STOPPED) {
      if (Date.now() > deadline) throw new Error("the read-ahead thread did not stop");
      Atomics.wait(control, STATE, STOPPING, 50);
    }
  }
}

/** A Stream that reads the fd on this thread, as it is asked to. */
export function directStream(fd: number): Stream {
  return {
    read(into) {
      const n = readFd(fd, into);
      if (n < 0) throw new SysError("read", -n);
      return n;
    },
  };
}
