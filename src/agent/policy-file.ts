/**
 * Reading the policy file: at most MAX_POLICY_BYTES, a regular file, through one descriptor (a file that grows or
 * is swapped while it is read is caught, not half read).
 */
import { closeSync, fstatSync, openSync } from "node:fs";
import { TcpkaError, usage } from "../errors.js";
import { MAX_POLICY_BYTES, type Policy, parsePolicy } from "../policy.js";
import { readAtMost } from "../sys/files.js";

/** The file's text. */
export function readPolicyFile(file: string): string {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new TcpkaError("not-found", `no policy at ${file}`);
    if (code === "EACCES") throw new TcpkaError("permission", `cannot read ${file}: permission denied`);
    throw new TcpkaError("system", `cannot open ${file}: ${code ?? String(e)}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw usage(`${file} is not a regular file`);
    if (st.size > MAX_POLICY_BYTES) {
      throw new TcpkaError("invalid", `${file}: ${st.size} bytes, more than a policy's ${MAX_POLICY_BYTES}`);
    }
    // To the end, not to fstat's size: a file that grew since is caught by the check below, not cut short.
    const text = readAtMost(fd, MAX_POLICY_BYTES);
    if (text.length > MAX_POLICY_BYTES) throw new TcpkaError("invalid", `${file}: more than ${MAX_POLICY_BYTES} bytes`);
    return text.toString("utf8");
  } finally {
    closeSync(fd);
  }
}

/** Read and parse: the policy and its text, or a TcpkaError (PolicyErrors: every error with its line). */
export function loadPolicyFile(file: string): { policy: Policy; text: string } {
  const text = readPolicyFile(file);
  return { policy: parsePolicy(text, file), text };
}
