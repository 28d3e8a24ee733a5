/**
 * The reader thread of read-ahead.ts: read each queued fd to its end into the ring's slots, in order, until
 * asked to stop.
 */
import { workerData } from "node:worker_threads";
import {
  FULL,
  HEADER,
  JOB,
  JOBS,
  LEN,
  MAIN_READING,
  NOT_STARTED,
  READING,
  type Ring,
  readFd,
  SLOT_BYTES,
  START,
  STATE,
  STOPPED,
} from "./read-ahead-ring.js";

const { control, jobs, header, data, slots } = workerData as Ring;

function reading(): boolean {
  return Atomics.load(control, STATE) === READING;
}

/** Take over from the main thread between two of its reads; false when it was stopped first. */
function takeOver(): boolean {
  for (;;) {
    const was = Atomics.compareExchange(control, STATE, NOT_STARTED, READING);
    if (was === NOT_STARTED) return true;
    if (was !== MAIN_READING) return false;
    Atomics.wait(control, STATE, MAIN_READING, 5);
  }
}

function run(): void {
  if (!takeOver()) return;
  let slot = 0;
  // The fd the main thread was reading goes on from where its reads left it.
  for (let job = Atomics.load(control, START); reading(); ) {
    if (job >= Atomics.load(control, JOBS)) {
      Atomics.wait(control, JOBS, job, 1000);
      continue;
    }
    const h = slot * HEADER;
    if (Atomics.load(header, h + FULL) === 1) {
      Atomics.wait(header, h + FULL, 1, 1000); // the main thread is behind
      continue;
    }
    const fd = jobs[job] as number;
    const into = data.subarray(slot * SLOT_BYTES, (slot + 1) * SLOT_BYTES);
    // Fill the slot while a whole read of bpf_seq_read (8 pages) still fits, or until the fd ends or fails
    // (a failure after some bytes is handed out by the next slot).
    let len = 0;
    for (;;) {
      const n = readFd(fd, into.subarray(len));
      if (n <= 0) {
        if (len === 0) len = n;
        break;
      }
      len += n;
      if (SLOT_BYTES - len < SLOT_BYTES / 2 || !reading()) break;
    }
    header[h + JOB] = job;
    header[h + LEN] = len;
    Atomics.store(header, h + FULL, 1);
    Atomics.notify(header, h + FULL);
    slot = (slot + 1) % slots;
    if (len <= 0) job++;
  }
}

try {
  run();
} finally {
  Atomics.store(control, STATE, STOPPED);
  Atomics.notify(control, STATE);
  for (let i = 0; i < slots; i++) Atomics.notify(header, i * HEADER + FULL);
}
