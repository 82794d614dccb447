/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fsinfo.c owns what we know about one filesystem: identity (libmount, by mount id) and the
 * capabilities the clone engine depends on (reflink, copy_file_range).
 */
#include <errno.h>
#include <fcntl.h>
#include <libmount.h>
#include <linux/fs.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <reflayer/fsinfo.h>

#include "fsinfo-priv.h"
#include "util.h"

struct rl_fsinfo {
        uint64_t dev;
        char *type;
        char *source;
        char *target;
        _Atomic int reflink;          /* rl_reflink */
        _Atomic bool no_copy_range;
        bool inlines_small_files;
};

static void mnt_free_tablep(struct libmnt_table **tb)
{
        mnt_unref_table(*tb);
}

/* btrfs inlines files up to max_inline bytes (default 2048) unless it is 0. */
static bool inlines_small_files(const char *type, const char *super_options)
{
        char *value = NULL;
        size_t size = 0;
        if (strcmp(type, "btrfs") != 0)
                return false;
        if (!super_options ||
            mnt_optstr_get_option(super_options, "max_inline", &value, &size) != 0)
                return true; /* not shown: the default */
        return !(size == 1 && value[0] == '0');
}

/* Fill type/source/target from /proc/self/mountinfo, matching the directory's mount id. */
static int describe(rl_fsinfo *fs, uint64_t mnt_id)
{
        _cleanup_(mnt_free_tablep) struct libmnt_table *tb = NULL;
        struct libmnt_iter *it = NULL;
        struct libmnt_fs *m = NULL;
        int r = -ENOENT;

        tb = mnt_new_table_from_file("/proc/self/mountinfo");
        if (!tb)
                return -errno ?: -ENOENT;
        it = mnt_new_iter(MNT_ITER_FORWARD);
        if (!it)
                return -ENOMEM;
        while (mnt_table_next_fs(tb, it, &m) == 0) {
                if ((uint64_t)mnt_fs_get_id(m) != mnt_id)
                        continue;
                const char *t = mnt_fs_get_fstype(m), *s = mnt_fs_get_source(m),
                           *p = mnt_fs_get_target(m);
                fs->type = strdup(t ? t : "unknown");
                fs->source = strdup(s ? s : "");
                fs->target = strdup(p ? p : "");
                r = fs->type && fs->source && fs->target ? 0 : -ENOMEM;
                if (r == 0)
                        fs->inlines_small_files =
                                inlines_small_files(fs->type, mnt_fs_get_fs_options(m));
                break;
        }
        mnt_free_iter(it);
        return r;
}

/*
 * Ask the filesystem itself: clone one block between two anonymous files. Nothing is left
 * behind (O_TMPFILE files vanish on close). A probe that cannot run says UNKNOWN, and the
 * engine then learns from the first real FICLONE instead.
 */
static rl_reflink probe_reflink(int dir_fd)
{
        _cleanup_close_ int a = -EBADF, b = -EBADF;
        static const char block[4096];

        a = openat(dir_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (a < 0)
                return RL_REFLINK_UNKNOWN;
        b = openat(dir_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (b < 0)
                return RL_REFLINK_UNKNOWN;
        if (write(a, block, sizeof(block)) != (ssize_t)sizeof(block))
                return RL_REFLINK_UNKNOWN;
        if (ioctl(b, FICLONE, a) == 0)
                return RL_REFLINK_YES;
        switch (errno) {
        case EOPNOTSUPP:
        case ENOTTY:
        case EINVAL:
        case ENOSYS:
        case EPERM:
                return RL_REFLINK_NO;
        default:
                return RL_REFLINK_UNKNOWN;
        }
}

RL_EXPORT int rl_fsinfo_open(int dir_fd, rl_fsinfo **ret, rl_error *err)
{
        struct statx stx;

        if (statx(dir_fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_MNT_ID,
                  &stx) < 0)
                return rl_error_set(err, -errno, "filesystem info: statx");
        if (!S_ISDIR(stx.stx_mode))
                return rl_error_set(err, -ENOTDIR, "filesystem info");

        rl_fsinfo *fs = calloc(1, sizeof(*fs));
        if (!fs)
                return rl_error_set(err, -ENOMEM, "filesystem info");
        fs->dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
        if (!(stx.stx_mask & STATX_MNT_ID) || describe(fs, stx.stx_mnt_id) < 0) {
                /* Not fatal: the name is for people; the probe below is what counts. */
                free(fs->type);
                free(fs->source);
                free(fs->target);
                fs->type = strdup("unknown");
                fs->source = strdup("");
                fs->target = strdup("");
                if (!fs->type || !fs->source || !fs->target) {
                        rl_fsinfo_free(fs);
                        return rl_error_set(err, -ENOMEM, "filesystem info");
                }
        }
        atomic_init(&fs->reflink, probe_reflink(dir_fd));
        atomic_init(&fs->no_copy_range, false);
        *ret = fs;
        return 0;
}

RL_EXPORT bool rl_fsinfo_inlines_small_files(const rl_fsinfo *fs)
{
        return fs->inlines_small_files;
}

RL_EXPORT rl_fsinfo *rl_fsinfo_free(rl_fsinfo *fs)
{
        if (!fs)
                return NULL;
        free(fs->type);
        free(fs->source);
        free(fs->target);
        free(fs);
        return NULL;
}

RL_EXPORT void rl_fsinfo_freep(rl_fsinfo **fs)
{
        rl_fsinfo_free(*fs);
}

RL_EXPORT const char *rl_fsinfo_type(const rl_fsinfo *fs)
{
        return fs->type;
}

RL_EXPORT const char *rl_fsinfo_source(const rl_fsinfo *fs)
{
        return fs->source;
}

RL_EXPORT const char *rl_fsinfo_target(const rl_fsinfo *fs)
{
        return fs->target;
}

RL_EXPORT uint64_t rl_fsinfo_dev(const rl_fsinfo *fs)
{
        return fs->dev;
}

RL_EXPORT rl_reflink rl_fsinfo_reflink(const rl_fsinfo *fs)
{
        return atomic_load_explicit(&((rl_fsinfo *)fs)->reflink, memory_order_relaxed);
}

RL_EXPORT bool rl_fsinfo_copy_range(const rl_fsinfo *fs)
{
        return !atomic_load_explicit(&((rl_fsinfo *)fs)->no_copy_range, memory_order_relaxed);
}

void rl_fsinfo_note_no_reflink(rl_fsinfo *fs)
{
        int expected = RL_REFLINK_UNKNOWN;
        /* A filesystem that has proved it can reflink keeps YES: one odd file (a btrfs
         * nodatacow file, say) must not turn reflinks off for every other file. */
        atomic_compare_exchange_strong(&fs->reflink, &expected, RL_REFLINK_NO);
}

void rl_fsinfo_note_no_copy_range(rl_fsinfo *fs)
{
        atomic_store_explicit(&fs->no_copy_range, true, memory_order_relaxed);
}
