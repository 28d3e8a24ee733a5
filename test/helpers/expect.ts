/** Assertions shared by the unit tests: the usage errors of the library, and tables of inputs and outputs. */
import assert from "node:assert/strict";
import { type ErrorCode, TcpkaError } from "../../src/errors.js";

/** fn throws the TcpkaError that the CLI turns into `tcpka: <message>` and exit code 2. */
export function throwsExit2(fn: () => unknown, code: ErrorCode, message: string | RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof TcpkaError, `expected a TcpkaError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.exitCode, 2);
    if (typeof message === "string") assert.equal(e.message, message);
    else assert.match(e.message, message);
    return true;
  });
}

/** Each input, given to fn, gives the output beside it. */
export function each<I, O>(fn: (input: I) => O, cases: readonly (readonly [I, O])[]): void {
  for (const [input, want] of cases) assert.equal(fn(input), want, `input: ${String(input)}`);
}
