/**
 * The shim must never change what a program sees except the keepalive options: return values, errno and fd
 * numbers of socket calls are identical with and without it (test/fixtures/errno_check.c, compiled here), a
 * program it cannot reach is refused with one clear line instead of being run unprotected, and a broken
 * configuration set by hand disables it with one `libtcpka:` line while the program runs unchanged.
 */
import assert from "node:assert/strict";
import { chmodSync, chownSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, type TestContext, test } from "node:test";
import { compileC } from "../helpers/compile.js";
import { needs } from "../helpers/env.js";
import { exactConnections, settingsOf, WANT, WANT_FLAGS } from "../helpers/keepalive.js";
import { SHIM } from "../helpers/paths.js";
import { cleanEnv, exec, shimEnv } from "../helpers/processes.js";
import { tempDir } from "../helpers/scope.js";
import { startTcpka, tcpka } from "../helpers/tcpka.js";

const DIR = tempDir({ after });
const built = new Map<string, string>();

/** A fixture compiled once per file. */
function program(source: string, out: string, flags: readonly string[] = []): string {
  let exe = built.get(out);
  if (exe === undefined) {
    exe = compileC(DIR, source, out, flags);
    built.set(out, exe);
  }
  return exe;
}

const WANT_ENV = { TCPKA_IDLE: String(WANT.idle), TCPKA_INTVL: String(WANT.interval), TCPKA_CNT: String(WANT.count) };

describe("return values and errno are the program's own under the shim", () => {
  test("errno_check: the same lines and exit code plain, with LD_PRELOAD by hand, under tcpka run and tcpka trace", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const exe = program("errno_check.c", "errno_check");
    const plain = await exec(t, [exe]);
    assert.equal(plain.code, 5, plain.stderr);
    // What the kernel says without the shim, so that the comparisons below compare something.
    for (const line of [
      /^connect to a closed port +ret=-1 errno=ECONNREFUSED/m,
      /^non-blocking connect +ret=-1 errno=EINPROGRESS/m,
      /^connect on a bad fd +ret=-1 errno=EBADF/m,
      /^connect with an AF_UNIX address +ret=-1 errno=EAFNOSUPPORT/m,
      /^socket\(12345, SOCK_STREAM\) +ret=-1 errno=EAFNOSUPPORT/m,
      /^setsockopt level 9999 +ret=-1 errno=ENOPROTOOPT/m,
      /^setsockopt SO_KEEPALIVE with optlen 1 +ret=-1 errno=EINVAL/m,
      /^accept on a non-socket +ret=-1 errno=ENOTSOCK/m,
      /^connect to the listener +ret=0 errno=EDOM/m,
    ]) {
      assert.match(plain.stdout, line);
    }

    const runs: [string, Promise<{ code: number | null; stdout: string; stderr: string }>][] = [
      ["LD_PRELOAD, strengthen", exec(t, [exe], { env: shimEnv(WANT_ENV) })],
      ["LD_PRELOAD, force", exec(t, [exe], { env: shimEnv({ ...WANT_ENV, TCPKA_MODE: "force" }) })],
      ["LD_PRELOAD, observe", exec(t, [exe], { env: shimEnv({ TCPKA_MODE: "observe" }) })],
      ["LD_PRELOAD, TCPKA_DEBUG=1", exec(t, [exe], { env: shimEnv({ ...WANT_ENV, TCPKA_DEBUG: "1" }) })],
      ["tcpka run", tcpka(t, ["run", ...WANT_FLAGS, "--", exe])],
      [
        "tcpka run --force --user-timeout 5s",
        tcpka(t, ["run", ...WANT_FLAGS, "--force", "--user-timeout", "5s", "--", exe]),
      ],
      ["tcpka run --only :1 (nothing matches)", tcpka(t, ["run", "--only", ":1", "--", exe])],
      [
        "tcpka run --only 127.0.0.1/32 (decided per connection)",
        tcpka(t, ["run", "--only", "127.0.0.1/32", "--", exe]),
      ],
      ["tcpka trace", tcpka(t, ["trace", "--", exe])],
      ["tcpka trace --json --idle 7s", tcpka(t, ["trace", "--json", "--idle", "7s", "--", exe])],
    ];
    for (const [what, run] of runs) {
      const r = await run;
      assert.equal(r.stdout, plain.stdout, `${what}: ${r.stderr}`);
      assert.equal(r.code, 5, what);
      if (what.startsWith("LD_PRELOAD") || what.startsWith("tcpka run")) assert.equal(r.stderr, "", what);
    }
  });

  test("connect() with a 2-byte address that ends at an unreadable page: EINVAL, as without the shim", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const exe = program("errno_check.c", "errno_check");
    const plain = await exec(t, [exe, "short-address"]);
    assert.equal(plain.code, 5, plain.stderr);
    assert.match(plain.stdout, /^connect with a 2-byte address at the end of a page +ret=-1 errno=EINVAL/m);
    const shimmed = await exec(t, [exe, "short-address"], { env: shimEnv(WANT_ENV) });
    assert.deepEqual(
      { code: shimmed.code, signal: shimmed.signal, stdout: shimmed.stdout },
      { code: 5, signal: null, stdout: plain.stdout },
      "the shim reads the address only as far as addrlen",
    );
  });
});

describe("programs that LD_PRELOAD cannot reach: one clear line, and no crash", () => {
  /** tcpka trace refuses: exit 1, nothing on stdout (the program never ran), `tcpka: …` and a hint. */
  function assertRefused(r: { code: number | null; stdout: string; stderr: string }, exe: string, why: string) {
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout, "", "the program must not run untraced");
    const lines = r.stderr.trimEnd().split("\n");
    assert.equal(lines[0], `tcpka: ${exe} is ${why}: LD_PRELOAD cannot reach it`);
    assert.equal(lines.length, 2, r.stderr);
    assert.match(lines[1]!, /^hint: \S/);
  }

  /**
   * tcpka run says why in one line, runs the program anyway and sets keepalive on its connections from outside
   * (pidfd_getfd, every 200 ms): both ends of the program's connection to itself end with 7s/3s/4, and the exit
   * code is the program's.
   */
  async function assertWatched(t: TestContext, exe: string, why: string) {
    const run = startTcpka(t, ["run", ...WANT_FLAGS, "--", exe, "6", "hold"]);
    const pid = Number((await run.waitFor(/^ready pid=(\d+)$/m))[1]);
    const deadline = Date.now() + 5000;
    let conns = await exactConnections(t, pid);
    while (!conns.every((c) => c.keepalive) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      conns = await exactConnections(t, pid);
    }
    assert.equal(conns.length, 2, JSON.stringify(conns));
    for (const c of conns) assert.deepEqual(settingsOf(c), WANT);
    const done = await run.finish();
    assert.equal(done.code, 6, done.stderr);
    const lines = done.stderr.trimEnd().split("\n");
    assert.ok(lines[0]!.startsWith(`tcpka: ${exe} is ${why}: LD_PRELOAD cannot reach it`), done.stderr);
    assert.doesNotMatch(done.stderr, /^\s+at /m, "no stack trace");
  }

  test("a statically linked program (gcc -static)", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc"] })) return;
    const exe = program("ka_probe.c", "ka_probe_static", ["-static"]);
    const direct = await exec(t, [exe]);
    assert.equal(direct.code, 3, "the static program itself runs");
    assertRefused(await tcpka(t, ["trace", "--", exe]), exe, "statically linked");
    await assertWatched(t, exe, "statically linked");
  });

  test("a set-user-ID program owned by another user (the loader would ignore LD_PRELOAD)", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc"] })) return;
    const exe = join(DIR, "ka_probe_setuid");
    copyFileSync(program("ka_probe.c", "ka_probe"), exe);
    chownSync(exe, 65534, 65534);
    chmodSync(exe, 0o4755);
    // The premise: run by hand with LD_PRELOAD, the shim is not loaded into it (keepalive stays off).
    const byHand = await exec(t, [exe], { env: shimEnv(WANT_ENV) });
    assert.equal(byHand.code, 3, byHand.stderr);
    assert.match(byHand.stdout, /^client keepalive=0 /m);
    assertRefused(await tcpka(t, ["trace", "--", exe]), exe, "set-user-ID");
    await assertWatched(t, exe, "set-user-ID");

    const sgid = join(DIR, "ka_probe_setgid");
    copyFileSync(program("ka_probe.c", "ka_probe"), sgid);
    chownSync(sgid, 0, 65534);
    chmodSync(sgid, 0o2755);
    assertRefused(await tcpka(t, ["trace", "--", sgid]), sgid, "set-group-ID");
  });
});

describe("a broken configuration set by hand disables the shim and says so once", () => {
  const GARBAGE: Record<string, string>[] = [
    { TCPKA_IDLE: "abc" },
    { TCPKA_IDLE: "0" },
    { TCPKA_IDLE: "32768" },
    { TCPKA_IDLE: "7s" },
    { TCPKA_IDLE: "99999999999999999999999" },
    { TCPKA_INTVL: "-1" },
    { TCPKA_CNT: "128" },
    { TCPKA_USER_TIMEOUT: "2147483648" },
    { TCPKA_MODE: "bogus" },
    { TCPKA_MODE: "FORCE" },
    { TCPKA_ONLY: "garbage" },
    { TCPKA_ONLY: "127.0.0.1:99999" },
    { TCPKA_ONLY: "300.1.1.1/8" },
    { TCPKA_EXCEPT: "[::1" },
    { TCPKA_EXCEPT: "127.0.0.1/33" },
  ];

  test("the probe sees the shim when the configuration is valid", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const exe = program("ka_probe.c", "ka_probe");
    const r = await exec(t, [exe], { env: shimEnv(WANT_ENV) });
    assert.equal(r.code, 3);
    assert.equal(r.stderr, "");
    const want = `keepalive=1 idle=${WANT.idle} interval=${WANT.interval} count=${WANT.count}`;
    assert.equal(r.stdout, `client ${want}\naccepted ${want}\n`);
  });

  for (const vars of GARBAGE) {
    const text = Object.entries(vars)
      .map(([k, v]) => `${k}=${v}`)
      .join(" ");
    test(text, async (t) => {
      if (!needs(t, { tools: ["gcc"] })) return;
      const exe = program("ka_probe.c", "ka_probe");
      const plain = await exec(t, [exe, "4"], { env: cleanEnv() });
      // The valid settings beside the garbage would turn keepalive on if the shim did not give up entirely.
      const r = await exec(t, [exe, "4"], { env: shimEnv({ ...WANT_ENV, ...vars }) });
      assert.equal(r.code, 4, "same exit code");
      assert.equal(r.stdout, plain.stdout, "same output, keepalive not turned on");
      assert.match(plain.stdout, /^client keepalive=0 /m);
      const lines = r.stderr.split("\n").filter((l) => l !== "");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0]!, /^libtcpka: .*keepalive shim disabled/);
    });
  }

  test("errno when main() starts is the same as with a valid configuration, though reporting the broken one failed", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const exe = program("errno_check.c", "errno_check");
    const valid = await exec(t, [exe, "start"], { env: shimEnv(WANT_ENV) });
    assert.equal(valid.code, 5);
    assert.match(valid.stdout, /^errno when main starts: \d+\n$/);
    const events = {
      TCPKA_EVENTS: join(DIR, "no-such-dir", "events.jsonl"),
      TCPKA_EVENTS_ID: "1:1",
      TCPKA_EVENTS_KEY: "0123456789abcdef",
    };
    const cases: [string, Record<string, string>, string[]][] = [
      ["TCPKA_MODE=bogus", { TCPKA_MODE: "bogus" }, [exe, "start"]],
      ["TCPKA_IDLE=abc, an event file that cannot be opened", { TCPKA_IDLE: "abc", ...events }, [exe, "start"]],
      ["TCPKA_ONLY=garbage, stderr closed", { TCPKA_ONLY: "garbage" }, ["sh", "-c", 'exec "$0" start 2>&-', exe]],
    ];
    for (const [what, vars, argv] of cases) {
      const r = await exec(t, argv, { env: shimEnv({ ...WANT_ENV, ...vars }) });
      assert.deepEqual([r.code, r.stdout], [5, valid.stdout], what);
    }
  });

  test("an events file that cannot be opened changes nothing else: keepalive applied, nothing printed", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const exe = program("ka_probe.c", "ka_probe");
    const r = await exec(t, [exe], {
      env: shimEnv({ ...WANT_ENV, TCPKA_EVENTS: join(DIR, "no-such-dir", "events.jsonl") }),
    });
    assert.equal(r.code, 3);
    assert.equal(r.stderr, "");
    assert.match(r.stdout, new RegExp(`^client keepalive=1 idle=${WANT.idle} `, "m"));
  });

  test("LD_PRELOAD already set by the caller is kept, after the shim", async (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const exe = program("ka_probe.c", "ka_probe");
    const script = `echo "$LD_PRELOAD"; exec ${exe}`;
    const r = await tcpka(t, ["run", ...WANT_FLAGS, "--", "sh", "-c", script], {
      env: cleanEnv({ LD_PRELOAD: "libc.so.6" }),
    });
    assert.equal(r.code, 3, r.stderr);
    const [preload, client] = r.stdout.split("\n");
    assert.equal(preload, `${SHIM}:libc.so.6`);
    assert.match(client!, new RegExp(`^client keepalive=1 idle=${WANT.idle} `));
  });
});
