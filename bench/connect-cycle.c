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
 * The listener and the loop are in cycle.h. "own" also sets the four options on the listener once, as the shim
 * does in listen(): accepted sockets then have keepalive in both variants and the kernel does the same work in both.
 *
 * Prints one JSON line: the connections made and the seconds they took; wall_ns and cpu_ns, the wall time and
 * this thread's CPU time per connection in the median batch of BATCH connections (robust against the bursts of
 * steal time and of other processes on a shared VM); and the keepalive options read back from one more client
 * and accepted socket (-1 = off), which show whether the shim really acted.
 */
#include "cycle.h"

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

  listen_loopback();

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
