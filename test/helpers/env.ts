/**
 * What a test needs from the machine. Outside CI, a test whose needs are missing is skipped with the reason
 * printed; in CI (CI=true) nothing may be skipped, so a missing need fails the test instead. Also where the
 * machine's python3 really is.
 */
import { spawnSync } from "node:child_process";
import type { TestContext } from "node:test";

export const IN_CI = process.env.CI === "true" || process.env.CI === "1";
export const IS_ROOT = process.geteuid?.() === 0;

export function hasTool(name: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${name}`], { stdio: "ignore" }).status === 0;
}

/**
 * Returns false (and skips the test, saying why) when a need is missing outside CI; throws in CI.
 * Use: `if (!needs(t, { root: true, tools: ["ip", "nft"] })) return;`
 */
export function needs(t: TestContext, what: { root?: boolean; tools?: readonly string[] }): boolean {
  const missing: string[] = [];
  if (what.root && !IS_ROOT) missing.push("root");
  for (const tool of what.tools ?? []) if (!hasTool(tool)) missing.push(tool);
  if (missing.length === 0) return true;
  const reason = `needs ${missing.join(", ")}`;
  if (IN_CI) throw new Error(`${reason}: CI must provide it (.ci/run installs the tools and runs as root)`);
  t.skip(reason);
  return false;
}

let pythonPath: string | undefined;

/**
 * The real python3 binary. `python3` on PATH may be a wrapper script (pyenv shims are shell scripts that exec the
 * real interpreter), which would add a process and a shell to everything a test watches.
 */
export function python3(): string {
  if (pythonPath === undefined) {
    const r = spawnSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`python3: ${r.stderr}`);
    pythonPath = r.stdout.trim();
  }
  return pythonPath;
}
