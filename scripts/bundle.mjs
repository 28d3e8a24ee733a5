// Bundle the command line (dist/cli/main.js and every module it loads, tsc's output) into a few files in
// dist/bundle/, one chunk per command plus the code they share. Why: Node 20 loads an ES module graph file by
// file (resolve, read, parse, link), and `tcpka ls` loads 39 of them: ~65 ms of its start on a 2-vCPU VM, ~30 ms
// as one bundle (ARCHITECTURE.md, "Build"). The library (dist/index.js) and the worker threads' modules stay
// unbundled; npm packages stay external (node_modules, loaded as they are).
//
// A module finds its neighbours with new URL("./x.js", import.meta.url) (the worker threads' scripts, the native
// shim, package.json). In a chunk, import.meta.url is the chunk's, so each module's import.meta.url is rewritten to
// the URL of its own file in dist/: the same relative paths keep working, and point at the unbundled files.
import { rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
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

/**
 * node:fs through require, not an ES import. An ES import of a built-in module makes Node read every one of its
 * exports (syncExports), and fs's include lazy getters (fs.promises, ReadStream) that load the streams and
 * fs/promises: 35 of Node's own modules, ~5-8 ms of every start-up; require("node:fs") loads none. The chunks
 * import this module instead, which re-exports fs's plain values (the getters left out: nothing here uses them).
 */
const fsByRequire = {
  name: "node-fs-by-require",
  setup(b) {
    b.onResolve({ filter: /^(node:)?fs$/ }, (args) =>
      args.importer.startsWith(dist + sep) ? { path: "fs", namespace: "fs-by-require" } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: "fs-by-require" }, () => {
      const fs = createRequire(import.meta.url)("node:fs");
      const names = Object.getOwnPropertyNames(fs).filter((n) => {
        const d = Object.getOwnPropertyDescriptor(fs, n);
        return d !== undefined && "value" in d && /^[A-Za-z_$][\w$]*$/.test(n);
      });
      const contents = [
        'import { createRequire } from "node:module";',
        // A URL of a file in dist/, as every import.meta.url in the chunks is (ownUrl); a built-in needs no path.
        `const fs = createRequire(new URL(${JSON.stringify(relative(outdir, join(dist, "index.js")))}, import.meta.url).href)("node:fs");`,
        "export default fs;",
        ...names.map((n) => `export const ${n} = fs.${n};`),
      ].join("\n");
      return { contents, loader: "js" };
    });
  },
};

// Chunks are named by their hash: a build leaves the last one's behind unless the directory starts empty.
rmSync(outdir, { recursive: true, force: true });

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
  plugins: [ownUrl, fsByRequire],
  logLevel: "warning",
});
