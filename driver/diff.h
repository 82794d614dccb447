/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The differ's richer callback (private), for the layer exporter: besides the change, where
 * the entry is (directory fds, never a path to resolve again), its statx, and for each
 * directory whether every name lower had in it is gone (an opaque directory in a layer).
 */
#pragma once

#include <stdbool.h>
#include <sys/stat.h>

#include <reflayer/layer.h>

typedef struct rl_diff_dir rl_diff_dir;

/* A directory of the upper tree being compared, valid until leave is called for it. */
struct rl_diff_dir {
        const rl_diff_dir *parent; /* NULL for the root */
        int lower_fd;              /* the lower directory; -EBADF where lower has none */
        int upper_fd;
        const char *path;          /* "." for the root */
        unsigned depth;            /* 0 for the root */
        bool lower_all_gone;       /* lower had entries here and upper has none of their names */
};

typedef struct rl_diff_item {
        rl_change change;
        const rl_diff_dir *dir;    /* the directory holding the entry; NULL for the root */
        const char *name;          /* the entry's name in dir ("." for the root) */
        const struct statx *upper; /* the upper entry; NULL for DELETED */
        const rl_diff_dir *self;   /* a directory in upper: its own listing; else NULL */
} rl_diff_item;

typedef struct rl_diff_ops {
        /* Each change, in the order rl_tree_diff gives them; a negative return stops. */
        int (*change)(const rl_diff_item *item, void *userdata, rl_error *err);
        /* A directory and everything below it are done (may be NULL). */
        void (*leave)(const rl_diff_dir *dir, void *userdata);
} rl_diff_ops;

/* rl_tree_diff with the richer callback. */
int rl_diff_run(int lower_fd, int upper_fd, const rl_diff_ops *ops, void *userdata,
                rl_diff_stats *ret_stats, rl_error *err);
