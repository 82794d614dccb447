/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The one tree walker of the driver (private): visits a directory tree by directory fds,
 * never following a symlink, on N worker threads, and calls back
 *   enter(dir)          when a directory has been opened (its fd is valid),
 *   entry(dir, name)    for every entry of dir that is not a directory,
 *   leave(dir)          once every entry and subdirectory below dir is done,
 * so work that must come after a directory's children (directory times, removing the
 * directory) goes in leave. Directories are handed out last-in first-out, so the walk goes
 * deep before wide and keeps about one fd per level open, plus what the callbacks keep. The
 * entries of one big directory are split into batches that several workers take at once.
 *
 * A callback returning -ECANCELED without filling err says "stopped because of an error
 * recorded elsewhere"; any other failure, -ECANCELED with a message included, is an error.
 * The first error cancels the walk: pending work is dropped, leave is still called (with
 * cancelled = true) on every directory that was entered, so callbacks can release what they
 * hold, and the first error is what rl_walk_run reports.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <reflayer/error.h>

/* enter's answer for "do not list this directory": nothing below it is visited, and leave
 * is still called (a directory removed whole by other means, say). */
#define RL_WALK_SKIP 1

/* Directories nested deeper than this fail the walk with -ELOOP. */
#define RL_WALK_DEPTH_MAX 8192

typedef struct rl_walk_dir rl_walk_dir;

struct rl_walk_dir {
        rl_walk_dir *parent; /* NULL for the root */
        int fd;              /* the directory, O_RDONLY|O_DIRECTORY; valid from enter to leave */
        const char *path;    /* relative to the root, "." for the root: for messages */
        const char *name;    /* the last component, "." for the root */
        unsigned depth;      /* 0 for the root */
        void *priv;          /* the callbacks' own state for this directory */
};

typedef struct rl_walk_ops {
        size_t worker_size;                     /* zeroed scratch per worker (may be 0) */
        void (*worker_done)(void *ctx, void *worker); /* release a worker's scratch */
        int (*enter)(void *ctx, void *worker, rl_walk_dir *dir, rl_error *err);
        /* d_type is the directory's word (DT_REG, DT_LNK, ...): a hint, never DT_DIR. */
        int (*entry)(void *ctx, void *worker, rl_walk_dir *dir, const char *name,
                     unsigned char d_type, rl_error *err);
        int (*leave)(void *ctx, void *worker, rl_walk_dir *dir, bool cancelled, rl_error *err);
} rl_walk_ops;

/* "name" in the root, "dir/name" below it: an entry's path, for messages (cut at size). */
void rl_walk_entry_path(char *buf, size_t size, const rl_walk_dir *d, const char *name);

/*
 * Walk the tree whose root is the directory root_fd (borrowed; the walker reopens it).
 * jobs: worker threads, 0 for the number of online CPUs; with 1 everything runs in
 * the calling thread. cancel (may be NULL): once it reads true, the walk stops with
 * -ECANCELED, naming where it stopped. Returns 0, or the first error (negative errno,
 * message in err).
 */
int rl_walk_run(int root_fd, const rl_walk_ops *ops, void *ctx, unsigned jobs,
                const atomic_bool *cancel, rl_error *err);
