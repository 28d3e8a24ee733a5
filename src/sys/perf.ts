/**
 * The kernel's trace events as perf events, for BPF programs of type BPF_PROG_TYPE_TRACEPOINT (`tcpka watch`'s
 * setsockopt programs): an event's id and its record's layout from tracefs, and perf_event_open(2) of it.
 *
 * tracefs is read where it is mounted already (/sys/kernel/tracing), else through a mount of its own that is never
 * attached anywhere: fsopen("tracefs"), fsconfig(FSCONFIG_CMD_CREATE), fsmount() give a mount as a file
 * descriptor (Linux 5.2), read through /proc/self/fd/N and gone with the fd. No directory is mounted on, so
 * nothing can be left behind (not even by a SIGKILL), no other process sees it, and two tcpka never share one.
 * Not /sys/kernel/debug/tracing: looking into it makes debugfs mount tracefs there for good (trace_automount).
 * tracefs has one superblock (get_tree_single), and every new mount of it hands the superblock its own options
 * (tracefs_get_tree → tracefs_reconfigure); with none given no file's owner or mode changes
 * (tracefs_apply_options), but the uid=/gid=/mode= another mount was given is no longer what mountinfo lists:
 * which is why a mount that is there already is read first.
 */
import { readFileSync, statfsSync } from "node:fs";
import {
  FSCONFIG_CMD_CREATE,
  FSMOUNT_CLOEXEC,
  FSOPEN_CLOEXEC,
  MOUNT_ATTR_NODEV,
  MOUNT_ATTR_NOEXEC,
  MOUNT_ATTR_NOSUID,
  MOUNT_ATTR_RDONLY,
  PERF_ATTR_SIZE_VER5,
  PERF_FLAG_FD_CLOEXEC,
  PERF_TYPE_TRACEPOINT,
  SYS_fsconfig,
  SYS_fsmount,
  SYS_fsopen,
  SYS_perf_event_open,
} from "../kernel/constants.js";
import { addressOf, close, syscall } from "./libc.js";

// include/uapi/linux/magic.h
const TRACEFS_MAGIC = 0x74726163;
const TRACEFS = "/sys/kernel/tracing";

/** A trace event: its id (the perf event's config) and each field of its record: offset and size in bytes. */
export interface TraceEvent {
  id: number;
  fields: Map<string, { offset: number; size: number }>;
}

/**
 * The fields of an event's `format` file ("\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;"): the name is the
 * last word before the semicolon (an array's brackets dropped).
 */
export function parseFormat(text: string): Map<string, { offset: number; size: number }> {
  const fields = new Map<string, { offset: number; size: number }>();
  for (const m of text.matchAll(/^\s*field:([^;]*);\s*offset:(\d+);\s*size:(\d+);/gm)) {
    const name = /([A-Za-z_][A-Za-z0-9_]*)(\[[^\]]*\])?\s*$/.exec(m[1] as string)?.[1];
    if (name) fields.set(name, { offset: Number(m[2]), size: Number(m[3]) });
  }
  return fields;
}

function readEvent(root: string, system: string, event: string): TraceEvent {
  const dir = `${root}/events/${system}/${event}`;
  const id = Number(readFileSync(`${dir}/id`, "latin1").trim());
  if (!Number.isInteger(id) || id <= 0) throw new Error(`${system}:${event} has no id in tracefs`);
  return { id, fields: parseFormat(readFileSync(`${dir}/format`, "latin1")) };
}

/**
 * The trace events `system:event` of each name in `events`, from tracefs (see the top: the mount that is there,
 * else a detached one of tcpka's own, closed before this returns). Throws with why not.
 */
export function traceEvents(system: string, events: readonly string[]): TraceEvent[] {
  let mounted = false;
  try {
    mounted = statfsSync(TRACEFS).type === TRACEFS_MAGIC;
  } catch {
    /* not there */
  }
  if (mounted) return events.map((e) => readEvent(TRACEFS, system, e));
  const name = Buffer.from("tracefs\0", "latin1");
  const fs = syscall("fsopen", SYS_fsopen, addressOf(name), FSOPEN_CLOEXEC);
  try {
    syscall("fsconfig", SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, 0, 0, 0);
    const attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    const mnt = syscall("fsmount", SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs);
    try {
      return events.map((e) => readEvent(`/proc/self/fd/${mnt}`, system, e));
    } finally {
      close(mnt);
    }
  } finally {
    close(fs);
  }
}

/** The first online CPU (/sys/devices/system/cpu/online: "0-1", "1,3-5"). */
function firstOnlineCpu(): number {
  try {
    const first = Number(/^(\d+)/.exec(readFileSync("/sys/devices/system/cpu/online", "latin1"))?.[1]);
    return Number.isInteger(first) ? first : 0;
  } catch {
    return 0;
  }
}

/**
 * A perf event of the trace event `id`, for a BPF program to be attached to (a BPF_PERF_EVENT link). One is
 * enough for every CPU: a tracepoint's BPF programs hang on the event itself (trace_event_call's prog_array, run
 * by perf_trace_run_bpf_submit; for syscalls perf_call_bpf_enter / perf_call_bpf_exit), whichever CPU it fires on.
 * A tracepoint event takes pid -1 only with a CPU (perf_event_open refuses pid -1 with cpu -1), so the first
 * online one; the event samples nothing, it only keeps the tracepoint's probe registered while it is open.
 */
export function perfTracepointOpen(id: number): number {
  const attr = Buffer.alloc(PERF_ATTR_SIZE_VER5);
  attr.writeUInt32LE(PERF_TYPE_TRACEPOINT, 0);
  attr.writeUInt32LE(PERF_ATTR_SIZE_VER5, 4);
  attr.writeBigUInt64LE(BigInt(id), 8); // config
  return syscall(
    "perf_event_open",
    SYS_perf_event_open,
    addressOf(attr),
    -1,
    firstOnlineCpu(),
    -1,
    PERF_FLAG_FD_CLOEXEC,
  );
}
