// Bundle the command line (dist/cli/main.js and every module it loads, tsc's output) into one CommonJS file,
// dist/bundle/tcpka.cjs, and its start (dist/cli/boot.js) into dist/bundle/boot.cjs, which bin/tcpka.js requires.
// Why: Node 20 loads an ES module graph file by file (resolve, read, parse, link, through promises), and has no
// compile cache; boot.ts compiles the one file with V8's code cache of the command's last run (ARCHITECTURE.md,
// "Build"). Each command's modules still run only when it is chosen (esbuild's lazy init of what main.ts imports
// dynamically). The library (dist/index.js) and the worker threads' modules stay unbundled; npm packages stay
// external (node_modules, loaded as they are, by require).
//
// A module finds its neighbours with new URL("./x.js", import.meta.url) (the worker threads' scripts, the native
// shim, package.json). Each module's import.meta.url is rewritten to the URL of its own file in dist/, relative to
// the bundle's (__tcpkaUrl, from the bundle's __filename): the same relative paths keep working, and point at the
// unbundled files.
import { rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
const outdir = join(dist, "bundle");

/** import.meta.url of a module in dist/, as seen from the bundle in dist/bundle/. */
const ownUrl = {
  name: "own-import-meta-url",
  setup(b) {
    b.onLoad({ filter: /\.js$/ }, async (args) => {
      if (!args.path.startsWith(dist + sep)) return undefined;
      const text = await readFile(args.path, "utf8");
      const rel = relative(outdir, args.path).split(sep).join("/");
      const url = `new URL(${JSON.stringify(rel)}, import.meta.url).href`;
      return { contents: text.replaceAll("import.meta.url", url), loader: "js" };
    });
  },
};

// What an earlier layout of the bundle left (chunks named by their hash) must not linger.
rmSync(outdir, { recursive: true, force: true });

for (const [entry, out] of [
  ["cli/main.js", "tcpka.cjs"],
  ["cli/boot.js", "boot.cjs"],
]) {
  await build({
    entryPoints: [join(dist, entry)],
    outfile: join(outdir, out),
    bundle: true,
    format: "cjs",
    platform: "node",
    target: "node20",
    packages: "external",
    define: { "import.meta.url": "__tcpkaUrl" },
    banner: { js: 'var __tcpkaUrl = require("node:url").pathToFileURL(__filename).href;' },
    plugins: [ownUrl],
    logLevel: "warning",
  });
}
