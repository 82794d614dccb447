/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * export.c owns writing the changes of a tree as an OCI layer tar (rl_layer_export): the
 * entries, whiteouts and opaque markers, hardlinks within the layer, compression, and the
 * two digests (of the blob, and of the uncompressed tar: the diff_id). The changes are
 * diff.c's; this file only turns them into tar entries.
 *
 * Two libarchive writers in a row: the first writes the tar (PAX, no filter) into a
 * callback that hashes the uncompressed bytes and hands them to the second, which writes
 * them as the one "raw" entry through the gzip or zstd filter into a callback that hashes
 * and writes the blob. libarchive's own callbacks only ever see the compressed bytes, and a
 * second pass over the output to find the diff_id would mean decompressing it again.
 */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/layer.h>

#include "diff.h"
#include "digest.h"
#include "progress.h"
#include "util.h"
#include "xattrs.h"

#define DATA_CHUNK (256u * 1024)
#define WHITEOUT ".wh."
#define OPAQUE ".wh..wh..opq"

typedef struct written_dir {
        const rl_diff_dir *dir;
        struct statx st; /* whiteouts in it get its times */
        bool opaque;     /* its lower entries are gone as a whole: no whiteouts of them */
} written_dir;

/* The first name written for an inode with more than one name. */
typedef struct first_name {
        uint32_t dev_major, dev_minor;
        uint64_t ino;
        char *path;
} first_name;

typedef struct export {
        const rl_export_options *opts;
        int out_fd;
        bool out_sock;       /* out_fd is a socket: sent without SIGPIPE (rl_send_all) */
        struct archive *tar; /* the tar, uncompressed, into tar_out() */
        struct archive *zip; /* the compressor (raw format) into blob_out(); NULL: none */
        rl_sha256 *tar_hash, *blob_hash;
        uint64_t blob_size;
        int io_r;            /* the first error of a write callback, and its message */
        rl_error io_err;
        rl_layer_stats stats;

        written_dir *dirs;   /* the directories written, root first: a prefix of the diff's */
        size_t n_dirs, cap_dirs;
        void *links;         /* tsearch tree of first_name */
        struct archive_entry *entry;
        rl_xattrs xattrs;
        char *data;
        char *name;          /* the tar name being built */
        size_t name_cap;
        char target[PATH_MAX + 1];
        rl_meter meter; /* opts->progress */
} export;

/* --- the output: hashing, compressing, writing ----------------------------------------- */

static int io_fail(export *x, int r, const char *what)
{
        if (x->io_r == 0)
                x->io_r = rl_error_set(&x->io_err, r, "export: %s", what);
        return -1;
}

static int blob_out(export *x, const void *buf, size_t size)
{
        int r = x->out_sock ? rl_send_all(x->out_fd, buf, size)
                            : rl_write_all(x->out_fd, buf, size);
        if (r < 0)
                return io_fail(x, r, "write the layer");
        rl_sha256_update(x->blob_hash, buf, size);
        x->blob_size += size;
        return 0;
}

static la_ssize_t zip_write(struct archive *a _unused_, void *ctx, const void *buf, size_t size)
{
        return blob_out(ctx, buf, size) < 0 ? -1 : (la_ssize_t)size;
}

static la_ssize_t tar_write(struct archive *a _unused_, void *ctx, const void *buf, size_t size)
{
        export *x = ctx;

        rl_sha256_update(x->tar_hash, buf, size);
        if (!x->zip)
                return blob_out(x, buf, size) < 0 ? -1 : (la_ssize_t)size;
        if (archive_write_data(x->zip, buf, size) < 0) {
                if (x->io_r == 0)
                        rl_error_set(&x->io_err, x->io_r = -EIO, "export: compress: %s",
                                     archive_error_string(x->zip));
                return -1;
        }
        return (la_ssize_t)size;
}

/* A libarchive call on a failed: the callbacks' error if they had one, else libarchive's. */
static int archive_failed(export *x, struct archive *a, const char *what, const char *path,
                          rl_error *err)
{
        if (x->io_r < 0) {
                if (err)
                        *err = x->io_err;
                return x->io_r;
        }
        int e = archive_errno(a);
        return rl_error_set(err, e > 0 ? -e : -EIO, "export: %s '%s': %s", what, path,
                            archive_error_string(a) ? archive_error_string(a) : "libarchive");
}

static int set_level(struct archive *a, const rl_export_options *o, rl_error *err)
{
        char level[16];
        bool gzip = o->compression == RL_COMPRESSION_GZIP;

        if (o->level == 0)
                return 0;
        if (o->level < (gzip ? 1 : -7) || o->level > (gzip ? 9 : 22))
                return rl_error_set(err, -EINVAL, "export: %s level %d is outside %d..%d",
                                    rl_compression_to_string(o->compression), o->level,
                                    gzip ? 1 : -7, gzip ? 9 : 22);
        snprintf(level, sizeof(level), "%d", o->level);
        if (archive_write_set_filter_option(a, NULL, "compression-level", level) < ARCHIVE_WARN)
                return rl_error_set(err, -EINVAL, "export: %s level %d: %s",
                                    rl_compression_to_string(o->compression), o->level,
                                    archive_error_string(a));
        return 0;
}

static int new_writer(struct archive **ret, int (*set_format)(struct archive *), rl_error *err)
{
        *ret = archive_write_new();
        if (!*ret)
                return rl_error_set(err, -ENOMEM, "export");
        if (set_format(*ret) != ARCHIVE_OK)
                return rl_error_set(err, -EIO, "export: %s", archive_error_string(*ret));
        return 0;
}

/* The compressor: one raw entry whose data is the tar, through gzip or zstd. */
static int open_compressor(export *x, rl_error *err)
{
        const rl_export_options *o = x->opts;
        int r;

        r = new_writer(&x->zip, archive_write_set_format_raw, err);
        if (r < 0)
                return r;
        /* ARCHIVE_WARN would mean an external program instead of the library: refused, as
         * this process must not fork one behind its caller's back. */
        r = o->compression == RL_COMPRESSION_GZIP ? archive_write_add_filter_gzip(x->zip)
                                                  : archive_write_add_filter_zstd(x->zip);
        if (r != ARCHIVE_OK)
                return rl_error_set(err, -EOPNOTSUPP, "export: %s: %s",
                                    rl_compression_to_string(o->compression),
                                    archive_error_string(x->zip));
        /* gzip stamps the time of writing into its header unless told not to: the same
         * changes must give the same blob, digest and all. */
        if (o->compression == RL_COMPRESSION_GZIP &&
            archive_write_set_filter_option(x->zip, "gzip", "timestamp", NULL) != ARCHIVE_OK)
                return rl_error_set(err, -EIO, "export: gzip: %s", archive_error_string(x->zip));
        r = set_level(x->zip, o, err);
        if (r < 0)
                return r;
        /* No blocking: padding would land after the compressed stream, not inside it. */
        archive_write_set_bytes_per_block(x->zip, 0);
        if (archive_write_open2(x->zip, x, NULL, zip_write, NULL, NULL) != ARCHIVE_OK)
                return archive_failed(x, x->zip, "open", "the compressor", err);

        struct archive_entry *e = archive_entry_new();
        if (!e)
                return rl_error_set(err, -ENOMEM, "export");
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_pathname(e, "layer.tar");
        r = archive_write_header(x->zip, e);
        archive_entry_free(e);
        if (r != ARCHIVE_OK)
                return archive_failed(x, x->zip, "start", "the compressor", err);
        return 0;
}

static int open_output(export *x, rl_error *err)
{
        const rl_export_options *o = x->opts;

        if (rl_sha256_new(&x->tar_hash) < 0 || rl_sha256_new(&x->blob_hash) < 0)
                return rl_error_set(err, -ENOMEM, "export");
        if (!rl_compression_to_string(o->compression))
                return rl_error_set(err, -EINVAL, "export: unknown compression %d",
                                    (int)o->compression);
        if (o->compression == RL_COMPRESSION_NONE && o->level != 0)
                return rl_error_set(err, -EINVAL, "export: a level (%d) needs a compression",
                                    o->level);
        if (o->compression != RL_COMPRESSION_NONE) {
                int q = open_compressor(x, err);
                if (q < 0)
                        return q;
        }

        /* PAX interchange, not "restricted": restricted writes nanoseconds and atimes only
         * when some other field needs an extended header anyway. */
        int r = new_writer(&x->tar, archive_write_set_format_pax, err);
        if (r < 0)
                return r;
        /* xattrs as SCHILY.xattr.* only, the form OCI tools read; a libarchive too old for
         * the option writes its LIBARCHIVE.xattr.* as well, which readers skip. */
        (void)archive_write_set_format_option(x->tar, "pax", "xattrheader", "SCHILY");
        if (archive_write_open2(x->tar, x, NULL, tar_write, NULL, NULL) != ARCHIVE_OK)
                return archive_failed(x, x->tar, "open", "the tar", err);
        x->entry = archive_entry_new();
        x->data = malloc(DATA_CHUNK);
        if (!x->entry || !x->data)
                return rl_error_set(err, -ENOMEM, "export");
        return 0;
}

/* --- entries ----------------------------------------------------------------------------- */

/* The tar name: [dir "/"] prefix name suffix ("./" for the root directory). */
static const char *tar_name(export *x, const rl_diff_dir *dir, const char *prefix,
                            const char *name, const char *suffix)
{
        const char *d = dir && dir->depth ? dir->path : "";
        size_t need = strlen(d) + 1 + strlen(prefix) + strlen(name) + strlen(suffix) + 1;
        if (!RL_GROW(x->name, x->name_cap, need))
                return NULL;
        snprintf(x->name, x->name_cap, "%s%s%s%s%s", d, *d ? "/" : "", prefix, name, suffix);
        return x->name;
}

static bool is_whiteout_name(const char *name)
{
        return strncmp(name, WHITEOUT, strlen(WHITEOUT)) == 0;
}

static int write_header(export *x, const char *path, rl_error *err)
{
        /* ARCHIVE_WARN: written, with a remark (a name not in the locale's charset goes
         * out as raw bytes with hdrcharset=BINARY). */
        if (archive_write_header(x->tar, x->entry) < ARCHIVE_WARN)
                return archive_failed(x, x->tar, "write", path, err);
        x->stats.entries++;
        return 0;
}

/* Fill x->entry from st and the xattrs of ref, named tar_path. */
static int fill(export *x, const char *tar_path, const struct statx *st, const rl_ref *ref,
                const char *path, rl_error *err)
{
        struct archive_entry *e = x->entry;

        archive_entry_clear(e);
        archive_entry_copy_pathname(e, tar_path);
        archive_entry_set_mode(e, st->stx_mode);
        archive_entry_set_uid(e, st->stx_uid);
        archive_entry_set_gid(e, st->stx_gid);
        archive_entry_set_mtime(e, st->stx_mtime.tv_sec, st->stx_mtime.tv_nsec);
        archive_entry_set_atime(e, st->stx_atime.tv_sec, st->stx_atime.tv_nsec);
        archive_entry_set_size(e, S_ISREG(st->stx_mode) ? (la_int64_t)st->stx_size : 0);
        if (S_ISCHR(st->stx_mode) || S_ISBLK(st->stx_mode)) {
                archive_entry_set_rdevmajor(e, st->stx_rdev_major);
                archive_entry_set_rdevminor(e, st->stx_rdev_minor);
        }
        if (!ref)
                return 0;
        int r = rl_xattrs_load(&x->xattrs, ref);
        if (r < 0)
                return rl_error_set(err, r, "export: read xattrs of '%s'", path);
        for (size_t i = 0; i < x->xattrs.n; i++)
                archive_entry_xattr_add_entry(e, x->xattrs.v[i].name, x->xattrs.v[i].value,
                                              x->xattrs.v[i].size);
        return 0;
}

/* A whiteout (.wh.NAME) or opaque marker in the written directory w: an empty file, mode
 * 0, owned by root, with w's times. */
static int write_marker(export *x, const written_dir *w, const char *prefix, const char *name,
                        rl_error *err)
{
        const char *n = tar_name(x, w->dir, prefix, name, "");
        if (!n)
                return rl_error_set(err, -ENOMEM, "export '%s'", w->dir->path);
        struct statx st = {
                .stx_mode = S_IFREG,
                .stx_mtime = w->st.stx_mtime,
                .stx_atime = w->st.stx_atime,
        };
        fill(x, n, &st, NULL, n, err);
        int r = write_header(x, n, err);
        if (r < 0)
                return r;
        if (strcmp(prefix, WHITEOUT) == 0)
                x->stats.whiteouts++;
        else
                x->stats.opaques++;
        return 0;
}

/* Write the directory dir (and its opaque marker) and note it as written. */
static int write_dir(export *x, const rl_diff_dir *dir, rl_error *err)
{
        written_dir w = { .dir = dir };
        const char *base = strrchr(dir->path, '/');
        int r;

        base = base ? base + 1 : dir->path;
        if (dir->depth && is_whiteout_name(base))
                return rl_error_set(err, -EINVAL, "export '%s': a name starting with '%s' "
                                    "would read as a whiteout in a layer", dir->path, WHITEOUT);
        if (statx(dir->upper_fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
                  STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_ATIME | STATX_MTIME,
                  &w.st) < 0)
                return rl_error_set(err, -errno, "export: stat '%s'", dir->path);
        const char *n = dir->depth ? tar_name(x, NULL, dir->path, "", "/") : "./";
        if (!n)
                return rl_error_set(err, -ENOMEM, "export '%s'", dir->path);
        r = fill(x, n, &w.st, &(rl_ref){ .fd = dir->upper_fd }, dir->path, err);
        if (r < 0)
                return r;
        r = write_header(x, dir->path, err);
        if (r < 0)
                return r;

        if (!RL_GROW(x->dirs, x->cap_dirs, x->n_dirs + 1))
                return rl_error_set(err, -ENOMEM, "export '%s'", dir->path);
        w.opaque = dir->lower_all_gone;
        x->dirs[x->n_dirs++] = w;
        /* Right after the directory, before anything this layer puts in it: an applier
         * that empties the directory when it meets the marker removes only lower's. */
        if (w.opaque)
                return write_marker(x, &w, OPAQUE, "", err);
        return 0;
}

/*
 * Write every directory from the root down to dir that is not written yet. A layer carries
 * the parents of what it changes, as containerd's does: an applier that replaces an entry
 * changes its directory's mtime, and the directory's own entry, applied after its
 * children, puts it back.
 */
static int write_parents(export *x, const rl_diff_dir *dir, rl_error *err)
{
        for (unsigned depth = (unsigned)x->n_dirs; depth <= dir->depth; depth++) {
                const rl_diff_dir *d = dir;
                while (d->depth > depth)
                        d = d->parent;
                int r = write_dir(x, d, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int link_cmp(const void *a, const void *b)
{
        const first_name *p = a, *q = b;
        if (p->ino != q->ino)
                return p->ino < q->ino ? -1 : 1;
        if (p->dev_major != q->dev_major)
                return p->dev_major < q->dev_major ? -1 : 1;
        if (p->dev_minor != q->dev_minor)
                return p->dev_minor < q->dev_minor ? -1 : 1;
        return 0;
}

static void link_free(void *p)
{
        first_name *f = p;
        free(f->path);
        free(f);
}

/* The data of a regular file, exactly the size its header promised. */
static int write_data(export *x, int fd, uint64_t size, const char *path, rl_error *err)
{
        const atomic_bool *cancel = x->opts->cancel;

        for (uint64_t done = 0; done < size;) {
                if (cancel && atomic_load(cancel))
                        return rl_error_set(err, -ECANCELED, "export: interrupted at '%s'", path);
                size_t want = size - done < DATA_CHUNK ? (size_t)(size - done) : DATA_CHUNK;
                ssize_t n = read(fd, x->data, want);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return rl_error_set(err, -errno, "export: read '%s'", path);
                }
                if (n == 0)
                        return rl_error_set(err, -ESTALE, "export: '%s' shrank while being "
                                            "written to the layer", path);
                if (archive_write_data(x->tar, x->data, (size_t)n) < 0)
                        return archive_failed(x, x->tar, "write data of", path, err);
                done += (uint64_t)n;
                x->stats.bytes += (uint64_t)n;
                rl_meter_report(&x->meter, x->stats.entries, x->stats.bytes);
        }
        return 0;
}

/* A regular file: a hardlink entry when another name of its inode is in the layer already,
 * else the whole file. */
static int write_regular(export *x, const rl_diff_item *it, rl_error *err)
{
        const struct statx *st = it->upper;
        const char *path = it->change.path;
        first_name key = { st->stx_dev_major, st->stx_dev_minor, st->stx_ino, NULL };
        int r;

        if (st->stx_nlink > 1) {
                first_name **found = tfind(&key, &x->links, link_cmp);
                if (found) {
                        fill(x, path, st, NULL, path, err);
                        archive_entry_copy_hardlink(x->entry, (*found)->path);
                        archive_entry_set_size(x->entry, 0);
                        return write_header(x, path, err);
                }
        }

        _cleanup_close_ int fd = rl_open_noatime(it->dir->upper_fd, it->name,
                                                 O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
        if (fd < 0)
                return rl_error_set(err, fd, "export: open '%s'", path);
        struct statx now;
        if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &now) < 0)
                return rl_error_set(err, -errno, "export: stat '%s'", path);
        if (now.stx_ino != st->stx_ino || !S_ISREG(now.stx_mode))
                return rl_error_set(err, -ESTALE, "export: '%s' was replaced while being "
                                    "exported", path);
        r = fill(x, path, st, &(rl_ref){ .fd = fd }, path, err);
        if (r < 0)
                return r;
        r = write_header(x, path, err);
        if (r < 0)
                return r;
        r = write_data(x, fd, st->stx_size, path, err);
        if (r < 0)
                return r;

        if (st->stx_nlink > 1) {
                first_name *f = malloc(sizeof(*f));
                if (!f || !(key.path = strdup(path))) {
                        free(f);
                        return rl_error_set(err, -ENOMEM, "export '%s'", path);
                }
                *f = key;
                if (!tsearch(f, &x->links, link_cmp)) {
                        link_free(f);
                        return rl_error_set(err, -ENOMEM, "export '%s'", path);
                }
        }
        return 0;
}

/* An added or changed entry that is not a directory. */
static int write_entry(export *x, const rl_diff_item *it, rl_error *err)
{
        const struct statx *st = it->upper;
        const char *path = it->change.path;
        rl_ref ref = { -EBADF, it->dir->upper_fd, it->name };
        int r;

        if (is_whiteout_name(it->name))
                return rl_error_set(err, -EINVAL, "export '%s': a name starting with '%s' "
                                    "would read as a whiteout in a layer", path, WHITEOUT);
        switch (st->stx_mode & S_IFMT) {
        case S_IFREG:
                return write_regular(x, it, err);
        case S_IFSOCK:
                /* tar has no socket type, and a socket means nothing without the process
                 * that listens on it: layers leave them out (so do docker and containerd). */
                return 0;
        case S_IFLNK: {
                ssize_t n = readlinkat(it->dir->upper_fd, it->name, x->target,
                                       sizeof(x->target));
                if (n < 0)
                        return rl_error_set(err, -errno, "export: read link '%s'", path);
                if ((uint64_t)n != st->stx_size || (size_t)n >= sizeof(x->target))
                        return rl_error_set(err, -ESTALE, "export: '%s' changed while being "
                                            "exported", path);
                x->target[n] = '\0';
                r = fill(x, path, st, &ref, path, err);
                if (r < 0)
                        return r;
                archive_entry_copy_symlink(x->entry, x->target);
                return write_header(x, path, err);
        }
        default: /* fifos, devices */
                r = fill(x, path, st, &ref, path, err);
                if (r < 0)
                        return r;
                return write_header(x, path, err);
        }
}

static int on_change(const rl_diff_item *it, void *userdata, rl_error *err)
{
        export *x = userdata;
        const atomic_bool *cancel = x->opts->cancel;
        int r;

        if (cancel && atomic_load(cancel))
                return rl_error_set(err, -ECANCELED, "export: interrupted at '%s'",
                                    it->change.path);
        rl_meter_report(&x->meter, x->stats.entries, x->stats.bytes);
        /* A directory (added, changed, or a file that became one) and the parents. */
        if (it->self)
                return write_parents(x, it->self, err);
        r = write_parents(x, it->dir, err);
        if (r < 0)
                return r;
        if (it->change.kind != RL_CHANGE_DELETED)
                return write_entry(x, it, err);
        const written_dir *w = &x->dirs[x->n_dirs - 1];
        if (w->opaque)
                return 0; /* the opaque marker removed it along with the rest */
        return write_marker(x, w, WHITEOUT, it->name, err);
}

static void on_leave(const rl_diff_dir *dir, void *userdata)
{
        export *x = userdata;
        if (x->n_dirs > 0 && x->dirs[x->n_dirs - 1].dir == dir)
                x->n_dirs--;
}

static int finish(export *x, rl_error *err)
{
        if (archive_write_close(x->tar) != ARCHIVE_OK)
                return archive_failed(x, x->tar, "finish", "the tar", err);
        if (x->zip && archive_write_close(x->zip) != ARCHIVE_OK)
                return archive_failed(x, x->zip, "finish", "the compressed layer", err);
        rl_sha256_final(x->tar_hash, x->stats.diff_id);
        rl_sha256_final(x->blob_hash, x->stats.digest);
        x->stats.size = x->blob_size;
        return 0;
}

RL_EXPORT int rl_layer_export(int lower_fd, int upper_fd, int out_fd,
                              const rl_export_options *opts, rl_layer_stats *ret,
                              rl_error *err)
{
        static const rl_export_options defaults = {};
        static const rl_diff_ops ops = { .change = on_change, .leave = on_leave };
        uint64_t start = rl_now_ns();
        export x = { .opts = opts ? opts : &defaults, .out_fd = out_fd };
        struct stat st;
        int r;

        rl_meter_init(&x.meter, x.opts->progress, x.opts->progress_userdata,
                      x.opts->progress_interval_ns, start);
        x.out_sock = fstat(out_fd, &st) == 0 && S_ISSOCK(st.st_mode);

        r = open_output(&x, err);
        if (r >= 0)
                r = rl_diff_run(lower_fd, upper_fd, &ops, &x, NULL, err);
        if (r >= 0)
                r = finish(&x, err);
        if (x.tar)
                archive_write_free(x.tar);
        if (x.zip)
                archive_write_free(x.zip);
        archive_entry_free(x.entry);
        rl_sha256_free(x.tar_hash);
        rl_sha256_free(x.blob_hash);
        tdestroy(x.links, link_free);
        rl_xattrs_done(&x.xattrs);
        free(x.dirs);
        free(x.data);
        free(x.name);
        rl_meter_done(&x.meter);
        if (r < 0)
                return r;
        x.stats.elapsed_ns = rl_now_ns() - start;
        if (ret)
                *ret = x.stats;
        return 0;
}

