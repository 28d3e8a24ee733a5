/*
 * cycle.h: the loopback connection loop that bench/connect-cycle.c (the shim's cost) and bench/enforce-cycle.c
 * (the cost of tcpka enforce) both time. Included by each, compiled on its own by its bench script.
 *
 * listen_loopback() makes one listener on 127.0.0.1 with SO_LINGER {1, 0}, which accepted sockets inherit:
 * closing the accepted end first sends a RST, so neither end goes through TIME-WAIT, a run leaves nothing behind
 * and never runs out of ports. With `own`, the listener and every client get SO_KEEPALIVE and the idle, interval
 * and count in `idle`, `intvl`, `cnt` (the reference of a program that sets keepalive itself).
 */
#ifndef TCPKA_BENCH_CYCLE_H
#define TCPKA_BENCH_CYCLE_H

#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int own, idle, intvl, cnt;
/* With `own`: the time spent in the four setsockopt calls on client sockets, all cycles together. */
static long long own_ns;
static long long now_ns(void);
static struct sockaddr_in addr;
static int lfd;

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void set(int fd, int level, int name, int v) {
  if (setsockopt(fd, level, name, &v, sizeof v) != 0) die("setsockopt");
}

static int get(int fd, int level, int name) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, name, &v, &len) != 0) die("getsockopt");
  return v;
}

static void keepalive(int fd) {
  set(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  set(fd, IPPROTO_TCP, TCP_KEEPIDLE, idle);
  set(fd, IPPROTO_TCP, TCP_KEEPINTVL, intvl);
  set(fd, IPPROTO_TCP, TCP_KEEPCNT, cnt);
}

static void listen_loopback(void) {
  lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (lfd < 0) die("socket");
  struct linger lg = {1, 0};
  if (setsockopt(lfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0) die("setsockopt SO_LINGER");
  if (own) keepalive(lfd);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof addr;
  if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 16) != 0 ||
      getsockname(lfd, (struct sockaddr *)&addr, &al) != 0)
    die("listener");
}

/* One connection; with `keep`, the two ends are left open for the caller. */
static void cycle(int keep[2]) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (c < 0) die("socket");
  if (own) {
    long long t = now_ns();
    keepalive(c);
    own_ns += now_ns() - t;
  }
  if (connect(c, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
  int a = accept(lfd, NULL, NULL);
  if (a < 0) die("accept");
  if (keep) {
    keep[0] = c;
    keep[1] = a;
    return;
  }
  if (close(a) != 0) die("close");
  if (close(c) != 0) die("close");
}

static long long clock_ns(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}
static long long now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static int cmp_ll(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x > y) - (x < y);
}

#endif
