/**
 * What a test makes lives as long as a scope: a TestContext (the test), or `{ after }` of node:test (the file).
 * Every name a test gives to something on the machine (namespace, cgroup, and so a BPF pin) starts with
 * NAME_PREFIX, unique to this test process.
 */
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** What end-of-test cleanups are registered on: a TestContext, or `{ after }` of node:test for a file. */
export interface Scope {
  after(fn: () => void | Promise<void>): void;
}

/** The prefix of every name this process gives to a namespace or cgroup (and so to a tcpka pin). */
export const NAME_PREFIX = `tcpka-t-${process.pid}-`;

/** NAME_PREFIX and six random characters. */
export function uniqueName(): string {
  return `${NAME_PREFIX}${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A private temporary directory (0700), removed when the scope ends; with `readable`, one that every user may
 * read (0755), for programs run as nobody.
 */
export function tempDir(scope: Scope, opts: { readable?: boolean } = {}): string {
  const dir = mkdtempSync(join(tmpdir(), "tcpka-e2e-"));
  scope.after(() => rmSync(dir, { recursive: true, force: true }));
  if (opts.readable) chmodSync(dir, 0o755);
  return dir;
}
