/**
 * The options of the metrics endpoint that `tcpka metrics` and `tcpka agent --metrics` share: which owner labels,
 * how many label sets, how many ports (src/metrics/snapshot.ts).
 */
import { usage } from "../errors.js";
import { OWNER_LABELS, type OwnerLabel, type SnapshotOptions } from "../metrics/snapshot.js";
import { printable } from "./format.js";

export const MAX_SERIES_DEFAULT = 500;
export const PORTS_DEFAULT = 20;

/**
 * --labels, --max-series, --ports and --events (named with `prefix` in the agent: --metrics-labels …).
 */
export function snapshotOptions(values: Record<string, unknown>, prefix = ""): SnapshotOptions & { events: boolean } {
  const labelsText = values[`${prefix}labels`] as string | undefined;
  let labels: OwnerLabel[] = [...OWNER_LABELS];
  if (labelsText !== undefined) {
    labels = [];
    if (labelsText !== "none") {
      for (const l of labelsText.split(",").map((x) => x.trim())) {
        if (!(OWNER_LABELS as readonly string[]).includes(l)) {
          throw usage(`--${prefix}labels: ${printable(l)} is not a label: one of ${OWNER_LABELS.join(", ")}, or none`);
        }
        if (!labels.includes(l as OwnerLabel)) labels.push(l as OwnerLabel);
      }
    }
  }
  const count = (name: string, dflt: number, min: number) => {
    const text = values[`${prefix}${name}`] as string | undefined;
    if (text === undefined) return dflt;
    const n = Number(text);
    if (!/^\d+$/.test(text) || n < min || n > 100_000)
      throw usage(`--${prefix}${name} ${printable(text)}: a whole number from ${min} to 100000`);
    return n;
  };
  return {
    labels,
    maxSeries: count("max-series", MAX_SERIES_DEFAULT, 1),
    ports: count("ports", PORTS_DEFAULT, 0),
    events: values[`${prefix}events`] === true,
  };
}
