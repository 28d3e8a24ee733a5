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
import { BULK_RECORD_SIZE, BULK_SLOTS, bulkKeepaliveProgram } from "../../bpf/bulk-keepalive.js";
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
 * A socket to change, by its inode, and the network namespace to walk for it. Inodes name one socket across
 * every namespace (sockfs is one mount, sock_alloc), and the targets are one map: a walk changes every target
 * it meets, whichever namespace the caller named for it; a target is gone when no walk met it.
 */
export interface KernelTarget {
  inode: number;
  /** an nsfs file (/proc/PID/ns/net) of the socket's network namespace; tcpka's own when absent */
  netnsFd?: number;
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
 * Apply `plan` to every target socket in the kernel. Returns each target's outcome by inode: changed (or would
 * change, in a dry run), unchanged, failed (the errno of the bpf_setsockopt that failed; `changes` are those not
 * made), or gone (no walk met it: closed, or not in the namespace given). Throws (BtfError, SysError,
 * VerifierError) when the kernel or these rights cannot run it; then nothing was changed.
 */
export async function applyInKernel(
  targets: readonly KernelTarget[],
  plan: PlanSpec,
  opts: KernelApplyOptions,
): Promise<Map<number, Outcome>> {
  if (!Number.isInteger(opts.perRead) || opts.perRead < 1) throw new Error(`perRead ${opts.perRead}`);
  const perRead = Math.min(opts.perRead, MAX_PER_READ);
  const byNetns = new Map<number | undefined, Set<number>>();
  for (const t of targets) {
    const s = byNetns.get(t.netnsFd) ?? new Set<number>();
    byNetns.set(t.netnsFd, s.add(t.inode));
  }
  const inodes = new Set(targets.map((t) => t.inode));
  const results = new Results(opts.dryRun);
  if (inodes.size === 0) return new Map();

  const fds: number[] = [];
  let ownNetns = -1;
  try {
    const mapFd = hashMapCreate("tcpka_targets", 8, 4, inodes.size);
    fds.push(mapFd);
    const keys = Buffer.alloc(8 * inodes.size);
    let k = 0;
    for (const inode of inodes) {
      keys.writeUInt32LE(inode % 0x1_0000_0000, 8 * k); // a little-endian u64, without a BigInt per key
      keys.writeUInt32LE(Math.floor(inode / 0x1_0000_0000), 8 * k++ + 4);
    }
    mapUpdateAll(mapFd, keys, Buffer.alloc(4 * inodes.size), inodes.size);

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
    if ([...byNetns.keys()].some((n) => n !== undefined)) {
      ownNetns = openSync("/proc/thread-self/ns/net", constants.O_RDONLY);
    }

    const buf = Buffer.alloc(perRead * BULK_RECORD_SIZE);
    let pacedAt = 0; // records when pace was last called
    for (const [netnsFd, group] of byNetns) {
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
            const n = stream.read(buf);
            if (n === 0) break;
            reads++;
            for (let at = 0; at + BULK_RECORD_SIZE <= n; at += BULK_RECORD_SIZE) results.add(buf, at);
            // A short read ended the walk (or bpf_seq_read's cap of objects per read): read on, without pacing.
            full = n === buf.length;
          }
        } finally {
          close(iter);
        }
        if (reads <= 1 || [...group].every((i) => results.has(i))) break;
      }
    }
  } finally {
    for (const fd of fds.reverse()) close(fd);
    if (ownNetns >= 0) close(ownNetns);
  }
  const gone = new SysError("bpf_iter_tcp", ENOENT);
  const out = new Map<number, Outcome>();
  for (const inode of inodes) out.set(inode, results.get(inode) ?? { result: "gone", error: gone, changes: [] });
  return out;
}

/**
 * The records, decoded into outcomes. Sockets with the same settings before and after (nearly all, in a bulk
 * change) share one outcome object: 40,000 outcomes do not make 120,000 more objects.
 */
class Results {
  private readonly byInode = new Map<number, Outcome>();
  private readonly last = Buffer.alloc(BULK_RECORD_SIZE);
  private lastOutcome: Outcome | undefined;
  /** whether the last record's socket had at least one change made */
  private lastMade = false;
  records = 0;
  changed = 0;

  constructor(private readonly dryRun: boolean) {}

  has(inode: number): boolean {
    return this.byInode.has(inode);
  }

  get(inode: number): Outcome | undefined {
    return this.byInode.get(inode);
  }

  add(b: Buffer, at: number): void {
    const inode = b.readUInt32LE(at) + b.readUInt32LE(at + 4) * 0x1_0000_0000;
    this.records++;
    if (this.byInode.has(inode)) return; // the program deletes its key: only a second program run could repeat
    if (!this.lastOutcome || b.compare(this.last, 8, BULK_RECORD_SIZE, at + 8, at + BULK_RECORD_SIZE) !== 0) {
      [this.lastOutcome, this.lastMade] = this.decode(b, at);
      b.copy(this.last, 0, at, at + BULK_RECORD_SIZE);
    }
    if (this.lastMade) this.changed++;
    this.byInode.set(inode, this.lastOutcome);
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
