/**
 * What an install gets. `npm pack` ships what tcpka needs to run and to build its library again on a system
 * where the prebuilt one cannot be loaded (dist, bin, the shim's sources and build.sh, the library, LICENSE), the
 * systemd unit of the agent (README installs it from there), and none of the tests. The prebuilt library carries no debug info and needs no glibc symbol version newer than
 * 2.17, so that one build loads on old systems as well as on the one it was built on.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { needs } from "../helpers/env.js";
import { REPO, SHIM } from "../helpers/paths.js";

function run(argv: readonly string[]): string {
  const [file, ...args] = argv;
  const r = spawnSync(file!, args, { cwd: REPO, encoding: "utf8" });
  assert.equal(r.status, 0, `${argv.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

test("npm pack: the tarball holds what an install needs and none of the tests", (t) => {
  if (!needs(t, { tools: ["npm"] })) return;
  const [pack] = JSON.parse(run(["npm", "pack", "--dry-run", "--json", "--ignore-scripts"])) as {
    files: { path: string }[];
  }[];
  const files = pack!.files.map((f) => f.path);
  for (const need of [
    "LICENSE",
    "README.md",
    "package.json",
    "bin/tcpka.js",
    "dist/cli/main.js",
    "bin/package.json",
    "dist/bundle/boot.cjs",
    "dist/bundle/tcpka.cjs",
    "dist/enforce/preload/index.js",
    "native/preload.c",
    "native/events.c",
    "native/events.h",
    "native/shim.h",
    "native/build.sh",
    "native/build/libtcpka.so",
    "contrib/systemd/tcpka-agent.service",
    "contrib/oci-hooks.d/tcpka-agent.json",
  ]) {
    assert.ok(files.includes(need), `${need} is missing from ${JSON.stringify(files)}`);
  }
  assert.deepEqual(
    files.filter((f) => /^(test|dist-test|bench)\//.test(f) || /\.test\.[jt]s$/.test(f)),
    [],
    "no tests",
  );
  const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { license: string };
  assert.match(readFileSync(join(REPO, "LICENSE"), "utf8"), new RegExp(`^${pkg.license} License\n`));
});

test("the prebuilt library: no debug info, and no glibc symbol version newer than 2.17", (t) => {
  if (!needs(t, { tools: ["readelf", "objdump"] })) return;
  const sections = run(["readelf", "-SW", SHIM]);
  assert.doesNotMatch(sections, /\.debug_/, "no debug info");
  const versions = [...run(["objdump", "-T", SHIM]).matchAll(/\bGLIBC_(\d+)\.(\d+)/g)].map(
    ([v, major, minor]) => [v, Number(major) * 1000 + Number(minor)] as const,
  );
  assert.ok(versions.length > 0, "it binds glibc versions");
  const newer = versions.filter(([, n]) => n > 2017).map(([v]) => v);
  assert.deepEqual([...new Set(newer)], [], "dlsym bound to its first version, not GLIBC_2.34");
  // Before glibc 2.34 dlsym lives in libdl.so.2: the library must bring it along.
  assert.match(run(["readelf", "-dW", SHIM]), /\(NEEDED\)\s+Shared library: \[libdl\.so\.2\]/);
});
