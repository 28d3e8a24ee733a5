/*
 * N getpid() system calls through syscall(2) (not glibc's cached getpid), timed with CLOCK_MONOTONIC: what every
 * system call of the host pays while a syscall trace event is enabled (bench/watch.ts). Prints
 * {"ns_per_call": X}.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 2000000;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) syscall(SYS_getpid);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
  printf("{\"ns_per_call\": %.1f}\n", ns / n);
  return 0;
}
