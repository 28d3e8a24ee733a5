/*
 * connect-cycle: the cost per connection of turning keepalive on, for bench/shim.ts.
 *
 *   connect-cycle bare|own N SECONDS IDLE INTVL CNT
 *
 * One thread, one listener on 127.0.0.1, then up to N cycles (fewer if SECONDS run out) of
 *   socket() + [own: setsockopt SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT] + blocking connect()
 *   + accept() + close(accepted) + close(client).
 * The handshake completes inside connect() (loopback), the backlog holds the connection until accept().
 * "bare" run under LD_PRELOAD=libtcpka.so (TCPKA_IDLE/INTVL/CNT, or TCPKA_MODE=observe) is the shim's variant.
 *
 * The listener has SO_LINGER {1, 0}, which accepted sockets inherit: closing the accepted end first sends a
 * RST, so neither end goes through TIME-WAIT and a run leaves nothing behind and never runs out of ports.
 * "own" also sets the four options on the listener once, as the shim does in listen(): accepted sockets then
 * have keepalive in both variants and the kernel does the same work in both.
 *
 * Prints one JSON line: the connections made and the seconds they took; wall_ns and cpu_ns, the wall time and
 * this thread's CPU time per connection in the median batch of BATCH connections (robust against the bursts of
 * steal time and of other processes on a shared VM); and the keepalive options read back from one more client
 * and accepted socket (-1 = off), which show whether the shim really acted.
 */
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
static struct sockaddr_in addr;
static int lfd;

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void set(int fd, int level, int name, int v) {
  if (setsockopt(fd, level, name, &v, sizeof v) != 0) die("setsockopt");
}

static void keepalive(int fd) {
  set(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  set(fd, IPPROTO_TCP, TCP_KEEPIDLE, idle);
  set(fd, IPPROTO_TCP, TCP_KEEPINTVL, intvl);
  set(fd, IPPROTO_TCP, TCP_KEEPCNT, cnt);
}

/* One connection; with `keep`, the two ends are left open for the caller. */
static void cycle(int keep[2]) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (c < 0) die("socket");
  if (own) keepalive(c);
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

#define BATCH 1000
#define MAX_BATCHES 10000
static long long batch_ns[MAX_BATCHES], batch_cpu[MAX_BATCHES];
static int batches;

/* The measured loop (callgrind collects only inside it: --toggle-collect=cycles). Each batch is timed alone. */
__attribute__((noinline)) long cycles(long n, long long deadline) {
  long i = 0;
  long long t = now_ns(), c = clock_ns(CLOCK_THREAD_CPUTIME_ID);
  batches = 0;
  while (i < n) {
    cycle(NULL);
    if (++i % BATCH == 0) {
      long long t1 = now_ns(), c1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
      if (batches < MAX_BATCHES) {
        batch_ns[batches] = t1 - t;
        batch_cpu[batches++] = c1 - c;
      }
      t = t1;
      c = c1;
      if (t > deadline) break;
    }
  }
  return i;
}

static int cmp_ll(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x > y) - (x < y);
}

static int get(int fd, int level, int name) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, name, &v, &len) != 0) die("getsockopt");
  return v;
}

static void print_opts(const char *key, int fd) {
  int on = get(fd, SOL_SOCKET, SO_KEEPALIVE);
  printf("\"%s\":{\"keepalive\":%d,\"idle\":%d,\"interval\":%d,\"count\":%d}", key, on,
         on ? get(fd, IPPROTO_TCP, TCP_KEEPIDLE) : -1, on ? get(fd, IPPROTO_TCP, TCP_KEEPINTVL) : -1,
         on ? get(fd, IPPROTO_TCP, TCP_KEEPCNT) : -1);
}

int main(int argc, char **argv) {
  if (argc != 7 || (strcmp(argv[1], "bare") && strcmp(argv[1], "own"))) {
    fprintf(stderr, "usage: connect-cycle bare|own N SECONDS IDLE INTVL CNT\n");
    return 2;
  }
  own = !strcmp(argv[1], "own");
  long n = atol(argv[2]);
  double seconds = atof(argv[3]);
  idle = atoi(argv[4]);
  intvl = atoi(argv[5]);
  cnt = atoi(argv[6]);

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

  for (int i = 0; i < 1000; i++) cycle(NULL); /* warm-up, not counted */
  long long t0 = now_ns();
  long done = cycles(n, t0 + (long long)(seconds * 1e9));
  long long ns = now_ns() - t0;

  int ends[2];
  cycle(ends);
  qsort(batch_ns, (size_t)batches, sizeof batch_ns[0], cmp_ll);
  qsort(batch_cpu, (size_t)batches, sizeof batch_cpu[0], cmp_ll);
  printf("{\"variant\":\"%s\",\"connections\":%ld,\"seconds\":%.3f,\"batches\":%d,\"wall_ns\":%.0f,\"cpu_ns\":%.0f,",
         argv[1], done, ns / 1e9, batches, batches ? batch_ns[batches / 2] / (double)BATCH : 0,
         batches ? batch_cpu[batches / 2] / (double)BATCH : 0);
  print_opts("client", ends[0]);
  printf(",");
  print_opts("accepted", ends[1]);
  printf("}\n");
  close(ends[1]);
  close(ends[0]);
  close(lfd);
  return 0;
}
