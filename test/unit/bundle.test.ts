/**
 * The command line runs from dist/bundle/ (scripts/bundle.mjs): tsc's modules in a few chunks, each module's
 * import.meta.url rewritten to the URL of its own file in dist/. These check what would break silently: a path
 * that a module finds relative to itself (a worker thread's script, the shim's sources, package.json) pointing
 * at nothing, or bin/tcpka.js running the modules instead of the bundle.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { REPO, TCPKA } from "../helpers/paths.js";

const BUNDLE = join(REPO, "dist", "bundle");

function chunks(): { name: string; text: string }[] {
  return readdirSync(BUNDLE)
    .filter((n) => n.endsWith(".js"))
    .map((name) => ({ name, text: readFileSync(join(BUNDLE, name), "utf8") }));
}

test("bin/tcpka.js runs the bundle, and the bundle is no older than the modules it was made from", () => {
  assert.match(readFileSync(TCPKA, "utf8"), /from "\.\.\/dist\/bundle\/main\.js"/);
  const made = statSync(join(BUNDLE, "main.js")).mtimeMs;
  assert.ok(made >= statSync(join(REPO, "dist", "cli", "main.js")).mtimeMs, "npm run build makes both");
});

test("every import.meta.url in the bundle is its module's own file in dist/, and what it points at exists", () => {
  const own = /new URL\("([^"]+)", import\.meta\.url\)\.href/g;
  let seen = 0;
  for (const { name, text } of chunks()) {
    const at = pathToFileURL(join(BUNDLE, name));
    // No use of import.meta.url but the rewritten one: a chunk's own URL means nothing to the module's code.
    const bare = text.replace(own, "").match(/import\.meta\.url/g);
    assert.equal(bare, null, `${name} uses its chunk's import.meta.url`);
    for (const m of text.matchAll(own)) {
      const module = fileURLToPath(new URL(m[1]!, at));
      assert.ok(existsSync(module), `${name}: ${m[1]} is no file of dist/`);
      seen++;
    }
    // What a module finds relative to itself: new URL("./read-ahead-worker.js", <its own URL>) and the like.
    for (const m of text.matchAll(/new URL\("([^"]+)", new URL\("([^"]+)", import\.meta\.url\)\.href\)/g)) {
      const target = fileURLToPath(new URL(m[1]!, new URL(m[2]!, at)));
      assert.ok(existsSync(target), `${name}: ${m[1]} from ${m[2]} is ${target}, which does not exist`);
    }
  }
  // libc.js (koffi's require), read-ahead.js, proc-events.js, helper.js, shim.js, main.js (package.json).
  assert.ok(seen >= 6, `only ${seen} rewritten`);
});

test("the bundled command line starts and reads package.json through its rewritten URL", () => {
  const r = spawnSync(process.execPath, [TCPKA, "--version"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string };
  assert.equal(r.stdout.trim(), `tcpka ${pkg.version}`);
});
