/**
 * How the command line starts (bin/tcpka.js): the whole of it is one CommonJS bundle (dist/bundle/tcpka.cjs,
 * scripts/bundle.mjs), compiled here with V8's code cache of the last run of the same command.
 *
 * Why: Node 20 has no compile cache of its own (module.enableCompileCache came in 22.1). Every start parsed the
 * command's code again and compiled each function the first time it ran, and the ES module loader resolved, read
 * and linked each chunk through promises: `tcpka ls` took ~50 ms from main() to its first line of work. A code
 * cache made after a run (Script.createCachedData) holds the bytecode of every function that run compiled, so the
 * next run of that command skips parsing and compiling them (measured in BENCHMARKS.md §1, session 19).
 *
 * The cache is code that this process will run, so it is read only from tcpka's runtime directory (/run/tcpka for
 * root: mode 0700, a tmpfs a reboot empties; $XDG_RUNTIME_DIR/tcpka for others; none without one), only when it is
 * a regular file of this user that no one else may write, opened without following a symlink, and written
 * atomically. Its name carries the command, Node's version and the bundle's inode, size and modification time, so
 * a rebuilt or upgraded tcpka never takes an old one; V8 itself refuses a cache of another V8 version, other flags
 * or another source length (cachedDataRejected), and the source is then compiled as without a cache.
 */
import { lstatSync, readdirSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Script } from "node:vm";
import { readPrivateFile, runtimeBase, writeFileAtomic } from "../sys/files.js";

/** The bundle of the whole command line, next to this module's bundle in dist/bundle/. */
export const BUNDLE = fileURLToPath(new URL("../bundle/tcpka.cjs", import.meta.url));

/** A cache bigger than this is not tcpka's (a whole run of `tcpka agent` makes about 1 MB). */
const MAX_CACHE = 64 << 20;

/**
 * The command whose cache a run uses: its first word (and "+json" with --json), or "summary" for `tcpka` and
 * `tcpka --all-netns`; none for help and the version, whose runs compile too little of a command to be worth
 * keeping. The first run of a command that succeeds makes its cache, which later runs use as it is (making one
 * costs 2-4 ms, too much for every run).
 */
export function cacheKey(argv: readonly string[]): string | undefined {
  if (argv.some((a) => a === "-h" || a === "--help" || a === "-V" || a === "--version")) return undefined;
  const first = argv[0];
  if (first === undefined || (first === "--all-netns" && argv.length === 1)) return "summary";
  if (first === "help") return undefined;
  // A word that names no command exits non-zero and writes nothing; this keeps any other byte out of the path.
  if (!/^[a-z][a-z-]{0,31}$/.test(first)) return undefined;
  // --json runs other code than the table (ls: the JSON pieces instead of the Table): a cache of its own.
  return argv.includes("--json") ? `${first}+json` : first;
}

/** Where the cache of `key` is kept for this bundle and this Node, or undefined without a runtime directory. */
export function cachePath(key: string): string | undefined {
  let base: string | undefined;
  try {
    base = runtimeBase();
  } catch {
    return undefined; // a runtime directory that another user controls: no cache, and no error for it here
  }
  if (!base) return undefined;
  const st = statSync(BUNDLE, { bigint: true });
  return join(base, `code-${key}.${process.versions.v8}-${st.ino}-${st.size}-${st.mtimeNs}.v8`);
}

/**
 * Another build's caches of a command that are kept: two installs of tcpka used in turn (a global one and a
 * project's) keep theirs instead of each removing the other's at every run; older ones are removed.
 */
const OTHER_BUILDS = 2;

/** Keep `data` as the cache at `path`, and remove this command's caches of older builds or Node versions. */
function writeCache(path: string, key: string, data: Buffer): void {
  try {
    writeFileAtomic(path, data, 0o600);
    const dir = dirname(path);
    const own = path.slice(dir.length + 1);
    const others: { name: string; mtime: number }[] = [];
    for (const name of readdirSync(dir)) {
      if (name === own || !name.startsWith(`code-${key}.`) || !name.endsWith(".v8")) continue;
      others.push({ name, mtime: lstatSync(join(dir, name)).mtimeMs });
    }
    others.sort((a, b) => b.mtime - a.mtime);
    for (const { name } of others.slice(OTHER_BUILDS)) unlinkSync(join(dir, name));
  } catch {
    // a full or read-only runtime directory: the next run compiles again, nothing worse
  }
}

interface Bundle {
  main(argv: readonly string[]): Promise<number>;
}

/** Compile and run the bundle with the cache of this command where there is one; run the command. */
export async function boot(argv: readonly string[]): Promise<number> {
  const key = cacheKey(argv);
  const path = key === undefined ? undefined : cachePath(key);
  const cachedData = path === undefined ? undefined : readPrivateFile(path, MAX_CACHE);
  const source = readFileSync(BUNDLE, "utf8");
  // The CommonJS wrapper, as Node's own loader makes it; strict, as the ES modules it was bundled from were.
  const script = new Script(`(function (exports, require, module, __filename, __dirname) {"use strict";${source}\n})`, {
    filename: BUNDLE,
    cachedData,
  });
  if (path !== undefined && key !== undefined && (cachedData === undefined || script.cachedDataRejected)) {
    // After the command, so that the cache holds every function it compiled; only after a run that succeeded.
    process.once("exit", (code) => {
      if (code === 0) writeCache(path, key, script.createCachedData());
    });
  }
  const module = { exports: {} as Bundle };
  script.runInThisContext()(module.exports, createRequire(BUNDLE), module, BUNDLE, dirname(BUNDLE));
  return module.exports.main(argv);
}
