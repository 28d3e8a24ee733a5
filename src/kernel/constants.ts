/**
 * Kernel constants used by tcpka, each with the header it comes from. The only place numbers like these live.
 */

// include/linux/socket.h
export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;

// include/linux/net.h (enum sock_type) and include/linux/net.h flags
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_RAW = 3;
export const SOCK_CLOEXEC = 0o2000000;

// include/uapi/asm-generic/socket.h
export const SOL_SOCKET = 1;
// include/uapi/linux/in.h: bind an address that is not (yet) up, e.g. 127.0.0.1 in a namespace whose lo is down
export const SOL_IP = 0;
export const IP_FREEBIND = 15;
// include/uapi/linux/sched.h: setns(2) into a network namespace, a cgroup namespace
export const CLONE_NEWNET = 0x40000000;
export const CLONE_NEWCGROUP = 0x02000000;
export const SO_TYPE = 3;
// SO_RCVTIMEO_OLD: a struct timeval of the native layout (two 8-byte fields on 64-bit)
export const SO_RCVTIMEO = 20;
// the receive buffer's size beyond net.core.rmem_max, with CAP_NET_ADMIN
export const SO_RCVBUFFORCE = 33;
// include/linux/socket.h
export const MSG_DONTWAIT = 0x40;
export const SO_KEEPALIVE = 9;
export const SO_DOMAIN = 39;
export const SO_PROTOCOL = 38;

// include/uapi/linux/in.h
export const IPPROTO_TCP = 6;

// include/uapi/linux/time.h: the clock whose resolution is one tick (posix_get_coarse_res)
export const CLOCK_MONOTONIC_COARSE = 6;
export const SOL_TCP = IPPROTO_TCP;

// include/uapi/linux/tcp.h
export const TCP_KEEPIDLE = 4;
export const TCP_KEEPINTVL = 5;
export const TCP_KEEPCNT = 6;
export const TCP_USER_TIMEOUT = 18;

// include/net/tcp.h: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT (checked in do_tcp_setsockopt)
export const MAX_TCP_KEEPIDLE = 32767;
export const MAX_TCP_KEEPINTVL = 32767;
export const MAX_TCP_KEEPCNT = 127;
// TCP_USER_TIMEOUT is an int of milliseconds; negative values give EINVAL (do_tcp_setsockopt).
export const MAX_TCP_USER_TIMEOUT_MS = 2 ** 31 - 1;

// include/uapi/asm-generic/fcntl.h (x86_64 and arm64 alike); node:fs does not export it
export const O_PATH = 0o10000000;

// include/linux/exportfs.h (enum fid_type): a kernfs node (a cgroup directory) named by its 64-bit id
export const FILEID_KERNFS = 0xfe;

// include/uapi/linux/stat.h
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;

// include/uapi/linux/netlink.h
export const NETLINK_SOCK_DIAG = 4;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_HDRLEN = 16;
export const NETLINK_CONNECTOR = 11;

// include/uapi/linux/connector.h and cn_proc.h: the process events connector (drivers/connector/cn_proc.c)
export const CN_IDX_PROC = 1;
export const CN_VAL_PROC = 1;
/** struct cn_msg: cb_id (idx, val), seq, ack (u32 each), len, flags (u16 each); its data follows */
export const CN_MSG_LEN = 20;
export const PROC_CN_MCAST_LISTEN = 1;
export const PROC_EVENT_NONE = 0;
export const PROC_EVENT_EXEC = 0x2;
export const PROC_EVENT_UID = 0x4;
export const PROC_EVENT_COMM = 0x200;
/** struct proc_event: what, cpu (u32), timestamp_ns (u64), then the union event_data */
export const PROC_EVENT_DATA = 16;

// include/uapi/linux/sock_diag.h
export const SOCK_DIAG_BY_FAMILY = 20;

// include/uapi/linux/inet_diag.h
export const INET_DIAG_REQ_V2_LEN = 56;
export const INET_DIAG_MSG_LEN = 72;

// Timer codes of /proc/net/tcp `tr` and inet_diag_msg.idiag_timer (get_tcp4_sock, inet_sk_diag_fill).
export const TIMER_CODES = {
  0: "off",
  1: "on", // retransmit, RACK reordering or tail loss probe
  2: "keepalive", // sk_timer: keepalive, or the FIN_WAIT2 timer of an orphan
  3: "timewait",
  4: "persist", // zero-window probe
  5: "delack",
} as const;

// arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h: the same numbers on both.
export const SYS_pidfd_open = 434;
export const SYS_pidfd_getfd = 438;

// bpf(2): arch/x86/entry/syscalls/syscall_64.tbl (321), include/uapi/asm-generic/unistd.h (280, arm64).
export const SYS_bpf = process.arch === "arm64" ? 280 : 321;
// perf_event_open(2): 298 on x86_64, 241 in the generic table (arm64).
export const SYS_perf_event_open = process.arch === "arm64" ? 241 : 298;
// The new mount API (Linux 5.2): fsopen, fsconfig, fsmount; the same numbers on both.
export const SYS_fsopen = 430;
export const SYS_fsconfig = 431;
export const SYS_fsmount = 432;
// include/uapi/linux/mount.h
export const FSOPEN_CLOEXEC = 1;
export const FSCONFIG_CMD_CREATE = 6;
export const FSMOUNT_CLOEXEC = 1;
export const MOUNT_ATTR_RDONLY = 0x1;
export const MOUNT_ATTR_NOSUID = 0x2;
export const MOUNT_ATTR_NODEV = 0x4;
export const MOUNT_ATTR_NOEXEC = 0x8;
// include/uapi/linux/perf_event.h: a tracepoint event (config: its id in tracefs), the fd made close-on-exec,
// the size of struct perf_event_attr as of PERF_ATTR_SIZE_VER5 (every field a tracepoint needs)
export const PERF_TYPE_TRACEPOINT = 2;
export const PERF_FLAG_FD_CLOEXEC = 8;
export const PERF_ATTR_SIZE_VER5 = 112;
// include/uapi/linux/magic.h: the superblock of socket files (sockfs, net/socket.c)
export const SOCKFS_MAGIC = 0x534f434b;

// include/uapi/linux/bpf.h: enum bpf_cmd, bpf_prog_type, bpf_attach_type, bpf_map_type
export const BPF_CMD = {
  MAP_CREATE: 0,
  MAP_LOOKUP_ELEM: 1,
  MAP_UPDATE_ELEM: 2,
  MAP_DELETE_ELEM: 3,
  MAP_GET_NEXT_KEY: 4,
  PROG_LOAD: 5,
  OBJ_PIN: 6,
  OBJ_GET: 7,
  PROG_GET_FD_BY_ID: 13,
  OBJ_GET_INFO_BY_FD: 15,
  RAW_TRACEPOINT_OPEN: 17,
  BTF_LOAD: 18,
  MAP_LOOKUP_AND_DELETE_BATCH: 25,
  MAP_UPDATE_BATCH: 26,
  LINK_CREATE: 28,
  LINK_UPDATE: 29,
  ITER_CREATE: 33,
  LINK_DETACH: 34,
  ENABLE_STATS: 32,
} as const;
export const BPF_PROG_TYPE_SOCK_OPS = 13;
export const BPF_PROG_TYPE_TRACING = 26;
// a program on a perf tracepoint event (a syscall's enter or exit), attached by a BPF_PERF_EVENT link (5.15)
export const BPF_PROG_TYPE_TRACEPOINT = 5;
export const BPF_PERF_EVENT = 41;
export const BPF_TRACE_ITER = 28;
// enum bpf_attach_type: a tracing program on a BTF raw tracepoint, or on a kernel function's entry or return
export const BPF_TRACE_RAW_TP = 23;
export const BPF_TRACE_FENTRY = 24;
export const BPF_TRACE_FEXIT = 25;
export const BPF_MAP_TYPE_RINGBUF = 27;
export const BPF_PROG_TYPE_CGROUP_SOCKOPT = 25;
export const BPF_CGROUP_SOCK_OPS = 3;
export const BPF_CGROUP_SETSOCKOPT = 22;
export const BPF_MAP_TYPE_HASH = 1;
export const BPF_MAP_TYPE_LRU_HASH = 9;
export const BPF_MAP_TYPE_ARRAY = 2;
export const BPF_MAP_TYPE_PERCPU_ARRAY = 6;
export const BPF_MAP_TYPE_SK_STORAGE = 24;
/** map_flags: BPF_F_NO_PREALLOC, which local storage maps must have */
export const BPF_F_NO_PREALLOC = 1;
export const BPF_OBJ_NAME_LEN = 16;

// include/uapi/asm-generic/fcntl.h: an open(2) flag (not in Node's fs.constants), and flock(2) operations
export const O_RDONLY = 0;
export const O_CLOEXEC = 0o2000000;
export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
