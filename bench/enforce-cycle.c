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
 * runs in this thread, and CPU time is not inflated by other processes' load), own_ns (with "own": the time spent
 * in the four setsockopt calls per connection, median over the batches), and the keepalive options read back
 * from one more client and accepted socket, which show whether enforcement was on.
 */
#include "cycle.h"

#define BATCH 1000
#define MAX_BATCHES 100000

static long long batch_ns[MAX_BATCHES];
static long long batch_own_ns[MAX_BATCHES];

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

  idle = 60;
  intvl = 10;
  cnt = 6;
  listen_loopback();
  for (int i = 0; i < 1000; i++) cycle(NULL); /* warm-up, not counted */
  int batches = 0;
  long long t0 = now_ns(), t = t0, cpu0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID), own0 = own_ns;
  for (long i = 1; i <= n; i++) {
    cycle(NULL);
    if (i % BATCH == 0 && batches < MAX_BATCHES) {
      long long t1 = now_ns();
      batch_own_ns[batches] = own_ns - own0;
      own0 = own_ns;
      batch_ns[batches++] = t1 - t;
      t = t1;
    }
  }
  long long ns = now_ns() - t0, cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0;

  int ends[2];
  cycle(ends);
  qsort(batch_ns, (size_t)batches, sizeof batch_ns[0], cmp_ll);
  qsort(batch_own_ns, (size_t)batches, sizeof batch_own_ns[0], cmp_ll);
  printf("{\"connections\":%ld,\"seconds\":%.6f,\"per_second\":%.1f,\"batch_per_second\":%.1f,\"cpu_us\":%.3f,", n,
         ns / 1e9, n / (ns / 1e9), BATCH / (batch_ns[batches / 2] / 1e9), cpu / 1e3 / n);
  printf("\"own_ns\":%.1f,", (double)batch_own_ns[batches / 2] / BATCH);
  print_opts("client", ends[0]);
  printf(",");
  print_opts("accepted", ends[1]);
  printf("}\n");
  close(ends[1]);
  close(ends[0]);
  close(lfd);
  return 0;
}
