/**
 * libc.ts loads koffi's native module itself (10-15 ms less at every start than koffi's loader). This holds the
 * machines tcpka is tested on to that path, so that a koffi upgrade that moves its prebuilt binary is noticed
 * instead of quietly costing every command the slower loader, and checks that the native module it took works.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { REPO } from "../helpers/paths.js";

const LIBC = pathToFileURL(join(REPO, "dist", "sys", "libc.js")).href;

test("koffi's native module is loaded directly on linux x64 / arm64 with glibc, and koffi's loader is not run", (t) => {
  if (process.platform !== "linux" || (process.arch !== "x64" && process.arch !== "arm64")) {
    t.skip(`${process.platform}-${process.arch}: koffi's own loader is the path here`);
    return;
  }
  const script = `
    import { createRequire } from "node:module";
    import { koffiLoader, kernelHz } from ${JSON.stringify(LIBC)};
    const loaded = Object.keys(createRequire(import.meta.url).cache);
    process.stdout.write(JSON.stringify({ by: koffiLoader(), hz: kernelHz(), loaded }));`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const got = JSON.parse(r.stdout) as { by: string; hz: number; loaded: string[] };
  assert.equal(got.by, "native");
  assert.ok(
    got.loaded.some((p) => p.endsWith(`/linux_${process.arch}/koffi.node`)),
    got.loaded.join("\n"),
  );
  assert.ok(!got.loaded.some((p) => /\/koffi\/(src\/koffi\/)?index\.cjs$/.test(p)), got.loaded.join("\n"));
  // A call through it: the kernel's tick, from clock_getres (100, 250, 300 or 1000 on any Linux).
  assert.ok([100, 250, 300, 1000].includes(got.hz), String(got.hz));
});
