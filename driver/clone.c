/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * clone.c owns copying ONE regular file: FICLONE, then copy_file_range, then read/write,
 * keeping holes, and remembering per destination filesystem what does not work there.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <reflayer/clone.h>

#include "fsinfo-priv.h"
#include "util.h"

#define COPY_CHUNK (1ULL << 30)      /* one copy_file_range call; the kernel caps it anyway */
#define RW_BUFFER_SIZE (256u * 1024) /* read/write fallback */

/* Errors that mean "this method cannot do this copy", as opposed to a failed copy. */
static bool method_unsupported(int e)
{
        return e == EOPNOTSUPP || e == ENOTTY || e == EINVAL || e == EXDEV || e == ENOSYS ||
               e == EPERM || e == EBADF;
}

/* Copy [off, end) with copy_file_range. Returns bytes done, or -errno. A short count with
 * no error means the kernel hit EOF early (the file shrank, or it is a pseudo-file that
 * reports a size it does not have): the caller finishes with read/write, which will see the
 * real EOF. */
static int64_t copy_range_segment(int src, int dst, uint64_t off, uint64_t end)
{
        loff_t in = (loff_t)off, out = (loff_t)off;

        while ((uint64_t)in < end) {
                size_t len = end - in > COPY_CHUNK ? COPY_CHUNK : (size_t)(end - in);
                ssize_t n = copy_file_range(src, &in, dst, &out, len, 0);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        /* After progress, let read/write take over: it meets a real error
                         * (ENOSPC, EIO) again and reports it with its own name. */
                        if ((uint64_t)in > off)
                                break;
                        return -errno;
                }
                if (n == 0)
                        break;
        }
        return (int64_t)((uint64_t)in - off);
}

static int64_t read_write_segment(int src, int dst, uint64_t off, uint64_t end, char *buf)
{
        uint64_t pos = off;

        while (pos < end) {
                size_t len = end - pos > RW_BUFFER_SIZE ? RW_BUFFER_SIZE : (size_t)(end - pos);
                ssize_t n = rl_pread_all(src, buf, len, pos);
                if (n < 0)
                        return n;
                if (n == 0)
                        break;
                int r = rl_pwrite_all(dst, buf, (size_t)n, pos);
                if (r < 0)
                        return r;
                pos += n;
        }
        return (int64_t)(pos - off);
}

/*
 * The fallback: visit the source's data segments (SEEK_DATA/SEEK_HOLE) and copy only those,
 * so holes stay holes, then set the size. copy_file_range is tried while it works; it is
 * given up (for this file, and for the filesystem on ENOSYS/EOPNOTSUPP) on the first refusal.
 */
static int copy_data(int src, int dst, rl_fsinfo *fs, uint64_t size, const char *what,
                     rl_clone_result *res, rl_error *err)
{
        _cleanup_free_ char *buf = NULL;
        bool use_range = !fs || rl_fsinfo_copy_range(fs);
        uint64_t pos = 0;

        res->method = use_range ? RL_CLONE_COPY_RANGE : RL_CLONE_READ_WRITE;
        while (pos < size) {
                off_t data = lseek(src, (off_t)pos, SEEK_DATA);
                if (data < 0) {
                        if (errno == ENXIO) /* no data after pos: the rest is a hole */
                                break;
                        if (errno != EINVAL && errno != EOPNOTSUPP)
                                return rl_error_set(err, -errno, "copy '%s': SEEK_DATA", what);
                        data = (off_t)pos; /* no hole support: all of it is data */
                }
                if ((uint64_t)data >= size)
                        break;
                off_t hole = lseek(src, data, SEEK_HOLE);
                uint64_t end = hole < 0 || (uint64_t)hole > size ? size : (uint64_t)hole;
                int64_t n = -EOPNOTSUPP;

                if (use_range) {
                        n = copy_range_segment(src, dst, data, end);
                        if (n < 0 && method_unsupported((int)-n)) {
                                /* Refused: switch engines for the rest of this file, and
                                 * for the filesystem when the refusal speaks for it. */
                                if (fs && (n == -ENOSYS || n == -EOPNOTSUPP))
                                        rl_fsinfo_note_no_copy_range(fs);
                                use_range = false;
                                res->method = RL_CLONE_READ_WRITE;
                                n = 0;
                        } else if (n < 0) {
                                return rl_error_set(err, (int)n, "copy '%s': copy_file_range",
                                                    what);
                        }
                        res->bytes_copied += n;
                        if ((uint64_t)data + n < end)
                                data += n; /* early EOF or a switch: read/write the rest */
                        else
                                data = end;
                }
                if ((uint64_t)data < end) {
                        if (!buf) {
                                buf = malloc(RW_BUFFER_SIZE);
                                if (!buf)
                                        return rl_error_set(err, -ENOMEM, "copy '%s'", what);
                        }
                        n = read_write_segment(src, dst, data, end, buf);
                        if (n < 0)
                                return rl_error_set(err, (int)n, "copy '%s': read/write", what);
                        res->bytes_copied += n;
                        if ((uint64_t)data + n < end)
                                /* Padding with zeros would pass off a torn copy as whole. */
                                return rl_error_set(err, -ESTALE,
                                                    "copy '%s': the file shrank while being "
                                                    "cloned",
                                                    what);
                }
                pos = end;
        }
        if (ftruncate(dst, (off_t)size) < 0)
                return rl_error_set(err, -errno, "copy '%s': ftruncate", what);
        return 0;
}

RL_EXPORT int rl_file_clone(int src_fd, int dst_fd, rl_fsinfo *dst_fs, uint64_t size,
                            const char *what, rl_clone_result *ret, rl_error *err)
{
        rl_clone_result res = { .method = RL_CLONE_EMPTY };

        if (size == 0) {
                *ret = res;
                return 0;
        }
        if (!dst_fs || rl_fsinfo_reflink(dst_fs) != RL_REFLINK_NO) {
                if (ioctl(dst_fd, FICLONE, src_fd) == 0) {
                        res.method = RL_CLONE_REFLINK;
                        res.bytes_reflinked = size;
                        *ret = res;
                        return 0;
                }
                int e = errno;
                if (!method_unsupported(e))
                        return rl_error_set(err, -e, "clone '%s': FICLONE", what);
                /* EXDEV says "other filesystem", not "cannot reflink", and EINVAL can be one
                 * file's quirk: copy this file, but leave the filesystem's flag alone. */
                if (dst_fs && (e == EOPNOTSUPP || e == ENOTTY || e == ENOSYS))
                        rl_fsinfo_note_no_reflink(dst_fs);
        }
        int r = copy_data(src_fd, dst_fd, dst_fs, size, what, &res, err);
        if (r < 0)
                return r;
        *ret = res;
        return 0;
}
