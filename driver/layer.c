/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * layer.c owns applying an OCI layer tar onto a tree: reading it (libarchive: tar, plain,
 * gzip or zstd), its digests, whiteouts and opaque directories, and keeping every write
 * beneath the tree.
 *
 * The blob is read through two archive readers: the outer one only decompresses (format
 * "raw"), the inner one parses the tar from the outer one's output. That way both digests
 * come out of one pass: the blob's (bytes as read) and the diff_id (bytes as decompressed).
 */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <reflayer/layer.h>
#include <reflayer/tree.h>

#include "digest.h"
#include "entry.h"
#include "progress.h"
#include "util.h"

#define READ_BUF (1u << 20)
#define WHITEOUT ".wh."
#define OPAQUE ".wh..wh..opq"
#define WAIT_MS 100 /* a pipe that brings nothing: how often the cancel is looked at */

/* --- the paths this layer wrote ---------------------------------------------------------- */

/* A whiteout applies to the lower layers only, and an opaque directory keeps what its own
 * layer put in it: both need to know which paths this layer made. An open-addressing set. */
typedef enum mark {
        MARK_NONE,
        MARK_CREATED,    /* an entry of this layer */
        MARK_REUSED_DIR, /* an entry of this layer, a directory the lower already had */
        MARK_PRESERVED,  /* a lower directory whose entries change: its times are kept */
} mark;

typedef struct pathset {
        char **keys;
        unsigned char *marks;
        size_t n, cap;
} pathset;

static uint64_t hash(const char *s)
{
        uint64_t h = 1469598103934665603ULL;
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 1099511628211ULL;
        return h;
}

static size_t slot_of(const pathset *set, const char *key)
{
        size_t i = hash(key) & (set->cap - 1);
        while (set->keys[i] && strcmp(set->keys[i], key) != 0)
                i = (i + 1) & (set->cap - 1);
        return i;
}

static mark pathset_get(const pathset *set, const char *key)
{
        if (!set->cap)
                return MARK_NONE;
        size_t i = slot_of(set, key);
        return set->keys[i] ? set->marks[i] : MARK_NONE;
}

static int pathset_put(pathset *set, const char *key, mark m)
{
        if ((set->n + 1) * 2 > set->cap) {
                pathset bigger = { .cap = set->cap ? set->cap * 2 : 1024 };
                bigger.keys = calloc(bigger.cap, sizeof(*bigger.keys));
                bigger.marks = calloc(bigger.cap, 1);
                if (!bigger.keys || !bigger.marks) {
                        free(bigger.keys);
                        free(bigger.marks);
                        return -ENOMEM;
                }
                for (size_t i = 0; i < set->cap; i++)
                        if (set->keys[i]) {
                                size_t j = slot_of(&bigger, set->keys[i]);
                                bigger.keys[j] = set->keys[i];
                                bigger.marks[j] = set->marks[i];
                        }
                bigger.n = set->n;
                free(set->keys);
                free(set->marks);
                *set = bigger;
        }
        size_t i = slot_of(set, key);
        if (!set->keys[i]) {
                if (!(set->keys[i] = strdup(key)))
                        return -ENOMEM;
                set->n++;
        }
        set->marks[i] = (unsigned char)m;
        return 0;
}

static void pathset_clear(pathset *set)
{
        for (size_t i = 0; i < set->cap; i++)
                free(set->keys[i]);
        free(set->keys);
        free(set->marks);
        *set = (pathset){};
}

/* --- reading the blob -------------------------------------------------------------------- */

typedef struct source {
        int fd;
        rl_sha256 *h; /* of the blob as read */
        uint64_t size;
        char *buf;
        const atomic_bool *cancel;
        void (*idle)(void *userdata); /* while nothing comes (a pipe): every WAIT_MS */
        void *idle_userdata;
} source;

/*
 * A pipe may bring nothing for as long as its writer likes: wait for it in steps, honouring
 * a cancel and calling idle between them (the caller's progress callback, which is where
 * the daemon notices that its client hung up), instead of in a read that nothing ends.
 */
static la_ssize_t source_read(struct archive *a, void *userdata, const void **buf)
{
        source *s = userdata;
        ssize_t n;
        for (;;) {
                if (s->cancel && atomic_load(s->cancel)) {
                        archive_set_error(a, ECANCELED, "cancelled");
                        return -1;
                }
                struct pollfd p = { .fd = s->fd, .events = POLLIN };
                int q = poll(&p, 1, WAIT_MS);
                if (q > 0 || (q < 0 && errno != EINTR))
                        break; /* readable, at its end, or not pollable: the read says */
                if (q == 0 && s->idle)
                        s->idle(s->idle_userdata);
        }
        do
                n = read(s->fd, s->buf, READ_BUF);
        while (n < 0 && errno == EINTR);
        /* And after every read: a pipe that trickles bytes never times out, nor ends an
         * entry (the meter reports at most once an interval). */
        if (s->idle)
                s->idle(s->idle_userdata);
        if (n < 0) {
                archive_set_error(a, errno, "read the layer: %s", rl_strerror(errno));
                return -1;
        }
        rl_sha256_update(s->h, s->buf, (size_t)n);
        s->size += (uint64_t)n;
        *buf = s->buf;
        return n;
}

typedef struct plain {
        struct archive *outer;
        rl_sha256 *h; /* of the uncompressed tar */
        char *buf;
} plain;

static la_ssize_t plain_read(struct archive *a, void *userdata, const void **buf)
{
        plain *p = userdata;
        la_ssize_t n = archive_read_data(p->outer, p->buf, READ_BUF);
        if (n < 0) {
                archive_set_error(a, archive_errno(p->outer) ? archive_errno(p->outer) : EIO,
                                  "%s", archive_error_string(p->outer));
                return -1;
        }
        rl_sha256_update(p->h, p->buf, (size_t)n);
        *buf = p->buf;
        return n;
}

/* --- applying ---------------------------------------------------------------------------- */

typedef struct dirtime {
        char *path;
        struct timespec ts[2];
} dirtime;

typedef struct apply {
        int root_fd;
        const rl_apply_options *opts;
        rl_layer_stats *st;
        struct archive *tar;
        char *cached_dir; /* the parent directory of the last entry, kept open */
        int cached_fd;
        pathset marks;
        dirtime *dirs; /* times of the directories written: set last, since every entry
                        * made in a directory changes its mtime */
        size_t n_dirs, cap_dirs;
        char *xv;
        rl_meter meter; /* opts->progress; its start_ns is the apply's */
} apply;

static int add_dirtime(apply *a, const char *path, const struct timespec ts[2])
{
        if (a->n_dirs == a->cap_dirs) {
                size_t cap = a->cap_dirs ? a->cap_dirs * 2 : 256;
                dirtime *d = realloc(a->dirs, cap * sizeof(*d));
                if (!d)
                        return -ENOMEM;
                a->dirs = d;
                a->cap_dirs = cap;
        }
        if (!(a->dirs[a->n_dirs].path = strdup(path)))
                return -ENOMEM;
        memcpy(a->dirs[a->n_dirs++].ts, ts, 2 * sizeof(*ts));
        return 0;
}

/*
 * A lower directory whose entries this layer changes, without an entry of its own: it keeps
 * its times (the layer says nothing about them), so the result does not depend on when the
 * layer was applied. Recorded once, before the first change; an entry for it later in the
 * layer wins (directory times are set in order).
 */
static int preserve_dir(apply *a, const char *dir, int fd, rl_error *err)
{
        if (pathset_get(&a->marks, dir) != MARK_NONE)
                return 0;
        struct stat st;
        if (fstat(fd, &st) < 0)
                return rl_error_set(err, -errno, "layer: stat '%s'", dir[0] ? dir : ".");
        struct timespec ts[2] = { st.st_atim, st.st_mtim };
        int r = add_dirtime(a, dir, ts);
        if (r == 0)
                r = pathset_put(&a->marks, dir, MARK_PRESERVED);
        return r < 0 ? rl_error_set(err, r, "layer: '%s'", dir) : 0;
}

static void drop_cache(apply *a)
{
        closep(&a->cached_fd);
        free(a->cached_dir);
        a->cached_dir = NULL;
}

/*
 * A tar name made relative and plain: "./" prefixes and empty or "." components dropped;
 * absolute names, ".." components and names past PATH_MAX or NAME_MAX refused. "" is the
 * root itself.
 */
static int clean_name(const char *name, char *out, size_t size, const char *what,
                      rl_error *err)
{
        size_t o = 0;
        if (!name)
                return rl_error_set(err, -EINVAL, "layer %s without a name", what);
        if (name[0] == '/')
                return rl_error_set(err, -EINVAL, "layer %s '%.256s': an absolute name", what,
                                    name);
        for (const char *p = name; *p;) {
                const char *end = strchrnul(p, '/');
                size_t len = (size_t)(end - p);
                if (len == 2 && p[0] == '.' && p[1] == '.')
                        return rl_error_set(err, -EINVAL,
                                            "layer %s '%.256s': a '..' component leads out of "
                                            "the tree",
                                            what, name);
                if (len > NAME_MAX)
                        return rl_error_set(err, -EINVAL,
                                            "layer %s '%.256s...': a component longer than %d "
                                            "bytes",
                                            what, name, NAME_MAX);
                if (len && !(len == 1 && p[0] == '.')) {
                        if (o + len + 2 > size)
                                return rl_error_set(err, -EINVAL,
                                                    "layer %s '%.256s...': longer than %zu "
                                                    "bytes",
                                                    what, name, size - 1);
                        if (o)
                                out[o++] = '/';
                        memcpy(out + o, p, len);
                        o += len;
                }
                p = *end ? end + 1 : end;
        }
        out[o] = '\0';
        return 0;
}

/* Split "a/b/c" into "a/b" and "c" (in place); "c" into "" and "c". */
static const char *split_last(char *path, const char **ret_base)
{
        char *slash = strrchr(path, '/');
        if (!slash) {
                *ret_base = path;
                return "";
        }
        *slash = '\0';
        *ret_base = slash + 1;
        return path;
}

static int resolve_error(int r, const char *entry, const char *dir, rl_error *err)
{
        switch (-r) {
        case EXDEV:
                return rl_error_set(err, -EINVAL,
                                    "layer entry '%s': '%s' goes through a symlink that leads "
                                    "out of the tree",
                                    entry, dir);
        case ELOOP:
                return rl_error_set(err, -EINVAL,
                                    "layer entry '%s': '%s' goes through a symlink loop", entry,
                                    dir);
        case ENOTDIR:
                return rl_error_set(err, -EINVAL, "layer entry '%s': '%s' is not a directory",
                                    entry, dir);
        default:
                return rl_error_set(err, r, "layer entry '%s': open '%s'", entry, dir);
        }
}

/* The owner a directory this layer has to invent gets: root, as mapped. */
static int implied_owner(apply *a, const char *path, uid_t *uid, gid_t *gid, rl_error *err)
{
        return rl_map_owner(a->opts->uid_map, a->opts->gid_map, a->opts->keep_unmapped, 0, 0,
                            path, uid, gid, err);
}

/*
 * The directory dir ("" for the root), beneath the tree, borrowed (valid until the next
 * call). Symlinks are followed as long as they stay in the tree. With create, missing
 * directories are made (0755, root-owned), as tar does for entries whose parents the
 * archive does not list; else ENOENT is returned as it is.
 */
static int open_dir(apply *a, const char *dir, bool create, const char *entry, int *ret_fd,
                    rl_error *err)
{
        if (!dir[0]) {
                *ret_fd = a->root_fd;
                return preserve_dir(a, dir, a->root_fd, err);
        }
        if (a->cached_dir && strcmp(a->cached_dir, dir) == 0) {
                *ret_fd = a->cached_fd;
                return 0;
        }
        drop_cache(a);
        int fd = rl_openat_beneath_follow(a->root_fd, dir, O_RDONLY | O_DIRECTORY, 0);
        if (fd == -ENOENT && create) {
                /* Make what is missing, one prefix at a time. */
                char prefix[PATH_MAX];
                size_t len = strlen(dir);
                memcpy(prefix, dir, len + 1);
                for (size_t i = 0; i <= len; i++) {
                        if (prefix[i] != '/' && prefix[i] != '\0')
                                continue;
                        char saved = prefix[i];
                        prefix[i] = '\0';
                        int q = rl_openat_beneath_follow(a->root_fd, prefix, O_PATH | O_DIRECTORY,
                                                         0);
                        if (q == -ENOENT) {
                                char *slash = strrchr(prefix, '/');
                                _cleanup_close_ int pfd = -EBADF;
                                const char *name = prefix;
                                int at = a->root_fd;
                                if (slash) {
                                        *slash = '\0';
                                        pfd = rl_openat_beneath_follow(a->root_fd, prefix,
                                                                       O_PATH | O_DIRECTORY, 0);
                                        *slash = '/';
                                        if (pfd < 0)
                                                return resolve_error(pfd, entry, prefix, err);
                                        at = pfd;
                                        name = slash + 1;
                                }
                                uid_t uid;
                                gid_t gid;
                                int r = implied_owner(a, prefix, &uid, &gid, err);
                                if (r < 0)
                                        return r;
                                if (mkdirat(at, name, 0755) < 0 ||
                                    fchownat(at, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 ||
                                    fchmodat(at, name, 0755, 0) < 0)
                                        return rl_error_set(err, -errno,
                                                            "layer entry '%s': create '%s'",
                                                            entry, prefix);
                                r = pathset_put(&a->marks, prefix, MARK_CREATED);
                                if (r < 0)
                                        return rl_error_set(err, r, "layer entry '%s'", entry);
                        } else if (q < 0) {
                                return resolve_error(q, entry, prefix, err);
                        } else {
                                close(q);
                        }
                        prefix[i] = saved;
                }
                fd = rl_openat_beneath_follow(a->root_fd, dir, O_RDONLY | O_DIRECTORY, 0);
        }
        if (fd < 0)
                return fd == -ENOENT || (fd == -ENOTDIR && !create)
                               ? fd
                               : resolve_error(fd, entry, dir, err);
        a->cached_dir = strdup(dir);
        if (!a->cached_dir) {
                close(fd);
                return rl_error_set(err, -ENOMEM, "layer entry '%s'", entry);
        }
        a->cached_fd = fd;
        *ret_fd = fd;
        return preserve_dir(a, dir, fd, err);
}

/* Remove name (a whole tree if it is a directory) from dir_fd, if it is there. */
static int remove_entry(apply *a, int dir_fd, const char *name, const char *path,
                        rl_error *err)
{
        struct stat st;
        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return errno == ENOENT ? 0 : rl_error_set(err, -errno, "layer: stat '%s'", path);
        if (!S_ISDIR(st.st_mode)) {
                if (unlinkat(dir_fd, name, 0) < 0)
                        return rl_error_set(err, -errno, "layer: remove '%s'", path);
                return 1;
        }
        /* The cached directory may lie inside what goes. */
        if (a->cached_fd >= 0 && dir_fd != a->cached_fd)
                drop_cache(a);
        int r = rl_tree_remove(dir_fd, name, 1, a->opts->cancel, err);
        if (r < 0)
                return rl_error_prefix(err, r, "layer: remove '%s'", path);
        return 1;
}

static int join(char *out, size_t size, const char *dir, const char *name)
{
        int n = dir[0] ? snprintf(out, size, "%s/%s", dir, name) : snprintf(out, size, "%s", name);
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* An opaque directory: what the lower layers had in it goes; what this layer wrote stays
 * (and below a directory it reused, the lower content goes too). */
static int make_opaque(apply *a, int dir_fd, const char *dir, rl_error *err)
{
        int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return rl_error_set(err, -errno, "layer: open '%s'", dir);
        DIR *d = fdopendir(fd);
        if (!d) {
                close(fd);
                return rl_error_set(err, -errno, "layer: list '%s'", dir);
        }
        int r = 0;
        struct dirent *de;
        char path[PATH_MAX];
        /* Removing while listing: collect first. */
        char **names = NULL;
        size_t n = 0, cap = 0;
        while ((de = readdir(d))) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                        continue;
                if (n == cap) {
                        char **nn = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof(*names));
                        if (!nn) {
                                r = -ENOMEM;
                                break;
                        }
                        names = nn;
                }
                if (!(names[n] = strdup(de->d_name))) {
                        r = -ENOMEM;
                        break;
                }
                n++;
        }
        for (size_t i = 0; r >= 0 && i < n; i++) {
                if (join(path, sizeof(path), dir, names[i]) < 0) {
                        r = rl_error_set(err, -ENAMETOOLONG, "layer: '%s/%s'", dir, names[i]);
                        break;
                }
                mark m = pathset_get(&a->marks, path);
                if (m == MARK_CREATED)
                        continue; /* MARK_PRESERVED: a lower directory, hidden too */
                if (m == MARK_REUSED_DIR) {
                        _cleanup_close_ int sub = openat(dirfd(d), names[i],
                                                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
                                                                 O_CLOEXEC);
                        r = sub < 0 ? rl_error_set(err, -errno, "layer: open '%s'", path)
                                    : make_opaque(a, sub, path, err);
                } else {
                        r = remove_entry(a, dirfd(d), names[i], path, err);
                }
        }
        if (r == -ENOMEM)
                rl_error_set(err, r, "layer: opaque '%s'", dir);
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
        closedir(d);
        return r < 0 ? r : 0;
}

static int whiteout(apply *a, const char *entry, const char *dir, const char *base,
                    rl_error *err)
{
        int dfd, r = open_dir(a, dir, false, entry, &dfd, err);
        if (r == -ENOENT || r == -ENOTDIR)
                return 0; /* nothing below to hide (umoci writes DIR/.wh.X after replacing
                           * DIR by a file) */
        if (r < 0)
                return r;
        if (strcmp(base, OPAQUE) == 0) {
                a->st->opaques++;
                return make_opaque(a, dfd, dir, err);
        }
        if (strncmp(base, WHITEOUT WHITEOUT, 8) == 0)
                return 0; /* aufs bookkeeping (.wh..wh.plnk ...), meaningless here */
        const char *target = base + strlen(WHITEOUT);
        if (!target[0] || !strcmp(target, ".") || !strcmp(target, ".."))
                return rl_error_set(err, -EINVAL,
                                    "layer entry '%s': a whiteout of '%s' is not allowed", entry,
                                    target);
        char path[PATH_MAX];
        if (join(path, sizeof(path), dir, target) < 0)
                return rl_error_set(err, -EINVAL, "layer entry '%s': too long", entry);
        a->st->whiteouts++;
        /* Whiteouts hide the lower layers only: what this same layer wrote stays. */
        mark m = pathset_get(&a->marks, path);
        if (m == MARK_CREATED || m == MARK_REUSED_DIR)
                return 0;
        r = remove_entry(a, dfd, target, path, err);
        return r < 0 ? r : 0;
}

/* Owner, xattrs, mode; times too, except for directories (set last). */
static int set_meta(apply *a, struct archive_entry *e, const rl_ref *ref, const char *path,
                    bool reused_dir, rl_error *err)
{
        const rl_apply_options *o = a->opts;
        mode_t type = archive_entry_filetype(e);
        uid_t uid;
        gid_t gid;
        int r = rl_map_owner(o->uid_map, o->gid_map, o->keep_unmapped,
                             (uint32_t)archive_entry_uid(e), (uint32_t)archive_entry_gid(e), path,
                             &uid, &gid, err);
        if (r < 0 || (r = rl_ref_chown(ref, uid, gid, path, err)) < 0)
                return rl_error_prefix(err, r, "layer entry");

        if (reused_dir) {
                /* The entry says which xattrs the directory has: drop the lower's others. */
                /* XATTR_LIST_MAX: one call, never a size probe; reused directories are few. */
                _cleanup_free_ char *names = malloc(64 * 1024);
                if (!names)
                        return rl_error_set(err, -ENOMEM, "layer entry '%s'", path);
                ssize_t len = rl_ref_listxattr(ref, names, 64 * 1024);
                if (len < 0 && errno != EOPNOTSUPP && errno != ENOTSUP)
                        return rl_error_set(err, -errno, "layer entry '%s': list xattrs", path);
                for (const char *n = names; len > 0 && n < names + len; n += strlen(n) + 1) {
                        bool keep = rl_xattr_is_alias(n);
                        const char *xn;
                        const void *xv;
                        size_t xs;
                        archive_entry_xattr_reset(e);
                        while (!keep && archive_entry_xattr_next(e, &xn, &xv, &xs) == ARCHIVE_OK)
                                keep = strcmp(xn, n) == 0;
                        if (!keep && fremovexattr(ref->fd, n) < 0 && errno != ENODATA)
                                return rl_error_set(err, -errno,
                                                    "layer entry '%s': remove xattr '%s'", path,
                                                    n);
                }
        }
        const char *name;
        const void *value;
        size_t size;
        archive_entry_xattr_reset(e);
        while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
                if (rl_xattr_is_alias(name))
                        continue;
                if (size > RL_XATTR_VALUE_BUF - 64)
                        return rl_error_set(err, -EINVAL,
                                            "layer entry '%s': xattr '%s' of %zu bytes", path,
                                            name, size);
                memcpy(a->xv, value, size);
                if (o->uid_map || o->gid_map) {
                        r = rl_idmap_shift_xattr(o->uid_map, o->gid_map, o->keep_unmapped, name,
                                                 a->xv, &size, RL_XATTR_VALUE_BUF);
                        if (r < 0)
                                return rl_error_set(err, r,
                                                    "layer entry '%s': shift ids in xattr '%s'",
                                                    path, name);
                }
                if (rl_ref_setxattr(ref, name, a->xv, size) < 0)
                        return rl_error_set(err, -errno, "layer entry '%s': write xattr '%s'",
                                            path, name);
        }
        if (type != AE_IFLNK &&
            (r = rl_ref_chmod(ref, archive_entry_perm(e) & 07777, path, err)) < 0)
                return rl_error_prefix(err, r, "layer entry");

        struct timespec ts[2] = {
                { archive_entry_mtime(e), archive_entry_mtime_nsec(e) },
                { archive_entry_mtime(e), archive_entry_mtime_nsec(e) },
        };
        if (archive_entry_atime_is_set(e))
                ts[0] = (struct timespec){ archive_entry_atime(e), archive_entry_atime_nsec(e) };
        if (type != AE_IFDIR) {
                r = rl_ref_utimens(ref, ts, path, err);
                return r < 0 ? rl_error_prefix(err, r, "layer entry") : 0;
        }
        r = add_dirtime(a, path, ts);
        return r < 0 ? rl_error_set(err, r, "layer entry '%s'", path) : 0;
}

static int write_data(apply *a, int fd, struct archive_entry *e, const char *path,
                      rl_error *err)
{
        const void *buf;
        size_t size;
        la_int64_t off;
        int r;
        while ((r = archive_read_data_block(a->tar, &buf, &size, &off)) == ARCHIVE_OK) {
                r = rl_pwrite_all(fd, buf, size, (uint64_t)off);
                if (r < 0)
                        return rl_error_set(err, r, "layer entry '%s': write", path);
                a->st->bytes += size;
        }
        if (r != ARCHIVE_EOF)
                return rl_error_set(err, -EINVAL, "layer entry '%s': %s", path,
                                    archive_error_string(a->tar));
        /* A sparse file's last hole is a size, not a block. */
        if (ftruncate(fd, (off_t)archive_entry_size(e)) < 0)
                return rl_error_set(err, -errno, "layer entry '%s': set size", path);
        return 0;
}

static int hardlink(apply *a, const char *entry, int dir_fd, const char *base,
                    const char *target_name, rl_error *err)
{
        char target[PATH_MAX];
        int r = clean_name(target_name, target, sizeof(target), "hardlink target", err);
        if (r < 0)
                return rl_error_prefix(err, r, "layer entry '%s'", entry);
        const char *tbase, *tdir = split_last(target, &tbase);
        if (!tbase[0])
                return rl_error_set(err, -EINVAL, "layer entry '%s': a hardlink to the root",
                                    entry);
        _cleanup_close_ int tfd = tdir[0] ? rl_openat_beneath_follow(a->root_fd, tdir,
                                                                     O_PATH | O_DIRECTORY, 0)
                                          : fcntl(a->root_fd, F_DUPFD_CLOEXEC, 3);
        if (tfd < 0)
                return tfd == -ENOENT
                               ? rl_error_set(err, -EINVAL,
                                              "layer entry '%s': hardlink target '%s' does not "
                                              "exist",
                                              entry, target_name)
                               : resolve_error(tfd, entry, tdir, err);
        struct stat st;
        if (fstatat(tfd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0 || S_ISDIR(st.st_mode))
                return rl_error_set(err, -EINVAL,
                                    "layer entry '%s': hardlink target '%s' %s", entry,
                                    target_name,
                                    errno == ENOENT ? "does not exist" : "is a directory");
        r = remove_entry(a, dir_fd, base, entry, err);
        if (r < 0)
                return r;
        if (linkat(tfd, tbase, dir_fd, base, 0) < 0)
                return rl_error_set(err, -errno, "layer entry '%s': link to '%s'", entry,
                                    target_name);
        return 0;
}

static int apply_entry(apply *a, struct archive_entry *e, rl_error *err)
{
        char path[PATH_MAX], parent[PATH_MAX];
        int r = clean_name(archive_entry_pathname(e), path, sizeof(path), "entry", err);
        if (r < 0)
                return r;
        memcpy(parent, path, strlen(path) + 1);
        const char *base, *dir = split_last(parent, &base);
        mode_t type = archive_entry_filetype(e);
        const char *link = archive_entry_hardlink(e);

        if (strncmp(base, WHITEOUT, strlen(WHITEOUT)) == 0)
                return whiteout(a, path, dir, base, err);
        if (!path[0]) {
                /* "./": the root's own metadata. */
                if (type != AE_IFDIR || link)
                        return rl_error_set(err, -EINVAL,
                                            "layer entry '%s': the root must be a directory",
                                            archive_entry_pathname(e));
                r = pathset_put(&a->marks, "", MARK_REUSED_DIR);
                if (r < 0)
                        return rl_error_set(err, r, "layer entry '.'");
                return set_meta(a, e, &(rl_ref){ .fd = a->root_fd }, "", true, err);
        }

        int dfd;
        r = open_dir(a, dir, true, path, &dfd, err);
        if (r < 0)
                return r == -ENOENT ? resolve_error(r, path, dir, err) : r;
        if (link) {
                r = hardlink(a, path, dfd, base, link, err);
                return r < 0 ? r : pathset_put(&a->marks, path, MARK_CREATED);
        }

        struct stat old;
        bool exists = fstatat(dfd, base, &old, AT_SYMLINK_NOFOLLOW) == 0;
        bool reuse = exists && type == AE_IFDIR && S_ISDIR(old.st_mode);
        if (exists && !reuse && (r = remove_entry(a, dfd, base, path, err)) < 0)
                return r;

        _cleanup_close_ int fd = -EBADF;
        switch (type) {
        case AE_IFDIR:
                if (!reuse && mkdirat(dfd, base, 0700) < 0)
                        return rl_error_set(err, -errno, "layer entry '%s': mkdir", path);
                fd = openat(dfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                break;
        case AE_IFREG:
                fd = openat(dfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                            0600);
                if (fd >= 0 && (r = write_data(a, fd, e, path, err)) < 0)
                        return r;
                break;
        case AE_IFLNK:
                if (!archive_entry_symlink(e))
                        return rl_error_set(err, -EINVAL, "layer entry '%s': a symlink to nothing",
                                            path);
                if (symlinkat(archive_entry_symlink(e), dfd, base) < 0)
                        return rl_error_set(err, -errno, "layer entry '%s': symlink", path);
                break;
        case AE_IFCHR:
        case AE_IFBLK:
        case AE_IFIFO:
                if (mknodat(dfd, base, (type == AE_IFCHR ? S_IFCHR : type == AE_IFBLK ? S_IFBLK
                                                                                      : S_IFIFO) |
                                               0600,
                            type == AE_IFIFO ? 0 : archive_entry_rdev(e)) < 0)
                        return rl_error_set(err, -errno, "layer entry '%s': mknod", path);
                break;
        default:
                return rl_error_set(err, -EINVAL, "layer entry '%s': an entry of type 0%o",
                                    path, (unsigned)type);
        }
        if ((type == AE_IFDIR || type == AE_IFREG) && fd < 0)
                return rl_error_set(err, -errno, "layer entry '%s': open", path);
        r = pathset_put(&a->marks, path, reuse ? MARK_REUSED_DIR : MARK_CREATED);
        if (r < 0)
                return rl_error_set(err, r, "layer entry '%s'", path);
        rl_ref ref = fd >= 0 ? (rl_ref){ .fd = fd } : (rl_ref){ -EBADF, dfd, base };
        return set_meta(a, e, &ref, path, reuse, err);
}

/* In order: where a directory was recorded twice (kept, then an entry), the entry wins. */
static int set_dir_times(apply *a, rl_error *err)
{
        for (size_t i = 0; i < a->n_dirs; i++) {
                const dirtime *d = &a->dirs[i];
                _cleanup_close_ int fd =
                        d->path[0] ? rl_openat_beneath_follow(a->root_fd, d->path,
                                                              O_RDONLY | O_DIRECTORY |
                                                                      O_NOFOLLOW,
                                                              0)
                                   : fcntl(a->root_fd, F_DUPFD_CLOEXEC, 3);
                if (fd == -ENOENT || fd == -ELOOP || fd == -ENOTDIR)
                        continue; /* a later entry removed or replaced it */
                if (fd < 0)
                        return rl_error_set(err, fd, "layer: open '%s'", d->path);
                if (futimens(fd, d->ts) < 0)
                        return rl_error_set(err, -errno, "layer: set times of '%s'", d->path);
        }
        return 0;
}

static void report(apply *a)
{
        rl_meter_report(&a->meter, a->st->entries, a->st->bytes);
}

static void report_idle(void *userdata)
{
        report(userdata);
}

static int check_digest(const char *what, const char *want, const char *got, rl_error *err)
{
        if (!want || strcmp(want, got) == 0)
                return 0;
        return rl_error_set(err, -EBADMSG, "layer: %s mismatch: expected %s, got %s", what,
                            want, got);
}

RL_EXPORT int rl_layer_apply(int dir_fd, int tar_fd, const rl_apply_options *opts,
                             rl_layer_stats *ret, rl_error *err)
{
        static const rl_apply_options defaults = {};
        rl_layer_stats st = {};
        _cleanup_(rl_sha256_freep) rl_sha256 *hblob = NULL;
        _cleanup_(rl_sha256_freep) rl_sha256 *htar = NULL;
        _cleanup_free_ char *rbuf = malloc(READ_BUF), *pbuf = malloc(READ_BUF),
                            *xv = malloc(RL_XATTR_VALUE_BUF);
        struct archive *outer = archive_read_new(), *tar = archive_read_new();
        apply a = { .root_fd = dir_fd,
                    .opts = opts ? opts : &defaults,
                    .st = &st,
                    .tar = tar,
                    .cached_fd = -EBADF,
                    .xv = xv };
        rl_meter_init(&a.meter, a.opts->progress, a.opts->progress_userdata, 0, rl_now_ns());
        int r;

        if (!rbuf || !pbuf || !xv || !outer || !tar || rl_sha256_new(&hblob) < 0 ||
            rl_sha256_new(&htar) < 0) {
                r = rl_error_set(err, -ENOMEM, "layer");
                goto out;
        }
        source src = { .fd = tar_fd, .h = hblob, .buf = rbuf, .cancel = a.opts->cancel,
                       .idle = report_idle, .idle_userdata = &a };
        plain pl = { .outer = outer, .h = htar, .buf = pbuf };
        struct archive_entry *e;
        /* OCI layers are tar, plain, gzip or zstd: nothing else is even tried. */
        if (archive_read_support_filter_gzip(outer) != ARCHIVE_OK ||
            archive_read_support_filter_zstd(outer) != ARCHIVE_OK ||
            archive_read_support_format_raw(outer) != ARCHIVE_OK ||
            archive_read_support_format_tar(tar) != ARCHIVE_OK ||
            archive_read_open(outer, &src, NULL, source_read, NULL) != ARCHIVE_OK ||
            archive_read_next_header(outer, &e) != ARCHIVE_OK) {
                r = rl_error_set(err, -EINVAL, "layer: %s", archive_error_string(outer));
                goto out;
        }
        if (archive_read_open(tar, &pl, NULL, plain_read, NULL) != ARCHIVE_OK) {
                r = rl_error_set(err, -EINVAL, "layer: not a tar archive: %s",
                                 archive_error_string(tar));
                goto out;
        }
        for (;;) {
                if (a.opts->cancel && atomic_load(a.opts->cancel)) {
                        r = rl_error_set(err, -ECANCELED, "layer: cancelled");
                        goto out;
                }
                int q = archive_read_next_header(tar, &e);
                if (q == ARCHIVE_EOF)
                        break;
                if (q != ARCHIVE_OK && q != ARCHIVE_WARN) {
                        r = rl_error_set(err, -EINVAL,
                                         st.entries ? "layer: after entry %" PRIu64 ": %s"
                                                    : "layer: not a tar archive (%" PRIu64
                                                      " entries): %s",
                                         st.entries, archive_error_string(tar));
                        goto out;
                }
                st.entries++;
                r = apply_entry(&a, e, err);
                if (r < 0)
                        goto out;
                report(&a);
        }
        /* What follows the tar's end (padding) belongs to the digests too. */
        char sink[65536];
        la_ssize_t n;
        while ((n = archive_read_data(outer, sink, sizeof(sink))) > 0)
                rl_sha256_update(htar, sink, (size_t)n);
        if (n < 0) {
                r = rl_error_set(err, -EINVAL, "layer: %s", archive_error_string(outer));
                goto out;
        }
        const void *rest;
        while ((n = source_read(outer, &src, &rest)) > 0)
                ;
        if (n < 0) {
                r = rl_error_set(err, -EIO, "layer: %s", archive_error_string(outer));
                goto out;
        }
        rl_sha256_final(hblob, st.digest);
        rl_sha256_final(htar, st.diff_id);
        st.size = src.size;
        if ((r = check_digest("digest", a.opts->expect_digest, st.digest, err)) < 0 ||
            (r = check_digest("diff_id", a.opts->expect_diff_id, st.diff_id, err)) < 0)
                goto out;
        r = set_dir_times(&a, err);
out:
        /* Whatever failed once the cancel came (a read it cut short), it is the reason. */
        if (r < 0 && r != -ECANCELED && a.opts->cancel && atomic_load(a.opts->cancel))
                r = rl_error_set(err, -ECANCELED, "layer: cancelled");
        archive_read_free(tar);
        archive_read_free(outer);
        drop_cache(&a);
        pathset_clear(&a.marks);
        for (size_t i = 0; i < a.n_dirs; i++)
                free(a.dirs[i].path);
        free(a.dirs);
        st.elapsed_ns = rl_now_ns() - a.meter.start_ns;
        rl_meter_done(&a.meter);
        if (ret)
                *ret = st;
        return r < 0 ? r : 0;
}
