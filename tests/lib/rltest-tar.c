/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Tar layers for tests (tests/lib/rltest-tar.h): libarchive's PAX writer for well-formed
 * layers, hand-made ustar headers for the malformed ones.
 */
#include <archive.h>
#include <archive_entry.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rltest-tar.h"
#include "rltest.h"

struct rlt_tar {
        struct archive *a;
        char path[PATH_MAX];
};

rlt_tar *rlt_tar_open(const char *path, rl_compression c)
{
        rlt_tar *t = calloc(1, sizeof(*t));
        cr_assert(t);
        snprintf(t->path, sizeof(t->path), "%s", path);
        t->a = archive_write_new();
        cr_assert(t->a);
        /* PAX: the OCI spec's layer format; it carries nanosecond mtimes and xattrs. */
        cr_assert_eq(archive_write_set_format_pax(t->a), ARCHIVE_OK, "pax: %s",
                     archive_error_string(t->a));
        int r = ARCHIVE_OK;
        switch (c) {
        case RL_COMPRESSION_NONE:
                r = archive_write_add_filter_none(t->a);
                break;
        case RL_COMPRESSION_GZIP:
                r = archive_write_add_filter_gzip(t->a);
                break;
        case RL_COMPRESSION_ZSTD:
                r = archive_write_add_filter_zstd(t->a);
                break;
        }
        cr_assert_eq(r, ARCHIVE_OK, "libarchive cannot compress %s (compression %d): %s", path, c,
                     archive_error_string(t->a));
        cr_assert_eq(archive_write_open_filename(t->a, path), ARCHIVE_OK, "open %s: %s", path,
                     archive_error_string(t->a));
        return t;
}

void rlt_tar_close(rlt_tar *t)
{
        cr_assert_eq(archive_write_close(t->a), ARCHIVE_OK, "close %s: %s", t->path,
                     archive_error_string(t->a));
        archive_write_free(t->a);
        free(t);
}

void rlt_tar_add(rlt_tar *t, const rlt_tar_entry *e)
{
        struct archive_entry *ae = archive_entry_new();
        size_t size = e->data && !e->size ? strlen(e->data) : e->size;
        mode_t type = 0, mode = e->mode;

        cr_assert(ae);
        switch (e->type) {
        case RLT_TAR_REG:
        case RLT_TAR_HARDLINK:
                type = AE_IFREG;
                mode = mode ?: 0644;
                break;
        case RLT_TAR_DIR:
                type = AE_IFDIR;
                mode = mode ?: 0755;
                break;
        case RLT_TAR_SYMLINK:
                type = AE_IFLNK;
                mode = mode ?: 0777;
                break;
        case RLT_TAR_FIFO:
                type = AE_IFIFO;
                mode = mode ?: 0644;
                break;
        case RLT_TAR_CHR:
                type = AE_IFCHR;
                mode = mode ?: 0644;
                break;
        case RLT_TAR_BLK:
                type = AE_IFBLK;
                mode = mode ?: 0644;
                break;
        }
        archive_entry_set_pathname(ae, e->name);
        archive_entry_set_filetype(ae, type);
        archive_entry_set_perm(ae, mode);
        archive_entry_set_uid(ae, e->uid);
        archive_entry_set_gid(ae, e->gid);
        archive_entry_set_mtime(ae, e->mtime_sec ?: RLT_TAR_MTIME, e->mtime_nsec);
        archive_entry_set_size(ae, e->type == RLT_TAR_REG ? (la_int64_t)size : 0);
        if (e->type == RLT_TAR_SYMLINK)
                archive_entry_set_symlink(ae, e->target);
        if (e->type == RLT_TAR_HARDLINK)
                archive_entry_set_hardlink(ae, e->target);
        if (e->type == RLT_TAR_CHR || e->type == RLT_TAR_BLK) {
                archive_entry_set_rdevmajor(ae, e->rdev_major);
                archive_entry_set_rdevminor(ae, e->rdev_minor);
        }
        /* The PAX writer turns each into a SCHILY.xattr.NAME record (and a LIBARCHIVE.xattr
         * one, which other readers ignore); values are binary-safe there. */
        for (size_t i = 0; i < RLT_TAR_XATTRS_MAX && e->xattrs[i].name; i++)
                archive_entry_xattr_add_entry(ae, e->xattrs[i].name, e->xattrs[i].value,
                                              e->xattrs[i].size);

        cr_assert_eq(archive_write_header(t->a, ae), ARCHIVE_OK, "%s: header of '%s': %s",
                     t->path, e->name, archive_error_string(t->a));
        if (e->type == RLT_TAR_REG && size > 0)
                cr_assert_eq(archive_write_data(t->a, e->data, size), (la_ssize_t)size,
                             "%s: data of '%s': %s", t->path, e->name, archive_error_string(t->a));
        archive_entry_free(ae);
}

void rlt_tar_dir(rlt_tar *t, const char *name, mode_t mode)
{
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_DIR, .name = name, .mode = mode });
}

void rlt_tar_file(rlt_tar *t, const char *name, mode_t mode, const char *content)
{
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = name, .mode = mode,
                                         .data = content });
}

void rlt_tar_symlink(rlt_tar *t, const char *name, const char *target)
{
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_SYMLINK, .name = name, .target = target });
}

void rlt_tar_hardlink(rlt_tar *t, const char *name, const char *target)
{
        rlt_tar_add(t,
                    &(rlt_tar_entry){ .type = RLT_TAR_HARDLINK, .name = name, .target = target });
}

void rlt_tar_fifo(rlt_tar *t, const char *name, mode_t mode)
{
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_FIFO, .name = name, .mode = mode });
}

void rlt_tar_chardev(rlt_tar *t, const char *name, mode_t mode, unsigned major, unsigned minor)
{
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_CHR, .name = name, .mode = mode,
                                         .rdev_major = major, .rdev_minor = minor });
}

void rlt_tar_whiteout(rlt_tar *t, const char *path)
{
        char name[PATH_MAX];
        const char *slash = strrchr(path, '/');
        if (slash)
                snprintf(name, sizeof(name), "%.*s/.wh.%s", (int)(slash - path), path, slash + 1);
        else
                snprintf(name, sizeof(name), ".wh.%s", path);
        /* Whiteouts are empty regular files; their mode and owner mean nothing. */
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = name, .mode = 0600 });
}

void rlt_tar_opaque(rlt_tar *t, const char *dir)
{
        char name[PATH_MAX];
        if (!dir[0] || strcmp(dir, ".") == 0)
                snprintf(name, sizeof(name), ".wh..wh..opq");
        else
                snprintf(name, sizeof(name), "%s/.wh..wh..opq", dir);
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = name, .mode = 0600 });
}

/* --- raw ustar ------------------------------------------------------------------------- */

static void write_all(int fd, const void *buf, size_t n)
{
        const char *p = buf;
        while (n > 0) {
                ssize_t w = write(fd, p, n);
                cr_assert(w > 0, "write raw tar: %s", strerror(errno));
                p += w;
                n -= (size_t)w;
        }
}

/* POSIX ustar: fields at fixed offsets, numbers in octal, the checksum the byte sum of the
 * header with the checksum field read as eight spaces. */
void rlt_tar_raw_entry(int fd, const char *prefix, const char *name, char typeflag,
                       const char *linkname, const void *data, size_t size)
{
        unsigned char h[512] = { 0 };

        cr_assert(strlen(name) <= 100 && (!prefix || strlen(prefix) <= 155) &&
                          (!linkname || strlen(linkname) <= 100),
                  "raw ustar header: a field of '%s' is too long", name);
        memcpy(h, name, strlen(name));
        snprintf((char *)h + 100, 8, "%07o", typeflag == '5' ? 0755 : 0644);
        snprintf((char *)h + 108, 8, "%07o", 0);
        snprintf((char *)h + 116, 8, "%07o", 0);
        snprintf((char *)h + 124, 12, "%011zo", size);
        snprintf((char *)h + 136, 12, "%011o", RLT_TAR_MTIME);
        h[156] = (unsigned char)typeflag;
        if (linkname)
                memcpy(h + 157, linkname, strlen(linkname));
        memcpy(h + 257, "ustar", 6); /* magic "ustar\0", then version "00" */
        memcpy(h + 263, "00", 2);
        if (prefix)
                memcpy(h + 345, prefix, strlen(prefix));
        memset(h + 148, ' ', 8);
        unsigned sum = 0;
        for (size_t i = 0; i < sizeof(h); i++)
                sum += h[i];
        snprintf((char *)h + 148, 8, "%06o", sum); /* six digits, NUL, and the space stays */
        h[155] = ' ';
        write_all(fd, h, sizeof(h));
        if (size > 0) {
                static const char zeros[512];
                write_all(fd, data, size);
                if (size % 512)
                        write_all(fd, zeros, 512 - size % 512);
        }
}

void rlt_tar_raw_end(int fd)
{
        static const char zeros[1024];
        write_all(fd, zeros, sizeof(zeros));
}

void rlt_truncate(const char *path, uint64_t size)
{
        cr_assert(truncate(path, (off_t)size) == 0, "truncate %s to %lu: %s", path,
                  (unsigned long)size, strerror(errno));
}

void rlt_sha256_of_command(const char *cmd, char ret[RL_DIGEST_MAX])
{
        char script[PATH_MAX + 64], out[4096];
        snprintf(script, sizeof(script), "set -o pipefail; %s | sha256sum", cmd);
        char *argv[] = { "bash", "-c", script, NULL };
        int r = rlt_run(argv, out, sizeof(out));
        cr_assert_eq(r, 0, "`%s` failed (%d): %s", script, r, out);
        size_t n = strspn(out, "0123456789abcdef");
        cr_assert_eq(n, 64, "sha256sum printed '%s'", out);
        snprintf(ret, RL_DIGEST_MAX, "sha256:%.64s", out);
}

void rlt_sha256_file(const char *path, char ret[RL_DIGEST_MAX])
{
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof(cmd), "cat '%s'", path);
        rlt_sha256_of_command(cmd, ret);
}
