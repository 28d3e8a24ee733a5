/**
 * The main thread's side of the helper thread (batch.ts, worker.ts). It is started only for work big
 * enough to be worth its start-up (about 50 ms of a core), lives as long as an enable run, and never keeps the
 * process alive. If it cannot start, dies or fails, the main thread does its share: the result is the same.
 */
import { createRequire } from "node:module";
import type { Worker } from "node:worker_threads";
import { allDone, chunks, type Phase, work } from "./batch.js";

/** How long close() waits for a starting helper to finish loading; it takes about 0.1 s. */
const LOAD_PATIENCE_MS = 5000;

export class HelperThread {
  private worker: Worker | undefined;
  private broken = false;
  private readonly waiting = new Map<number, () => void>();
  private readonly readiness: Promise<boolean>;
  private setReady: (ready: boolean) => void = () => {};

  /** `script`: the worker's module; tests give one that fails. */
  constructor(private readonly script = new URL("./worker.js", import.meta.url)) {
    this.readiness = new Promise((resolve) => {
      this.setReady = resolve;
    });
  }

  /** Whether the helper is running and loaded (false once it failed); for tests. */
  ready(): Promise<boolean> {
    return this.readiness;
  }

  /** Start the thread now, so that its start-up overlaps what the main thread does next. */
  start(): void {
    if (this.worker || this.broken) return;
    try {
      // Required here, not imported: an ES import of node:worker_threads loads node:stream (read-ahead.ts).
      const { Worker } = createRequire(import.meta.url)("node:worker_threads") as typeof import("node:worker_threads");
      const w = new Worker(this.script, { stdout: true, stderr: true }); // not piped: see read-ahead.ts
      w.unref();
      w.on("message", (m: { id?: number; ready?: boolean; error?: string }) => {
        if (m.ready) this.setReady(true);
        if (m.id === undefined) return;
        if (m.error) this.fail();
        this.waiting.get(m.id)?.();
        this.waiting.delete(m.id);
      });
      w.on("error", () => this.fail());
      w.on("exit", () => this.fail());
      this.worker = w;
    } catch {
      this.broken = true;
      this.setReady(false);
    }
  }

  private fail(): void {
    this.broken = true;
    this.setReady(false);
    for (const done of this.waiting.values()) done();
    this.waiting.clear();
  }

  /**
   * Do a phase with the helper's help when it is running. `meanwhile` runs on this thread after the helper got
   * the phase and before this thread joins in. Returns when every chunk is done.
   */
  async run(p: Phase, meanwhile?: () => void): Promise<void> {
    let helped: Promise<void> | undefined;
    if (this.worker && !this.broken) {
      helped = new Promise((resolve) => this.waiting.set(p.id, resolve));
      this.worker.postMessage(p);
    }
    meanwhile?.();
    work(p);
    // Chunks the helper claimed may still be in progress; a helper still starting up has claimed none.
    if (allDone(p)) return;
    await helped;
    if (allDone(p)) return;
    // The helper failed part-way: do what it left undone.
    const left: number[] = [];
    for (let c = 0; c < chunks(p); c++) if (Atomics.load(p.done, c) === 0) left.push(c);
    work(p, left);
  }

  /**
   * Stop the thread. One that is still starting is first let finish loading: terminating it while koffi sets
   * itself up (its module runs a script then) aborts the whole process with "FATAL ERROR:
   * Error::ThrowAsJavaScriptException napi_throw". Node ends a live worker the same way when the process exits,
   * so this must be awaited before the process ends.
   */
  async close(): Promise<void> {
    const w = this.worker;
    this.broken = true;
    this.worker = undefined;
    if (!w) return;
    let timer: NodeJS.Timeout | undefined;
    const patience = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, LOAD_PATIENCE_MS);
    });
    await Promise.race([this.readiness, patience]);
    clearTimeout(timer);
    await w.terminate();
  }
}
