/** What `tcpka enable` and `tcpka disable` print after their per-socket lines: the summary, parsed. */
import assert from "node:assert/strict";

/** The summary tcpka enable/disable prints after its per-socket lines. */
export interface Summary {
  sockets: number;
  processes: number;
  /** "changed", "already as strong", "listening", "gone", "failed", ... -> count */
  rows: Record<string, number>;
  /** the note after a row's count, e.g. "keepalive on, 7s / 3s / 4" */
  notes: Record<string, string>;
  /** "dead peers are now noticed after at most 19s (before: never)", if printed */
  deadPeers: string | null;
}

export function summary(stdout: string): Summary {
  const lines = stdout.split("\n");
  const start = lines.findIndex((l) => /^\d+ TCP sockets? in \d+ process(es)?$/.test(l));
  assert.notEqual(start, -1, `a summary in: ${stdout}`);
  const [, sockets, processes] = /^(\d+) TCP sockets? in (\d+)/.exec(lines[start]!)!;
  const out: Summary = { sockets: Number(sockets), processes: Number(processes), rows: {}, notes: {}, deadPeers: null };
  for (const line of lines.slice(start + 1)) {
    const row = /^ {2}([a-z][a-z ]*?) +(\d+)(?: {2}(.*))?$/.exec(line);
    if (row) {
      out.rows[row[1]!] = Number(row[2]);
      if (row[3]) out.notes[row[1]!] = row[3];
    } else if (line.startsWith("dead peers ")) out.deadPeers = line;
  }
  return out;
}
