/*
 * What the two files of libtcpka.so share: the options tcpka manages, the record the hooks keep per fd, and
 * reading an option through the system call. One library: native/build.sh compiles both files into it.
 */
#ifndef TCPKA_SHIM_H
#define TCPKA_SHIM_H

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef TCP_USER_TIMEOUT
#define TCP_USER_TIMEOUT 18
#endif

/* The options tcpka manages, in one order everywhere. */
enum opt { O_KEEPALIVE, O_IDLE, O_INTVL, O_CNT, O_UT, O_COUNT };
static const int opt_level[O_COUNT] = {SOL_SOCKET, IPPROTO_TCP, IPPROTO_TCP, IPPROTO_TCP, IPPROTO_TCP};
static const int opt_name[O_COUNT] = {SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT};
static const char *const opt_json[O_COUNT] = {"keepalive", "idle", "interval", "count", "user_timeout_ms"};
#define SET(o) (1u << (o))

/* Where a connection of a socket stands, as the program's calls show it. */
enum conn { CONN_IDLE, CONN_PENDING, CONN_UP };
/* What the hooks know of one fd (preload.c keeps one per fd number). */
struct slot {
  uint8_t typed;    /* `tcp` below is known */
  uint8_t tcp;      /* AF_INET/AF_INET6 stream socket with protocol TCP */
  uint8_t seen;     /* created by socket() (or accepted from such a listener) while we watched: an option
                       the program did not set has the namespace default */
  uint8_t managed;  /* connected/listening and matched: the program's later setsockopt calls get the rule */
  uint8_t inherits; /* a listener tcpka set up: accepted sockets inherit the settings */
  uint8_t progset;  /* bitmask of options the program set itself */
  uint8_t applied;  /* bitmask of options tcpka set */
  uint8_t conn;     /* enum conn: a connect in progress (EINPROGRESS) is reported when the program learns how it
                       ended; a later connect() on a connection under way or made changes nothing */
  uint16_t svcport; /* local port of a listener */
  int prog[O_COUNT];  /* the values the program set */
  int value[O_COUNT]; /* the values tcpka set */
};

/* tcpka's own reads go through the syscall: they meet neither the getsockopt hook nor a program's own interposer. */
/* A five-argument system call made inline: 0 or more on success, -errno on failure. errno is never touched, and
 * the variadic syscall(3) wrapper, a tenth of the shim's instructions per connection, is left out. */
static inline long sys5(long nr, long a, long b, long c, long d, long e) {
#if defined(__x86_64__)
  long ret;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8) : "rcx", "r11", "memory");
  return ret;
#elif defined(__aarch64__)
  register long x8 __asm__("x8") = nr;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  register long x4 __asm__("x4") = e;
  __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory");
  return x0;
#else
  long ret = syscall(nr, a, b, c, d, e);
  return ret < 0 ? -errno : ret;
#endif
}

static inline int get_int(int fd, int level, int name, int *out) {
  socklen_t len = sizeof *out;
  return sys5(SYS_getsockopt, fd, level, name, (long)out, (long)&len) < 0 ? -1 : 0;
}

#endif
