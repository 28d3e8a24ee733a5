/**
 * A process name is chosen by the process (prctl PR_SET_NAME): a local user can name a process with terminal
 * escape sequences and let root look at it. Played here by uid 65534, whose process names itself with an OSC
 * window-title sequence, a clear-screen CSI, a newline and a carriage return, and holds TCP connections with and
 * without keepalive. Root's `tcpka`, `tcpka ls` and `tcpka enable` must print the name escaped (no control byte
 * reaches the terminal, the row stays one line), and `--json` the exact name.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { needs, python3 } from "../helpers/env.js";
import { Netns } from "../helpers/netns.js";
import type { Result } from "../helpers/processes.js";
import { NOBODY, type User } from "../helpers/users.js";

after(() => Netns.destroyAll());

/** ESC ] 0 ; t BEL (set the window title), ESC [ 2 J (clear the screen), a newline and a CR: 13 bytes. */
const NAME = "\x1b]0;t\x07\x1b[2J\nx\r";
const SHOWN = "\\x1b]0;t\\x07\\x1b[2J\\x0ax\\x0d";
/** Another unprivileged user than the attacker, who runs tcpka on the attacker's process. */
const OTHER: User = { uid: 65533, gid: 65533 };

const HOLDER = `
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, bytes.fromhex(sys.argv[1]))  # PR_SET_NAME
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
on = socket.socket(); on.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1); on.connect(srv.getsockname())
off = socket.create_connection(srv.getsockname())
accepted = [srv.accept()[0], srv.accept()[0]]
print("ready", flush=True)
sys.stdin.readline()
`;

// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what must not be printed
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f]/;

/** Human output of a run: exit 0 (or `status`), no control byte but newlines, and the name escaped in a row. */
function assertEscaped(r: Result, what: string, pid: number, status = 0): void {
  assert.equal(r.status, status, `${what}: ${r.stderr}`);
  const all = r.stdout + r.stderr;
  assert.doesNotMatch(all, CONTROL, `${what} prints no control byte: ${JSON.stringify(all)}`);
  assert.ok(all.includes(`${SHOWN}[${pid}]`) || all.includes(`${SHOWN}  ${pid}`), `${what} shows ${SHOWN}: ${all}`);
}

test("a process named with escape sequences is shown escaped by tcpka, ls and enable, exactly in JSON", async (t) => {
  if (!needs(t, { root: true, tools: ["ip", "setpriv", "python3"] })) return;
  const ns = Netns.create(t);
  const attacker = ns.spawn([python3(), "-c", HOLDER, Buffer.from(NAME).toString("hex")], { user: NOBODY });
  assert.equal(await attacker.line(), "ready");
  const pid = attacker.pid;

  const summary = ns.tcpka([]);
  assertEscaped(summary, "tcpka", pid);
  assert.match(summary.stdout, new RegExp(`^ {2}${escapeRe(SHOWN)} +${pid} +3 `, "m"), "one row of the table");

  const ls = ns.tcpka(["ls", "-a"]);
  assertEscaped(ls, "tcpka ls -a", pid);
  const rows = ls.stdout.split("\n").filter((l) => l.includes(`${SHOWN}[${pid}] fd `));
  assert.equal(rows.length, 5, `a row per socket, each on one line: ${ls.stdout}`);
  assert.match(ls.stdout, new RegExp(`without \\(${escapeRe(`${SHOWN}[${pid}]`)}\\)`), "the footer");

  const json = ns.tcpka(["ls", "--json"]);
  assert.equal(json.status, 0, json.stderr);
  const out = JSON.parse(json.stdout) as {
    connections: { processes: { comm: string }[] }[];
    summary: { without_keepalive: { process: string }[] };
  };
  assert.equal(out.connections.length, 4);
  for (const c of out.connections) assert.equal(c.processes[0]?.comm, NAME, "the exact name");
  assert.deepEqual(
    out.summary.without_keepalive.map((w) => w.process),
    [`${NAME}[${pid}]`],
  );

  assertEscaped(ns.tcpka(["enable", "--pid", String(pid), "--dry-run"]), "enable --dry-run", pid);
  const enable = ns.tcpka(["enable", "--pid", String(pid)]);
  assertEscaped(enable, "enable", pid);
  assert.equal(enable.stdout.split("\n").filter((l) => l.startsWith(`${SHOWN}[${pid}] fd `)).length, 5);

  // Another unprivileged user may not reach the attacker's sockets: the error names it, escaped, in one line.
  const denied = ns.tcpka(["enable", "--pid", String(pid)], { user: OTHER });
  assertEscaped(denied, "enable as another user", pid, 1);
  assert.match(denied.stderr, /^tcpka: cannot reach the sockets of [^\n]*: permission denied\nhint: [^\n]+\n$/);
});

function escapeRe(s: string): string {
  return s.replace(/[\\^$.*+?()[\]{}|]/g, "\\$&");
}
