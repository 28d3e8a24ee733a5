/*
 * The event writer of libtcpka.so (events.c), as the hooks in preload.c call it.
 */
#ifndef TCPKA_EVENTS_H
#define TCPKA_EVENTS_H

#include "shim.h"

/* Nothing declared here leaves the library, and the hooks reach it without going through the GOT: the hot path
 * costs what it cost when everything was one file. */
#pragma GCC visibility push(hidden)

/* One line "PREFIX WHAT[SEP DETAIL]" to fd, in one write; a failure is ignored (errno is the caller's to keep). */
void say(int fd, const char *prefix, const char *what, const char *sep, const char *detail);

/* TCPKA_EVENTS with its TCPKA_EVENTS_ID and TCPKA_EVENTS_KEY: 0 when they are valid or absent, -1 when they are
 * not (then no events are written; keepalive is applied as configured all the same). */
int events_init(void);
/* This process numbers its events from 0: called at load, and in a fork()ed child. A child made without fork()
 * (a raw clone or fork syscall, _Fork) numbers nothing. */
void events_owner(void);

/* The event file's path; empty when no events are written. Tested on the hot path, so not behind a call. */
extern char ev_path[];
static inline int events_on(void) { return ev_path[0] != 0; }

/* One event about a socket: addresses, what the program set, what tcpka set (from its slot, NULL when it has
 * none), the outcome of the call, and what the socket really has now. `target`: the peer a connect was asked
 * for, reported when the socket has none yet. */
void ev_socket_write(const char *kind, int fd, const struct slot *s, int matched, int ret, int err,
                     const struct sockaddr_storage *target);
static inline void ev_socket(const char *kind, int fd, const struct slot *s, int matched, int ret, int err,
                             const struct sockaddr_storage *target) {
  if (events_on()) ev_socket_write(kind, fd, s, matched, ret, err, target);
}
/* An event with nothing but its kind: "start", "exit". */
void ev_note(const char *kind);
/* The shim's configuration was rejected: why, and the value. */
void ev_error(const char *message, const char *value);
/* The event file opened for one event, or -1 (counted as lost): for a process about to switch its uid, which
 * cannot open it afterwards. ev_setuid writes the event through it; either closes it. */
int ev_open(void);
void ev_setuid(int fd, unsigned long long uid);
void ev_close(int fd);

#pragma GCC visibility pop

#endif
