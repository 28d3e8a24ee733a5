/**
 * The bpf(2) system call for the few commands tcpka needs: load a program, attach it to a cgroup with a link,
 * replace a link's program, detach, pin and get objects, a one-entry array map for metadata, and a hash map of
 * keys that a program looks up (the sockets a bulk change targets). Each command's
 * attribute block is laid out as in union bpf_attr (include/uapi/linux/bpf.h).
 */
import { readFileSync } from "node:fs";
import { TcpkaError } from "../errors.js";
import {
  BPF_CMD,
  BPF_F_NO_PREALLOC,
  BPF_MAP_TYPE_ARRAY,
  BPF_MAP_TYPE_HASH,
  BPF_MAP_TYPE_PERCPU_ARRAY,
  BPF_MAP_TYPE_RINGBUF,
  BPF_MAP_TYPE_SK_STORAGE,
  BPF_OBJ_NAME_LEN,
  BPF_PERF_EVENT,
  BPF_PROG_TYPE_TRACEPOINT,
  BPF_PROG_TYPE_TRACING,
  BPF_TRACE_ITER,
  CLONE_NEWNET,
  SYS_bpf,
} from "../kernel/constants.js";
import { addressOf, close, SysError, setns, syscall } from "./libc.js";

const ATTR_SIZE = 128;

// include/uapi/linux/capability.h
const CAP_SYS_ADMIN = 21;
const CAP_PERFMON = 38;
const CAP_BPF = 39;

/**
 * Whether this process may load tracing programs that read kernel memory: CAP_BPF with CAP_PERFMON, or
 * CAP_SYS_ADMIN (bpf_capable and perfmon_capable in the kernel). A cheap check that spares reading the BTF in vain.
 */
export function bpfCapable(): boolean {
  let caps: bigint;
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "latin1"));
    if (!m) return false;
    caps = BigInt(`0x${m[1]}`);
  } catch {
    return false;
  }
  const has = (bit: number) => (caps >> BigInt(bit)) & 1n;
  return has(CAP_SYS_ADMIN) === 1n || (has(CAP_BPF) === 1n && has(CAP_PERFMON) === 1n);
}

function bpf(cmd: keyof typeof BPF_CMD, attr: Buffer): number {
  return syscall(`bpf(${cmd})`, SYS_bpf, BPF_CMD[cmd], addressOf(attr), attr.length);
}

function cString(s: string): Buffer {
  return Buffer.from(`${s}\0`);
}

/** A program as its assembler lists it (Listing in src/bpf/asm.ts): what a verifier error names and shows. */
export interface ProgramListing {
  /** The label of instruction `i`, or of the nearest one before it with the distance ("set+2"). */
  nameOf(i: number): string | undefined;
  /** The listing's lines for instructions `from` to `to`, `mark` flagged. */
  lines(from: number, to: number, mark: number): string[];
}

/**
 * The verifier's refusal: its complaint, and, when its log says which instruction it rejected, that
 * instruction's number and label and the listing around it. With log_level 1 the verifier prints each
 * instruction as it walks it ("23: (61) r2 = *(u32 *)(r6 +4)", print_bpf_insn) and stops at the one it rejects,
 * then says why; a complaint found before the walk names its instruction itself ("unreachable insn 23",
 * check_cfg). The log ends with its statistics ("processed N insns", print_verification_stats).
 */
export class VerifierError extends TcpkaError {
  /** The instruction the verifier rejected, when its log says which. */
  readonly insn: number | undefined;

  constructor(
    readonly errno: SysError,
    readonly log: string,
    listing?: ProgramListing,
  ) {
    const lines = log.trim().split("\n");
    const { complaint, insn } = rejected(lines);
    const label = insn === undefined ? undefined : listing?.nameOf(insn);
    const at = insn === undefined ? "" : ` at insn ${insn}${label ? ` (${label})` : ""}`;
    let hint = `the last lines of its log:\n  ${lines.slice(-6).join("\n  ")}`;
    if (insn !== undefined && listing) {
      hint = `the program around insn ${insn}:\n  ${listing.lines(insn - 3, insn + 3, insn).join("\n  ")}\n${hint}`;
    }
    super("unsupported", `the kernel's verifier rejected the BPF program (${errno.errnoName})${at}: ${complaint}`, {
      hint,
    });
    this.insn = insn;
  }
}

/** The verifier's complaint (the last line before its statistics) and the instruction it names or stopped at. */
function rejected(lines: readonly string[]): { complaint: string; insn?: number } {
  let at = lines.length - 1;
  if (at > 0 && lines[at]?.startsWith("processed ")) at--;
  const complaint = lines[at] ?? "";
  let insn = /\binsn (\d+)\b/.exec(complaint)?.[1];
  for (let i = at; insn === undefined && i >= 0; i--) insn = /^(\d+): \(/.exec(lines[i] ?? "")?.[1];
  return { complaint, insn: insn === undefined ? undefined : Number(insn) };
}

export interface ProgLoad {
  type: number;
  insns: Buffer;
  /** The program's listing, so that a verifier error can name the label of the instruction it rejects. */
  listing?: ProgramListing;
  license: string;
  name: string;
  expectedAttachType?: number;
  /** for tracing programs: the BTF id (in vmlinux) of the function they attach to */
  attachBtfId?: number;
}

/** Load a program; on failure load it again with the verifier's log and throw a VerifierError with it. */
export function progLoad(p: ProgLoad): number {
  const license = cString(p.license);
  const attempt = (log?: Buffer): number => {
    const attr = Buffer.alloc(ATTR_SIZE);
    attr.writeUInt32LE(p.type, 0);
    attr.writeUInt32LE(p.insns.length / 8, 4);
    attr.writeBigUInt64LE(BigInt(addressOf(p.insns)), 8);
    attr.writeBigUInt64LE(BigInt(addressOf(license)), 16);
    if (log) {
      attr.writeUInt32LE(1, 24); // log_level
      attr.writeUInt32LE(log.length, 28);
      attr.writeBigUInt64LE(BigInt(addressOf(log)), 32);
    }
    attr.write(p.name.slice(0, BPF_OBJ_NAME_LEN - 1), 48, "latin1");
    attr.writeUInt32LE(p.expectedAttachType ?? 0, 68);
    attr.writeUInt32LE(p.attachBtfId ?? 0, 108);
    // BPF_PROG_LOAD fails now and then with EAGAIN: the verifier gives up when it sees a signal pending
    // (do_check in kernel/bpf/verifier.c). Loading a tracing program takes milliseconds, and under a profiler
    // (Node's --cpu-prof) a third of the loads failed so. libbpf tries again too.
    for (let tries = 1; ; tries++) {
      try {
        return bpf("PROG_LOAD", attr);
      } catch (e) {
        if (!(e instanceof SysError) || e.errnoName !== "EAGAIN" || tries >= 10) throw e;
      }
    }
  };
  try {
    return attempt();
  } catch (e) {
    if (!(e instanceof SysError) || e.errnoName === "EPERM") throw e;
    const log = Buffer.alloc(1 << 20);
    try {
      return attempt(log);
    } catch (e2) {
      if (!(e2 instanceof SysError)) throw e2;
      const text = log.toString("latin1", 0, Math.max(0, log.indexOf(0)));
      if (!text) throw e2;
      throw new VerifierError(e2, text, p.listing);
    }
  }
}

/**
 * Load a tracing program on a kernel function's entry or return (BPF_TRACE_FENTRY, FEXIT: Linux 5.5) or on a BTF
 * raw tracepoint (BPF_TRACE_RAW_TP: 5.5), the function or the tracepoint's btf_trace_* typedef named by its id in
 * vmlinux's BTF. GPL-compatible: the ring buffer's helpers are for such programs.
 */
export function tracingProgLoad(
  p: Pick<ProgLoad, "insns" | "listing" | "name"> & { attachType: number; attachBtfId: number },
): number {
  return progLoad({
    ...p,
    type: BPF_PROG_TYPE_TRACING,
    expectedAttachType: p.attachType,
    license: "Dual MIT/GPL",
  });
}

/**
 * Load a program for a perf tracepoint event (BPF_PROG_TYPE_TRACEPOINT: a syscall's enter or exit, whose record is
 * its context; Linux 4.7), attached with tracepointAttach. GPL-compatible, as the tracing programs.
 */
export function tracepointProgLoad(p: Pick<ProgLoad, "insns" | "listing" | "name">): number {
  return progLoad({ ...p, type: BPF_PROG_TYPE_TRACEPOINT, license: "Dual MIT/GPL" });
}

/** Attach a tracepoint program to a perf event (sys/perf.ts): a BPF_PERF_EVENT link (5.15), detached on close. */
export function tracepointAttach(progFd: number, perfFd: number): number {
  return linkCreate(progFd, perfFd, BPF_PERF_EVENT);
}

/** Attach a tracing program (fentry, fexit, tp_btf) where it was loaded for: its link, which detaches on close. */
export function tracingAttach(progFd: number): number {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeBigUInt64LE(0n, 0); // name: none, the attach point is the program's own
  attr.writeUInt32LE(progFd, 8);
  return bpf("RAW_TRACEPOINT_OPEN", attr);
}

/** A ring buffer map of `size` bytes (a power of 2, whole pages: BPF_MAP_TYPE_RINGBUF, Linux 5.8). */
export function ringbufCreate(name: string, size: number): number {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(BPF_MAP_TYPE_RINGBUF, 0);
  attr.writeUInt32LE(size, 12); // max_entries: the data area's size; key and value sizes are 0
  attr.write(name.slice(0, BPF_OBJ_NAME_LEN - 1), 28, "latin1");
  return bpf("MAP_CREATE", attr);
}

/** Attach a program to a cgroup through a link (always multi-attach: other programs keep working). */
export function linkCreate(progFd: number, targetFd: number, attachType: number): number {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(progFd, 0);
  attr.writeUInt32LE(targetFd, 4);
  attr.writeUInt32LE(attachType, 8);
  return bpf("LINK_CREATE", attr);
}

/**
 * Load a BPF iterator: a tracing program (BPF_TRACE_ITER) on the kernel's iterator function whose BTF id is
 * `attachBtfId` (bpf_iter_tcp, bpf_iter_task_file). Its license is GPL-compatible: bpf_seq_write and the
 * socket casts (bpf_sock_from_file, bpf_skc_to_*) are for such programs only.
 */
export function iterProgLoad(p: Pick<ProgLoad, "insns" | "listing" | "name"> & { attachBtfId: number }): number {
  return progLoad({ ...p, type: BPF_PROG_TYPE_TRACING, expectedAttachType: BPF_TRACE_ITER, license: "Dual MIT/GPL" });
}

/**
 * Attach an iterator program (BPF_TRACE_ITER) through a link. `iterInfo` is its union bpf_iter_link_info, for
 * example the process that a task iterator walks.
 */
export function iterLinkCreate(progFd: number, iterInfo: Buffer): number {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(progFd, 0);
  attr.writeUInt32LE(BPF_TRACE_ITER, 8);
  attr.writeBigUInt64LE(BigInt(addressOf(iterInfo)), 16);
  attr.writeUInt32LE(iterInfo.length, 24);
  return bpf("LINK_CREATE", attr);
}

/** A new run of an iterator link: read(2) the returned fd to its end to get what the program wrote. */
export function iterCreate(linkFd: number): number {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(linkFd, 0);
  return bpf("ITER_CREATE", attr);
}

/**
 * iterCreate, for an iterator that walks the network namespace of whoever creates it (the TCP iterator:
 * bpf_iter_init_seq_net takes current's): this thread joins the namespace that the nsfs file `netnsFd` names for
 * the one BPF_ITER_CREATE call and comes back to `ownNetnsFd` at once. The walk itself may be read from anywhere.
 */
export function iterCreateIn(linkFd: number, netnsFd: number, ownNetnsFd: number): number {
  setns(netnsFd, CLONE_NEWNET);
  try {
    return iterCreate(linkFd);
  } finally {
    // Failing to come back would leave tcpka in a namespace it did not choose: nothing may go on then.
    setns(ownNetnsFd, CLONE_NEWNET);
  }
}

/** Swap the program behind a link in one step: no moment without a program. */
export function linkUpdate(linkFd: number, newProgFd: number): void {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(linkFd, 0);
  attr.writeUInt32LE(newProgFd, 4);
  bpf("LINK_UPDATE", attr);
}

/** Detach a link's program now, even while the link is still pinned or open elsewhere. */
export function linkDetach(linkFd: number): void {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(linkFd, 0);
  bpf("LINK_DETACH", attr);
}

export function objPin(fd: number, path: string): void {
  const p = cString(path);
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeBigUInt64LE(BigInt(addressOf(p)), 0);
  attr.writeUInt32LE(fd, 8);
  bpf("OBJ_PIN", attr);
}

export function objGet(path: string): number {
  const p = cString(path);
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeBigUInt64LE(BigInt(addressOf(p)), 0);
  return bpf("OBJ_GET", attr);
}

/** The first `size` bytes of an object's bpf_*_info (the kernel fills no more than it is given). */
function objInfo(fd: number, size: number): Buffer {
  const info = Buffer.alloc(size);
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(fd, 0);
  attr.writeUInt32LE(info.length, 4);
  attr.writeBigUInt64LE(BigInt(addressOf(info)), 8);
  bpf("OBJ_GET_INFO_BY_FD", attr);
  return info;
}

/**
 * The kernel's id of a loaded program (struct bpf_prog_info: type @0, id @4). Ids are handed out cyclically up to
 * INT_MAX (idr_alloc_cyclic in bpf_prog_alloc_id), so an id names one program until the counter wraps.
 */
export function progId(progFd: number): number {
  return objInfo(progFd, 8).readUInt32LE(4);
}

/**
 * Have the kernel time every BPF program run for as long as the returned fd is open (BPF_ENABLE_STATS with
 * BPF_STATS_RUN_TIME, Linux 5.8; the same as the kernel.bpf_stats_enabled sysctl, but ending with the fd): each run
 * adds its sched_clock() time to the program's run_time_ns and 1 to run_cnt (bpf_prog_run, __bpf_prog_run).
 */
export function enableRunTimeStats(): number {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(0, 0); // BPF_STATS_RUN_TIME
  return bpf("ENABLE_STATS", attr);
}

/** A program's run_time_ns and run_cnt (struct bpf_prog_info @192, @200), by its id (BPF_PROG_GET_FD_BY_ID). */
export function progRunStats(id: number): { ns: bigint; runs: bigint } {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(id, 0);
  const fd = bpf("PROG_GET_FD_BY_ID", attr);
  try {
    const info = objInfo(fd, 208);
    return { ns: info.readBigUInt64LE(192), runs: info.readBigUInt64LE(200) };
  } finally {
    close(fd);
  }
}

export interface LinkInfo {
  id: number;
  progId: number;
  cgroupId: bigint;
  attachType: number;
}

/**
 * struct bpf_link_info of a cgroup link: type @0, id @4, prog_id @8 (the program it runs now: LINK_UPDATE changes
 * it), cgroup.cgroup_id @16 (0 once the link is detached: by LINK_DETACH, or by the kernel when the cgroup is
 * removed, bpf_cgroup_link_auto_detach), cgroup.attach_type @24.
 */
export function linkInfo(linkFd: number): LinkInfo {
  const info = objInfo(linkFd, 64);
  return {
    id: info.readUInt32LE(4),
    progId: info.readUInt32LE(8),
    cgroupId: info.readBigUInt64LE(16),
    attachType: info.readUInt32LE(24),
  };
}

/** A one-entry array map whose value holds `size` bytes: tcpka keeps an enforcement's description in it. */
export function blobMapCreate(name: string, size: number): number {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(BPF_MAP_TYPE_ARRAY, 0);
  attr.writeUInt32LE(4, 4); // key_size
  attr.writeUInt32LE(size, 8); // value_size
  attr.writeUInt32LE(1, 12); // max_entries
  attr.write(name.slice(0, BPF_OBJ_NAME_LEN - 1), 28, "latin1");
  return bpf("MAP_CREATE", attr);
}

/**
 * The smallest BTF a local storage map can name its key and value by: one type, a 32-bit signed "int" (type id 1).
 * Layout (include/uapi/linux/btf.h): struct btf_header (magic 0xeB9F, version 1, hdr_len 24, then the type and
 * string sections' offsets and lengths, relative to the header's end), one struct btf_type (name_off, info =
 * BTF_KIND_INT << 24, size 4) with its u32 of BTF_INT_ENCODING SIGNED << 24 | 32 bits, and the strings "\0int\0".
 */
function intBtf(): Buffer {
  const types = Buffer.alloc(16);
  types.writeUInt32LE(1, 0); // name_off: "int"
  types.writeUInt32LE(1 << 24, 4); // BTF_KIND_INT, vlen 0
  types.writeUInt32LE(4, 8); // size
  types.writeUInt32LE((1 << 24) | 32, 12); // BTF_INT_SIGNED, offset 0, 32 bits
  const strings = Buffer.from("\0int\0", "latin1");
  const header = Buffer.alloc(24);
  header.writeUInt16LE(0xeb9f, 0);
  header.writeUInt8(1, 2); // version
  header.writeUInt32LE(24, 4); // hdr_len
  header.writeUInt32LE(0, 8); // type_off
  header.writeUInt32LE(types.length, 12);
  header.writeUInt32LE(types.length, 16); // str_off
  header.writeUInt32LE(strings.length, 20);
  return Buffer.concat([header, types, strings]);
}

/**
 * A socket local storage map (BPF_MAP_TYPE_SK_STORAGE, Linux 5.2) of 4-byte values: a program marks a socket
 * by getting its storage with BPF_SK_STORAGE_GET_F_CREATE, another finds the mark; the kernel frees it with the
 * socket. bpf_local_storage_map_alloc_check wants BTF ids for key and value, no preallocation and max_entries 0.
 */
export function skStorageMapCreate(name: string): number {
  const btf = intBtf();
  const load = Buffer.alloc(ATTR_SIZE);
  load.writeBigUInt64LE(BigInt(addressOf(btf)), 0);
  load.writeUInt32LE(btf.length, 16); // btf_size
  const btfFd = bpf("BTF_LOAD", load);
  try {
    const attr = Buffer.alloc(ATTR_SIZE);
    attr.writeUInt32LE(BPF_MAP_TYPE_SK_STORAGE, 0);
    attr.writeUInt32LE(4, 4); // key_size: int
    attr.writeUInt32LE(4, 8); // value_size
    attr.writeUInt32LE(0, 12); // max_entries
    attr.writeUInt32LE(BPF_F_NO_PREALLOC, 16);
    attr.write(name.slice(0, BPF_OBJ_NAME_LEN - 1), 28, "latin1");
    attr.writeUInt32LE(btfFd, 48);
    attr.writeUInt32LE(1, 52); // btf_key_type_id
    attr.writeUInt32LE(1, 56); // btf_value_type_id
    return bpf("MAP_CREATE", attr);
  } finally {
    close(btfFd);
  }
}

/**
 * A hash map (preallocated: the kernel's default, which every program type may use, also before the
 * bpf_mem_alloc of Linux 6.1) of up to `maxEntries` keys of `keySize` bytes with values of `valueSize` bytes.
 */
export function hashMapCreate(
  name: string,
  keySize: number,
  valueSize: number,
  maxEntries: number,
  type = BPF_MAP_TYPE_HASH,
): number {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(type, 0);
  attr.writeUInt32LE(keySize, 4);
  attr.writeUInt32LE(valueSize, 8);
  attr.writeUInt32LE(maxEntries, 12);
  attr.write(name.slice(0, BPF_OBJ_NAME_LEN - 1), 28, "latin1");
  return bpf("MAP_CREATE", attr);
}

/**
 * Put `count` entries into a map: `keys` and `values` hold them one after the other. One BPF_MAP_UPDATE_BATCH
 * (Linux 5.6; attr.batch: keys @16, values @24, count @32, map_fd @36) where the kernel has it; else, or when the
 * map type does not batch, one BPF_MAP_UPDATE_ELEM per entry from the first that the batch did not put in (the
 * kernel writes back in count how many it did).
 */
export function mapUpdateAll(mapFd: number, keys: Buffer, values: Buffer, count: number): void {
  if (count === 0) return;
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeBigUInt64LE(BigInt(addressOf(keys)), 16);
  attr.writeBigUInt64LE(BigInt(addressOf(values)), 24);
  attr.writeUInt32LE(count, 32);
  attr.writeUInt32LE(mapFd, 36);
  try {
    bpf("MAP_UPDATE_BATCH", attr);
    return;
  } catch (e) {
    // EINVAL: no such command (before 5.6); ENOTSUPP (524)/EOPNOTSUPP: this map type has no batch operations.
    // Both come before the first entry is put in (generic_map_update_batch checks the command and its flags
    // first), and then the kernel leaves count as it was given: so nothing is in yet. An entry's own error
    // (E2BIG, ENOMEM, EFAULT) is thrown.
    if (!(e instanceof SysError) || !["EINVAL", "ENOTSUPP", "EOPNOTSUPP"].includes(e.errnoName)) throw e;
  }
  const k = keys.length / count;
  const v = values.length / count;
  for (let i = 0; i < count; i++) {
    mapUpdate(mapFd, keys.subarray(i * k, (i + 1) * k), values.subarray(i * v, (i + 1) * v));
  }
}

/** One BPF_MAP_UPDATE_ELEM (flags BPF_ANY: add or replace). */
export function mapUpdate(mapFd: number, key: Buffer, value: Buffer): void {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(mapFd, 0);
  attr.writeBigUInt64LE(BigInt(addressOf(key)), 8);
  attr.writeBigUInt64LE(BigInt(addressOf(value)), 16);
  bpf("MAP_UPDATE_ELEM", attr);
}

function mapElem(cmd: "MAP_LOOKUP_ELEM" | "MAP_UPDATE_ELEM", mapFd: number, value: Buffer): void {
  const key = Buffer.alloc(4);
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(mapFd, 0);
  attr.writeBigUInt64LE(BigInt(addressOf(key)), 8);
  attr.writeBigUInt64LE(BigInt(addressOf(value)), 16);
  bpf(cmd, attr);
}

export function blobMapWrite(mapFd: number, value: Buffer): void {
  mapElem("MAP_UPDATE_ELEM", mapFd, value);
}

/** A per-CPU array of `entries` u64 counters, which programs add to without sharing a cache line. */
export function counterMapCreate(name: string, entries: number): number {
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(BPF_MAP_TYPE_PERCPU_ARRAY, 0);
  attr.writeUInt32LE(4, 4); // key_size
  attr.writeUInt32LE(8, 8); // value_size
  attr.writeUInt32LE(entries, 12);
  attr.write(name.slice(0, BPF_OBJ_NAME_LEN - 1), 28, "latin1");
  return bpf("MAP_CREATE", attr);
}

/** The CPUs a per-CPU map has a value for: /sys/devices/system/cpu/possible ("0-1", "0,2-3"), highest + 1. */
function possibleCpus(): number {
  let most = 0;
  for (const part of readFileSync("/sys/devices/system/cpu/possible", "latin1").trim().split(",")) {
    const last = Number(part.split("-").at(-1));
    if (Number.isInteger(last)) most = Math.max(most, last + 1);
  }
  return Math.max(1, most);
}

/** Counter `index` of a counterMapCreate map, summed over the CPUs (BPF_MAP_LOOKUP_ELEM gives one u64 each). */
export function counterRead(mapFd: number, index: number): bigint {
  const key = Buffer.alloc(4);
  key.writeUInt32LE(index);
  const cpus = possibleCpus();
  const value = Buffer.alloc(8 * cpus);
  const attr = Buffer.alloc(ATTR_SIZE);
  attr.writeUInt32LE(mapFd, 0);
  attr.writeBigUInt64LE(BigInt(addressOf(key)), 8);
  attr.writeBigUInt64LE(BigInt(addressOf(value)), 16);
  bpf("MAP_LOOKUP_ELEM", attr);
  let sum = 0n;
  for (let c = 0; c < cpus; c++) sum += value.readBigUInt64LE(8 * c);
  return sum;
}

export function blobMapRead(mapFd: number, size: number): Buffer {
  const value = Buffer.alloc(size);
  mapElem("MAP_LOOKUP_ELEM", mapFd, value);
  return value;
}

/**
 * Take every entry out of a hash map of `keySize`-byte keys and `valueSize`-byte values (at most `room`):
 * BPF_MAP_LOOKUP_AND_DELETE_BATCH (Linux 5.6; attr.batch: in_batch @0, out_batch @8, keys @16, values @24,
 * count @32, map_fd @36), which hands out whole buckets until it answers ENOENT; before 5.6 (EINVAL), one
 * BPF_MAP_GET_NEXT_KEY, LOOKUP_ELEM and DELETE_ELEM per entry. A program may add entries meanwhile: only those
 * handed out are deleted.
 */
export function mapDrain(
  mapFd: number,
  keySize: number,
  valueSize: number,
  room: number,
): { keys: Buffer; values: Buffer; count: number } {
  const keys = Buffer.alloc(keySize * room);
  const values = Buffer.alloc(valueSize * room);
  const token = Buffer.alloc(8); // the htab's batch token: a u32 bucket index
  const attr = Buffer.alloc(ATTR_SIZE);
  let count = 0;
  for (let first = true; count < room; first = false) {
    attr.fill(0);
    if (!first) attr.writeBigUInt64LE(BigInt(addressOf(token)), 0);
    attr.writeBigUInt64LE(BigInt(addressOf(token)), 8);
    attr.writeBigUInt64LE(BigInt(addressOf(keys) + count * keySize), 16);
    attr.writeBigUInt64LE(BigInt(addressOf(values) + count * valueSize), 24);
    attr.writeUInt32LE(room - count, 32);
    attr.writeUInt32LE(mapFd, 36);
    try {
      bpf("MAP_LOOKUP_AND_DELETE_BATCH", attr);
    } catch (e) {
      if (!(e instanceof SysError)) throw e;
      if (e.errnoName === "ENOENT") {
        count += attr.readUInt32LE(32);
        break;
      }
      if (first && e.errnoName === "EINVAL") return drainOneByOne(mapFd, keys, values, keySize, valueSize, room);
      throw e;
    }
    const got = attr.readUInt32LE(32);
    if (got === 0) break; // nothing handed out and no ENOENT: do not ask forever
    count += got;
  }
  return { keys, values, count };
}

function drainOneByOne(
  mapFd: number,
  keys: Buffer,
  values: Buffer,
  keySize: number,
  valueSize: number,
  room: number,
): { keys: Buffer; values: Buffer; count: number } {
  const attr = Buffer.alloc(ATTR_SIZE);
  let count = 0;
  for (; count < room; count++) {
    const key = keys.subarray(count * keySize, (count + 1) * keySize);
    attr.fill(0);
    attr.writeUInt32LE(mapFd, 0);
    // key NULL: the first key (BPF_MAP_GET_NEXT_KEY); the one before was deleted, so always the first
    attr.writeBigUInt64LE(BigInt(addressOf(key)), 16);
    try {
      bpf("MAP_GET_NEXT_KEY", attr);
    } catch (e) {
      if (e instanceof SysError && e.errnoName === "ENOENT") break;
      throw e;
    }
    attr.fill(0);
    attr.writeUInt32LE(mapFd, 0);
    attr.writeBigUInt64LE(BigInt(addressOf(key)), 8);
    attr.writeBigUInt64LE(BigInt(addressOf(values) + count * valueSize), 16);
    bpf("MAP_LOOKUP_ELEM", attr);
    bpf("MAP_DELETE_ELEM", attr);
  }
  return { keys, values, count };
}
