/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * usage.c owns measuring a tree's disk usage, split into exclusive and shared extents.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <reflayer/usage.h>

#include "inoset.h"
#include "subvol.h"
#include "util.h"
#include "walk.h"

#define EXTENTS_PER_CALL 256

typedef struct usage_ctx {
        pthread_mutex_t lock; /* guards total */
        rl_usage total;
        rl_inoset seen; /* inodes with nlink > 1 already counted */
        /* A btrfs snapshot whose source exists: when it was taken. An entry whose ctime is
         * older is the very inode of the source, metadata and all (btrfs copies a leaf of
         * its btree only when something in it changes), so long as the source has not
         * changed it since (the store's parents never do). */
        bool snapshot;
        struct timespec snapshot_time;
} usage_ctx;

typedef struct usage_worker {
        rl_usage sum;
        struct fiemap *fm;
} usage_worker;

/* In a btrfs snapshot whose source still exists, is the entry as the snapshot found it (its
 * ctime older)? Then what FIEMAP cannot tell about, its metadata and its inline data, is
 * the source's too. (Extents FIEMAP judges itself, from their back references.) */
static bool unchanged_in_snapshot(const usage_ctx *c, const struct statx *st)
{
        return c->snapshot && (st->stx_mask & STATX_CTIME) &&
               (st->stx_ctime.tv_sec < c->snapshot_time.tv_sec ||
                (st->stx_ctime.tv_sec == c->snapshot_time.tv_sec &&
                 st->stx_ctime.tv_nsec < (uint32_t)c->snapshot_time.tv_nsec));
}

/* Blocks counted whole (a directory's, a symlink's, any where FIEMAP is missing): shared if
 * unchanged in a btrfs snapshot, else exclusive and, but for a regular file, metadata. */
static void count_blocks(const usage_ctx *c, usage_worker *wk, const struct statx *st)
{
        uint64_t blocks = st->stx_blocks * 512;
        wk->sum.bytes += blocks;
        if (unchanged_in_snapshot(c, st)) {
                wk->sum.bytes_shared += blocks;
                return;
        }
        wk->sum.bytes_exclusive += blocks;
        if (!S_ISREG(st->stx_mode))
                wk->sum.bytes_metadata += blocks;
}

/* Sum the file's extents by whether they are shared; data kept inline in metadata apart (no
 * extent of its own: FIEMAP never calls it shared). -EOPNOTSUPP: no FIEMAP here. */
static int measure_extents(usage_worker *wk, int fd, uint64_t *excl, uint64_t *shared,
                           uint64_t *inl)
{
        uint64_t start = 0;

        if (!wk->fm) {
                wk->fm = calloc(1, sizeof(struct fiemap) +
                                           EXTENTS_PER_CALL * sizeof(struct fiemap_extent));
                if (!wk->fm)
                        return -ENOMEM;
        }
        for (;;) {
                struct fiemap *fm = wk->fm;
                memset(fm, 0, sizeof(*fm));
                fm->fm_start = start;
                fm->fm_length = FIEMAP_MAX_OFFSET - start;
                fm->fm_extent_count = EXTENTS_PER_CALL;
                if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0)
                        return -errno;
                if (fm->fm_mapped_extents == 0)
                        return 0;
                for (unsigned i = 0; i < fm->fm_mapped_extents; i++) {
                        const struct fiemap_extent *e = &fm->fm_extents[i];
                        if (e->fe_flags & FIEMAP_EXTENT_DATA_INLINE)
                                *inl += e->fe_length;
                        else if (e->fe_flags & FIEMAP_EXTENT_SHARED)
                                *shared += e->fe_length;
                        else
                                *excl += e->fe_length;
                        if (e->fe_flags & FIEMAP_EXTENT_LAST)
                                return 0;
                        start = e->fe_logical + e->fe_length;
                }
        }
}

static int usage_entry(void *ctx, void *worker, rl_walk_dir *d, const char *name,
                       unsigned char d_type _unused_, rl_error *err)
{
        usage_worker *wk = worker;
        struct statx st;

        if (statx(d->fd, name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC,
                  STATX_TYPE | STATX_INO | STATX_NLINK | STATX_BLOCKS | STATX_CTIME, &st) < 0)
                return rl_error_set(err, -errno, "usage: stat '%s/%s'", d->path, name);
        if (st.stx_nlink > 1 && !S_ISDIR(st.stx_mode)) {
                usage_ctx *c = ctx;
                int first = rl_inoset_add(&c->seen, makedev(st.stx_dev_major, st.stx_dev_minor),
                                          st.stx_ino);
                if (first < 0)
                        return rl_error_set(err, first, "usage '%s/%s'", d->path, name);
                if (!first)
                        return 0;
        }
        wk->sum.inodes++;
        uint64_t blocks = st.stx_blocks * 512;
        if (S_ISREG(st.stx_mode) && blocks > 0) {
                _cleanup_close_ int fd = openat(d->fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
                                                                  O_NOCTTY | O_CLOEXEC | O_NOATIME);
                if (fd < 0 && errno == EPERM)
                        fd = openat(d->fd, name,
                                    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
                if (fd < 0)
                        return rl_error_set(err, -errno, "usage: open '%s/%s'", d->path, name);
                uint64_t excl = 0, shared = 0, inl = 0;
                int r = measure_extents(wk, fd, &excl, &shared, &inl);
                if (r == 0) {
                        if (unchanged_in_snapshot(ctx, &st))
                                shared += inl;
                        else
                                excl += inl;
                        wk->sum.bytes += excl + shared;
                        wk->sum.bytes_exclusive += excl;
                        wk->sum.bytes_shared += shared;
                        return 0;
                }
                if (r != -EOPNOTSUPP && r != -ENOTTY)
                        return rl_error_set(err, r, "usage: FIEMAP '%s/%s'", d->path, name);
        }
        count_blocks(ctx, wk, &st);
        return 0;
}

static int usage_enter(void *ctx, void *worker, rl_walk_dir *d, rl_error *err)
{
        usage_worker *wk = worker;
        struct statx st;

        if (statx(d->fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
                  STATX_TYPE | STATX_BLOCKS | STATX_CTIME, &st) < 0)
                return rl_error_set(err, -errno, "usage: stat '%s'", d->path);
        wk->sum.inodes++;
        count_blocks(ctx, wk, &st);
        return 0;
}

static int usage_leave(void *ctx _unused_, void *worker _unused_, rl_walk_dir *d _unused_,
                       bool cancelled _unused_, rl_error *err _unused_)
{
        return 0;
}

static void usage_worker_done(void *ctx, void *worker)
{
        usage_ctx *c = ctx;
        usage_worker *wk = worker;

        pthread_mutex_lock(&c->lock);
        c->total.inodes += wk->sum.inodes;
        c->total.bytes += wk->sum.bytes;
        c->total.bytes_exclusive += wk->sum.bytes_exclusive;
        c->total.bytes_shared += wk->sum.bytes_shared;
        c->total.bytes_metadata += wk->sum.bytes_metadata;
        pthread_mutex_unlock(&c->lock);
        free(wk->fm);
}

static const rl_walk_ops usage_ops = {
        .worker_size = sizeof(usage_worker),
        .worker_done = usage_worker_done,
        .enter = usage_enter,
        .entry = usage_entry,
        .leave = usage_leave,
};

RL_EXPORT int rl_usage_tree(int dir_fd, unsigned jobs, rl_usage *ret, rl_error *err)
{
        usage_ctx c = { .lock = PTHREAD_MUTEX_INITIALIZER, .seen = RL_INOSET_INIT };
        c.snapshot =
                rl_subvol_is_root(dir_fd) && rl_subvol_source_time(dir_fd, &c.snapshot_time) == 0;

        int r = rl_walk_run(dir_fd, &usage_ops, &c, jobs, NULL, err);
        rl_inoset_done(&c.seen);
        pthread_mutex_destroy(&c.lock);
        if (r < 0)
                return rl_error_prefix(err, r, "usage");
        *ret = c.total;
        return 0;
}
