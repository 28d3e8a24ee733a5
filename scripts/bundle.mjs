// Bundle the command line (dist/cli/main.js and every module it loads, tsc's output) into a few files in
// dist/bundle/, one chunk per command plus the code they share. Why: Node 20 loads an ES module graph file by
// file (resolve, read, parse, link), and `tcpka ls` loads 39 of them: ~65 ms of its start on a 2-vCPU VM, ~30 ms
// as one bundle (ARCHITECTURE.md, "Build"). The library (dist/index.js) and the worker threads' modules stay
// unbundled; npm packages stay external (node_modules, loaded as they are).
//
// A module finds its neighbours with new URL("./x.js", import.meta.url) (the worker threads' scripts, the native
// shim, package.json). In a chunk, import.meta.url is the chunk's, so each module's import.meta.url is rewritten to
// the URL of its own file in dist/: the same relative paths keep working, and point at the unbundled files.
import { readFile } from "node:fs/promises";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
const outdir = join(dist, "bundle");

/** import.meta.url of a module in dist/, as seen from a chunk in dist/bundle/. */
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

await build({
  entryPoints: [join(dist, "cli", "main.js")],
  outdir,
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  packages: "external",
  chunkNames: "[name]-[hash]",
  plugins: [ownUrl],
  logLevel: "warning",
});
