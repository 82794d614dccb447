/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * shift.c owns shifting the owners of a tree in place (driver/shift.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "entry.h"
#include "inoset.h"
#include "progress.h"
#include "shift.h"
#include "treestats.h"
#include "util.h"
#include "walk.h"

#define CAPABILITY_XATTR "security.capability"
#define SHIFT_STATX                                                                                \
        (STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_UID | STATX_GID | STATX_INO | STATX_SIZE)

typedef struct shift_ctx {
        const rl_tree_options *opts;
        rl_meter *meter;
        rl_inoset seen;             /* inodes of several names, shifted already */
        pthread_mutex_t stats_lock; /* workers add their totals here when they finish */
        rl_tree_stats stats;
} shift_ctx;

typedef struct shift_worker {
        rl_tree_stats stats;
        rl_meter_local progress;
        char *names; /* xattr name list */
        char *value; /* an ACL's value, shifted and written back at once */
        char *cap;   /* the file capability, held across the chown that drops it */
} shift_worker;

static int buffers(shift_worker *wk, const char *path, rl_error *err)
{
        if (wk->names)
                return 0;
        char *names = malloc(RL_XATTR_LIST_BUF), *value = malloc(RL_XATTR_VALUE_BUF),
             *cap = malloc(RL_XATTR_VALUE_BUF);
        if (!names || !value || !cap) {
                free(names);
                free(value);
                free(cap);
                return rl_error_set(err, -ENOMEM, "'%s': xattrs", path);
        }
        wk->names = names;
        wk->value = value;
        wk->cap = cap;
        return 0;
}

/*
 * The ids inside the entry's xattrs. The ACLs are rewritten now (chown keeps them); the
 * file capability is read and shifted into wk->cap, *cap_size its length (0: none), to be
 * written after the chown, which drops it.
 */
static int shift_xattrs(const shift_ctx *c, shift_worker *wk, const rl_ref *ref,
                        const char *path, size_t *cap_size, rl_error *err)
{
        const rl_tree_options *o = c->opts;
        bool keep = o->flags & RL_TREE_KEEP_UNMAPPED;
        int r;

        *cap_size = 0;
        if ((r = buffers(wk, path, err)) < 0)
                return r;
        ssize_t len = rl_ref_listxattr(ref, wk->names, RL_XATTR_LIST_BUF);
        if (len < 0) {
                if (errno == EOPNOTSUPP)
                        return 0;
                return rl_error_set(err, -errno, "'%s': list xattrs", path);
        }
        for (const char *n = wk->names; n < wk->names + len; n += strlen(n) + 1) {
                bool is_cap = strcmp(n, CAPABILITY_XATTR) == 0;
                if (!is_cap && strcmp(n, "system.posix_acl_access") != 0 &&
                    strcmp(n, "system.posix_acl_default") != 0)
                        continue; /* no ids inside: the snapshot has it right already */
                char *buf = is_cap ? wk->cap : wk->value;
                ssize_t vlen = rl_ref_getxattr(ref, n, buf, RL_XATTR_VALUE_BUF - 64);
                if (vlen < 0) {
                        if (errno == ENODATA)
                                continue;
                        return rl_error_set(err, -errno, "'%s': read xattr '%s'", path, n);
                }
                size_t size = (size_t)vlen;
                r = rl_idmap_shift_xattr(o->uid_map, o->gid_map, keep, n, buf, &size,
                                         RL_XATTR_VALUE_BUF);
                if (r < 0)
                        return rl_error_set(err, r, "'%s': shift ids in xattr '%s'", path, n);
                if (is_cap) {
                        *cap_size = size;
                        continue;
                }
                if (rl_ref_setxattr(ref, n, buf, size) < 0)
                        return rl_error_set(err, -errno, "'%s': write xattr '%s'", path, n);
                wk->stats.xattrs++;
        }
        return 0;
}

static void count(rl_tree_stats *s, const struct statx *st)
{
        s->entries++;
        switch (st->stx_mode & S_IFMT) {
        case S_IFDIR: s->dirs++; break;
        case S_IFREG:
                s->regular++;
                s->bytes += st->stx_size;
                break;
        case S_IFLNK: s->symlinks++; break;
        case S_IFIFO: s->fifos++; break;
        case S_IFSOCK: s->sockets++; break;
        case S_IFCHR: s->chardevs++; break;
        case S_IFBLK: s->blockdevs++; break;
        }
}

/* Shift one inode, named by ref, whose statx is st. */
static int shift_inode(shift_ctx *c, shift_worker *wk, const rl_ref *ref, const struct statx *st,
                     const char *path, rl_error *err)
{
        const rl_tree_options *o = c->opts;
        uid_t uid;
        gid_t gid;
        size_t cap_size = 0;
        int r;

        if (!S_ISDIR(st->stx_mode) && st->stx_nlink > 1) {
                r = rl_inoset_add(&c->seen, makedev(st->stx_dev_major, st->stx_dev_minor),
                                  st->stx_ino);
                if (r < 0)
                        return rl_error_set(err, r, "'%s': hardlinks", path);
                if (r == 0) {
                        wk->stats.entries++;
                        wk->stats.hardlinks++; /* another name of an inode shifted already */
                        return 0;
                }
        }
        count(&wk->stats, st);
        r = rl_map_owner(o->uid_map, o->gid_map, o->flags & RL_TREE_KEEP_UNMAPPED, st->stx_uid,
                         st->stx_gid, path, &uid, &gid, err);
        if (r < 0)
                return r;
        r = shift_xattrs(c, wk, ref, path, &cap_size, err);
        if (r < 0)
                return r;
        if (uid != st->stx_uid || gid != st->stx_gid) {
                r = rl_ref_chown(ref, uid, gid, path, err);
                if (r < 0)
                        return r;
                /* chown cleared the setuid and setgid bits; its caller is the new owner's
                 * now, so set them back as they were. */
                if ((st->stx_mode & (S_ISUID | S_ISGID)) && !S_ISLNK(st->stx_mode) &&
                    (r = rl_ref_chmod(ref, st->stx_mode & 07777, path, err)) < 0)
                        return r;
        }
        if (cap_size > 0) {
                if (rl_ref_setxattr(ref, CAPABILITY_XATTR, wk->cap, cap_size) < 0)
                        return rl_error_set(err, -errno, "'%s': write xattr '%s'", path,
                                            CAPABILITY_XATTR);
                wk->stats.xattrs++;
        }
        return 0;
}

/* shift_inode, and count the entry towards progress. */
static int shift_one(shift_ctx *c, shift_worker *wk, const rl_ref *ref, const struct statx *st,
                     const char *path, rl_error *err)
{
        int r = shift_inode(c, wk, ref, st, path, err);
        if (r == 0)
                rl_meter_count(c->meter, &wk->progress, S_ISREG(st->stx_mode) ? st->stx_size : 0);
        return r;
}

static int shift_enter(void *ctx, void *worker, rl_walk_dir *d, rl_error *err)
{
        shift_worker *wk = worker;
        struct statx st;

        if (statx(d->fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, SHIFT_STATX, &st) < 0)
                return rl_error_set(err, -errno, "stat '%s'", d->path);
        const rl_ref ref = { .fd = d->fd, .dir_fd = -EBADF };
        return shift_one(ctx, wk, &ref, &st, d->path, err);
}

static int shift_entry(void *ctx, void *worker, rl_walk_dir *d, const char *name,
                       unsigned char d_type _unused_, rl_error *err)
{
        shift_worker *wk = worker;
        char path[PATH_MAX];
        struct statx st;

        rl_walk_entry_path(path, sizeof(path), d, name);
        if (statx(d->fd, name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, SHIFT_STATX, &st) < 0)
                return rl_error_set(err, -errno, "stat '%s'", path);
        /* By name, never opened: a device or a fifo must not be, and a symlink cannot. */
        const rl_ref ref = { .fd = -EBADF, .dir_fd = d->fd, .name = name };
        return shift_one(ctx, wk, &ref, &st, path, err);
}

static int shift_leave(void *ctx _unused_, void *worker _unused_, rl_walk_dir *d _unused_,
                       bool cancelled _unused_, rl_error *err _unused_)
{
        return 0;
}

static void shift_worker_done(void *ctx, void *worker)
{
        shift_ctx *c = ctx;
        shift_worker *wk = worker;

        pthread_mutex_lock(&c->stats_lock);
        rl_tree_stats_add(&c->stats, &wk->stats);
        pthread_mutex_unlock(&c->stats_lock);
        free(wk->names);
        free(wk->value);
        free(wk->cap);
}

static const rl_walk_ops shift_ops = {
        .worker_size = sizeof(shift_worker),
        .worker_done = shift_worker_done,
        .enter = shift_enter,
        .entry = shift_entry,
        .leave = shift_leave,
};

int rl_shift_tree(int root_fd, const rl_tree_options *opts, rl_meter *meter,
                  rl_tree_stats *stats, rl_error *err)
{
        shift_ctx c = {
                .opts = opts,
                .meter = meter,
                .seen = RL_INOSET_INIT,
                .stats_lock = PTHREAD_MUTEX_INITIALIZER,
        };

        int r = rl_walk_run(root_fd, &shift_ops, &c, opts->jobs, opts->cancel, err);
        rl_inoset_done(&c.seen);
        pthread_mutex_destroy(&c.stats_lock);
        if (r < 0)
                return rl_error_prefix(err, r, "owners in place");
        *stats = c.stats;
        return 0;
}
