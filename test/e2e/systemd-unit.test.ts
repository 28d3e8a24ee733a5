/**
 * The systemd unit that ships with tcpka (contrib/systemd/tcpka-agent.service), checked on a machine where systemd
 * is not PID 1:
 *
 *  - `systemd-analyze verify` has nothing to say about it: about a copy that differs from it in one line only,
 *    ExecStart, pointed at this checkout's bin/tcpka.js (verify checks that the program exists; the shipped file,
 *    verified too, draws exactly that complaint where /usr/local/bin/tcpka is not installed);
 *  - its ExecStartPre mounts the BPF file system where there is none, as systemd would, and nothing where there is;
 *  - the commands that use the agent's mechanisms work as root with exactly the unit's capability bounding set,
 *    NoNewPrivileges, and the unit's sandbox (test/helpers/unit.ts reproduces it with setpriv and a private mount
 *    namespace): enforce on a test cgroup (the host sees the pins; a connection made in the cgroup afterwards gets
 *    the settings) and its removal; ls, exact, of another user's process and of a root process that holds every
 *    capability, through the kernel pass and through pidfd_getfd; enable through the kernel (no socket duplicated)
 *    and through pidfd_getfd; the same in another network namespace (setns); agent --explain. Every process is
 *    traced: none calls what ProtectKernelModules=, ProtectKernelLogs= and ProtectHostname= also forbid by
 *    system call filter;
 *  - each capability of the set is needed: without it, what README says it is for fails, and nothing is left behind.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { writeAtomically } from "../helpers/agent.js";
import { TestCgroup } from "../helpers/cgroup.js";
import { compileC } from "../helpers/compile.js";
import { afterEnforceTests, enforcedOn, guard, PIN_ROOT } from "../helpers/enforce.js";
import { needs } from "../helpers/env.js";
import {
  type LsConnection,
  type Reported,
  report,
  settings,
  settingsOf,
  WANT,
  WANT_FLAGS,
} from "../helpers/keepalive.js";
import { Netns } from "../helpers/netns.js";
import { REPO, TCPKA } from "../helpers/paths.js";
import { Process, type Result, runSync, until } from "../helpers/processes.js";
import { tempDir, uniqueName } from "../helpers/scope.js";
import { execArgv, Sandbox, UNIT, UnitFile } from "../helpers/unit.js";
import { asUser, NOBODY } from "../helpers/users.js";

afterEnforceTests();

const SHIPPED = readFileSync(UNIT, "utf8");
const unit = UnitFile.parse(SHIPPED);
/** Where README tells the unit to find tcpka, and the one line that says so. */
const INSTALLED = "/usr/local/bin/tcpka";
const EXEC_START = `ExecStart=${INSTALLED} agent`;

/** What the sandboxed commands need from the machine. */
const NEEDS = { root: true, tools: ["unshare", "setpriv", "strace", "gcc", "ip"] } as const;

// ---------------------------------------------------------------------------------------------------------
// systemd-analyze verify

/** `path` as one word of an ExecStart= line: as it is when plain, else quoted as systemd unquotes it. */
function execWord(path: string): string {
  if (/^[\w/.+-]+$/.test(path)) return path;
  return `"${path.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("%", "%%").replaceAll("$", "$$")}"`;
}

/** The lines that differ between two texts of the same number of lines: [before, after] each. */
function changedLines(a: string, b: string): [string, string][] {
  const x = a.split("\n");
  const y = b.split("\n");
  assert.equal(x.length, y.length, "the same number of lines");
  return x.flatMap((l, i) => (l === y[i] ? [] : [[l, y[i]!] as [string, string]]));
}

/**
 * `systemd-analyze verify` of the unit file `text`, written as DIR/tcpka-agent.service: its exit status, what it
 * says about this unit (every line that names it or its directory), and anything else it says.
 */
function verify(t: TestContext, text: string): { status: number | null; ours: string[] } {
  const dir = tempDir(t);
  const file = join(dir, "tcpka-agent.service");
  writeFileSync(file, text);
  // --recursive-errors=no: the distribution's units it loads as dependencies (multi-user.target...) are not ours
  // to judge; --man=no: the unit names no man page.
  const r = runSync(["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", file]);
  const lines = `${r.stdout}\n${r.stderr}`.split("\n").filter((l) => l.trim() !== "");
  const ours = lines.filter((l) => l.includes("tcpka-agent") || l.includes(dir));
  const others = lines.filter((l) => !ours.includes(l));
  if (others.length > 0) t.diagnostic(`systemd-analyze said about other units: ${others.join(" | ")}`);
  return { status: r.status, ours };
}

test("systemd-analyze verify: nothing to say about the unit, whose ExecStart is all that points elsewhere", (t) => {
  if (!needs(t, { tools: ["systemd-analyze"] })) return;
  assert.equal(unit.value("Service", "ExecStart"), `${INSTALLED} agent`);
  const real = realpathSync(TCPKA);
  const copy = SHIPPED.replace(`\n${EXEC_START}\n`, `\n${`ExecStart=${execWord(real)} agent`}\n`);
  assert.deepEqual(changedLines(SHIPPED, copy), [[EXEC_START, `ExecStart=${execWord(real)} agent`]]);

  const checked = verify(t, copy);
  assert.deepEqual(checked.ours, [], "no warning about the unit");
  assert.equal(checked.status, 0);

  // The shipped file itself: verify does look at ExecStart, and where tcpka is not installed that is all it says.
  const shipped = verify(t, SHIPPED);
  if (existsSync(INSTALLED)) {
    assert.deepEqual(shipped.ours, [], `${INSTALLED} is installed here`);
  } else {
    assert.equal(shipped.ours.length, 1, shipped.ours.join("\n"));
    assert.match(shipped.ours[0]!, /tcpka-agent\.service: Command \/usr\/local\/bin\/tcpka is not executable/);
    assert.notEqual(shipped.status, 0);
  }
});

// ---------------------------------------------------------------------------------------------------------
// ExecStartPre

test("ExecStartPre mounts the BPF file system where there is none, and nothing where there is one", (t) => {
  if (!needs(t, { root: true, tools: ["unshare", "grep"] })) return;
  const pre = unit.values("Service", "ExecStartPre");
  assert.equal(pre.length, 1);
  const { prefixes, argv } = execArgv(pre[0]!);
  assert.equal(prefixes, "+", "it runs outside the sandbox, in the host's mount namespace, where the pins must be");
  // In a private mount namespace (propagation private: nothing done here reaches the host's mounts), as it is,
  // then after unmounting every BPF file system at /sys/fs/bpf there.
  const script = [
    "count() { grep -c ' /sys/fs/bpf bpf ' /proc/self/mounts || true; }",
    'echo "$(count)"; "$@"; echo "$(count)"',
    'while [ "$(count)" -gt 0 ]; do umount /sys/fs/bpf; done',
    'echo "$(count)"; "$@"; echo "$(count)"',
    "grep ' /sys/fs/bpf bpf ' /proc/self/mounts | cut -d' ' -f4",
  ].join("\n");
  const r = runSync(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", ...argv]);
  assert.equal(r.status, 0, r.stderr);
  const [before, afterFirst, none, afterSecond, options] = r.stdout.trim().split("\n");
  if (before === "0") t.diagnostic("this host has no BPF file system at /sys/fs/bpf");
  else assert.equal(afterFirst, before, "mounted already: nothing mounted on top");
  assert.equal(none, "0");
  assert.equal(afterSecond, "1", "mounted once");
  for (const o of ["nosuid", "nodev", "noexec", "mode=700"]) assert.ok(options?.split(",").includes(o), options);
});

// ---------------------------------------------------------------------------------------------------------
// The capabilities and the sandbox

/**
 * What ProtectKernelModules=, ProtectKernelLogs= and ProtectHostname= also deny, by system call filter: @module,
 * syslog(2), sethostname and setdomainname. The sandbox cannot install systemd's filters; the trace shows that
 * nothing would meet them.
 */
const FILTERED = ["init_module", "finit_module", "delete_module", "syslog", "sethostname", "setdomainname"];

let sandbox: Sandbox | undefined;
function theSandbox(): Sandbox {
  sandbox ??= new Sandbox(unit);
  return sandbox;
}

/**
 * `tcpka ARGS...` as the unit runs the agent (or with `caps` instead of the unit's), every process traced: fails
 * if any makes a call that the unit's system call filters deny. Returns its result and how many times it called
 * pidfd_getfd.
 */
function inUnit(t: TestContext, args: readonly string[], caps?: readonly string[]): Result & { pidfdGetfd: number } {
  const to = join(tempDir(t), "strace");
  const r = theSandbox().tcpka(args, { caps, strace: { calls: [...FILTERED, "pidfd_getfd"], to } });
  const calls = readFileSync(to, "utf8")
    .split("\n")
    .map((l) => /^\d+\s+(\w+)\(/.exec(l)?.[1])
    .filter((c) => c !== undefined);
  assert.deepEqual(
    calls.filter((c) => FILTERED.includes(c)),
    [],
    `tcpka ${args.join(" ")}: no call that the unit's system call filters deny`,
  );
  return { ...r, pidfdGetfd: calls.filter((c) => c === "pidfd_getfd").length };
}

/** The holder fixture (listener, client, accepted end; none with keepalive), built for a test. */
const built = new WeakMap<TestContext, string>();
function holder(t: TestContext): string {
  let exe = built.get(t);
  if (exe === undefined) {
    exe = compileC(tempDir(t, { readable: true }), "enable/holder.c", "holder");
    built.set(t, exe);
  }
  return exe;
}

/** A holder in `cg`, as `user` (or as root with every capability this test process has); ready. */
async function holderIn(t: TestContext, cg: TestCgroup, user?: typeof NOBODY): Promise<Process> {
  const p = new Process(cg.spawn([...asUser(user), holder(t), "1"]), `holder in ${cg.path}`);
  t.after(() => p.stop());
  assert.equal(await p.line(), "ready");
  return p;
}

/** `ls --pid PID --json ARGS` in the unit: every connection read exactly, with what the holder's getsockopt says. */
async function assertLsExact(t: TestContext, p: Process, args: readonly string[]): Promise<number> {
  const r = inUnit(t, ["ls", "--json", "--pid", String(p.pid), ...args]);
  assert.equal(r.status, 0, r.stderr);
  const conns = (JSON.parse(r.stdout) as { connections: LsConnection[] }).connections;
  const own = new Map((await report(p)).sockets.map((s: Reported) => [s.inode, s]));
  assert.equal(conns.length, 2, `the client and the accepted end: ${r.stdout}`);
  for (const c of conns) {
    const s = own.get((c as LsConnection & { inode: number }).inode);
    assert.ok(s, `connection ${c.local_port} is one the holder reports`);
    assert.deepEqual(settingsOf(c), settings(s), `ls ${args.join(" ")}: what the holder's getsockopt says`);
  }
  return r.pidfdGetfd;
}

/** Capability numbers (include/uapi/linux/capability.h) of the ones this unit may name. */
const CAP_BITS: Record<string, number> = {
  CAP_DAC_READ_SEARCH: 2,
  CAP_NET_ADMIN: 12,
  CAP_SYS_PTRACE: 19,
  CAP_SYS_ADMIN: 21,
  CAP_PERFMON: 38,
  CAP_BPF: 39,
};

test("the sandbox is the unit's: its capabilities, NoNewPrivileges, read-only file systems, no homes, own /tmp", (t) => {
  if (!needs(t, { root: true, tools: ["unshare", "setpriv"] })) return;
  const probe = [
    "cat /proc/self/mountinfo",
    "echo ---",
    "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status",
    "echo ---",
    'for d in /root /home /run/user; do [ ! -d $d ] || echo "$d $(ls -A $d | wc -l)"; done',
    "echo ---",
    "readlink /proc/self/ns/uts",
  ].join("; ");
  const r = theSandbox().run(["/bin/sh", "-c", probe]);
  assert.equal(r.status, 0, r.stderr);
  const [mountinfo, status, homes, uts] = r.stdout.split("---\n") as [string, string, string, string];

  const mask = unit.capabilities().reduce((m, c) => {
    assert.ok(c in CAP_BITS, `${c}: its number is not in this test`);
    return m | (1n << BigInt(CAP_BITS[c]!));
  }, 0n);
  const caps = Object.fromEntries(
    status
      .trim()
      .split("\n")
      .map((l) => l.split(/:\s+/) as [string, string]),
  );
  for (const k of ["CapPrm", "CapEff", "CapBnd"]) assert.equal(BigInt(`0x${caps[k]}`), mask, `${k}: the unit's set`);
  assert.equal(BigInt(`0x${caps.CapInh}`), 0n);
  assert.equal(BigInt(`0x${caps.CapAmb}`), 0n);
  assert.equal(caps.NoNewPrivs, "1");

  // Every mount, by its mount point: read-only (ro) or not, and its file system type.
  const mounts = new Map<string, { ro: boolean; type: string }>();
  for (const line of mountinfo.trim().split("\n")) {
    const f = line.split(" ");
    const type = f[f.indexOf("-") + 1]!;
    const point = f[4]!.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
    mounts.set(point, { ro: f[5]!.split(",").includes("ro"), type }); // the last mount at a point is the one seen
  }
  const at = (p: string) => {
    const m = mounts.get(p);
    assert.ok(m, `${p} is a mount in the sandbox`);
    return m;
  };
  const below = (p: string, dir: string) => p === dir || p.startsWith(`${dir}/`);
  for (const [p, m] of mounts) {
    if (["/proc", "/dev", "/tmp", "/var/tmp", "/run/tcpka", "/sys/fs/bpf"].some((d) => below(p, d))) continue;
    assert.ok(m.ro, `${p} (${m.type}) is read-only`); // ProtectSystem=strict, ReadOnlyPaths=/sys, ProtectControlGroups=
  }
  assert.equal(at("/sys").ro, true);
  assert.equal(at("/proc/sys").ro, true, "ReadOnlyPaths=/proc/sys");
  assert.deepEqual(at("/sys/fs/bpf"), { ro: false, type: "bpf" }, "the pins can be written, in the host's bpffs");
  assert.equal(at("/run/tcpka").ro, false);
  for (const p of ["/tmp", "/var/tmp"]) assert.deepEqual(at(p), { ro: false, type: "tmpfs" }, `PrivateTmp: ${p}`);
  for (const p of ["/proc/kmsg", "/dev/kmsg"]) assert.equal(at(p).ro, true, `ProtectKernelLogs: ${p} covered`);
  for (const line of homes.trim().split("\n").filter(Boolean)) {
    const [dir, n] = line.split(" ");
    assert.equal(n, "0", `ProtectHome: ${dir} is empty`);
    assert.equal(at(dir!).ro, true);
  }
  assert.notEqual(uts.trim(), readlinkSync("/proc/self/ns/uts"), "ProtectHostname: a UTS namespace of its own");
});

/**
 * What systemd runs before the sandboxed commands: ExecStartPre, on the host (it mounts the BPF file system at
 * /sys/fs/bpf where there is none; that mount stays, as the service leaves it).
 */
function execStartPre(): void {
  const pre = runSync(execArgv(unit.values("Service", "ExecStartPre")[0]!).argv);
  assert.equal(pre.status, 0, pre.stderr);
}

test("in the unit: enforce on a test cgroup, seen by the host, working on new connections, removed", async (t) => {
  if (!needs(t, NEEDS)) return;
  const cg = TestCgroup.create(t);
  guard(cg);
  execStartPre();
  const made = inUnit(t, ["enforce", "--cgroup", cg.path, ...WANT_FLAGS]);
  assert.equal(made.status, 0, made.stderr);
  assert.equal(made.stderr, "");
  assert.doesNotMatch(made.stdout, /warning/, "the programs load as they are: the setsockopt one, the BTF reads");
  const e = enforcedOn(cg); // tcpka outside the sandbox: the pins are the host's
  assert.ok(e?.settings_known && e.setsockopt_hook, JSON.stringify(e));
  const listed = inUnit(t, ["enforce", "--list", "--json"]);
  assert.equal(listed.status, 0, listed.stderr);
  assert.ok((JSON.parse(listed.stdout) as { cgroup: string }[]).some((x) => x.cgroup === cg.path));

  const p = await holderIn(t, cg, NOBODY); // started after: its listener and both ends of its connection are set
  for (const s of (await report(p)).sockets) assert.deepEqual(settings(s), WANT, `${s.role} in the cgroup`);

  const removed = inUnit(t, ["enforce", "--remove", "--cgroup", cg.path]);
  assert.equal(removed.status, 0, removed.stderr);
  assert.equal(enforcedOn(cg), undefined, "the host's --list no longer shows it");
  assert.ok(!existsSync(join(PIN_ROOT, e.name)), "no pin left");
});

test("in the unit: ls reads another user's and an all-capabilities root process's sockets exactly; enable changes them", async (t) => {
  if (!needs(t, NEEDS)) return;
  const cg = TestCgroup.create(t);
  const nobodys = await holderIn(t, cg, NOBODY);
  const roots = await holderIn(t, cg); // root, with a permitted set no smaller than the unit's
  for (const p of [nobodys, roots]) {
    assert.equal(await assertLsExact(t, p, ["--via", "bpf"]), 0, "the kernel pass duplicates no socket");
    assert.ok((await assertLsExact(t, p, ["--via", "netlink"])) > 0, "sock_diag, /proc/PID/fd and pidfd_getfd");
  }

  const kernel = inUnit(t, ["enable", "--pid", String(nobodys.pid), "--via", "bpf", ...WANT_FLAGS]);
  assert.equal(kernel.status, 0, kernel.stderr);
  assert.equal(kernel.pidfdGetfd, 0, "changed in the kernel: no socket duplicated");
  const dup = inUnit(t, ["enable", "--pid", String(roots.pid), "--via", "pidfd", ...WANT_FLAGS]);
  assert.equal(dup.status, 0, dup.stderr);
  assert.ok(dup.pidfdGetfd >= 3, "changed through a duplicate of each socket");
  for (const p of [nobodys, roots]) {
    for (const s of (await report(p)).sockets) assert.deepEqual(settings(s), WANT, `pid ${p.pid} ${s.role}`);
  }

  const policy = theSandbox().inCheckout("test", "fixtures", "policy-example.yaml");
  const explained = inUnit(t, ["agent", "--explain", String(nobodys.pid), "--policy", policy]);
  assert.equal(explained.status, 0, explained.stderr);
  assert.equal(
    explained.stdout.split("\n")[0],
    `holder[${nobodys.pid}]: uid 65534 (nobody), exe ${realpathSync(holder(t))}, cgroup ${cg.path}, unit -, container -, pod -`,
  );
});

test("in the unit: another network namespace, through setns: ls --all-netns and enable in the kernel", async (t) => {
  if (!needs(t, NEEDS)) return;
  const ns = Netns.create(t);
  const p = ns.spawn([holder(t), "1"], { user: NOBODY });
  assert.equal(await p.line(), "ready");
  assert.equal(await assertLsExact(t, p, ["--via", "bpf"]), 0);
  const all = inUnit(t, ["ls", "--all-netns", "--json"]);
  assert.equal(all.status, 0, all.stderr);
  const conns = (JSON.parse(all.stdout) as { connections: LsConnection[] }).connections;
  assert.equal(
    conns.filter((c) => c.processes.some((o) => o.pid === p.pid)).length,
    2,
    "both ends, found by --all-netns",
  );
  const r = inUnit(t, ["enable", "--pid", String(p.pid), "--via", "bpf", ...WANT_FLAGS]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.pidfdGetfd, 0);
  for (const s of (await report(p)).sockets) assert.deepEqual(settings(s), WANT, s.role);
});

test("each capability of the unit is needed: without it, what README says it is for fails", async (t) => {
  if (!needs(t, NEEDS)) return;
  const caps = unit.capabilities();
  const without = (...drop: string[]) => {
    for (const d of drop) assert.ok(caps.includes(d), `${d} is in the unit`);
    return caps.filter((c) => !drop.includes(c));
  };
  const cg = TestCgroup.create(t);
  guard(cg);
  const nobodys = await holderIn(t, cg, NOBODY);
  const roots = await holderIn(t, cg);
  const ns = Netns.create(t);
  const inNs = ns.spawn([holder(t), "1"], { user: NOBODY });
  assert.equal(await inNs.line(), "ready");
  const untouched = async () => {
    for (const p of [nobodys, roots, inNs]) {
      for (const s of (await report(p)).sockets) assert.equal(s.keepalive, 0, `pid ${p.pid} ${s.role}: untouched`);
    }
    assert.equal(enforcedOn(cg), undefined, "nothing enforced");
  };
  const fails = (set: string[], args: readonly string[], message: RegExp, why: string) => {
    const r = inUnit(t, args, set);
    assert.equal(r.status, 1, `${why}: tcpka ${args.join(" ")} exits 1; stdout: ${r.stdout} stderr: ${r.stderr}`);
    assert.match(r.stderr, message, why);
  };
  const enforceArgs = ["enforce", "--cgroup", cg.path, ...WANT_FLAGS];

  // CAP_SYS_ADMIN: setns into another network namespace (netns_install), for a bulk change there. (ls needs it
  // only where a namespace has sockets that no process holds: the owners' walk brings the others, as here.)
  fails(
    without("CAP_SYS_ADMIN"),
    ["enable", "--pid", String(inNs.pid), "--via", "bpf", ...WANT_FLAGS],
    /setns: EPERM/,
    "setns",
  );
  const held = inUnit(t, ["ls", "--pid", String(inNs.pid), "--via", "bpf", "--json"], without("CAP_SYS_ADMIN"));
  assert.equal(held.status, 0, held.stderr);
  assert.equal((JSON.parse(held.stdout) as { connections: unknown[] }).connections.length, 2, held.stdout);
  // CAP_SYS_PTRACE: pidfd_getfd of another user's process (__ptrace_may_access), and of a root process whose
  // capabilities are not a subset of ours (cap_ptrace_access_check).
  for (const p of [nobodys, roots]) {
    fails(
      without("CAP_SYS_PTRACE"),
      ["enable", "--pid", String(p.pid), "--via", "pidfd", ...WANT_FLAGS],
      /^tcpka: cannot reach the sockets of holder/,
      `pidfd_getfd of pid ${p.pid}`,
    );
  }
  // CAP_DAC_READ_SEARCH: listing another user's /proc/PID/fd (mode 0500: proc_fd_permission, generic_permission).
  fails(
    without("CAP_DAC_READ_SEARCH"),
    ["ls", "--pid", String(nobodys.pid), "--via", "netlink"],
    /^tcpka: cannot reach the sockets of holder/,
    "/proc/PID/fd of another user",
  );
  // Without CAP_SYS_ADMIN, which implies them for bpf() (bpf_token_capable, bpf_capable, perfmon_capable):
  // CAP_BPF to load any program, CAP_PERFMON for the tracing programs (the iterators), CAP_NET_ADMIN for the
  // cgroup programs (is_net_admin_prog_type).
  const bpfLs = ["ls", "--pid", String(nobodys.pid), "--via", "bpf"];
  fails(without("CAP_SYS_ADMIN", "CAP_BPF"), bpfLs, /^tcpka: bpf\(PROG_LOAD\): EPERM/, "CAP_BPF: the iterators");
  fails(without("CAP_SYS_ADMIN", "CAP_BPF"), enforceArgs, /permission denied/, "CAP_BPF: the cgroup programs");
  fails(without("CAP_SYS_ADMIN", "CAP_PERFMON"), bpfLs, /^tcpka: bpf\(PROG_LOAD\): EPERM/, "CAP_PERFMON: tracing");
  fails(without("CAP_SYS_ADMIN", "CAP_NET_ADMIN"), enforceArgs, /permission denied/, "CAP_NET_ADMIN");
  await untouched();

  // Without CAP_PERFMON enforce's sock_ops program cannot read the socket through BTF (bpf_skc_to_tcp_sock is not
  // offered: bpf_sk_base_func_proto), and says that it reads with bpf_getsockopt instead.
  const slower = inUnit(t, enforceArgs, without("CAP_SYS_ADMIN", "CAP_PERFMON"));
  assert.equal(slower.status, 0, slower.stderr);
  assert.match(slower.stdout + slower.stderr, /warning: the settings are read with bpf_getsockopt/);
  assert.equal(inUnit(t, ["enforce", "--remove", "--cgroup", cg.path]).status, 0);

  // With the three, but without CAP_SYS_ADMIN, what stays in this network namespace works: enforce as it is, and
  // the kernel pass.
  const made = inUnit(t, enforceArgs, without("CAP_SYS_ADMIN"));
  assert.equal(made.status, 0, made.stderr);
  assert.doesNotMatch(made.stdout + made.stderr, /warning/);
  const removed = inUnit(t, ["enforce", "--remove", "--cgroup", cg.path], without("CAP_SYS_ADMIN"));
  assert.equal(removed.status, 0, removed.stderr);
  assert.equal(enforcedOn(cg), undefined);
  const ls = inUnit(t, [...bpfLs, "--json"], without("CAP_SYS_ADMIN"));
  assert.equal(ls.status, 0, ls.stderr);
  assert.equal(ls.pidfdGetfd, 0, "read in the kernel");

  // README says what each one is for.
  const readme = readFileSync(join(REPO, "README.md"), "utf8");
  const start = readme.indexOf("\n## Run the agent as a service\n");
  assert.notEqual(start, -1, "README has the section");
  const section = readme.slice(start, readme.indexOf("\n## ", start + 1));
  for (const c of caps) assert.match(section, new RegExp(`^\\| ${c} \\|`, "m"), `README's table explains ${c}`);
});

test("in the unit: tcpka agent itself enforces its policy on a cgroup, seen by the host, and removes it with the rule", async (t) => {
  if (!needs(t, NEEDS)) return;
  const cg = TestCgroup.create(t);
  guard(cg);
  // The policy where the unit's sandbox sees it (its /tmp is its own): a directory of this test's in /run.
  const dir = join("/run", uniqueName());
  mkdirSync(dir, { mode: 0o755 });
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const policy = join(dir, "policy.yaml");
  const rule = `rules:\n  - name: unit-test\n    match: {cgroup: ${cg.path}}\n    keepalive: {idle: ${WANT.idle}s, interval: ${WANT.interval}s, count: ${WANT.count}}\n`;
  writeAtomically(policy, rule);
  // A process in the cgroup first (the agent enforces on a cgroup whose processes are all the rule's, not an empty one).
  const before = await holderIn(t, cg, NOBODY);

  execStartPre();
  const agent = theSandbox().startTcpka(t, ["agent", "--policy", policy]);
  const e = await until("the agent's enforcement, as the host sees it", () => enforcedOn(cg), 30_000).catch((x) => {
    throw new Error(`${(x as Error).message}; the agent said: ${agent.stderr}${agent.stdout}`);
  });
  assert.deepEqual(
    [e.settings_known, e.setsockopt_hook, e.owner, e.rule, e.idle_s, e.interval_s, e.count],
    [true, true, "agent", "unit-test", WANT.idle, WANT.interval, WANT.count],
    JSON.stringify(e),
  );
  const p = await holderIn(t, cg, NOBODY); // started after: every socket of it set up by the cgroup's programs
  for (const s of (await report(p)).sockets) assert.deepEqual(settings(s), WANT, `${s.role} in the cgroup`);
  // The connections that were there: changed by the agent's pass over them.
  await until(
    "the existing connections changed",
    async () => (await report(before)).sockets.every((s) => settings(s).keepalive === 1),
    30_000,
  );
  for (const s of (await report(before)).sockets) assert.deepEqual(settings(s), WANT, `${s.role}, there before`);
  const status = inUnit(t, ["status", "--json"]);
  assert.equal(status.status, 0, `${status.stdout}\n${status.stderr}`);

  // The rule removed: so is its enforcement; then the agent stops on SIGTERM, with nothing left behind.
  writeAtomically(policy, "rules: []\n");
  await until("the enforcement removed with its rule", () => enforcedOn(cg) === undefined, 30_000);
  assert.ok(!existsSync(join(PIN_ROOT, e.name)), "no pin left");
  agent.kill("SIGTERM");
  const done = await agent.result();
  assert.equal(done.status, 0, done.stderr);
  assert.doesNotMatch(done.stderr, /warning|fail|error/i, "the agent's log: nothing went wrong in the unit");
});

test("in the unit without a BPF file system (ExecStartPre not run): the agent stops and says why, pinning nothing", async (t) => {
  if (!needs(t, NEEDS)) return;
  const cg = TestCgroup.create(t);
  guard(cg);
  await holderIn(t, cg, NOBODY); // a target for the rule: without the check, the agent would enforce there
  const dir = join("/run", uniqueName());
  mkdirSync(dir, { mode: 0o755 });
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const policy = join(dir, "policy.yaml");
  writeAtomically(policy, `rules:\n  - name: unit-test\n    match: {cgroup: ${cg.path}}\n    keepalive: {idle: 9s}\n`);
  // The sandbox's own mount namespace loses /sys/fs/bpf (the host's keeps it): pins made there would be seen by
  // no one, and gone with the service. pid 1's namespace is closed even to root on some hosts (this VM's).
  const r = theSandbox().tcpka(["agent", "--policy", policy], { noBpffs: true });
  assert.equal(r.status, 1, `${r.stdout}\n${r.stderr}`);
  assert.match(
    r.stderr,
    /^tcpka: no BPF file system at \/sys\/fs\/bpf, and this agent runs in a mount namespace of its own: stopping rather than pinning where nothing else sees it$/m,
  );
  assert.equal(enforcedOn(cg), undefined);
});
