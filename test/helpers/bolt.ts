/**
 * bbolt files made by hand, for the reader's unit tests: pages laid out as go.etcd.io/bbolt's internal/common
 * describes them (16-byte page headers; leaf elements {flags, pos, ksize, vsize}; branch elements {pos, ksize,
 * pgid}; bucket values {root, sequence} with an inline page where the root is 0; two meta pages with an FNV-1a 64
 * checksum). The real format is checked against podman's own database in the e2e tests; these files add what
 * podman would never write: trees split across branches, torn meta pages, cycles, lies about sizes.
 */

export const PAGE = 4096;
const LEAF = 0x02;
const BRANCH = 0x01;

export interface Entry {
  key: string;
  value: Buffer;
  /** 1 for a bucket */
  flags: number;
}

export const kv = (key: string, value: string | Buffer): Entry => ({
  key,
  value: typeof value === "string" ? Buffer.from(value) : value,
  flags: 0,
});
export const sub = (key: string, bucket: Buffer): Entry => ({ key, value: bucket, flags: 1 });

function byKey(a: { key: string }, b: { key: string }): number {
  return Buffer.compare(Buffer.from(a.key), Buffer.from(b.key));
}

/** A page's bytes (not padded): header with id 0, then the elements, then their keys (and values). */
export function leafPage(entries: readonly Entry[]): Buffer {
  const sorted = [...entries].sort(byKey);
  const head = Buffer.alloc(16 + 16 * sorted.length);
  head.writeUInt16LE(LEAF, 8);
  head.writeUInt16LE(sorted.length, 10);
  const data: Buffer[] = [];
  let at = head.length;
  sorted.forEach((e, i) => {
    const el = 16 + 16 * i;
    const key = Buffer.from(e.key);
    head.writeUInt32LE(e.flags, el);
    head.writeUInt32LE(at - el, el + 4);
    head.writeUInt32LE(key.length, el + 8);
    head.writeUInt32LE(e.value.length, el + 12);
    data.push(key, e.value);
    at += key.length + e.value.length;
  });
  return Buffer.concat([head, ...data]);
}

export function branchPage(children: readonly { key: string; pgid: number }[]): Buffer {
  const head = Buffer.alloc(16 + 16 * children.length);
  head.writeUInt16LE(BRANCH, 8);
  head.writeUInt16LE(children.length, 10);
  const keys: Buffer[] = [];
  let at = head.length;
  children.forEach((c, i) => {
    const el = 16 + 16 * i;
    const key = Buffer.from(c.key);
    head.writeUInt32LE(at - el, el);
    head.writeUInt32LE(key.length, el + 4);
    head.writeBigUInt64LE(BigInt(c.pgid), el + 8);
    keys.push(key);
    at += key.length;
  });
  return Buffer.concat([head, ...keys]);
}

export function fnv1a64(bytes: Uint8Array): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return h;
}

/** A bbolt file being laid out: pages 0 and 1 meta, 2 the freelist, the rest what `put` places. */
export class BoltFile {
  private readonly pages = new Map<number, Buffer>();
  private next = 3;

  /** Place a page (its bytes from leafPage or branchPage) with as many overflow pages as it needs; its id. */
  put(page: Buffer, id = this.next): number {
    const n = Math.max(1, Math.ceil(page.length / PAGE));
    const buf = Buffer.alloc(n * PAGE);
    page.copy(buf);
    buf.writeBigUInt64LE(BigInt(id), 0);
    buf.writeUInt32LE(n - 1, 12);
    this.pages.set(id, buf);
    this.next = Math.max(this.next, id + n);
    return id;
  }

  /** The value of a bucket whose root is a page of its own. */
  bucket(entries: readonly Entry[]): Buffer {
    return bucketHeader(this.put(leafPage(entries)));
  }

  /** A bucket split into leaves of `per` entries under one branch page. */
  splitBucket(entries: readonly Entry[], per: number): Buffer {
    const sorted = [...entries].sort(byKey);
    const children: { key: string; pgid: number }[] = [];
    for (let i = 0; i < sorted.length; i += per) {
      const part = sorted.slice(i, i + per);
      children.push({ key: (part[0] as Entry).key, pgid: this.put(leafPage(part)) });
    }
    return bucketHeader(this.put(branchPage(children)));
  }

  /** The whole file, the root bucket at page `root`: meta 0 with txid - 1, meta 1 with txid. */
  file(root: number, opts: { txid?: number; highWater?: number } = {}): Buffer {
    const txid = opts.txid ?? 7;
    const size = this.next * PAGE;
    const out = Buffer.alloc(size);
    for (const [id, buf] of this.pages) buf.copy(out, id * PAGE);
    out.writeBigUInt64LE(2n, 2 * PAGE);
    out.writeUInt16LE(0x10, 2 * PAGE + 8);
    writeMeta(out, 0, { root, txid: txid - 1, pgid: opts.highWater ?? this.next });
    writeMeta(out, 1, { root, txid, pgid: opts.highWater ?? this.next });
    return out;
  }
}

export function bucketHeader(root: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(root), 0);
  return b;
}

/** An inline bucket's value: the header with root 0, then its one leaf page. */
export function inlineBucket(entries: readonly Entry[]): Buffer {
  return Buffer.concat([bucketHeader(0), leafPage(entries)]);
}

export function writeMeta(file: Buffer, page: 0 | 1, m: { root: number; txid: number; pgid: number }): void {
  const p = page * PAGE;
  file.fill(0, p, p + 80);
  file.writeBigUInt64LE(BigInt(page), p);
  file.writeUInt16LE(0x04, p + 8);
  const at = p + 16;
  file.writeUInt32LE(0xed0cdaed, at);
  file.writeUInt32LE(2, at + 4);
  file.writeUInt32LE(PAGE, at + 8);
  file.writeBigUInt64LE(BigInt(m.root), at + 16);
  file.writeBigUInt64LE(2n, at + 32);
  file.writeBigUInt64LE(BigInt(m.pgid), at + 40);
  file.writeBigUInt64LE(BigInt(m.txid), at + 48);
  file.writeBigUInt64LE(fnv1a64(file.subarray(at, at + 56)), at + 56);
}

/** readAt over a buffer, counting its calls. */
export function reader(file: Buffer): { readAt: (offset: number, length: number) => Buffer; calls: () => number } {
  let n = 0;
  return {
    readAt: (offset, length) => {
      n++;
      return Buffer.from(file.subarray(offset, offset + length));
    },
    calls: () => n,
  };
}
