/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * clone.c and fsinfo.c: one file by each engine, holes kept, and what a filesystem can do.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/clone.h>
#include <reflayer/fsinfo.h>

#include "rltest.h"

TestSuite(clone, .init = rlt_init, .fini = rlt_fini, .timeout = 60);

/* A file with data at 0, a 1 MiB hole, data, and a hole at the end. */
static void make_sparse(const char *path)
{
        int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        char buf[65536];
        memset(buf, 'x', sizeof(buf));
        cr_assert(fd >= 0);
        cr_assert(pwrite(fd, buf, sizeof(buf), 0) == (ssize_t)sizeof(buf));
        cr_assert(pwrite(fd, buf, sizeof(buf), 1 << 20) == (ssize_t)sizeof(buf));
        cr_assert(ftruncate(fd, 3 << 20) == 0);
        close(fd);
}

static void clone_one(rlt_fs fs, rl_clone_method expect, rl_reflink expect_reflink)
{
        const char *mnt = rlt_mkfs(fs, 0, rlt_fs_name(fs));
        char src[PATH_MAX], dst[PATH_MAX];
        rl_fsinfo *info = NULL;
        rl_clone_result res;
        rl_error err = {};

        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        make_sparse(src);
        int dir = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_eq(rl_fsinfo_open(dir, &info, &err), 0, "%s", err.msg);
        cr_expect_str_eq(rl_fsinfo_type(info), rlt_fs_name(fs));
        cr_expect_eq(rl_fsinfo_reflink(info), expect_reflink, "%s: reflink %s",
                     rlt_fs_name(fs), rl_reflink_to_string(rl_fsinfo_reflink(info)));
        int s = open(src, O_RDONLY | O_CLOEXEC), d = open(dst, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        cr_assert(s >= 0 && d >= 0);
        int r = rl_file_clone(s, d, info, 3 << 20, "src", &res, &err);
        cr_assert_eq(r, 0, "rl_file_clone: %s", err.msg);
        cr_expect_eq(res.method, expect, "%s: method %s", rlt_fs_name(fs),
                     rl_clone_method_to_string(res.method));
        close(s);
        close(d);

        struct stat a, b;
        cr_assert(stat(src, &a) == 0 && stat(dst, &b) == 0);
        cr_expect_eq(b.st_size, 3 << 20);
        cr_expect_neq(a.st_ino, b.st_ino);
        /* The hole between the two 64 KiB runs is still a hole. */
        d = open(dst, O_RDONLY | O_CLOEXEC);
        off_t hole = lseek(d, 0, SEEK_HOLE);
        off_t data = lseek(d, hole, SEEK_DATA);
        close(d);
        cr_expect_lt(hole, 1 << 20, "%s: no hole after the first run (hole at %ld)",
                     rlt_fs_name(fs), (long)hole);
        cr_expect_geq(data, (1 << 20) - 65536, "%s: data at %ld", rlt_fs_name(fs), (long)data);
        cr_expect_leq(b.st_blocks, a.st_blocks + 256);
        char why[1024];
        (void)why;
        if (expect == RL_CLONE_REFLINK) {
                cr_expect(rlt_extents_shared(dst));
                cr_expect_eq(res.bytes_reflinked, 3 << 20);
                cr_expect_eq(res.bytes_copied, 0);
        } else {
                cr_expect_eq(res.bytes_copied, 2 * 65536, "copied %lu", res.bytes_copied);
        }
        rl_fsinfo_free(info);
        close(dir);
}

Test(clone, xfs)
{
        clone_one(RLT_XFS, RL_CLONE_REFLINK, RL_REFLINK_YES);
}

Test(clone, btrfs)
{
        clone_one(RLT_BTRFS, RL_CLONE_REFLINK, RL_REFLINK_YES);
}

Test(clone, ext4)
{
        clone_one(RLT_EXT4, RL_CLONE_COPY_RANGE, RL_REFLINK_NO);
}

Test(clone, tmpfs)
{
        clone_one(RLT_TMPFS, RL_CLONE_COPY_RANGE, RL_REFLINK_NO);
}

Test(clone, xfs_seccomp_read_write)
{
        rlt_block_reflink(true);
        clone_one(RLT_XFS, RL_CLONE_READ_WRITE, RL_REFLINK_NO);
}

/* Once copy_file_range is known missing, the filesystem remembers it: no re-probing. */
Test(clone, remembers_missing_copy_range)
{
        rlt_block_reflink(true);
        const char *mnt = rlt_mkfs(RLT_EXT4, 0, "ext4");
        char p[PATH_MAX];
        rl_fsinfo *info = NULL;
        rl_clone_result res;
        rl_error err = {};

        int dir = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_eq(rl_fsinfo_open(dir, &info, &err), 0);
        cr_assert(rl_fsinfo_copy_range(info));
        snprintf(p, sizeof(p), "%s/a", mnt);
        rlt_write_file(p, 5000, 1);
        int s = open(p, O_RDONLY | O_CLOEXEC);
        int d = openat(dir, "b", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        cr_assert_eq(rl_file_clone(s, d, info, 5000, "a", &res, &err), 0, "%s", err.msg);
        cr_expect_eq(res.method, RL_CLONE_READ_WRITE);
        cr_expect(!rl_fsinfo_copy_range(info), "copy_file_range ENOSYS was not remembered");
        close(s);
        close(d);
        rl_fsinfo_free(info);
        close(dir);
}

Test(clone, empty_file)
{
        const char *mnt = rlt_mkfs(RLT_TMPFS, 0, "t");
        rl_clone_result res;
        rl_error err = {};
        int dir = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int s = openat(dir, "a", O_CREAT | O_RDWR | O_CLOEXEC, 0644);
        int d = openat(dir, "b", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        cr_assert_eq(rl_file_clone(s, d, NULL, 0, "a", &res, &err), 0);
        cr_expect_eq(res.method, RL_CLONE_EMPTY);
        close(s);
        close(d);
        close(dir);
}

Test(clone, error_names_the_file)
{
        const char *mnt = rlt_mkfs(RLT_TMPFS, 0, "t");
        rl_clone_result res;
        rl_error err = {};
        int dir = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int s = openat(dir, "a", O_CREAT | O_RDWR | O_CLOEXEC, 0644);
        cr_assert(write(s, "data", 4) == 4);
        /* A destination not open for writing. */
        int d = openat(dir, "b", O_CREAT | O_RDONLY | O_CLOEXEC, 0644);
        int r = rl_file_clone(s, d, NULL, 4, "dir/a", &res, &err);
        cr_assert_lt(r, 0);
        cr_expect(strstr(err.msg, "'dir/a'"), "%s", err.msg);
        close(s);
        close(d);
        close(dir);
}

static bool inlines(const char *mnt)
{
        rl_fsinfo *fs = NULL;
        rl_error err = {};
        int fd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", mnt, strerror(errno));
        cr_assert_eq(rl_fsinfo_open(fd, &fs, &err), 0, "%s", err.msg);
        close(fd);
        bool r = rl_fsinfo_inlines_small_files(fs);
        rl_fsinfo_free(fs);
        return r;
}

/* btrfs keeps small files in its metadata, unshareable, unless mounted max_inline=0. */
Test(clone, btrfs_max_inline_is_read_from_the_mount)
{
        const char *btrfs = rlt_mkfs(RLT_BTRFS, 0, "btrfs");
        cr_expect(inlines(btrfs), "btrfs with its default max_inline (2048)");
        char *argv[] = { "mount", "-o", "remount,max_inline=0", (char *)btrfs, NULL };
        char out[4096];
        cr_assert_eq(rlt_run(argv, out, sizeof(out)), 0, "remount: %s", out);
        cr_expect(!inlines(btrfs), "btrfs mounted with max_inline=0");
        cr_expect(!inlines(rlt_mkfs(RLT_XFS, 0, "xfs")), "XFS inlines nothing");
}
