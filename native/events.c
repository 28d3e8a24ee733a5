/*
 * The event writer of libtcpka.so, for `tcpka trace`: one JSON line per event, appended to the file that tcpka
 * made (TCPKA_EVENTS, see preload.c), and the shim's one-line reports (the probe's answer, debug lines). The
 * hooks in preload.c call it (events.h); src/inspect/events.ts reads what it writes.
 *
 * As everything in the shim: no malloc, no stdio, no locks; errno is the caller's to keep.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>

#include "events.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

/* ------------------------------------------------------------------------------------------------ text */

/* A fixed buffer with append helpers: the shim's only string formatting (no stdio, no malloc). */
struct buf {
  char b[1024];
  size_t n;
};

static void put(struct buf *o, const char *s) {
  while (*s && o->n < sizeof o->b - 2) o->b[o->n++] = *s++;
}

static void put_u(struct buf *o, unsigned long long v) {
  char t[24];
  int i = 0;
  do t[i++] = (char)('0' + v % 10); while ((v /= 10) && i < 23);
  while (i && o->n < sizeof o->b - 2) o->b[o->n++] = t[--i];
}

static void put_i(struct buf *o, long long v) {
  if (v < 0) {
    put(o, "-");
    put_u(o, (unsigned long long)(-(v + 1)) + 1);
  } else {
    put_u(o, (unsigned long long)v);
  }
}

/* A JSON string, exact: quote, backslash and control characters escaped (\u00XX), other bytes as they are (a
 * process name is whatever the process chose; tcpka escapes it again for a terminal). */
static void put_q(struct buf *o, const char *s) {
  static const char hex[] = "0123456789abcdef";
  put(o, "\"");
  for (; *s && o->n < sizeof o->b - 9; s++) {
    unsigned char c = (unsigned char)*s;
    if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') {
      put(o, "\\u00");
      o->b[o->n++] = hex[c >> 4];
      o->b[o->n++] = hex[c & 15];
    } else {
      o->b[o->n++] = (char)c;
    }
  }
  put(o, "\"");
}

void say(int fd, const char *prefix, const char *what, const char *sep, const char *detail) {
  struct buf o = {.n = 0};
  put(&o, prefix);
  put(&o, what);
  if (detail) {
    put(&o, sep);
    put(&o, detail);
  }
  put(&o, "\n");
  ssize_t r = write(fd, o.b, o.n);
  (void)r;
}

/* ------------------------------------------------------------------------------------------------ events */

char ev_path[PATH_MAX];
/* The event file tcpka made (ev_path is its path): its identity, and the key that every event carries. */
static struct {
  unsigned long long dev, ino;
  char key[65];
} chan;
static unsigned long ev_seq, ev_lost; /* this process's; a fork()ed child starts again from 0 (events_owner) */
/* The process whose events these are (their sequence numbers). */
static pid_t owner;

void events_owner(void) {
  owner = (pid_t)syscall(SYS_getpid);
  ev_seq = ev_lost = 0;
}

/* Open the event file for one write, or -1 (counted as lost). O_NOFOLLOW and the identity check: whatever else
 * is at that path now (a symlink, or a file that someone made after tcpka removed its own) is never written.
 * Never blocks: a FIFO without reader fails ENXIO (O_NONBLOCK). Opened per event, not kept: a program may close
 * all its fds, or another thread may close ours and reuse its number. fstat through the system call: glibc exports
 * fstat() only from GLIBC_2.33 (a macro over __fxstat before), and its struct stat is the kernel's on x86-64 and
 * on the generic 64-bit layout (arm64). */
int ev_open(void) {
  int fd = (int)syscall(SYS_openat, AT_FDCWD, ev_path,
                        O_WRONLY | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  struct stat st;
  if (fd >= 0 && (syscall(SYS_fstat, fd, &st) != 0 || (unsigned long long)st.st_dev != chan.dev ||
                  (unsigned long long)st.st_ino != chan.ino || !(S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode)))) {
    syscall(SYS_close, fd);
    fd = -1;
  }
  if (fd < 0) __atomic_fetch_add(&ev_lost, 1, __ATOMIC_RELAXED);
  return fd;
}

void ev_close(int fd) { syscall(SYS_close, fd); }

/* Finish an event line and write it to `fd` (from ev_open) in one write: an O_APPEND write to a regular file, or
 * one of at most PIPE_BUF bytes to a FIFO, is never interleaved with another. Closes fd. */
static void ev_write(int fd, struct buf *o) {
  o->b[o->n++] = '}'; /* put() leaves these two bytes free */
  o->b[o->n++] = '\n';
  if (write(fd, o->b, o->n) != (ssize_t)o->n) __atomic_fetch_add(&ev_lost, 1, __ATOMIC_RELAXED);
  ev_close(fd);
}

/* Append one event. A failure is counted and reported in the next event that gets through. */
static void emit(struct buf *o) {
  if (!events_on()) return;
  int fd = ev_open();
  if (fd >= 0) ev_write(fd, o);
}

/* Start an event line: the key, kind, pid, per-process sequence number, events lost so far, process name. A
 * process that does not own the numbering (a vfork child, which shares its parent's memory) numbers nothing. */
static void ev_begin(struct buf *o, const char *kind) {
  pid_t pid = (pid_t)syscall(SYS_getpid);
  char comm[17] = {0};
  prctl(PR_GET_NAME, comm, 0, 0, 0);
  o->n = 0;
  put(o, "{\"key\":\"");
  put(o, chan.key);
  put(o, "\",\"ev\":\"");
  put(o, kind);
  put(o, "\",\"pid\":");
  put_u(o, (unsigned long long)pid);
  if (pid == owner) {
    put(o, ",\"seq\":");
    put_u(o, __atomic_fetch_add(&ev_seq, 1, __ATOMIC_RELAXED));
    put(o, ",\"lost\":");
    put_u(o, __atomic_load_n(&ev_lost, __ATOMIC_RELAXED));
  }
  put(o, ",\"comm\":");
  put_q(o, comm);
}

/* Parse a whole decimal number into an unsigned long long, up to `end` (or the end of the string); 0 on success. */
static int parse_ull(const char *s, const char *end, unsigned long long *out) {
  if (!end) end = s + strlen(s);
  if (s == end) return -1;
  unsigned long long v = 0;
  for (; s < end; s++) {
    if (*s < '0' || *s > '9' || v > (~0ULL - 9) / 10) return -1;
    v = v * 10 + (unsigned)(*s - '0');
  }
  *out = v;
  return 0;
}

int events_init(void) {
  const char *path = getenv("TCPKA_EVENTS"), *id = getenv("TCPKA_EVENTS_ID"), *key = getenv("TCPKA_EVENTS_KEY");
  if (!path || !*path) return 0;
  const char *colon = id ? strchr(id, ':') : NULL;
  size_t n = strlen(path), k = key ? strspn(key, "0123456789abcdef") : 0;
  if (n >= PATH_MAX || path[0] != '/' || !colon || parse_ull(id, colon, &chan.dev) ||
      parse_ull(colon + 1, NULL, &chan.ino) || k < 16 || k >= sizeof chan.key || key[k])
    return -1;
  memcpy(ev_path, path, n + 1);
  memcpy(chan.key, key, k + 1);
  return 0;
}

static void put_addr(struct buf *o, const char *key, const struct sockaddr_storage *ss) {
  char text[INET6_ADDRSTRLEN] = "";
  unsigned port = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
    port = ntohs(a->sin_port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
    port = ntohs(a->sin6_port);
  }
  put(o, ",\"");
  put(o, key);
  put(o, "\":");
  put_q(o, text);
  put(o, ",\"");
  put(o, key);
  put(o, "_port\":");
  put_u(o, port);
}

static void put_opts(struct buf *o, const char *key, unsigned mask, const int *v) {
  put(o, ",\"");
  put(o, key);
  put(o, "\":{");
  int first = 1;
  for (int i = 0; i < O_COUNT; i++) {
    if (!(mask & SET(i))) continue;
    if (!first) put(o, ",");
    first = 0;
    put(o, "\"");
    put(o, opt_json[i]);
    put(o, "\":");
    put_i(o, v[i]);
  }
  put(o, "}");
}

void ev_socket_write(const char *kind, int fd, const struct slot *s, int matched, int ret, int err,
                     const struct sockaddr_storage *target) {
  struct buf o;
  ev_begin(&o, kind);
  put(&o, ",\"fd\":");
  put_i(&o, fd);
  unsigned long long cookie = 0;
  socklen_t len = sizeof cookie;
  if (syscall(SYS_getsockopt, fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) == 0) {
    put(&o, ",\"cookie\":");
    put_u(&o, cookie);
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  memset(&ss, 0, sizeof ss);
  if (syscall(SYS_getsockname, fd, &ss, &sl) == 0) put_addr(&o, "local", &ss);
  sl = sizeof ss;
  memset(&ss, 0, sizeof ss);
  if (syscall(SYS_getpeername, fd, &ss, &sl) == 0) put_addr(&o, "peer", &ss);
  else if (target) put_addr(&o, "peer", target); /* a connect still in progress, or one that failed */
  put(&o, ",\"matched\":");
  put(&o, matched ? "true" : "false");
  put(&o, ",\"ret\":");
  put_i(&o, ret);
  if (ret < 0) {
    put(&o, ",\"errno\":");
    put_i(&o, err);
  }
  /* What the socket really has now, read back: the verdict rests on this, not on what was asked. */
  int now[O_COUNT];
  unsigned have = 0;
  for (int i = 0; i < O_COUNT; i++)
    if (get_int(fd, opt_level[i], opt_name[i], &now[i]) == 0) have |= SET(i);
  put_opts(&o, "program", s ? s->progset : 0, s ? s->prog : now);
  put_opts(&o, "tcpka", s ? s->applied : 0, s ? s->value : now);
  put_opts(&o, "effective", have, now);
  emit(&o);
}

void ev_note(const char *kind) {
  struct buf o;
  ev_begin(&o, kind);
  emit(&o);
}

void ev_error(const char *message, const char *value) {
  struct buf o;
  ev_begin(&o, "error");
  put(&o, ",\"message\":");
  put_q(&o, message);
  put(&o, ",\"value\":");
  put_q(&o, value ? value : "");
  emit(&o);
}

void ev_setuid(int fd, unsigned long long uid) {
  struct buf o;
  ev_begin(&o, "setuid");
  put(&o, ",\"uid\":");
  put_u(&o, uid);
  ev_write(fd, &o);
}
