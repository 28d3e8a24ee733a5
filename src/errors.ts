/**
 * The one error class of tcpka. Every expected failure is a TcpkaError: a machine-readable code, a one-line
 * message, and a hint that says what to do next. The CLI prints `tcpka: <message>` and `hint: <hint>` and exits
 * with `exitCode` (2 for bad usage or input, 1 for a failure such as a missing permission).
 */
export type ErrorCode =
  | "usage" // unknown flag, missing argument, malformed value
  | "invalid" // a value the kernel cannot represent or that is out of range
  | "not-found" // a process, file or cgroup that does not exist
  | "permission" // EPERM / EACCES
  | "unsupported" // kernel or system lacks a feature
  | "system"; // any other failed system call

export class TcpkaError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly exitCode: number;

  constructor(code: ErrorCode, message: string, options: { hint?: string; cause?: unknown; exitCode?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "TcpkaError";
    this.code = code;
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? (code === "usage" || code === "invalid" || code === "not-found" ? 2 : 1);
  }
}

/** Bad command-line input: exit code 2. */
export function usage(message: string, hint?: string): TcpkaError {
  return new TcpkaError("usage", message, hint === undefined ? {} : { hint });
}

/** A value outside what the kernel accepts: exit code 2. */
export function invalid(message: string, hint?: string): TcpkaError {
  return new TcpkaError("invalid", message, hint === undefined ? {} : { hint });
}
