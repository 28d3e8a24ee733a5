/**
 * The tcpka CLI (bin/tcpka.js) as the tests run it: to its end or in the background, in this process's
 * namespaces, as root or as another user; and the shape every error of it has.
 */
import assert from "node:assert/strict";
import { chmodSync, cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO, TCPKA } from "./paths.js";
import {
  cleanEnv,
  type Done,
  exec,
  type Process,
  type Result,
  runSync,
  type StartOptions,
  start,
} from "./processes.js";
import type { Scope } from "./scope.js";
import { asUser, type User } from "./users.js";

let readableCopy: string | undefined;
/** By uid: whether that user can read the checkout's dist/cli/main.js. */
const canRead = new Map<number, boolean>();

/**
 * bin/tcpka.js where `user` can read it: the checkout itself when it can (the checkout may sit under a directory
 * only root can enter, such as /root), otherwise a copy of what tcpka needs at run time (package.json, bin, dist,
 * node_modules), made once and removed when this process exits.
 */
export function tcpkaFor(user: User | undefined): string {
  if (!user) return TCPKA;
  let readable = canRead.get(user.uid);
  if (readable === undefined) {
    readable = runSync([...asUser(user), "test", "-r", join(REPO, "dist", "cli", "main.js")]).status === 0;
    canRead.set(user.uid, readable);
  }
  if (readable) return TCPKA;
  if (readableCopy === undefined) {
    const dir = mkdtempSync(join(tmpdir(), "tcpka-t-"));
    process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
    chmodSync(dir, 0o755);
    for (const f of ["package.json", "bin", "dist", "node_modules"]) {
      cpSync(join(REPO, f), join(dir, f), { recursive: true });
    }
    readableCopy = dir;
  }
  return join(readableCopy, "bin", "tcpka.js");
}

/**
 * TMPDIR for tcpka and the programs it runs (`tcpka trace` keeps its event file in a directory there): whatever
 * a killed tcpka leaves behind goes with this directory when the test process exits.
 */
let tcpkaTmp: string | undefined;
function tcpkaEnv(): NodeJS.ProcessEnv {
  if (tcpkaTmp === undefined) {
    const dir = mkdtempSync(join(tmpdir(), "tcpka-e2e-tmp-"));
    process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
    tcpkaTmp = dir;
  }
  return cleanEnv({ TMPDIR: tcpkaTmp });
}

/** The tcpka CLI, as `node bin/tcpka.js ARGS...`, run to its end without blocking the event loop. */
export function tcpka(
  scope: Scope,
  args: readonly string[],
  opts: StartOptions & { input?: string } = {},
): Promise<Done> {
  return exec(scope, [process.execPath, TCPKA, ...args], { env: tcpkaEnv(), ...opts });
}

/** The tcpka CLI started in the background (for `run` with a program that holds its connections). */
export function startTcpka(scope: Scope, args: readonly string[], opts: StartOptions = {}): Process {
  return start(scope, [process.execPath, TCPKA, ...args], { env: tcpkaEnv(), ...opts });
}

/**
 * The tcpka CLI in this process's namespaces, as root or as `user`, waited for synchronously. (Netns.tcpka runs it
 * in a network namespace; `ip netns exec` remounts /sys there, which hides the cgroup2 mount and /sys/fs/bpf.)
 */
export function tcpkaHere(args: readonly string[], opts: { user?: User } = {}): Result {
  return runSync([...asUser(opts.user), process.execPath, tcpkaFor(opts.user), ...args], { timeoutMs: 60_000 });
}

/** stderr is `tcpka: <message>\n` with an optional `hint: <text>\n`: nothing else, no stack trace. */
export function assertOneLineError(r: Result, status: 1 | 2, message: RegExp): void {
  assert.equal(r.status, status, `exit code; stdout: ${r.stdout} stderr: ${r.stderr}`);
  assert.match(r.stderr, /^tcpka: [^\n]+\n(hint: [^\n]+\n)?$/);
  assert.match(r.stderr.split("\n")[0]!, message);
  assert.ok(!r.stderr.includes("    at "), "no stack trace");
}

/** assertOneLineError, and nothing on stdout. */
export function assertOneLineErrorOnly(r: Result, status: 1 | 2, message: RegExp): void {
  assertOneLineError(r, status, message);
  assert.equal(r.stdout, "");
}
