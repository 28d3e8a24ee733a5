import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, type TestContext, test } from "node:test";
import { fileURLToPath } from "node:url";
import { hostPort, Out, ownerText, paint, plural, processText, Table, table } from "../../src/ui/format.js";
import { needs } from "../helpers/env.js";

const dir = mkdtempSync(join(tmpdir(), "tcpka-format-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;

/** A real Out (colour or not) writing to a file of its own; text() is what it wrote. */
function capture(color: boolean): { out: Out; text: () => string } {
  const path = join(dir, `out${files++}`);
  const fd = openSync(path, "w");
  const out = new Out(fd, color);
  let written: string | undefined;
  return {
    out,
    text: () => {
      if (written === undefined) {
        out.end();
        closeSync(fd);
        written = readFileSync(path, "utf8");
      }
      return written;
    },
  };
}

describe("hostPort", () => {
  test("IPv4 as address:port", () => assert.equal(hostPort("192.0.2.7", 443), "192.0.2.7:443"));
  test("IPv6, IPv4-mapped included, in brackets", () => {
    assert.equal(hostPort("2001:db8::1", 443), "[2001:db8::1]:443");
    assert.equal(hostPort("::", 0), "[::]:*");
    assert.equal(hostPort("::ffff:127.0.0.1", 22), "[::ffff:127.0.0.1]:22");
  });
});

describe("ownerText", () => {
  const java = { pid: 2203, fd: 87, comm: "java" };
  test("no owner", () => assert.equal(ownerText([]), "-"));
  test("one owner", () => assert.equal(ownerText([java]), "java[2203] fd 87"));
  test("a name that the process chose is escaped", () => {
    assert.equal(ownerText([{ pid: 7, fd: 3, comm: "\x1b]0;x\x07\n" }]), "\\x1b]0;x\\x07\\x0a[7] fd 3");
    assert.equal(processText("a\\b\r", 7), "a\\\\b\\x0d[7]");
  });
  test("shared by several processes", () => {
    assert.equal(
      ownerText([java, { pid: 2204, fd: 3, comm: "sh" }, { pid: 9, fd: 4, comm: "x" }]),
      "java[2203] fd 87 +2",
    );
  });
});

describe("plural", () => {
  test("one, many, and an irregular plural", () => {
    assert.deepEqual(
      [plural(1, "socket"), plural(0, "socket"), plural(2, "process", "processes")],
      ["1 socket", "0 sockets", "2 processes"],
    );
  });
});

describe("paint", () => {
  test("plain text without colour, SGR escapes with it", () => {
    assert.equal(paint(capture(false).out, "red", "off"), "off");
    assert.equal(paint(capture(true).out, "red", "off"), "\x1b[31moff\x1b[0m");
    assert.equal(paint(capture(true).out, "dim", "-"), "\x1b[2m-\x1b[0m");
  });
});

describe("table", () => {
  const header = ["State", "Local", "Peer"];
  const rows = [
    ["ESTAB", "127.0.0.1:22", "10.0.0.1:5555"],
    ["LISTEN", "0.0.0.0:22", "*"],
  ];

  test("columns padded to the widest cell plus two spaces; the last column not padded", () => {
    const { out, text } = capture(false);
    table(header, rows, out);
    assert.equal(
      text(),
      ["State   Local         Peer", "ESTAB   127.0.0.1:22  10.0.0.1:5555", "LISTEN  0.0.0.0:22    *", ""].join("\n"),
    );
  });

  test("an indent before every line, and no trailing spaces", () => {
    const { out, text } = capture(false);
    table(["A", "B"], [["x", ""]], out, "  ");
    assert.equal(text(), "  A  B\n  x\n");
  });

  test("colour escapes do not count towards the width", () => {
    const plain = capture(false);
    const colored = capture(true);
    table(header, rows, plain.out);
    table(
      header,
      rows.map(([state, ...rest]) => [paint(colored.out, "green", state as string), ...rest]),
      colored.out,
    );
    // biome-ignore lint/suspicious/noControlCharactersInRegex: removing the colour escapes
    assert.equal(colored.text().replace(/\x1b\[\d+m/g, ""), plain.text());
    assert.notEqual(colored.text(), plain.text());
  });

  test("cells beyond ASCII are padded by their characters, not their bytes", () => {
    const { out, text } = capture(false);
    table(
      ["NAME", "PID"],
      [
        ["café", "1"],
        ["x", "22"],
      ],
      out,
    );
    assert.equal(text(), "NAME  PID\ncafé  1\nx     22\n");
  });

  test("a row built from bytes, numbers and texts reads as the same row given as strings", () => {
    const strings = capture(false);
    const pieces = capture(false);
    table(
      ["STATE", "LOCAL", "PROCESS"],
      [
        ["ESTAB", "10.0.0.1:5432", "café[12] fd 7 +1"],
        ["LISTEN", "[::1]:*", "-"],
      ],
      strings.out,
    );
    const t = new Table(["STATE", "LOCAL", "PROCESS"], false);
    t.put(Buffer.from("ESTAB"));
    t.endCell();
    t.put(Buffer.from("10.0.0.1:"));
    t.putNumber(5432);
    t.endCell();
    const owner = Buffer.from("café[12] fd ");
    t.put(owner, "café[12] fd ".length); // five bytes for four characters: the width is given
    t.putNumber(7);
    t.putText(" +1");
    t.endCell();
    t.endRow();
    t.putText("LISTEN");
    t.endCell();
    t.put(Buffer.from("[::1]:*"));
    t.endCell();
    t.put(Buffer.from("-"));
    t.endCell();
    t.endRow();
    t.write(pieces.out);
    assert.equal(pieces.text(), strings.text());
    assert.equal(
      pieces.text(),
      "STATE   LOCAL          PROCESS\nESTAB   10.0.0.1:5432  café[12] fd 7 +1\nLISTEN  [::1]:*        -\n",
    );
  });

  test("a row with too few or too many cells is a bug, said at once", () => {
    const t = new Table(["A", "B"], false);
    t.putText("x");
    t.endCell();
    assert.throws(() => t.endRow(), /fewer cells/);
    t.endCell();
    assert.throws(() => t.endCell(), /more cells/);
  });

  test("rows laid out before a column grew are padded again: any order of widths reads as a plain layout", () => {
    // The reference: every cell but the last padded to its column's widest plus two, then no trailing spaces.
    // biome-ignore lint/suspicious/noControlCharactersInRegex: colour escapes take no columns
    const visible = (s: string) => s.replace(/\x1b\[\d+m/g, "");
    const reference = (head: readonly string[], body: readonly (readonly string[])[]) => {
      const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => visible(r[i] as string).length)));
      const line = (r: readonly string[]) =>
        r
          .map((c, i) => (i === r.length - 1 ? c : c + " ".repeat((widths[i] as number) - visible(c).length + 2)))
          .join("")
          .trimEnd();
      return `${[head, ...body].map(line).join("\n")}\n`;
    };
    let seed = 7;
    const random = (k: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % k;
    };
    const word = (last: boolean) => {
      // Mostly short; now and then, anywhere in the table, a wider one (a column grows late or early).
      const n = random(20) === 0 ? 8 + random(30) : random(6);
      let w = "";
      for (let k = 0; k < n; k++) w += "ab é-:"[random(6)];
      w = w.trim();
      if (last && random(4) === 0) w += "  "; // the last column's trailing spaces, even a cell of nothing else
      return w;
    };
    const head = ["STATE", "LOCAL", "X", "PROCESS"];
    for (let run = 0; run < 40; run++) {
      const color = run % 2 === 1;
      const body = Array.from({ length: 1 + random(200) }, () =>
        head.map((_, i) => {
          const w = word(i === head.length - 1);
          return color && w && random(3) === 0 ? `\x1b[31m${w}\x1b[0m` : w;
        }),
      );
      const { out, text } = capture(color);
      table(head, body, out);
      assert.equal(text(), reference(head, body), `run ${run}`);
    }
  });

  test("a table sized for its rows ahead reads as one that grew, with fewer rows or more than it was sized for", () => {
    const head = ["A", "B", "C"];
    const body = Array.from({ length: 3000 }, (_, i) => [`r${i}`, i % 7 === 0 ? "" : "x".repeat(i % 13), `${i * 7}`]);
    const grown = capture(false);
    table(head, body, grown.out);
    for (const expected of [300, 3000, 400000]) {
      const sized = capture(false);
      const t = new Table(head, false, expected);
      for (const r of body) t.add(r);
      t.write(sized.out);
      assert.equal(sized.text(), grown.text(), `sized for ${expected}`);
    }
  });

  test("more columns than the buffers start with room for", () => {
    const { out, text } = capture(false);
    const head = Array.from({ length: 300 }, () => "h");
    table(head, [head.map(() => "x"), head.map(() => "yy")], out);
    const line = (c: string) => Array.from({ length: 300 }, () => c).join("   ");
    assert.equal(text(), `${line("h")}\n${line("x")}\n${Array.from({ length: 300 }, () => "yy").join("  ")}\n`);
  });

  test("a header alone", () => {
    const { out, text } = capture(false);
    table(header, [], out);
    assert.equal(text(), "State  Local  Peer\n");
  });
});

/** isTerminal(1) and isTerminal(2) in a child whose stdout is `stdout` (python3 gives it a pty where asked). */
function terminalIn(t: TestContext, how: "pty" | "pipe" | "devnull" | "file"): string {
  const mod = fileURLToPath(new URL("../../src/ui/format.js", import.meta.url));
  const js = `import(${JSON.stringify(mod)}).then((m) => process.stderr.write(m.isTerminal(1) + "," + m.isTerminal(9)))`;
  const child = `import os, pty, subprocess, sys
how = sys.argv[1]
if how == "pty":
    out = pty.openpty()[1]
elif how == "devnull":
    out = os.open("/dev/null", os.O_WRONLY)
elif how == "file":
    out = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT, 0o600)
else:
    out = subprocess.PIPE
r = subprocess.run(["node", "-e", sys.argv[2]], stdout=out, stderr=subprocess.PIPE)
sys.stdout.write(r.stderr.decode())`;
  const r = spawnSync("python3", ["-c", child, how, js, join(dir, `tty${files++}`)], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  t.diagnostic(`${how}: ${r.stdout}`);
  return r.stdout;
}

test("isTerminal: true on a pty, false on a pipe, /dev/null, a file and a closed fd", (t) => {
  if (!needs(t, { tools: ["python3"] })) return;
  assert.equal(terminalIn(t, "pty"), "true,false");
  assert.equal(terminalIn(t, "pipe"), "false,false");
  assert.equal(terminalIn(t, "devnull"), "false,false");
  assert.equal(terminalIn(t, "file"), "false,false");
});
