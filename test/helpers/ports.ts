/** Ports for servers the tests and benchmarks start on loopback. */
import { createServer } from "node:net";

/** A port free on 127.0.0.1 now (bound and closed again: the kernel does not hand it out again at once). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => resolve(typeof a === "object" && a ? a.port : 0));
    });
  });
}
