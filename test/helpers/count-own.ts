/**
 * Run by test/e2e/metrics-counts.test.ts inside a network namespace of the test's (`ip netns exec`): the kernel's
 * counts of that namespace as tcpka's own (SocketCounter with the owners, where the owners' walk counts it and its
 * TCP walk is made only where that walk missed a socket). Prints one JSON line: {walkedOwn, counts}.
 */
import { SocketCounter } from "../../src/inspect/socket-counts.js";

const counter = SocketCounter.open({ owners: process.argv[2] !== "--no-owners" });
try {
  const counts = counter.count([undefined]);
  process.stdout.write(`${JSON.stringify({ walkedOwn: counter.walkedOwn, counts })}\n`);
} finally {
  counter.close();
}
