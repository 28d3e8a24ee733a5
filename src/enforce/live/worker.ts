/**
 * The helper thread of `tcpka enable` (see batch.ts): it takes its share of each phase that the main thread
 * posts, and answers with the phase's id once it has no chunk left, or with the error that stopped it. It says
 * "ready" once loaded.
 */
import { parentPort } from "node:worker_threads";
import { asHelper, type Phase, work } from "./batch.js";

asHelper();
parentPort?.postMessage({ ready: true });
parentPort?.on("message", (p: Phase) => {
  try {
    work(p);
    parentPort?.postMessage({ id: p.id });
  } catch (e) {
    parentPort?.postMessage({ id: p.id, error: String((e as Error).stack ?? e) });
  }
});
