/**
 * The command line runs from dist/bundle/ (scripts/bundle.mjs): tsc's modules in one CommonJS file, tcpka.cjs,
 * started by boot.cjs (src/cli/boot.ts) with V8's code cache of the command's last run. Each module's
 * import.meta.url is rewritten to the URL of its own file in dist/, relative to the bundle's own URL
 * (__tcpkaUrl). These check what would break silently: a path that a module finds relative to itself (a worker
 * thread's script, the shim's sources, package.json) pointing at nothing, bin/tcpka.js running the modules instead
 * of the bundle, the start loading native code, or a code cache that is not this user's alone being run.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { REPO, TCPKA } from "../helpers/paths.js";

const BUNDLE = join(REPO, "dist", "bundle");

function bundles(): { name: string; text: string }[] {
  return readdirSync(BUNDLE)
    .filter((n) => n.endsWith(".cjs"))
    .map((name) => ({ name, text: readFileSync(join(BUNDLE, name), "utf8") }));
}

test("bin/tcpka.js starts the bundle through boot, and the bundle is no older than the modules it was made from", () => {
  assert.match(readFileSync(TCPKA, "utf8"), /require\("\.\.\/dist\/bundle\/boot\.cjs"\)/);
  // bin/ is CommonJS, so that Node's ES module loader is never started for the command line.
  assert.deepEqual(JSON.parse(readFileSync(join(REPO, "bin", "package.json"), "utf8")), { type: "commonjs" });
  assert.deepEqual(
    bundles()
      .map((b) => b.name)
      .sort(),
    ["boot.cjs", "tcpka.cjs"],
  );
  const made = statSync(join(BUNDLE, "tcpka.cjs")).mtimeMs;
  assert.ok(made >= statSync(join(REPO, "dist", "cli", "main.js")).mtimeMs, "npm run build makes both");
  // boot runs before anything else and must stay small: no native code, no command's modules.
  const boot = readFileSync(join(BUNDLE, "boot.cjs"), "utf8");
  assert.doesNotMatch(boot, /koffi/);
  assert.doesNotMatch(boot, /runLs|inspectEach/);
});

test("every import.meta.url in the bundle is its module's own file in dist/, and what it points at exists", () => {
  const own = /new URL\("([^"]+)", __tcpkaUrl\)\.href/g;
  let seen = 0;
  for (const { name, text } of bundles()) {
    const at = pathToFileURL(join(BUNDLE, name));
    assert.equal(text.match(/import\.meta/g), null, `${name} still uses import.meta`);
    for (const m of text.matchAll(own)) {
      const module = fileURLToPath(new URL(m[1]!, at));
      assert.ok(existsSync(module), `${name}: ${m[1]} is no file of dist/`);
      seen++;
    }
    // What a module finds relative to itself: new URL("./read-ahead-worker.js", <its own URL>) and the like.
    for (const m of text.matchAll(/new URL\("([^"]+)", new URL\("([^"]+)", __tcpkaUrl\)\.href\)/g)) {
      const target = fileURLToPath(new URL(m[1]!, new URL(m[2]!, at)));
      assert.ok(existsSync(target), `${name}: ${m[1]} from ${m[2]} is ${target}, which does not exist`);
    }
  }
  // libc.js (koffi's require), read-ahead.js, proc-events.js, helper.js, shim.js, main.js (package.json), boot.js.
  assert.ok(seen >= 7, `only ${seen} rewritten`);
});

test("the bundled command line starts and reads package.json through its rewritten URL", () => {
  const r = spawnSync(process.execPath, [TCPKA, "--version"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string };
  assert.equal(r.stdout.trim(), `tcpka ${pkg.version}`);
});
