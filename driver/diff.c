/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * diff.c owns comparing two trees (rl_tree_diff): a merge of both trees' sorted listings,
 * directory by directory, and deciding whether an entry changed: metadata first, then file
 * data from the extent maps, and by reading only where those cannot tell.
 *
 * This is not walk.c's walker on purpose. The walker visits one tree, in no particular
 * order, on many threads, finishing a directory after its children. A diff pairs the
 * entries of two trees by name and must report them in path order, a directory before its
 * entries: a sequential merge of two sorted listings, another algorithm. It shares the
 * walker's depth bound and its way of opening directories.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <reflayer/layer.h>

#include "diff.h"
#include "util.h"
#include "walk.h"
#include "xattrs.h"

#define STATX_WANT (STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_UID | STATX_GID |            \
                    STATX_ATIME | STATX_MTIME | STATX_INO | STATX_SIZE | STATX_MNT_ID)
#define GETDENTS_BUFFER (64u * 1024)
#define READ_CHUNK (256u * 1024)
#define EXTENTS_PER_CALL 128

/* Extent flags that say the physical address is not (yet) a fact about the data: delayed
 * allocation, data inline in metadata, encoded or encrypted. Such a file is read. */
#define EXTENT_UNDECIDED (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC |                     \
                          FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED |                \
                          FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE |               \
                          FIEMAP_EXTENT_DATA_TAIL)
/* Flags that differ between two maps of the same data: which one is last, shared or not,
 * how the filesystem cut it into records. */
#define EXTENT_IGNORED (FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_MERGED)

enum { SAME, CHANGED_META, CHANGED_DATA };

/* One side of a directory: "d_type byte, name, NUL" back to back, and sorted offsets. */
typedef struct listing {
        char *buf;
        size_t used, cap;
        size_t *off;
        size_t n, cap_off;
} listing;

typedef struct frame {
        rl_diff_dir pub;
        char *path;
        listing lower, upper;
        size_t i, j; /* the merge's position in lower and upper */
} frame;

/* An extent map read a batch at a time, adjacent extents merged. */
typedef struct extents {
        int fd;
        struct fiemap *fm;
        unsigned next;      /* index into fm's extents */
        uint64_t start;     /* where the next batch starts */
        bool end;
        bool have_pending;
        struct fiemap_extent pending;
} extents;

typedef struct diff {
        const rl_diff_ops *ops;
        void *userdata;
        rl_diff_stats stats;
        frame **stack;
        size_t depth, cap;
        char *dents;
        char *path; /* the current entry's path */
        size_t path_cap;
        struct fiemap *fm[2];
        char *data[2];
        rl_xattrs xattrs[2];
        char link[2][PATH_MAX + 1];
} diff;

static const char *side_name[2] = { "lower", "upper" };

static const char *name_at(const listing *l, size_t i)
{
        return l->buf + l->off[i] + 1;
}

static unsigned char type_at(const listing *l, size_t i)
{
        return (unsigned char)l->buf[l->off[i]];
}

static int by_name(const void *a, const void *b, void *buf)
{
        return strcmp((const char *)buf + *(const size_t *)a + 1,
                      (const char *)buf + *(const size_t *)b + 1);
}

static int listing_add(listing *l, const char *name, size_t len, unsigned char type)
{
        if (!RL_GROW(l->buf, l->cap, l->used + len + 2) || !RL_GROW(l->off, l->cap_off, l->n + 1))
                return -ENOMEM;
        l->off[l->n++] = l->used;
        l->buf[l->used] = (char)type;
        memcpy(l->buf + l->used + 1, name, len + 1);
        l->used += len + 2;
        return 0;
}

/* List the directory fd into l, sorted byte-wise (strcmp compares as unsigned char). */
static int list_dir(diff *d, int fd, listing *l, const char *path, int side, rl_error *err)
{
        for (;;) {
                long got = syscall(SYS_getdents64, fd, d->dents, GETDENTS_BUFFER);
                if (got < 0)
                        return rl_error_set(err, -errno, "diff: read directory '%s' in the %s tree",
                                            path, side_name[side]);
                if (got == 0)
                        break;
                for (long pos = 0; pos < got;) {
                        struct dirent64 *e = (void *)(d->dents + pos);
                        size_t len = strlen(e->d_name);

                        pos += e->d_reclen;
                        if (e->d_name[0] == '.' &&
                            (len == 1 || (len == 2 && e->d_name[1] == '.')))
                                continue;
                        if (listing_add(l, e->d_name, len, e->d_type) < 0)
                                return rl_error_set(err, -ENOMEM, "diff: list '%s'", path);
                }
        }
        if (l->n > 1)
                qsort_r(l->off, l->n, sizeof(*l->off), by_name, l->buf);
        return 0;
}

static void listing_free(listing *l)
{
        free(l->buf);
        free(l->off);
}

static int open_entry(int dir_fd, const char *name, bool dir)
{
        /* O_NONBLOCK, O_NOCTTY: should it have become a fifo or a tty meanwhile, opening it
         * must neither hang nor take it over. */
        return rl_open_noatime(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
                                                     (dir ? O_DIRECTORY : 0));
}

/*
 * Stat the entry name of dir_fd without following it, and open it when it is a directory
 * or (with want_file) a regular file: read-only, its atime untouched. What d_type says is
 * opened first and stat'ed through the fd: one statx, and what was stat'ed is what gets
 * read. Anything else is stat'ed by name, and opened after only where d_type did not say
 * (DT_UNKNOWN), then checked to be the inode stat'ed. *ret_fd is the fd or -EBADF.
 */
static int stat_open(int dir_fd, const char *name, unsigned char d_type, bool want_file,
                     struct statx *st, int *ret_fd, const char *path, int side, rl_error *err)
{
        _cleanup_close_ int fd = -EBADF;
        struct statx now;

        *ret_fd = -EBADF;
        if (d_type == DT_DIR || (d_type == DT_REG && want_file)) {
                fd = open_entry(dir_fd, name, d_type == DT_DIR);
                if (fd < 0 && fd != -ELOOP && fd != -ENOTDIR && fd != -ENXIO)
                        return rl_error_set(err, fd, "diff: open '%s' in the %s tree", path,
                                            side_name[side]);
                if (fd >= 0) {
                        if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_WANT, st) < 0)
                                return rl_error_set(err, -errno, "diff: stat '%s' in the %s tree",
                                                    path, side_name[side]);
                        if (IFTODT(st->stx_mode) == d_type) {
                                *ret_fd = TAKE_FD(fd);
                                return 0;
                        }
                        closep(&fd);
                }
        }
        if (statx(dir_fd, name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_WANT, st) < 0)
                return rl_error_set(err, -errno, "diff: stat '%s' in the %s tree", path,
                                    side_name[side]);
        bool is_dir = S_ISDIR(st->stx_mode);
        if (!is_dir && !(S_ISREG(st->stx_mode) && want_file))
                return 0;
        fd = open_entry(dir_fd, name, is_dir);
        if (fd < 0)
                return rl_error_set(err, fd, "diff: open '%s' in the %s tree", path,
                                    side_name[side]);
        if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &now) < 0)
                return rl_error_set(err, -errno, "diff: stat '%s' in the %s tree", path,
                                    side_name[side]);
        if (now.stx_ino != st->stx_ino || (now.stx_mode & S_IFMT) != (st->stx_mode & S_IFMT))
                return rl_error_set(err, -ESTALE, "diff: '%s' in the %s tree changed while "
                                    "being compared", path, side_name[side]);
        *ret_fd = TAKE_FD(fd);
        return 0;
}

static int set_path(diff *d, const frame *f, const char *name)
{
        size_t plen = f->pub.depth ? strlen(f->path) : 0, nlen = strlen(name);
        if (!RL_GROW(d->path, d->path_cap, plen + nlen + 2))
                return -ENOMEM;
        if (plen) {
                memcpy(d->path, f->path, plen);
                d->path[plen++] = '/';
        }
        memcpy(d->path + plen, name, nlen + 1);
        return 0;
}

static void pop_frame(diff *d)
{
        frame *f = d->stack[--d->depth];
        closep(&f->pub.lower_fd);
        closep(&f->pub.upper_fd);
        listing_free(&f->lower);
        listing_free(&f->upper);
        free(f->path);
        free(f);
}

/*
 * Push the directory path, open as upper_fd and (where lower has it) lower_fd, both taken
 * over, and list both. lower_all_gone is decided here, from the two listings, so that the
 * directory's own change can carry it.
 */
static int push_frame(diff *d, frame *parent, int lower_fd, int upper_fd, const char *path,
                      rl_error *err)
{
        _cleanup_close_ int lfd = lower_fd, ufd = upper_fd;
        unsigned depth = parent ? parent->pub.depth + 1 : 0;
        int r;

        if (depth > RL_WALK_DEPTH_MAX)
                return rl_error_set(err, -ELOOP, "diff: '%s': deeper than %d levels", path,
                                    RL_WALK_DEPTH_MAX);
        frame *f = NULL;
        if (!RL_GROW(d->stack, d->cap, d->depth + 1) || !(f = calloc(1, sizeof(*f))))
                return rl_error_set(err, -ENOMEM, "diff: '%s'", path);
        f->pub = (rl_diff_dir){ parent ? &parent->pub : NULL, TAKE_FD(lfd), TAKE_FD(ufd), NULL,
                                depth, false };
        /* On the stack at once: from here on, an error is cleaned up with the stack. */
        d->stack[d->depth++] = f;
        f->path = strdup(path);
        if (!f->path)
                return rl_error_set(err, -ENOMEM, "diff: '%s'", path);
        f->pub.path = f->path;

        r = list_dir(d, f->pub.upper_fd, &f->upper, path, 1, err);
        if (r < 0 || f->pub.lower_fd < 0)
                return r;
        r = list_dir(d, f->pub.lower_fd, &f->lower, path, 0, err);
        if (r < 0)
                return r;

        bool common = false;
        for (size_t i = 0, j = 0; i < f->lower.n && j < f->upper.n && !common;) {
                int c = strcmp(name_at(&f->lower, i), name_at(&f->upper, j));
                common = c == 0;
                i += c <= 0;
                j += c >= 0;
        }
        f->pub.lower_all_gone = f->lower.n > 0 && !common;
        return 0;
}

/* Next extent of the map, adjacent records of one run merged: 1, 0 at the end, -errno. */
static int extent_raw(extents *x, struct fiemap_extent *ret)
{
        struct fiemap *fm = x->fm;

        if (x->next == fm->fm_mapped_extents) {
                if (x->end)
                        return 0;
                /* FIEMAP_FLAG_SYNC: data still in the page cache has no address yet;
                 * writing it back first makes the map the truth about the data. */
                *fm = (struct fiemap){
                        .fm_start = x->start,
                        .fm_length = FIEMAP_MAX_OFFSET - x->start,
                        .fm_flags = FIEMAP_FLAG_SYNC,
                        .fm_extent_count = EXTENTS_PER_CALL,
                };
                if (ioctl(x->fd, FS_IOC_FIEMAP, fm) < 0)
                        return -errno;
                x->next = 0;
                if (fm->fm_mapped_extents == 0) {
                        x->end = true;
                        return 0;
                }
        }
        *ret = fm->fm_extents[x->next++];
        x->start = ret->fe_logical + ret->fe_length;
        if (ret->fe_flags & FIEMAP_EXTENT_LAST)
                x->end = true;
        return 1;
}

static int extent_next(extents *x, struct fiemap_extent *ret)
{
        int r;

        if (!x->have_pending) {
                r = extent_raw(x, &x->pending);
                if (r <= 0)
                        return r;
        }
        *ret = x->pending;
        x->have_pending = false;
        for (;;) {
                r = extent_raw(x, &x->pending);
                if (r < 0)
                        return r;
                if (r == 0)
                        return 1;
                const struct fiemap_extent *n = &x->pending;
                if (n->fe_logical != ret->fe_logical + ret->fe_length ||
                    n->fe_physical != ret->fe_physical + ret->fe_length ||
                    (n->fe_flags & ~EXTENT_IGNORED) != (ret->fe_flags & ~EXTENT_IGNORED)) {
                        x->have_pending = true;
                        return 1;
                }
                ret->fe_length += n->fe_length;
        }
}

/* 1: every extent of both files is at the same physical address (a reflink clone not
 * written since), so the data is the same; 0: the maps cannot tell; -errno. */
static int same_extents(diff *d, int lower_fd, int upper_fd)
{
        extents x[2] = { { .fd = lower_fd }, { .fd = upper_fd } };

        for (int s = 0; s < 2; s++) {
                if (!d->fm[s]) {
                        d->fm[s] = malloc(sizeof(struct fiemap) +
                                          EXTENTS_PER_CALL * sizeof(struct fiemap_extent));
                        if (!d->fm[s])
                                return -ENOMEM;
                }
                x[s].fm = d->fm[s];
                x[s].fm->fm_mapped_extents = 0;
        }
        for (;;) {
                struct fiemap_extent a, b;
                int ra = extent_next(&x[0], &a);
                if (ra < 0)
                        return ra;
                int rb = extent_next(&x[1], &b);
                if (rb < 0)
                        return rb;
                if (ra != rb)
                        return 0;
                if (ra == 0)
                        return 1;
                if ((a.fe_flags | b.fe_flags) & EXTENT_UNDECIDED)
                        return 0;
                if (a.fe_logical != b.fe_logical || a.fe_physical != b.fe_physical ||
                    a.fe_length != b.fe_length ||
                    (a.fe_flags & ~EXTENT_IGNORED) != (b.fe_flags & ~EXTENT_IGNORED))
                        return 0;
        }
}

/* Physical addresses mean something only within one filesystem. st_dev alone would say no
 * to two btrfs subvolumes (a snapshot and its parent: each has a device number of its own,
 * one address space), so one mount says yes too. */
static bool same_filesystem(const struct statx *a, const struct statx *b)
{
        if (a->stx_dev_major == b->stx_dev_major && a->stx_dev_minor == b->stx_dev_minor)
                return true;
        return (a->stx_mask & b->stx_mask & STATX_MNT_ID) && a->stx_mnt_id == b->stx_mnt_id;
}

/* Do two regular files of the same size hold the same bytes? 1 yes, 0 no, -errno. */
static int same_data(diff *d, int lower_fd, int upper_fd, const struct statx *lo,
                     const struct statx *up, const char *path, rl_error *err)
{
        if (lo->stx_size != up->stx_size)
                return 0;
        if (same_filesystem(lo, up)) {
                int r = same_extents(d, lower_fd, upper_fd);
                if (r > 0) {
                        d->stats.by_extents++;
                        return 1;
                }
                /* No FIEMAP here (tmpfs, overlayfs): read. */
                if (r < 0 && r != -EOPNOTSUPP && r != -ENOTTY)
                        return rl_error_set(err, r, "diff: FIEMAP '%s'", path);
        }

        d->stats.files_read++;
        for (int s = 0; s < 2; s++)
                if (!d->data[s] && !(d->data[s] = malloc(READ_CHUNK)))
                        return rl_error_set(err, -ENOMEM, "diff: '%s'", path);
        for (uint64_t off = 0;; off += READ_CHUNK) {
                ssize_t na = rl_pread_all(lower_fd, d->data[0], READ_CHUNK, off);
                if (na < 0)
                        return rl_error_set(err, (int)na, "diff: read '%s' in the lower tree",
                                            path);
                ssize_t nb = rl_pread_all(upper_fd, d->data[1], READ_CHUNK, off);
                if (nb < 0)
                        return rl_error_set(err, (int)nb, "diff: read '%s' in the upper tree",
                                            path);
                d->stats.bytes_read += (uint64_t)na + (uint64_t)nb;
                if (na != nb || memcmp(d->data[0], d->data[1], (size_t)na) != 0)
                        return 0;
                if ((size_t)na < READ_CHUNK)
                        return 1;
        }
}

static int same_target(diff *d, int lower_dir, int upper_dir, const char *name,
                       const char *path, rl_error *err)
{
        int dirs[2] = { lower_dir, upper_dir };
        ssize_t n[2];

        for (int s = 0; s < 2; s++) {
                n[s] = readlinkat(dirs[s], name, d->link[s], sizeof(d->link[s]));
                if (n[s] < 0)
                        return rl_error_set(err, -errno, "diff: read link '%s' in the %s tree",
                                            path, side_name[s]);
        }
        return n[0] == n[1] && memcmp(d->link[0], d->link[1], (size_t)n[0]) == 0;
}

static int same_xattrs(diff *d, const rl_ref refs[2], const char *path, rl_error *err)
{
        for (int s = 0; s < 2; s++) {
                int r = rl_xattrs_load(&d->xattrs[s], &refs[s]);
                if (r < 0)
                        return rl_error_set(err, r, "diff: read xattrs of '%s' in the %s tree",
                                            path, side_name[s]);
        }
        return rl_xattrs_equal(&d->xattrs[0], &d->xattrs[1]);
}

/*
 * Compare an entry present in both trees with the same type: SAME, CHANGED_META (the data
 * is lower's) or CHANGED_DATA. fds[] are the open entries (directories, regular files) or
 * -EBADF, for entries addressed as (directory, name). Metadata is mode, owner, mtime,
 * xattrs and, for a regular file, the link count: a name added to or removed from the
 * inode elsewhere makes every other name of it a change, so that a layer carries the inode
 * with the names it must be linked under.
 */
static int compare(diff *d, const frame *f, const char *name, const char *path,
                   const struct statx *lo, const struct statx *up, const int fds[2],
                   rl_error *err)
{
        bool meta = lo->stx_mode != up->stx_mode || lo->stx_uid != up->stx_uid ||
                    lo->stx_gid != up->stx_gid || lo->stx_mtime.tv_sec != up->stx_mtime.tv_sec ||
                    lo->stx_mtime.tv_nsec != up->stx_mtime.tv_nsec;
        int r = 1;

        switch (up->stx_mode & S_IFMT) {
        case S_IFREG:
                meta = meta || lo->stx_nlink != up->stx_nlink;
                r = same_data(d, fds[0], fds[1], lo, up, path, err);
                break;
        case S_IFLNK:
                r = lo->stx_size == up->stx_size &&
                    same_target(d, f->pub.lower_fd, f->pub.upper_fd, name, path, err);
                break;
        case S_IFCHR:
        case S_IFBLK:
                r = lo->stx_rdev_major == up->stx_rdev_major &&
                    lo->stx_rdev_minor == up->stx_rdev_minor;
                break;
        default:
                break; /* directories, fifos, sockets: nothing but metadata */
        }
        if (r < 0)
                return r;
        if (r == 0)
                return CHANGED_DATA;
        if (meta)
                return CHANGED_META;
        rl_ref refs[2] = { { fds[0], f->pub.lower_fd, name }, { fds[1], f->pub.upper_fd, name } };
        r = same_xattrs(d, refs, path, err);
        if (r < 0)
                return r;
        return r ? SAME : CHANGED_META;
}

static int emit(diff *d, rl_change_kind kind, bool metadata_only, const char *path,
                const frame *f, const char *name, const struct statx *up, const frame *self,
                rl_error *err)
{
        rl_diff_item item = {
                .change = { kind, metadata_only, path },
                .dir = f ? &f->pub : NULL,
                .name = name,
                .upper = up,
                .self = self ? &self->pub : NULL,
        };
        return d->ops->change(&item, d->userdata, err);
}

/* An entry only upper has: added, and so is everything below it. */
static int upper_only(diff *d, frame *f, const char *name, unsigned char d_type, rl_error *err)
{
        struct statx up;
        int fd, r;

        /* An added file is not read here: stat it, no need to open it. */
        r = stat_open(f->pub.upper_fd, name, d_type, false, &up, &fd, d->path, 1, err);
        if (r < 0)
                return r;
        if (!S_ISDIR(up.stx_mode))
                return emit(d, RL_CHANGE_ADDED, false, d->path, f, name, &up, NULL, err);
        r = push_frame(d, f, -EBADF, fd, d->path, err);
        if (r < 0)
                return r;
        frame *c = d->stack[d->depth - 1];
        return emit(d, RL_CHANGE_ADDED, false, c->path, f, name, &up, c, err);
}

/* An entry both trees have. */
static int in_both(diff *d, frame *f, const char *name, unsigned char lower_type,
                   unsigned char upper_type, rl_error *err)
{
        _cleanup_close_ int lfd = -EBADF, ufd = -EBADF;
        struct statx lo, up;
        int r;

        r = stat_open(f->pub.lower_fd, name, lower_type, true, &lo, &lfd, d->path, 0, err);
        if (r < 0)
                return r;
        r = stat_open(f->pub.upper_fd, name, upper_type, true, &up, &ufd, d->path, 1, err);
        if (r < 0)
                return r;
        bool same_type = (lo.stx_mode & S_IFMT) == (up.stx_mode & S_IFMT);

        if (S_ISDIR(up.stx_mode)) {
                /* A file that became a directory: the directory and all in it are new. */
                r = push_frame(d, f, same_type ? TAKE_FD(lfd) : -EBADF, TAKE_FD(ufd), d->path,
                               err);
                if (r < 0)
                        return r;
                frame *c = d->stack[d->depth - 1];
                r = CHANGED_DATA;
                if (same_type)
                        r = compare(d, f, name, c->path, &lo, &up,
                                    (int[2]){ c->pub.lower_fd, c->pub.upper_fd }, err);
                if (r < 0 || r == SAME)
                        return r;
                return emit(d, RL_CHANGE_MODIFIED, r == CHANGED_META, c->path, f, name, &up, c,
                            err);
        }

        r = CHANGED_DATA;
        if (same_type)
                r = compare(d, f, name, d->path, &lo, &up, (int[2]){ lfd, ufd }, err);
        if (r < 0 || r == SAME)
                return r;
        return emit(d, RL_CHANGE_MODIFIED, r == CHANGED_META, d->path, f, name, &up, NULL, err);
}

/* The merge: each directory's two sorted listings side by side, depth first. */
static int run(diff *d, int lower_fd, int upper_fd, rl_error *err)
{
        struct statx lo = {}, up;
        int r;

        _cleanup_close_ int lfd = -EBADF, ufd = -EBADF;

        /* The roots: open file descriptions of our own, with O_NOATIME, as the walker's. */
        r = stat_open(upper_fd, ".", DT_DIR, false, &up, &ufd, ".", 1, err);
        if (r >= 0 && lower_fd >= 0)
                r = stat_open(lower_fd, ".", DT_DIR, false, &lo, &lfd, ".", 0, err);
        if (r < 0)
                return r;
        if (ufd < 0 || (lower_fd >= 0 && lfd < 0))
                return rl_error_set(err, -ENOTDIR, "diff: the %s tree is not a directory",
                                    ufd < 0 ? "upper" : "lower");
        r = push_frame(d, NULL, TAKE_FD(lfd), TAKE_FD(ufd), ".", err);
        if (r < 0)
                return r;
        frame *root = d->stack[0];
        d->stats.entries++;
        r = lower_fd < 0 ? CHANGED_DATA
                         : compare(d, root, ".", ".", &lo, &up,
                                   (int[2]){ root->pub.lower_fd, root->pub.upper_fd }, err);
        if (r < 0)
                return r;
        if (r != SAME) {
                r = emit(d, lower_fd < 0 ? RL_CHANGE_ADDED : RL_CHANGE_MODIFIED,
                         r == CHANGED_META, ".", NULL, ".", &up, root, err);
                if (r < 0)
                        return r;
        }

        while (d->depth > 0) {
                frame *f = d->stack[d->depth - 1];
                const char *ln = f->i < f->lower.n ? name_at(&f->lower, f->i) : NULL;
                const char *un = f->j < f->upper.n ? name_at(&f->upper, f->j) : NULL;

                if (!ln && !un) {
                        if (d->ops->leave)
                                d->ops->leave(&f->pub, d->userdata);
                        pop_frame(d);
                        continue;
                }
                int c = !ln ? 1 : !un ? -1 : strcmp(ln, un);
                const char *name = c <= 0 ? ln : un;
                if (set_path(d, f, name) < 0)
                        return rl_error_set(err, -ENOMEM, "diff: '%s'", f->path);
                d->stats.entries++;
                if (c < 0) {
                        f->i++;
                        r = emit(d, RL_CHANGE_DELETED, false, d->path, f, name, NULL, NULL, err);
                } else if (c > 0) {
                        r = upper_only(d, f, name, type_at(&f->upper, f->j++), err);
                } else {
                        unsigned char lt = type_at(&f->lower, f->i++);
                        r = in_both(d, f, name, lt, type_at(&f->upper, f->j++), err);
                }
                if (r < 0)
                        return r;
        }
        return 0;
}

int rl_diff_run(int lower_fd, int upper_fd, const rl_diff_ops *ops, void *userdata,
                rl_diff_stats *ret_stats, rl_error *err)
{
        uint64_t start = rl_now_ns();
        diff d = { .ops = ops, .userdata = userdata };
        int r;

        d.dents = malloc(GETDENTS_BUFFER);
        if (!d.dents)
                return rl_error_set(err, -ENOMEM, "diff");
        r = run(&d, lower_fd, upper_fd, err);
        while (d.depth > 0)
                pop_frame(&d);
        free(d.stack);
        free(d.dents);
        free(d.path);
        for (int s = 0; s < 2; s++) {
                free(d.fm[s]);
                free(d.data[s]);
                rl_xattrs_done(&d.xattrs[s]);
        }
        if (r < 0)
                return r;
        d.stats.elapsed_ns = rl_now_ns() - start;
        if (ret_stats)
                *ret_stats = d.stats;
        return 0;
}

typedef struct public_diff {
        rl_change_fn fn;
        void *userdata;
} public_diff;

static int public_change(const rl_diff_item *item, void *userdata, rl_error *err)
{
        const public_diff *p = userdata;
        int r = p->fn(&item->change, p->userdata);
        if (r < 0)
                return rl_error_set(err, r, "diff: stopped by the caller at '%s'",
                                    item->change.path);
        return 0;
}

RL_EXPORT int rl_tree_diff(int lower_fd, int upper_fd, rl_change_fn fn, void *userdata,
                           rl_diff_stats *ret_stats, rl_error *err)
{
        static const rl_diff_ops ops = { .change = public_change };
        public_diff p = { fn, userdata };

        if (!fn)
                return rl_error_set(err, -EINVAL, "diff: no change callback");
        return rl_diff_run(lower_fd, upper_fd, &ops, &p, ret_stats, err);
}
