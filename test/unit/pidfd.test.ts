/**
 * SocketBorrower (src/sys/pidfd.ts) on this process's own fds: a duplicate is handed to the caller only when it
 * is the socket that was listed, a socket of sockfs with the listed inode number. Anything else with that
 * number is refused as a reused fd (ESTALE) before the caller can make a single option call on it.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { O_PATH, SO_TYPE, SOCK_STREAM, SOL_SOCKET } from "../../src/kernel/constants.js";
import { getsockoptInt, SysError } from "../../src/sys/libc.js";
import { SocketBorrower } from "../../src/sys/pidfd.js";

test("with() refuses a duplicate that has the listed inode number but is no sockfs socket", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "tcpka-pidfd-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, "plain");
  writeFileSync(file, "");
  const path = join(dir, "unix.sock");
  const unix = net.createServer().listen(path);
  await once(unix, "listening");
  t.after(() => unix.close());
  const borrower = new SocketBorrower();
  t.after(() => borrower.close());

  // A regular file, and the Unix socket's file opened O_PATH: S_ISSOCK, but on this file system, not on sockfs.
  for (const [what, fd] of [
    ["a regular file", openSync(file, "r")],
    ["a socket file opened O_PATH", openSync(path, O_PATH)],
  ] as const) {
    t.after(() => closeSync(fd));
    let ran = false;
    assert.throws(
      () =>
        borrower.with(process.pid, fd, fstatSync(fd).ino, () => {
          ran = true;
        }),
      (e: unknown) => e instanceof SysError && e.errnoName === "ESTALE",
      what,
    );
    assert.equal(ran, false, `${what}: the caller never got the duplicate`);
  }

  // The listening socket itself, listed with its inode, is handed over.
  const fd = (unix as unknown as { _handle: { fd: number } })._handle.fd;
  const type = borrower.with(process.pid, fd, fstatSync(fd).ino, (dup) => getsockoptInt(dup, SOL_SOCKET, SO_TYPE));
  assert.equal(type, SOCK_STREAM);
});
