/**
 * A BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8) read from user space without a system call per record.
 *
 * The layout is the kernel's (kernel/bpf/ringbuf.c): mapped at offset 0 one page holding the consumer's position
 * (written here), at one page the producer's position and then the data, mapped twice in a row so that a record
 * never wraps. Each record starts with an 8-byte header: its length, with BUSY (1 << 31: still being written) and
 * DISCARD (1 << 30), then the data, the whole rounded up to 8 bytes.
 */
import { ringbufCreate } from "./bpf.js";
import { close, mapShared } from "./libc.js";

const PAGE = 4096;
const BUSY = 0x8000_0000;
const DISCARD = 0x4000_0000;

export class RingBuffer {
  private constructor(
    /** the map's fd, for the programs that write into it */
    readonly fd: number,
    private readonly size: number,
    private readonly consumer: { memory: ArrayBuffer; unmap: () => void },
    private readonly producer: { memory: ArrayBuffer; unmap: () => void },
  ) {}

  /** A ring of `size` bytes of data (a power of 2, a multiple of the page size), mapped. */
  static create(name: string, size: number): RingBuffer {
    const fd = ringbufCreate(name, size);
    let consumer: { memory: ArrayBuffer; unmap: () => void } | undefined;
    try {
      consumer = mapShared(fd, PAGE, 0, true);
      const producer = mapShared(fd, PAGE + 2 * size, PAGE, false);
      return new RingBuffer(fd, size, consumer, producer);
    } catch (e) {
      consumer?.unmap();
      close(fd);
      throw e;
    }
  }

  /**
   * Hand every complete record written so far to `each` (the mapped data, where the record starts, its length;
   * valid only during the call), then give their space back to the kernel. Stops at a record still being written.
   */
  take(each: (data: Buffer, at: number, length: number) => void): void {
    const cons = new BigUint64Array(this.consumer.memory, 0, 1);
    const prod = new BigUint64Array(this.producer.memory, 0, 1);
    const view = new DataView(this.producer.memory, PAGE);
    const bytes = Buffer.from(this.producer.memory, PAGE);
    let c = cons[0] as bigint;
    const p = prod[0] as bigint;
    const mask = BigInt(this.size - 1);
    while (c < p) {
      const at = Number(c & mask);
      const len = view.getUint32(at, true);
      if (len & BUSY) break;
      const n = len & 0x3fff_ffff;
      if (!(len & DISCARD)) each(bytes, at + 8, n);
      c += BigInt((n + 8 + 7) & ~7);
    }
    cons[0] = c;
  }

  private closed = false;

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.consumer.unmap();
    this.producer.unmap();
    close(this.fd);
  }
}
