/**
 * The command line's code cache (src/cli/boot.ts): made by a command's first run that succeeds, used as it is by
 * the next, and never read where it could be someone else's. A cache is code this process runs, as root: a file
 * that others may write, or a symlink, must be ignored and replaced, and a file that is not a cache V8 accepts must
 * cost nothing but the compile.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  lstatSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { REPO, TCPKA } from "../helpers/paths.js";

// The built module, whose bundle path is the one bin/tcpka.js runs (dist-test's copy would look beside itself).
const { cacheKey, cachePath } = (await import(
  pathToFileURL(join(REPO, "dist", "cli", "boot.js")).href
)) as typeof import("../../src/cli/boot.js");

function sysctl(): string {
  const r = spawnSync(process.execPath, [TCPKA, "sysctl"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

test("the cache's key: the command's first word (+json), summary for tcpka alone, none for help or odd bytes", () => {
  assert.equal(cacheKey(["ls", "--json"]), "ls+json");
  assert.equal(cacheKey(["ls", "-w"]), "ls");
  assert.equal(cacheKey(["idle-timeout", "198.18.0.1:80"]), "idle-timeout");
  assert.equal(cacheKey([]), "summary");
  assert.equal(cacheKey(["--all-netns"]), "summary");
  assert.equal(cacheKey(["--all-netns", "-x"]), undefined);
  assert.equal(cacheKey(["ls", "--help"]), undefined);
  assert.equal(cacheKey(["--version"]), undefined);
  assert.equal(cacheKey(["help", "ls"]), undefined);
  assert.equal(cacheKey(["../../etc/x"]), undefined);
  assert.equal(cacheKey(["LS"]), undefined);
});

test("a command's first run makes its cache, the next uses it; one that is not safe or not a cache is replaced", (t) => {
  const path = cachePath("sysctl");
  if (path === undefined) {
    t.skip("no runtime directory for this user (root's is /run/tcpka; others need $XDG_RUNTIME_DIR)");
    return;
  }
  // Other builds' caches (another install, an older build): the two newest are kept, older ones removed.
  const stale = [1, 2, 3].map((n) => join(dirname(path), `code-sysctl.0.0.0-${n}-2-3.v8`));
  const elsewhere = `${path}.test-target`;
  try {
    rmSync(path, { force: true });
    stale.forEach((f, i) => {
      writeFileSync(f, "another build's cache", { mode: 0o600 });
      utimesSync(f, 1_000_000 + i, 1_000_000 + i); // 1970: older than any real cache here
    });
    // Other builds' caches here before this run (other checkouts' too), newest first: the two newest stay.
    const others = (): string[] =>
      readdirSync(dirname(path))
        .filter((n) => n.startsWith("code-sysctl.") && n.endsWith(".v8") && join(dirname(path), n) !== path)
        .sort((a, b) => statSync(join(dirname(path), b)).mtimeMs - statSync(join(dirname(path), a)).mtimeMs);
    const kept = others().slice(0, 2);
    const expected = sysctl();
    const made = statSync(path);
    assert.ok(made.isFile() && made.size > 10_000, `${made.size} bytes`);
    assert.equal(made.mode & 0o777, 0o600);
    assert.equal(made.uid, process.geteuid?.());
    assert.deepEqual(others(), kept, "other builds' caches beyond the two newest are removed when one is made");
    assert.equal(existsSync(stale[0]!), false);

    // Used as it is: V8 accepted it, so nothing was written (a new cache would be a new file, by rename).
    assert.equal(sysctl(), expected);
    assert.equal(statSync(path).ino, made.ino);

    // Not a cache: V8 refuses it, the command runs the same, and a real one takes its place.
    writeFileSync(path, Buffer.alloc(made.size, 0x5a), { mode: 0o600 });
    const garbage = statSync(path).ino;
    assert.equal(sysctl(), expected);
    assert.notEqual(statSync(path).ino, garbage);
    assert.ok(statSync(path).size > 10_000);

    // Writable by others: not read (so not trusted), and replaced by one of mode 0600.
    chmodSync(path, 0o666);
    const open = statSync(path).ino;
    assert.equal(sysctl(), expected);
    assert.notEqual(statSync(path).ino, open);
    assert.equal(statSync(path).mode & 0o777, 0o600);

    // A symlink at the name: never followed; replaced by a file, and what it pointed at is left as it was.
    writeFileSync(elsewhere, "not for tcpka", { mode: 0o600 });
    rmSync(path);
    symlinkSync(elsewhere, path);
    assert.equal(sysctl(), expected);
    assert.ok(lstatSync(path).isFile());
    assert.equal(statSync(elsewhere).size, "not for tcpka".length);
  } finally {
    for (const f of stale) rmSync(f, { force: true });
    rmSync(elsewhere, { force: true });
  }
});
