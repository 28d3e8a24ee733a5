/*
 * sockopt-cycle: the time of one setsockopt(2) call, for bench/enforce.ts (what enforce's setsockopt program adds
 * to every setsockopt call of the cgroup's processes).
 *
 *   sockopt-cycle N
 *
 * One connected loopback TCP socket (its listener and accepted end in this process too), then for each of three
 * calls N times in batches of BATCH: TCP_NODELAY 1 (an option the program lets through at once), TCP_KEEPIDLE
 * 3600 (a keepalive option it decides on: valid, so it is read and decided; under enforce's strengthen with a
 * lower idle it is replaced), SO_KEEPALIVE 1. Prints one JSON line with each call's ns, the median over its
 * batches (robust against a VM's steal time), and the options read back at the end.
 */
#include "cycle.h"

#define BATCH 1000
#define MAX_BATCHES 10000

static long long batch_ns[MAX_BATCHES];

static double time_call(long n, int fd, int level, int name, int value) {
  int batches = 0;
  for (long i = 0; i < BATCH; i++) set(fd, level, name, value); /* warm-up */
  for (long done = 0; done < n && batches < MAX_BATCHES; done += BATCH) {
    long long t0 = now_ns();
    for (int i = 0; i < BATCH; i++) set(fd, level, name, value);
    batch_ns[batches++] = now_ns() - t0;
  }
  qsort(batch_ns, (size_t)batches, sizeof batch_ns[0], cmp_ll);
  return (double)batch_ns[batches / 2] / BATCH;
}

int main(int argc, char **argv) {
  if (argc != 2 || atol(argv[1]) < BATCH) {
    fprintf(stderr, "usage: sockopt-cycle N (N >= %d)\n", BATCH);
    return 2;
  }
  long n = atol(argv[1]);
  listen_loopback();
  int ends[2];
  cycle(ends);
  double nodelay = time_call(n, ends[0], IPPROTO_TCP, TCP_NODELAY, 1);
  double keepidle = time_call(n, ends[0], IPPROTO_TCP, TCP_KEEPIDLE, 3600);
  double keepalive = time_call(n, ends[0], SOL_SOCKET, SO_KEEPALIVE, 1);
  printf("{\"nodelay_ns\":%.1f,\"keepidle_ns\":%.1f,\"keepalive_ns\":%.1f,\"idle\":%d}\n", nodelay, keepidle,
         keepalive, get(ends[0], IPPROTO_TCP, TCP_KEEPIDLE));
  close(ends[1]);
  close(ends[0]);
  close(lfd);
  return 0;
}
