/**
 * pinName(): every cgroup path has a pin directory name of its own, that bpffs takes (no "/", no dot), and that
 * gives the path back (cgroupOfPinName). Before, "/" and "/root" were both "root", so removing one removed the
 * other's enforcement.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { cgroupOfPinName, pinName } from "../../src/enforce/cgroup.js";

const TRICKY = [
  "/",
  "/root",
  "/a",
  "/a/b",
  "/a:b",
  "/a.b",
  "/a%2Eb",
  "/a%3Ab",
  "/a%",
  "/a/b:c/d",
  "/a:b/c",
  "/a/b/c",
  "/system.slice/app.service",
  "/system%2Eslice/app%2Eservice",
  "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope",
  "/evil\x1b]0;owned\x07\x1b[2J",
  "/new\nline",
  "/tab\there",
  "/del\x7f",
  "/программа/日本語",
  "/bidi\u202eevil",
  "/back\\slash",
  "/ space /",
];

test("the names the issue and the earlier scheme got wrong", () => {
  assert.equal(pinName("/"), ":");
  assert.equal(pinName("/root"), ":root");
  assert.equal(pinName("/system.slice/app.service"), ":system%2Eslice:app%2Eservice");
  assert.equal(pinName("/a:b"), ":a%3Ab");
  assert.equal(pinName("/a/b"), ":a:b");
  assert.equal(pinName("/a%2Eb"), ":a%252Eb");
  assert.equal(pinName("/evil\x1b]0;owned\x07\x1b[2J"), ":evil%1B]0;owned%07%1B[2J");
  assert.equal(pinName("/программа"), ":программа", "other characters stay as they are");
});

test("every path has a name of its own, without '/' or '.', that gives the path back", () => {
  const seen = new Map<string, string>();
  for (const path of TRICKY) {
    const name = pinName(path);
    assert.ok(!name.includes("/") && !name.includes("."), `${JSON.stringify(name)}: no '/' and no dot`);
    assert.ok(name.startsWith(":"), `${JSON.stringify(name)} starts with ':'`);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: checking that none are left
    assert.doesNotMatch(name, /[\x00-\x1f\x7f]/, "no control character in a file name");
    assert.equal(cgroupOfPinName(name), path, `${JSON.stringify(name)} decodes to ${JSON.stringify(path)}`);
    assert.equal(seen.get(name), undefined, `${JSON.stringify(path)} and ${JSON.stringify(seen.get(name))} collide`);
    seen.set(name, path);
  }
});

test("random paths over the characters that the encoding treats specially: no two share a name", () => {
  const alphabet = ["/", ".", ":", "%", "2", "E", "e", "3", "A", "a", "\x1b", "\n", "é", "root"];
  let seed = 0x7463_6b61;
  const random = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  const seen = new Map<string, string>();
  for (let i = 0; i < 20_000; i++) {
    let path = "/";
    for (let len = random(8); len > 0; len--) path += alphabet[random(alphabet.length)];
    const name = pinName(path);
    assert.equal(cgroupOfPinName(name), path);
    const other = seen.get(name);
    assert.ok(other === undefined || other === path, `${JSON.stringify(path)} and ${JSON.stringify(other)} collide`);
    seen.set(name, path);
  }
  assert.ok(seen.size > 10_000, `${seen.size} different paths tried`);
});

test("names that pinName() does not make stand for no path: those of the earlier scheme, and non-canonical ones", () => {
  for (const name of ["root", "workers", "system%2Eslice:app%2Eservice", ":a%41", ":a%2e", ":a%2", ":a%ZZ", ":a.b"]) {
    assert.equal(cgroupOfPinName(name), undefined, name);
  }
});
