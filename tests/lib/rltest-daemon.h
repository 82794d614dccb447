/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reflayerd as a child of a test: spawned from $RL_DAEMON (tests/run-unit sets it) with
 * posix_spawn, ready when it says READY=1 on a notify socket of the test's own.
 */
#pragma once

#include <limits.h>
#include <sys/types.h>

typedef struct rlt_daemon {
        pid_t pid; /* -1: not running */
        char root[PATH_MAX];
        char sock[PATH_MAX];
} rlt_daemon;

/*
 * Start reflayerd --root d->root --socket d->sock --log-level debug, plus extra (NULL-ended,
 * may be NULL). listen_fd >= 0 is handed over as a systemd socket (LISTEN_FDS=1). Returns
 * once the daemon is ready; fails the test if it is not within 20 s.
 */
void rlt_daemon_start(rlt_daemon *d, int listen_fd, const char *const *extra);

/* Start as above, but return the daemon's exit status instead of waiting for readiness
 * when it exits first (for tests of refused start-ups); 0x10000 when it got ready. */
int rlt_daemon_try_start(rlt_daemon *d, int listen_fd, const char *const *extra);

/* Start with two sockets passed as systemd does: listen_fd (JSON-RPC) and grpc_fd, named
 * "containerd" (LISTEN_FDNAMES). */
void rlt_daemon_start_activated(rlt_daemon *d, int listen_fd, int grpc_fd);

/* SIGTERM and wait; returns the wait status (-1 if it was not running). */
int rlt_daemon_stop(rlt_daemon *d);

/* A connection to the unix socket at path made as uid/gid with no supplementary groups (by a
 * thread of its own, whose credentials alone change: SO_PEERCRED records them at connect).
 * Returns the fd, or -errno. */
int rlt_connect_as(const char *path, uid_t uid, gid_t gid);

/* The path of the built reflayerd ($RL_DAEMON). */
const char *rlt_daemon_path(void);
