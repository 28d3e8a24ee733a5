/**
 * tcpka into a slow pipe (`tcpka ls --json | jq`): it waits for the reader instead of spinning. Node makes a
 * piped fd 1 non-blocking as soon as anything opens process.stdout (libuv's uv_pipe_open), which tcpka did
 * through `process.stdout.isTTY`, through `import … from "node:process"` (the module's facade reads every
 * export) and through a worker thread's stdio piped into the parent's. Every write into the full pipe then
 * failed with EAGAIN and was tried again at once, an exception a try, for as long as the reader lagged: a whole
 * core burnt while `jq` caught up. The flag is the pipe's open file description's, shared with every other
 * writer of the pipe while tcpka runs. Node puts it back at exit.
 */
import assert from "node:assert/strict";
import { describe, type TestContext, test } from "node:test";
import { needs, python3 } from "../helpers/env.js";
import { connectTo, listener } from "../helpers/listener.js";
import { TCPKA } from "../helpers/paths.js";
import { cleanEnv, exec } from "../helpers/processes.js";

/**
 * Runs the command with fd 1 inherited (the pipe); 0.5 s in (the reader has not read yet, so tcpka waits on a
 * full pipe) reads the O_NONBLOCK of tcpka's fd 1; at the end says it and tcpka's CPU time on stderr.
 */
const WRAPPER = `import os, resource, subprocess, sys, time
p = subprocess.Popen(sys.argv[1:])
time.sleep(0.5)
flags = -1
try:
    for line in open("/proc/%d/fdinfo/1" % p.pid):
        if line.startswith("flags:"):
            flags = int(line.split()[1], 8)
except OSError:
    pass
p.wait()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
state = "gone" if flags < 0 else ("nonblocking" if flags & os.O_NONBLOCK else "blocking")
sys.stderr.write("fd1=%s cpu=%.3f code=%d\\n" % (state, ru.ru_utime + ru.ru_stime, p.returncode))
`;

/** How long the reader waits before it reads: tcpka's output (150 KiB or more) fills the 64 KiB pipe long before. */
const READER_WAITS_S = 2.5;

describe("tcpka into a pipe whose reader lags: fd 1 stays blocking, no CPU burnt waiting", () => {
  for (const args of [["ls", "--json"], ["ls"]]) {
    test(`tcpka ${args.join(" ")} of 2,000 sockets | { sleep ${READER_WAITS_S}; cat; }`, async (t) => {
      if (!needs(t, { tools: ["python3"] })) return;
      const rows = await loopbackPairs(t, 1000);
      const script = `"$PY" -c "$WRAPPER" "$0" "$@" | { sleep ${READER_WAITS_S}; cat; }`;
      const r = await exec(t, ["sh", "-c", script, process.execPath, TCPKA, ...args, "--pid", String(process.pid)], {
        env: cleanEnv({ PY: python3(), WRAPPER }),
      });
      const said = /^fd1=(\w+) cpu=([\d.]+) code=(-?\d+)$/m.exec(r.stderr);
      assert.ok(said, `the wrapper said nothing: ${r.stderr}`);
      const [, fd1, cpu, code] = said;
      assert.equal(code, "0", r.stderr);
      assert.equal(fd1, "blocking", "tcpka made its piped fd 1 non-blocking");
      // Spinning on EAGAIN until the reader reads costs about READER_WAITS_S - 0.5 s of CPU; the work itself
      // (start-up, 2,000 rows) a few hundred milliseconds.
      assert.ok(Number(cpu) < 1.2, `tcpka used ${cpu} s of CPU while its reader waited ${READER_WAITS_S} s`);
      // And the reader got every byte.
      assert.ok(r.stdout.length > 2 * 65536, `${r.stdout.length} bytes`);
      const ours = rows(r.stdout, args.includes("--json"));
      assert.equal(ours, 2000, "rows of the test's 2,000 sockets");
    });
  }
});

/**
 * `n` loopback connections of this process (both ends), closed when the test ends; a counter of the rows of
 * them in ls output (JSON or the table).
 */
async function loopbackPairs(t: TestContext, n: number): Promise<(stdout: string, json: boolean) => number> {
  const l = await listener(t);
  const clients = await Promise.all(Array.from({ length: n }, () => connectTo(l.port)));
  t.after(() => {
    for (const c of clients) c.destroy();
  });
  await l.accepted(n);
  const port = l.port;
  return (stdout, json) => {
    if (json) {
      const parsed = JSON.parse(stdout) as { connections: { local_port: number; peer_port: number }[] };
      return parsed.connections.filter((c) => c.local_port === port || c.peer_port === port).length;
    }
    return stdout.split("\n").filter((line) => line.includes(`:${port} `) || line.endsWith(`:${port}`)).length;
  };
}
