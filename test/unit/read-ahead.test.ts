/**
 * src/sys/read-ahead.ts on real files: the reader thread reads queued fds ahead of the main thread, the bytes
 * come out of every stream whole and in order (through a ring smaller than the files, from reads of odd
 * sizes, wherever the reader took over from the main thread), a read error reaches the stream it belongs to,
 * and after stop() the reader reads nothing more.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { SysError } from "../../src/sys/libc.js";
import { ReadAhead, type Stream } from "../../src/sys/read-ahead.js";

/** Files of these sizes with random bytes, opened; closed and removed after the test. */
function files(t: TestContext, sizes: readonly number[]): { fds: number[]; contents: Buffer[] } {
  const dir = mkdtempSync(join(tmpdir(), "tcpka-read-ahead-"));
  const fds: number[] = [];
  const contents = sizes.map((n, i) => {
    const b = randomBytes(n);
    writeFileSync(join(dir, `f${i}`), b);
    fds.push(openSync(join(dir, `f${i}`), "r"));
    return b;
  });
  t.after(() => {
    for (const fd of fds) closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });
  return { fds, contents };
}

/** Read a stream to its end with reads of `chunk` bytes. */
function drain(s: Stream, chunk: number): Buffer {
  const parts: Buffer[] = [];
  for (;;) {
    const b = Buffer.alloc(chunk);
    const n = s.read(b);
    if (n === 0) return Buffer.concat(parts);
    parts.push(b.subarray(0, n));
  }
}

test("every stream gives its fd's bytes, whole and in order, through a ring smaller than the files", (t) => {
  // 0 bytes, 1, about a slot, and two larger than the whole ring (4 MiB): the reader waits for room.
  const { fds, contents } = files(t, [0, 1, 65_537, 5_000_000, 9_000_001]);
  const ahead = ReadAhead.start();
  t.after(() => ahead.stop());
  const streams = fds.map((fd) => ahead.queue(fd));
  // Reads of an odd size split the slots anywhere; the first ones are made before the reader is up.
  for (const [i, s] of streams.entries()) assert.ok(drain(s, 10_007).equals(contents[i] as Buffer), `file ${i}`);
});

test("the reader reads ahead while the main thread does something else", async (t) => {
  const { fds, contents } = files(t, [1_000_000]);
  const ahead = ReadAhead.start();
  t.after(() => ahead.stop());
  const stream = ahead.queue(fds[0] as number);
  const deadline = Date.now() + 5000;
  while (ahead.pending() === 0 && Date.now() < deadline) await sleep(10);
  assert.ok(ahead.pending() > 0, "the reader filled slots that nobody had asked for yet");
  assert.ok(drain(stream, 65_536).equals(contents[0] as Buffer));
});

test("a read error reaches the stream whose fd failed, and the next stream reads on", async (t) => {
  const { fds, contents } = files(t, [100_000, 100_000]);
  const dir = mkdtempSync(join(tmpdir(), "tcpka-read-ahead-dir-"));
  mkdirSync(join(dir, "d"));
  const dirFd = openSync(join(dir, "d"), "r");
  t.after(() => {
    closeSync(dirFd);
    rmSync(dir, { recursive: true, force: true });
  });
  for (const [i, wait] of [false, true].entries()) {
    const ahead = ReadAhead.start();
    try {
      const bad = ahead.queue(dirFd);
      const good = ahead.queue(fds[i] as number);
      if (wait) {
        // the reader, not the main thread, meets the error
        const deadline = Date.now() + 5000;
        while (ahead.pending() < 2 && Date.now() < deadline) await sleep(10);
        assert.ok(ahead.pending() >= 2, "the reader read both fds");
      }
      assert.throws(
        () => bad.read(Buffer.alloc(4096)),
        (e) => e instanceof SysError && e.errno === 21, // EISDIR
      );
      assert.ok(drain(good, 4096).equals(contents[i] as Buffer));
    } finally {
      ahead.stop();
    }
  }
});

test("after stop() the reader reads no more, and the streams refuse to go on", async (t) => {
  const { fds } = files(t, [9_000_000]);
  const fd = fds[0] as number;
  const ahead = ReadAhead.start();
  const stream = ahead.queue(fd);
  const deadline = Date.now() + 5000;
  while (ahead.pending() === 0 && Date.now() < deadline) await sleep(10);
  stream.read(Buffer.alloc(1000));
  ahead.stop();
  // The file position no longer moves: nothing reads the fd once stop() has returned.
  const before = position(fd);
  await sleep(200);
  assert.equal(position(fd), before, "the fd was read after stop()");
  assert.ok(before < 9_000_000, "the ring's size held the reader back");
  assert.throws(() => stream.read(Buffer.alloc(10)), /out of turn/);
});

/** The fd's file offset, from /proc/self/fdinfo. */
function position(fd: number): number {
  const text = readFileSync(`/proc/self/fdinfo/${fd}`, "latin1");
  return Number(/^pos:\s+(\d+)/m.exec(text)?.[1]);
}
