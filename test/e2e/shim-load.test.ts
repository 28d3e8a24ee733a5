/**
 * `tcpka run` and `tcpka trace` know that the preload library loads and is active in the program's environment
 * before they rely on it. When it cannot be loaded here (a damaged file, a library for another machine type),
 * when it rejects the configuration tcpka gave it, or when the program is one it cannot be loaded into, run
 * falls back to pidfd_getfd where the kernel will allow it (checked from inside the program with its own
 * getsockopt: test/fixtures/ka_wait.c) or refuses with one line before the program starts; trace refuses.
 * Where a C compiler exists, tcpka builds a working library at first use, once, into a directory it owns.
 *
 * The damaged libraries live in copies of the installed package (readable by uid 65534), and tcpka runs as root
 * in a private mount namespace whose /var/cache is an empty tmpfs, so that its build cache starts empty and
 * vanishes with the test.
 */
import assert from "node:assert/strict";
import { chmodSync, chownSync, copyFileSync, cpSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, type TestContext, test } from "node:test";
import { probeShim } from "../../src/enforce/preload/shim.js";
import { compileC } from "../helpers/compile.js";
import { needs } from "../helpers/env.js";
import { WANT_FLAGS } from "../helpers/keepalive.js";
import { REPO, SHIM } from "../helpers/paths.js";
import { cleanEnv, type Done, exec, start } from "../helpers/processes.js";
import { tempDir } from "../helpers/scope.js";
import { tcpka } from "../helpers/tcpka.js";
import { asUser, NOBODY, type User } from "../helpers/users.js";

const DIR = tempDir({ after });
chmodSync(DIR, 0o755); // uid 65534 runs copies of tcpka and programs from here

const AT_ONCE = /^at-connect keepalive=1 now keepalive=1 idle=7 interval=3 count=4$/m;
const BY_FALLBACK = /^at-connect keepalive=\d now keepalive=1 idle=7 interval=3 count=4$/m;
const FALLBACK = /; setting keepalive on the program's connections through pidfd_getfd every 200ms instead$/;

let kaWait: string | undefined;
/** test/fixtures/ka_wait.c, compiled once; readable and executable by everyone. */
function waiter(): string {
  kaWait ??= compileC(DIR, "ka_wait.c", "ka_wait");
  return kaWait;
}

/** The ways a shipped libtcpka.so can be unusable here. */
const DAMAGED: [string, () => Buffer][] = [
  ["a truncated copy", () => readFileSync(SHIM).subarray(0, 1000)],
  ["a file of garbage", () => Buffer.alloc(20_000, "tcpka\0garbage\xff")],
  [
    "a library for another machine type (e_machine patched to aarch64)",
    () => {
      const b = Buffer.from(readFileSync(SHIM));
      b.writeUInt16LE(183, 18); // EM_AARCH64
      return b;
    },
  ],
];

let copies = 0;
/**
 * A copy of the installed package (what `npm install` leaves: dist, bin, native sources, koffi) whose
 * native/build/libtcpka.so is `shim`; returns its bin/tcpka.js. Readable by every user.
 */
function installedWith(shim: Buffer): string {
  const dir = join(DIR, `package-${++copies}`);
  for (const f of [
    "package.json",
    "bin",
    "dist",
    "native/preload.c",
    "native/events.c",
    "native/events.h",
    "native/shim.h",
    "native/build.sh",
    "node_modules/koffi",
    "node_modules/@koromix",
  ]) {
    cpSync(join(REPO, f), join(dir, f), { recursive: true });
  }
  mkdirSync(join(dir, "native", "build"), { recursive: true });
  writeFileSync(join(dir, "native", "build", "libtcpka.so"), shim);
  return join(dir, "bin", "tcpka.js");
}

interface Where {
  user?: User;
  env?: NodeJS.ProcessEnv;
}

/**
 * A private mount namespace, held by a sleeping process until the test ends, in which /var/cache (root's build
 * cache) is an empty tmpfs. `exec` runs a command in it, as root or as `user`.
 */
async function privateCache(t: TestContext) {
  const holder = start(t, [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    "mount -t tmpfs tcpka-e2e /var/cache && echo ready && exec sleep 600",
  ]);
  await holder.waitFor(/^ready$/m);
  const inside = (argv: readonly string[], o: Where = {}): Promise<Done> =>
    exec(t, ["nsenter", `--mount=/proc/${holder.pid}/ns/mnt`, "--", ...asUser(o.user), ...argv], {
      env: cleanEnv(o.env),
    });
  return {
    exec: inside,
    tcpka: (bin: string, args: readonly string[], o: Where = {}) => inside([process.execPath, bin, ...args], o),
  };
}

function lines(text: string): string[] {
  return text.split("\n").filter((l) => l !== "");
}

/** Refused before the program started: exit 1, nothing from the program, `tcpka: …` and `hint: …`. */
function assertRefused(r: Done, message: RegExp): void {
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, "", "the program must not run");
  const said = lines(r.stderr);
  assert.equal(said.length, 2, r.stderr);
  assert.match(said[0]!, message);
  assert.match(said[1]!, /^hint: \S/);
}

/** The program ran and its own getsockopt saw 7s/3s/4 set by the fallback; tcpka said why in its first line. */
function assertFellBack(r: Done, message: RegExp): void {
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, BY_FALLBACK);
  const said = lines(r.stderr);
  assert.match(said[0]!, message);
  assert.match(said[0]!, FALLBACK);
  assert.doesNotMatch(r.stderr, /^ERROR: ld\.so/m, "ld.so's complaints are not passed on");
  assert.doesNotMatch(r.stderr, /^libtcpka:/m);
}

describe("a shipped library that cannot be loaded here, and no compiler to build another", () => {
  for (const [what, bytes] of DAMAGED) {
    test(`${what}: run falls back to pidfd_getfd (root), trace refuses; neither runs the program unprotected`, async (t) => {
      if (!needs(t, { root: true, tools: ["gcc", "unshare", "nsenter"] })) return;
      const bin = installedWith(bytes());
      const ns = await privateCache(t);
      const env = { CC: "no-such-cc" };
      const run = await ns.tcpka(bin, ["run", ...WANT_FLAGS, "--", waiter()], { env });
      const cannot =
        /^tcpka: the preload library cannot be loaded here \(.+\), and there is no C compiler \(no-such-cc\)/;
      assertFellBack(run, cannot);
      assertRefused(await ns.tcpka(bin, ["trace", "--", waiter()], { env }), cannot);
    });
  }

  test("as uid 65534: the fallback reaches the user's own program; a program it may not read is refused", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc", "setpriv"] })) return;
    const bin = installedWith(DAMAGED[1]![1]());
    const env = cleanEnv({ CC: "no-such-cc", HOME: "/nonexistent", XDG_CACHE_HOME: "" });
    const as = (argv: readonly string[]) => exec(t, [...asUser(NOBODY), process.execPath, bin, ...argv], { env });
    assertFellBack(await as(["run", ...WANT_FLAGS, "--", waiter()]), /^tcpka: the preload library cannot be loaded/);

    // Execute-only: the kernel makes its process non-dumpable (would_dump), so pidfd_getfd would be refused.
    const hidden = join(DIR, "ka_wait_exec_only");
    copyFileSync(waiter(), hidden);
    chmodSync(hidden, 0o711);
    assertRefused(
      await as(["run", ...WANT_FLAGS, "--", hidden]),
      /^tcpka: the preload library cannot be loaded here .*; nor can tcpka fall back to pidfd_getfd: .* is not readable by uid 65534/,
    );
  });
});

describe("tcpka builds a library for this system at first use", () => {
  test("root: two runs at once build it once into /var/cache/tcpka (0755, root), a third reuses it", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc", "unshare", "nsenter"] })) return;
    const bin = installedWith(DAMAGED[1]![1]());
    const ns = await privateCache(t);
    const both = await Promise.all([
      ns.tcpka(bin, ["run", ...WANT_FLAGS, "--", waiter()]),
      ns.tcpka(bin, ["run", ...WANT_FLAGS, "--", waiter()]),
    ]);
    for (const r of both) {
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, AT_ONCE, "keepalive at connect: the library, not the fallback");
    }
    const notices = both.flatMap((r) => lines(r.stderr));
    assert.equal(notices.length, 1, `one build, announced once: ${JSON.stringify(notices)}`);
    const m =
      /^tcpka: built the preload library for this system: (\/var\/cache\/tcpka\/libtcpka-x86-64-[0-9a-f]{16}\.so)$/.exec(
        notices[0]!,
      );
    assert.ok(m, notices[0]);
    const stat = async (f: string) => (await ns.exec(["stat", "-c", "%i %U %a", f])).stdout.trim();
    const built = await stat(m[1]!);
    assert.match(built, /^\d+ root 644$/);
    assert.match(await stat("/var/cache/tcpka"), /^\d+ root 755$/);

    const again = await ns.tcpka(bin, ["run", ...WANT_FLAGS, "--", waiter()]);
    assert.deepEqual([again.code, again.stderr], [0, ""]);
    assert.match(again.stdout, AT_ONCE);
    assert.equal(await stat(m[1]!), built, "not rebuilt");
  });

  test("uid 65534: into $XDG_CACHE_HOME/tcpka, and the program gets keepalive from it", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc", "setpriv"] })) return;
    const bin = installedWith(DAMAGED[0]![1]());
    const cache = join(DIR, "nobody-cache");
    mkdirSync(cache);
    chownSync(cache, NOBODY.uid, NOBODY.gid);
    const env = cleanEnv({ HOME: "/nonexistent", XDG_CACHE_HOME: cache });
    const r = await exec(t, [...asUser(NOBODY), process.execPath, bin, "run", ...WANT_FLAGS, "--", waiter()], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, AT_ONCE);
    assert.match(
      r.stderr,
      new RegExp(`^tcpka: built the preload library for this system: ${literal(cache)}/tcpka/libtcpka-`),
    );
  });
});

describe("a configuration the library rejects is noticed before the program starts", () => {
  test("probeShim: the library's own answer, with the very environment the program would get", (t) => {
    if (!needs(t, { tools: ["gcc"] })) return;
    const env = (vars: Record<string, string>) => cleanEnv({ LD_PRELOAD: SHIM, ...vars });
    assert.equal(probeShim(SHIM, env({ TCPKA_MODE: "force", TCPKA_IDLE: "7" })), "ok");
    for (const [vars, why] of [
      [{ TCPKA_MODE: "bogus" }, /^invalid TCPKA_MODE/],
      [{ TCPKA_IDLE: "0" }, /^invalid value/],
      [{ TCPKA_ONLY: "fe80::1%lo" }, /^invalid TCPKA_ONLY/],
    ] as const) {
      const answer = probeShim(SHIM, env(vars));
      assert.ok(answer !== "ok", JSON.stringify(vars));
      assert.equal(answer.loaded, true, "it loaded, and said why it is off");
      assert.match(answer.why, why);
    }
    const garbage = join(DIR, "garbage.so");
    writeFileSync(garbage, DAMAGED[1]![1]());
    const answer = probeShim(garbage, cleanEnv({ LD_PRELOAD: garbage }));
    assert.ok(answer !== "ok");
    assert.deepEqual(
      [answer.loaded, answer.why],
      [false, `ERROR: ld.so: object '${garbage}' from LD_PRELOAD cannot be preloaded (invalid ELF header): ignored.`],
    );
  });

  test("33 --only rules (the library holds 32): refused before anything starts, not handed to the library", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc"] })) return;
    const rules = Array.from({ length: 32 }, (_, i) => ["--only", `10.${i}.0.0/16`]).flat();
    for (const command of ["run", "trace"]) {
      const r = await tcpka(t, [command, ...rules, "--only", "127.0.0.1/32", "--", waiter()]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(
        r.stderr,
        /^tcpka: --only\/--except: 33 rules, more than the 32 that the preload library and the BPF program hold\n/,
      );
      assert.equal(r.stdout, "", "the program never ran");
    }
  });
});

describe("programs the library cannot be loaded into", () => {
  test("a program run by another dynamic loader (as a musl program is): run falls back, trace refuses", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc"] })) return;
    // A copy of this system's loader is another loader as far as tcpka can tell: it tested the library with
    // the original only.
    const loader = join(DIR, "ld-other.so");
    copyFileSync(realLoader(), loader);
    const exe = compileC(DIR, "ka_wait.c", "ka_wait_other_loader", [`-Wl,--dynamic-linker=${loader}`]);
    const why = new RegExp(`^tcpka: ${literal(exe)} is run by the dynamic loader ${literal(loader)}, not by `);
    assertFellBack(await tcpka(t, ["run", ...WANT_FLAGS, "--", exe]), why);
    assertRefused(await tcpka(t, ["trace", "--", exe]), why);
  });

  test("a program for another machine type: trace refuses, run says so before it starts it", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc"] })) return;
    const exe = join(DIR, "aarch64-program");
    writeFileSync(exe, craftedElf({ machine: 183, interp: realLoader() }), { mode: 0o755 });
    const why = `tcpka: ${exe} is a program for aarch64 (64-bit): the preload library, for x86-64 (64-bit), cannot be loaded into it`;
    assertRefused(await tcpka(t, ["trace", "--", exe]), new RegExp(`^${literal(why)}$`));
    const run = await tcpka(t, ["run", "--", exe], { cwd: DIR });
    assert.notEqual(run.code, 0);
    assert.equal(
      lines(run.stderr)[0],
      `${why}; setting keepalive on the program's connections through pidfd_getfd every 200ms instead`,
    );
  });
});

describe("a damaged program: tcpka reads its ELF header without trusting it", () => {
  test("program headers of size 0 or at an offset beyond 2^53: run and trace end, and exec says what it is", async (t) => {
    for (const [name, bytes] of [
      ["phentsize-0", craftedElf({ machine: 183, phentsize: 0 })],
      ["phoff-huge", craftedElf({ machine: 183, phoff: 2n ** 63n })],
    ] as const) {
      const exe = join(DIR, `damaged-${name}`);
      writeFileSync(exe, bytes, { mode: 0o755 });
      for (const command of ["run", "trace"]) {
        const r = await tcpka(t, [command, "--", exe], { cwd: DIR, timeoutMs: 20_000 });
        assert.notEqual(r.code, 0, `${command} ${name}`);
        assert.doesNotMatch(r.stderr, /internal error/, `${command} ${name}: ${r.stderr}`);
      }
    }
  });
});

describe("programs LD_PRELOAD cannot reach, as uid 65534: the fallback is decided before they start", () => {
  test("a statically linked program of its own is reached; another user's set-user-ID program is refused", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc", "setpriv"] })) return;
    const bin = installedWith(readFileSync(SHIM)); // a working library, in a copy that uid 65534 can read
    const as = (argv: readonly string[]) =>
      exec(t, [...asUser(NOBODY), process.execPath, bin, ...argv], { env: cleanEnv({ HOME: "/nonexistent" }) });
    const stat = compileC(DIR, "ka_wait.c", "ka_wait_static", ["-static"]);
    assertFellBack(
      await as(["run", ...WANT_FLAGS, "--", stat]),
      new RegExp(`^tcpka: ${literal(stat)} is statically linked: LD_PRELOAD cannot reach it`),
    );
    const suid = join(DIR, "ka_wait_setuid_root");
    copyFileSync(waiter(), suid);
    chmodSync(suid, 0o4755);
    assertRefused(
      await as(["run", ...WANT_FLAGS, "--", suid]),
      new RegExp(
        `^tcpka: ${literal(suid)} is set-user-ID: LD_PRELOAD cannot reach it; nor can tcpka fall back to pidfd_getfd: ${literal(suid)} is set-user-ID: its process will belong to uid 0$`,
      ),
    );
  });
});

describe("TCPKA_SHIM: another library, only where no other user can have replaced it", () => {
  test("used when root owns it; refused when others may write it or it belongs to another user", async (t) => {
    if (!needs(t, { root: true, tools: ["gcc"] })) return;
    const dir = join(DIR, "own-shim");
    mkdirSync(dir, { mode: 0o755 });
    const lib = join(dir, "libtcpka.so");
    copyFileSync(SHIM, lib);
    const show = ["run", ...WANT_FLAGS, "--", "sh", "-c", `echo "$LD_PRELOAD"; exec ${waiter()}`];
    const used = await tcpka(t, show, { env: cleanEnv({ TCPKA_SHIM: lib }) });
    assert.equal(used.code, 0, used.stderr);
    assert.equal(lines(used.stdout)[0], lib);
    assert.match(used.stdout, AT_ONCE);

    chmodSync(lib, 0o664);
    assertRefused(
      await tcpka(t, show, { env: cleanEnv({ TCPKA_SHIM: lib }) }),
      new RegExp(`^tcpka: refusing TCPKA_SHIM=${literal(lib)}: ${literal(lib)} is writable by others$`),
    );
    chmodSync(lib, 0o644);
    chmodSync(dir, 0o777);
    assertRefused(
      await tcpka(t, show, { env: cleanEnv({ TCPKA_SHIM: lib }) }),
      new RegExp(`^tcpka: refusing TCPKA_SHIM=${literal(lib)}: ${literal(dir)} is writable by others$`),
    );
    chmodSync(dir, 0o755);
    chownSync(lib, NOBODY.uid, NOBODY.gid);
    assertRefused(
      await tcpka(t, show, { env: cleanEnv({ TCPKA_SHIM: lib }) }),
      new RegExp(`^tcpka: refusing TCPKA_SHIM=${literal(lib)}: ${literal(lib)} belongs to uid 65534$`),
    );
  });
});

/**
 * A 64-bit ELF header with at most one program header (PT_INTERP naming `interp`) and nothing to run: the kernel
 * refuses it (ENOEXEC), and execvp then hands it to sh. So that sh does nothing with it, no byte up to the first
 * newline is one that sh reads as an operator (x86-64's machine number, 62, is '>'), and the next line ends it.
 */
function craftedElf(o: { machine: number; phentsize?: number; phoff?: bigint; interp?: string }): Buffer {
  const h = Buffer.alloc(120);
  Buffer.from("\x7fELF\x02\x01\x01", "latin1").copy(h);
  h.writeUInt16LE(2, 16); // ET_EXEC
  h.writeUInt16LE(o.machine, 18);
  h.writeBigUInt64LE(o.phoff ?? 64n, 32);
  h.writeUInt16LE(o.phentsize ?? 56, 54);
  h.writeUInt16LE(o.interp ? 1 : 0, 56);
  if (o.interp) {
    h.writeUInt32LE(3, 64); // PT_INTERP, its string right after this header
    h.writeBigUInt64LE(120n, 72);
    h.writeBigUInt64LE(BigInt(o.interp.length + 1), 96);
  }
  const body = Buffer.concat([h, Buffer.from(`${o.interp ?? ""}\0\nexit 3\n`, "latin1")]);
  assert.ok(!/[;&|<>()$`'"\\]/.test(body.subarray(0, body.indexOf(10)).toString("latin1")), "nothing sh would act on");
  return body;
}

function literal(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The dynamic loader that this system's programs name (PT_INTERP of true(1)), resolved. */
function realLoader(): string {
  const r = readFileSync("/usr/bin/true");
  const interp = /\/[\w./-]*ld-linux[\w.-]*\.so\.\d/.exec(r.toString("latin1"));
  assert.ok(interp, "no ld-linux path in /usr/bin/true");
  return interp[0];
}
