/**
 * A read-only lookup in a bbolt file (go.etcd.io/bbolt, format version 2), for podman's own database: libpod keeps
 * each container's configuration (its labels among it) in /var/lib/containers/storage/libpod/bolt_state.db, bucket
 * "ctr", a bucket per container id, key "config" (libpod/boltdb_state_internal.go), and nowhere else on disk.
 *
 * The format, as bbolt's internal/common/{page,meta,bucket}.go lay it out (little-endian, as on amd64 and arm64):
 * - every page starts with a 16-byte header: id u64, flags u16 (0x01 branch, 0x02 leaf, 0x04 meta, 0x10
 *   freelist), count u16, overflow u32 (the page spans overflow + 1 pages);
 * - pages 0 and 1 are meta pages: magic u32 0xED0CDAED, version u32 2, pageSize u32, flags u32, the root bucket
 *   (root pgid u64, sequence u64), freelist u64, pgid u64 (the high-water mark), txid u64, and a checksum u64, the
 *   FNV-1a 64 of the 56 bytes before it. The valid one with the higher txid is the database (DB.meta());
 * - a branch page holds `count` elements {pos u32, ksize u32, pgid u64}, a leaf page {flags u32, pos u32, ksize
 *   u32, vsize u32}; each element's key is `pos` bytes after the element, a leaf's value right after its key;
 *   keys are sorted bytewise and a branch element leads to the keys from its own key up (Cursor.search);
 * - a leaf element with flag 0x01 is a bucket: its value is {root pgid u64, sequence u64}, and where the root is 0
 *   the bucket's one leaf page follows in the value itself (an inline bucket).
 *
 * The file is read by offset through `readAt`, one page at a time, never mapped or read whole. Nothing in it is
 * trusted: every offset is checked against what was read, a page must name itself, depth and bytes read are
 * capped, and anything that does not fit gives undefined, never a throw. bbolt writes a transaction's pages
 * where the committed tree does not reach, and its meta page last: when the meta is the same after the lookups as
 * before, they read one committed state; else they are made again (podman opens the file for each operation, so
 * a concurrent write is short).
 */

/** Bytes at an offset of the file; fewer (or undefined) where the file ends or cannot be read. */
export type ReadAt = (offset: number, length: number) => Buffer | undefined;

const PAGE_HEADER = 16;
const ELEMENT = 16;
const BUCKET_HEADER = 16;
const BRANCH = 0x01;
const LEAF = 0x02;
const META = 0x04;
const BUCKET_LEAF = 0x01;
const MAGIC = 0xed0cdaed;
const VERSION = 2;
/** A B+tree of a few million keys is 5 levels deep; buckets nest (root, ctr, ID): far below this. */
const MAX_DEPTH = 64;
/** A meta page's header and fields. */
const META_BYTES = PAGE_HEADER + 64;

export interface BoltLimits {
  /** The largest page with its overflow (one value sits in one page). */
  maxPage: number;
  /** All bytes one lookup of every path may read, over its retries. */
  maxRead: number;
}

const LIMITS: BoltLimits = { maxPage: 4 << 20, maxRead: 64 << 20 };

interface Meta {
  pageSize: number;
  root: number;
  /** The high-water mark: no page id of this state is at or above it. */
  pgid: number;
  txid: bigint;
}

const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;
const U64 = (1n << 64n) - 1n;

function fnv1a64(bytes: Uint8Array): bigint {
  let h = FNV_OFFSET;
  for (const b of bytes) h = ((h ^ BigInt(b)) * FNV_PRIME) & U64;
  return h;
}

/** A u64 that is a usable page id or offset, or -1. */
function u64(buf: Buffer, at: number): number {
  const v = buf.readBigUInt64LE(at);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : -1;
}

/** The meta page at the start of `buf` (bbolt's Meta.Validate: magic, version, checksum), or undefined. */
function meta(buf: Buffer | undefined): Meta | undefined {
  if (!buf || buf.length < META_BYTES || buf.readUInt16LE(8) !== META) return undefined;
  const m = PAGE_HEADER;
  if (buf.readUInt32LE(m) !== MAGIC || buf.readUInt32LE(m + 4) !== VERSION) return undefined;
  if (fnv1a64(buf.subarray(m, m + 56)) !== buf.readBigUInt64LE(m + 56)) return undefined;
  const pageSize = buf.readUInt32LE(m + 8);
  const root = u64(buf, m + 16);
  const pgid = u64(buf, m + 40);
  // bbolt uses the OS page size unless told another: anything but a power of two from 512 B to 1 MiB is refused.
  if (pageSize < 512 || pageSize > 1 << 20 || (pageSize & (pageSize - 1)) !== 0) return undefined;
  if (root < 2 || pgid <= root) return undefined;
  return { pageSize, root, pgid, txid: buf.readBigUInt64LE(m + 48) };
}

/** One page's bytes, or an inline bucket's page inside a value: the header at `base`. */
interface PageView {
  buf: Buffer;
  base: number;
}

class Reader {
  private readonly pages = new Map<number, PageView | null>();
  read = 0;

  constructor(
    private readonly readAt: ReadAt,
    readonly meta: Meta,
    private readonly limits: BoltLimits,
  ) {}

  private bytes(offset: number, length: number): Buffer | undefined {
    if (offset < 0 || length <= 0 || !Number.isSafeInteger(offset + length)) return undefined;
    this.read += length;
    if (this.read > this.limits.maxRead) throw new Budget();
    const b = this.readAt(offset, length);
    return b && b.length === length ? b : undefined;
  }

  /** Page `id` with its overflow, if it is a branch or leaf page of this state that names itself. */
  page(id: number): PageView | undefined {
    let p = this.pages.get(id);
    if (p === undefined) {
      p = null;
      const { pageSize, pgid } = this.meta;
      const head = id >= 2 && id < pgid ? this.bytes(id * pageSize, pageSize) : undefined;
      const flags = head?.readUInt16LE(8);
      if (head && u64(head, 0) === id && (flags === BRANCH || flags === LEAF)) {
        const overflow = head.readUInt32LE(12);
        const length = (overflow + 1) * pageSize;
        if (overflow === 0) p = { buf: head, base: 0 };
        else if (id + overflow < pgid && length <= this.limits.maxPage) {
          const rest = this.bytes((id + 1) * pageSize, length - pageSize);
          if (rest) p = { buf: Buffer.concat([head, rest]), base: 0 };
        }
      }
      this.pages.set(id, p);
    }
    return p ?? undefined;
  }

  /** The leaf element of `key` under the node `p` (a page or an inline page), following branches. */
  find(p: PageView, key: Buffer, depth: number): { flags: number; value: Buffer } | undefined {
    if (depth > MAX_DEPTH) return undefined;
    const { buf, base } = p;
    if (base + PAGE_HEADER > buf.length) return undefined;
    const flags = buf.readUInt16LE(base + 8);
    const count = buf.readUInt16LE(base + 10);
    if (base + PAGE_HEADER + count * ELEMENT > buf.length) return undefined;
    const keyOf = (at: number, pos: number, ksize: number) =>
      at + pos + ksize <= buf.length ? buf.subarray(at + pos, at + pos + ksize) : undefined;
    if (flags === LEAF) {
      for (let i = 0; i < count; i++) {
        const at = base + PAGE_HEADER + i * ELEMENT;
        const pos = buf.readUInt32LE(at + 4);
        const ksize = buf.readUInt32LE(at + 8);
        const vsize = buf.readUInt32LE(at + 12);
        const k = keyOf(at, pos, ksize);
        if (!k) return undefined; // a page that lies about its keys is not read further
        if (!k.equals(key)) continue;
        const v = at + pos + ksize;
        if (v + vsize > buf.length) return undefined;
        return { flags: buf.readUInt32LE(at), value: buf.subarray(v, v + vsize) };
      }
      return undefined;
    }
    if (flags !== BRANCH || count === 0) return undefined;
    // The last element whose key is at most `key` (the first, when all are above it: Cursor.searchPage).
    let child = -1;
    for (let i = 0; i < count; i++) {
      const at = base + PAGE_HEADER + i * ELEMENT;
      const k = keyOf(at, buf.readUInt32LE(at), buf.readUInt32LE(at + 4));
      if (!k) return undefined;
      if (i > 0 && Buffer.compare(k, key) > 0) break;
      child = u64(buf, at + 8);
    }
    const next = child < 0 ? undefined : this.page(child);
    return next && this.find(next, key, depth + 1);
  }

  /** The bucket that a bucket element's value describes: its root page, or the page inline in the value. */
  bucket(value: Buffer): PageView | undefined {
    if (value.length < BUCKET_HEADER) return undefined;
    const root = u64(value, 0);
    if (root === 0)
      return value.length >= BUCKET_HEADER + PAGE_HEADER ? { buf: value, base: BUCKET_HEADER } : undefined;
    return root < 0 ? undefined : this.page(root);
  }

  /** The value at path (bucket names, then a key): undefined where it leads nowhere or to a bucket. */
  get(path: readonly string[]): Buffer | undefined {
    let node = this.page(this.meta.root);
    for (let i = 0; node && i < path.length; i++) {
      const e = this.find(node, Buffer.from(path[i] as string), 0);
      if (!e) return undefined;
      const isBucket = (e.flags & BUCKET_LEAF) !== 0;
      if (i === path.length - 1) return isBucket ? undefined : Buffer.from(e.value);
      if (!isBucket) return undefined;
      node = this.bucket(e.value);
    }
    return undefined;
  }
}

/** The byte budget ran out: the lookups end there. */
class Budget extends Error {}

/** The current meta of the file: the valid one of pages 0 and 1 with the higher txid (bbolt's DB.meta()). */
function currentMeta(readAt: ReadAt): Meta | undefined {
  const m0 = meta(readAt(0, META_BYTES));
  // Page 1 is one page further: meta 0's page size, or (meta 0 torn) the usual 4 KiB.
  const m1 = meta(readAt(m0?.pageSize ?? 4096, META_BYTES));
  if (m0 && m1) return m1.txid > m0.txid ? m1 : m0;
  return m0 ?? m1;
}

/**
 * The value at each path (["ctr", ID, "config"]: bucket names, then a key) of the bbolt file read through `readAt`;
 * undefined where a path leads nowhere, or for all when the file is not one (or keeps changing, or is too big).
 */
export function boltGet(
  readAt: ReadAt,
  paths: readonly (readonly string[])[],
  limits: BoltLimits = LIMITS,
): (Buffer | undefined)[] {
  const none = paths.map(() => undefined);
  let spent = 0;
  for (let attempt = 0; attempt < 3; attempt++) {
    const m = currentMeta(readAt);
    if (!m) return none;
    const reader = new Reader(readAt, m, { ...limits, maxRead: limits.maxRead - spent });
    let values: (Buffer | undefined)[];
    try {
      values = paths.map((p) => reader.get(p));
    } catch (e) {
      if (e instanceof Budget) return none;
      throw e;
    }
    spent += reader.read;
    const after = currentMeta(readAt);
    if (after && after.txid === m.txid && after.root === m.root) return values;
  }
  return none;
}
