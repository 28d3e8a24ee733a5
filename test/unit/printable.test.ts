/**
 * printable(): what another process chose to call itself reaches the terminal escaped, and reversibly so.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { printable } from "../../src/ui/format.js";

test("printable text passes unchanged, Unicode letters included", () => {
  for (const s of ["python3", "kworker/0:1-events", "программа", "日本語", "a b(c)[d]", ""]) {
    assert.equal(printable(s), s);
  }
});

test("control characters, DEL, C1 controls and bidi overrides are escaped; no escape byte survives", () => {
  const cases: [string, string][] = [
    ["\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"],
    ["evil\x1b[2J\x1b[H", "evil\\x1b[2J\\x1b[H"],
    ["a\nb\tc\rd", "a\\x0ab\\x09c\\x0dd"],
    ["\x00\x7f\x9b", "\\x00\\x7f\\x9b"],
    ["abc\u202edcba", "abc\\u{202e}dcba"],
    ["line\u2028sep", "line\\u{2028}sep"],
  ];
  for (const [raw, shown] of cases) {
    const out = printable(raw);
    assert.equal(out, shown);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: checking that none remain
    assert.doesNotMatch(out, /[\x00-\x1f\x7f-\x9f\u202e\u2028]/);
  }
});

test("a backslash is doubled, so an escape in the output always stands for one character", () => {
  assert.equal(printable("a\\x1b"), "a\\\\x1b");
  assert.notEqual(printable("a\\x1b"), printable("a\x1b"));
});
