/**
 * A bulk keepalive change made in the kernel: the TCP iterator program of src/bpf/bulk-keepalive.ts, run in each
 * network namespace that holds target sockets, reads, decides and changes every target in the walk itself. Where
 * the pidfd path (batch.ts) makes about ten system calls per socket and duplicates each one into tcpka (which
 * moves its net_cls/net_prio to tcpka's cgroup, __receive_sock), this makes a few per namespace and needs neither
 * pidfd_getfd nor CAP_SYS_PTRACE; the outcomes have the same shape (batch.ts Outcome).
 *
 * Pacing: the walk runs as it is read. bpf_seq_read (kernel/bpf/bpf_iter.c) runs the program on one socket after
 * the other until what it wrote reaches the size the reader asked for ("if (seq->count >= size) break", checked
 * before each next socket is shown) or its buffer of PAGE_SIZE << 3 bytes would overflow; the socket that did
 * not fit is shown again by the next read. Every target writes one record and only targets are changed, so a
 * read of `perRead` records (at most what the 32 KiB buffer of 4 KiB pages holds: no record ever overflows and
 * no socket is changed twice) changes at most `perRead` sockets, and between two reads the walk stands still:
 * the caller's `pace` decides how long.
 */
import { constants, existsSync, openSync } from "node:fs";
import { release } from "node:os";
import { assemble, Listing } from "../../bpf/asm.js";
import { BULK_INDEX, BULK_RECORD_SIZE, BULK_SLOTS, bulkKeepaliveProgram } from "../../bpf/bulk-keepalive.js";
import { tcpSocketOffsets } from "../../bpf/tcp-sockets.js";
import { ENOENT } from "../../kernel/errno.js";
import { APPLY_ORDER, SOCKOPTS } from "../../kernel/sockopts.js";
import type { Change, EffectiveKeepAlive } from "../../settings.js";
import {
  bpfCapable,
  hashMapCreate,
  iterCreate,
  iterCreateIn,
  iterLinkCreate,
  iterProgLoad,
  mapUpdateAll,
} from "../../sys/bpf.js";
import { CachedBtf } from "../../sys/btf.js";
import { close, kernelHz, SysError } from "../../sys/libc.js";
import { directStream } from "../../sys/read-ahead.js";
import type { Outcome, PlanSpec } from "./batch.js";

/**
 * The sockets to change: inodes[i] is target i, each socket once. Inodes name one socket across every namespace
 * (sockfs is one mount, sock_alloc), and the targets are one map: a walk changes every target it meets, whichever
 * namespace the caller named for it; a target is gone when no walk met it.
 */
export interface KernelTargets {
  /** each socket once: one named twice would take its later index in the map, and its first would come as gone */
  inodes: readonly number[];
  /** netnsFds[i]: an nsfs file (/proc/PID/ns/net) of target i's network namespace; tcpka's own where undefined */
  netnsFds?: readonly (number | undefined)[];
}

export interface KernelApplyOptions {
  dryRun: boolean;
  /** the most records, and so the most changed sockets, per read of the walk (capped at MAX_PER_READ) */
  perRead: number;
  /** called between two reads that may change more sockets, with the number changed so far; may sleep */
  pace?: (changedSoFar: number) => void | Promise<void>;
  /** enforce's socket storage map: every target met is marked in it (bulk-keepalive.ts, BulkSpec.marksFd) */
  marksFd?: number;
}

/**
 * The records one read may ask for: bpf_seq_read's buffer is PAGE_SIZE << 3 bytes, 32 KiB with the smallest
 * pages. More and a record would overflow it: that socket would be changed, its record dropped, and the socket
 * shown (and decided on its new values) again by the next read.
 */
export const MAX_PER_READ = Math.floor((4096 << 3) / BULK_RECORD_SIZE);

/** The record's u32 that holds the target's index (bulk-keepalive.ts, offset 68). */
const INDEX_WORD = BULK_INDEX / 4;

/** bpf_setsockopt from a TCP iterator (bpf_iter_tcp_get_func_proto). */
const SINCE: readonly [number, number] = [5, 15];

export const KernelApply = {
  /** Whether this kernel and these rights can: Linux 5.15, its BTF, CAP_BPF with CAP_PERFMON or CAP_SYS_ADMIN. */
  possible(): boolean {
    const [major = 0, minor = 0] = release()
      .split(".")
      .map((n) => Number.parseInt(n, 10));
    const recent = major > SINCE[0] || (major === SINCE[0] && minor >= SINCE[1]);
    return recent && existsSync("/sys/kernel/btf/vmlinux") && bpfCapable();
  },
};

/**
 * Apply `plan` to every target socket in the kernel. Returns each target's outcome, outcomes[i] for inodes[i]:
 * changed (or would change, in a dry run), unchanged, failed (the errno of the bpf_setsockopt that failed; `changes`
 * are those not made), or gone (no walk met it: closed, or not in the namespace given). Throws (BtfError, SysError,
 * VerifierError) when the kernel or these rights cannot run it; then nothing was changed.
 *
 * Each target's index is its value in the targets map, and the program writes it into the socket's record: the
 * records go straight to their outcomes, with no lookup by inode on this side (50,000 targets: three Maps of
 * 50,000 entries, ~60 ms of a cold main thread, before).
 */
export async function applyInKernel(
  targets: KernelTargets,
  plan: PlanSpec,
  opts: KernelApplyOptions,
): Promise<Outcome[]> {
  if (!Number.isInteger(opts.perRead) || opts.perRead < 1) throw new Error(`perRead ${opts.perRead}`);
  const perRead = Math.min(opts.perRead, MAX_PER_READ);
  const { inodes, netnsFds } = targets;
  const n = inodes.length;
  const results = new Results(opts.dryRun, n);
  if (n === 0) return [];
  // The namespaces to walk, in the order the targets first name them; a target's index says which.
  const walks: (number | undefined)[] = [];
  if (netnsFds) {
    for (let i = 0; i < n; i++) {
      const fd = netnsFds[i];
      if ((i === 0 || fd !== netnsFds[i - 1]) && !walks.includes(fd)) walks.push(fd); // targets come in runs
    }
  } else walks.push(undefined);

  const fds: number[] = [];
  let ownNetns = -1;
  try {
    const mapFd = hashMapCreate("tcpka_targets", 8, 4, n);
    fds.push(mapFd);
    // The keys as little-endian u64 (no BigInt per key), the values the targets' indices.
    const keys = new Uint32Array(2 * n);
    const values = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      const inode = inodes[i] as number;
      keys[2 * i] = inode % 0x1_0000_0000;
      keys[2 * i + 1] = Math.floor(inode / 0x1_0000_0000);
      values[i] = i;
    }
    mapUpdateAll(mapFd, bytes(keys), bytes(values), n);

    const btf = CachedBtf.open();
    const program = bulkKeepaliveProgram(tcpSocketOffsets(btf), {
      ...plan,
      mapFd,
      hz: kernelHz(),
      dryRun: opts.dryRun,
      ...(opts.marksFd !== undefined ? { marksFd: opts.marksFd } : {}),
    });
    const attachBtfId = btf.typeId("FUNC", "bpf_iter_tcp");
    btf.save();
    const progFd = iterProgLoad({
      attachBtfId,
      insns: assemble(program),
      listing: new Listing(program),
      name: "tcpka_bulk",
    });
    fds.push(progFd);
    const linkFd = iterLinkCreate(progFd, Buffer.alloc(0));
    fds.push(linkFd);
    if (walks.some((w) => w !== undefined)) ownNetns = openSync("/proc/thread-self/ns/net", constants.O_RDONLY);

    const buf = Buffer.from(new ArrayBuffer(perRead * BULK_RECORD_SIZE)); // its own memory: 4-byte aligned
    let pacedAt = 0; // records when pace was last called
    for (const netnsFd of walks) {
      // A socket that the walk's resumption passed by (sockets before it in its bucket went away between two
      // reads, tcp_seek_last_pos) is met by a second walk, which meets nothing else: met keys are deleted.
      for (let walk = 0; walk < 2; walk++) {
        const iter = netnsFd === undefined ? iterCreate(linkFd) : iterCreateIn(linkFd, netnsFd, ownNetns);
        let reads = 0;
        try {
          const stream = directStream(iter);
          let full = results.records > pacedAt; // a walk after records: pace before it
          for (;;) {
            if (full && opts.pace) {
              await opts.pace(results.changed);
              pacedAt = results.records;
            }
            const got = stream.read(buf);
            if (got === 0) break;
            reads++;
            results.addAll(buf, got);
            // A short read ended the walk (or bpf_seq_read's cap of objects per read): read on, without pacing.
            full = got === buf.length;
          }
        } finally {
          close(iter);
        }
        if (reads <= 1 || results.allMet(netnsFds, netnsFd)) break;
      }
    }
  } finally {
    for (const fd of fds.reverse()) close(fd);
    if (ownNetns >= 0) close(ownNetns);
  }
  return results.outcomes(new SysError("bpf_iter_tcp", ENOENT));
}

/** The bytes of a typed array, as the Buffer that the bpf(2) wrappers take. */
function bytes(a: Uint32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * The records, decoded into outcomes by target index (record offset 68). Sockets with the same settings before and
 * after (nearly all, in a bulk change) share one outcome object: 40,000 outcomes do not make 120,000 more objects.
 */
class Results {
  private readonly byIndex: (Outcome | undefined)[];
  /** the last decoded record's words 2..16 (between the inode and the index), as u32 */
  private readonly last = new Uint32Array(BULK_RECORD_SIZE / 4);
  private lastOutcome: Outcome | undefined;
  /** whether the last record's socket had at least one change made */
  private lastMade = false;
  records = 0;
  changed = 0;

  constructor(
    private readonly dryRun: boolean,
    private readonly n: number,
  ) {
    this.byIndex = new Array<Outcome | undefined>(n).fill(undefined);
  }

  /** The `got` bytes of records at the start of b (a buffer of its own, so 4-byte aligned). */
  addAll(b: Buffer, got: number): void {
    const words = new Uint32Array(b.buffer, b.byteOffset, got >>> 2);
    const w = BULK_RECORD_SIZE / 4;
    const last = this.last;
    for (let at = 0; at + w <= words.length; at += w) {
      const index = words[at + INDEX_WORD] as number;
      this.records++;
      // The program deletes its key: only a second program run could repeat a socket; an index out of range
      // cannot come from the map this side filled.
      if (index >= this.n || this.byIndex[index] !== undefined) continue;
      let same = this.lastOutcome !== undefined;
      for (let k = 2; same && k < INDEX_WORD; k++) same = words[at + k] === last[k];
      if (!same) {
        [this.lastOutcome, this.lastMade] = this.decode(b, 4 * at);
        for (let k = 2; k < INDEX_WORD; k++) last[k] = words[at + k] as number;
      }
      if (this.lastMade) this.changed++;
      this.byIndex[index] = this.lastOutcome;
    }
  }

  /** Whether every target of this namespace (every target, where none names one) was met. */
  allMet(netnsFds: readonly (number | undefined)[] | undefined, netnsFd: number | undefined): boolean {
    for (let i = 0; i < this.n; i++)
      if (this.byIndex[i] === undefined && (!netnsFds || netnsFds[i] === netnsFd)) return false;
    return true;
  }

  /** Every target's outcome; `gone` for those no walk met. */
  outcomes(gone: SysError): Outcome[] {
    const g: Outcome = { result: "gone", error: gone, changes: [] };
    return this.byIndex.map((o) => o ?? g);
  }

  /** The outcome of the record at b[at], and whether any change was made. */
  private decode(b: Buffer, at: number): [Outcome, boolean] {
    const read = (which: "before" | "after"): EffectiveKeepAlive => ({
      keepalive: b.readUInt32LE(at + BULK_SLOTS.keepalive[which]) !== 0,
      idle: b.readUInt32LE(at + BULK_SLOTS.idle[which]),
      interval: b.readUInt32LE(at + BULK_SLOTS.interval[which]),
      count: b.readUInt32LE(at + BULK_SLOTS.count[which]),
      userTimeout: b.readUInt32LE(at + BULK_SLOTS.userTimeout[which]),
    });
    const before = read("before");
    const changes: Change[] = [];
    const notMade: Change[] = [];
    let failed: SysError | undefined;
    for (const option of APPLY_ORDER) {
      const s = BULK_SLOTS[option];
      const from = b.readUInt32LE(at + s.before);
      const to = b.readUInt32LE(at + s.after);
      if (from === to) continue;
      const c = { option, from, to };
      changes.push(c);
      const rc = b.readInt32LE(at + s.rc);
      if (rc < 0) failed = new SysError(`bpf_setsockopt(${SOCKOPTS[option][2]})`, -rc);
      if (rc !== 0) notMade.push(c);
    }
    const made = changes.length - notMade.length > 0;
    if (failed) return [{ result: "failed", error: failed, changes: notMade }, made];
    if (changes.length === 0) return [{ result: "unchanged", before, changes: [] }, false];
    if (this.dryRun) return [{ result: "would change", before, changes }, false];
    // The program makes every change or stops at one that fails: anything else is a bug, not an outcome.
    if (notMade.length > 0) throw new Error(`bulk keepalive program: changes not made on inode ${b.readUInt32LE(at)}`);
    return [{ result: "changed", before, changes }, true];
  }
}
