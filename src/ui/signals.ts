/**
 * Ctrl-C and SIGTERM as an AbortSignal: what a command that runs until it is stopped (enable --watch,
 * idle-timeout, echo) hands to its engine, which then stops cleanly and reports what it has. The handlers are
 * tcpka's only ones for these signals while they are installed; dispose() removes them.
 */
export interface StopSignal {
  signal: AbortSignal;
  dispose(): void;
}

export function stopOnSignals(signals: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM"]): StopSignal {
  const controller = new AbortController();
  const stop = (sig: NodeJS.Signals) => controller.abort(sig);
  for (const sig of signals) process.on(sig, stop);
  return {
    signal: controller.signal,
    dispose: () => {
      for (const sig of signals) process.off(sig, stop);
    },
  };
}
