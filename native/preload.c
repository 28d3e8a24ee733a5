/*
 * libtcpka.so: the LD_PRELOAD shim of tcpka. It turns TCP keepalive on for the connections of a program that
 * never asked for it, and reports what the program itself set (for `tcpka trace`). This file holds the hooks, the
 * configuration and the policy; events.c (events.h) writes the events and the shim's one-line reports; shim.h is
 * what the two share. native/build.sh builds both into the one library.
 *
 * It runs inside other people's programs, so:
 *  - configuration is parsed once, when the library is loaded; invalid configuration disables it entirely;
 *  - the program's calls go through unchanged: same arguments, same return value, same errno;
 *  - no malloc, no locks, nothing that blocks on the hot path; per-fd state lives in a static table;
 *  - everything here is async-signal-safe (no stdio), and safe across threads, fork() and exec().
 *
 * Environment (written by `tcpka run` / `tcpka trace`, which validate it first):
 *   TCPKA_MODE        strengthen (default): keepalive on, with the strengthen rule of src/settings.ts between the
 *                     program's values and the requested ones (see strengthen() below), never weaker than either;
 *                     force: exactly the requested values; observe: change nothing, only report.
 *   TCPKA_IDLE, TCPKA_INTVL, TCPKA_CNT    seconds, seconds, probes (kernel limits 1..32767, 1..32767, 1..127)
 *   TCPKA_USER_TIMEOUT                    milliseconds (0..INT_MAX)
 *   TCPKA_ONLY, TCPKA_EXCEPT              comma-separated rules in the canonical form that tcpka writes (src/filter.ts
 *                     endpointRuleText): IPv4CIDR, IPv4CIDR:PORTS, IPv6CIDR (with its /LEN), [IPv6CIDR]:PORTS or
 *                     :PORTS, PORTS being P or P-Q; the address is the peer's, the port the service's (the peer port
 *                     of an outgoing connection, the local port of an accepted one)
 *   TCPKA_EVENTS      a file that tcpka created: one JSON line per event is appended to it (O_APPEND, opened and
 *                     closed per event so that programs that close all their fds cannot break it). Only with
 *   TCPKA_EVENTS_ID   DEV:INO of that file: a path that is a symlink, or any other file, is never written; and
 *   TCPKA_EVENTS_KEY  16 to 64 hex digits, written first in every event: tcpka keeps only lines that carry it, so
 *                     that nothing but the processes it started can add events
 *   TCPKA_DEBUG       1: report the shim's own errors on stderr
 *   TCPKA_PROBE       an fd number, set only in the probe process that tcpka starts before CMD: once configured,
 *                     the library writes one line to it, "tcpka-shim ok MODE" or "tcpka-shim off REASON", so
 *                     that tcpka knows it loads and accepts its configuration here before it relies on it
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "events.h"
#include "shim.h"

/* dlsym moved into libc with a new version (GLIBC_2.34): bind the first one, which every glibc still provides,
 * so that one build also loads on older systems (native/build.sh links libdl.so.2, where it lived before). */
#if defined(__GLIBC__) && defined(__x86_64__)
__asm__(".symver dlsym,dlsym@GLIBC_2.2.5");
#elif defined(__GLIBC__) && defined(__aarch64__)
__asm__(".symver dlsym,dlsym@GLIBC_2.17");
#endif

/* ------------------------------------------------------------------------------------------------ config */

enum mode { MODE_OFF, MODE_STRENGTHEN, MODE_FORCE, MODE_OBSERVE };

#define MAX_RULES 32
struct rule {
  uint8_t family; /* 0: any address (port-only rule), 4 or 6 */
  uint8_t prefix;
  uint16_t port_lo, port_hi; /* 0, 0: any port */
  uint8_t addr[16];
};

static struct {
  enum mode mode;
  int want[O_COUNT]; /* requested values; -1 = leave alone. want[O_KEEPALIVE] is 1 unless observing */
  int sysdef[O_COUNT]; /* the namespace's defaults, read once: what an unset option means */
  /* The sets for a socket with nothing set yet (what strengthen makes of sysdef), or in force mode for every
   * socket: options plan[0 .. n_plan-1], to the values to[]. */
  int to[O_COUNT];
  int plan[O_COUNT], n_plan;
  struct rule only[MAX_RULES], except[MAX_RULES];
  int n_only, n_except;
  int addr_rules; /* some rule names an address: listeners cannot be decided before accept() */
  int debug;
} cfg;

/* ------------------------------------------------------------------------------------------------ per fd */

#define MAX_FDS 65536
static struct slot slots[MAX_FDS];
static int slot_hi = -1; /* the highest fd whose slot was ever typed: close_range() and closefrom() look no further */

/* A vfork() child shares its parent's memory, this table included, until it execs or exits, but has a copy of the
 * fd table of its own: what it closes or dups is not the parent's, so it must not write the table. The vfork hook
 * (below: a few instructions that leave no stack frame behind, since the child returns through them before the
 * parent does) marks the calling thread before the real vfork runs, in thread-local storage, which the child
 * shares with that thread. While the mark is set, a hook asks getpid(): the child leaves the table alone, and the
 * parent, back from vfork, clears the mark. Every other call pays one thread-local load, no system call: close()
 * and connect() are hot. (posix_spawn's child closes and dups through glibc's internal calls, never these hooks.) */
static __thread pid_t vfork_parent __attribute__((tls_model("initial-exec")));

/* Out of line, so that the hooks' fast path saves no registers for a call it does not make. */
__attribute__((noinline, cold)) static int vfork_marked(void) {
  if ((pid_t)syscall(SYS_getpid) != vfork_parent) return 1;
  vfork_parent = 0;
  return 0;
}

static inline int in_vfork_child(void) { return __builtin_expect(vfork_parent != 0, 0) && vfork_marked(); }

/* The slot of `fd`, or NULL when there is none for this process to use. */
static inline struct slot *slot_of(int fd) {
  return fd >= 0 && fd < MAX_FDS && !in_vfork_child() ? &slots[fd] : NULL;
}

/* Count `fd` in slot_hi. */
static void slot_counted(int fd) {
  int hi = __atomic_load_n(&slot_hi, __ATOMIC_RELAXED);
  while (fd > hi && !__atomic_compare_exchange_n(&slot_hi, &hi, fd, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}

/* The slot of `fd` about to describe a new socket: its flags cleared (prog[] and value[] mean something only
 * where progset and applied say so), typed. */
static void slot_new(struct slot *s, int fd) {
  memset(s, 0, offsetof(struct slot, prog));
  s->typed = 1;
  slot_counted(fd);
}

/* Forget a closed fd. A slot is trusted only while typed, so clearing `typed` is enough; the hot path (close() of
 * an fd that was never a socket we typed) is one load and no system call. */
static inline void slot_reset(int fd) {
  if (fd >= 0 && fd < MAX_FDS && slots[fd].typed && !in_vfork_child()) slots[fd].typed = 0;
}

/* A new fd `to` that refers to the same open file as `from` carries its slot; otherwise it starts unknown. */
static void slot_copy(int from, int to) {
  if (to < 0 || to >= MAX_FDS) return;
  const struct slot *a = from >= 0 && from < MAX_FDS && slots[from].typed ? &slots[from] : NULL;
  if ((!a && !slots[to].typed) || in_vfork_child()) return;
  if (a) {
    slots[to] = *a;
    slot_counted(to);
  } else {
    slots[to].typed = 0;
  }
}

/* fds first..last were closed (close_range, closefrom). */
static void slots_closed(unsigned first, unsigned last) {
  int hi = __atomic_load_n(&slot_hi, __ATOMIC_RELAXED);
  if (hi < 0 || first > (unsigned)hi || in_vfork_child()) return;
  if (last > (unsigned)hi) last = (unsigned)hi;
  for (unsigned fd = first; fd <= last; fd++)
    if (slots[fd].typed) slots[fd].typed = 0; /* read before writing: slots never used stay untouched zero pages */
}

/* ------------------------------------------------------------------------------------------------ real calls */

static int (*real_socket)(int, int, int);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_listen)(int, int);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static int (*real_setsockopt)(int, int, int, const void *, socklen_t);
static int (*real_getsockopt)(int, int, int, void *, socklen_t *);
static int (*real_close)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_dup)(int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);
static int (*real_close_range)(unsigned, unsigned, int);
static void (*real_closefrom)(int);
static pid_t (*real_vfork)(void);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_sendmmsg)(int, struct mmsghdr *, unsigned, int);
static int (*real_setuid)(uid_t);
static int (*real_seteuid)(uid_t);
static int (*real_setreuid)(uid_t, uid_t);
static int (*real_setresuid)(uid_t, uid_t, uid_t);

#define RESOLVE(name)                                                                                          \
  do {                                                                                                         \
    if (!real_##name) real_##name = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name);                         \
  } while (0)

static void resolve_all(void) {
  RESOLVE(socket);
  RESOLVE(connect);
  RESOLVE(listen);
  RESOLVE(accept);
  RESOLVE(accept4);
  RESOLVE(setsockopt);
  RESOLVE(getsockopt);
  RESOLVE(close);
  RESOLVE(dup2);
  RESOLVE(dup3);
  RESOLVE(dup);
  RESOLVE(fcntl);
  RESOLVE(fcntl64);
  RESOLVE(close_range);
  RESOLVE(closefrom);
  RESOLVE(vfork);
  RESOLVE(sendto);
  RESOLVE(sendmsg);
  RESOLVE(sendmmsg);
  RESOLVE(setuid);
  RESOLVE(seteuid);
  RESOLVE(setreuid);
  RESOLVE(setresuid);
}

static int set_int(int fd, int level, int name, int v) {
  return sys5(SYS_setsockopt, fd, level, name, (long)&v, sizeof v) < 0 ? -1 : 0;
}

static void debug(const char *what, const char *detail) {
  if (cfg.debug) say(2, "libtcpka: ", what, ": ", detail);
}

/* ------------------------------------------------------------------------------------------------ policy */

static unsigned local_port(int fd) {
  struct sockaddr_storage me;
  socklen_t ml = sizeof me;
  memset(&me, 0, sizeof me);
  if (syscall(SYS_getsockname, fd, &me, &ml) != 0) return 0;
  if (me.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&me)->sin_port);
  if (me.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&me)->sin6_port);
  return 0;
}

/* An IPv4-mapped IPv6 address (::ffff:a.b.c.d) begins so: such a peer is the IPv4 peer a.b.c.d. */
static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Does the rule hold this peer and service port? As ruleDecision in src/filter.ts: an IPv6 network never holds an
 * IPv4 peer (::/0 neither), an IPv4 one holds an IPv4-mapped peer. */
static int rule_matches(const struct rule *r, const struct sockaddr_storage *peer, unsigned svcport) {
  if (r->port_lo && (svcport < r->port_lo || svcport > r->port_hi)) return 0;
  if (!r->family) return 1;
  const uint8_t *a;
  int fam;
  if (peer->ss_family == AF_INET) {
    a = (const uint8_t *)&((const struct sockaddr_in *)peer)->sin_addr;
    fam = 4;
  } else if (peer->ss_family == AF_INET6) {
    a = ((const struct sockaddr_in6 *)peer)->sin6_addr.s6_addr;
    fam = 6;
    if (memcmp(a, mapped, 12) == 0) { /* an IPv4-mapped peer is the IPv4 peer */
      a += 12;
      fam = 4;
    }
  } else {
    return 0;
  }
  if (fam != r->family) return 0;
  int bits = r->prefix;
  for (int i = 0; bits > 0; i++, bits -= 8) {
    uint8_t m = bits >= 8 ? 0xff : (uint8_t)(0xff << (8 - bits));
    if ((a[i] & m) != (r->addr[i] & m)) return 0;
  }
  return 1;
}

/* Does the connection with this peer and service port get keepalive? peer NULL: not known yet (a listener). */
static int wanted(const struct sockaddr_storage *peer, unsigned svcport) {
  struct sockaddr_storage none;
  if (!peer) {
    memset(&none, 0, sizeof none);
    peer = &none;
  }
  if (cfg.n_only) {
    int any = 0;
    for (int i = 0; i < cfg.n_only && !any; i++) any = rule_matches(&cfg.only[i], peer, svcport);
    if (!any) return 0;
  }
  for (int i = 0; i < cfg.n_except; i++)
    if (rule_matches(&cfg.except[i], peer, svcport)) return 0;
  return 1;
}

/* Is `fd` a TCP socket over IPv4/IPv6? From the slot when known, otherwise asked of the kernel (a socket
 * inherited across exec, passed over a Unix socket or made by dup). */
static int is_tcp_asked(int fd, struct slot *s);
static inline int is_tcp(int fd, struct slot *s) { return s && s->typed ? s->tcp : is_tcp_asked(fd, s); }

static int is_tcp_asked(int fd, struct slot *s) {
  int dom, type, proto;
  if (get_int(fd, SOL_SOCKET, SO_DOMAIN, &dom) || get_int(fd, SOL_SOCKET, SO_TYPE, &type) ||
      get_int(fd, SOL_SOCKET, SO_PROTOCOL, &proto))
    return 0;
  int tcp = (dom == AF_INET || dom == AF_INET6) && type == SOCK_STREAM && proto == IPPROTO_TCP;
  if (s) {
    slot_new(s, fd);
    s->tcp = (uint8_t)tcp;
  }
  return tcp;
}

/* The program's value of option `o`: what it set itself; for an option tcpka set instead, what the socket had
 * before (kept in prog[] by enforce); else the namespace default on a socket seen from socket() on, or the
 * kernel's answer. */
static int current(int fd, const struct slot *s, int o) {
  if (s && ((s->progset | s->applied) & SET(o))) return s->prog[o];
  if (s && s->seen) return cfg.sysdef[o];
  int v;
  return get_int(fd, opt_level[o], opt_name[o], &v) == 0 ? v : cfg.sysdef[o];
}

/* The strengthen rule, as strengthen() in src/settings.ts: keepalive on; idle the smaller of the program's and the
 * request; interval and count together from whichever of the two detects a dead peer sooner on its own
 * (idle + interval × count, at most 32767 + 32767 × 127; a tie keeps the program's), so that the probes that
 * declare a peer dead are one side's own choice; the smaller non-zero user timeout. What is not requested stays
 * the program's. */
static void strengthen(const int *have, int *to) {
  for (int o = 0; o < O_COUNT; o++) to[o] = cfg.want[o] < 0 ? have[o] : cfg.want[o];
  if (to[O_IDLE] + to[O_INTVL] * to[O_CNT] >= have[O_IDLE] + have[O_INTVL] * have[O_CNT]) {
    to[O_INTVL] = have[O_INTVL];
    to[O_CNT] = have[O_CNT];
  }
  if (have[O_KEEPALIVE]) to[O_KEEPALIVE] = have[O_KEEPALIVE];
  if (have[O_IDLE] < to[O_IDLE]) to[O_IDLE] = have[O_IDLE];
  if (have[O_UT] && (!to[O_UT] || have[O_UT] < to[O_UT])) to[O_UT] = have[O_UT];
}

/* Apply the requested settings to `fd` under the mode's rule, for the options in `mask`: force sets them,
 * strengthen sets those the rule changes. Records in the slot what was set, and what the program had before. */
static void enforce(int fd, struct slot *s, unsigned mask) {
  /* A socket made while we watched with nothing set on it yet has the namespace defaults, so strengthen's outcome
   * is known: the sets worked out at load, as in force mode (cfg.plan). The common case: a program's connect(). */
  if (cfg.mode == MODE_FORCE || (s && s->seen && !(s->progset | s->applied))) {
    for (int k = 0; k < cfg.n_plan; k++) {
      int o = cfg.plan[k];
      if (!(mask & SET(o))) continue;
      if (set_int(fd, opt_level[o], opt_name[o], cfg.to[o]) != 0) {
        debug("setsockopt failed", opt_json[o]);
        continue;
      }
      if (s) {
        s->prog[o] = cfg.sysdef[o];
        s->applied |= (uint8_t)SET(o);
        s->value[o] = cfg.to[o];
      }
    }
    return;
  }
  int have[O_COUNT], to[O_COUNT];
  for (int o = 0; o < O_COUNT; o++) have[o] = current(fd, s, o);
  strengthen(have, to);
  for (int o = 0; o < O_COUNT; o++) {
    if (cfg.want[o] < 0 || !(mask & SET(o))) continue;
    if (to[o] == (s && (s->applied & SET(o)) ? s->value[o] : have[o])) continue;
    if (set_int(fd, opt_level[o], opt_name[o], to[o]) != 0) {
      debug("setsockopt failed", opt_json[o]);
      continue;
    }
    if (s) {
      if (!((s->progset | s->applied) & SET(o))) s->prog[o] = have[o];
      s->applied |= (uint8_t)SET(o);
      s->value[o] = to[o];
    }
  }
}

static int changes(void) { return cfg.mode == MODE_STRENGTHEN || cfg.mode == MODE_FORCE; }

/* ------------------------------------------------------------------------------------------------ hooks */

/* The library is built with hidden visibility: only these functions are exported, to interpose libc's. */
#define HOOK __attribute__((visibility("default")))

HOOK int socket(int domain, int type, int protocol) {
  RESOLVE(socket);
  int fd = real_socket(domain, type, protocol);
  if (fd < 0 || cfg.mode == MODE_OFF) return fd;
  /* Nothing here can change errno: the only system call, getpid() right after a vfork, does not fail. */
  struct slot *s = slot_of(fd);
  if (s) {
    slot_new(s, fd);
    s->seen = 1;
    /* SOCK_NONBLOCK and SOCK_CLOEXEC are or-ed into type: compare the type bits only. */
    s->tcp = (domain == AF_INET || domain == AF_INET6) && (type & 0xf) == SOCK_STREAM &&
             (protocol == 0 || protocol == IPPROTO_TCP);
  }
  return fd;
}

/* A call that connects a socket: connect(), or a send with MSG_FASTOPEN (TCP Fast Open, which connects and sends
 * in one call). What is decided before the call is kept here until it returns. */
struct attempt {
  struct slot *s;
  int tcp;     /* an IPv4/IPv6 TCP socket: the rest is only valid then */
  int fresh;   /* a new connection, not a call on one already under way or made */
  int matched; /* the rules want it */
  struct sockaddr_storage peer;
};

/* Is `addr` a whole IPv4 or IPv6 address? Anything shorter goes to the kernel untouched (which answers EINVAL)
 * without the shim reading past what the program passed. */
static int inet_address(const struct sockaddr *addr, socklen_t len) {
  return addr && len >= sizeof(sa_family_t) &&
         ((addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) ||
          (addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)));
}

/* Before the call: decide, and apply the settings so that they are in place when the connection is established
 * (also for a non-blocking connect); the call itself is untouched. Only once per connection: __inet_stream_connect
 * answers a connect() on a connection under way with EALREADY, the first one after it was made with 0 (or the
 * error that ended it), later ones with EISCONN; none of those changes anything again. */
static void attempt_begin(struct attempt *a, int fd, const struct sockaddr *addr, socklen_t len) {
  a->s = slot_of(fd);
  a->tcp = is_tcp(fd, a->s);
  a->fresh = !a->s || a->s->conn == CONN_IDLE;
  a->matched = a->s ? a->s->managed : 0;
  if (!a->tcp || !a->fresh) return;
  a->matched = 1;
  /* The address is only looked at when there are rules to match or events to report. */
  if (cfg.n_only || cfg.n_except || events_on()) {
    memset(&a->peer, 0, sizeof a->peer);
    memcpy(&a->peer, addr, len < sizeof a->peer ? len : sizeof a->peer);
    unsigned port = ntohs(addr->sa_family == AF_INET ? ((const struct sockaddr_in *)addr)->sin_port
                                                     : ((const struct sockaddr_in6 *)addr)->sin6_port);
    a->matched = wanted(&a->peer, port);
  }
  if (a->matched && changes()) enforce(fd, a->s, ~0u);
  if (a->matched && a->s) a->s->managed = 1;
}

/* After the call: where the connection stands, and one event about it. `ok`: the call succeeded (ret >= 0). A
 * connect that goes on in the background (non-blocking, or a blocking one a signal interrupted) ends later: the
 * program learns how from getsockopt(SO_ERROR) or from its next connect(), and the event comes then. */
static void attempt_end(struct attempt *a, int fd, const char *kind, int ok, int err) {
  if (!a->tcp) return;
  int up = ok || err == EISCONN, pending = !ok && (err == EINPROGRESS || err == EALREADY || err == EINTR);
  struct slot *s = a->s;
  if (a->fresh) {
    if (s) s->conn = up ? CONN_UP : pending ? CONN_PENDING : CONN_IDLE;
    ev_socket(kind, fd, s, a->matched, ok ? 0 : -1, err, &a->peer);
  } else if (s->conn == CONN_PENDING && !pending) {
    s->conn = up ? CONN_UP : CONN_IDLE;
    ev_socket("connected", fd, s, s->managed, up ? 0 : -1, err, NULL);
  }
}

HOOK int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  RESOLVE(connect);
  if (cfg.mode == MODE_OFF || !inet_address(addr, len)) {
    int ret = real_connect(fd, addr, len);
    /* AF_UNSPEC dissolves the association (tcp_disconnect): the next connect() makes a new connection. */
    if (ret == 0 && cfg.mode != MODE_OFF && addr && len >= sizeof(sa_family_t) && addr->sa_family == AF_UNSPEC) {
      struct slot *s = slot_of(fd);
      if (s && s->typed) s->conn = CONN_IDLE;
    }
    return ret;
  }
  int saved = errno;
  struct attempt a;
  attempt_begin(&a, fd, addr, len);
  errno = saved;
  int ret = real_connect(fd, addr, len);
  int err = errno;
  attempt_end(&a, fd, "connect", ret == 0, err);
  errno = err;
  return ret;
}

/* TCP Fast Open: sendto(), sendmsg() and sendmmsg() with MSG_FASTOPEN connect an unconnected socket to the
 * address they carry (tcp_sendmsg_fastopen -> __inet_stream_connect), with no connect() call at all. On the hot
 * send paths only the flag is tested. Unlike connect(), the settings are applied after the call: the program's
 * msghdr and address are read only once the kernel has read them (it copies them in before anything else,
 * __sys_sendto and ___sys_sendmsg), so that a bad pointer stays the program's EFAULT and never becomes a fault
 * in the shim. Setting them in SYN-SENT is as good as before: tcp_finish_connect arms the keepalive timer of a
 * socket that has SO_KEEPALIVE when the handshake completes. */
static void fastopen(int fd, const struct sockaddr *addr, socklen_t len, int ok, int err) {
  if (!ok && err != EINPROGRESS) return; /* refused before anything was sent, or EFAULT: the address may be bad */
  if (!inet_address(addr, len)) return;
  struct attempt a;
  attempt_begin(&a, fd, addr, len);
  attempt_end(&a, fd, "connect", ok, err);
}

HOOK ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t len) {
  RESOLVE(sendto);
  ssize_t ret = real_sendto(fd, buf, n, flags, addr, len);
  if (!(flags & MSG_FASTOPEN) || cfg.mode == MODE_OFF) return ret;
  int err = errno;
  fastopen(fd, addr, len, ret >= 0, err);
  errno = err;
  return ret;
}

HOOK ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
  RESOLVE(sendmsg);
  ssize_t ret = real_sendmsg(fd, msg, flags);
  if (!(flags & MSG_FASTOPEN) || cfg.mode == MODE_OFF) return ret;
  int err = errno;
  if (ret >= 0 || err == EINPROGRESS) fastopen(fd, msg->msg_name, msg->msg_namelen, ret >= 0, err);
  errno = err;
  return ret;
}

/* The first message connects (__sys_sendmmsg sends them in order, each with `flags`); it was read when one or
 * more were sent, or when the first one's connect is under way. */
HOOK int sendmmsg(int fd, struct mmsghdr *vec, unsigned vlen, int flags) {
  RESOLVE(sendmmsg);
  int ret = real_sendmmsg(fd, vec, vlen, flags);
  if (!(flags & MSG_FASTOPEN) || cfg.mode == MODE_OFF) return ret;
  int err = errno;
  if (ret > 0 || err == EINPROGRESS) fastopen(fd, vec[0].msg_hdr.msg_name, vec[0].msg_hdr.msg_namelen, ret > 0, err);
  errno = err;
  return ret;
}

HOOK int listen(int fd, int backlog) {
  RESOLVE(listen);
  if (cfg.mode == MODE_OFF) return real_listen(fd, backlog);
  int saved = errno;
  struct slot *s = slot_of(fd);
  int tcp = is_tcp(fd, s), matched = 0;
  if (tcp) {
    unsigned port = local_port(fd);
    if (s) s->svcport = (uint16_t)port;
    /* Accepted sockets inherit the listener's options: set them here when no rule depends on the peer. */
    if (!cfg.addr_rules && wanted(NULL, port)) {
      matched = 1;
      if (changes()) enforce(fd, s, ~0u);
      if (s) s->managed = s->inherits = 1;
    }
  }
  errno = saved;
  int ret = real_listen(fd, backlog);
  int err = errno;
  if (tcp) ev_socket("listen", fd, s, matched, ret, err, NULL);
  errno = err;
  return ret;
}

/* After accept: a listener tcpka set up passes its settings on by itself; otherwise (a listener inherited from
 * a parent or socket activation, or one whose rules depend on the peer) decide and apply per connection. */
static void accepted(int lfd, int fd) {
  struct slot *ls = slot_of(lfd), *s = slot_of(fd);
  if (!is_tcp(lfd, ls)) return;
  if (s) {
    slot_new(s, fd);
    s->tcp = 1;
    s->conn = CONN_UP;
    if (ls) { /* inherited: what the program and tcpka set on the listener, and what it had before tcpka */
      s->seen = ls->seen;
      s->progset = ls->progset;
      s->applied = ls->applied;
      memcpy(s->prog, ls->prog, sizeof s->prog);
      memcpy(s->value, ls->value, sizeof s->value);
    }
  }
  int matched = 1;
  if (!ls || !ls->inherits) {
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    memset(&peer, 0, sizeof peer);
    syscall(SYS_getpeername, fd, &peer, &pl);
    unsigned port = ls && ls->svcport ? ls->svcport : local_port(fd);
    matched = wanted(&peer, port);
    if (matched && changes()) enforce(fd, s, ~0u);
  }
  if (s) s->managed = (uint8_t)matched;
  ev_socket("accept", fd, s, matched, fd, 0, NULL);
}

HOOK int accept(int lfd, struct sockaddr *addr, socklen_t *len) {
  RESOLVE(accept);
  int fd = real_accept(lfd, addr, len);
  if (fd < 0 || cfg.mode == MODE_OFF) return fd;
  int saved = errno;
  accepted(lfd, fd);
  errno = saved;
  return fd;
}

HOOK int accept4(int lfd, struct sockaddr *addr, socklen_t *len, int flags) {
  RESOLVE(accept4);
  int fd = real_accept4(lfd, addr, len, flags);
  if (fd < 0 || cfg.mode == MODE_OFF) return fd;
  int saved = errno;
  accepted(lfd, fd);
  errno = saved;
  return fd;
}

static int which_opt(int level, int name) {
  for (int o = 0; o < O_COUNT; o++)
    if (opt_level[o] == level && opt_name[o] == name) return o;
  return -1;
}

HOOK int setsockopt(int fd, int level, int name, const void *val, socklen_t len) {
  RESOLVE(setsockopt);
  int ret = real_setsockopt(fd, level, name, val, len);
  if (cfg.mode == MODE_OFF) return ret;
  int o = which_opt(level, name);
  if (o < 0 || ret != 0 || !val || len < sizeof(int)) return ret;
  int err = errno;
  struct slot *s = slot_of(fd);
  if (s && s->typed && s->tcp) {
    int v;
    memcpy(&v, val, sizeof v);
    s->progset |= (uint8_t)SET(o);
    s->prog[o] = v;
    s->applied &= (uint8_t)~SET(o);
    /* A managed socket keeps the rule: strengthen decides again with the program's new value (idle, interval
     * and count together), force sets the requested value again. */
    if (s->managed) {
      if (changes()) enforce(fd, s, cfg.mode == MODE_STRENGTHEN ? ~0u : SET(o));
      ev_socket("setsockopt", fd, s, 1, 0, 0, NULL);
    }
  }
  errno = err;
  return ret;
}

/* Only to see how a connect in progress ended, and only when events are reported (tcpka trace): the program
 * gets exactly what the kernel answered. SO_ERROR clears the socket's error as it is read, so the value the
 * program got is the one reported; 0 with a peer means connected, 0 without one means still connecting. */
HOOK int getsockopt(int fd, int level, int name, void *val, socklen_t *len) {
  RESOLVE(getsockopt);
  int ret = real_getsockopt(fd, level, name, val, len);
  if (ret != 0 || level != SOL_SOCKET || name != SO_ERROR || cfg.mode == MODE_OFF || !events_on()) return ret;
  if (!val || !len || *len < (socklen_t)sizeof(int)) return ret;
  int saved = errno;
  struct slot *s = slot_of(fd);
  if (!s || !s->typed || s->conn != CONN_PENDING) {
    errno = saved;
    return ret;
  }
  int soerr;
  memcpy(&soerr, val, sizeof soerr);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (soerr != 0) {
    s->conn = CONN_IDLE;
    ev_socket("connected", fd, s, s->managed, -1, soerr, NULL);
  } else if (syscall(SYS_getpeername, fd, &ss, &sl) == 0) {
    s->conn = CONN_UP;
    ev_socket("connected", fd, s, s->managed, 0, 0, NULL);
  }
  errno = saved;
  return ret;
}

HOOK int close(int fd) {
  RESOLVE(close);
  slot_reset(fd);
  return real_close(fd);
}

HOOK int dup2(int oldfd, int newfd) {
  RESOLVE(dup2);
  int ret = real_dup2(oldfd, newfd);
  if (ret >= 0 && oldfd != newfd) {
    int saved = errno;
    slot_copy(oldfd, newfd);
    errno = saved;
  }
  return ret;
}

HOOK int dup3(int oldfd, int newfd, int flags) {
  RESOLVE(dup3);
  int ret = real_dup3(oldfd, newfd, flags);
  if (ret >= 0) {
    int saved = errno;
    slot_copy(oldfd, newfd);
    errno = saved;
  }
  return ret;
}

HOOK int dup(int oldfd) {
  RESOLVE(dup);
  int fd = real_dup(oldfd);
  if (fd >= 0) {
    int saved = errno;
    slot_copy(oldfd, fd);
    errno = saved;
  }
  return fd;
}

/* fcntl(F_DUPFD / F_DUPFD_CLOEXEC) makes a new fd too. The third argument is read and passed on as a pointer-
 * sized word, as glibc's own fcntl does. */
static int fcntl_common(int (*real)(int, int, ...), int fd, int cmd, void *arg) {
  int ret = real(fd, cmd, arg);
  if (ret >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) {
    int saved = errno;
    slot_copy(fd, ret);
    errno = saved;
  }
  return ret;
}

HOOK int fcntl(int fd, int cmd, ...) {
  RESOLVE(fcntl);
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  return fcntl_common(real_fcntl, fd, cmd, arg);
}

HOOK int fcntl64(int fd, int cmd, ...) {
  RESOLVE(fcntl64);
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  if (!real_fcntl64) { /* a libc without fcntl64: the program cannot have linked against it, but be safe */
    RESOLVE(fcntl);
    return fcntl_common(real_fcntl, fd, cmd, arg);
  }
  return fcntl_common(real_fcntl64, fd, cmd, arg);
}

HOOK int close_range(unsigned first, unsigned last, int flags) {
  RESOLVE(close_range);
  if (!real_close_range) {
    errno = ENOSYS;
    return -1;
  }
  int ret = real_close_range(first, last, flags);
  /* CLOSE_RANGE_CLOEXEC (4) only marks the fds; a plain call (or CLOSE_RANGE_UNSHARE) closes them. */
  if (ret == 0 && !(flags & 4)) slots_closed(first, last);
  return ret;
}

/* glibc's closefrom() closes through its own close_range (not this hook). */
HOOK void closefrom(int lowfd) {
  RESOLVE(closefrom);
  if (!real_closefrom) return; /* not in this libc: no program that calls it could have been linked against it */
  real_closefrom(lowfd);
  slots_closed(lowfd < 0 ? 0 : (unsigned)lowfd, ~0u);
}

/* vfork(): the hook is the assembly below, which calls tcpka_vfork_begin() and then jumps to the real vfork with
 * the stack exactly as the program left it, so that the real vfork returns straight to the program, in the child
 * and then in the parent, as if called directly (a C function around it would return in the child first and leave
 * its frame for the child to overwrite before the parent comes back through it). Elsewhere than on x86-64 and
 * arm64 there is no hook: a vfork child then writes the table as before. */
__attribute__((visibility("hidden"), used)) void *tcpka_vfork_begin(void) {
  int saved = errno;
  RESOLVE(vfork);
  vfork_parent = (pid_t)syscall(SYS_getpid);
  errno = saved;
  return (void *)real_vfork;
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl vfork\n"
        ".type vfork, @function\n"
        "vfork:\n"
#ifdef __CET__
        "  endbr64\n"
#endif
        "  subq $8, %rsp\n" /* the call below needs the stack 16-byte aligned */
        "  call tcpka_vfork_begin\n"
        "  addq $8, %rsp\n"
        "  jmp *%rax\n"
        ".size vfork, . - vfork\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl vfork\n"
        ".type vfork, %function\n"
        "vfork:\n"
        "  stp x29, x30, [sp, #-16]!\n"
        "  bl tcpka_vfork_begin\n"
        "  ldp x29, x30, [sp], #16\n"
        "  mov x16, x0\n" /* br through x16: a BTI landing pad of the real vfork accepts it */
        "  br x16\n"
        ".size vfork, . - vfork\n");
#endif

/* A process that switches its effective uid cannot open the event file any more (0600, in a directory that only
 * tcpka's user may enter). It says so while it still can: the file is opened before the switch, and the event
 * written through that fd after it, only when the switch happened. */
static int uid_switch_begin(uid_t to) {
  if (!events_on() || cfg.mode == MODE_OFF || to == (uid_t)-1 || to == geteuid()) return -1;
  int saved = errno;
  int fd = ev_open();
  errno = saved;
  return fd;
}

static void uid_switch_end(int fd, uid_t before) {
  if (fd < 0) return;
  int saved = errno;
  uid_t now = geteuid();
  if (now != before) ev_setuid(fd, now);
  else ev_close(fd);
  errno = saved;
}

#define UID_HOOK(name, params, args, to)                                                                       \
  HOOK int name params {                                                                                       \
    RESOLVE(name);                                                                                             \
    uid_t before = geteuid();                                                                                  \
    int fd = uid_switch_begin(to);                                                                             \
    int ret = real_##name args;                                                                                \
    uid_switch_end(fd, before);                                                                                \
    return ret;                                                                                                \
  }
UID_HOOK(setuid, (uid_t uid), (uid), uid)
UID_HOOK(seteuid, (uid_t euid), (euid), euid)
UID_HOOK(setreuid, (uid_t ruid, uid_t euid), (ruid, euid), euid)
UID_HOOK(setresuid, (uid_t ruid, uid_t euid, uid_t suid), (ruid, euid, suid), euid)

/* ------------------------------------------------------------------------------------------------ setup */

/* Parse a whole decimal number within [lo, hi]; 0 on success. */
static int parse_num(const char *s, long lo, long hi, int *out) {
  if (!s || !*s) return -1;
  long v = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return -1;
    v = v * 10 + (*s - '0');
    if (v > hi) return -1;
  }
  if (v < lo) return -1;
  *out = (int)v;
  return 0;
}

/* Ports "P" or "P-Q" (1 <= P <= Q <= 65535). */
static int parse_ports(char *s, struct rule *r) {
  char *dash = strchr(s, '-');
  int lo, hi;
  if (dash) *dash = 0;
  if (parse_num(s, 1, 65535, &lo) || parse_num(dash ? dash + 1 : s, lo, 65535, &hi)) return -1;
  r->port_lo = (uint16_t)lo;
  r->port_hi = (uint16_t)hi;
  return 0;
}

/* One rule in tcpka's canonical form: "198.18.0.0/15", "198.18.0.0/15:80-90", "2001:db8::/32",
 * "[2001:db8::/32]:443", ":5432", ":8000-8100". An IPv6 address without brackets must have its /LEN, so that no
 * text reads both as an address and as an address with a port ("::1:443"). An IPv4-mapped network becomes the
 * IPv4 one, as in src/filter.ts. */
static int parse_rule(const char *s, size_t n, struct rule *r) {
  char t[80];
  if (n == 0 || n >= sizeof t) return -1;
  memcpy(t, s, n);
  t[n] = 0;
  memset(r, 0, sizeof *r);
  char *addr = t, *port = NULL;
  int bracketed = t[0] == '[';
  if (bracketed) {
    char *end = strchr(t, ']');
    if (!end) return -1;
    *end = 0;
    addr = t + 1;
    if (end[1] == ':') port = end + 2;
    else if (end[1]) return -1;
  } else if (t[0] == ':' && t[1] != ':') { /* ":5432"; "::1" is an address */
    addr = NULL;
    port = t + 1;
  } else {
    char *c = strchr(t, ':');
    if (c && !strchr(c + 1, ':')) { /* one colon: IPv4 with a port */
      *c = 0;
      port = c + 1;
    }
  }
  if (port && parse_ports(port, r)) return -1;
  if (!addr) return 0;
  char *slash = strchr(addr, '/');
  int prefix = -1;
  if (slash) {
    *slash = 0;
    if (parse_num(slash + 1, 0, 128, &prefix)) return -1;
  }
  if (inet_pton(AF_INET, addr, r->addr) == 1) {
    r->family = 4;
    if (prefix > 32) return -1;
    r->prefix = (uint8_t)(prefix < 0 ? 32 : prefix);
  } else if (inet_pton(AF_INET6, addr, r->addr) == 1) {
    if (prefix < 0 && !bracketed) return -1;
    r->family = 6;
    r->prefix = (uint8_t)(prefix < 0 ? 128 : prefix);
    if (r->prefix >= 96 && memcmp(r->addr, mapped, 12) == 0) {
      memmove(r->addr, r->addr + 12, 4);
      memset(r->addr + 4, 0, 12);
      r->family = 4;
      r->prefix -= 96;
    }
  } else {
    return -1;
  }
  return 0;
}

static int parse_rules(const char *s, struct rule *rules, int *count) {
  *count = 0;
  if (!s) return 0;
  while (*s) {
    const char *comma = strchr(s, ',');
    size_t n = comma ? (size_t)(comma - s) : strlen(s);
    if (n) {
      if (*count >= MAX_RULES || parse_rule(s, n, &rules[*count])) return -1;
      if (rules[*count].family) cfg.addr_rules = 1;
      (*count)++;
    }
    s += n + (comma ? 1 : 0);
  }
  return 0;
}

static int read_sysctl(const char *path, int fallback) {
  char t[32];
  int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fallback;
  ssize_t n = read(fd, t, sizeof t - 1);
  syscall(SYS_close, fd);
  if (n <= 0) return fallback;
  t[n] = 0;
  int v = 0, i = 0;
  for (; t[i] >= '0' && t[i] <= '9'; i++) v = v * 10 + (t[i] - '0');
  return i ? v : fallback;
}

static int probe_fd = -1;

/* The probe's answer (see TCPKA_PROBE): one line, written once. */
static void probe_report(const char *state, const char *detail) {
  if (probe_fd < 0) return;
  say(probe_fd, "tcpka-shim ", state, " ", detail);
  probe_fd = -1;
}

/* Turn the shim off and say why; the program's errno is left as it was (the reports below may fail). */
static void disable(const char *why, const char *value) {
  int saved = errno;
  cfg.mode = MODE_OFF;
  probe_report("off", why);
  cfg.debug = 1; /* invalid configuration is always reported */
  debug(why, value);
  if (events_on()) ev_error(why, value); /* tell tcpka too, when it is listening */
  errno = saved;
}

/* After fork(), in the child: the table now describes this process's fds (its copy of the parent's), and its
 * events are numbered from 0. */
static void forked(void) { events_owner(); }

__attribute__((constructor)) static void tcpka_init(void) {
  int saved = errno;
  resolve_all();
  events_owner();
  pthread_atfork(NULL, NULL, forked);
  memset(&cfg, 0, sizeof cfg);
  cfg.mode = MODE_STRENGTHEN;
  const char *probe = getenv("TCPKA_PROBE");
  if (probe && parse_num(probe, 0, 1 << 20, &probe_fd)) probe_fd = -1;
  const char *dbg = getenv("TCPKA_DEBUG");
  cfg.debug = dbg && *dbg && strcmp(dbg, "0") != 0;
  if (events_init())
    debug("TCPKA_EVENTS needs an absolute path, TCPKA_EVENTS_ID=DEV:INO and TCPKA_EVENTS_KEY; no events written",
          getenv("TCPKA_EVENTS"));

  const char *mode = getenv("TCPKA_MODE");
  if (!mode || !*mode || !strcmp(mode, "strengthen")) cfg.mode = MODE_STRENGTHEN;
  else if (!strcmp(mode, "force")) cfg.mode = MODE_FORCE;
  else if (!strcmp(mode, "observe")) cfg.mode = MODE_OBSERVE;
  else {
    errno = saved;
    return disable("invalid TCPKA_MODE (strengthen, force or observe); keepalive shim disabled", mode);
  }

  static const char *const env[O_COUNT] = {NULL, "TCPKA_IDLE", "TCPKA_INTVL", "TCPKA_CNT", "TCPKA_USER_TIMEOUT"};
  static const long lo[O_COUNT] = {1, 1, 1, 1, 0};
  static const long hi[O_COUNT] = {1, 32767, 32767, 127, INT_MAX};
  cfg.want[O_KEEPALIVE] = cfg.mode == MODE_OBSERVE ? -1 : 1;
  for (int o = 1; o < O_COUNT; o++) {
    cfg.want[o] = -1;
    const char *v = getenv(env[o]);
    if (!v || !*v) continue;
    if (parse_num(v, lo[o], hi[o], &cfg.want[o])) {
      errno = saved;
      return disable("invalid value; keepalive shim disabled", env[o]);
    }
    if (cfg.mode == MODE_OBSERVE) cfg.want[o] = -1;
  }
  if (parse_rules(getenv("TCPKA_ONLY"), cfg.only, &cfg.n_only) ||
      parse_rules(getenv("TCPKA_EXCEPT"), cfg.except, &cfg.n_except)) {
    errno = saved;
    return disable("invalid TCPKA_ONLY/TCPKA_EXCEPT filter; keepalive shim disabled", NULL);
  }

  /* What an option the program never set is worth: the namespace's sysctl (SO_KEEPALIVE: off; no user
   * timeout). Read once; tcp_keepalive_time and friends are per network namespace. */
  cfg.sysdef[O_KEEPALIVE] = 0;
  cfg.sysdef[O_IDLE] = read_sysctl("/proc/sys/net/ipv4/tcp_keepalive_time", 7200);
  cfg.sysdef[O_INTVL] = read_sysctl("/proc/sys/net/ipv4/tcp_keepalive_intvl", 75);
  cfg.sysdef[O_CNT] = read_sysctl("/proc/sys/net/ipv4/tcp_keepalive_probes", 9);
  cfg.sysdef[O_UT] = 0;
  if (cfg.mode == MODE_FORCE) memcpy(cfg.to, cfg.want, sizeof cfg.to);
  else strengthen(cfg.sysdef, cfg.to);
  for (int o = 0; o < O_COUNT; o++)
    if (cfg.want[o] >= 0 && (cfg.mode == MODE_FORCE || cfg.to[o] != cfg.sysdef[o])) cfg.plan[cfg.n_plan++] = o;
  if (events_on()) ev_note("start"); /* tell tcpka that this process runs with the shim */
  static const char *const mode_name[] = {"off", "strengthen", "force", "observe"};
  probe_report("ok", mode_name[cfg.mode]);
  errno = saved;
}

/* On a normal exit: the last word, so that tcpka learns of events lost after the last one that got through. */
__attribute__((destructor)) static void tcpka_fini(void) {
  if (cfg.mode == MODE_OFF || !events_on()) return;
  int saved = errno;
  ev_note("exit");
  errno = saved;
}
