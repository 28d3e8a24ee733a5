/** Where the things under test are: the checkout, the CLI, the shim, the fixtures. */
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root: this file runs as dist-test/test/helpers/paths.js. */
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const TCPKA = join(REPO, "bin", "tcpka.js");
export const SHIM = join(REPO, "native", "build", "libtcpka.so");
export const FIXTURES = join(REPO, "test", "fixtures");

/** A fixture's path: `fixture("conns.py")`, `fixture("enable/holder.py")`. */
export function fixture(name: string): string {
  return join(FIXTURES, name);
}
