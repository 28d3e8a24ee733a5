/**
 * Settings for a known path instead of in seconds (`--for azure-lb`): the idle timeouts that drop connections in
 * the places where people meet them, each with the source of its value. Each resolves with the same margin:
 *
 *   idle     = half the timeout (down to a multiple of 5 s): the first probe comes when the path has forgotten
 *              nothing yet, and a timeout shorter than documented by up to half is still covered;
 *   interval = a fifth of what is left, count 5: four probes in a row may be lost and the fifth still refreshes
 *              the entry before it expires (idle + 4 × interval < timeout), and a dead peer is noticed after
 *              idle + 5 × interval ≤ the timeout: about when the path itself would have dropped the connection.
 *
 * A value given beside --for (--idle, --interval, --count) replaces the preset's.
 */
import type { KeepAliveSettings } from "./settings.js";

export interface Preset {
  /** the name for --for and the policy's keepalive.for */
  name: string;
  /** what drops idle connections there */
  what: string;
  /** its idle timeout for established TCP connections, in seconds (the default where it can be changed) */
  timeoutS: number;
  /** where the value is documented */
  source: string;
}

export const PRESETS: readonly Preset[] = [
  {
    name: "aws-nat",
    what: "AWS NAT gateway",
    timeoutS: 350,
    source: "https://docs.aws.amazon.com/vpc/latest/userguide/nat-gateway-troubleshooting.html",
  },
  {
    name: "aws-nlb",
    what: "AWS Network Load Balancer (TCP listeners, default idle timeout)",
    timeoutS: 350,
    source:
      "https://docs.aws.amazon.com/elasticloadbalancing/latest/network/network-load-balancers.html#connection-idle-timeout",
  },
  {
    name: "azure-lb",
    what: "Azure Load Balancer (default idle timeout, configurable from 4 minutes)",
    timeoutS: 240,
    source: "https://learn.microsoft.com/azure/load-balancer/load-balancer-tcp-idle-timeout",
  },
  {
    name: "gcp-nat",
    what: "Google Cloud NAT (TCP established connection idle timeout, default)",
    timeoutS: 1200,
    source: "https://cloud.google.com/nat/docs/overview#specs-timeouts",
  },
  {
    name: "gcp-firewall",
    what: "Google Cloud VPC firewall connection tracking",
    timeoutS: 600,
    source: "https://cloud.google.com/firewall/docs/firewalls#specifications",
  },
  {
    name: "kube-proxy-ipvs",
    what: "kube-proxy in IPVS mode (the kernel's IPVS TCP timeout, which --ipvs-tcp-timeout 0 keeps)",
    timeoutS: 900,
    source: "https://github.com/kubernetes/kubernetes/issues/84041",
  },
  {
    name: "docker-swarm",
    what: "Docker Swarm's routing mesh (IPVS, the kernel's TCP timeout)",
    timeoutS: 900,
    source:
      "https://success.docker.com/article/ipvs-connection-timeout-issue (now gone; quoted in https://github.com/easzlab/kubeasz/pull/688)",
  },
];

export function findPreset(name: string): Preset | undefined {
  return PRESETS.find((p) => p.name === name);
}

/** The settings a preset stands for (see above). */
export function presetSettings(p: Preset): Required<Pick<KeepAliveSettings, "idle" | "interval" | "count">> {
  const idle = Math.max(1, Math.floor(p.timeoutS / 2 / 5) * 5);
  const interval = Math.max(1, Math.floor((p.timeoutS - idle) / 5));
  return { idle, interval, count: 5 };
}
