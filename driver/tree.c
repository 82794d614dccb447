/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * tree.c owns replicating one tree (entry kinds, metadata, xattrs, hardlinks, id shifting,
 * publish by rename) and removing one tree. Traversal is walk.c's; file data is clone.c's.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <reflayer/fsinfo.h>
#include <reflayer/tree.h>

#include "entry.h"
#include "inoset.h"
#include "progress.h"
#include "shift.h"
#include "subvol.h"
#include "treestats.h"
#include "util.h"
#include "walk.h"

#define STATX_WANT (STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_UID | STATX_GID |            \
                    STATX_ATIME | STATX_MTIME | STATX_INO | STATX_SIZE)

/* --- hardlinks: one destination inode per source inode ------------------------------- */

typedef enum link_state { LINK_PENDING, LINK_READY, LINK_FAILED } link_state;

typedef struct link_entry {
        uint64_t dev, ino;
        link_state state;
        char *path; /* first copy, relative to the destination root */
} link_entry;

typedef struct link_map {
        pthread_mutex_t lock;
        pthread_cond_t cond; /* a PENDING entry became READY or FAILED */
        link_entry **slots;
        size_t cap, len;
} link_map;

static link_entry **link_slot(link_map *m, uint64_t dev, uint64_t ino)
{
        for (size_t i = rl_inode_hash(dev, ino) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
                link_entry *e = m->slots[i];
                if (!e || (e->dev == dev && e->ino == ino))
                        return &m->slots[i];
        }
}

/* Under m->lock. Keeps the table at most half full, so a lookup always ends. */
static int link_grow(link_map *m)
{
        if (m->len * 2 < m->cap)
                return 0;
        size_t old_cap = m->cap;
        link_entry **old = m->slots;

        m->cap = old_cap ? old_cap * 2 : 256;
        m->slots = calloc(m->cap, sizeof(*m->slots));
        if (!m->slots) {
                m->slots = old;
                m->cap = old_cap;
                return -ENOMEM;
        }
        for (size_t i = 0; i < old_cap; i++)
                if (old[i])
                        *link_slot(m, old[i]->dev, old[i]->ino) = old[i];
        free(old);
        return 0;
}

static void link_map_clear(link_map *m)
{
        for (size_t i = 0; i < m->cap; i++)
                if (m->slots[i]) {
                        free(m->slots[i]->path);
                        free(m->slots[i]);
                }
        free(m->slots);
        pthread_mutex_destroy(&m->lock);
        pthread_cond_destroy(&m->cond);
}

/* --- the clone of one tree ------------------------------------------------------------ */

typedef struct clone_ctx {
        const rl_tree_options *opts;
        rl_fsinfo *dst_fs;
        int dst_root_fd;            /* the temporary root being built */
        uint64_t tmp_dev, tmp_ino;  /* never clone the tree being built into itself */
        uid_t fsuid; /* who new entries belong to: a daemon acting for a client is */
        gid_t fsgid; /* that client here, not its own euid */
        mode_t umask;               /* the process's, read once: see create_mode() */
        link_map links;

        pthread_mutex_t stats_lock; /* workers add their totals here when they finish */
        rl_tree_stats stats;

        rl_meter *meter; /* shared with the shift a snapshot may have needed first; its
                          * start_ns is the clone's */
} clone_ctx;

typedef struct clone_worker {
        clone_ctx *ctx;
        rl_tree_stats stats;
        rl_meter_local progress; /* counted, not yet added to the meter */
        char *names;  /* xattr name list */
        char *value;  /* xattr value */
} clone_worker;

typedef struct clone_dir {
        int dst_fd;
        struct statx st;
        bool mode_done; /* created with its final mode: leave needs no fchmod */
} clone_dir;

typedef rl_ref ref;

static int map_ids(const clone_ctx *c, const struct statx *st, const char *path, uid_t *uid,
                   gid_t *gid, rl_error *err)
{
        return rl_map_owner(c->opts->uid_map, c->opts->gid_map,
                            c->opts->flags & RL_TREE_KEEP_UNMAPPED, st->stx_uid, st->stx_gid,
                            path, uid, gid, err);
}

/* Copy every xattr of src to dst, shifting the ids inside ACLs and capabilities. */
static int copy_xattrs(clone_worker *wk, const ref *src, const ref *dst, const char *path,
                       rl_error *err)
{
        const rl_tree_options *o = wk->ctx->opts;
        bool shift = o->uid_map || o->gid_map;

        if (!wk->names) {
                /* XATTR_LIST_MAX and XATTR_SIZE_MAX: one call each, never a size probe. */
                wk->names = malloc(RL_XATTR_LIST_BUF);
                wk->value = malloc(RL_XATTR_VALUE_BUF);
                if (!wk->names || !wk->value)
                        return rl_error_set(err, -ENOMEM, "'%s': xattrs", path);
        }
        ssize_t len = rl_ref_listxattr(src, wk->names, RL_XATTR_LIST_BUF);
        if (len < 0) {
                if (errno == EOPNOTSUPP)
                        return 0; /* the source has none to give */
                return rl_error_set(err, -errno, "'%s': list xattrs", path);
        }
        for (const char *n = wk->names; n < wk->names + len; n += strlen(n) + 1) {
                if (rl_xattr_is_alias(n))
                        continue;
                ssize_t vlen = rl_ref_getxattr(src, n, wk->value, RL_XATTR_VALUE_BUF - 64);
                if (vlen < 0) {
                        if (errno == ENODATA)
                                continue; /* removed since it was listed */
                        return rl_error_set(err, -errno, "'%s': read xattr '%s'", path, n);
                }
                size_t size = (size_t)vlen;
                if (shift) {
                        int r = rl_idmap_shift_xattr(o->uid_map, o->gid_map,
                                                     o->flags & RL_TREE_KEEP_UNMAPPED, n,
                                                     wk->value, &size, RL_XATTR_VALUE_BUF);
                        if (r < 0)
                                return rl_error_set(err, r, "'%s': shift ids in xattr '%s'",
                                                    path, n);
                }
                if (rl_ref_setxattr(dst, n, wk->value, size) < 0)
                        return rl_error_set(err, -errno, "'%s': write xattr '%s'", path, n);
                wk->stats.xattrs++;
        }
        return 0;
}

/*
 * Owner, xattrs, mode, times, in that order: chown clears setuid/setgid and
 * security.capability, so both come after it; ACLs and the mode agree on the group bits,
 * so the mode goes last of the two; nothing after utimens may touch the times.
 */
static int apply_meta(clone_worker *wk, const struct statx *st, const ref *src, const ref *dst,
                      bool mode_done, const char *path, rl_error *err)
{
        const clone_ctx *c = wk->ctx;
        bool is_link = S_ISLNK(st->stx_mode);
        uid_t uid = 0;
        gid_t gid = 0;
        int r;

        r = map_ids(c, st, path, &uid, &gid, err);
        if (r < 0)
                return r;
        /* A new entry already belongs to us (our directories get no setgid bit until their
         * own metadata is applied, after their children), so chown only what differs. */
        if ((uid != c->fsuid || gid != c->fsgid) && (r = rl_ref_chown(dst, uid, gid, path, err)) < 0)
                return r;
        r = copy_xattrs(wk, src, dst, path, err);
        if (r < 0)
                return r;
        if (!is_link && !mode_done && (r = rl_ref_chmod(dst, st->stx_mode & 07777, path, err)) < 0)
                return r;
        struct timespec ts[2] = {
                { st->stx_atime.tv_sec, st->stx_atime.tv_nsec },
                { st->stx_mtime.tv_sec, st->stx_mtime.tv_nsec },
        };
        return rl_ref_utimens(dst, ts, path, err);
}

/* Open a source file to read it, or -errno. O_NOATIME: cloning must not change the source.
 * Only the owner or CAP_FOWNER may ask for it; anyone else reads the ordinary way.
 * O_NONBLOCK|O_NOCTTY: should the entry have become a fifo or a terminal, opening it must
 * neither hang nor take a controlling terminal. */
static int open_source(int dir_fd, const char *name)
{
        int flags = O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC;
        int fd = openat(dir_fd, name, flags | O_NOATIME);
        if (fd < 0 && errno == EPERM)
                fd = openat(dir_fd, name, flags);
        return fd < 0 ? -errno : fd;
}

/*
 * Open the entry that statx (st, by name) said is a regular file, and check that what was
 * opened is that inode: a swapped entry is an error, not a new file.
 */
static int open_source_file(int dir_fd, const char *name, const struct statx *st,
                            const char *path, rl_error *err)
{
        _cleanup_close_ int fd = open_source(dir_fd, name);
        if (fd < 0)
                return rl_error_set(err, fd, "open '%s'", path);

        struct statx now;
        if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &now) < 0)
                return rl_error_set(err, -errno, "stat '%s'", path);
        if (now.stx_ino != st->stx_ino || now.stx_dev_major != st->stx_dev_major ||
            now.stx_dev_minor != st->stx_dev_minor || !S_ISREG(now.stx_mode))
                return rl_error_set(err, -ESTALE, "'%s' was replaced while being cloned", path);
        return TAKE_FD(fd);
}

/*
 * An entry the directory lists as a regular file: open it first and stat the open file, one
 * statx instead of statx + open + statx to see that the name still meant the same inode.
 * The metadata copied is then the metadata of the very inode whose data is cloned. Returns
 * the fd with *st filled, or -EAGAIN when the entry is not (or no longer) a regular file we
 * can open: the caller then stats it by name, which says what it is now, or names the error.
 */
static int open_listed_file(int dir_fd, const char *name, struct statx *st)
{
        _cleanup_close_ int fd = open_source(dir_fd, name);
        if (fd < 0)
                return -EAGAIN;
        if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_WANT, st) < 0 ||
            !S_ISREG(st->stx_mode))
                return -EAGAIN;
        return TAKE_FD(fd);
}

/*
 * The mode to create a regular file with, and whether that already is its final mode, which
 * saves an fchmod per file: true when the umask takes nothing away and there are no setuid,
 * setgid or sticky bits (chown would clear the first two; they always get an explicit
 * fchmod). Our directories carry no default ACL while children are created, so the umask is
 * all that stands between the create mode and the result. The file is opened for writing
 * at creation, so even a read-only mode does not keep the data out.
 */
static bool create_mode(const clone_ctx *c, const struct statx *st, mode_t *ret)
{
        mode_t mode = st->stx_mode & 07777;
        if ((mode & 07000) == 0 && (mode & c->umask) == 0) {
                *ret = mode;
                return true;
        }
        *ret = 0600;
        return false;
}

/*
 * The mode to create a directory with, and whether that is its final mode, which saves an
 * fchmod per directory. Only a mode that lets its owner in and write (rwx------) is given at
 * creation: a read-only source directory still has to take its children, so it gets 0700
 * until leave applies the real mode. Giving others their bits early opens nothing to them:
 * the temporary root stays 0700 until the very last leave. Setuid, setgid and sticky bits
 * always wait for leave; a setgid directory would hand its group to the children we create.
 */
static bool dir_create_mode(const clone_ctx *c, const struct statx *st, mode_t *ret)
{
        mode_t mode = st->stx_mode & 07777;
        if ((mode & 07000) == 0 && (mode & c->umask) == 0 && (mode & 0700) == 0700) {
                *ret = mode;
                return true;
        }
        *ret = 0700;
        return false;
}

/* Clone the regular file src (borrowed, opened by the caller) as dst_dir/name. */
static int clone_regular(clone_worker *wk, int src, int dst_dir, const char *name,
                         const struct statx *st, const char *path, rl_error *err)
{
        _cleanup_close_ int dst = -EBADF;
        rl_clone_result res;
        mode_t mode;
        int r;

        bool mode_done = create_mode(wk->ctx, st, &mode);
        dst = openat(dst_dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (dst < 0)
                return rl_error_set(err, -errno, "create '%s'", path);
        r = rl_file_clone(src, dst, wk->ctx->dst_fs, st->stx_size, path, &res, err);
        if (r < 0)
                return r;
        r = apply_meta(wk, st, &(ref){ .fd = src }, &(ref){ .fd = dst }, mode_done, path, err);
        if (r < 0)
                return r;
        wk->stats.regular++;
        wk->stats.bytes += st->stx_size;
        wk->stats.bytes_reflinked += res.bytes_reflinked;
        wk->stats.bytes_copied += res.bytes_copied;
        wk->stats.methods[res.method]++;
        return 0;
}

/*
 * A regular file with more than one name. The first worker to meet the inode clones it;
 * the others wait for that (it never waits on anything itself) and link to the copy.
 */
static int clone_hardlinked(clone_worker *wk, rl_walk_dir *d, int src, int dst_dir,
                            const char *name, const struct statx *st, const char *path,
                            rl_error *err)
{
        link_map *m = &wk->ctx->links;
        uint64_t dev = makedev(st->stx_dev_major, st->stx_dev_minor);
        link_entry *e;
        int r;

        pthread_mutex_lock(&m->lock);
        r = link_grow(m);
        if (r < 0) {
                pthread_mutex_unlock(&m->lock);
                return rl_error_set(err, r, "'%s': hardlink map", path);
        }
        link_entry **slot = link_slot(m, dev, st->stx_ino);
        if (!*slot) {
                e = calloc(1, sizeof(*e));
                /* The full path: `path` is cut at PATH_MAX for messages, this one is not. */
                char *p = NULL;
                if (asprintf(&p, "%s%s%s", d->depth ? d->path : "", d->depth ? "/" : "",
                             name) < 0)
                        p = NULL;
                if (!e || !p) {
                        free(e);
                        free(p);
                        pthread_mutex_unlock(&m->lock);
                        return rl_error_set(err, -ENOMEM, "'%s': hardlink map", path);
                }
                *e = (link_entry){ dev, st->stx_ino, LINK_PENDING, p };
                *slot = e;
                m->len++;
                pthread_mutex_unlock(&m->lock);

                r = clone_regular(wk, src, dst_dir, name, st, path, err);

                pthread_mutex_lock(&m->lock);
                e->state = r < 0 ? LINK_FAILED : LINK_READY;
                pthread_cond_broadcast(&m->cond);
                pthread_mutex_unlock(&m->lock);
                return r;
        }
        e = *slot;
        while (e->state == LINK_PENDING)
                pthread_cond_wait(&m->cond, &m->lock);
        link_state state = e->state;
        pthread_mutex_unlock(&m->lock);
        if (state == LINK_FAILED)
                return -ECANCELED; /* the first copy's error is the walk's error */

        /* The first copy lives in our own private tree, but resolve its directory strictly
         * beneath the root all the same. e->path is stable once READY. */
        const char *slash = strrchr(e->path, '/');
        _cleanup_close_ int parent = -EBADF;
        const char *base = e->path;
        if (slash) {
                _cleanup_free_ char *dir = strndup(e->path, slash - e->path);
                if (!dir)
                        return rl_error_set(err, -ENOMEM, "link '%s'", path);
                parent = rl_openat_beneath(wk->ctx->dst_root_fd, dir, O_PATH | O_DIRECTORY, 0);
                if (parent < 0)
                        return rl_error_set(err, parent, "link '%s': open '%s'", path, dir);
                base = slash + 1;
        }
        if (linkat(parent >= 0 ? parent : wk->ctx->dst_root_fd, base, dst_dir, name, 0) < 0)
                return rl_error_set(err, -errno, "link '%s' to '%s'", path, e->path);
        wk->stats.hardlinks++;
        return 0;
}

static int clone_symlink(clone_worker *wk, rl_walk_dir *d, int dst_dir, const char *name,
                         const struct statx *st, const char *path, rl_error *err)
{
        char target[PATH_MAX + 1];

        ssize_t n = readlinkat(d->fd, name, target, sizeof(target));
        if (n < 0)
                return rl_error_set(err, -errno, "read link '%s'", path);
        if ((size_t)n >= sizeof(target) || (uint64_t)n != st->stx_size)
                return rl_error_set(err, -ESTALE, "'%s' changed while being cloned", path);
        target[n] = '\0';
        if (symlinkat(target, dst_dir, name) < 0)
                return rl_error_set(err, -errno, "create symlink '%s'", path);
        wk->stats.symlinks++;
        return apply_meta(wk, st, &(ref){ -EBADF, d->fd, name },
                          &(ref){ -EBADF, dst_dir, name }, false, path, err);
}

static int clone_special(clone_worker *wk, rl_walk_dir *d, int dst_dir, const char *name,
                         const struct statx *st, const char *path, rl_error *err)
{
        mode_t type = st->stx_mode & S_IFMT;
        dev_t rdev = makedev(st->stx_rdev_major, st->stx_rdev_minor);

        if (mknodat(dst_dir, name, type | 0600, S_ISCHR(type) || S_ISBLK(type) ? rdev : 0) < 0)
                return rl_error_set(err, -errno, "create %s '%s'",
                                    S_ISFIFO(type)   ? "fifo"
                                    : S_ISSOCK(type) ? "socket"
                                                     : "device node",
                                    path);
        switch (type) {
        case S_IFIFO:
                wk->stats.fifos++;
                break;
        case S_IFSOCK:
                wk->stats.sockets++;
                break;
        case S_IFCHR:
                wk->stats.chardevs++;
                break;
        default:
                wk->stats.blockdevs++;
                break;
        }
        return apply_meta(wk, st, &(ref){ -EBADF, d->fd, name },
                          &(ref){ -EBADF, dst_dir, name }, false, path, err);
}

static int clone_entry(void *ctx, void *worker, rl_walk_dir *d, const char *name,
                       unsigned char d_type, rl_error *err)
{
        clone_worker *wk = worker;
        clone_dir *dd = d->priv;
        _cleanup_close_ int src = -EBADF;
        char path[PATH_MAX];
        struct statx st;
        int r;

        wk->ctx = ctx;
        rl_walk_entry_path(path, sizeof(path), d, name);
        /* Most entries are regular files, listed as such: open, then stat the open file.
         * The second and later names of a hardlinked file are opened for nothing (they
         * become links to the first copy); hardlinks are rare enough for that. */
        if (d_type == DT_REG)
                src = open_listed_file(d->fd, name, &st);
        if (src < 0) {
                if (statx(d->fd, name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_WANT,
                          &st) < 0)
                        return rl_error_set(err, -errno, "stat '%s'", path);
                if (S_ISREG(st.stx_mode)) {
                        src = open_source_file(d->fd, name, &st, path, err);
                        if (src < 0)
                                return src;
                }
        }

        switch (st.stx_mode & S_IFMT) {
        case S_IFREG:
                if (st.stx_nlink > 1)
                        r = clone_hardlinked(wk, d, src, dd->dst_fd, name, &st, path, err);
                else
                        r = clone_regular(wk, src, dd->dst_fd, name, &st, path, err);
                break;
        case S_IFLNK:
                r = clone_symlink(wk, d, dd->dst_fd, name, &st, path, err);
                break;
        case S_IFIFO:
        case S_IFSOCK:
        case S_IFCHR:
        case S_IFBLK:
                r = clone_special(wk, d, dd->dst_fd, name, &st, path, err);
                break;
        default:
                /* Listed as something else, a directory now: the source is changing. */
                r = rl_error_set(err, -ESTALE, "'%s' changed while being cloned", path);
                break;
        }
        if (r < 0)
                return r;
        wk->stats.entries++;
        rl_meter_count(wk->ctx->meter, &wk->progress, S_ISREG(st.stx_mode) ? st.stx_size : 0);
        return 0;
}

static int clone_enter(void *ctx, void *worker, rl_walk_dir *d, rl_error *err)
{
        clone_ctx *c = ctx;
        clone_worker *wk = worker;
        _cleanup_free_ clone_dir *dd = calloc(1, sizeof(*dd));

        wk->ctx = c;
        if (!dd)
                return rl_error_set(err, -ENOMEM, "'%s'", d->path);
        dd->dst_fd = -EBADF;
        if (statx(d->fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_WANT, &dd->st) < 0)
                return rl_error_set(err, -errno, "stat '%s'", d->path);
        if (dd->st.stx_ino == c->tmp_ino &&
            makedev(dd->st.stx_dev_major, dd->st.stx_dev_minor) == c->tmp_dev)
                return rl_error_set(err, -EINVAL,
                                    "'%s' is the new tree itself: the destination lies inside "
                                    "the source",
                                    d->path);
        if (!d->parent) {
                dd->dst_fd = fcntl(c->dst_root_fd, F_DUPFD_CLOEXEC, 3);
                if (dd->dst_fd < 0)
                        return rl_error_set(err, -errno, "'%s': dup", d->path);
        } else {
                const clone_dir *pd = d->parent->priv;
                mode_t mode;
                dd->mode_done = dir_create_mode(c, &dd->st, &mode);
                if (mkdirat(pd->dst_fd, d->name, mode) < 0)
                        return rl_error_set(err, -errno, "create directory '%s'", d->path);
                dd->dst_fd = openat(pd->dst_fd, d->name,
                                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (dd->dst_fd < 0)
                        return rl_error_set(err, -errno, "open new directory '%s'", d->path);
        }
        d->priv = TAKE_PTR(dd);
        return 0;
}

static int clone_leave(void *ctx, void *worker, rl_walk_dir *d, bool cancelled, rl_error *err)
{
        clone_worker *wk = worker;
        _cleanup_free_ clone_dir *dd = d->priv;
        _cleanup_close_ int dst_fd = -EBADF;

        d->priv = NULL;
        if (!dd)
                return 0;
        dst_fd = dd->dst_fd;
        if (cancelled)
                return 0;
        wk->ctx = ctx;
        int r = apply_meta(wk, &dd->st, &(ref){ .fd = d->fd }, &(ref){ .fd = dst_fd },
                           dd->mode_done, d->path, err);
        if (r < 0)
                return r;
        wk->stats.dirs++;
        wk->stats.entries++;
        return 0;
}

static void clone_worker_done(void *ctx, void *worker)
{
        clone_worker *wk = worker;
        clone_ctx *c = ctx;

        pthread_mutex_lock(&c->stats_lock);
        rl_tree_stats_add(&c->stats, &wk->stats);
        pthread_mutex_unlock(&c->stats_lock);
        free(wk->names);
        free(wk->value);
}

static const rl_walk_ops clone_ops = {
        .worker_size = sizeof(clone_worker),
        .worker_done = clone_worker_done,
        .enter = clone_enter,
        .entry = clone_entry,
        .leave = clone_leave,
};

/* --- removal -------------------------------------------------------------------------- */

typedef struct remove_ctx {
        uint64_t mnt_id;
} remove_ctx;

/* Is the directory fd, whose statx is st (mode, inode, mount id), a btrfs subvolume on the
 * mount of its parent (mnt_id), that one call can delete whole? A filesystem mounted there
 * is not ours to delete. */
static bool deletes_as_subvol(int fd, const struct statx *st, uint64_t mnt_id)
{
        return S_ISDIR(st->stx_mode) && st->stx_ino == RL_SUBVOL_ROOT_INO &&
               st->stx_mnt_id == mnt_id && rl_subvol_supported(fd);
}

static int remove_enter(void *ctx, void *worker _unused_, rl_walk_dir *d, rl_error *err)
{
        remove_ctx *c = ctx;
        struct statx st;

        if (statx(d->fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
                  STATX_MODE | STATX_INO | STATX_MNT_ID, &st) < 0)
                return rl_error_set(err, -errno, "stat '%s'", d->path);
        if (!d->parent)
                c->mnt_id = st.stx_mnt_id;
        else if (st.stx_mnt_id != c->mnt_id)
                return rl_error_set(err, -EBUSY, "remove '%s': a filesystem is mounted there",
                                    d->path);
        /* A btrfs subvolume below the root goes whole, in one call (and its blocks in the
         * background); where btrfs refuses, the walk empties it and rmdir removes it. */
        if (d->parent && deletes_as_subvol(d->fd, &st, c->mnt_id) &&
            rl_subvol_delete(d->parent->fd, d->name) == 0)
                return RL_WALK_SKIP;
        /* A read-only directory of our own (a tree that failed half-way after its modes
         * were applied) still has to give up its entries. */
        if ((st.stx_mode & 0300) != 0300 && fchmod(d->fd, (st.stx_mode & 07777) | 0700) < 0 &&
            errno != EPERM)
                return rl_error_set(err, -errno, "remove '%s': chmod", d->path);
        return 0;
}

static int remove_entry(void *ctx _unused_, void *worker _unused_, rl_walk_dir *d,
                        const char *name, unsigned char d_type _unused_, rl_error *err)
{
        if (unlinkat(d->fd, name, 0) < 0 && errno != ENOENT) {
                char path[PATH_MAX];
                rl_walk_entry_path(path, sizeof(path), d, name);
                return rl_error_set(err, -errno, "remove '%s'", path);
        }
        return 0;
}

static int remove_leave(void *ctx _unused_, void *worker _unused_, rl_walk_dir *d,
                        bool cancelled, rl_error *err)
{
        if (cancelled || !d->parent)
                return 0;
        if (unlinkat(d->parent->fd, d->name, AT_REMOVEDIR) < 0 && errno != ENOENT)
                return rl_error_set(err, -errno, "remove directory '%s'", d->path);
        return 0;
}

static const rl_walk_ops remove_ops = {
        .enter = remove_enter,
        .entry = remove_entry,
        .leave = remove_leave,
};

RL_EXPORT int rl_tree_remove(int dir_fd, const char *name, unsigned jobs,
                             const atomic_bool *cancel, rl_error *err)
{
        _cleanup_close_ int fd = -EBADF;
        remove_ctx ctx = {};

        fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) {
                if (errno != ENOTDIR && errno != ELOOP)
                        return rl_error_set(err, -errno, "remove '%s'", name);
                if (unlinkat(dir_fd, name, 0) < 0)
                        return rl_error_set(err, -errno, "remove '%s'", name);
                return 0;
        }
        struct statx st, parent;
        if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
                  STATX_MODE | STATX_INO | STATX_MNT_ID, &st) == 0 &&
            statx(dir_fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_MNT_ID, &parent) == 0 &&
            deletes_as_subvol(fd, &st, parent.stx_mnt_id) && rl_subvol_delete(dir_fd, name) == 0)
                return 0;
        int r = rl_walk_run(fd, &remove_ops, &ctx, jobs, cancel, err);
        if (r < 0)
                return rl_error_prefix(err, r, "remove '%s'", name);
        if (unlinkat(dir_fd, name, AT_REMOVEDIR) < 0)
                return rl_error_set(err, -errno, "remove '%s'", name);
        return 0;
}

/* --- publishing ------------------------------------------------------------------------ */

/* The umask, without the umask() call that would change it for every thread meanwhile.
 * If it cannot be read, assume the strictest: every create is followed by an fchmod. */
static mode_t read_umask(void)
{
        _cleanup_close_ int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
        char buf[4096];
        ssize_t n;

        if (fd < 0 || (n = read(fd, buf, sizeof(buf) - 1)) <= 0)
                return 0777;
        buf[n] = '\0';
        const char *p = strstr(buf, "\nUmask:");
        if (!p)
                return 0777;
        return (mode_t)strtoul(p + 8, NULL, 8) & 0777;
}

static bool valid_name(const char *name)
{
        return name && name[0] && !strchr(name, '/') && strcmp(name, ".") != 0 &&
               strcmp(name, "..") != 0 && strlen(name) <= NAME_MAX;
}

/* Is the directory dir_fd the directory (dev, ino), or below it? Walks ".." up to the root
 * of the mount namespace. */
static int dir_is_inside(int dir_fd, uint64_t dev, uint64_t ino)
{
        _cleanup_close_ int cur = fcntl(dir_fd, F_DUPFD_CLOEXEC, 3);
        struct stat st, up;

        if (cur < 0)
                return -errno;
        for (unsigned i = 0; i < 2 * RL_WALK_DEPTH_MAX; i++) {
                if (fstat(cur, &st) < 0)
                        return -errno;
                if (st.st_dev == dev && st.st_ino == ino)
                        return 1;
                int parent = openat(cur, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
                if (parent < 0)
                        return -errno;
                if (fstat(parent, &up) < 0) {
                        close(parent);
                        return -errno;
                }
                close(cur);
                cur = parent;
                if (up.st_dev == st.st_dev && up.st_ino == st.st_ino)
                        return 0; /* "/" is its own parent */
        }
        return -ELOOP;
}

/* How the temporary root of a clone is made. */
typedef enum root_kind {
        ROOT_DIR,      /* mkdir, then filled by the walk */
        ROOT_SUBVOL,   /* a new btrfs subvolume, filled by the walk */
        ROOT_SNAPSHOT, /* a btrfs snapshot of the source: whole, no walk */
} root_kind;

/* Undo make_tmp_root: an empty directory, or a subvolume whatever it holds. */
static void remove_tmp_root(int dst_dir_fd, const char *name)
{
        if (unlinkat(dst_dir_fd, name, AT_REMOVEDIR) < 0)
                (void)rl_subvol_delete(dst_dir_fd, name);
}

static int make_tmp_root(int dst_dir_fd, char *name, size_t size, root_kind kind, int src_fd,
                         rl_error *err)
{
        for (int attempt = 0; attempt < 16; attempt++) {
                uint64_t rnd;
                if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
                        rnd = rl_now_ns() ^ ((uint64_t)getpid() << 32);
                snprintf(name, size, ".rl-clone-%016" PRIx64, rnd);
                int q = kind == ROOT_SNAPSHOT ? rl_subvol_snapshot(src_fd, dst_dir_fd, name)
                        : kind == ROOT_SUBVOL ? rl_subvol_mkdir(dst_dir_fd, name, 0700)
                                              : RL_NERRNO(mkdirat(dst_dir_fd, name, 0700));
                if (q == 0)
                        break;
                if (q != -EEXIST)
                        return rl_error_set(err, q, "create temporary directory");
                if (attempt == 15)
                        return rl_error_set(err, -EEXIST, "create temporary directory");
        }
        int fd = openat(dst_dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
                int r = -errno;
                remove_tmp_root(dst_dir_fd, name);
                return rl_error_set(err, r, "open temporary directory");
        }
        if (kind == ROOT_SNAPSHOT)
                return fd; /* the source's root, attributes and all */
        /* What the destination's parent would hand down, the new root must not pass on to
         * everything we create: its group (a setgid parent, or a filesystem mounted with
         * grpid), its setgid bit, its default ACL. Our entries start out as ours (apply_meta
         * relies on it to skip chown) and carry only the source's ACLs. */
        if (fchown(fd, rl_fsuid(), rl_fsgid()) < 0 || fchmod(fd, 0700) < 0) {
                int r = -errno;
                close(fd);
                remove_tmp_root(dst_dir_fd, name);
                return rl_error_set(err, r, "prepare temporary directory");
        }
        (void)fremovexattr(fd, "system.posix_acl_default");
        (void)fremovexattr(fd, "system.posix_acl_access");
        return fd;
}

/* Subvolumes nested deeper than this in a snapshot's source: -ELOOP (a bound on recursion). */
#define MAX_NESTED_DEPTH 32

static int snapshot_nested(int src_fd, int dst_fd, const rl_subvol_ref *refs, size_t n,
                           unsigned depth, uint64_t *count, rl_error *err);

/* Replace the stub at nested->path (from dst_fd) by a snapshot of the subvolume there from
 * src_fd, with what is nested in it in turn. The directory holding it keeps the source's
 * times. -ESTALE where the source no longer has that subvolume there, or the snapshot no
 * stub: the source changed since it was snapshotted. */
static int snapshot_one_nested(int src_fd, int dst_fd, const rl_subvol_ref *nested, unsigned depth,
                               uint64_t *count, rl_error *err)
{
        _cleanup_close_ int src = -EBADF, src_dir = -EBADF, dst_dir = -EBADF, sub = -EBADF;
        _cleanup_free_ char *dir = NULL;
        rl_subvol_ref *refs = NULL;
        size_t n = 0;
        const char *path = nested->path, *slash = strrchr(path, '/');
        const char *name = slash ? slash + 1 : path;
        struct statx st, stub;
        uint64_t id;
        int r;

        if (depth >= MAX_NESTED_DEPTH)
                return rl_error_set(err, -ELOOP, "'%s': subvolumes nested over %d deep", path,
                                    MAX_NESTED_DEPTH);
        src = rl_openat_beneath(src_fd, path, O_RDONLY | O_DIRECTORY, 0);
        if (src < 0)
                return rl_error_set(err, src, "open the nested subvolume '%s'", path);
        if (!rl_subvol_is_root(src) || rl_subvol_id(src, &id) < 0 || id != nested->id)
                return rl_error_set(err, -ESTALE, "'%s': no longer the subvolume it was", path);
        if (slash) {
                dir = strndup(path, (size_t)(slash - path));
                if (!dir)
                        return rl_error_set(err, -ENOMEM, "'%s'", path);
                src_dir = rl_openat_beneath(src_fd, dir, O_RDONLY | O_DIRECTORY, 0);
                dst_dir = src_dir < 0 ? src_dir
                                      : rl_openat_beneath(dst_fd, dir, O_RDONLY | O_DIRECTORY, 0);
                if (dst_dir < 0)
                        return rl_error_set(err, dst_dir, "open the directory of '%s'", path);
        }
        int sdir = slash ? src_dir : src_fd, ddir = slash ? dst_dir : dst_fd;
        if (statx(sdir, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_ATIME | STATX_MTIME, &st) < 0)
                return rl_error_set(err, -errno, "stat the directory of '%s'", path);
        if (statx(ddir, name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_INO, &stub) < 0)
                return rl_error_set(err, -errno, "'%s': the snapshot's stub", path);
        if (stub.stx_ino != RL_SUBVOL_STUB_INO)
                return rl_error_set(err, -ESTALE, "'%s': the snapshot holds no stub there", path);
        if (unlinkat(ddir, name, AT_REMOVEDIR) < 0)
                return rl_error_set(err, -errno, "'%s': remove the snapshot's stub", path);
        r = rl_subvol_snapshot(src, ddir, name);
        if (r < 0)
                return rl_error_set(err, r, "snapshot the nested subvolume '%s'", path);
        (*count)++;
        const struct timespec times[2] = {
                { .tv_sec = st.stx_atime.tv_sec, .tv_nsec = st.stx_atime.tv_nsec },
                { .tv_sec = st.stx_mtime.tv_sec, .tv_nsec = st.stx_mtime.tv_nsec },
        };
        if (futimens(ddir, times) < 0)
                return rl_error_set(err, -errno, "'%s': set the times of its directory", path);
        sub = openat(ddir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0)
                return rl_error_set(err, -errno, "open the snapshot of '%s'", path);
        r = rl_subvol_nested(src, &refs, &n);
        if (r < 0)
                return rl_error_set(err, r, "list the subvolumes nested in '%s'", path);
        r = snapshot_nested(src, sub, refs, n, depth + 1, count, err);
        rl_subvol_refs_free(refs, n);
        return r < 0 ? rl_error_prefix(err, r, "'%s'", path) : 0;
}

/* A snapshot stops at the subvolumes nested in its source (refs, listed before it was
 * taken): each is an empty stub in it. Snapshot each into its place, so that the tree is
 * whole, as the walk would copy it. */
static int snapshot_nested(int src_fd, int dst_fd, const rl_subvol_ref *refs, size_t n,
                           unsigned depth, uint64_t *count, rl_error *err)
{
        for (size_t i = 0; i < n; i++) {
                int r = snapshot_one_nested(src_fd, dst_fd, &refs[i], depth, count, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

/*
 * ROOT_SNAPSHOT: the temporary root as a snapshot of the subvolume src_fd, the subvolumes
 * nested in it snapshotted into place, its owners shifted in place where there are maps
 * (*shifted: what was). Its fd, or -errno, with *fall_back true where the walk may do it
 * instead: btrfs would not (a nested subvolume we may not list or snapshot), or the shift
 * could not change an inode (immutable: a snapshot keeps the flag, the walk never copies
 * it). Not after an id outside the maps or a cancel, where the walk would stop too, nor
 * when what was made cannot be removed (said in err).
 */
static int snapshot_root(int src_fd, int dst_dir_fd, char *tmp_name, size_t size,
                         const rl_tree_options *opts, rl_meter *meter, uint64_t *snapshots,
                         rl_tree_stats *shifted, bool *fall_back, rl_error *err)
{
        rl_subvol_ref *nested = NULL;
        size_t n_nested = 0;
        int r;

        *fall_back = true;
        /* Listed first: where that is not allowed (another user's directories on the way),
         * nothing is made in vain. */
        r = rl_subvol_nested(src_fd, &nested, &n_nested);
        if (r < 0)
                return rl_error_set(err, r, "list the subvolumes nested in the source");
        int fd = make_tmp_root(dst_dir_fd, tmp_name, size, ROOT_SNAPSHOT, src_fd, err);
        r = fd < 0 ? fd : snapshot_nested(src_fd, fd, nested, n_nested, 0, snapshots, err);
        rl_subvol_refs_free(nested, n_nested);
        if (r == 0 && (opts->uid_map || opts->gid_map))
                r = rl_shift_tree(fd, opts, meter, shifted, err);
        if (r == 0 || fd < 0)
                return r == 0 ? fd : r;
        close(fd);
        *fall_back = r != -ERANGE && r != -ECANCELED;
        rl_error undo = {};
        if (rl_tree_remove(dst_dir_fd, tmp_name, opts->jobs, NULL, &undo) < 0) {
                *fall_back = false;
                return rl_error_prefix(err, r, "(its half-made '%s' stays: %s)", tmp_name,
                                       undo.msg);
        }
        return r;
}

/* RL_TREE_SUBVOLUME: a snapshot where the source is a subvolume (its ids shifted in place
 * if there are maps), else a new subvolume to fill; where the destination is not btrfs, a
 * directory. */
static root_kind root_kind_for(int src_fd, int dst_dir_fd, const rl_tree_options *opts)
{
        if (!(opts->flags & RL_TREE_SUBVOLUME) || !rl_subvol_supported(dst_dir_fd))
                return ROOT_DIR;
        return rl_subvol_is_root(src_fd) ? ROOT_SNAPSHOT : ROOT_SUBVOL;
}

RL_EXPORT int rl_tree_clone(int src_fd, int dst_dir_fd, const char *dst_name,
                            const rl_tree_options *opts, rl_tree_stats *ret_stats, rl_error *err)
{
        static const rl_tree_options defaults = {};
        _cleanup_(rl_fsinfo_freep) rl_fsinfo *fs = NULL;
        _cleanup_close_ int tmp_fd = -EBADF;
        char tmp_name[64];
        struct stat src_st, tmp_st, st;
        int r;

        if (!opts)
                opts = &defaults;
        if (!valid_name(dst_name))
                return rl_error_set(err, -EINVAL, "clone: '%s' is not a valid name",
                                    dst_name ? dst_name : "(null)");
        if (fstat(src_fd, &src_st) < 0)
                return rl_error_set(err, -errno, "clone: source");
        if (!S_ISDIR(src_st.st_mode))
                return rl_error_set(err, -ENOTDIR, "clone: source");
        if (fstatat(dst_dir_fd, dst_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
                return rl_error_set(err, -EEXIST, "clone: destination '%s'", dst_name);
        if (errno != ENOENT)
                return rl_error_set(err, -errno, "clone: destination '%s'", dst_name);
        r = dir_is_inside(dst_dir_fd, src_st.st_dev, src_st.st_ino);
        if (r < 0)
                return rl_error_set(err, r, "clone: destination '%s'", dst_name);
        if (r > 0)
                return rl_error_set(err, -EINVAL,
                                    "clone: destination '%s' lies inside the source", dst_name);
        r = rl_fsinfo_open(dst_dir_fd, &fs, err);
        if (r < 0)
                return rl_error_prefix(err, r, "clone");

        root_kind kind = root_kind_for(src_fd, dst_dir_fd, opts);
        uint64_t snapshots = 1, start_ns = rl_now_ns();
        rl_tree_stats shifted = {};
        _cleanup_(rl_meter_done) rl_meter meter;
        rl_meter_init(&meter, opts->progress, opts->progress_userdata,
                      opts->progress_interval_ns, start_ns);
        if (kind == ROOT_SNAPSHOT) {
                bool fall_back;
                tmp_fd = snapshot_root(src_fd, dst_dir_fd, tmp_name, sizeof(tmp_name), opts,
                                       &meter, &snapshots, &shifted, &fall_back, err);
                if (tmp_fd < 0 && !fall_back)
                        return rl_error_prefix(err, tmp_fd, "clone '%s'", dst_name);
                if (tmp_fd < 0) {
                        /* Another filesystem, a source we may not snapshot, an inode the
                         * shift cannot change: the walk does what the snapshot would have.
                         * The meter keeps what a shift counted: progress never goes back. */
                        kind = ROOT_SUBVOL;
                        rl_error_clear(err);
                }
        }
        if (kind != ROOT_SNAPSHOT)
                tmp_fd = make_tmp_root(dst_dir_fd, tmp_name, sizeof(tmp_name), kind, src_fd, err);
        if (tmp_fd < 0)
                return rl_error_prefix(err, tmp_fd, "clone '%s'", dst_name);
        if (fstat(tmp_fd, &tmp_st) < 0) {
                r = rl_error_set(err, -errno, "clone '%s': temporary directory", dst_name);
                goto out_remove_tmp;
        }

        clone_ctx c = {
                .opts = opts,
                .dst_fs = fs,
                .dst_root_fd = tmp_fd,
                .tmp_dev = tmp_st.st_dev,
                .tmp_ino = tmp_st.st_ino,
                .fsuid = rl_fsuid(),
                .fsgid = rl_fsgid(),
                .umask = read_umask(),
                .links = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER },
                .stats_lock = PTHREAD_MUTEX_INITIALIZER,
                .meter = &meter,
        };

        /* A snapshot is the whole tree already (shifted above). */
        c.stats = shifted;
        r = kind == ROOT_SNAPSHOT
                    ? 0
                    : rl_walk_run(src_fd, &clone_ops, &c, opts->jobs, opts->cancel, err);
        link_map_clear(&c.links);
        pthread_mutex_destroy(&c.stats_lock);
        if (r < 0) {
                rl_error_prefix(err, r, "clone '%s'", dst_name);
                goto out_remove_tmp;
        }

        if ((opts->flags & RL_TREE_SYNC) && syncfs(tmp_fd) < 0) {
                r = rl_error_set(err, -errno, "clone '%s': syncfs", dst_name);
                goto out_remove_tmp;
        }
        /* RENAME_NOREPLACE: a destination that appeared meanwhile is not overwritten. */
        if (renameat2(dst_dir_fd, tmp_name, dst_dir_fd, dst_name, RENAME_NOREPLACE) < 0) {
                r = rl_error_set(err, -errno, "clone: publish '%s'", dst_name);
                goto out_remove_tmp;
        }
        /* The rename itself is durable only once the directory holding it is. If that
         * fails, take the published tree back: a failed clone leaves no DST. */
        if ((opts->flags & RL_TREE_SYNC) && fsync(dst_dir_fd) < 0) {
                r = rl_error_set(err, -errno, "clone: fsync the directory of '%s'", dst_name);
                rl_tree_remove(dst_dir_fd, dst_name, opts->jobs, NULL, NULL);
                return r;
        }
        c.stats.elapsed_ns = rl_now_ns() - meter.start_ns;
        c.stats.snapshots = kind == ROOT_SNAPSHOT ? snapshots : 0;
        if (ret_stats)
                *ret_stats = c.stats;
        return 0;

out_remove_tmp:
        /* The first error is the one to report; the clean-up reports nothing of its own. */
        rl_tree_remove(dst_dir_fd, tmp_name, opts->jobs, NULL, NULL);
        return r;
}

RL_EXPORT int rl_tree_open_destination(const char *dst, int *ret_dir_fd, char **ret_name,
                                       rl_error *err)
{
        _cleanup_free_ char *copy = strdup(dst);
        if (!copy)
                return rl_error_set(err, -ENOMEM, "destination '%s'", dst);
        size_t len = strlen(copy);
        while (len > 1 && copy[len - 1] == '/')
                copy[--len] = '\0';
        char *slash = strrchr(copy, '/');
        const char *dir = ".", *name = copy;
        if (slash) {
                *slash = '\0';
                dir = slash == copy ? "/" : copy;
                name = slash + 1;
        }
        if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strcmp(name, "/") == 0)
                return rl_error_set(err, -EINVAL, "destination '%s': needs a new name at the end",
                                    dst);
        _cleanup_free_ char *n = strdup(name);
        if (!n)
                return rl_error_set(err, -ENOMEM, "destination '%s'", dst);
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return rl_error_set(err, -errno, "destination '%s': directory '%s'", dst, dir);
        *ret_dir_fd = fd;
        *ret_name = TAKE_PTR(n);
        return 0;
}
