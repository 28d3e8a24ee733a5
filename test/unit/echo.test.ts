import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { EchoProtocol } from "../../src/probe/echo.js";
import { parseEndpoint } from "../../src/probe/endpoint.js";
import { throwsExit2 } from "../helpers/expect.js";

describe("parseEndpoint", () => {
  test("HOST:PORT, [IPv6]:PORT and, for listening, PORT or :PORT", () => {
    assert.deepEqual(parseEndpoint("x", "198.51.100.7:7007", false), { host: "198.51.100.7", port: 7007 });
    assert.deepEqual(parseEndpoint("x", "db.internal:5432", false), { host: "db.internal", port: 5432 });
    assert.deepEqual(parseEndpoint("x", "[2001:db8::7]:7", false), { host: "2001:db8::7", port: 7 });
    assert.deepEqual(parseEndpoint("x", "7007", true), { host: undefined, port: 7007 });
    assert.deepEqual(parseEndpoint("x", ":7007", true), { host: undefined, port: 7007 });
    assert.deepEqual(parseEndpoint("x", "[::]:65535", true), { host: "::", port: 65535 });
  });
  test("bad input is a usage error (exit 2) that names the problem", () => {
    throwsExit2(() => parseEndpoint("x", "198.51.100.7:0", false), "usage", "x: port 0 is not a usable port");
    throwsExit2(() => parseEndpoint("x", "198.51.100.7:65536", false), "usage", "x: port 65536 is out of range");
    throwsExit2(() => parseEndpoint("x", "198.51.100.7", false), "usage", "x: 198.51.100.7 has no port");
    throwsExit2(() => parseEndpoint("x", "7007", false), "usage", "x: 7007 has no port");
    throwsExit2(() => parseEndpoint("x", ":7007", false), "usage", "x: :7007 has no host");
    throwsExit2(() => parseEndpoint("x", "2001:db8::7:7", false), "usage", /put an IPv6 address in brackets/);
    throwsExit2(() => parseEndpoint("x", "[192.0.2.1]:7", false), "usage", "x: [192.0.2.1] is not an IPv6 address");
    throwsExit2(
      () => parseEndpoint("x", "300.1.2.3:7", false),
      "usage",
      /300\.1\.2\.3 is not an IP address or host name/,
    );
    throwsExit2(() => parseEndpoint("x", "a b:7", false), "usage", /a b is not an IP address/);
    throwsExit2(() => parseEndpoint("x", "host:7x", false), "usage", "x: 7x is not a port number");
  });
});

describe("EchoProtocol", () => {
  test("ping lines get pong; other lines and bytes come back unchanged and at once", () => {
    const p = new EchoProtocol();
    assert.equal(p.receive("ping 1\n"), "pong 1\n");
    assert.equal(p.receive("hello\nping 2\r\n"), "hello\npong 2\n");
    assert.equal(p.receive("no newline"), "no newline");
    assert.equal(p.receive("pi"), ""); // may become a ping line
    assert.equal(p.receive("ng 3"), "");
    assert.equal(p.receive("\n"), "pong 3\n");
    assert.equal(p.receive("ping with spaces\n"), "ping with spaces\n");
    assert.equal(p.receive("pink\n"), "pink\n");
    assert.equal(p.receive("p"), "");
    assert.equal(p.receive("x"), "px");
  });
  test("a long line that starts like a ping is not held back", () => {
    const p = new EchoProtocol();
    const long = `ping ${"x".repeat(100)}`;
    assert.equal(p.receive(long), long);
  });
});
