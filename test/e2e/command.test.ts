/**
 * `tcpka run` and `tcpka trace` start a command as a shell would, and fail as a shell does: a path that cannot be
 * executed or is a directory gives 126 with the shell's words, one that does not exist 127.
 */
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { cleanEnv } from "../helpers/processes.js";
import { tempDir } from "../helpers/scope.js";
import { tcpka } from "../helpers/tcpka.js";

const DIR = tempDir({ after });

describe("a command that cannot be started: the shell's words and exit codes", () => {
  test("not executable or a directory: 126; missing: 127 (run and trace)", async (t) => {
    const bin = join(DIR, "path-bin");
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, "tcpka-e2e-not-executable"), "#!/bin/sh\necho ran\n", { mode: 0o644 });
    mkdirSync(join(bin, "tcpka-e2e-a-directory"), { recursive: true });
    const env = cleanEnv({ PATH: `${bin}:/usr/bin:/bin` });
    const cases: [string, number, string][] = [
      ["/etc/passwd", 126, "tcpka: /etc/passwd: permission denied"],
      [bin, 126, `tcpka: ${bin}: is a directory`],
      ["tcpka-e2e-not-executable", 126, "tcpka: tcpka-e2e-not-executable: permission denied"],
      ["tcpka-e2e-a-directory", 127, "tcpka: tcpka-e2e-a-directory: command not found"],
      [join(bin, "missing"), 127, `tcpka: ${join(bin, "missing")}: no such file or directory`],
      ["tcpka-e2e-missing", 127, "tcpka: tcpka-e2e-missing: command not found"],
    ];
    for (const command of ["run", "trace"]) {
      for (const [cmd, code, said] of cases) {
        const r = await tcpka(t, [command, "--", cmd], { env });
        assert.deepEqual(
          [r.code, r.stdout, r.stderr.split("\n").filter((l) => l !== "")],
          [code, "", [said]],
          `tcpka ${command} -- ${cmd}`,
        );
      }
    }
  });
});
