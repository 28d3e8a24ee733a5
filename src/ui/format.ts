/**
 * Output helpers: aligned tables, colour (only on a TTY and never with NO_COLOR), address and process text.
 */
import { fstatSync, writeSync } from "node:fs";
import { createRequire } from "node:module";
import { TcpkaError } from "../errors.js";
import type { SocketOwner } from "../inspect/owners.js";

const require = createRequire(import.meta.url);

/**
 * isatty(3), asking node:tty only about a character device that may be a terminal: node:tty loads node:net and
 * the whole of node:stream (~9 ms of a start-up), which a pipe, a file or /dev/null never needs. Major 1 is the
 * memory devices (/dev/null, /dev/zero; Documentation/admin-guide/devices.txt), never a terminal.
 */
export function isTerminal(fd: number): boolean {
  let rdev: number;
  try {
    const st = fstatSync(fd);
    if (!st.isCharacterDevice()) return false;
    rdev = st.rdev;
  } catch {
    return false; // not open
  }
  if (((rdev >>> 8) & 0xfff) === 1) return false; // the major of new_encode_dev's low 32 bits
  return (require("node:tty") as typeof import("node:tty")).isatty(fd);
}

/**
 * Buffered output to fd 1 or 2 (any other fd: only collects colour-free text); call end() once done. Text is
 * encoded straight into one reused 256 KiB buffer, so a table of 100,000 rows costs no string joins.
 */
export class Out {
  readonly color: boolean;
  private readonly buf = Buffer.allocUnsafe(1 << 18);
  private used = 0;

  /** `color`: whether to paint, by default only on a terminal (stdout or stderr) without NO_COLOR. */
  constructor(
    private readonly fd = 1,
    color?: boolean,
  ) {
    // isatty(3), not process.stdout.isTTY: touching process.stdout makes a piped fd 1 non-blocking (libuv's
    // uv_pipe_open), for tcpka and for every other writer of that pipe after it (`(tcpka ls; cat f) | less`),
    // and then each write into a full pipe fails with EAGAIN instead of waiting for the reader.
    const tty = (fd === 1 || fd === 2) && isTerminal(fd);
    this.color = color ?? (tty && !process.env.NO_COLOR && process.env.TERM !== "dumb");
  }

  write(text: string): void {
    // Worst case 3 bytes per UTF-16 unit; a longer text than the buffer goes out on its own.
    if (this.used + text.length * 3 > this.buf.length) {
      this.end();
      if (text.length * 3 > this.buf.length) {
        writeAll(this.fd, Buffer.from(text));
        return;
      }
    }
    this.used += this.buf.write(text, this.used);
  }

  /**
   * Bytes as they are (pieces of ASCII encoded once, see asciiBytes): for the many short pieces of a JSON row
   * (writeConnectionJson). At 100,000 rows, making each row a string first cost more than everything else
   * tcpka does with it: the string is built, flattened and encoded again for every row.
   */
  bytes(piece: Uint8Array): void {
    if (this.used + piece.length > this.buf.length) {
      this.end();
      if (piece.length > this.buf.length) {
        writeAll(this.fd, piece);
        return;
      }
    }
    const n = piece.length;
    if (n > 32) {
      this.buf.set(piece, this.used);
      this.used += n;
      return;
    }
    // A short piece byte by byte: cheaper than a call into TypedArray.prototype.set, 25 times a row.
    const b = this.buf;
    let at = this.used;
    for (let i = 0; i < n; i++) b[at++] = piece[i] as number;
    this.used = at;
  }

  /** bytes[from, to) of a buffer, without a view of them made. */
  copy(src: Uint8Array, from: number, to: number): void {
    const n = to - from;
    if (this.used + n > this.buf.length) {
      this.end();
      if (n > this.buf.length) {
        writeAll(this.fd, src.subarray(from, to));
        return;
      }
    }
    if (n > 32) this.buf.set(src.subarray(from, to), this.used);
    else for (let i = 0; i < n; i++) this.buf[this.used + i] = src[from + i] as number;
    this.used += n;
  }

  /** n spaces. */
  spaces(n: number): void {
    if (n <= 16 && this.used + n <= this.buf.length) {
      for (let i = 0; i < n; i++) this.buf[this.used++] = 0x20;
      return;
    }
    for (let left = n; left > 0; ) {
      if (this.used === this.buf.length) this.end();
      const k = Math.min(left, this.buf.length - this.used);
      this.buf.fill(0x20, this.used, this.used + k);
      this.used += k;
      left -= k;
    }
  }

  /** A number as JSON writes it: an integer's digits straight into the buffer, anything else through String(). */
  number(v: number): void {
    if (!Number.isSafeInteger(v)) {
      this.bytes(Buffer.from(String(v), "latin1"));
      return;
    }
    if (this.used + 17 > this.buf.length) this.end();
    const b = this.buf;
    if (v < 0) {
      b[this.used++] = 0x2d; // "-"
      v = -v;
    }
    let digits = 1;
    for (let p = 10; p <= v; p *= 10) digits++;
    let at = this.used + digits;
    this.used = at;
    if (v <= 0x7fffffff) {
      do {
        const q = (v / 10) | 0;
        b[--at] = 48 + v - q * 10;
        v = q;
      } while (v > 0);
      return;
    }
    do {
      const q = Math.floor(v / 10);
      b[--at] = 48 + v - q * 10;
      v = q;
    } while (v > 0);
  }

  end(): void {
    if (this.used) writeAll(this.fd, this.buf.subarray(0, this.used));
    this.used = 0;
  }
}

const asciiCache = new Map<string, Uint8Array>();

/**
 * The bytes of an ASCII text, made once per text: for the pieces that repeat from row to row (addresses,
 * states, names). Bounded, so that a huge table of distinct texts cannot grow it without limit.
 */
export function asciiBytes(text: string): Uint8Array {
  let b = asciiCache.get(text);
  if (b === undefined) {
    if (asciiCache.size >= 1 << 16) asciiCache.clear();
    b = Buffer.from(text, "latin1");
    asciiCache.set(text, b);
  }
  return b;
}

/** Where writeAll() waits for a full non-blocking pipe to drain. */
const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * Synchronous write that survives EAGAIN on a non-blocking pipe and stops quietly on EPIPE. tcpka leaves its
 * fds blocking (see Out), so EAGAIN comes only from a pipe that was non-blocking already: wait a millisecond
 * for the reader rather than spin, each failed try costing an exception.
 */
function writeAll(fd: number, data: Uint8Array): void {
  let buf = data;
  while (buf.length) {
    try {
      buf = buf.subarray(writeSync(fd, buf));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EAGAIN") {
        Atomics.wait(pause, 0, 0, 1);
        continue;
      }
      if (code === "EPIPE") process.exit(0);
      throw e;
    }
  }
}

const CODES = { red: 31, green: 32, yellow: 33, dim: 2, bold: 1 } as const;
export type Style = keyof typeof CODES;

export function paint(out: Out, style: Style, text: string): string {
  return out.color ? `\x1b[${CODES[style]}m${text}\x1b[0m` : text;
}

/** Visible width, ignoring colour escapes. */
export function visibleWidth(s: string): number {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: colour escapes are what is being removed
  return s.replace(/\x1b\[[0-9;]*m/g, "").length;
}

const SPACE = 0x20;

/**
 * The rows of a table, added one by one and written once every width is known. Each row is laid out as it
 * comes, padded to the widths seen so far, in one growing buffer of bytes, with each cell's start, end and
 * visible width beside it. Widths stop growing after the first rows (a host's addresses, ports and names are
 * alike), so at write() every row laid out since the last column grew is final and goes out as it is, in one
 * block; only the rows before it are padded again from their cells. At 100,000 rows, 100,000 kept strings cost
 * more in the young generation's copying than making them, and a second pass that copied every cell to pad it
 * cost a tenth of `tcpka ls`. Columns are separated by two spaces; the last column is not padded, and a line
 * has no trailing spaces.
 */
export class Table {
  private bytes = Buffer.allocUnsafe(1 << 16);
  private used = 0;
  private rowEnds = new Uint32Array(256);
  /** each cell's bytes [start, end) in `bytes` (padding before it excluded), and its visible width */
  private cellStarts = new Uint32Array(256);
  private cellEnds = new Uint32Array(256);
  private cellWidths = new Uint32Array(256);
  private rows = 0;
  /** The row being built with put()/endCell(): its next cell, that cell's width so far, whether it has bytes. */
  private cell = 0;
  private cellWidth = 0;
  private opened = false;
  /** spaces owed before the next cell that has something to show (none after a line's last) */
  private pending = 0;
  /** the first row laid out with the widths as they are now: the rows before it were padded narrower */
  private laidOut = 0;
  private readonly widths: number[];
  /** A cell's visible width: its length, unless colour escapes may be in it (paint() adds them only then). */
  private readonly width: (s: string) => number;

  /**
   * `expectedRows`: how many rows are coming, if known (`tcpka ls`: the namespace's sockstat count), so that the
   * buffers are made once instead of doubled and copied on the way. Room asked for and never written costs no
   * memory: the kernel gives a page to a large allocation only when it is first touched.
   */
  constructor(
    private readonly header: readonly string[],
    color: boolean,
    expectedRows = 0,
  ) {
    this.widths = header.map((h) => h.length);
    this.width = color ? visibleWidth : (s) => s.length;
    const rows = Math.min(Math.max(0, Math.floor(expectedRows)), 1 << 22) + 1;
    if (rows > 256) {
      this.bytes = Buffer.allocUnsafe(rows * 128);
      this.rowEnds = new Uint32Array(rows);
      this.cellStarts = new Uint32Array(rows * header.length);
      this.cellEnds = new Uint32Array(rows * header.length);
      this.cellWidths = new Uint32Array(rows * header.length);
    } else if (header.length > 256) this.growRows(); // the first row's cells
  }

  get size(): number {
    return this.rows;
  }

  add(cells: readonly string[]): void {
    for (let i = 0; i < this.header.length; i++) {
      this.putText((cells[i] ?? "") as string);
      this.endCell();
    }
    this.endRow();
  }

  /** A cell's first bytes: the padding owed before it goes in first. `n` more bytes will follow. */
  private open(n: number): void {
    const pad = this.pending;
    this.ensure(pad + n + 1);
    const b = this.bytes;
    let at = this.used;
    for (let i = 0; i < pad; i++) b[at++] = SPACE;
    this.used = at;
    this.pending = 0;
    this.cellStarts[this.rows * this.header.length + this.cell] = at;
    this.opened = true;
  }

  /**
   * A row built cell by cell from bytes, for the table of `tcpka ls` (100,000 rows): the pieces that repeat (a
   * state, an address, a settings cell, a process) are encoded once by the caller, and numbers go in as digits,
   * so a row costs no string. put/putNumber/putText add to the current cell, endCell() closes it, endRow() the
   * row. `width` is what the bytes show (their length for ASCII; colour escapes and UTF-8 take no columns).
   */
  put(bytes: Uint8Array, width = bytes.length): void {
    const n = bytes.length;
    if (n === 0) return;
    if (this.opened) this.ensure(n + 1);
    else this.open(n);
    const b = this.bytes;
    let at = this.used;
    if (n > 32) {
      b.set(bytes, at);
      at += n;
    } else for (let i = 0; i < n; i++) b[at++] = bytes[i] as number;
    this.used = at;
    this.cellWidth += width;
  }

  /** A non-negative integer's digits. */
  putNumber(v: number): void {
    if (this.opened) this.ensure(17);
    else this.open(17);
    let digits = 1;
    for (let p = 10; p <= v; p *= 10) digits++;
    const b = this.bytes;
    let at = this.used + digits;
    this.used = at;
    do {
      const q = Math.floor(v / 10);
      b[--at] = 48 + v - q * 10;
      v = q;
    } while (v > 0);
    this.cellWidth += digits;
  }

  /** A text: made printable by the caller (printable()), encoded as UTF-8. */
  putText(text: string): void {
    if (text.length === 0) return;
    if (this.opened) this.ensure(text.length * 3 + 1);
    else this.open(text.length * 3);
    this.used += this.bytes.write(text, this.used);
    this.cellWidth += this.width(text);
  }

  endCell(): void {
    const n = this.header.length;
    if (this.cell >= n) throw new Error("Table: more cells than columns");
    const w = this.cellWidth;
    const at = this.rows * n + this.cell;
    if (!this.opened) this.cellStarts[at] = this.used;
    this.cellEnds[at] = this.used;
    this.cellWidths[at] = w;
    let column = this.widths[this.cell] as number;
    if (w > column) {
      // The rows before this one were padded narrower; this one's cells before this are as wide as ever.
      this.widths[this.cell] = column = w;
      this.laidOut = this.rows;
    }
    this.pending += column - w + 2;
    this.cellWidth = 0;
    this.opened = false;
    this.cell++;
  }

  private growRows(): void {
    const n = this.header.length;
    this.cellStarts = grow(this.cellStarts, (this.rows + 1) * n);
    this.cellEnds = grow(this.cellEnds, (this.rows + 1) * n);
    this.cellWidths = grow(this.cellWidths, (this.rows + 1) * n);
    this.rowEnds = grow(this.rowEnds, this.rows + 1);
  }

  endRow(): void {
    const n = this.header.length;
    if (this.cell !== n) throw new Error("Table: a row with fewer cells than columns");
    // No trailing spaces: the last cell's own go, and where nothing is left of it, the padding before it.
    const last = this.rows * n + n - 1;
    const start = this.cellStarts[last] as number;
    const b = this.bytes;
    let end = this.used;
    while (end > start && b[end - 1] === SPACE) end--;
    if (end === start) {
      end = n > 1 ? (this.cellEnds[last - 1] as number) : this.rows ? (this.rowEnds[this.rows - 1] as number) : 0;
      this.cellStarts[last] = end;
    }
    this.cellEnds[last] = end;
    this.ensure(1);
    this.bytes[end] = 0x0a;
    this.used = end + 1;
    this.rowEnds[this.rows++] = this.used;
    this.cell = 0;
    this.pending = 0;
    // Room for the next row's cells, so that none of its calls needs to ask.
    if ((this.rows + 1) * n > this.cellWidths.length) this.growRows();
  }

  private ensure(n: number): void {
    if (this.used + n <= this.bytes.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.bytes.length * 2, this.used + n));
    this.bytes.copy(bigger, 0, 0, this.used);
    this.bytes = bigger;
  }

  write(out: Out, indent = ""): void {
    let pending = 0;
    out.write(indent);
    for (const [i, h] of this.header.entries()) {
      out.spaces(pending);
      out.write(h);
      pending = (this.widths[i] as number) - h.length + 2;
    }
    out.bytes(NEWLINE_BYTES);
    // With an indent (the short tables of other commands) every row is laid out again.
    const fresh = indent ? this.rows : this.laidOut;
    this.writeRows(out, indent, fresh);
    if (fresh < this.rows) out.copy(this.bytes, fresh ? (this.rowEnds[fresh - 1] as number) : 0, this.used);
  }

  /**
   * Rows [0, count) padded again, into a chunk of their own that goes to `out` whole. A row was laid out with
   * the widths of its time, which only grew since: its bytes are copied as they are, in spans, and the spaces
   * its columns now lack go in where a span ends, before the next cell that has something to show.
   */
  private writeRows(out: Out, indent: string, count: number): void {
    const n = this.header.length;
    const b = this.bytes;
    const widths = this.widths;
    const cellStarts = this.cellStarts;
    const cellEnds = this.cellEnds;
    const cellWidths = this.cellWidths;
    const rowEnds = this.rowEnds;
    const lead = Buffer.from(indent);
    // The most a row adds to its own bytes: the indent, every column's padding and the newline.
    let most = lead.length + 1;
    for (let i = 0; i < n; i++) most += (widths[i] as number) + 2;
    let chunk = Buffer.allocUnsafe(1 << 16);
    let at = 0;
    for (let r = 0; r < count; r++) {
      const from = r ? (rowEnds[r - 1] as number) : 0;
      const end = (rowEnds[r] as number) - 1; // without its newline
      if (at + (end - from) + most > chunk.length) {
        out.bytes(chunk.subarray(0, at));
        at = 0;
        if (end - from + most > chunk.length) chunk = Buffer.allocUnsafe(end - from + most);
      }
      for (let k = 0; k < lead.length; k++) chunk[at++] = lead[k] as number;
      let span = from; // the bytes from here on are still to be copied
      let before = from; // where the last cell with bytes ended
      let pad = 0; // the padding the cells since then need now
      const cells = r * n;
      for (let i = 0; i < n; i++) {
        const start = cellStarts[cells + i] as number;
        const stop = cellEnds[cells + i] as number;
        if (stop > start) {
          const lacking = pad - (start - before);
          if (lacking > 0) {
            at = copyInto(b, span, start, chunk, at);
            for (let k = 0; k < lacking; k++) chunk[at++] = SPACE;
            span = start;
          }
          before = stop;
          pad = 0;
        }
        pad += (widths[i] as number) - (cellWidths[cells + i] as number) + 2;
      }
      at = copyInto(b, span, end, chunk, at);
      chunk[at++] = 0x0a;
    }
    if (at) out.bytes(chunk.subarray(0, at));
  }
}

/** b[from, to) into chunk at `at`; where it ends there. A row's span byte by byte: cheaper than a call. */
function copyInto(b: Buffer, from: number, to: number, chunk: Buffer, at: number): number {
  if (to - from > 256) return at + b.copy(chunk, at, from, to);
  for (let p = from; p < to; p++) chunk[at++] = b[p] as number;
  return at;
}

const NEWLINE_BYTES = Buffer.from("\n");

function grow(a: Uint32Array<ArrayBuffer>, atLeast: number): Uint32Array<ArrayBuffer> {
  const b = new Uint32Array(Math.max(a.length * 2, atLeast));
  b.set(a);
  return b;
}

/** Render rows under a header (see Table). */
export function table(header: readonly string[], rows: readonly (readonly string[])[], out: Out, indent = ""): void {
  const t = new Table(header, out.color);
  for (const r of rows) t.add(r);
  t.write(out, indent);
}

// Address text is the model's (probe/ names its endpoints the same way); the commands keep importing it here.
export { hostPort } from "../addresses.js";

// C0 controls, DEL and C1 controls; characters that reorder the text around them (bidirectional embeddings,
// overrides and isolates, the Arabic letter mark); line and paragraph separators; and the backslash, so that
// an escape in the output always means one.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this finds
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\\]/g;

/**
 * Text that another process chose (a process name set with prctl(PR_SET_NAME), a cgroup or unit name, an event
 * of the shim), made safe for a terminal: every character that is not printable is shown as \xHH (or \u{HHHH}
 * beyond U+00FF), and a backslash as \\, so nothing it holds can move the cursor, retitle the window or hide
 * text, and what is shown still tells the bytes apart. Like ps, which prints '?' for them, but reversible. JSON
 * output keeps the exact text.
 */
export function printable(text: string): string {
  UNPRINTABLE.lastIndex = 0;
  if (!UNPRINTABLE.test(text)) return text;
  return text.replace(UNPRINTABLE, (ch) => {
    if (ch === "\\") return "\\\\";
    const code = ch.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
  });
}

/** "java[2203]": a process as people name it, its name made printable. */
export function processText(comm: string, pid: number): string {
  return `${printable(comm)}[${pid}]`;
}

/** "java[2203] fd 87", with "+N" when more processes share the socket. */
export function ownerText(owners: readonly SocketOwner[]): string {
  const first = owners[0];
  if (!first) return "-";
  const more = owners.length > 1 ? ` +${owners.length - 1}` : "";
  return `${ownerPrefix(first.comm, first.pid)}${first.fd}${more}`;
}

/** "java[2203] fd ": an owner up to its fd number (the table of `tcpka ls` adds the digits itself). */
export function ownerPrefix(comm: string, pid: number): string {
  return `${processText(comm, pid)} fd `;
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** Print an error: `tcpka: message` and `hint: …` for expected failures; the exit code to use. */
export function reportError(e: unknown): number {
  if (e instanceof TcpkaError) {
    // A message may quote what another process chose (a process or cgroup name): escaped. A message is one
    // line, so a newline in it came from such a name and is escaped too; a hint may have lines of its own (the
    // verifier's log), each escaped.
    let text = `tcpka: ${printable(e.message)}\n`;
    if (e.hint) text += `hint: ${e.hint.split("\n").map(printable).join("\n")}\n`;
    process.stderr.write(text);
    return e.exitCode;
  }
  // An unexpected failure is a bug: show everything that helps to report it.
  process.stderr.write(`tcpka: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.stderr.write("hint: this is a bug in tcpka; please report it with the command that caused it\n");
  return 1;
}
