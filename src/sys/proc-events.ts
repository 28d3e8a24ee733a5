/**
 * The kernel's process events (the proc connector, drivers/connector/cn_proc.c): which processes exec'd a new
 * program, changed their uid or their name, as it happens. A thread of its own reads them
 * (proc-events-worker.ts) and hands them over in batches, at most one every 150 ms.
 *
 * Who may: root with CAP_NET_ADMIN in the initial user and pid namespaces (cn_proc_mcast_ctl), on the host's
 * network namespace (the connector's netlink socket exists only there, cn_init). Its cost: on Linux 6.6 and later
 * the kernel filters the events for us, so forks and exits (most of them) never reach this process; an older
 * kernel sends every event, dropped here by type.
 */
import { Worker } from "node:worker_threads";

/** What the reader thread posts. */
export type FromReader = { ready: true } | { failed: string } | { processes: [number, string][]; lost: boolean };

export class ProcEvents {
  private constructor(
    private readonly worker: Worker,
    private readonly stopFlag: Int32Array,
  ) {}

  /**
   * Subscribe; resolves once the kernel said yes, rejects with why not (one line). `onEvents` gets a batch's
   * processes (pid, cgroup v2 path; those gone or in no cgroup v2 left out), and `lost` when the kernel dropped
   * events (the socket's queue overflowed: the caller should look at everything again); `onStopped` is called if
   * reading fails later.
   */
  static start(
    onEvents: (processes: [number, string][], lost: boolean) => void,
    onStopped: (why: string) => void,
  ): Promise<ProcEvents> {
    const stopFlag = new Int32Array(new SharedArrayBuffer(4));
    return new Promise((resolve, reject) => {
      let worker: Worker;
      try {
        // A small heap: it makes no objects to speak of, and the isolate's default reservation shows in RSS.
        worker = new Worker(new URL("./proc-events-worker.js", import.meta.url), {
          workerData: { stop: stopFlag },
          // Its stdio not piped into this process's: that would open process.stdout, which makes a piped fd 1
          // non-blocking (see Out in ui/format.ts). It writes nothing.
          stdout: true,
          stderr: true,
          resourceLimits: { maxOldGenerationSizeMb: 8, maxYoungGenerationSizeMb: 1 },
        });
      } catch (e) {
        reject(new Error(`no thread for process events: ${(e as Error).message}`));
        return;
      }
      worker.unref();
      let started = false;
      worker.on("message", (m: FromReader) => {
        if ("ready" in m) {
          started = true;
          resolve(new ProcEvents(worker, stopFlag));
        } else if ("failed" in m) {
          if (!started) reject(new Error(m.failed));
          else onStopped(m.failed);
        } else onEvents(m.processes, m.lost);
      });
      worker.on("error", (e) => {
        if (!started) reject(e);
      });
      worker.on("exit", () => {
        if (!started) reject(new Error("the process events thread stopped"));
      });
    });
  }

  /** Stop reading; the thread ends within a second (its longest read). */
  stop(): void {
    Atomics.store(this.stopFlag, 0, 1);
    Atomics.notify(this.stopFlag, 0); // out of its wait for a batch at once
    this.worker.removeAllListeners("message");
  }
}
