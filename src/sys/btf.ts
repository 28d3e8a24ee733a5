/**
 * The running kernel's own type information (BTF, /sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): the few
 * facts a tracing BPF program needs that differ between kernel builds, such as the id of the function an
 * iterator attaches to and the byte offset of a struct member. The format is include/uapi/linux/btf.h and
 * Documentation/bpf/btf.rst: a header, then the types (ids from 1, each a 12-byte struct btf_type followed by
 * data whose size depends on its kind), then the names.
 */
import { readFileSync, statSync } from "node:fs";
import { TcpkaError } from "../errors.js";
import { readPrivateFile, runtimeBase, writeFileAtomic } from "./files.js";

const VMLINUX = "/sys/kernel/btf/vmlinux";
const MAGIC = 0xeb9f;

// BTF_KIND_* in include/uapi/linux/btf.h
const KIND = {
  INT: 1,
  PTR: 2,
  ARRAY: 3,
  STRUCT: 4,
  UNION: 5,
  ENUM: 6,
  FWD: 7,
  TYPEDEF: 8,
  VOLATILE: 9,
  CONST: 10,
  RESTRICT: 11,
  FUNC: 12,
  FUNC_PROTO: 13,
  VAR: 14,
  DATASEC: 15,
  FLOAT: 16,
  DECL_TAG: 17,
  TYPE_TAG: 18,
  ENUM64: 19,
} as const;

/** Kinds that only qualify or rename the type they point at. */
const ALIASES: ReadonlySet<number> = new Set([KIND.TYPEDEF, KIND.VOLATILE, KIND.CONST, KIND.RESTRICT, KIND.TYPE_TAG]);

/** Bytes of kind-specific data after a struct btf_type of this kind with vlen entries. */
function extraBytes(kind: number, vlen: number): number {
  switch (kind) {
    case KIND.INT:
    case KIND.VAR:
    case KIND.DECL_TAG:
      return 4;
    case KIND.ARRAY:
      return 12;
    case KIND.STRUCT:
    case KIND.UNION:
    case KIND.DATASEC:
    case KIND.ENUM64:
      return 12 * vlen;
    case KIND.ENUM:
    case KIND.FUNC_PROTO:
      return 8 * vlen;
    default:
      return 0; // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
  }
}

export class BtfError extends TcpkaError {
  constructor(message: string) {
    super("unsupported", message);
  }
}

/** One kernel's BTF, indexed once: where each type starts. */
export class Btf {
  private readonly buf: Buffer;
  /** the same bytes as 32-bit words: struct btf_type and its members are 4-byte aligned */
  private readonly words: Uint32Array;
  private readonly strings: number;
  private readonly stringsEnd: number;
  /** offsets[id] = byte offset of type id's struct btf_type */
  private readonly offsets: Uint32Array;
  /** ids found so far, by kind and name: a lookup walks every type */
  private readonly ids = new Map<string, number>();

  private constructor(buf: Buffer) {
    if (buf.length < 24 || buf.readUInt16LE(0) !== MAGIC) throw new BtfError(`${VMLINUX} is not BTF`);
    // readFileSync gives a file this big its own ArrayBuffer, so the view starts at a 4-byte boundary.
    if (buf.byteOffset % 4 !== 0) buf = Buffer.from(buf);
    this.buf = buf;
    this.words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
    const hdrLen = buf.readUInt32LE(4);
    const typeOff = hdrLen + buf.readUInt32LE(8);
    const typeEnd = typeOff + buf.readUInt32LE(12);
    this.strings = hdrLen + buf.readUInt32LE(16);
    this.stringsEnd = this.strings + buf.readUInt32LE(20);
    // Every type is at least 12 bytes, which bounds how many there can be.
    const offsets = new Uint32Array(Math.floor((typeEnd - typeOff) / 12) + 2);
    const w = this.words;
    let n = 1;
    for (let at = typeOff; at < typeEnd; n++) {
      offsets[n] = at;
      const info = w[(at >>> 2) + 1] as number;
      at += 12 + extraBytes((info >>> 24) & 0x1f, info & 0xffff);
    }
    this.offsets = offsets.subarray(0, n);
  }

  private static running: Btf | undefined;

  /** The running kernel's BTF, read once per process; throws BtfError when the kernel has none. */
  static vmlinux(): Btf {
    Btf.running ??= Btf.read();
    return Btf.running;
  }

  private static read(): Btf {
    let buf: Buffer;
    try {
      buf = readFileSync(VMLINUX);
    } catch (e) {
      throw new BtfError(`the kernel has no BTF (${VMLINUX}: ${(e as NodeJS.ErrnoException).code ?? e})`);
    }
    return new Btf(buf);
  }

  /** Whether the name at offset `off` of the string section is `name` (as latin1 bytes). */
  private nameIs(off: number, name: Buffer): boolean {
    const b = this.buf;
    const at = this.strings + off;
    if (at + name.length >= this.stringsEnd || b[at] !== name[0]) return false;
    for (let i = 1; i < name.length; i++) if (b[at + i] !== name[i]) return false;
    return b[at + name.length] === 0;
  }

  /** The id of the type of this kind and name; throws when there is none. */
  typeId(kind: "FUNC" | "STRUCT" | "TYPEDEF", name: string): number {
    const key = `${kind} ${name}`;
    let id = this.ids.get(key);
    if (id === undefined) {
      id = this.find(kind, name);
      this.ids.set(key, id);
    }
    return id;
  }

  private find(kind: "FUNC" | "STRUCT" | "ENUM" | "TYPEDEF", name: string): number {
    const want = KIND[kind];
    const bytes = Buffer.from(name, "latin1");
    const w = this.words;
    for (let id = 1; id < this.offsets.length; id++) {
      const word = (this.offsets[id] as number) >>> 2;
      if ((((w[word + 1] as number) >>> 24) & 0x1f) === want && this.nameIs(w[word] as number, bytes)) return id;
    }
    throw new BtfError(`the kernel's BTF has no ${kind.toLowerCase()} ${name}`);
  }

  /**
   * The byte offset of `member` in struct `struct`, looking into anonymous structs and unions too; throws when
   * it is missing or is a bit field. `member` may be a path through nested structs: "inet_conn.icsk_pending".
   */
  memberOffset(struct: string, member: string): number {
    const found = this.offsetOf(struct, member);
    if (found === undefined) {
      throw new BtfError(`the kernel's struct ${struct} has no member ${member} at a whole byte (or none at all)`);
    }
    return found;
  }

  /** The same, or undefined when the kernel's struct has no such member: for members that some kernels lack. */
  offsetOf(struct: string, member: string): number | undefined {
    let id = this.typeId("STRUCT", struct);
    let offset = 0;
    for (const part of member.split(".")) {
      const found = this.findMember(id, Buffer.from(part, "latin1"), 0);
      if (found === undefined) return undefined;
      offset += found[0];
      id = this.resolve(found[1]);
    }
    return offset;
  }

  /** [offset, type id] of a member, at a whole byte. */
  private findMember(id: number, name: Buffer, base: number): [number, number] | undefined {
    const b = this.buf;
    const at = this.offsets[id] as number;
    const info = b.readUInt32LE(at + 4);
    const kind = (info >>> 24) & 0x1f;
    if (kind !== KIND.STRUCT && kind !== KIND.UNION) return undefined;
    const bitfields = info >>> 31 === 1;
    for (let i = 0, m = at + 12; i < (info & 0xffff); i++, m += 12) {
      const nameOff = b.readUInt32LE(m);
      const raw = b.readUInt32LE(m + 8);
      const bits = bitfields ? raw & 0xffffff : raw;
      if (nameOff !== 0 && this.nameIs(nameOff, name)) {
        if (bits % 8 !== 0 || (bitfields && raw >>> 24 !== 0)) return undefined;
        return [base + bits / 8, b.readUInt32LE(m + 4)];
      }
      if (nameOff === 0) {
        const inner = this.findMember(this.resolve(b.readUInt32LE(m + 4)), name, base + bits / 8);
        if (inner !== undefined) return inner;
      }
    }
    return undefined;
  }

  /**
   * The value of an enumerator, e.g. enumValue("sock_flags", "SOCK_KEEPOPEN"): a number the kernel may renumber
   * between versions, read from the running one. Throws when there is none.
   */
  enumValue(enumName: string, value: string): number {
    const id = this.find("ENUM", enumName);
    const b = this.buf;
    const at = this.offsets[id] as number;
    const want = Buffer.from(value, "latin1");
    for (let i = 0, m = at + 12; i < (b.readUInt32LE(at + 4) & 0xffff); i++, m += 8) {
      if (this.nameIs(b.readUInt32LE(m), want)) return b.readInt32LE(m + 4);
    }
    throw new BtfError(`the kernel's enum ${enumName} has no ${value}`);
  }

  /** Follow typedefs and qualifiers to the type beneath. */
  private resolve(id: number): number {
    for (let depth = 0; depth < 32 && id > 0 && id < this.offsets.length; depth++) {
      const at = this.offsets[id] as number;
      const kind = (this.buf.readUInt32LE(at + 4) >>> 24) & 0x1f;
      if (!ALIASES.has(kind)) return id;
      id = this.buf.readUInt32LE(at + 8);
    }
    return id;
  }
}

/** What the BPF programs ask of the kernel's BTF: the answers of a Btf, or of a run before this one. */
export interface BtfFacts {
  memberOffset(struct: string, member: string): number;
  offsetOf(struct: string, member: string): number | undefined;
  enumValue(enumName: string, value: string): number;
  typeId(kind: "FUNC" | "STRUCT" | "TYPEDEF", name: string): number;
}

const MAX_CACHE = 1 << 20;

/**
 * The BTF's answers kept from one run to the next. Reading and indexing the 5 MB of vmlinux BTF costs about 40 ms
 * a run, more than the rest of a small `tcpka ls`; the few dozen numbers the programs need change only with the
 * kernel, that is, with a boot. So they are kept in tcpka's runtime directory (/run/tcpka for root: a tmpfs that
 * a reboot empties, mode 0700), in a file named after the boot id and the BTF's size, and the BTF is read only
 * when a question is new. A file that is not this user's own, or that others may write, or is not what this
 * writes, is ignored.
 */
export class CachedBtf implements BtfFacts {
  private real: Btf | undefined;
  private dirty = false;

  private constructor(
    private readonly path: string | undefined,
    private readonly answers: Map<string, number | null>,
  ) {}

  /** `dir`: where the answers are kept, tcpka's runtime directory by default. */
  static open(dir?: string): CachedBtf {
    let path: string | undefined;
    try {
      const base = dir ?? runtimeBase();
      const boot = readFileSync("/proc/sys/kernel/random/boot_id", "ascii").trim();
      if (base && /^[0-9a-f-]{36}$/.test(boot)) path = `${base}/btf-${boot}-${statSync(VMLINUX).size}.json`;
    } catch {
      path = undefined; // no runtime directory, no BTF: answers are not kept
    }
    return new CachedBtf(path, path ? readAnswers(path) : new Map());
  }

  private btf(): Btf {
    this.real ??= Btf.vmlinux();
    return this.real;
  }

  private ask(key: string, answer: () => number | undefined): number | undefined {
    const known = this.answers.get(key);
    if (known !== undefined) return known ?? undefined;
    const v = answer();
    this.answers.set(key, v ?? null);
    this.dirty = true;
    return v;
  }

  offsetOf(struct: string, member: string): number | undefined {
    return this.ask(`offset ${struct} ${member}`, () => this.btf().offsetOf(struct, member));
  }

  memberOffset(struct: string, member: string): number {
    const v = this.offsetOf(struct, member);
    if (v === undefined) return this.btf().memberOffset(struct, member); // throws, saying why
    return v;
  }

  enumValue(enumName: string, value: string): number {
    return this.ask(`enum ${enumName} ${value}`, () => this.btf().enumValue(enumName, value)) as number;
  }

  typeId(kind: "FUNC" | "STRUCT" | "TYPEDEF", name: string): number {
    return this.ask(`type ${kind} ${name}`, () => this.btf().typeId(kind, name)) as number;
  }

  /** Keep the answers for the next run, when there are new ones (atomically; a failure only costs time). */
  save(): void {
    if (!this.dirty || !this.path) return;
    try {
      writeFileAtomic(this.path, JSON.stringify(Object.fromEntries(this.answers)), 0o600);
      this.dirty = false;
    } catch {
      // a read-only or full runtime directory: the next run reads the BTF again
    }
  }
}

/** The answers in a cache file, or none when it is missing, not this user's alone, too big or not numbers. */
function readAnswers(path: string): Map<string, number | null> {
  const answers = new Map<string, number | null>();
  const bytes = readPrivateFile(path, MAX_CACHE);
  if (!bytes) return answers;
  try {
    const parsed: unknown = JSON.parse(bytes.toString("utf8"));
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return answers;
    for (const [k, v] of Object.entries(parsed)) {
      if (v === null || (typeof v === "number" && Number.isSafeInteger(v))) answers.set(k, v);
      else return new Map();
    }
  } catch {
    return new Map();
  }
  return answers;
}
