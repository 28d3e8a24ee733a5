/**
 * What read-ahead.ts and its reader thread (read-ahead-worker.ts) share: the ring's layout and read(2). No
 * koffi here: the reader imports only this and node's own modules, so that ending it at any moment is safe.
 */
import { readSync } from "node:fs";

/** Slot size: bpf_seq_read hands out at most 8 pages (32 KiB) per read; two reads fill a slot. */
export const SLOT_BYTES = 64 * 1024;
export const SLOTS = 64; // 4 MiB: about 40,000 TCP records ahead
export const MAX_JOBS = 4096;

/** control[] indices */
export const STATE = 0;
export const JOBS = 1; // how many fds are queued
export const START = 2; // the first job the main thread has not read to its end itself
/** STATE values: until the reader starts, the main thread reads for itself, one read at a time */
export const NOT_STARTED = 0;
export const READING = 1; // the reader has started: the main thread takes everything from the ring
export const STOPPING = 2;
export const STOPPED = 3;
export const MAIN_READING = 4; // the main thread is in a read(2) of its own: the reader waits to start

/** Per slot in header[]: FULL (0 or 1), JOB (index of its fd), LEN (bytes; 0: the fd's end; < 0: -errno). */
export const HEADER = 3;
export const FULL = 0;
export const JOB = 1;
export const LEN = 2;

/** What both threads share: plain data, so it crosses to the worker as it is. */
export interface Ring {
  control: Int32Array;
  jobs: Int32Array;
  header: Int32Array;
  data: Uint8Array;
  slots: number;
}

/** read(2) through node:fs, which both threads can call: the bytes read, 0 at the end, -errno on failure (EINTR is retried). */
export function readFd(fd: number, into: Uint8Array): number {
  for (;;) {
    try {
      return readSync(fd, into, 0, into.length, null);
    } catch (e) {
      const errno = Math.abs((e as NodeJS.ErrnoException).errno ?? 5);
      if (errno !== 4) return -errno;
    }
  }
}
