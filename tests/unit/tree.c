/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * tree.c: replicating whole trees on real filesystems, every engine path on every filesystem,
 * id shifting, and every error leaving nothing behind.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/capability.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/tree.h>

#include "rltest.h"

TestSuite(tree, .init = rlt_init, .fini = rlt_fini, .timeout = 120);

static int open_dir(const char *path)
{
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
        return fd;
}

/* Clone src_dir/name into dst_dir/dst_name; returns rl_tree_clone's result. */
static int clone_path(const char *src, const char *dst_dir, const char *dst_name,
                      const rl_tree_options *o, rl_tree_stats *st, rl_error *err)
{
        int s = open_dir(src), d = open_dir(dst_dir);
        int r = rl_tree_clone(s, d, dst_name, o, st, err);
        close(s);
        close(d);
        return r;
}

static void assert_same(const char *a, const char *b, const rl_idmap *u, const rl_idmap *g)
{
        char why[4096];
        cr_assert(rlt_tree_equal(a, b, u, g, why, sizeof(why)), "%s vs %s: %s", a, b, why);
}

static uint64_t blocks_of(const char *path)
{
        struct stat st;
        cr_assert(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
        return (uint64_t)st.st_blocks;
}

/*
 * The rich tree on one filesystem, cloned with `jobs` workers; the expected engine is
 * `method`. Checks the tree attribute by attribute, the engine's totals, that reflinked data
 * is really shared (FIEMAP), that holes stay holes, and that writing the copy leaves the
 * source alone.
 */
static void clone_rich(rlt_fs fs, unsigned jobs, rl_clone_method method)
{
        const char *mnt = rlt_mkfs(fs, 0, rlt_fs_name(fs));
        char src[PATH_MAX], dst[PATH_MAX], p[PATH_MAX], q[PATH_MAX];
        rl_tree_options o = { .jobs = jobs };
        rl_tree_stats st;
        rl_error err = {};

        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        int r = clone_path(src, mnt, "dst", &o, &st, &err);
        cr_assert_eq(r, 0, "rl_tree_clone on %s: %s", rlt_fs_name(fs), err.msg);
        assert_same(src, dst, NULL, NULL);

        cr_expect_eq(st.dirs, 12, "dirs %lu", st.dirs);
        cr_expect_eq(st.regular, 17, "regular %lu", st.regular);
        cr_expect_eq(st.hardlinks, 2, "hardlinks %lu", st.hardlinks);
        cr_expect_eq(st.symlinks, 3);
        cr_expect_eq(st.fifos, 1);
        cr_expect_eq(st.sockets, 1);
        cr_expect_eq(st.chardevs, 1);
        cr_expect_eq(st.blockdevs, 1);
        cr_expect_eq(st.entries, 12 + 17 + 2 + 3 + 4);
        cr_expect_eq(st.methods[RL_CLONE_EMPTY], 1);
        cr_expect_eq(st.methods[method], 16, "%s: %lu files by %s", rlt_fs_name(fs),
                     st.methods[method], rl_clone_method_to_string(method));
        if (method == RL_CLONE_REFLINK) {
                cr_expect_eq(st.bytes_copied, 0);
                cr_expect_eq(st.bytes_reflinked, st.bytes);
                snprintf(p, sizeof(p), "%s/data/big", dst);
                cr_assert(rlt_extents_shared(p), "%s: data/big does not share its extents",
                          rlt_fs_name(fs));
                snprintf(q, sizeof(q), "%s/data/big", src);
                cr_assert(rlt_extents_shared(q));
        } else {
                cr_expect_eq(st.bytes_reflinked, 0);
                /* Only the data segments move: the sparse file's 4.9 MiB of holes do not. */
                cr_expect_lt(st.bytes_copied, st.bytes - (4u << 20));
        }
        /* Holes stay holes, whatever the engine. */
        snprintf(p, sizeof(p), "%s/data/sparse", dst);
        snprintf(q, sizeof(q), "%s/data/sparse", src);
        cr_expect_leq(blocks_of(p), blocks_of(q) + 256, "%s: sparse copy has %lu blocks, source %lu",
                      rlt_fs_name(fs), blocks_of(p), blocks_of(q));
        cr_expect_lt(blocks_of(p), (5u << 20) / 512 / 2);

        /* Copy-on-write: the copy is its own file. */
        snprintf(p, sizeof(p), "%s/etc/passwd", dst);
        snprintf(q, sizeof(q), "%s/etc/passwd", src);
        FILE *f = fopen(p, "r+");
        cr_assert(f);
        fputs("changed", f);
        fclose(f);
        char a[16] = {}, b[16] = {};
        f = fopen(q, "r");
        cr_assert(f);
        cr_assert(fread(a, 1, 7, f) == 7);
        fclose(f);
        f = fopen(p, "r");
        cr_assert(fread(b, 1, 7, f) == 7);
        fclose(f);
        cr_assert_str_eq(b, "changed");
        cr_assert_str_neq(a, "changed", "writing the copy changed the source");
        cr_assert(!rlt_dir_has_prefix(mnt, ".rl-clone-"), "a temporary was left behind");
}

Test(tree, xfs_reflinks)
{
        clone_rich(RLT_XFS, 0, RL_CLONE_REFLINK);
}

Test(tree, btrfs_reflinks)
{
        clone_rich(RLT_BTRFS, 0, RL_CLONE_REFLINK);
}

Test(tree, ext4_falls_back_to_copy_range)
{
        clone_rich(RLT_EXT4, 0, RL_CLONE_COPY_RANGE);
}

Test(tree, tmpfs_falls_back_to_copy_range)
{
        clone_rich(RLT_TMPFS, 0, RL_CLONE_COPY_RANGE);
}

/* FICLONE refused by a seccomp filter: the reflink filesystems take the fallback too. */
Test(tree, xfs_without_ficlone)
{
        rlt_block_reflink(false);
        clone_rich(RLT_XFS, 0, RL_CLONE_COPY_RANGE);
}

Test(tree, btrfs_without_ficlone)
{
        rlt_block_reflink(false);
        clone_rich(RLT_BTRFS, 0, RL_CLONE_COPY_RANGE);
}

/* And with copy_file_range refused as well: the read/write loop, on every filesystem. */
Test(tree, xfs_read_write)
{
        rlt_block_reflink(true);
        clone_rich(RLT_XFS, 1, RL_CLONE_READ_WRITE);
}

Test(tree, btrfs_read_write)
{
        rlt_block_reflink(true);
        clone_rich(RLT_BTRFS, 2, RL_CLONE_READ_WRITE);
}

Test(tree, ext4_read_write)
{
        rlt_block_reflink(true);
        clone_rich(RLT_EXT4, 3, RL_CLONE_READ_WRITE);
}

Test(tree, tmpfs_read_write)
{
        rlt_block_reflink(true);
        clone_rich(RLT_TMPFS, 4, RL_CLONE_READ_WRITE);
}

Test(tree, single_worker)
{
        clone_rich(RLT_XFS, 1, RL_CLONE_REFLINK);
}

/* The result must not depend on the number of workers. */
Test(tree, result_independent_of_jobs)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], d1[PATH_MAX], d8[PATH_MAX];
        rl_error err = {};

        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(d1, sizeof(d1), "%s/one", mnt);
        snprintf(d8, sizeof(d8), "%s/eight", mnt);
        cr_assert_eq(clone_path(src, mnt, "one", &(rl_tree_options){ .jobs = 1 }, NULL, &err), 0,
                     "%s", err.msg);
        cr_assert_eq(clone_path(src, mnt, "eight", &(rl_tree_options){ .jobs = 8 }, NULL, &err),
                     0, "%s", err.msg);
        assert_same(src, d1, NULL, NULL);
        assert_same(src, d8, NULL, NULL);
        assert_same(d1, d8, NULL, NULL);
}

Test(tree, cross_filesystem)
{
        char src[PATH_MAX], dst[PATH_MAX];
        const char *ext4 = strdup(rlt_mkfs(RLT_EXT4, 0, "ext4"));
        const char *xfs = rlt_mkfs(RLT_XFS, 0, "xfs");
        rl_tree_stats st;
        rl_error err = {};

        rlt_make_rich_tree(ext4, "src");
        snprintf(src, sizeof(src), "%s/src", ext4);
        snprintf(dst, sizeof(dst), "%s/dst", xfs);
        cr_assert_eq(clone_path(src, xfs, "dst", NULL, &st, &err), 0, "%s", err.msg);
        assert_same(src, dst, NULL, NULL);
        cr_expect_eq(st.methods[RL_CLONE_REFLINK], 0);
        cr_expect_eq(st.methods[RL_CLONE_COPY_RANGE] + st.methods[RL_CLONE_READ_WRITE], 16);
        free((void *)ext4);
}

Test(tree, shifts_ids_without_copying)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], dst[PATH_MAX], p[PATH_MAX];
        rl_idmap *u = NULL, *g = NULL;
        rl_tree_stats st;
        rl_error err = {};

        cr_assert_eq(rl_idmap_new(&u, &err), 0);
        cr_assert_eq(rl_idmap_new(&g, &err), 0);
        cr_assert_eq(rl_idmap_parse(u, "0:100000:65536", &err), 0, "%s", err.msg);
        cr_assert_eq(rl_idmap_parse(g, "0:200000:1000,1000:300000:65536", &err), 0, "%s", err.msg);
        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        rl_tree_options o = { .uid_map = u, .gid_map = g };
        cr_assert_eq(clone_path(src, mnt, "dst", &o, &st, &err), 0, "%s", err.msg);
        /* Owners, ACL entries and the capability's root id all shifted; data not copied. */
        assert_same(src, dst, u, g);
        cr_expect_eq(st.bytes_copied, 0);
        snprintf(p, sizeof(p), "%s/data/big", dst);
        cr_assert(rlt_extents_shared(p));
        struct stat sb;
        snprintf(p, sizeof(p), "%s/home/user", dst);
        cr_assert(stat(p, &sb) == 0);
        cr_expect_eq(sb.st_uid, 101000);
        cr_expect_eq(sb.st_gid, 300000);
        snprintf(p, sizeof(p), "%s/bin/su", dst);
        cr_assert(stat(p, &sb) == 0);
        cr_expect_eq(sb.st_mode & 07777, 04755, "setuid lost in the shift: %o", sb.st_mode);
        rl_idmap_free(u);
        rl_idmap_free(g);
}

Test(tree, unmapped_id_is_an_error_unless_kept)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], dst[PATH_MAX];
        rl_idmap *u = NULL;
        rl_error err = {};

        cr_assert_eq(rl_idmap_new(&u, &err), 0);
        cr_assert_eq(rl_idmap_parse(u, "0:100000:1000", &err), 0);
        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        rl_tree_options o = { .uid_map = u };
        int r = clone_path(src, mnt, "dst", &o, NULL, &err);
        cr_assert_eq(r, -ERANGE, "expected ERANGE, got %d (%s)", r, err.msg);
        cr_expect(strstr(err.msg, "home/user") && strstr(err.msg, "uid 1000"), "message: %s",
                  err.msg);
        cr_assert(access(dst, F_OK) < 0 && errno == ENOENT, "dst exists after a failure");
        cr_assert(!rlt_dir_has_prefix(mnt, ".rl-clone-"), "temporary left behind");

        o.flags = RL_TREE_KEEP_UNMAPPED;
        cr_assert_eq(clone_path(src, mnt, "dst", &o, NULL, &err), 0, "%s", err.msg);
        struct stat sb;
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/home/user", dst);
        cr_assert(stat(p, &sb) == 0);
        cr_expect_eq(sb.st_uid, 1000, "kept id: %u", sb.st_uid);
        snprintf(p, sizeof(p), "%s/etc", dst);
        cr_assert(stat(p, &sb) == 0);
        cr_expect_eq(sb.st_uid, 100000);
        rl_idmap_free(u);
}

Test(tree, refuses_existing_destination)
{
        const char *mnt = rlt_mkfs(RLT_TMPFS, 0, "t");
        char src[PATH_MAX], dst[PATH_MAX], p[PATH_MAX];
        rl_error err = {};

        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        cr_assert(mkdir(dst, 0700) == 0);
        snprintf(p, sizeof(p), "%s/keep", dst);
        rlt_write_file(p, 10, 1);
        int r = clone_path(src, mnt, "dst", NULL, NULL, &err);
        cr_assert_eq(r, -EEXIST, "%d %s", r, err.msg);
        cr_expect(strstr(err.msg, "'dst'") && strstr(err.msg, "File exists"), "%s", err.msg);
        cr_assert(access(p, F_OK) == 0, "the existing destination was touched");
        /* A symlink counts as existing too, and is not followed. */
        snprintf(p, sizeof(p), "%s/lnk", mnt);
        cr_assert(symlink("nowhere", p) == 0);
        cr_assert_eq(clone_path(src, mnt, "lnk", NULL, NULL, &err), -EEXIST);
}

Test(tree, refuses_destination_inside_source)
{
        const char *mnt = rlt_mkfs(RLT_TMPFS, 0, "t");
        char src[PATH_MAX], inner[PATH_MAX];
        rl_error err = {};

        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(inner, sizeof(inner), "%s/src/data", mnt);
        int r = clone_path(src, inner, "copy", NULL, NULL, &err);
        cr_assert_eq(r, -EINVAL, "%d %s", r, err.msg);
        cr_expect(strstr(err.msg, "inside the source"), "%s", err.msg);
        r = clone_path(src, src, "copy", NULL, NULL, &err);
        cr_assert_eq(r, -EINVAL, "%d %s", r, err.msg);
        cr_assert(!rlt_dir_has_prefix(inner, ".rl-clone-"));
        cr_assert(!rlt_dir_has_prefix(inner, "copy"));
}

Test(tree, refuses_bad_names)
{
        const char *mnt = rlt_mkfs(RLT_TMPFS, 0, "t");
        rl_error err = {};
        int s = open_dir(mnt), d = open_dir(mnt);
        cr_expect_eq(rl_tree_clone(s, d, "", NULL, NULL, &err), -EINVAL);
        cr_expect_eq(rl_tree_clone(s, d, "a/b", NULL, NULL, &err), -EINVAL);
        cr_expect_eq(rl_tree_clone(s, d, "..", NULL, NULL, &err), -EINVAL);
        cr_expect(strstr(err.msg, "not a valid name"), "%s", err.msg);
        close(s);
        close(d);
}

Test(tree, enospc_leaves_nothing)
{
        const char *big = strdup(rlt_mkfs(RLT_TMPFS, 0, "big"));
        const char *small = rlt_mkfs(RLT_TMPFS, 2, "small");
        char src[PATH_MAX], dst[PATH_MAX];
        rl_error err = {};

        rlt_make_rich_tree(big, "src");
        snprintf(src, sizeof(src), "%s/src", big);
        snprintf(dst, sizeof(dst), "%s/dst", small);
        int r = clone_path(src, small, "dst", NULL, NULL, &err);
        cr_assert_eq(r, -ENOSPC, "expected ENOSPC, got %d: %s", r, err.msg);
        cr_expect(strstr(err.msg, "No space left on device") && strchr(err.msg, '\'') &&
                          strchr(err.msg, '/'),
                  "the message names no path: %s", err.msg);
        cr_assert(access(dst, F_OK) < 0 && errno == ENOENT);
        cr_assert(!rlt_dir_has_prefix(small, ".rl-clone-"), "temporary left behind");
        free((void *)big);
}

Test(tree, unreadable_file_leaves_nothing)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], p[PATH_MAX], dst[PATH_MAX];
        rl_error err = {};

        /* A tree root can read but for one file (the rich tree has private directories,
         * which root without DAC override cannot read either). */
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        cr_assert(mkdir(src, 0755) == 0);
        snprintf(p, sizeof(p), "%s/etc", src);
        cr_assert(mkdir(p, 0755) == 0);
        for (int i = 0; i < 50; i++) {
                snprintf(p, sizeof(p), "%s/etc/file%d", src, i);
                rlt_write_file(p, 1000, (unsigned)i);
        }
        snprintf(p, sizeof(p), "%s/etc/secret", src);
        rlt_write_file(p, 100, 3);
        cr_assert(chown(p, 4242, 4242) == 0 && chmod(p, 0) == 0);
        /* Root without the capabilities that override file permissions. */
        cap_t caps = cap_get_proc();
        cap_value_t drop[] = { CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER };
        cr_assert(cap_set_flag(caps, CAP_EFFECTIVE, 3, drop, CAP_CLEAR) == 0);
        cr_assert(cap_set_proc(caps) == 0);
        cap_free(caps);

        int r = clone_path(src, mnt, "dst", &(rl_tree_options){ .jobs = 2 }, NULL, &err);
        cr_assert_eq(r, -EACCES, "expected EACCES, got %d: %s", r, err.msg);
        cr_expect(strstr(err.msg, "etc/secret") && strstr(err.msg, "Permission denied"), "%s",
                  err.msg);
        cr_assert(access(dst, F_OK) < 0 && errno == ENOENT);
        cr_assert(!rlt_dir_has_prefix(mnt, ".rl-clone-"), "temporary left behind");
}

Test(tree, missing_source_is_an_error)
{
        const char *mnt = rlt_mkfs(RLT_TMPFS, 0, "t");
        int d = open_dir(mnt);
        rl_error err = {};
        /* A file is not a tree. */
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/file", mnt);
        rlt_write_file(p, 1, 1);
        int f = open(p, O_RDONLY | O_CLOEXEC);
        cr_assert_eq(rl_tree_clone(f, d, "x", NULL, NULL, &err), -ENOTDIR, "%s", err.msg);
        close(f);
        close(d);
}

Test(tree, very_deep_tree)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], dst[PATH_MAX];
        const unsigned depth = 1500; /* paths of 15,000 bytes: far past PATH_MAX */
        rl_tree_stats st;
        rl_error err = {};

        snprintf(src, sizeof(src), "%s/src", mnt);
        cr_assert(mkdir(src, 0755) == 0);
        int fd = open_dir(src);
        for (unsigned i = 0; i < depth; i++) {
                cr_assert(mkdirat(fd, "ten-chars", 0755) == 0);
                int sub = openat(fd, "ten-chars", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                cr_assert(sub >= 0);
                if (i % 100 == 0) {
                        int f = openat(sub, "file", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
                        cr_assert(f >= 0 && write(f, "deep", 4) == 4);
                        close(f);
                        cr_assert(linkat(sub, "file", sub, "link", 0) == 0);
                }
                close(fd);
                fd = sub;
        }
        close(fd);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        cr_assert_eq(clone_path(src, mnt, "dst", NULL, &st, &err), 0, "%s", err.msg);
        cr_expect_eq(st.dirs, depth + 1);
        cr_expect_eq(st.regular, 15);
        cr_expect_eq(st.hardlinks, 15);
        assert_same(src, dst, NULL, NULL);
}

Test(tree, wide_directory_in_parallel)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], dst[PATH_MAX], p[PATH_MAX];
        rl_tree_stats st;
        rl_error err = {};

        snprintf(src, sizeof(src), "%s/src", mnt);
        cr_assert(mkdir(src, 0755) == 0);
        for (int i = 0; i < 3000; i++) {
                snprintf(p, sizeof(p), "%s/f%04d", src, i);
                rlt_write_file(p, (uint64_t)(i % 7) * 1000, (unsigned)i);
                if (i % 10 == 0) {
                        char l[PATH_MAX];
                        snprintf(l, sizeof(l), "%s/l%04d", src, i);
                        cr_assert(link(p, l) == 0);
                }
        }
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        cr_assert_eq(clone_path(src, mnt, "dst", &(rl_tree_options){ .jobs = 4 }, &st, &err), 0,
                     "%s", err.msg);
        cr_expect_eq(st.regular + st.hardlinks, 3300);
        cr_expect_eq(st.hardlinks, 300);
        assert_same(src, dst, NULL, NULL);
}

static unsigned progress_calls;
static uint64_t progress_last;
static unsigned progress_cancel_after; /* calls; 0: never */
static atomic_bool progress_cancel;

/* Entries only grow; progress_cancel is set at call number progress_cancel_after. */
static void on_progress(const rl_tree_progress *p, void *userdata)
{
        cr_assert_eq(userdata, &progress_calls);
        cr_assert_geq(p->entries, progress_last);
        progress_last = p->entries;
        progress_calls++;
        if (progress_cancel_after && progress_calls >= progress_cancel_after)
                atomic_store(&progress_cancel, true);
}

Test(tree, progress_is_reported)
{
        const char *mnt = rlt_mkfs(RLT_TMPFS, 0, "t");
        char src[PATH_MAX], p[PATH_MAX];
        rl_error err = {};

        snprintf(src, sizeof(src), "%s/src", mnt);
        cr_assert(mkdir(src, 0755) == 0);
        for (int i = 0; i < 2000; i++) {
                snprintf(p, sizeof(p), "%s/f%d", src, i);
                rlt_write_file(p, 10, (unsigned)i);
        }
        rl_tree_options o = { .jobs = 1, .progress = on_progress,
                              .progress_userdata = &progress_calls, .progress_interval_ns = 1 };
        cr_assert_eq(clone_path(src, mnt, "dst", &o, NULL, &err), 0, "%s", err.msg);
        cr_expect_geq(progress_calls, 10, "progress called %u times", progress_calls);
        cr_expect_leq(progress_last, 2000);
}

Test(tree, remove_tree)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX];
        rl_error err = {};

        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        int d = open_dir(mnt);
        cr_assert_eq(rl_tree_remove(d, "src", 0, NULL, &err), 0, "%s", err.msg);
        cr_assert(access(src, F_OK) < 0 && errno == ENOENT);
        cr_assert_eq(rl_tree_remove(d, "src", 0, NULL, &err), -ENOENT);
        close(d);
}

Test(tree, remove_does_not_cross_mounts)
{
        const char *mnt = strdup(rlt_mkfs(RLT_TMPFS, 0, "t"));
        char inner[PATH_MAX], p[PATH_MAX];
        rl_error err = {};

        snprintf(inner, sizeof(inner), "%s/tree/mnt", mnt);
        snprintf(p, sizeof(p), "%s/tree", mnt);
        cr_assert(mkdir(p, 0755) == 0 && mkdir(inner, 0755) == 0);
        const char *other = rlt_mkfs(RLT_TMPFS, 0, "other");
        snprintf(p, sizeof(p), "%s/precious", other);
        rlt_write_file(p, 10, 1);
        cr_assert(mount(other, inner, NULL, MS_BIND, NULL) == 0, "bind: %s", strerror(errno));
        int d = open_dir(mnt);
        int r = rl_tree_remove(d, "tree", 0, NULL, &err);
        cr_assert_eq(r, -EBUSY, "%d %s", r, err.msg);
        cr_expect(strstr(err.msg, "mounted"), "%s", err.msg);
        /* Without an rl_error the errno still comes through. */
        cr_expect_eq(rl_tree_remove(d, "tree", 1, NULL, NULL), -EBUSY);
        cr_assert(access(p, F_OK) == 0, "removal went through a mount point");
        umount2(inner, MNT_DETACH);
        close(d);
        free((void *)mnt);
}

/* Files are created with their final mode when the umask allows: a strict umask must not
 * leak into the copy. */
Test(tree, umask_does_not_leak)
{
        umask(0077);
        clone_rich(RLT_XFS, 2, RL_CLONE_REFLINK);
        umask(0);
        clone_rich(RLT_BTRFS, 2, RL_CLONE_REFLINK);
}

/* A setgid destination directory (or a grpid mount) must not hand its group down. */
Test(tree, setgid_destination_parent_hands_nothing_down)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], out[PATH_MAX], dst[PATH_MAX];
        rl_error err = {};

        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(out, sizeof(out), "%s/out", mnt);
        cr_assert(mkdir(out, 0755) == 0 && chown(out, 0, 4242) == 0 && chmod(out, 02775) == 0);
        cr_assert_eq(clone_path(src, out, "dst", NULL, NULL, &err), 0, "%s", err.msg);
        snprintf(dst, sizeof(dst), "%s/dst", out);
        assert_same(src, dst, NULL, NULL);
}

/* A cancelled clone stops with ECANCELED and leaves nothing. */
Test(tree, cancel_leaves_nothing)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], dst[PATH_MAX];
        atomic_bool cancel = true;
        rl_error err = {};

        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        int r = clone_path(src, mnt, "dst", &(rl_tree_options){ .cancel = &cancel }, NULL, &err);
        cr_assert_eq(r, -ECANCELED, "%d %s", r, err.msg);
        cr_expect(strstr(err.msg, "interrupted"), "%s", err.msg);
        cr_assert(access(dst, F_OK) < 0 && errno == ENOENT);
        cr_assert(!rlt_dir_has_prefix(mnt, ".rl-clone-"), "temporary left behind");
}

/* --- cost per entry ---------------------------------------------------------------------- */

typedef struct syscall_counts {
        unsigned long total, statx, fchmod;
} syscall_counts;

/* Count the system calls of `reflayer clone --jobs 1 src dst` under `strace -f -c`. */
static syscall_counts traced_clone(const char *src, const char *dst)
{
        const char *cli = getenv("RL_CLI");
        cr_assert(cli && access(cli, X_OK) == 0,
                  "RL_CLI must name the built reflayer binary (tests/run-unit sets it)");
        char log[PATH_MAX], out[4096], line[512];
        snprintf(log, sizeof(log), "%s/strace.log", rlt_scratch());
        char *argv[] = { "strace", "-f", "-c", "-o", log, (char *)cli, "clone", "--no-progress",
                         "--jobs", "1", (char *)src, (char *)dst, NULL };
        /* LeakSanitizer cannot work under ptrace: a SAN=1 CLI must not try (this process is
         * a fork of its own per test, so the change ends with the test). */
        char asan[1024];
        const char *old = getenv("ASAN_OPTIONS");
        snprintf(asan, sizeof(asan), "%s%sdetect_leaks=0", old ? old : "", old ? ":" : "");
        cr_assert(setenv("ASAN_OPTIONS", asan, 1) == 0);
        int r = rlt_run(argv, out, sizeof(out));
        cr_assert(r != -ENOENT, "strace not found: apt-get install strace (make deps does it)");
        cr_assert_eq(r, 0, "strace %s clone %s %s: exit %d: %s", cli, src, dst, r, out);

        FILE *f = fopen(log, "re");
        cr_assert(f, "open %s: %s", log, strerror(errno));
        syscall_counts c = {};
        while (fgets(line, sizeof(line), f)) {
                /* "% time  seconds  usecs/call  calls  [errors]  syscall" */
                double pct, secs;
                unsigned long usecs, calls;
                char *last = strrchr(line, ' ');
                if (sscanf(line, "%lf %lf %lu %lu", &pct, &secs, &usecs, &calls) != 4 || !last)
                        continue;
                last[strcspn(last, "\n")] = '\0';
                if (strcmp(last + 1, "total") == 0)
                        c.total = calls;
                else if (strcmp(last + 1, "statx") == 0)
                        c.statx = calls;
                else if (strcmp(last + 1, "fchmod") == 0)
                        c.fchmod = calls;
        }
        fclose(f);
        cr_assert_gt(c.total, 0, "no total in the strace summary %s", log);
        return c;
}

/* Make dir/name holding n entries of one kind ('f' files of 10 bytes, 'd' empty directories,
 * 'l' symlinks), or none for n = 0. */
static void make_flat_tree(const char *dir, const char *name, char kind, unsigned n)
{
        char root[PATH_MAX], p[PATH_MAX];
        snprintf(root, sizeof(root), "%s/%s", dir, name);
        cr_assert(mkdir(root, 0755) == 0, "mkdir %s: %s", root, strerror(errno));
        for (unsigned i = 0; i < n; i++) {
                snprintf(p, sizeof(p), "%s/e%u", root, i);
                if (kind == 'f')
                        rlt_write_file(p, 10, i);
                else if (kind == 'd')
                        cr_assert(mkdir(p, 0755) == 0, "mkdir %s: %s", p, strerror(errno));
                else
                        cr_assert(symlink("target", p) == 0, "symlink %s: %s", p,
                                  strerror(errno));
        }
}

/*
 * The syscall budget per entry, measured as the difference between a tree of n entries of a
 * kind and an empty one (what the CLI costs once drops out). With the usual umask, a 0644
 * file and a 0755 directory get their final mode at creation:
 *   regular file: openat, statx (of the open file), openat (create), ioctl FICLONE,
 *                 flistxattr, utimensat, close x2                                       = 8
 *   directory:    openat, statx, mkdirat, openat, getdents64 x2, flistxattr, utimensat,
 *                 close x2                                                                = 10
 *   symlink:      statx, readlinkat, symlinkat, llistxattr, utimensat                    = 5
 * Exactly one statx per entry, and no fchmod at all.
 */
Test(tree, syscalls_per_entry)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        const unsigned n = 200;
        const struct {
                char kind;
                const char *what;
                unsigned long budget;
        } kinds[] = {
                { 'f', "regular files", 8 },
                { 'd', "directories", 10 },
                { 'l', "symlinks", 5 },
        };
        char src[PATH_MAX], dst[PATH_MAX], why[4096];

        umask(022);
        make_flat_tree(mnt, "empty", 'f', 0);
        snprintf(src, sizeof(src), "%s/empty", mnt);
        snprintf(dst, sizeof(dst), "%s/empty-copy", mnt);
        syscall_counts base = traced_clone(src, dst);

        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
                char name[32];
                snprintf(name, sizeof(name), "flat-%c", kinds[k].kind);
                make_flat_tree(mnt, name, kinds[k].kind, n);
                snprintf(src, sizeof(src), "%s/%s", mnt, name);
                snprintf(dst, sizeof(dst), "%s/%s-copy", mnt, name);
                syscall_counts c = traced_clone(src, dst);
                /* Without atimes: the comparison's own reads of the new source directories
                 * move theirs (relatime, atime not after ctime). */
                cr_assert(rlt_tree_equal_flags(src, dst, NULL, NULL, RLT_CMP_NO_ATIME, why,
                                               sizeof(why)),
                          "%s", why);

                cr_assert_geq(c.total, base.total, "%s: fewer calls than for an empty tree",
                              name);
                /* A few calls of slack for the allocator growing its heap once. */
                cr_expect_leq(c.total - base.total, kinds[k].budget * n + 4,
                              "%u %s cost %.2f syscalls each, the budget is %lu", n,
                              kinds[k].what, (double)(c.total - base.total) / n,
                              kinds[k].budget);
                cr_expect_eq(c.statx - base.statx, n, "%u %s: %lu statx calls, want one each",
                             n, kinds[k].what, c.statx - base.statx);
                cr_expect_eq(c.fchmod, base.fchmod, "%u %s: %lu fchmod calls, want none", n,
                             kinds[k].what, c.fchmod - base.fchmod);
        }
}

static bool is_subvolume(const char *path)
{
        struct stat st;
        cr_assert(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
        return st.st_ino == 256; /* every btrfs subvolume's root (BTRFS_FIRST_FREE_OBJECTID) */
}

/* How many subvolumes the btrfs at mnt holds (its own top level aside). */
static unsigned subvolumes(const char *mnt)
{
        char out[65536];
        char *argv[] = { "btrfs", "subvolume", "list", (char *)mnt, NULL };
        rlt_need_tool("btrfs", "btrfs-progs");
        cr_assert_eq(rlt_run(argv, out, sizeof(out)), 0, "btrfs subvolume list: %s", out);
        unsigned n = 0;
        for (const char *p = out; (p = strstr(p, "ID ")); p++)
                n++;
        return n;
}

/* RL_TREE_SUBVOLUME on btrfs: a tree cloned from a directory becomes a subvolume (by the
 * walk), one cloned from a subvolume is its snapshot (no walk), both identical to the
 * source, written without touching it; ids shift by the walk; removal deletes subvolumes,
 * nested ones included. On XFS the flag changes nothing. */
Test(tree, btrfs_trees_are_subvolumes_and_children_snapshots)
{
        const char *mnt = rlt_mkfs(RLT_BTRFS, 0, "btrfs");
        char src[PATH_MAX], a[PATH_MAX], b[PATH_MAX], p[PATH_MAX + 16];
        rl_tree_options o = { .flags = RL_TREE_SUBVOLUME | RL_TREE_SYNC };
        rl_tree_stats st;
        rl_error err = {};
        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(a, sizeof(a), "%s/a", mnt);
        snprintf(b, sizeof(b), "%s/b", mnt);
        unsigned before = subvolumes(mnt);

        cr_assert_eq(clone_path(src, mnt, "a", &o, &st, &err), 0, "%s", err.msg);
        cr_expect(is_subvolume(a), "a tree cloned with RL_TREE_SUBVOLUME is no subvolume");
        cr_expect_gt(st.entries, 10, "a directory source is walked");
        assert_same(src, a, NULL, NULL);

        cr_assert_eq(clone_path(a, mnt, "b", &o, &st, &err), 0, "%s", err.msg);
        cr_expect(is_subvolume(b));
        cr_expect_eq(st.entries, 0, "a subvolume source is snapshotted, not walked");
        assert_same(a, b, NULL, NULL);
        cr_expect_eq(subvolumes(mnt), before + 2);
        /* Own inodes: writes and chown in the snapshot leave the source alone. */
        snprintf(p, sizeof(p), "%s/new-file", b);
        rlt_write_file(p, 4096, 7);
        cr_assert(chown(b, 4242, 4242) == 0);
        assert_same(src, a, NULL, NULL);

        /* Shifted ids: a snapshot, its owners shifted in place (every inode once: data/big
         * has three names), the same tree as the walk would give. */
        rl_idmap *m = NULL;
        cr_assert_eq(rl_idmap_new(&m, &err), 0);
        cr_assert_eq(rl_idmap_parse(m, "0:100000:65536", &err), 0, "%s", err.msg);
        rl_tree_options shifted = o;
        shifted.uid_map = shifted.gid_map = m;
        cr_assert_eq(clone_path(a, mnt, "s", &shifted, &st, &err), 0, "%s", err.msg);
        cr_expect_gt(st.entries, 10, "ids are shifted by the walk");
        cr_expect_eq(st.snapshots, 1, "a subvolume source is snapshotted, then shifted");
        cr_expect_eq(st.hardlinks, 2, "data/big's other two names are not shifted again");
        cr_expect_gt(st.xattrs, 3, "ACLs and the capability rewritten: %lu", st.xattrs);
        snprintf(p, sizeof(p), "%s/s", mnt);
        cr_expect(is_subvolume(p));
        assert_same(a, p, m, m);
        /* A directory source: the walk into a new subvolume, the same result. */
        cr_assert_eq(clone_path(src, mnt, "s-walk", &shifted, &st, &err), 0, "%s", err.msg);
        cr_expect_eq(st.snapshots, 0);
        snprintf(p, sizeof(p), "%s/s-walk", mnt);
        assert_same(src, p, m, m);
        rl_idmap_free(m);

        /* A subvolume nested inside a tree goes with it. */
        snprintf(p, sizeof(p), "%s/b/nested", mnt);
        char *create[] = { "btrfs", "subvolume", "create", p, NULL };
        char out[4096];
        cr_assert_eq(rlt_run(create, out, sizeof(out)), 0, "%s", out);
        int dir = open_dir(mnt);
        cr_assert_eq(rl_tree_remove(dir, "b", 1, NULL, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_tree_remove(dir, "s", 2, NULL, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_tree_remove(dir, "s-walk", 2, NULL, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_tree_remove(dir, "a", 2, NULL, &err), 0, "%s", err.msg);
        close(dir);
        cr_expect(access(b, F_OK) < 0 && access(a, F_OK) < 0);
        cr_expect_eq(subvolumes(mnt), before, "subvolumes left after removal");

        /* Elsewhere the flag is ignored. */
        const char *xfs = rlt_mkfs(RLT_XFS, 0, "xfs");
        rlt_make_rich_tree(xfs, "src");
        snprintf(src, sizeof(src), "%s/src", xfs);
        cr_assert_eq(clone_path(src, xfs, "a", &o, &st, &err), 0, "%s", err.msg);
        cr_expect_gt(st.entries, 10);
        snprintf(a, sizeof(a), "%s/a", xfs);
        assert_same(src, a, NULL, NULL);
}

/* A btrfs snapshot stops at the subvolumes nested in its source (an empty stub at each): the
 * clone snapshots each into its place, and theirs in turn, so a child of a layer holding one
 * (a container that made a subvolume in its rootfs) gets the whole tree. */
Test(tree, btrfs_snapshots_take_nested_subvolumes_along)
{
        const char *mnt = rlt_mkfs(RLT_BTRFS, 0, "btrfs");
        rl_tree_options o = { .flags = RL_TREE_SUBVOLUME | RL_TREE_SYNC };
        char src[PATH_MAX], a[PATH_MAX], b[PATH_MAX], p[PATH_MAX + 32], out[4096];
        rl_tree_stats st;
        rl_error err = {};
        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(a, sizeof(a), "%s/a", mnt);
        snprintf(b, sizeof(b), "%s/b", mnt);
        cr_assert_eq(clone_path(src, mnt, "a", &o, &st, &err), 0, "%s", err.msg);
        unsigned before = subvolumes(mnt);

        /* a/top, a/d/nest and a/d/nest/deeper: subvolumes with files, modes and owners. */
        snprintf(p, sizeof(p), "%s/d", a);
        cr_assert(mkdir(p, 0750) == 0);
        const char *subs[] = { "top", "d/nest", "d/nest/deeper" };
        for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
                snprintf(p, sizeof(p), "%s/%s", a, subs[i]);
                char *create[] = { "btrfs", "subvolume", "create", p, NULL };
                cr_assert_eq(rlt_run(create, out, sizeof(out)), 0, "%s", out);
                cr_assert(chmod(p, 0710 + i) == 0 && chown(p, 1000 + i, 2000 + i) == 0);
                snprintf(p, sizeof(p), "%s/%s/file", a, subs[i]);
                rlt_write_file(p, 8192 * (i + 1), (unsigned)i);
        }
        /* Times set last, so the snapshot must give them back after replacing the stubs. */
        const struct timespec ts[2] = { { 1700000000, 5 }, { 1600000000, 7 } };
        snprintf(p, sizeof(p), "%s/d/nest", a);
        cr_assert(utimensat(AT_FDCWD, p, ts, 0) == 0);
        snprintf(p, sizeof(p), "%s/d", a);
        cr_assert(utimensat(AT_FDCWD, p, ts, 0) == 0);
        cr_assert(utimensat(AT_FDCWD, a, ts, 0) == 0);

        cr_assert_eq(clone_path(a, mnt, "b", &o, &st, &err), 0, "%s", err.msg);
        cr_expect_eq(st.entries, 0, "a subvolume source is snapshotted, not walked");
        assert_same(a, b, NULL, NULL);
        cr_expect_eq(subvolumes(mnt), before + 3 + 4, "a's three nested, b and its three");
        for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
                snprintf(p, sizeof(p), "%s/%s", b, subs[i]);
                cr_expect(is_subvolume(p), "%s is no subvolume", p);
        }
        /* Their own inodes: a write in the child's nested subvolume leaves the source alone. */
        snprintf(p, sizeof(p), "%s/d/nest/deeper/file", b);
        rlt_write_file(p, 100, 9);
        snprintf(p, sizeof(p), "%s/d/nest/deeper/file", a);
        struct stat sa;
        cr_assert(stat(p, &sa) == 0);
        cr_expect_eq(sa.st_size, 8192 * 3, "the source's nested file changed with the child's");

        int dir = open_dir(mnt);
        cr_assert_eq(rl_tree_remove(dir, "b", 2, NULL, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_tree_remove(dir, "a", 2, NULL, &err), 0, "%s", err.msg);
        close(dir);
        cr_expect(access(a, F_OK) < 0 && access(b, F_OK) < 0);
        cr_expect_eq(subvolumes(mnt), before - 1, "subvolumes left after removal");
}

/* The in-place shift of a btrfs snapshot gives what the walk gives, on what the rich tree
 * lacks: an owner outside the maps (kept, or -ERANGE with nothing left), a capability on a
 * hardlinked file and on a symlink, a uid map alone; and an immutable file, which the shift
 * cannot chown, sends the clone to the walk. */
Test(tree, btrfs_shift_in_place_matches_the_walk)
{
        const char *mnt = rlt_mkfs(RLT_BTRFS, 0, "btrfs");
        char rich[PATH_MAX], base[PATH_MAX], p[PATH_MAX + 32], q[PATH_MAX + 32];
        rl_tree_options sub = { .flags = RL_TREE_SUBVOLUME };
        rl_tree_stats st;
        rl_error err = {};
        rlt_make_rich_tree(mnt, "rich");
        snprintf(rich, sizeof(rich), "%s/rich", mnt);
        snprintf(base, sizeof(base), "%s/base", mnt);
        cr_assert_eq(clone_path(rich, mnt, "base", &sub, &st, &err), 0, "%s", err.msg);
        cr_assert(is_subvolume(base));
        snprintf(p, sizeof(p), "%s/outside", base);
        rlt_write_file(p, 100, 1);
        cr_assert(chown(p, 70000, 70000) == 0);
        snprintf(p, sizeof(p), "%s/capf", base);
        rlt_write_file(p, 5000, 2);
        snprintf(q, sizeof(q), "%s/capf2", base);
        cr_assert(link(p, q) == 0);
        rlt_set_cap(p);
        snprintf(p, sizeof(p), "%s/symcap", base);
        cr_assert(symlink("capf", p) == 0);
        rlt_set_cap(p);

        rl_idmap *m = NULL;
        cr_assert_eq(rl_idmap_new(&m, &err), 0);
        cr_assert_eq(rl_idmap_parse(m, "0:100000:65536", &err), 0, "%s", err.msg);
        const rl_idmap *maps[][2] = { { m, m }, { m, NULL } };
        for (int i = 0; i < 2; i++) {
                char sh[32], wk[32], a[PATH_MAX], b[PATH_MAX];
                snprintf(sh, sizeof(sh), "shifted-%d", i);
                snprintf(wk, sizeof(wk), "walked-%d", i);
                rl_tree_options o = { .flags = RL_TREE_SUBVOLUME | RL_TREE_KEEP_UNMAPPED,
                                      .uid_map = maps[i][0],
                                      .gid_map = maps[i][1] };
                cr_assert_eq(clone_path(base, mnt, sh, &o, &st, &err), 0, "%s", err.msg);
                cr_expect_eq(st.snapshots, 1, "map set %d: no snapshot", i);
                rl_tree_options w = o;
                w.flags = RL_TREE_KEEP_UNMAPPED;
                cr_assert_eq(clone_path(base, mnt, wk, &w, &st, &err), 0, "%s", err.msg);
                cr_expect_eq(st.snapshots, 0);
                snprintf(a, sizeof(a), "%s/%s", mnt, wk);
                snprintf(b, sizeof(b), "%s/%s", mnt, sh);
                assert_same(a, b, NULL, NULL);
                snprintf(p, sizeof(p), "%s/outside", b);
                struct stat ost;
                cr_assert(stat(p, &ost) == 0);
                cr_expect(ost.st_uid == 70000 && ost.st_gid == 70000, "an unmapped owner moved");
        }

        /* Without RL_TREE_KEEP_UNMAPPED: -ERANGE naming the file, nothing left behind. */
        rl_tree_options strict = { .flags = RL_TREE_SUBVOLUME, .uid_map = m, .gid_map = m };
        cr_expect_eq(clone_path(base, mnt, "strict", &strict, &st, &err), -ERANGE);
        cr_expect(strstr(err.msg, "'outside'"), "%s", err.msg);
        snprintf(p, sizeof(p), "%s/strict", mnt);
        cr_expect(access(p, F_OK) < 0 && !rlt_dir_has_prefix(mnt, ".rl-clone-"),
                  "a failed shift left something behind");

        /* An immutable file: the snapshot keeps the flag, chown fails, the walk serves. */
        snprintf(p, sizeof(p), "%s/imm", base);
        rlt_write_file(p, 10, 3);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        int flags = 0;
        cr_assert(fd >= 0 && ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0);
        flags |= FS_IMMUTABLE_FL;
        cr_assert(ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0, "chattr +i: %s", strerror(errno));
        rl_tree_options keep = strict;
        keep.flags |= RL_TREE_KEEP_UNMAPPED;
        cr_assert_eq(clone_path(base, mnt, "imm", &keep, &st, &err), 0, "%s", err.msg);
        cr_expect_eq(st.snapshots, 0, "the clone of an immutable file was no walk");
        cr_expect_gt(st.entries, 10);
        snprintf(q, sizeof(q), "%s/imm", mnt);
        cr_expect(is_subvolume(q));
        cr_expect(!rlt_dir_has_prefix(mnt, ".rl-clone-"));
        flags &= ~FS_IMMUTABLE_FL;
        cr_assert(ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0);
        close(fd);
        rl_idmap_free(m);
}

/* The shift of a btrfs snapshot's owners counts towards progress like a clone's walk, and a
 * cancel from the callback (the daemon's, on a client's hang-up) stops it, nothing left. */
Test(tree, btrfs_shift_reports_progress_and_cancels)
{
        const char *mnt = rlt_mkfs(RLT_BTRFS, 0, "btrfs");
        char src[PATH_MAX], p[PATH_MAX + 16];
        rl_tree_stats st;
        rl_error err = {};

        snprintf(src, sizeof(src), "%s/src", mnt);
        cr_assert(mkdir(src, 0755) == 0);
        for (int i = 0; i < 3000; i++) {
                snprintf(p, sizeof(p), "%s/f%d", src, i);
                rlt_write_file(p, 10, (unsigned)i);
        }
        cr_assert_eq(clone_path(src, mnt, "base", &(rl_tree_options){ .flags = RL_TREE_SUBVOLUME },
                                &st, &err),
                     0, "%s", err.msg);
        snprintf(src, sizeof(src), "%s/base", mnt);
        rl_idmap *m = NULL;
        cr_assert_eq(rl_idmap_new(&m, &err), 0);
        cr_assert_eq(rl_idmap_parse(m, "0:100000:65536", &err), 0, "%s", err.msg);
        rl_tree_options o = { .jobs = 1, .flags = RL_TREE_SUBVOLUME, .uid_map = m, .gid_map = m,
                              .progress = on_progress, .progress_userdata = &progress_calls,
                              .progress_interval_ns = 1 };

        /* Counted: the snapshot's shift is the whole clone. */
        cr_assert_eq(clone_path(src, mnt, "shifted", &o, &st, &err), 0, "%s", err.msg);
        cr_expect_eq(st.snapshots, 1, "no snapshot: the walk ran, not the shift");
        cr_expect_geq(progress_calls, 10, "progress called %u times during the shift",
                      progress_calls);
        cr_expect_leq(progress_last, st.entries);

        /* Cancelled from the callback: -ECANCELED, no destination, no temporary. */
        progress_calls = 0;
        progress_last = 0;
        progress_cancel_after = 3;
        o.cancel = &progress_cancel;
        cr_expect_eq(clone_path(src, mnt, "cancelled", &o, &st, &err), -ECANCELED, "%s", err.msg);
        cr_expect(atomic_load(&progress_cancel));
        snprintf(p, sizeof(p), "%s/cancelled", mnt);
        cr_expect(access(p, F_OK) < 0, "a cancelled clone left its destination");
        cr_expect(!rlt_dir_has_prefix(mnt, ".rl-clone-"), "a cancelled shift left its snapshot");
        rl_idmap_free(m);
}
