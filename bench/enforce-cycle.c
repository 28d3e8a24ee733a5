/*
 * enforce-cycle: loopback connections per second, for bench/enforce.ts (the cost of `tcpka enforce`).
 *
 *   enforce-cycle N [own]
 *
 * One thread, one listener on 127.0.0.1, 1000 warm-up cycles, then N counted cycles of
 *   socket() + [own: setsockopt SO_KEEPALIVE 1, TCP_KEEPIDLE 60, TCP_KEEPINTVL 10, TCP_KEEPCNT 6] + blocking connect()
 *   + accept() + close(accepted) + close(client).
 * Without "own" the program never touches keepalive: whatever the sockets get comes from a sock_ops program on its
 * cgroup, which runs on listen(), in connect() (ACTIVE_ESTABLISHED) and when the handshake completes
 * (PASSIVE_ESTABLISHED). "own" is the reference of a program that sets the options itself (on the listener once,
 * which accepted sockets inherit, and on every client socket).
 *
 * The listener has SO_LINGER {1, 0}, which accepted sockets inherit: closing the accepted end first sends a RST, so
 * neither end goes through TIME-WAIT, a run leaves nothing behind and never runs out of ports.
 *
 * Prints one JSON line: the connections, the seconds they took, per_second (connections / seconds), batch_per_second
 * (from the median of the batches of BATCH connections, robust against bursts of steal time on a shared VM),
 * cpu_us (this process's CPU time per connection, user + system: on loopback the whole handshake, softirqs included,
 * runs in this thread, and CPU time is not inflated by other processes' load), and the keepalive options read back
 * from one more client and accepted socket, which show whether enforcement was on.
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

#define BATCH 1000
#define MAX_BATCHES 100000

static struct sockaddr_in addr;
static int lfd, own;
static long long batch_ns[MAX_BATCHES];

static void die(const char *what) {
  perror(what);
  exit(1);
}

static long long clock_ns(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}
static long long now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static void set(int fd, int level, int name, int v) {
  if (setsockopt(fd, level, name, &v, sizeof v) != 0) die("setsockopt");
}

static void keepalive(int fd) {
  set(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  set(fd, IPPROTO_TCP, TCP_KEEPIDLE, 60);
  set(fd, IPPROTO_TCP, TCP_KEEPINTVL, 10);
  set(fd, IPPROTO_TCP, TCP_KEEPCNT, 6);
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
  printf("\"%s\":{\"keepalive\":%d,\"idle\":%d,\"interval\":%d,\"count\":%d}", key, get(fd, SOL_SOCKET, SO_KEEPALIVE),
         get(fd, IPPROTO_TCP, TCP_KEEPIDLE), get(fd, IPPROTO_TCP, TCP_KEEPINTVL), get(fd, IPPROTO_TCP, TCP_KEEPCNT));
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3 || atol(argv[1]) < BATCH || (argc == 3 && strcmp(argv[2], "own"))) {
    fprintf(stderr, "usage: enforce-cycle N [own] (N >= %d)\n", BATCH);
    return 2;
  }
  long n = atol(argv[1]);
  own = argc == 3;

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
  int batches = 0;
  long long t0 = now_ns(), t = t0, cpu0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
  for (long i = 1; i <= n; i++) {
    cycle(NULL);
    if (i % BATCH == 0 && batches < MAX_BATCHES) {
      long long t1 = now_ns();
      batch_ns[batches++] = t1 - t;
      t = t1;
    }
  }
  long long ns = now_ns() - t0, cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0;

  int ends[2];
  cycle(ends);
  qsort(batch_ns, (size_t)batches, sizeof batch_ns[0], cmp_ll);
  printf("{\"connections\":%ld,\"seconds\":%.6f,\"per_second\":%.1f,\"batch_per_second\":%.1f,\"cpu_us\":%.3f,", n,
         ns / 1e9, n / (ns / 1e9), BATCH / (batch_ns[batches / 2] / 1e9), cpu / 1e3 / n);
  print_opts("client", ends[0]);
  printf(",");
  print_opts("accepted", ends[1]);
  printf("}\n");
  close(ends[1]);
  close(ends[0]);
  close(lfd);
  return 0;
}
