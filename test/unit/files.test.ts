/**
 * src/sys/files.ts against the real file system: an atomic write replaces a symlink instead of following it
 * and refuses a directory before anything is written; a lock excludes another process (flock(1)) until it is
 * released; a private directory refuses one that another user could write.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { TcpkaError } from "../../src/errors.js";
import { AtomicFile, privateDir, privateRunDir, writeFileAtomic } from "../../src/sys/files.js";
import { Lock } from "../../src/sys/lock.js";

function scratch(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "tcpka-files-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test("writeFileAtomic replaces a symlink at the path and leaves its target alone", (t) => {
  const dir = scratch(t);
  const victim = join(dir, "victim");
  writeFileSync(victim, "precious\n");
  const path = join(dir, "out.conf");
  symlinkSync(victim, path);
  writeFileAtomic(path, "new\n");
  assert.equal(readFileSync(victim, "utf8"), "precious\n", "the symlink's target is untouched");
  assert.ok(lstatSync(path).isFile(), "the path is now a regular file");
  assert.equal(readFileSync(path, "utf8"), "new\n");
  assert.deepEqual(readdirSync(dir).sort(), ["out.conf", "victim"], "no temporary file is left");
});

test("AtomicFile.create refuses a directory before anything is written, and abort() leaves nothing", (t) => {
  const dir = scratch(t);
  assert.throws(
    () => AtomicFile.create(dir),
    (e: unknown) => e instanceof TcpkaError && /it is a directory/.test(e.message),
  );
  const f = AtomicFile.create(join(dir, "x"));
  f.abort();
  assert.deepEqual(readdirSync(dir), []);
});

test("Lock excludes another process until it is released", (t) => {
  if (spawnSync("flock", ["--version"]).status !== 0) return t.skip("needs flock(1) (util-linux)");
  const path = join(scratch(t), "lock");
  const held = () => spawnSync("flock", ["-n", path, "true"]).status !== 0;
  const lock = Lock.take(path, "test");
  assert.equal(held(), true, "flock -n fails while tcpka holds the lock");
  lock.release();
  assert.equal(held(), false, "and succeeds once released");
  const shared = Lock.take(path, "test", { shared: true });
  const other = Lock.take(path, "test", { shared: true });
  assert.equal(spawnSync("flock", ["-n", "-s", path, "true"]).status, 0, "shared locks share");
  shared.release();
  other.release();
});

test("privateDir refuses a directory that others may write; privateRunDir makes a 0700 one", (t) => {
  const dir = join(scratch(t), "d");
  privateDir(dir);
  assert.equal(lstatSync(dir).mode & 0o777, 0o700);
  chmodSync(dir, 0o777);
  assert.throws(() => privateDir(dir), /refusing to use .*: its mode is 777/);
  const run = privateRunDir("tcpka-test-");
  t.after(() => rmSync(run, { recursive: true, force: true }));
  assert.equal(lstatSync(run).mode & 0o777, 0o700);
  if (process.geteuid?.() === 0) assert.ok(run.startsWith("/run/tcpka/tcpka-test-"), run);
});
